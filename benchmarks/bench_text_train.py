"""Benchmark (not a test): text LoRA training on a ~300M-parameter LLaMA-shaped Q4_0 GGUF.

Ours (weights stay packed, dequantized per layer) against transformers' ``gguf_file`` loader
(dequantizes everything to float32) + peft + a plain training loop. Same data, same LoRA targets
and rank, same number of steps; each side runs in its own subprocess so peak RSS is clean.

    python benchmarks/bench_text_train.py [--steps 4] [--seq 256] [--rounds 2] [--workdir DIR]

Both sides use gradient checkpointing (``--no-checkpointing`` turns it off on both), the
usual setting when memory matters, and each computes the loss its own way: transformers with
``labels=``, ours with the engine's sliced cross-entropy (``lm_loss.py``). Prints peak RSS and
seconds per step (median over all steps but the first of each run, over all rounds) and the
ratios (goals: RSS <= 0.35x, time/step <= 1.0x).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHAPE = {"hidden": 1024, "ffn": 2816, "layers": 20, "heads": 16, "kv_heads": 4, "vocab": 32000}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK = 8


def write_synthetic_gguf(path: Path, seed: int = 0) -> int:
    """Random LLaMA-shaped Q4_0 GGUF (1-D tensors F32); returns the parameter count."""
    import gguf
    from gguf.quants import quantize

    sys.path.insert(0, str(ROOT))
    from extension.tiny.llama import TinyVocab, add_llama_header, tiny_vocab

    rng = np.random.default_rng(seed)
    vocab = tiny_vocab()
    tokens = vocab.tokens + [f"<extra_{i}>" for i in range(SHAPE["vocab"] - len(vocab))]
    scores = vocab.scores + [-1000.0] * (SHAPE["vocab"] - len(vocab))
    types = vocab.types + [1] * (SHAPE["vocab"] - len(vocab))
    h, f, kv = SHAPE["hidden"], SHAPE["ffn"], SHAPE["hidden"] // SHAPE["heads"] * SHAPE["kv_heads"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("bench-300m")
    add_llama_header(writer, context=2048, hidden=h, layers=SHAPE["layers"], ffn=f, heads=SHAPE["heads"],
                     kv_heads=SHAPE["kv_heads"], rms_eps=1e-5, file_type=gguf.LlamaFileType.MOSTLY_Q4_0,
                     vocab=TinyVocab(tokens=tokens, scores=scores, types=types))
    count = 0

    def add(name: str, shape: tuple[int, ...]) -> None:
        nonlocal count
        count += int(np.prod(shape))
        if len(shape) == 1:
            writer.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32))
        else:
            w = (rng.standard_normal(shape) * 0.02).astype(np.float32)
            writer.add_tensor(name, quantize(w, gguf.GGMLQuantizationType.Q4_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q4_0)

    add("token_embd.weight", (SHAPE["vocab"], h))
    for i in range(SHAPE["layers"]):
        add(f"blk.{i}.attn_norm.weight", (h,))
        add(f"blk.{i}.attn_q.weight", (h, h))
        add(f"blk.{i}.attn_k.weight", (kv, h))
        add(f"blk.{i}.attn_v.weight", (kv, h))
        add(f"blk.{i}.attn_output.weight", (h, h))
        add(f"blk.{i}.ffn_norm.weight", (h,))
        add(f"blk.{i}.ffn_gate.weight", (f, h))
        add(f"blk.{i}.ffn_up.weight", (f, h))
        add(f"blk.{i}.ffn_down.weight", (h, f))
    add("output_norm.weight", (h,))
    add("output.weight", (SHAPE["vocab"], h))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return count


def _batch(seq: int, step: int):
    import torch

    gen = torch.Generator().manual_seed(step)
    return torch.randint(3, 300, (1, seq), generator=gen)


def _loop(loss_fn, params, steps: int, seq: int) -> list[float]:
    """Plain loop: forward with the causal LM loss, backward, AdamW; returns seconds per step."""
    import torch

    opt = torch.optim.AdamW(params, lr=1e-4)
    times = []
    for step in range(steps):
        ids = _batch(seq, step)
        start = time.perf_counter()
        loss = loss_fn(ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times


def child_ours(gguf_path: Path, steps: int, seq: int, checkpointing: bool) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch

    from extension.text.gguf_model import load_text_model
    from extension.text.lora import inject_lora
    from extension.training.heap import keep_activations_in_heap, tune_heap_for_training

    tune_heap_for_training()  # as the text engine does before training
    torch.manual_seed(0)
    model = load_text_model(gguf_path)
    keep_activations_in_heap(model.largest_activation_bytes(seq))  # as the engine does for its longest batch
    layers = inject_lora(model, TARGETS, RANK, 2 * RANK)
    model.gradient_checkpointing = checkpointing
    model.train()
    params = [p for layer in layers.values() for p in (layer.lora_A, layer.lora_B)]
    # the engine's loss: next-token cross-entropy, mean over the predicted tokens
    return {"times": _loop(lambda ids: model.causal_lm_loss_sum(ids, ids) / (ids.numel() - ids.shape[0]),
                           params, steps, seq)}


def child_hf(gguf_path: Path, steps: int, seq: int, checkpointing: bool) -> dict:
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    kwargs = {"gguf_file": gguf_path.name, "torch_dtype": torch.float32}
    if hasattr(transformers, "GgufConfig"):  # newer transformers refuse to train a GGUF model otherwise
        kwargs["quantization_config"] = transformers.GgufConfig(dequantize=True)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(gguf_path.parent, **kwargs)
    except TypeError:
        kwargs.pop("quantization_config", None)
        model = transformers.AutoModelForCausalLM.from_pretrained(gguf_path.parent, **kwargs)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=TARGETS))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # the usual transformers loss: labels=input_ids (shifted inside), mean over the predicted tokens
    return {"times": _loop(lambda ids: model(input_ids=ids, labels=ids).loss, params, steps, seq)}


def _run_child(kind: str, gguf_path: Path, steps: int, seq: int, checkpointing: bool) -> dict:
    flags = [] if checkpointing else ["--no-checkpointing"]
    proc = subprocess.run([sys.executable, __file__, "--child", kind, "--gguf", str(gguf_path), "--steps", str(steps),
                           "--seq", str(seq), *flags], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        return {"error": (proc.stderr or "").strip().splitlines()[-1:] or ["failed"]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each side, alternating")
    parser.add_argument("--workdir")
    parser.add_argument("--gguf-base", help="reuse this synthetic GGUF instead of writing one")
    parser.add_argument("--no-checkpointing", action="store_true", help="gradient checkpointing off on both sides")
    parser.add_argument("--child", choices=["ours", "hf"])
    parser.add_argument("--gguf")
    args = parser.parse_args()
    if args.child:
        fn = child_ours if args.child == "ours" else child_hf
        result = fn(Path(args.gguf), args.steps, args.seq, not args.no_checkpointing)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory(prefix="bench-text-", dir=args.workdir) as tmp:
        path = Path(args.gguf_base or Path(tmp) / "bench-300m-q4_0.gguf")
        start = time.perf_counter()
        if args.gguf_base:
            from gguf import GGUFReader

            n_params = sum(int(t.n_elements) for t in GGUFReader(str(path)).tensors)
        else:
            n_params = write_synthetic_gguf(path)
        print(f"synthetic base: {n_params / 1e6:.0f}M parameters, Q4_0 file {path.stat().st_size / 2**20:.0f} MiB "
              f"(written in {time.perf_counter() - start:.0f} s); {args.steps} steps, seq {args.seq}, LoRA r={RANK} "
              f"on {', '.join(TARGETS)}")
        print(f"gradient checkpointing: {'off' if args.no_checkpointing else 'on'} (both sides)")
        results: dict[str, dict] = {"ours": {"times": [], "peak_rss_mb": 0.0, "load": []},
                                    "hf": {"times": [], "peak_rss_mb": 0.0, "load": []}}
        # Alternate the two in rounds: on a shared machine a burst of load then hits both.
        for _ in range(args.rounds):
            for kind in ("ours", "hf"):
                r = _run_child(kind, path, args.steps, args.seq, not args.no_checkpointing)
                if "error" in r:
                    results[kind]["error"] = r["error"]
                    continue
                results[kind]["times"] += r["times"][1:] or r["times"]  # the first step warms up
                results[kind]["peak_rss_mb"] = max(results[kind]["peak_rss_mb"], r["peak_rss_mb"])
                # the machine may be shared: timings only mean something next to the load they ran under
                results[kind]["load"].append(os.getloadavg()[0])
    for kind, label in (("ours", "lora-bridge (packed Q4_0)"), ("hf", "transformers gguf_file + peft")):
        r = results[kind]
        if "error" in r:
            print(f"{label:32s} failed: {r['error'][0]}")
            continue
        r["per_step"] = float(np.median(r["times"]))
        print(f"{label:32s} peak RSS {r['peak_rss_mb']:8.0f} MB   {r['per_step']:6.2f} s/step median of "
              f"{len(r['times'])}  (load {max(r['load']):.2f})")
    if all("per_step" in r for r in results.values()):
        ours, hf = results["ours"], results["hf"]
        print(f"ratio ours/transformers: peak RSS {ours['peak_rss_mb'] / hf['peak_rss_mb']:.2f}x (goal <= 0.35x), "
              f"time/step {ours['per_step'] / hf['per_step']:.2f}x (goal <= 1.0x)")


if __name__ == "__main__":
    main()
