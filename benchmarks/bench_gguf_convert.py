"""Benchmark: a 7B-shaped PEFT adapter to GGUF, ours vs llama.cpp's convert_lora_to_gguf.py.

The adapter: hidden 4096, FFN 11008, 32 layers, rank 16 on q,k,v,o,gate,up,down, f16 (~80 MB),
built with numpy and written with our safetensors writer. The base is a folder with only a
LLaMA-7B config.json (both converters accept that). Each converter runs in its own subprocess;
wall time and that child's peak RSS (``os.wait4``) are reported, with the ratios ours/theirs.

llama.cpp's converter is found through ``LORA_BRIDGE_LLAMA_CPP`` (the llama-cpp-python sdist
``.tar.gz``, its unpacked root, or its ``vendor/llama.cpp``); without it only ours runs.

Usage: python benchmarks/bench_gguf_convert.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
HIDDEN, FFN, LAYERS, RANK, VOCAB = 4096, 11008, 32, 16, 32000
SHAPES = {  # module -> (out, in)
    "self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (HIDDEN, HIDDEN),
    "self_attn.v_proj": (HIDDEN, HIDDEN), "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (FFN, HIDDEN), "mlp.up_proj": (FFN, HIDDEN), "mlp.down_proj": (HIDDEN, FFN),
}


def build_inputs(folder: Path) -> tuple[Path, Path]:
    """Write the base config folder and the PEFT adapter folder; return (base, adapter)."""
    sys.path.insert(0, str(ROOT))
    from converters.safetensors_io import write_safetensors

    base = folder / "base-7b"
    base.mkdir(parents=True, exist_ok=True)
    (base / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "intermediate_size": FFN, "num_hidden_layers": LAYERS, "num_attention_heads": 32,
        "num_key_value_heads": 32, "vocab_size": VOCAB, "rms_norm_eps": 1e-5, "max_position_embeddings": 4096,
        "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "float16",
    }))
    adapter = folder / "adapter-7b"
    adapter.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def tensors():
        for layer in range(LAYERS):
            for module, (out, inp) in SHAPES.items():
                prefix = f"base_model.model.model.layers.{layer}.{module}"
                yield f"{prefix}.lora_A.weight", rng.standard_normal((RANK, inp), dtype=np.float32).astype(np.float16)
                yield f"{prefix}.lora_B.weight", rng.standard_normal((out, RANK), dtype=np.float32).astype(np.float16)

    write_safetensors(adapter / "adapter_model.safetensors", tensors(), metadata={"format": "pt"})
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": RANK, "lora_alpha": 32, "target_modules": [m.split(".")[1] for m in SHAPES],
        "base_model_name_or_path": str(base), "bias": "none", "fan_in_fan_out": False, "modules_to_save": None,
        "task_type": "CAUSAL_LM", "use_rslora": False, "use_dora": False,
    }))
    return base, adapter


def find_llama_cpp(scratch: Path) -> Path | None:
    """The folder holding convert_lora_to_gguf.py, from LORA_BRIDGE_LLAMA_CPP; None if unavailable."""
    where = os.environ.get("LORA_BRIDGE_LLAMA_CPP")
    if not where:
        return None
    path = Path(where)
    if path.is_file() and path.name.endswith(".tar.gz"):
        with tarfile.open(path) as tar:
            members = [m for m in tar.getmembers()
                       if "/vendor/llama.cpp/" in m.name and (m.name.endswith(".py") or "/gguf-py/" in m.name)]
            tar.extractall(scratch, members=members)  # noqa: S202 - the sdist the user pointed at
        path = next(scratch.glob("*/vendor/llama.cpp"))
    for candidate in (path, path / "vendor" / "llama.cpp"):
        if (candidate / "convert_lora_to_gguf.py").exists():
            return candidate
    return None


def measure(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one child process; raises if it fails."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="work in this folder and keep the files")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-gguf-"))
    work.mkdir(parents=True, exist_ok=True)
    base, adapter = build_inputs(work)
    size = (adapter / "adapter_model.safetensors").stat().st_size / 1e6
    print(f"adapter: {size:.1f} MB f16, {LAYERS} layers x {len(SHAPES)} modules, rank {RANK}")

    ours_out = work / "ours.gguf"
    ours_cmd = [sys.executable, "-c",
                "import sys; sys.path.insert(0, sys.argv[1]); from extension.cli import main; "
                "code = main(sys.argv[2:]); assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(code)",
                str(ROOT), "convert", str(adapter), str(ours_out), "--base", str(base), "--force"]
    ours = measure(ours_cmd)
    print(f"ours:      {ours[0]:6.2f} s  {ours[1]:7.1f} MiB peak RSS  -> {ours_out.stat().st_size / 1e6:.1f} MB")

    src = find_llama_cpp(work / "llama_cpp_src")
    if src is None:
        print("llama.cpp: skipped (set LORA_BRIDGE_LLAMA_CPP to the llama-cpp-python sdist)")
        return 0
    theirs_out = work / "theirs.gguf"
    env = {**os.environ, "PYTHONPATH": str(src)}
    theirs_cmd = [sys.executable, str(src / "convert_lora_to_gguf.py"), str(adapter), "--base", str(base),
                  "--outfile", str(theirs_out), "--outtype", "f16"]
    theirs = measure(theirs_cmd, env)
    print(f"llama.cpp: {theirs[0]:6.2f} s  {theirs[1]:7.1f} MiB peak RSS  -> {theirs_out.stat().st_size / 1e6:.1f} MB")
    print(f"ratio ours/llama.cpp: wall {ours[0] / theirs[0]:.2f}x (goal <= 0.30), "
          f"peak RSS {ours[1] / theirs[1]:.2f}x (goal <= 0.50)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
