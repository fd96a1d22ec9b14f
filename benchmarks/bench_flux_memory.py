"""Flux.1 LoRA training memory levers on a reduced-depth, Flux-shaped transformer (CPU or GPU).

The transformer has Flux.1's layout and real head size (128) at a chosen width and depth (default:
width 1536, 1 double + 2 single blocks), random weights, saved as a bf16 BFL file and as city96-style
GGUF Q8_0 / Q4_0; the text encoders and the VAE are the tiny ones (the levers act on the transformer).
Each variant trains ``--steps`` steps in a subprocess of its own (clean peak RSS / VRAM), rank 16,
batch 1, latents and captions cached, encoders released. Prints s/step and peak memory per variant
and their ratios to the float32-storage run.

    python benchmarks/bench_flux_memory.py                       # defaults: 256 px, 3 steps
    python benchmarks/bench_flux_memory.py --width 3072 --double 2 --single 4 --resolution 512

``blocks_to_swap`` is accepted and logged as a no-op on a CPU run. sd-scripts' ``flux_train_network.py`` is
compared in ``bench_flux_vs_sd_scripts.py`` (full width 3072: sd-scripts reads only the depth from the file).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GIB = 2**30

VARIANTS = {
    "fp32 storage": {"frozen_weight_dtype": "fp32"},
    "bf16 storage (auto)": {},
    "bf16 + checkpointing": {"gradient_checkpointing": True},
    "fp8_base": {"fp8_base": True},
    "fp8_base + checkpointing": {"fp8_base": True, "gradient_checkpointing": True},
    "GGUF Q8_0": {"base": "Q8_0"},
    "GGUF Q4_0": {"base": "Q4_0"},
    "GGUF Q4_0 + checkpointing": {"base": "Q4_0", "gradient_checkpointing": True},
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1536, help="transformer width (multiple of 128)")
    parser.add_argument("--double", type=int, default=1, help="double blocks")
    parser.add_argument("--single", type=int, default=2, help="single blocks")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--work", type=Path, default=None, help="folder for the files (default: a temp folder)")
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "OUT"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build_files(args: argparse.Namespace, work: Path) -> dict[str, dict]:
    """{"bf16" | "Q8_0" | "Q4_0": part files} of the reduced Flux-shaped model and the tiny encoders."""
    import torch
    from diffusers import FluxTransformer2DModel

    from extension.models.flux_weights import diffusers_to_bfl, rope_axes
    from extension.tiny.flux import TRANSFORMER, save_city96_gguf, save_safetensors, save_tiny_flux

    tiny = save_tiny_flux(work / "parts")
    torch.manual_seed(0)
    model = FluxTransformer2DModel(**dict(TRANSFORMER, num_layers=args.double, num_single_layers=args.single,
                                          attention_head_dim=128, num_attention_heads=args.width // 128,
                                          axes_dims_rope=rope_axes(128), guidance_embeds=True))
    bfl = diffusers_to_bfl(model.state_dict())
    del model
    bf16 = save_safetensors(bfl, work / "flux-reduced-bf16.safetensors", torch.bfloat16)
    files = {"bf16": {**tiny, "base_model": bf16}}
    for qtype in ("Q8_0", "Q4_0"):
        files[qtype] = {**tiny, "base_model": save_city96_gguf(bfl, work / f"flux-reduced-{qtype}.gguf", qtype)}
    return files


def child(config_path: Path, out: Path) -> None:
    """Train the config; write step times and the peak RSS (and VRAM) as JSON."""
    import torch
    import yaml

    from extension.runner import run_training

    peak = {"rss": 0}

    def watch() -> None:
        import os

        while True:
            with open("/proc/self/statm") as handle:
                peak["rss"] = max(peak["rss"], int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()
    stamps = []
    result = run_training(yaml.safe_load(config_path.read_text()),
                          lambda e: stamps.append(time.perf_counter()) if e.kind == "step" else None)
    vram = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    out.write_text(json.dumps({"status": result.status, "message": result.message, "stamps": stamps,
                               "rss": peak["rss"], "vram": vram}))


def run_variant(name: str, files: dict, data: Path, args: argparse.Namespace, work: Path) -> dict:
    import yaml

    settings = dict(VARIANTS[name])
    base = files[settings.pop("base", "bf16")]
    config = {"base_model": str(base["base_model"]), "clip_l": str(base["clip_l"]), "t5xxl": str(base["t5xxl"]),
              "ae": str(base["ae"]), "train_data_dir": str(data),
              "output_dir": str(work / "runs" / name.replace(" ", "_")),
              "output_name": "bench", "resolution": args.resolution, "min_bucket_reso": args.resolution,
              "max_bucket_reso": args.resolution, "lora_rank": 16, "lora_alpha": 16, "batch_size": 1,
              "max_train_steps": args.steps, "t5xxl_max_token_length": 64, "overwrite": True,
              "mixed_precision": "bf16" if _cuda() else "no", **settings}
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    out = work / "result.json"
    subprocess.run([sys.executable, __file__, "--child", str(path), str(out)], check=True)
    return json.loads(out.read_text())


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]))
        return 0
    from extension.demo import make_shape_dataset

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-flux-"))
    files = build_files(args, work)
    data = make_shape_dataset(work / "images", size=args.resolution, per_shape=1)
    size = files["bf16"]["base_model"].stat().st_size
    print(f"reduced Flux: width {args.width}, {args.double} double + {args.single} single blocks, "
          f"bf16 file {size / GIB:.2f} GiB, {args.resolution} px, {args.steps} steps")
    rows = {}
    for name in args.variants:
        got = run_variant(name, files, data, args, work)
        if got["status"] != "done":
            print(f"{name}: {got['status']} {got['message']}")
            continue
        times = [b - a for a, b in zip(got["stamps"], got["stamps"][1:], strict=False)] or [float("nan")]
        memory = got["vram"] if got["vram"] is not None else got["rss"]
        rows[name] = (statistics.median(times), memory)
    first = next(iter(rows.values()), None)
    what = "peak VRAM" if _cuda() else "peak RSS"
    for name, (s_step, memory) in rows.items():
        print(f"{name:28s} {s_step:7.2f} s/step ({s_step / first[0]:.2f}x)   {what} {memory / GIB:6.2f} GiB "
              f"({memory / first[1]:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
