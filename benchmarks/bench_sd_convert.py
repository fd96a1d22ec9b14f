"""Benchmark: an SDXL-shaped PEFT adapter to kohya, ours vs diffusers' ``convert_state_dict_to_kohya``.

The adapter has full SDXL shapes: rank 16 on the kohya default targets (every transformer block's
attn1/attn2 q/k/v/out, ff, proj_in/out in the UNet; q/k/v/out/fc1/fc2 of both text encoders),
f32 as training saves it, written as our SD PEFT layout (one PEFT folder per component).

- ours: ``converters.convert(..., to="kohya")`` (LDM names, real alphas, fp16, metadata, hashes).
- diffusers: load each component with safetensors, prefix the component, ``convert_state_dict_to_kohya``
  (which writes diffusers-style names and alpha = rank), cast to fp16 and ``save_file``: the recipe
  of diffusers' training scripts.

Each runs in its own subprocess; wall time and that child's peak RSS (``os.wait4``) are reported
with the ratios ours/theirs.

Usage: python benchmarks/bench_sd_convert.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RANK = 16
# SDXL base: (channels, transformer layers per attention, attentions) per block with attention.
UNET_BLOCKS = [("down_blocks.1", 640, 2, 2), ("down_blocks.2", 1280, 10, 2), ("mid_block", 1280, 10, 1),
               ("up_blocks.0", 1280, 10, 3), ("up_blocks.1", 640, 2, 3)]
CONTEXT = 2048
TEXT_ENCODERS = {"text_encoder": (768, 3072, 12), "text_encoder_2": (1280, 5120, 32)}


def sdxl_modules() -> dict[str, dict[str, tuple[int, int]]]:
    """{component: {module path: (out, in)}} for the kohya default LoRA targets of SDXL."""
    unet: dict[str, tuple[int, int]] = {}
    for block, ch, depth, count in UNET_BLOCKS:
        for a in range(count):
            root = f"{block}.attentions.{a}" if block != "mid_block" else "mid_block.attentions.0"
            unet[f"{root}.proj_in"] = (ch, ch)
            unet[f"{root}.proj_out"] = (ch, ch)
            for t in range(depth):
                tb = f"{root}.transformer_blocks.{t}"
                for attn, kv_in in (("attn1", ch), ("attn2", CONTEXT)):
                    unet[f"{tb}.{attn}.to_q"] = (ch, ch)
                    unet[f"{tb}.{attn}.to_k"] = (ch, kv_in)
                    unet[f"{tb}.{attn}.to_v"] = (ch, kv_in)
                    unet[f"{tb}.{attn}.to_out.0"] = (ch, ch)
                unet[f"{tb}.ff.net.0.proj"] = (ch * 8, ch)
                unet[f"{tb}.ff.net.2"] = (ch, ch * 4)
    out = {"unet": unet}
    for component, (hidden, ffn, layers) in TEXT_ENCODERS.items():
        te = {}
        for n in range(layers):
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                te[f"text_model.encoder.layers.{n}.self_attn.{proj}"] = (hidden, hidden)
            te[f"text_model.encoder.layers.{n}.mlp.fc1"] = (ffn, hidden)
            te[f"text_model.encoder.layers.{n}.mlp.fc2"] = (hidden, ffn)
        out[component] = te
    return out


def build_inputs(folder: Path) -> Path:
    """Write the SDXL-shaped PEFT adapter (one PEFT folder per component) and return its folder."""
    sys.path.insert(0, str(ROOT))
    from converters.formats.peft import CONFIG, SIDECAR, WEIGHTS
    from converters.safetensors_io import write_safetensors

    adapter = folder / "sdxl-peft"
    rng = np.random.default_rng(0)
    for component, modules in sdxl_modules().items():
        sub = adapter / component
        sub.mkdir(parents=True, exist_ok=True)

        def tensors(modules=modules):
            for path, (n_out, n_in) in modules.items():
                key = f"base_model.model.{path}"
                yield f"{key}.lora_A.weight", rng.standard_normal((RANK, n_in), dtype=np.float32) * 0.01
                yield f"{key}.lora_B.weight", rng.standard_normal((n_out, RANK), dtype=np.float32) * 0.01

        write_safetensors(sub / WEIGHTS, tensors())
        (sub / CONFIG).write_text(json.dumps({"peft_type": "LORA", "r": RANK, "lora_alpha": 8,
                                              "target_modules": sorted({p.rsplit(".", 1)[-1] for p in modules})}))
    (adapter / SIDECAR).write_text(json.dumps({"arch": "sdxl", "metadata": {}}))
    return adapter


def run_ours(src: Path, dst: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from converters import convert

    convert(src, dst, to="kohya", force=True)


def run_diffusers(src: Path, dst: Path) -> None:
    import torch
    from diffusers.utils import convert_state_dict_to_kohya
    from safetensors.torch import load_file, save_file

    state = {}
    for component in ("unet", "text_encoder", "text_encoder_2"):
        for key, value in load_file(str(src / component / "adapter_model.safetensors")).items():
            state[f"{component}.{key.removeprefix('base_model.model.')}"] = value
    kohya = convert_state_dict_to_kohya(state)
    kohya = {k: v.to(torch.float16) if not k.endswith(".alpha") else v for k, v in kohya.items()}
    save_file(kohya, str(dst))


def _child(which: str, src: str, dst: str) -> None:
    start = time.perf_counter()
    {"ours": run_ours, "diffusers": run_diffusers}[which](Path(src), Path(dst))
    print(json.dumps({"wall": time.perf_counter() - start}))


def measure(which: str, src: Path, dst: Path) -> dict:
    """Run one converter in a subprocess: its own wall time, the process's wall time and peak RSS."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", which, str(src), str(dst)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT))
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{which} failed:\n{err[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["process_wall"] = time.perf_counter() - start
    result["peak_rss_mib"] = usage.ru_maxrss / 1024
    result["size_mib"] = dst.stat().st_size / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="build inputs and outputs in this folder and keep them")
    parser.add_argument("--child", nargs=3, metavar=("WHICH", "SRC", "DST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep) if args.keep else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        src = build_inputs(folder)
        n_modules = sum(len(m) for m in sdxl_modules().values())
        src_mib = sum(f.stat().st_size for f in src.rglob("*.safetensors")) / 2**20
        print(f"SDXL-shaped PEFT adapter: {n_modules} modules, rank {RANK}, f32, {src_mib:.0f} MiB "
              f"(built in {time.perf_counter() - t0:.1f} s)")
        results = {which: measure(which, src, folder / f"{which}.safetensors") for which in ("ours", "diffusers")}
    for which, r in results.items():
        print(f"{which:>10}: convert {r['wall']:.2f} s (process {r['process_wall']:.2f} s), "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB, output {r['size_mib']:.0f} MiB")
    ours, theirs = results["ours"], results["diffusers"]
    print(f"     ratio: convert time {ours['wall'] / theirs['wall']:.2f}x, "
          f"process time {ours['process_wall'] / theirs['process_wall']:.2f}x, "
          f"peak RSS {ours['peak_rss_mib'] / theirs['peak_rss_mib']:.2f}x (ours / diffusers)")


if __name__ == "__main__":
    main()
