"""Run base + adapter in llama.cpp (llama-cpp-python) and compare its logits with the torch model's.

llama.cpp is run in a subprocess: llama-cpp-python 0.3.x segfaults on the first eval when an
adapter fails to load, and a crash must not take the training process (or the WebUI) with it.

Pass rule: ``max|Δ(base + adapter)| <= tolerance + 2 * max|Δ(base)|``. On float bases llama.cpp
and torch agree to ~1e-4, so this is the tolerance itself; on quantized bases llama.cpp also
quantizes activations for its matmuls, an error the base alone shows and the adapter cannot
remove, so it is allowed for. The report also gives the error of the adapter's effect alone,
``max|(cpp_lora - cpp_base) - (torch_lora - torch_base)|``.

Rounding flips: torch reproduces that activation rounding (``quant.ggml_input_rounding``), but its
inputs differ from llama.cpp's by float32 ulps, and when one value sits that close to a rounding
midpoint the two round it apart. From that token on (its K/V feed every later one) the logits of
that sample differ by up to a few 1e-2 while all earlier tokens agree. A sample that agrees within
the limit up to a token, then stays below ``FLIP_MAX``, is reported as such and not counted against
the adapter on a base whose matmuls round activations; a wrong adapter differs from the first token.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .._converters import converters
from ..cancel import cancel_point
from ..errors import UserError
from .data import Sample
from .families import TextConfig
from .lora import LoraLinear
from .quant import PackedLinear, ggml_activation_rounding

GGMLQuantizationType = converters.gguf_py.installed_gguf().GGMLQuantizationType


NOT_INSTALLED = "not checked in llama.cpp (llama-cpp-python not installed)"
FLIP_MAX = 0.1  # largest logit difference one activation rounded apart has caused here (tiny models: 2e-2..5e-2)

_SCRIPT = r"""
import json, sys
import numpy as np
from llama_cpp import Llama
job = json.load(open(sys.argv[1]))
kwargs = dict(model_path=job["base"], n_ctx=job["n_ctx"], logits_all=True, verbose=False, seed=0,
              n_threads=job["threads"], type_k=0, type_v=0)  # F32 KV cache: f16 alone adds ~1e-3
kwargs.update(job.get("llama_args") or {})
if job.get("adapter"):
    kwargs["lora_path"] = job["adapter"]
llm = Llama(**kwargs)
out = {}
if job.get("generate") is not None:
    llm.reset()
    ids = list(job["generate"])
    gen = []
    for tok in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0):
        if tok == llm.token_eos() or len(gen) >= job["max_new"]:
            break
        gen.append(int(tok))
    out["generated"] = gen
for i, ids in enumerate(job["samples"]):
    llm.reset()
    llm.eval(ids)
    np.save(f"{job['out']}-{i}.npy", np.array(llm.scores[: len(ids)], dtype=np.float32))
json.dump(out, open(job["out"] + ".json", "w"))
"""


def llama_cpp_available() -> bool:
    """True when llama-cpp-python can be imported (checked without importing it here)."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def _run_cancellable(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``subprocess.run`` with captured text output that a cancelled run stops within a fraction of a second."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                out, err = proc.communicate(timeout=0.2)
                return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
            except subprocess.TimeoutExpired:
                cancel_point()
                if time.monotonic() > deadline:
                    raise subprocess.TimeoutExpired(cmd, timeout) from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def llama_args(cfg: TextConfig) -> dict[str, float]:
    """``llama_cpp.Llama()`` arguments that make llama-cpp-python run the file as llama.cpp's own tools do.

    llama-cpp-python passes its own YaRN betas (32, 1) over the file's, where llama.cpp's tools pass
    "from the model" and its mistral3 graph then reads the file's. The values the torch model uses (the
    file's where the family reads them, llama.cpp's defaults elsewhere) are passed rather than -1,
    which llama.cpp builds older than those keys would take as is.
    """
    if cfg.yarn is None:
        return {}
    return {"yarn_beta_fast": cfg.yarn.beta_fast, "yarn_beta_slow": cfg.yarn.beta_slow}


def run_llama_cpp(base: Path, adapter: Path | None, samples: list[list[int]], generate: list[int] | None = None,
                  max_new: int = 16, timeout: float = 300,
                  args: dict | None = None) -> tuple[list[np.ndarray], list[int] | None]:
    """(logits per sample, greedy continuation of ``generate``) from llama.cpp in a subprocess.

    ``args``: more ``Llama()`` arguments (``llama_args`` of the base's config).
    """
    with tempfile.TemporaryDirectory(prefix="lora-bridge-llama-") as tmp:
        job_path = Path(tmp) / "job.json"
        out = str(Path(tmp) / "logits")
        n_ctx = max([len(s) for s in samples] + [len(generate or []) + max_new, 32]) + 8
        job = {"base": str(base), "adapter": str(adapter) if adapter else None, "samples": samples,
               "out": out, "n_ctx": n_ctx, "threads": max(1, torch.get_num_threads()),
               "generate": generate, "max_new": max_new, "llama_args": args or {}}
        job_path.write_text(json.dumps(job))
        proc = _run_cancellable([sys.executable, "-c", _SCRIPT, str(job_path)], timeout)
        if proc.returncode != 0:
            tail = (proc.stderr or "").strip().splitlines()[-3:]
            what = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
            raise UserError(f"{adapter or base}: llama.cpp failed ({what}): {' | '.join(tail) or 'no message'}")
        logits = [np.load(f"{out}-{i}.npy") for i in range(len(samples))]
        extra = json.loads(Path(out + ".json").read_text())
        return logits, extra.get("generated")


def torch_logits(model: torch.nn.Module, ids: list[int], lora: bool = True) -> np.ndarray:
    """Logits (tokens, vocab) of the torch model, with or without the LoRA layers' update."""
    layers = [m for m in model.modules() if isinstance(m, LoraLinear)]
    saved = [layer.scale for layer in layers]
    try:
        if not lora:
            for layer in layers:
                layer.scale = 0.0
        device = next(iter(model.buffers()), torch.empty(0)).device  # where the packed weights live
        with torch.no_grad(), ggml_activation_rounding():
            return model(torch.tensor([ids], device=device))[0].float().cpu().numpy()
    finally:
        for layer, scale in zip(layers, saved, strict=False):
            layer.scale = scale


def compare(model: torch.nn.Module, base: Path, adapter: Path, samples: list[list[int]],
            per_token: list[np.ndarray] | None = None) -> dict[str, float]:
    """max |Δlogit| of base + adapter, of the base alone, and of the adapter's effect alone.

    ``per_token`` (when given) receives, per sample, max |Δlogit| of base + adapter at each token.
    """
    args = llama_args(model.config)
    cpp_lora, _ = run_llama_cpp(base, adapter, samples, args=args)
    cpp_base, _ = run_llama_cpp(base, None, samples, args=args)
    worst = {"lora": 0.0, "base": 0.0, "effect": 0.0}
    for i, ids in enumerate(samples):
        t_lora, t_base = torch_logits(model, ids, True), torch_logits(model, ids, False)
        tokens = np.abs(cpp_lora[i] - t_lora).max(axis=-1)
        if per_token is not None:
            per_token.append(tokens)
        worst["lora"] = max(worst["lora"], float(tokens.max()))
        worst["base"] = max(worst["base"], float(np.abs(cpp_base[i] - t_base).max()))
        worst["effect"] = max(worst["effect"], float(np.abs((cpp_lora[i] - cpp_base[i]) - (t_lora - t_base)).max()))
    return worst


def check_adapter_in_llama_cpp(model: torch.nn.Module, base: Path, adapter: Path, samples: list[Sample],
                               tolerance: float, required: bool = False) -> str:
    """Compare llama.cpp and torch on ``samples``; a report line, or UserError above tolerance.

    When llama-cpp-python is missing and ``required`` is False, says so (``NOT_INSTALLED``).
    """
    if not llama_cpp_available():
        if required:
            raise UserError("llama_cpp_check is on but llama-cpp-python is not installed: pip install "
                            "llama-cpp-python, or set llama_cpp_check: off")
        return NOT_INSTALLED
    per_token: list[np.ndarray] = []
    worst = compare(model, base, adapter, [s.ids for s in samples], per_token)
    limit = tolerance + 2 * worst["base"]
    report = (f"llama.cpp check: max |Δlogit| {worst['lora']:.2e} with adapter (limit {limit:.2e}), "
              f"{worst['base']:.2e} base only, {worst['effect']:.2e} on the adapter's effect")
    flips = [_rounding_flip(tokens, limit) for tokens in per_token] if _rounds_activations(model) else []
    if any(f is not None for f in flips):
        where = ", ".join(f"sample {i + 1} from token {f}" for i, f in enumerate(flips) if f is not None)
        report += f"; an activation rounded apart in {where} (not the adapter)"
    if any(tokens.max() > limit for tokens, f in itertools.zip_longest(per_token, flips) if f is None):
        raise UserError(f"{adapter}: llama.cpp disagrees with the trained model ({report}); the adapter is not "
                        "usable as is. Report this with the base model file")
    return report


def _rounds_activations(model: torch.nn.Module) -> bool:
    """Whether llama.cpp rounds the activations of some matmul of this base (any weight not F32)."""
    return any(isinstance(m, PackedLinear) and m.weight.qtype != GGMLQuantizationType.F32 for m in model.modules())


def _rounding_flip(tokens: np.ndarray, limit: float) -> int | None:
    """The token from which a sample differs by a rounding flip (see the module docstring), else None."""
    above = np.nonzero(tokens > limit)[0]
    if not above.size or above[0] == 0 or tokens.max() > FLIP_MAX:
        return None
    return int(above[0])
