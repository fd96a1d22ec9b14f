"""The image LoRA trainer: SD1/SD2/SDXL base + image folder -> kohya LoRA, on accelerate + PEFT.

Determinism is by construction: the data order and augmentations come from (seed, epoch, item),
the noise of each micro-batch from (seed, micro-step, process), and the VAE sample of each image
from (seed, item, flip). A run resumed from a saved state therefore draws exactly what the
uninterrupted run drew, and the final LoRA is bitwise equal on CPU.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._converters import converters
from ..errors import UserError
from ..image import memory
from ..image.frozen_weights import adapters_in_fp32
from . import checkpoint as ckpt
from .events import EventCallback, TrainingControl, TrainingEvent, TrainResult
from .image_data import ImageData
from .init_lora import image_layout, load_image_init
from .lora_export import export_adapter, inject_lora, load_lora_state, lora_parameters, lora_state
from .metadata import training_metadata
from .noise import diffusion_loss, sample_noise, sample_timesteps, step_generator, target_for
from .optimizers import build_optimizer, setting
from .outputs import OutputFiles
from .progress import NonFiniteLoss, Throughput, check_finite
from .schedulers import build_scheduler


def train_image(config: Any, callback: EventCallback | None = None,
                control: TrainingControl | None = None) -> TrainResult:
    """Train an image LoRA as ``config`` says; events go to ``callback``; ``control`` stops or cancels."""
    run = _ImageRun(config, callback, control or TrainingControl())
    try:
        return run.train()
    except NonFiniteLoss as exc:
        run.emit(TrainingEvent("error", step=run.step, message=str(exc)))
        return TrainResult("failed", output_files=run.outputs.written if run.outputs else [], steps=run.step,
                           message=str(exc))
    except converters.AdapterError as exc:
        run.emit(TrainingEvent("error", step=run.step, message=str(exc)))
        raise
    except Exception as exc:
        run.emit(TrainingEvent("error", step=run.step, message=f"{exc.__class__.__name__}: {exc}"))
        raise


class _ImageRun:
    """One training run's state; ``train`` is the whole run."""

    def __init__(self, config: Any, callback: EventCallback | None, control: TrainingControl) -> None:
        self.config = config
        self.callback = callback
        self.control = control
        self.step = 0
        self.outputs: OutputFiles | None = None
        self.accelerator = None

    # -- plumbing ------------------------------------------------------------------------------

    def emit(self, event: TrainingEvent) -> None:
        """Send an event from the main process only."""
        if self.callback is not None and (self.accelerator is None or self.accelerator.is_main_process):
            self.callback(event)

    def _setup_accelerator(self):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        precision = str(setting(self.config, "mixed_precision", "no"))
        if not torch.cuda.is_available() and precision == "fp16":
            precision = "no"  # CPU autocast has no fp16; kept in float32
        # A WebUI runs many trainings in one process; accelerate keeps the first run's precision in a
        # singleton and refuses another. The process-group part (PartialState) is kept.
        reset = getattr(AcceleratorState, "_reset_state", None)
        if reset is not None:
            reset()
        return Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())

    # -- the run -------------------------------------------------------------------------------

    def train(self) -> TrainResult:
        from ..models.sd_loader import load_sd_base

        config = self.config
        started_at = time.time()
        seed = int(setting(config, "seed", 42))
        if not setting(config, "base_model", None):
            raise UserError("config: base_model is not set; give a .safetensors checkpoint or a diffusers folder")
        if not setting(config, "train_data_dir", None):
            raise UserError("config: train_data_dir is not set; give a folder of images with captions")
        name = str(setting(config, "output_name", "my_lora"))
        out_dir = Path(setting(config, "output_dir", "output")).expanduser()
        out_dir.mkdir(parents=True, exist_ok=True)

        acc = self.accelerator = self._setup_accelerator()
        rank, world = acc.process_index, acc.num_processes
        _seed_all(seed)

        data = ImageData(config)
        if data.report.problems:
            self.emit(TrainingEvent("log", message=f"skipped: {data.report.summary()}"))
        device = acc.device
        weight_dtype = _weight_dtype(acc.mixed_precision, device)
        self.plan = plan = memory.memory_plan(config, data, weight_dtype)
        base = load_sd_base(config.base_model, setting(config, "model_arch", "auto"),
                            setting(config, "prediction_type", "auto"), setting(config, "tokenizer_path", None),
                            parts=plan.first_parts, unet_storage=plan.unet_storage)
        self.base = base
        early = memory.cache_then_release(base, data, config, seed, device, rank, world, _Conditioner,
                                          _LatentCache) if plan.release else None
        scheduler = base.noise_scheduler()

        train_te = bool(setting(config, "train_text_encoder", False))
        for module in (base.unet, base.vae, *base.text_encoders):
            if module is not None:
                module.requires_grad_(False)
        torch.manual_seed(seed)  # LoRA init is the same in every process and every resumed run
        rank_r, alpha = int(config.lora_rank), float(config.lora_alpha)
        layouts, init = image_layout(config, base, lambda line: self.emit(TrainingEvent("log", message=line)))
        own = {"unet": base.unet, "text_encoder": (base.text_encoders or [None])[0],
               "text_encoder_2": (base.text_encoders or [None])[-1]}
        components = {key: own[key] for key in layouts}
        for key, layout in layouts.items():
            with adapters_in_fp32():
                inject_lora(components[key], layout.names, rank_r, alpha,
                            float(setting(config, "lora_dropout", 0.0)), module_ranks=layout.ranks)
        if setting(config, "gradient_checkpointing", False):
            base.unet.enable_gradient_checkpointing()
            if train_te:
                for encoder in base.text_encoders:
                    encoder.gradient_checkpointing_enable()
                    # transformers < 4.35 checkpoints with use_reentrant=True: with frozen embeddings
                    # nothing inside would get a gradient unless the embedding output requires one.
                    encoder.enable_input_require_grads()

        # Frozen parts in the compute dtype (GPU only); the VAE stays fp32 for SDXL (it overflows in fp16).
        vae_dtype = torch.float32 if base.is_sdxl or weight_dtype == torch.float16 else weight_dtype
        for module, dtype in ((base.unet, weight_dtype), (base.vae, vae_dtype),
                              *((encoder, weight_dtype) for encoder in base.text_encoders)):
            if module is None:
                continue
            module.to(device) if dtype == torch.float32 else module.to(device, dtype)
        for module in components.values():
            for p in lora_parameters(module):
                p.data = p.data.float()
        if init is not None:
            load_image_init(layouts, components)

        te_lr = setting(config, "text_encoder_lr", None)
        groups = [{"params": lora_parameters(base.unet), "lr": float(config.learning_rate)}]
        for key in components:
            if key != "unet":
                groups.append({"params": lora_parameters(components[key]),
                               "lr": float(te_lr if te_lr is not None else config.learning_rate)})
        optimizer = build_optimizer(groups, config)

        gas = int(setting(config, "gradient_accumulation_steps", 1))
        batches_per_epoch = len(data.batches_for_process(0, rank, world))
        if batches_per_epoch == 0:
            raise UserError(f"{config.train_data_dir}: fewer batches than processes; add images or lower batch_size")
        steps_per_epoch = math.ceil(batches_per_epoch / gas)
        max_steps = setting(config, "max_train_steps", None)
        total_steps = int(max_steps) if max_steps else steps_per_epoch * int(config.epochs)
        epochs = math.ceil(total_steps / steps_per_epoch)
        lr_scheduler = build_scheduler(optimizer, config, total_steps)

        # DDP wraps only what trains.
        prepared = acc.prepare(*components.values())
        prepared = prepared if isinstance(prepared, tuple) else (prepared,)
        wrapped = dict(zip(components, prepared, strict=False))

        self.outputs = OutputFiles(out_dir, name, int(setting(config, "save_last_n", 0)), acc.is_main_process,
                                   str(setting(config, "save_precision", "fp16")))
        state_root = out_dir / "state"
        start_epoch, start_batch, step = 0, 0, 0
        resume = setting(config, "resume", None)
        if resume and str(resume).lower() not in ("none", "no", "false"):
            state_path = state_root if str(resume).lower() == "auto" else Path(resume)
            if str(resume).lower() != "auto" or ckpt.latest_state(state_root) is not None:
                state = ckpt.load_training_state(state_path)
                load_lora_state(components, state.lora)
                optimizer.load_state_dict(state.optimizer)
                lr_scheduler.load_state_dict(state.scheduler)
                step, start_epoch, start_batch = state.step, state.epoch, state.batch_in_epoch
                ckpt.restore_rng(state.rng)
                self.emit(TrainingEvent("log", step=step, message=f"resumed from {state.path} at step {step}"))
        self.step = step

        cache_te = data.text_is_static and not train_te and setting(config, "cache_text_encoder_outputs", True)
        cache_latents = data.pixels_are_static and setting(config, "cache_latents", True)
        callables = [wrapped.get("text_encoder" if i == 0 else "text_encoder_2", enc)
                     for i, enc in enumerate(base.text_encoders)]
        encoder, latents_of = early or (
            _Conditioner(base, callables, int(setting(config, "clip_skip", 1)), device, cache_te, train_te),
            _LatentCache(base.vae, seed, device, cache_latents))
        throughput = Throughput(total_steps)
        save_steps = int(setting(config, "save_steps", 0))
        save_epochs = int(setting(config, "save_every_n_epochs", 0))
        sample_every = int(setting(config, "sample_every_n_steps", 0))
        max_norm = float(setting(config, "max_grad_norm", 1.0))
        noise_offset = float(setting(config, "noise_offset", 0.0))
        gamma = setting(config, "min_snr_gamma", None)

        def save_state(epoch: int, batch_in_epoch: int) -> None:
            acc.wait_for_everyone()
            if acc.is_main_process:
                ckpt.save_training_state(state_root, step=step, epoch=epoch, batch_in_epoch=batch_in_epoch,
                                         lora=lora_state(components), optimizer=optimizer, scheduler=lr_scheduler,
                                         extra={"output_name": name}, keep_last=2)

        def save_lora(final: bool, epoch: int) -> list[str]:
            acc.wait_for_everyone()
            meta = training_metadata(config, base, data, step=step, epoch=epoch, started_at=started_at,
                                     total_steps=total_steps, world=world, cache_latents=cache_latents,
                                     num_epochs=epochs)
            adapter = export_adapter(components, base.arch, meta)
            return self.outputs.save(adapter, None if final else step)

        self.emit(TrainingEvent("start", step=step, total_steps=total_steps, epoch=start_epoch,
                                message=f"{base.arch} base {Path(config.base_model).name}, {data.num_images} images, "
                                        f"{total_steps} steps on {device}" + (f" x {world} processes" if world > 1
                                                                               else "")))
        for module in wrapped.values():
            module.train()
        last_loss: float | None = None
        status = "done"
        epoch = start_epoch
        for epoch in range(start_epoch, epochs):
            batches = data.batches_for_process(epoch, rank, world)
            first = start_batch if epoch == start_epoch else 0
            for chunk_start in range(first, len(batches), gas):
                if step >= total_steps:
                    break
                chunk = batches[chunk_start : chunk_start + gas]
                losses = []
                for j, batch in enumerate(chunk):
                    gen = step_generator(seed, step * gas + j, rank, world)
                    items = [data.item(i, epoch) for i in batch]
                    latents = latents_of(items).to(device, weight_dtype)
                    hidden, pooled = encoder([it.caption for it in items])
                    noise = sample_noise(latents, gen, noise_offset)
                    timesteps = sample_timesteps(latents.shape[0], scheduler.config.num_train_timesteps, gen, device)
                    noisy = scheduler.add_noise(latents, noise, timesteps)
                    kwargs = {}
                    if base.is_sdxl:
                        kwargs["added_cond_kwargs"] = {"text_embeds": pooled.to(weight_dtype),
                                                       "time_ids": _time_ids(items, device, weight_dtype)}
                    with acc.autocast():
                        pred = wrapped["unet"](noisy, timesteps, hidden.to(weight_dtype), **kwargs).sample
                    loss = diffusion_loss(pred, target_for(scheduler, latents, noise, timesteps), scheduler,
                                          timesteps, gamma)
                    acc.backward(loss / len(chunk))
                    losses.append(loss.detach())
                mean_loss = torch.stack(losses).mean()
                if world > 1:
                    mean_loss = acc.reduce(mean_loss, reduction="mean")
                last_loss = check_finite(float(mean_loss), step + 1)
                params = [p for g in optimizer.param_groups for p in g["params"]]
                if max_norm > 0:
                    acc.clip_grad_norm_(params, max_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                self.step = step
                next_batch = chunk_start + len(chunk)
                pos_epoch, pos_batch = (epoch, next_batch) if next_batch < len(batches) else (epoch + 1, 0)
                rate, eta = throughput.update(step)
                self.emit(TrainingEvent("step", step=step, total_steps=total_steps, epoch=epoch, loss=last_loss,
                                        lr=lr_scheduler.get_last_lr()[0], eta_seconds=eta, it_per_second=rate))
                epoch_done = next_batch >= len(batches)
                if step < total_steps and (
                    (save_steps and step % save_steps == 0)
                    or (save_epochs and epoch_done and (epoch + 1) % save_epochs == 0)
                ):
                    paths = save_lora(False, epoch)
                    save_state(pos_epoch, pos_batch)
                    self.emit(TrainingEvent("saved", step=step, total_steps=total_steps, epoch=epoch, paths=paths))
                if sample_every and step % sample_every == 0 and acc.is_main_process:
                    self._samples(f"step{step:06d}", step)
                if self.control.cancel_requested:
                    self.emit(TrainingEvent("cancelled", step=step, total_steps=total_steps, message="cancelled"))
                    return TrainResult("cancelled", output_files=self.outputs.written, final_loss=last_loss,
                                       steps=step, message="cancelled; no final LoRA written")
                if self.control.stop_requested:
                    status = "stopped"
                    save_state(pos_epoch, pos_batch)
                    break
            if status == "stopped" or step >= total_steps:
                break
        if status == "done":
            save_state(epochs, 0)
        paths = save_lora(True, min(epoch, epochs - 1) if epochs else 0)
        self.emit(TrainingEvent("saved", step=step, total_steps=total_steps, paths=paths))
        if sample_every and step % sample_every and acc.is_main_process:
            self._samples("final", step)
        message = f"wrote {paths[0]}; use it in the WebUI as <lora:{name}:0.7>" if paths else ""  # main only
        self.emit(TrainingEvent("done", step=step, total_steps=total_steps, loss=last_loss, paths=paths,
                                message=message))
        acc.wait_for_everyone()
        return TrainResult(status, output_files=self.outputs.written, final_loss=last_loss, steps=step,
                           message=message)

    def _samples(self, tag: str, step: int) -> None:
        from .samples import render_samples

        config = self.config
        prompts = list(setting(config, "sample_prompts", []) or [])
        if not prompts:
            return
        rng_state = ckpt.capture_rng()  # sampling must not shift the training's random stream
        if self.plan.release:
            memory.load_encoders(self.base)
        try:
            paths = render_samples(
                self.base, prompts, Path(config.output_dir) / "samples", tag,
                size=_sample_size(config), steps=int(setting(config, "sample_steps", 20)),
                guidance=float(setting(config, "sample_guidance_scale", 7.0)),
                seed=int(setting(config, "sample_seed", None) or setting(config, "seed", 42)),
                negative=str(setting(config, "sample_negative_prompt", "")),
                clip_skip=int(setting(config, "clip_skip", 1)),
            )
        finally:
            ckpt.restore_rng(rng_state)
            if self.plan.release:
                memory.release(self.base)
        self.emit(TrainingEvent("sample", step=step, paths=paths))


def _sample_size(config: Any) -> int:
    size = int(setting(config, "resolution", 512))
    return max(64, size - size % 64) if size >= 64 else size


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _weight_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Frozen weights' dtype: half only on GPU (CPU autocast handles bf16 itself)."""
    if device.type != "cuda":
        return torch.float32
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(str(precision), torch.float32)


def _time_ids(items, device, dtype) -> torch.Tensor:
    """SDXL's micro-conditioning: original size, crop top-left, target size (h, w order)."""
    rows = [list(it.original_size) + list(it.crop_top_left) + list(it.target_size) for it in items]
    return torch.tensor(rows, dtype=dtype, device=device)


def _text_model(encoder):
    return getattr(encoder, "text_model", encoder)


class _Conditioner:
    """Captions -> (hidden states, pooled) the way A1111/diffusers condition each architecture."""

    def __init__(self, base, callables: list, clip_skip: int, device, cache: bool, trainable: bool) -> None:
        self.base = base
        self.trainable = trainable
        self.callables = callables  # the encoders, DDP-wrapped when they train
        self.clip_skip = max(1, clip_skip)
        self.device = device
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] | None = {} if cache else None

    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.cache is None:
            with torch.set_grad_enabled(self.trainable):
                return self._encode(captions)
        for caption in dict.fromkeys(captions):
            if caption not in self.cache:
                # One caption at a time: the cached value must not depend on which batch filled it.
                with torch.no_grad():
                    self.cache[caption] = self._encode([caption])
        hidden = torch.cat([self.cache[c][0] for c in captions])
        pooled = None if not self.base.is_sdxl else torch.cat([self.cache[c][1] for c in captions])
        return hidden, pooled

    def _encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        outputs, pooled = [], None
        for tokenizer, encoder, call in zip(self.base.tokenizers, self.base.text_encoders, self.callables,
                                            strict=True):
            length = min(int(tokenizer.model_max_length), int(encoder.config.max_position_embeddings))
            ids = tokenizer(captions, padding="max_length", max_length=length, truncation=True,
                            return_tensors="pt").input_ids.to(self.device)
            out = call(ids, output_hidden_states=True)
            if self.base.is_sdxl:
                outputs.append(out.hidden_states[-(self.clip_skip + 1)])
                if hasattr(out, "text_embeds"):
                    pooled = out.text_embeds
            elif self.clip_skip == 1:
                outputs.append(out.last_hidden_state)
            else:
                outputs.append(_text_model(encoder).final_layer_norm(out.hidden_states[-self.clip_skip]))
        return torch.cat(outputs, dim=-1), pooled


class _LatentCache:
    """VAE latents per (item, flip, size); each drawn with its own seeded generator, so cached or not is identical."""

    def __init__(self, vae, seed: int, device, cache: bool) -> None:
        self.vae = vae
        self.seed = seed
        self.device = device
        self.cache: dict | None = {} if cache else None

    def __call__(self, items) -> torch.Tensor:
        out = []
        for it in items:
            key = (it.index, it.flipped, it.bucket)
            latent = self.cache.get(key) if self.cache is not None else None
            if latent is None:
                latent = self._encode(it)
                if self.cache is not None:
                    self.cache[key] = latent
            out.append(latent)
        return torch.cat(out)

    @torch.no_grad()
    def _encode(self, item) -> torch.Tensor:
        pixels = item.pixels.unsqueeze(0).to(self.device, next(self.vae.parameters()).dtype)
        dist = self.vae.encode(pixels).latent_dist
        gen = torch.Generator().manual_seed(self.seed * 7919 + item.index * 2 + int(item.flipped))
        noise = torch.randn(dist.mean.shape, generator=gen).to(dist.mean.device, dist.mean.dtype)
        latent = dist.mean + dist.std * noise
        latent = latent * self.vae.config.scaling_factor
        return latent.float().cpu()
