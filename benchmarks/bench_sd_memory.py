"""Image LoRA training memory: lora-bridge's engine (with and without its memory levers) vs kohya sd-scripts.

Same job on both sides: a single-file checkpoint, 8 images with captions, rank 8 / alpha 4, AdamW,
batch 1, UNet only, latents cached, SDPA, fp32 on CPU, ``--steps`` optimizer steps. Every run is a
subprocess of its own, so its peak RSS (``wait4`` ru_maxrss) is clean; optimizer steps are timed
by a global optimizer post-step hook installed in each child, the same way on both sides.

    python benchmarks/bench_sd_memory.py                                    # tiny built-in fallback
    python benchmarks/bench_sd_memory.py --checkpoint sd15.safetensors --resolution 256 --steps 12 \\
        --sd-scripts /path/to/sd-scripts --sd-scripts-python /path/to/venv/bin/python --tokenizer-dir TOK

``TOK`` holds ``openai_clip-vit-large-patch14/`` (and for SDXL ``laion_CLIP-ViT-bigG-14-laion2B-39B-b160k/``),
CLIP tokenizer folders in sd-scripts' ``--tokenizer_cache_dir`` layout; ours reads the same ones.
Without ``--sd-scripts`` ours is compared with ours-with-levers-off. Build full-size random
checkpoints with ``benchmarks/sd_random_checkpoint.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30

# Runs inside each child: times optimizer steps and samples RSS, then runs the script as __main__.
_WRAPPER = r"""
import atexit, json, os, runpy, sys, threading, time
import torch
stamps, peaks = [], {"before_first_step": 0, "training": 0}
def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
def _watch():
    while True:
        peaks["training" if stamps else "before_first_step"] = max(
            peaks["training" if stamps else "before_first_step"], _rss())
        time.sleep(0.02)
threading.Thread(target=_watch, daemon=True).start()
from torch.optim.optimizer import register_optimizer_step_post_hook
register_optimizer_step_post_hook(lambda *a, **k: stamps.append(time.perf_counter()))
out = os.environ["BENCH_OUT"]
atexit.register(lambda: open(out, "w").write(json.dumps({"stamps": stamps, "peaks": peaks})))
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
runpy.run_path(script, run_name="__main__")
"""

OURS_SETTINGS = {
    "levers off": {"frozen_weight_dtype": "fp32", "release_encoders": False, "inplace_lora_add": False},
    "default": {},
    "default - inplace_lora_add": {"inplace_lora_add": False},
    "default + gradient_checkpointing": {"gradient_checkpointing": True},
    "bf16 storage": {"frozen_weight_dtype": "bf16"},
    "bf16 compute": {"frozen_compute_dtype": "bf16"},
    "bf16 compute + gradient_checkpointing": {"frozen_compute_dtype": "bf16", "gradient_checkpointing": True},
}


def make_dataset(folder: Path, resolution: int, count: int = 8) -> Path:
    """``count`` random-texture images with captions, in kohya's ``<repeats>_<name>`` layout."""
    import numpy as np
    from PIL import Image

    sub = folder / "1_bench"
    sub.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    words = ["a photo of", "a painting of", "a red", "a blue", "cat", "dog", "house", "tree"]
    for i in range(count):
        low = rng.integers(0, 255, (resolution // 16, resolution // 16, 3), dtype=np.uint8)
        image = Image.fromarray(low).resize((resolution, resolution), Image.BICUBIC)
        image.save(sub / f"img{i:02d}.png")
        (sub / f"img{i:02d}.txt").write_text(f"{words[i % 4]} {words[4 + i % 4]}, style {i}")
    return folder


def run_child(cmd: list[str], env: dict, log: Path) -> dict | None:
    """Run ``cmd`` (a python + wrapper command line): peak RSS, step stamps and phase peaks (None if it failed)."""
    out = log.with_suffix(".json")
    env = {**os.environ, **env, "BENCH_OUT": str(out)}
    with open(log, "w") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not out.is_file():
        tail = log.read_text(errors="replace").splitlines()[-15:]
        print(f"child failed ({proc.returncode}); log {log}:\n" + "\n".join(tail), flush=True)
        return None
    data = json.loads(out.read_text())
    data["peak_rss"] = usage.ru_maxrss * 1024
    notes = Path(str(out) + ".ours")
    data["notes"] = json.loads(notes.read_text()) if notes.is_file() else {}
    return data


def step_times(stamps: list[float], per_epoch: int) -> dict[str, float]:
    """s/step: median of the intervals after the first two steps, and the mean over the second epoch."""
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    later = gaps[2:] or gaps
    second = gaps[per_epoch - 1 : 2 * per_epoch - 1] or later
    return {"median": statistics.median(later) if later else float("nan"),
            "epoch2": statistics.fmean(second) if second else float("nan")}


def ours_cmd(python: str, config: dict, work: Path) -> list[str]:
    path = work / f"ours-{abs(hash(json.dumps(config, sort_keys=True)))}.json"
    path.write_text(json.dumps(config))
    return [python, "-c", _WRAPPER, str(Path(__file__).resolve()), "--child-ours", str(path)]


def child_ours(config_path: Path) -> None:
    """Child side: train with our engine from a JSON config."""
    sys.path.insert(0, str(ROOT))
    import diffusers  # noqa: F401 - imported here so the baseline below includes the libraries
    import peft  # noqa: F401
    import transformers  # noqa: F401

    from extension.config import config_from_dict
    from extension.image import engine as image_engine
    from extension.image.engine import train_image

    notes = {"rss_after_imports": _rss()}
    runs = []
    real_init = image_engine._ImageRun.__init__

    def keep(self, *a, **k):  # noqa: ANN001, ANN002, ANN003
        real_init(self, *a, **k)
        runs.append(self)

    image_engine._ImageRun.__init__ = keep

    def on_event(event) -> None:  # noqa: ANN001
        if event.kind == "start":
            unet = runs[0].base.unet
            notes["rss_at_start"] = _rss()
            notes["unet_bytes"] = sum(p.numel() * p.element_size() for p in unet.parameters())
            notes["lora_params"] = sum(p.numel() for p in unet.parameters() if p.requires_grad)

    result = train_image(config_from_dict(json.loads(config_path.read_text()), source="bench"), on_event)
    if result.status != "done":
        raise SystemExit(f"ours: {result.status}: {result.message}")
    Path(os.environ["BENCH_OUT"] + ".ours").write_text(json.dumps(notes))


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def sd_scripts_cmd(args, data: Path, out: Path) -> list[str]:
    script = "sdxl_train_network.py" if args.sdxl else "train_network.py"
    cmd = [args.sd_scripts_python, "-c", _WRAPPER, str(Path(args.sd_scripts) / script),
           "--pretrained_model_name_or_path", str(args.checkpoint), "--train_data_dir", str(data),
           "--output_dir", str(out), "--output_name", "bench", "--save_model_as", "safetensors",
           "--resolution", str(args.resolution), "--train_batch_size", "1", "--max_train_steps", str(args.steps),
           "--network_module", "networks.lora", "--network_dim", str(args.rank), "--network_alpha", str(args.alpha),
           "--network_train_unet_only", "--optimizer_type", "AdamW", "--learning_rate", "1e-4",
           "--lr_scheduler", "constant", "--cache_latents", "--sdpa", "--mixed_precision", "no",
           "--save_precision", "fp16", "--caption_extension", ".txt", "--seed", "42",
           "--max_data_loader_n_workers", "0", "--tokenizer_cache_dir", str(args.tokenizer_dir)]
    if args.sdxl:
        cmd += ["--cache_text_encoder_outputs", "--no_half_vae"]
    return cmd


def tiny_fallback(work: Path) -> Path:
    """A tiny SD1 single file stored in fp16 (as real checkpoints are), with its yaml and tokenizer."""
    sys.path.insert(0, str(ROOT))
    import torch
    from safetensors.torch import save_file

    from extension.image.lazy_checkpoint import LazyCheckpoint
    from extension.tiny.sd import write_tokenizer_files
    from extension.tiny.sd_checkpoint import save_tiny_sd_checkpoint

    fp32 = save_tiny_sd_checkpoint("sd1", work / "tiny32.safetensors", seed=0)
    path = work / "tiny-sd1.safetensors"
    save_file({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in LazyCheckpoint(fp32).items()},
              str(path))
    shutil.copy(fp32.with_suffix(".yaml"), path.with_suffix(".yaml"))
    write_tokenizer_files(work / "tiny-sd1.tokenizer")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="single-file .safetensors (default: tiny built-in)")
    parser.add_argument("--sd-scripts", type=Path, help="a kohya-ss/sd-scripts checkout (default: ours only)")
    parser.add_argument("--sd-scripts-python", default=sys.executable, help="python of sd-scripts' venv")
    parser.add_argument("--sd-scripts-pythonpath", default="",
                        help="extra PYTHONPATH for sd-scripts (e.g. a torchvision stand-in on a CPU-only torch)")
    parser.add_argument("--tokenizer-dir", type=Path, help="sd-scripts --tokenizer_cache_dir layout (see above)")
    parser.add_argument("--sdxl", action="store_true")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=4.0)
    parser.add_argument("--ours", action="append", choices=list(OURS_SETTINGS),
                        help="our settings to run (repeatable; default: levers off and default)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temp dir)")
    parser.add_argument("--child-ours", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_ours:
        child_ours(args.child_ours)
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-sd-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.checkpoint is None:
        args.checkpoint = tiny_fallback(work)
        args.resolution = min(args.resolution, 64)
        if args.sd_scripts:
            raise SystemExit("--sd-scripts needs --checkpoint (a full-size SD file)")
    data = make_dataset(work / f"data{args.resolution}", args.resolution)
    tokenizer = None
    if args.tokenizer_dir:  # ours reads tokenizer/ and tokenizer_2/ under tokenizer_path
        tokenizer = work / "ours-tokenizer"
        for sub, name in (("tokenizer", "openai_clip-vit-large-patch14"),
                          ("tokenizer_2", "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k")):
            if (args.tokenizer_dir / name).is_dir() and not (tokenizer / sub).exists():
                shutil.copytree(args.tokenizer_dir / name, tokenizer / sub)
    rows = []
    if args.sd_scripts:
        print("running sd-scripts ...", flush=True)
        result = run_child(sd_scripts_cmd(args, data, work / "out-sd-scripts"),
                           {"PYTHONPATH": args.sd_scripts_pythonpath} if args.sd_scripts_pythonpath else {},
                           work / "sd-scripts.log")
        if result:
            rows.append(("sd-scripts", result))
    for name in args.ours or ["levers off", "default"]:
        print(f"running ours ({name}) ...", flush=True)
        config = dict(base_model=str(args.checkpoint), train_data_dir=str(data),
                      output_dir=str(work / f"out-ours-{name.replace(' ', '_')}"), output_name="bench",
                      resolution=args.resolution, min_bucket_reso=args.resolution, max_bucket_reso=args.resolution,
                      lora_rank=args.rank, lora_alpha=args.alpha, batch_size=1, max_train_steps=args.steps,
                      seed=42, learning_rate=1e-4, optimizer="adamw", mixed_precision="no",
                      **({"tokenizer_path": str(tokenizer)} if tokenizer else {}), **OURS_SETTINGS[name])
        result = run_child(ours_cmd(sys.executable, config, work), {"PYTHONPATH": str(ROOT)},
                           work / f"ours-{name.replace(' ', '_')}.log")
        if result:
            rows.append((f"ours: {name}", result))
    if not rows:
        raise SystemExit("every run failed")
    reference = rows[0][1]
    ref_time = step_times(reference["stamps"], 8)
    print(f"\n{'SDXL' if args.sdxl else 'SD'} {args.checkpoint.name}, {args.resolution} px, {args.steps} steps, "
          f"rank {args.rank}/alpha {args.alpha}; ratios against {rows[0][0]}")
    print(f"{'run':40s} {'peak RSS':>10s} {'ratio':>6s} {'pre-step peak':>13s} {'s/step med':>10s} "
          f"{'ratio':>6s} {'s/step ep2':>10s} {'ratio':>6s}")
    for name, result in rows:
        times = step_times(result["stamps"], 8)
        print(f"{name:40s} {result['peak_rss'] / GIB:9.2f}G {result['peak_rss'] / reference['peak_rss']:6.2f} "
              f"{result['peaks']['before_first_step'] / GIB:12.2f}G {times['median']:10.2f} "
              f"{times['median'] / ref_time['median']:6.2f} {times['epoch2']:10.2f} "
              f"{times['epoch2'] / ref_time['epoch2']:6.2f}")
    print("\nwhere our memory goes (GiB): after imports | after load+cache+LoRA (start) | UNet weights held | "
          "training peak - start (activations, grads, AdamW)")
    for name, result in rows:
        n = result["notes"]
        if n:
            print(f"{name:40s} {n['rss_after_imports'] / GIB:6.2f} | {n['rss_at_start'] / GIB:6.2f} | "
                  f"{n['unet_bytes'] / GIB:6.2f} | {(result['peaks']['training'] - n['rss_at_start']) / GIB:6.2f}"
                  f"   ({n['lora_params']:,} LoRA params)")
    print(f"(scratch: {work})")


if __name__ == "__main__":
    main()
