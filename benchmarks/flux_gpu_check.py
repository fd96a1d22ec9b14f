"""gpu_check's Flux.1 part: a full-size random Flux.1 dev transformer (19 double + 38 single blocks, width 3072)
stored as float8_e4m3fn (``fp8_base``) and as a city96-style GGUF Q4_0, trained at 512 px, batch 1, rank 16,
bf16 mixed precision, gradient checkpointing; s/step and peak VRAM. The text encoders are one-layer random
CLIP-L/T5 of the real widths (768 / 4096) and the VAE the tiny 16-channel one: the transformer is what
the levers act on. ``--dry-run`` uses a 2-block, 256-wide transformer on the CPU (the logic only).

The random weights are drawn one BFL tensor at a time (std 0.02, norm scales 1), so building needs about
the file's size in host memory (Q4_0: 6.7 GB, fp8: 11.9 GB) and as much disk, removed afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch

FULL = dict(num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24)
TINY = dict(num_layers=1, num_single_layers=1, attention_head_dim=128, num_attention_heads=2)


class RandomBfl(Mapping):
    """{BFL name: random tensor} of a Flux transformer's shapes, drawn when read (never all in memory)."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> None:
        self.shapes, self.seed = shapes, seed

    def __getitem__(self, name: str) -> torch.Tensor:
        if name.endswith(".scale"):
            return torch.ones(self.shapes[name])
        gen = torch.Generator().manual_seed(self.seed + sorted(self.shapes).index(name))
        return torch.randn(self.shapes[name], generator=gen) * 0.02

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def bfl_shapes(size: str) -> dict[str, tuple[int, ...]]:
    """BFL tensor shapes of the Flux.1 dev transformer (``full``) or a 2-block 256-wide one (``tiny``)."""
    from diffusers import FluxTransformer2DModel

    from extension.image.lazy_checkpoint import empty_model
    from extension.models.flux_weights import diffusers_to_bfl, rope_axes

    kwargs = dict(FULL if size == "full" else TINY, patch_size=1, in_channels=64, joint_attention_dim=4096,
                  pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=rope_axes(128))
    model = empty_model(lambda: FluxTransformer2DModel(**kwargs))
    return {k: tuple(v.shape) for k, v in diffusers_to_bfl(model.state_dict()).items()}


def build_flux_files(work: Path, size: str) -> dict[str, dict]:
    """{"fp8": part files, "Q4_0": part files} of a random Flux.1 transformer and real-width small encoders."""
    from safetensors.torch import save_file

    from extension.tiny.flux import build_tiny_flux, part_states, save_city96_gguf, save_safetensors

    work.mkdir(parents=True, exist_ok=True)
    parts = build_tiny_flux(widths=(768, 4096), transformer=False)
    states = part_states(parts)
    encoders = {key: save_safetensors(states[state], work / f"{key}.safetensors")
                for key, state in (("clip_l", "clip_l"), ("t5xxl", "t5xxl"), ("ae", "vae"))}
    from extension.tiny.sd import write_tokenizer_files

    write_tokenizer_files(work / "tokenizer")
    parts["t5_tokenizer"].save_pretrained(str(work / "tokenizer_2"))
    random = RandomBfl(bfl_shapes(size))
    fp8 = work / "flux1-dev-random-fp8.safetensors"
    save_file({k: (v.to(torch.float8_e4m3fn) if v.ndim > 1 else v.to(torch.bfloat16)) for k, v in random.items()},
              str(fp8))
    q4 = save_city96_gguf(random, work / "flux1-dev-random-Q4_0.gguf", "Q4_0")
    return {"fp8": {**encoders, "base_model": fp8}, "Q4_0": {**encoders, "base_model": q4}}


def run_flux(args, device: torch.device, work: Path, checks, peak_memory, run_training) -> list[str]:
    """Train on the fp8 and the Q4_0 transformer; check the LoRA trained; return summary lines."""
    from extension._converters import converters
    from extension.demo import make_shape_dataset

    full = args.size == "full"
    resolution = 512 if full else 64
    steps = args.flux_steps or (8 if full else 3)
    print(f"\n== flux: {'full-size' if full else 'tiny'} random Flux.1 dev transformer, fp8 and GGUF Q4_0 storage, "
          f"{resolution} px, batch 1, rank 16, {steps} steps", flush=True)
    start = time.perf_counter()
    files = build_flux_files(work / "flux", args.size)
    data = make_shape_dataset(work / "flux-images", size=resolution, per_shape=1)
    print(f"  built the files in {time.perf_counter() - start:.0f} s", flush=True)
    summary = []
    for label, base in files.items():
        stamps: list[float] = []
        config = {**{k: str(v) for k, v in base.items()}, "train_data_dir": str(data),
                  "output_dir": str(work / f"flux-out-{label}"), "output_name": "flux", "resolution": resolution,
                  "min_bucket_reso": resolution, "max_bucket_reso": resolution, "lora_rank": 16,
                  "lora_alpha": 16, "batch_size": 1, "max_train_steps": steps, "gradient_checkpointing": True,
                  "mixed_precision": "bf16" if device.type == "cuda" else "no", "fp8_base": label == "fp8",
                  "t5xxl_max_token_length": 64 if not full else 512, "overwrite": True}
        with peak_memory(device) as mem:
            result = run_training(config, lambda e, stamps=stamps: stamps.append(time.perf_counter())
                                  if e.kind == "step" else None)
        ok = checks.expect(result.status == "done" and np.isfinite(result.final_loss or float("nan")),
                           f"flux {label}: run {result.status}, final loss {result.final_loss}")
        if ok:
            adapter = converters.load_adapter(Path(result.output_files[-1]))
            checks.expect(any(np.abs(np.asarray(m.up)).max() > 0 for m in adapter.modules.values()),
                          f"flux {label}: LoRA trained (some up weight non-zero)")
        times = list(np.diff(stamps[1:])) or [float("nan")]
        what = "peak VRAM" if device.type == "cuda" else "peak RSS"
        size = base["base_model"].stat().st_size
        summary.append(f"flux {label}: {float(np.median(times)):.2f} s/step, {what} {mem.peak / 2**30:.2f} GiB "
                       f"({mem.peak / size:.2f}x the {size / 2**30:.2f} GiB transformer file)")
        print("  " + summary[-1], flush=True)
    return summary
