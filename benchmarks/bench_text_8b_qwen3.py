"""Benchmark (not a test): the text engine on a Qwen3-8B-shaped (or Gemma-3-4B-shaped) Q4_K_M base vs its matmul floor.

Builds the random base itself (``kquant_builder.py``: Qwen3-8B 36 x 4096, FFN 12288, GQA 32/8,
151936 tokens, about 5.0 GB; Gemma-3-4B 34 x 2560, FFN 10240, 8/4 heads of 256, 262208 tokens
tied, sliding window 1024, about 2.5 GB), reused while its name matches, then runs
``bench_text_7b.py``'s child on it: the articles' config (``configs/lora_scripts_text.yaml``: rank
16, batch 4, all seven projections) on samples of ``--tokens`` tokens for ``--steps`` steps, then
the matmul floor (see ``bench_text_7b``'s docstring). Prints s/step, the floor and their ratio
(goal <= 1.3x), peak RSS against the file (goal <= file + 2 GB), where the memory goes, and the
run's memory plan line (``gradient_checkpointing`` is the config's default, ``auto``, unless
``--checkpointing`` says otherwise).

    flock /work/.bigmem-lock nice python benchmarks/bench_text_8b_qwen3.py [--family qwen3-8b|gemma3-4b]
        [--steps 3] [--tokens 64] [--layers N] [--checkpointing auto|on|off] [--workdir /work/big/kquant]
        [--profile STEP]

It takes minutes and several GB of RAM; it does not run in CI. Delete the workdir afterwards.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_text_7b import run_child_and_report, write_base_once  # noqa: E402
from kquant_builder import SHAPES, write_random_kquant_gguf  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(SHAPES), default="qwen3-8b")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64, help="tokens per sample (the articles' setting: 64)")
    parser.add_argument("--batch", type=int, default=4, help="must match the config's batch_size")
    parser.add_argument("--layers", type=int, default=0, help="fewer layers for quick profiles (0: the model's)")
    parser.add_argument("--checkpointing", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--floor-layers", type=int, default=0, help="time this many layers for the floor (0: all)")
    parser.add_argument("--llama-check", action="store_true", help="also run the engine's llama.cpp check")
    parser.add_argument("--profile", type=int, default=0, metavar="STEP",
                        help="run step STEP under torch.profiler and print where its time goes (0: no profile)")
    parser.add_argument("--workdir", default="/work/big/kquant")
    args = parser.parse_args()
    shape = SHAPES[args.family]
    if args.layers:
        shape = shape.smaller(args.layers)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    base = work / f"{args.family}-shape-L{shape.layers}.q4_k_m.gguf"
    write_base_once(base, lambda path: write_random_kquant_gguf(path, shape))
    run_child_and_report(base, work, work / f"run-{args.family}-L{shape.layers}", args, llama_check=args.llama_check)


if __name__ == "__main__":
    main()
