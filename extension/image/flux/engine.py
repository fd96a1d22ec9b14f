"""The Flux.1 LoRA trainer: the image engine's run (data, optimizer, schedule, resume, saves) with Flux's
base, conditioning, rectified-flow objective and samples in place of SD's.

The frozen transformer is loaded after T5 + CLIP-L outputs and VAE latents are cached and those
encoders freed (when the data allows caching), as the SD engine's memory plan does. LoRA layers go
on the transformer's linears with PEFT (by default every linear of the double and single blocks,
sd-scripts' set), the q/k/v[/MLP] layers of a fused BFL module sharing one down as sd-scripts trains it; the
file is written in kohya/sd-scripts layout (fused ``qkv``/``linear1`` at the run's rank).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...config import DEFAULT_UNET_TARGETS, TrainConfig, as_config
from ...errors import UserError
from ...training import checkpoint as ckpt
from ...training.events import EventCallback, TrainingControl, TrainingEvent, TrainResult, cancel_point
from .. import memory
from ..conditioning import LatentCache
from ..engine import _ImageRun, _weight_dtype, train_image
from ..frozen_weights import adapters_in_fp32
from ..init_lora import load_image_init
from ..lean_lora import use_lean_lora
from ..lora import export_adapter, inject_lora, lora_parameters, resolve_targets
from ..metadata import training_metadata
from ..noise import diffusion_loss, sample_noise, step_generator
from .conditioning import FluxConditioner, cache_then_release, encoders_to, t5_length
from .flow import flow_target, image_ids, noisy_input, pack, read_prediction, sample_sigmas, text_ids, unpack
from .init_lora import flux_layouts, read_flux_init, tie_fused_downs
from .metadata import flux_metadata

_BLOCKS = ("transformer_blocks.", "single_transformer_blocks.")
ENCODERS = ("vae", "text_encoders")


def train_flux(config: TrainConfig | dict, callback: EventCallback | None = None,
               control: TrainingControl | None = None) -> TrainResult:
    """Train a Flux.1 LoRA as ``config`` says (``train_image``'s contract: events, stop/cancel, result)."""
    return train_image(as_config(config), callback, control, run_class=_FluxRun)


def flux_targets(transformer: torch.nn.Module, targets: list[str]) -> list[str]:
    """LoRA targets: sd-scripts' default (every linear in the double and single blocks) while
    ``unet_target_modules`` is left at its SD default, else the given names resolved."""
    if list(targets) != DEFAULT_UNET_TARGETS:
        return resolve_targets(transformer, targets, "transformer")
    return [n for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith(_BLOCKS)]


def check_flux_config(config: TrainConfig) -> None:
    """Settings that do not apply to Flux.1 stop the run with one line each: why, and what to set."""
    refused = {"conv_rank": ("Flux.1 has no convolutions, only linear layers, to adapt", "set conv_rank: 0"),
               "min_snr_gamma": ("min-SNR weights an epsilon-prediction loss by the timestep's SNR; Flux.1 trains a "
                                 "rectified flow and sd-scripts' flux_train_network.py does not apply it either",
                                 "leave min_snr_gamma empty")}
    for key, (why, fix) in refused.items():
        if getattr(config, key):
            raise UserError(f"config: {key} does not apply to Flux.1 bases ({why}); {fix}")


class _FluxRun(_ImageRun):
    """One Flux.1 training run; the phases ``_ImageRun.train`` lists, with Flux's where SD's differ."""

    def _prepare_run(self) -> None:
        check_flux_config(self.config)
        super()._prepare_run()
        self.init = read_flux_init(self.config)  # a misfit stops here, before any part loads

    def _load_base(self) -> None:
        """Encoders first (caches filled, encoders freed) when the data allows, then the frozen transformer."""
        from ...models.flux_loader import PARTS, load_flux_base

        config, data = self.config, self.data
        self.device = self.accelerator.device
        self.weight_dtype = _weight_dtype(self.accelerator.mixed_precision, self.device)
        self.train_te = bool(config.train_text_encoder)  # CLIP-L's LoRA (sd-scripts' lora_te1_); T5 stays frozen
        self.release = bool(config.release_encoders and config.cache_latents and config.cache_text_encoder_outputs
                            and data.text_is_static and data.pixels_are_static and not self.train_te)
        base = self.base = load_flux_base(config, ENCODERS if self.release else PARTS, self.weight_dtype)
        self.t5_tokens = t5_length(config, base)
        self.early = cache_then_release(base, data, config, self.seed, self.device, self.rank,
                                        self.world) if self.release else None
        base.load_parts(("transformer",))
        if int(config.blocks_to_swap):
            self._log(f"blocks_to_swap {config.blocks_to_swap}: no effect on this {self.device.type} run "
                      "(every block stays where the transformer is)")

    def _inject_lora(self) -> None:
        config, transformer = self.config, self.base.transformer
        torch.manual_seed(self.seed)  # LoRA init is the same in every process and every resumed run
        wanted = {"transformer": flux_targets(transformer, list(config.unet_target_modules))}
        encoders = {"text_encoder": self.base.text_encoders[0]} if self.train_te else {}
        if self.train_te:
            wanted["text_encoder"] = resolve_targets(encoders["text_encoder"], config.text_encoder_target_modules,
                                                     "text_encoder")
        layouts = flux_layouts(config, wanted, encoders, self.init, self._log)
        self.components = {"transformer": transformer, **encoders}
        with adapters_in_fp32():
            for key, layout in layouts.items():
                inject_lora(self.components[key], layout.names, int(config.lora_rank), float(config.lora_alpha),
                            float(config.lora_dropout), module_ranks=layout.ranks)
        if config.gradient_checkpointing is True:  # image runs: auto means off
            transformer.enable_gradient_checkpointing()
            for encoder in encoders.values():
                encoder.gradient_checkpointing_enable()
                encoder.enable_input_require_grads()  # see image/engine.py: transformers < 4.35 reentrant checkpoints
        self._place_modules()
        if config.inplace_lora_add:
            for component in self.components.values():
                use_lean_lora(component)
        if self.init is not None:
            load_image_init(layouts, self.components)
        tied = tie_fused_downs(layouts["transformer"], transformer)
        if tied:
            self._log(f"{tied} fused qkv/linear1 module(s) go on training as one LoRA each (one down shared by "
                      "their layers, as sd-scripts trains them)")

    def _place_modules(self) -> None:
        """The transformer on the device; on a half-precision GPU run its float32 parts in that dtype."""
        base, device, dtype = self.base, self.device, self.weight_dtype
        base.transformer.to(device)
        if not self.release:
            encoders_to(base, device)
        for name, param in base.transformer.named_parameters():
            if "lora_" in name:
                param.data = param.data.float()
            elif dtype != torch.float32 and param.dtype == torch.float32:
                param.data = param.data.to(dtype)

    def _build_optimizer(self) -> None:
        from ...training.optimizers import build_optimizer

        config = self.config
        groups = [{"params": lora_parameters(self.base.transformer), "lr": float(config.learning_rate)}]
        if "text_encoder" in self.components:
            te_lr = config.text_encoder_lr
            groups.append({"params": lora_parameters(self.components["text_encoder"]),
                           "lr": float(te_lr if te_lr is not None else config.learning_rate)})
        self.optimizer = build_optimizer(groups, config)

    def _build_conditioning(self) -> None:
        config, base, data = self.config, self.base, self.data
        cache_te = data.text_is_static and config.cache_text_encoder_outputs
        self.cache_latents = data.pixels_are_static and config.cache_latents
        callables = [self.wrapped.get(key, encoder) for key, encoder in zip(("text_encoder", "t5"), base.text_encoders,
                                                                             strict=False)]
        self.encoder, self.latents_of = self.early or (
            FluxConditioner(base, self.device, cache_te, self.t5_tokens, callables, self.train_te),
            LatentCache(base.vae, self.seed, self.device, self.cache_latents))
        self._loop_settings()

    def _micro_batch(self, batch: list[int], epoch: int, j: int, n_micro: int) -> torch.Tensor:
        """Forward and backward of one micro-batch: σ drawn, noisy latents, velocity loss."""
        device, dtype = self.device, self.weight_dtype
        gen = step_generator(self.seed, self.step * self.gas + j, self.rank, self.world)
        items = [self.data.item(i, epoch) for i in batch]
        latents = self.latents_of(items).to(device, dtype)
        hidden, pooled = self.encoder([it.caption for it in items])
        noise = sample_noise(latents, gen, self.noise_offset)
        sigmas = sample_sigmas(self.config, latents.shape[0], gen, tuple(latents.shape[-2:])).to(device)
        noisy = noisy_input(latents, noise, sigmas)
        pred = self._velocity(noisy, sigmas, hidden.to(device, dtype), pooled.to(device, dtype))
        pred = read_prediction(pred, noisy, sigmas, str(self.config.model_prediction_type))
        loss = diffusion_loss(pred, flow_target(latents, noise), None, sigmas)
        self.accelerator.backward(loss / n_micro)
        return loss.detach()

    def _velocity(self, noisy: torch.Tensor, sigmas: torch.Tensor, hidden: torch.Tensor,
                  pooled: torch.Tensor) -> torch.Tensor:
        """The transformer's output for (B, C, H, W) ``noisy`` latents, unpacked to that shape."""
        h, w = noisy.shape[-2:]
        device, batch = noisy.device, noisy.shape[0]
        guidance = torch.full((batch,), float(self.config.guidance_scale), device=device) \
            if self.base.has_guidance else None
        with self.accelerator.autocast():
            out = self.wrapped["transformer"](
                hidden_states=pack(noisy), encoder_hidden_states=hidden, pooled_projections=pooled,
                timestep=sigmas.to(noisy.dtype), img_ids=image_ids(h, w, device),
                txt_ids=text_ids(hidden.shape[1], device), guidance=guidance, return_dict=False)[0]
        return unpack(out, h, w)

    def _save_lora(self, final: bool, epoch: int) -> list[str]:
        self.accelerator.wait_for_everyone()
        meta = training_metadata(self.config, self.base, self.data, step=self.step, epoch=epoch,
                                 started_at=self.started_at, total_steps=self.total_steps, world=self.world,
                                 cache_latents=self.cache_latents, num_epochs=self.epochs)
        meta = flux_metadata(meta, self.config, self.base, self.t5_tokens)
        adapter = export_adapter(self.components, "flux", meta)
        return self.outputs.save(adapter, None if final else self.step)

    def _samples(self, tag: str, step: int) -> None:
        from .samples import render_flux_samples

        config, base = self.config, self.base
        prompts = list(config.sample_prompts or [])
        if not prompts:
            return
        rng_state = ckpt.capture_rng()  # sampling must not shift the training's random stream
        if self.release:
            base.load_parts(ENCODERS)
        try:
            cancel_point()
            encoders_to(base, self.device)
            paths = render_flux_samples(
                base, FluxConditioner(base, self.device, False, self.t5_tokens), prompts,
                Path(config.output_dir) / "samples", tag, size=int(config.resolution), steps=int(config.sample_steps),
                guidance=float(config.sample_guidance_scale), seed=int(config.sample_seed or config.seed))
        finally:
            ckpt.restore_rng(rng_state)
            if self.release:
                memory.release(base)
        self.emit(TrainingEvent("sample", step=step, paths=paths))
