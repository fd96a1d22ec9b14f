"""Benchmark (not a test): the text engine at LLaMA-2-7B shapes on a Q4_0 base, against its matmul floor.

Builds a random 7B-shaped Q4_0 base itself (legacy GGML ggjt v3 by default, the articles' file;
``--format gguf`` for GGUF): random nibbles and f16 scales written per tensor with numpy, no
quantizer, nothing downloaded (3.8 GB, about a minute; reused while its name matches). Then, in
a subprocess, runs the engine (``train_text``) with the articles' config
(``configs/lora_scripts_text.yaml``: rank 16, batch 4, all seven projections) on samples of
``--tokens`` tokens for ``--steps`` steps, and in the same process afterwards times the matmul floor:

    the step's matmuls with frozen weights, on float32 weights dequantized beforehand (not timed):
    every projection's forward ``x @ W.T`` and, where the engine computes it, its gradient to the
    input ``g @ W``, plus, with gradient checkpointing, the recompute's forward matmuls (the
    projections whose outputs are not kept, see ``recompute.plan_kept``); the output layer's
    ``h @ W.T`` and ``g @ W`` over the predicted tokens. LoRA, attention, norms, the optimizer and
    dequantization are not part of the floor: they are the overhead the ratio measures.

Prints s/step (median over the steps after the first), the floor, their ratio (goal <= 1.3x),
peak RSS and file size (goal: peak <= file + 2 GB) and where the memory goes at the peak.

    flock /tmp/lora-heavy.lock nice python benchmarks/bench_text_7b.py [--steps 3] [--layers 32]
        [--format ggml|gguf] [--checkpointing on|off|auto] [--workdir /work/big/text7b] [--no-llama-check]
        [--profile STEP]

``--profile STEP`` runs that step under torch.profiler and prints its ops by self time and by total
time, with our own regions labelled (native dequantization, the sliced loss, the checkpointed
layers' backward, the optimizer); that step is left out of the median.

``--checkpointing auto`` runs the config as written (its ``gradient_checkpointing`` is the default,
``auto``); the run's memory plan line (``memory_plan.py``: estimate, budget, choice) is printed.

It takes minutes and several GB of RAM; it does not run in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHAPE_7B = {"hidden": 4096, "ffn": 11008, "layers": 32, "heads": 32, "vocab": 32000}
GGML_LAYER = (("attention_norm", None), ("attention.wq", "h"), ("attention.wk", "h"), ("attention.wv", "h"),
              ("attention.wo", "h"), ("ffn_norm", None), ("feed_forward.w1", "up"), ("feed_forward.w2", "down"),
              ("feed_forward.w3", "up"))
Q4_0, Q4_0_BLOCK = 2, 18


def _vocab() -> tuple[list[str], list[float], list[int]]:
    sys.path.insert(0, str(ROOT))
    from extension.tiny.llama import tiny_vocab

    vocab = tiny_vocab()
    extra = SHAPE_7B["vocab"] - len(vocab)
    return (vocab.tokens + [f"<extra_{i}>" for i in range(extra)], vocab.scores + [-1000.0] * extra,
            vocab.types + [1] * extra)


def q4_0_rows(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Random Q4_0 rows (rows, cols/32*18): nibbles uniform, f16 scales in [0.003, 0.006) (weights ~0.02)."""
    blocks = rng.integers(0, 256, size=(rows, cols // 32, Q4_0_BLOCK), dtype=np.uint8)
    scales = rng.uniform(0.003, 0.006, size=(rows, cols // 32)).astype(np.float16)
    blocks[:, :, :2] = scales.view(np.uint8).reshape(rows, cols // 32, 2)
    return blocks.reshape(rows, -1)


def _tensors(shape: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(GGML name, numpy shape) in the order old llama.cpp wrote them; 1-D are norms."""
    h, f = shape["hidden"], shape["ffn"]
    dims = {"h": (h, h), "up": (f, h), "down": (h, f)}
    out = [("tok_embeddings.weight", (shape["vocab"], h)), ("norm.weight", (h,)),
           ("output.weight", (shape["vocab"], h))]
    for i in range(shape["layers"]):
        for name, kind in GGML_LAYER:
            out.append((f"layers.{i}.{name}.weight", dims[kind] if kind else (h,)))
    return out


def _data(rng: np.random.Generator, dims: tuple[int, ...]) -> np.ndarray:
    if len(dims) == 1:
        return (1.0 + 0.05 * rng.standard_normal(dims)).astype(np.float32)
    return q4_0_rows(rng, dims[0], dims[1])


def write_random_ggml(path: Path, shape: dict, seed: int = 0) -> Path:
    """A ggjt v3 Q4_0 LLaMA file of ``shape`` with random blocks, written tensor by tensor."""
    sys.path.insert(0, str(ROOT))
    from converters import atomic
    from extension.tiny.ggml import MAGICS, _vocab_bytes

    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocab()
    h = shape["hidden"]
    with atomic.atomic_file(path) as tmp, open(tmp, "wb") as out:
        out.write(struct.pack("<II", MAGICS["ggjt"], 3))
        out.write(struct.pack("<7I", len(tokens), h, 256, shape["heads"], shape["layers"], h // shape["heads"], 2))
        for token, score, kind in zip(tokens, scores, types, strict=True):
            data = _vocab_bytes(token, kind)
            out.write(struct.pack("<I", len(data)) + data + struct.pack("<f", score))
        for name, dims in _tensors(shape):
            array = _data(rng, dims)
            encoded = name.encode()
            ggml_dims = list(reversed(dims))
            out.write(struct.pack("<III", len(dims), len(encoded), 0 if len(dims) == 1 else Q4_0)
                      + struct.pack(f"<{len(dims)}I", *ggml_dims) + encoded)
            out.write(b"\0" * (-out.tell() % 32))
            array.tofile(out)
    return path


def write_random_gguf(path: Path, shape: dict, seed: int = 0) -> Path:
    """A random model of the same shape as a GGUF: ``q4_builder``'s writer (one tensor in memory at a time)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from q4_builder import LLAMA2_7B, write_random_q4_gguf

    return write_random_q4_gguf(path, LLAMA2_7B.smaller(shape["layers"]), seed=seed)

def write_dataset(path: Path, lines: int, tokens: int, seed: int = 0) -> None:
    """Plain-text samples of at least ``tokens`` tokens each (the run truncates them to exactly that)."""
    words = ("the", "cat", "sat", "on", "mat", "a", "dog", "ran", "to", "and", "is", "in", "it", "of", "lora")
    rng = np.random.default_rng(seed)
    text = "\n".join(" ".join(rng.choice(words, size=tokens + 8)) for _ in range(lines)) + "\n"
    path.write_text(text, encoding="utf-8")


# -- the child: engine run, then the floor -------------------------------------------------------------------


def _status() -> dict[str, int]:
    """VmRSS/VmHWM/RssAnon/RssFile of this process in bytes."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(rest.split()[0]) * 1024
    return out


class _Sampler(threading.Thread):
    """Polls RSS every few ms; keeps the composition (anon/file) at its maximum overall and within steps."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak: dict[str, int] = {"VmRSS": 0}
        self.step_peak: dict[str, int] = {"VmRSS": 0}
        self.phase = "loading"
        self.peak_phase = ""
        self.running = True

    def run(self) -> None:
        while self.running:
            now = _status()
            if now["VmRSS"] > self.peak["VmRSS"]:
                self.peak, self.peak_phase = now, self.phase
            if self.phase.startswith("step") and now["VmRSS"] > self.step_peak["VmRSS"]:
                self.step_peak = now
            time.sleep(0.005)


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _parts(model, optimizer_state, layers) -> dict[str, int]:
    """Bytes of the long-lived pieces the engine holds (known exactly, unlike transient activations)."""
    from extension.text import quant
    from extension.text.gguf_model import TextModel

    assert isinstance(model, TextModel)
    params = [p for layer in layers.values() for p in (layer.lora_A, layer.lora_B)]
    grads = params  # float32 like the parameters; they exist from the backward until the step's zero_grad
    state = [t for s in optimizer_state.values() for t in s.values() if hasattr(t, "numel") and t.dim() > 0]
    memos = [b for m in model._memos for b in m._buffers]
    scratch = list(quant._BUF.scratch.values())
    from extension.text.families import FAMILIES

    qk = [m.weight.raw for name, m in model.named_modules() if name.endswith(("q_proj", "k_proj", "q_proj.base",
                                                                             "k_proj.base")) and hasattr(m, "weight")]
    if not FAMILIES[model.config.arch].permuted_qk:  # only llama-style Q/K rows are reordered into copies
        qk = []
    return {"qk_copies": _tensor_bytes(qk), "lora_params": _tensor_bytes(params), "lora_grads": _tensor_bytes(grads),
            "adam_state": _tensor_bytes(state), "checkpoint_buffers": _tensor_bytes(memos),
            "scratch_buffers": _tensor_bytes(scratch)}


def _lora_layers(model) -> dict:
    from extension.text.lora import LoraLinear

    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLinear)}


def child(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch

    from extension.config import load_config
    from extension.text import engine

    baseline = _status()["VmRSS"]
    sampler = _Sampler()
    sampler.start()
    overrides = [f"base_model={args.base}", f"train_data_dir={args.data}", f"output_dir={args.out}",
                 f"max_length={args.tokens}", f"max_train_steps={args.steps}", "save_steps=0",
                 f"llama_cpp_check={'off' if args.no_llama_check else 'auto'}", "ggml_rms_eps=1e-5",
                 "ggml_context_length=4096"]
    if args.checkpointing != "auto":
        overrides.append(f"gradient_checkpointing={'true' if args.checkpointing == 'on' else 'false'}")
    config = load_config(ROOT / "configs" / "lora_scripts_text.yaml", overrides)
    times: list[float] = []
    hwm: list[int] = []
    captured: dict = {}
    last = [time.perf_counter()]
    original_step = engine._optimizer_step

    def timed_step(model, group, params, optimizer, *rest):
        captured.setdefault("model", model)
        captured.setdefault("optimizer", optimizer)
        captured.setdefault("anon_before_steps", _status()["RssAnon"])
        sampler.phase = f"step {len(times) + 1}"
        try:
            return original_step(model, group, params, optimizer, *rest)
        finally:
            sampler.phase = "after the steps"

    def on_event(event) -> None:
        if event.kind == "start":
            last[0] = time.perf_counter()
        elif event.kind == "step":
            now = time.perf_counter()
            times.append(now - last[0])
            last[0] = now
            hwm.append(_status()["VmHWM"])
            if len(times) == args.steps:  # the long-lived pieces as the last step left them
                model = captured["model"]
                captured["parts"] = _parts(model, captured["optimizer"].state, _lora_layers(model))
        elif event.kind == "done":
            captured["message"] = event.message or ""
        elif event.kind == "log" and (event.message or "").startswith(("gradient_checkpointing auto", "memory:")):
            captured["plan"] = event.message

    def phase(name: str, fn):
        def wrapped(*a, **k):
            sampler.phase = name
            try:
                return fn(*a, **k)
            finally:
                sampler.phase = "after the steps"
        return wrapped

    if args.profile:
        timed_step = _profiled(timed_step, args.profile, captured)
    engine._optimizer_step = timed_step
    engine._Run.save_state = phase("saving the training state", engine._Run.save_state)
    engine._Run.export = phase("exporting the adapter", engine._Run.export)
    engine._llama_cpp_result = phase("llama.cpp check", engine._llama_cpp_result)
    try:
        status = engine.train_text(config, callback=on_event).status
    except Exception as exc:  # e.g. the llama.cpp check refusing: the steps' figures still stand
        if len(times) < args.steps:
            raise
        status = "failed"
        captured["message"] = f"llama.cpp check: failed after training: {exc}"
    sampler.running = False
    hwm_run = _status()["VmHWM"]  # before the floor's own float weights
    model = captured["model"]
    out = {"status": status, "times": times, "step_hwm": hwm, "baseline_rss": baseline, "hwm_run": hwm_run,
           "anon_before_steps": captured["anon_before_steps"],
           "peak": sampler.peak, "peak_phase": sampler.peak_phase, "step_peak": sampler.step_peak,
           "parts": captured["parts"], "plan": captured.get("plan", ""),
           "threads": torch.get_num_threads(), "checkpointing": bool(model.gradient_checkpointing),
           "llama_check": [line for line in captured.get("message", "").splitlines() if "llama.cpp check" in line
                           or "not checked" in line],
           "profiled_step": captured.get("profiled_step", 0), "profile": captured.get("profile", ""),
           "profile_ranges": captured.get("profile_ranges", "")}
    out["floor"] = matmul_floor(model, args.batch, args.tokens, bool(model.gradient_checkpointing), args.floor_layers)
    return out


def _labelled(owner, name: str, label: str) -> None:
    """Wrap ``owner.name`` in a profiler range ``label`` (C and Python code the op table cannot name)."""
    import torch

    original = getattr(owner, name)

    def wrapped(*a, **k):
        with torch.profiler.record_function(label):
            return original(*a, **k)

    setattr(owner, name, staticmethod(wrapped) if isinstance(owner, type) and isinstance(
        owner.__dict__.get(name), staticmethod) else wrapped)


def _profiled(step, which: int, captured: dict):
    """``step`` with its ``which``-th call under torch.profiler; the table goes to ``captured["profile"]``.

    Our own regions are labelled (native dequantization runs in C through ctypes and is no torch
    op; the sliced loss, the optimizer and the recompute are several ops each), and ops are
    grouped by name with their self time, so the table says where a step's time goes.
    """
    import torch

    from extension.text import engine, lm_loss, native, recompute

    _labelled(native.NativeDequantizer, "into", "lb: native dequantize")
    _labelled(lm_loss._SlicedCrossEntropy, "forward", "lb: sliced loss (forward + grad)")
    _labelled(recompute._CheckpointedLayer, "backward", "lb: checkpointed layer backward (recompute + grads)")
    _labelled(engine, "optimizer_step", "lb: optimizer step")
    _labelled(torch.nn.utils, "clip_grad_norm_", "lb: clip_grad_norm")
    calls = [0]

    def wrapped(*a, **k):
        calls[0] += 1
        if calls[0] != which:
            return step(*a, **k)
        activities = [torch.profiler.ProfilerActivity.CPU]
        with torch.profiler.profile(activities=activities) as prof:
            result = step(*a, **k)
        captured["profiled_step"] = which
        captured["profile"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40,
                                                        max_name_column_width=60)
        captured["profile_ranges"] = prof.key_averages().table(sort_by="cpu_time_total", row_limit=25,
                                                               max_name_column_width=60)
        return result

    return wrapped


def matmul_floor(model, batch: int, tokens: int, checkpointing: bool, sample_layers: int) -> dict:
    """Seconds of the step's frozen-weight matmuls on float32 weights dequantized beforehand (see the docstring).

    Layers are dequantized one at a time (untimed); ``sample_layers`` > 0 times that many layers
    spread over the model and scales to all of them.
    """
    import torch

    from extension.text.lora import LoraLinear
    from extension.text.quant import PackedLinear

    n = batch * tokens
    width = model.config.hidden_size
    gen = torch.Generator().manual_seed(0)
    all_layers = list(model.model.layers)
    picked = range(len(all_layers)) if sample_layers <= 0 else np.linspace(
        0, len(all_layers) - 1, min(sample_layers, len(all_layers))).round().astype(int).tolist()
    total = {"forward": 0.0, "recompute": 0.0, "backward": 0.0, "head": 0.0}
    for index in picked:
        layer = all_layers[index]
        for owner in (layer.self_attn, layer.mlp):
            for name, module in owner.named_children():
                base = module.base if isinstance(module, LoraLinear) else module
                if not isinstance(base, PackedLinear):  # Q/K norms (Qwen3, Gemma 3) are no matmuls
                    continue
                w = base.weight.dequantize()
                x = torch.randn(n, w.shape[1], generator=gen)
                g = torch.randn(n, w.shape[0], generator=gen)
                start = time.perf_counter()
                y = x @ w.t()
                total["forward"] += time.perf_counter() - start
                if checkpointing and not base.keep_output:
                    start = time.perf_counter()
                    y = x @ w.t()
                    total["recompute"] += time.perf_counter() - start
                # the engine skips the input gradient where the input needs none: layer 0's q/k/v
                if not (index == 0 and name in ("q_proj", "k_proj", "v_proj")):
                    start = time.perf_counter()
                    gx = g @ w
                    total["backward"] += time.perf_counter() - start
                del w, x, g, y
                gx = None  # noqa: F841
    scale = len(all_layers) / len(picked)
    for key in ("forward", "recompute", "backward"):
        total[key] *= scale
    head = model.lm_head.base if isinstance(model.lm_head, LoraLinear) else model.lm_head
    w = head.weight.dequantize()
    h = torch.randn(batch * (tokens - 1), width, generator=gen)
    start = time.perf_counter()
    logits = h @ w.t()
    grad = logits @ w
    total["head"] = time.perf_counter() - start
    del w, logits, grad
    total["total"] = sum(total.values())
    total["layers_timed"] = len(picked)
    return total


# -- the parent -------------------------------------------------------------------------------------------


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def report(r: dict, file_size: int) -> None:
    times = r["times"]
    timed = [t for i, t in enumerate(times, 1) if i != r.get("profiled_step")]  # the profiler slows its step
    per_step = float(np.median(timed[1:] if len(timed) > 1 else timed))
    floor = r["floor"]
    hwm = max(r["step_hwm"])
    print(f"steps (s): {', '.join(f'{t:.1f}' for t in times)}; torch threads {r['threads']}; "
          f"gradient checkpointing {'on' if r['checkpointing'] else 'off'}")
    print(f"matmul floor per step: {floor['total']:.1f} s (forward {floor['forward']:.1f}, recompute "
          f"{floor['recompute']:.1f}, backward to inputs {floor['backward']:.1f}, output layer {floor['head']:.1f}; "
          f"{floor['layers_timed']} layers timed)")
    if r.get("profile"):
        print(f"torch.profiler, step {r['profiled_step']} (left out of the median), ops by self time:")
        print(r["profile"])
        print("... and by total time (our labelled ranges include their ops):")
        print(r["profile_ranges"])
    print(f"s/step {per_step:.1f} (median after the first)  ratio to floor {per_step / floor['total']:.2f}x "
          f"(goal <= 1.3x)")
    print(f"peak RSS through the last step {_gb(hwm)} = file {_gb(file_size)} + {_gb(hwm - file_size)} "
          f"(goal <= file + 2 GB: {'met' if hwm <= file_size + 2e9 else 'NOT met'}); whole run "
          f"{_gb(r['hwm_run'])} (sampled peak in '{r['peak_phase']}')")
    peak, parts = r["step_peak"], r["parts"]
    print(f"where the memory goes at the sampled peak within steps ({_gb(peak['VmRSS'])}):")
    rows = [("mapped file pages", peak["RssFile"]),
            ("Q/K weights: file bytes reordered into copies", parts["qk_copies"]),
            ("python/torch baseline (before loading)", r["baseline_rss"]),
            ("later imports, tokenizer, data, model objects (before step 1)",
             r["anon_before_steps"] - r["baseline_rss"] - parts["qk_copies"] - parts["lora_params"]),
            ("LoRA params", parts["lora_params"]), ("LoRA grads (during backward)", parts["lora_grads"]),
            ("Adam state", parts["adam_state"]),
            ("checkpoint buffers (layer inputs, kept outputs)", parts["checkpoint_buffers"]),
            ("dequantized-weight scratch", parts["scratch_buffers"])]
    known = sum(value for label, value in rows[1:])
    rows.append(("rest: layer in flight, loss, allocator slack", peak["RssAnon"] - known))
    for label, value in rows:
        print(f"    {label:50s} {value / 2**20:8.0f} MiB")
    for line in r["llama_check"]:
        print(line)
    print(f"memory plan: {r['plan']}")


def write_base_once(base: Path, write: Callable[[Path], object]) -> None:
    """``write(base)`` unless ``base`` exists (a base is reused while its name matches); prints size and time."""
    if not base.exists():
        start = time.perf_counter()
        write(base)
        print(f"wrote {base} ({_gb(base.stat().st_size)}) in {time.perf_counter() - start:.0f} s")


def scheduling_note() -> str:
    """How this process shares the CPUs, for the report: with autogroup scheduling (Linux's default on
    desktops and this machine) ``nice`` ranks processes only within their own session, so other sessions'
    ``nice -n 19`` work still takes an equal share per session unless this session's autogroup is niced."""
    try:
        enabled = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
        group = Path("/proc/self/autogroup").read_text().strip()
    except OSError:
        return f"nice {os.nice(0)}"
    if not enabled:
        return f"nice {os.nice(0)}, autogroup off"
    note = f"nice {os.nice(0)}, {group}"
    if not group.endswith("nice -19"):
        note += (" (autogroup on: other sessions' nice does not yield to this one; `echo -19 > /proc/self/autogroup`"
                 " in this session first gives it the CPUs)")
    return note


def run_child_and_report(base: Path, work: Path, out: Path, args: argparse.Namespace, llama_check: bool) -> None:
    """Write the samples, run this script's ``--child`` on ``base`` (its own process: its peak RSS is the run's)
    with ``args``' steps, tokens, batch, checkpointing and floor layers, and print the report."""
    data = work / f"data-{args.tokens}.txt"
    write_dataset(data, lines=args.batch * args.steps, tokens=args.tokens)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--base", str(base), "--data", str(data),
           "--out", str(out), "--steps", str(args.steps), "--tokens", str(args.tokens), "--batch", str(args.batch),
           "--checkpointing", args.checkpointing, "--floor-layers", str(args.floor_layers),
           "--profile", str(args.profile)]
    if not llama_check:
        cmd.append("--no-llama-check")
    print(f"base {base.name}: {_gb(base.stat().st_size)}; {args.steps} steps of batch {args.batch} x {args.tokens} "
          f"tokens; load {os.getloadavg()[0]:.2f}; {scheduling_note()}")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        print(proc.stderr[-4000:])
        raise SystemExit(f"engine run failed (exit {proc.returncode})")
    report(json.loads(lines[-1][7:]), base.stat().st_size)
    print(f"load after: {os.getloadavg()[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64, help="tokens per sample (the articles' setting: 64)")
    parser.add_argument("--batch", type=int, default=4, help="must match the config's batch_size")
    parser.add_argument("--layers", type=int, default=SHAPE_7B["layers"], help="fewer layers for quick profiles")
    parser.add_argument("--format", choices=["ggml", "gguf"], default="ggml")
    parser.add_argument("--checkpointing", choices=["on", "off", "auto"], default="on",
                        help="gradient_checkpointing (default on; 'auto' leaves the config's default, auto)")
    parser.add_argument("--floor-layers", type=int, default=0, help="time this many layers for the floor (0: all)")
    parser.add_argument("--no-llama-check", action="store_true",
                        help="skip the engine's llama.cpp check (it runs when llama-cpp-python is installed)")
    parser.add_argument("--profile", type=int, default=0, metavar="STEP",
                        help="run step STEP under torch.profiler and print where its time goes (0: no profile)")
    parser.add_argument("--workdir", default="/work/big/text7b")
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--base")
    parser.add_argument("--data")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.child:
        result = child(args)
        result["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print("RESULT " + json.dumps(result))
        return
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    shape = dict(SHAPE_7B, layers=args.layers)
    suffix = "ggmlv3.q4_0.bin" if args.format == "ggml" else "q4_0.gguf"
    base = work / f"llama2-7b-shape-L{args.layers}.{suffix}"
    write_base_once(base, lambda path: (write_random_ggml if args.format == "ggml" else write_random_gguf)(path, shape))
    run_child_and_report(base, work, work / f"run-{args.format}-L{args.layers}", args,
                         llama_check=not args.no_llama_check)


if __name__ == "__main__":
    main()
