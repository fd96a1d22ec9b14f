"""The image LoRA trainer: SD1/SD2/SDXL base + image folder -> kohya LoRA, on accelerate + PEFT.

``_ImageRun.train`` reads as its phases: prepare the run (output folder, accelerator, seeds), load
the data and the base, inject the LoRA, build optimizer and schedule, resume, loop, save. (Data
before base: that order, and so every random draw, is the one resumed runs are compared against.)

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

import numpy as np
import torch

from .._converters import converters
from ..config import TrainConfig, as_config
from ..errors import UserError
from ..training import checkpoint as ckpt
from ..training.amp import loss_scaler, optimizer_step, unscale_gradients
from ..training.events import EventCallback, RunCancelled, TrainingControl, TrainingEvent, TrainResult, cancel_point
from ..training.optimizers import build_optimizer
from ..training.progress import NonFiniteLoss, Throughput, check_finite
from ..training.schedulers import build_scheduler
from . import memory
from .conditioning import Conditioner, LatentCache, time_ids
from .data import ImageData
from .frozen_weights import adapters_in_fp32
from .init_lora import image_layout, load_image_init
from .lean_lora import use_lean_lora
from .lora import export_adapter, inject_lora, load_lora_state, lora_parameters, lora_state
from .metadata import training_metadata
from .noise import diffusion_loss, sample_noise, sample_timesteps, step_generator, target_for
from .outputs import OutputFiles


def train_image(config: TrainConfig | dict, callback: EventCallback | None = None,
                control: TrainingControl | None = None, run_class: type | None = None) -> TrainResult:
    """Train an image LoRA as ``config`` says; events go to ``callback``; ``control`` stops or cancels.

    ``run_class`` is the run's class: ``_ImageRun`` (SD), or a model family's subclass (``flux/engine.py``).
    """
    run = (run_class or _ImageRun)(as_config(config), callback, control or TrainingControl())
    try:
        with run.control.active():  # cancel_point() in loading, caching and sampling asks this control
            return run.train()
    except RunCancelled:
        return run.cancelled()
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
    """One training run's state; ``train`` is the whole run, each phase a method."""

    def __init__(self, config: TrainConfig, callback: EventCallback | None, control: TrainingControl) -> None:
        self.config = config
        self.callback = callback
        self.control = control
        self.step = 0
        self.outputs: OutputFiles | None = None
        self.accelerator = None
        self.last_loss: float | None = None

    # -- plumbing ------------------------------------------------------------------------------

    def emit(self, event: TrainingEvent) -> None:
        """Send an event from the main process only."""
        if self.callback is not None and (self.accelerator is None or self.accelerator.is_main_process):
            self.callback(event)

    def _log(self, line: str) -> None:
        self.emit(TrainingEvent("log", message=line))

    def _setup_accelerator(self):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        precision = str(self.config.mixed_precision)
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
        """The whole run, phase by phase (a cancel is honoured between any two and inside the long ones)."""
        for phase in (self._prepare_run, self._load_data, self._load_base, self._inject_lora, self._build_optimizer,
                      self._plan_steps, self._wrap_for_processes, self._resume, self._build_conditioning,
                      self._announce):
            cancel_point()
            phase()
        status = self._loop()
        if status == "cancelled":
            return self.cancelled()
        return self._finish(status)

    def cancelled(self) -> TrainResult:
        """The result of a cancelled run: no final LoRA (intermediate saves stay)."""
        self.emit(TrainingEvent("cancelled", step=self.step, total_steps=getattr(self, "total_steps", 0),
                                message="cancelled"))
        return TrainResult("cancelled", output_files=self.outputs.written if self.outputs else [],
                           final_loss=self.last_loss, steps=self.step, message="cancelled; no final LoRA written")

    def _prepare_run(self) -> None:
        """Check the inputs, make the output folder, start accelerate and seed every generator."""
        config = self.config
        self.started_at = time.time()
        self.seed = int(config.seed)
        if not config.base_model:
            raise UserError("config: base_model is not set; give a .safetensors checkpoint or a diffusers folder")
        if not config.train_data_dir:
            raise UserError("config: train_data_dir is not set; give a folder of images with captions")
        self.name = str(config.output_name)
        self.out_dir = Path(config.output_dir).expanduser()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        acc = self.accelerator = self._setup_accelerator()
        self.rank, self.world = acc.process_index, acc.num_processes
        _seed_all(self.seed)

    def _load_data(self) -> None:
        self.data = ImageData(self.config)
        if self.data.report.problems:
            self._log(f"skipped: {self.data.report.summary()}")

    def _load_base(self) -> None:
        """The SD base, frozen; the noise scheduler; the compute dtype.

        The memory plan (#14) may load the VAE and text encoders first, fill both caches for the whole
        run and free them before the UNet loads (``self.early`` holds the filled caches then).
        """
        from ..models.sd_loader import load_sd_base

        config = self.config
        self.device = self.accelerator.device
        self.weight_dtype = _weight_dtype(self.accelerator.mixed_precision, self.device)
        plan = self.plan = memory.memory_plan(config, self.data, self.weight_dtype)
        base = self.base = load_sd_base(config.base_model, config.model_arch, config.prediction_type,
                                        config.tokenizer_path, parts=plan.first_parts, unet_storage=plan.unet_storage)
        self.early = memory.cache_then_release(base, self.data, config, self.seed, self.device, self.rank,
                                               self.world) if plan.release else None
        self.scheduler = base.noise_scheduler()
        self.train_te = bool(config.train_text_encoder)
        for module in (base.unet, base.vae, *base.text_encoders):
            if module is not None:
                module.requires_grad_(False)

    def _inject_lora(self) -> None:
        """LoRA layers on the UNet (and text encoders), the frozen parts moved, the init file loaded."""
        config, base = self.config, self.base
        torch.manual_seed(self.seed)  # LoRA init is the same in every process and every resumed run
        rank_r, alpha = int(config.lora_rank), float(config.lora_alpha)
        layouts, init = image_layout(config, base, self._log)
        encoders = base.text_encoders or [None]  # released (#14) when only the UNet trains
        own = {"unet": base.unet, "text_encoder": encoders[0], "text_encoder_2": encoders[-1]}
        self.components = components = {key: own[key] for key in layouts}
        for key, layout in layouts.items():
            with adapters_in_fp32():  # LoRA stays fp32 beside a half-stored frozen UNet
                inject_lora(components[key], layout.names, rank_r, alpha, float(config.lora_dropout),
                            module_ranks=layout.ranks)
        if config.gradient_checkpointing is True:  # auto: off for image runs (their behaviour before auto)
            base.unet.enable_gradient_checkpointing()
            if self.train_te:
                for encoder in base.text_encoders:
                    encoder.gradient_checkpointing_enable()
                    # transformers < 4.35 checkpoints with use_reentrant=True: with frozen embeddings
                    # nothing inside would get a gradient unless the embedding output requires one.
                    encoder.enable_input_require_grads()
        self._place_modules()
        if config.inplace_lora_add:
            for component in components.values():
                use_lean_lora(component)
        if init is not None:
            load_image_init(layouts, components)

    def _place_modules(self) -> None:
        """Frozen parts in the compute dtype (GPU only); the VAE stays fp32 for SDXL (it overflows in fp16)."""
        base, device, weight_dtype = self.base, self.device, self.weight_dtype
        vae_dtype = torch.float32 if base.is_sdxl or weight_dtype == torch.float16 else weight_dtype
        for module, dtype in ((base.unet, weight_dtype), (base.vae, vae_dtype),
                              *((encoder, weight_dtype) for encoder in base.text_encoders)):
            if module is not None:
                module.to(device) if dtype == torch.float32 else module.to(device, dtype)
        for module in self.components.values():
            for p in lora_parameters(module):
                p.data = p.data.float()

    def _build_optimizer(self) -> None:
        config = self.config
        te_lr = config.text_encoder_lr
        groups = [{"params": lora_parameters(self.base.unet), "lr": float(config.learning_rate)}]
        for key in self.components:
            if key != "unet":
                groups.append({"params": lora_parameters(self.components[key]),
                               "lr": float(te_lr if te_lr is not None else config.learning_rate)})
        self.optimizer = build_optimizer(groups, config)

    def _plan_steps(self) -> None:
        """Run length (max_train_steps, else epochs) and the learning-rate schedule over it."""
        config = self.config
        self.gas = int(config.gradient_accumulation_steps)
        batches_per_epoch = len(self.data.batches_for_process(0, self.rank, self.world))
        if batches_per_epoch == 0:
            raise UserError(f"{config.train_data_dir}: fewer batches than processes; add images or lower batch_size")
        steps_per_epoch = math.ceil(batches_per_epoch / self.gas)
        max_steps = config.max_train_steps
        self.total_steps = int(max_steps) if max_steps else steps_per_epoch * int(config.epochs)
        self.epochs = math.ceil(self.total_steps / steps_per_epoch)
        self.lr_scheduler = build_scheduler(self.optimizer, config, self.total_steps)

    def _wrap_for_processes(self) -> None:
        """DDP wraps only what trains; the output files are opened (main process writes)."""
        acc = self.accelerator
        prepared = acc.prepare(*self.components.values())
        prepared = prepared if isinstance(prepared, tuple) else (prepared,)
        self.wrapped = dict(zip(self.components, prepared, strict=False))
        self.outputs = OutputFiles(self.out_dir, self.name, int(self.config.save_last_n), acc.is_main_process,
                                   str(self.config.save_precision))
        self.state_root = ckpt.state_root(self.config)

    def _resume(self) -> None:
        """Position 0, or the saved state's (LoRA, optimizer, schedule, RNG, data position) with ``resume``."""
        self.start_epoch, self.start_batch, step = 0, 0, 0
        resume = self.config.resume
        if resume and str(resume).lower() not in ("none", "no", "false"):
            state_path = self.state_root if str(resume).lower() == "auto" else Path(resume)
            if str(resume).lower() != "auto" or ckpt.latest_state(self.state_root) is not None:
                state = ckpt.load_training_state(state_path)
                load_lora_state(self.components, state.lora)
                self.optimizer.load_state_dict(state.optimizer)
                self.lr_scheduler.load_state_dict(state.scheduler)
                step, self.start_epoch, self.start_batch = state.step, state.epoch, state.batch_in_epoch
                ckpt.restore_rng(state.rng)
                self.emit(TrainingEvent("log", step=step, message=f"resumed from {state.path} at step {step}"))
        self.step = step

    def _build_conditioning(self) -> None:
        """Text-encoder and VAE front ends (cached when the data allows), and the loop's settings."""
        config, base, data = self.config, self.base, self.data
        cache_te = data.text_is_static and not self.train_te and config.cache_text_encoder_outputs
        self.cache_latents = data.pixels_are_static and config.cache_latents
        callables = [self.wrapped.get("text_encoder" if i == 0 else "text_encoder_2", enc)
                     for i, enc in enumerate(base.text_encoders)]
        self.encoder, self.latents_of = self.early or (
            Conditioner(base, callables, int(config.clip_skip), self.device, cache_te, self.train_te),
            LatentCache(base.vae, self.seed, self.device, self.cache_latents))
        self._loop_settings()

    def _loop_settings(self) -> None:
        """What every step reads: throughput meter, gradient clip, noise offset, min-SNR gamma."""
        config = self.config
        self.throughput = Throughput(self.total_steps)
        self.max_norm = float(config.max_grad_norm)
        self.noise_offset = float(config.noise_offset)
        self.gamma = config.min_snr_gamma

    def _announce(self) -> None:
        world = self.world
        self.emit(TrainingEvent("start", step=self.step, total_steps=self.total_steps, epoch=self.start_epoch,
                                message=f"{self.base.arch} base {Path(self.config.base_model).name}, "
                                        f"{self.data.num_images} images, {self.total_steps} steps on {self.device}"
                                        + (f" x {world} processes" if world > 1 else "")))
        for module in self.wrapped.values():
            module.train()

    # -- the loop ------------------------------------------------------------------------------

    def _loop(self) -> str:
        """Epochs of optimizer steps from the resume position; ``done``, ``stopped`` or ``cancelled``."""
        self.epoch = self.start_epoch
        for epoch in range(self.start_epoch, self.epochs):
            self.epoch = epoch
            batches = self.data.batches_for_process(epoch, self.rank, self.world)
            first = self.start_batch if epoch == self.start_epoch else 0
            for chunk_start in range(first, len(batches), self.gas):
                if self.step >= self.total_steps:
                    break
                chunk = batches[chunk_start : chunk_start + self.gas]
                self._optimizer_step(chunk, epoch)
                next_batch = chunk_start + len(chunk)
                position = (epoch, next_batch) if next_batch < len(batches) else (epoch + 1, 0)
                self._after_step(epoch, next_batch >= len(batches), position)
                if self.control.cancel_requested:
                    return "cancelled"
                if self.control.stop_requested:
                    self._save_state(*position)
                    return "stopped"
            if self.step >= self.total_steps:
                break
        return "done"

    def _optimizer_step(self, chunk: list[list[int]], epoch: int) -> None:
        """One optimizer step over the micro-batches of ``chunk``; the NaN guard checks the mean loss."""
        acc, optimizer = self.accelerator, self.optimizer
        losses = []
        for j, batch in enumerate(chunk):
            cancel_point()
            losses.append(self._micro_batch(batch, epoch, j, len(chunk)))
        mean_loss = torch.stack(losses).mean()
        if self.world > 1:
            mean_loss = acc.reduce(mean_loss, reduction="mean")
        self.last_loss = check_finite(float(mean_loss), self.step + 1)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        unscale_gradients(optimizer, loss_scaler(acc))  # fp16 on CUDA: see training/amp.py
        if self.max_norm > 0:
            acc.clip_grad_norm_(params, self.max_norm)
        optimizer_step(optimizer, loss_scaler(acc))
        self.lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        self.step += 1

    def _micro_batch(self, batch: list[int], epoch: int, j: int, n_micro: int) -> torch.Tensor:
        """Forward and backward of one micro-batch (the ``j``-th of ``n_micro``); returns its loss."""
        base, scheduler, device, dtype = self.base, self.scheduler, self.device, self.weight_dtype
        gen = step_generator(self.seed, self.step * self.gas + j, self.rank, self.world)
        items = [self.data.item(i, epoch) for i in batch]
        latents = self.latents_of(items).to(device, dtype)
        hidden, pooled = self.encoder([it.caption for it in items])
        noise = sample_noise(latents, gen, self.noise_offset)
        timesteps = sample_timesteps(latents.shape[0], scheduler.config.num_train_timesteps, gen, device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        kwargs = {}
        if base.is_sdxl:
            kwargs["added_cond_kwargs"] = {"text_embeds": pooled.to(dtype), "time_ids": time_ids(items, device, dtype)}
        with self.accelerator.autocast():
            pred = self.wrapped["unet"](noisy, timesteps, hidden.to(dtype), **kwargs).sample
        loss = diffusion_loss(pred, target_for(scheduler, latents, noise, timesteps), scheduler, timesteps,
                              self.gamma)
        self.accelerator.backward(loss / n_micro)
        return loss.detach()

    def _after_step(self, epoch: int, epoch_done: bool, position: tuple[int, int]) -> None:
        """Report the step; save (LoRA + state) and render samples when due."""
        config, step, total = self.config, self.step, self.total_steps
        rate, eta = self.throughput.update(step)
        self.emit(TrainingEvent("step", step=step, total_steps=total, epoch=epoch, loss=self.last_loss,
                                lr=self.lr_scheduler.get_last_lr()[0], eta_seconds=eta, it_per_second=rate))
        save_steps, save_epochs = int(config.save_steps), int(config.save_every_n_epochs)
        if step < total and (
            (save_steps and step % save_steps == 0)
            or (save_epochs and epoch_done and (epoch + 1) % save_epochs == 0)
        ):
            paths = self._save_lora(False, epoch)
            self._save_state(*position)
            self.emit(TrainingEvent("saved", step=step, total_steps=total, epoch=epoch, paths=paths))
        sample_every = int(config.sample_every_n_steps)
        if sample_every and step % sample_every == 0 and self.accelerator.is_main_process:
            self._samples(f"step{step:06d}", step)

    # -- saving --------------------------------------------------------------------------------

    def _save_state(self, epoch: int, batch_in_epoch: int) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            ckpt.save_training_state(self.state_root, step=self.step, epoch=epoch, batch_in_epoch=batch_in_epoch,
                                     lora=lora_state(self.components), optimizer=self.optimizer,
                                     scheduler=self.lr_scheduler, extra={"output_name": self.name}, keep_last=2)

    def _save_lora(self, final: bool, epoch: int) -> list[str]:
        self.accelerator.wait_for_everyone()
        meta = training_metadata(self.config, self.base, self.data, step=self.step, epoch=epoch,
                                 started_at=self.started_at, total_steps=self.total_steps, world=self.world,
                                 cache_latents=self.cache_latents, num_epochs=self.epochs)
        adapter = export_adapter(self.components, self.base.arch, meta)
        return self.outputs.save(adapter, None if final else self.step)

    def _finish(self, status: str) -> TrainResult:
        """Final state (when done), final LoRA, final samples, the done event."""
        step, total, epochs = self.step, self.total_steps, self.epochs
        if status == "done":
            self._save_state(epochs, 0)
        paths = self._save_lora(True, min(self.epoch, epochs - 1) if epochs else 0)
        self.emit(TrainingEvent("saved", step=step, total_steps=total, paths=paths))
        sample_every = int(self.config.sample_every_n_steps)
        if sample_every and step % sample_every and self.accelerator.is_main_process:
            self._samples("final", step)
        message = f"wrote {paths[0]}; use it in the WebUI as <lora:{self.name}:0.7>" if paths else ""  # main only
        self.emit(TrainingEvent("done", step=step, total_steps=total, loss=self.last_loss, paths=paths,
                                message=message))
        self.accelerator.wait_for_everyone()
        return TrainResult(status, output_files=self.outputs.written, final_loss=self.last_loss, steps=step,
                           message=message)

    def _samples(self, tag: str, step: int) -> None:
        from .samples import render_samples

        config = self.config
        prompts = list(config.sample_prompts or [])
        if not prompts:
            return
        rng_state = ckpt.capture_rng()  # sampling must not shift the training's random stream
        if self.plan.release:
            memory.load_encoders(self.base)
        try:
            paths = render_samples(
                self.base, prompts, Path(config.output_dir) / "samples", tag,
                size=_sample_size(config), steps=int(config.sample_steps),
                guidance=float(config.sample_guidance_scale),
                seed=int(config.sample_seed or config.seed),
                negative=str(config.sample_negative_prompt),
                clip_skip=int(config.clip_skip),
            )
        finally:
            ckpt.restore_rng(rng_state)
            if self.plan.release:
                memory.release(self.base)
        self.emit(TrainingEvent("sample", step=step, paths=paths))


def _sample_size(config: TrainConfig) -> int:
    size = int(config.resolution)
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
