"""Base and adapter answers from llama.cpp (llama-cpp-python), in a child process that Stop can kill.

A child process because llama-cpp-python 0.3.x segfaults on the first eval of an adapter it could
not load (the adapter is validated against the base before it gets here, see ``try_adapter``), and
because ending it is the one way to stop a running ``generate`` and give all of its memory back.
The child loads the base alone, then base + adapter (``Llama(lora_path=, lora_scale=)``), with the
same seed and sampler settings, and reports each token as one JSON line as soon as it has it. It runs
on the CPU (``n_gpu_layers=0``) with an F32 KV cache, the conditions of the llama.cpp check
(``llama_check.py``), so its greedy tokens are the torch model's where that check passes.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError
from .generate import Sampling

_SCRIPT = r"""
import gc, json, sys
from llama_cpp import Llama
job = json.loads(sys.argv[1])
for which, lora in (("base", None), ("adapter", job["adapter"])):
    kwargs = dict(model_path=job["base"], n_ctx=job["n_ctx"], n_threads=job["threads"], seed=job["seed"],
                  n_gpu_layers=0, verbose=False, type_k=0, type_v=0)  # F32 KV cache, as the llama.cpp check
    kwargs.update(job["llama_args"])
    if lora:
        kwargs.update(lora_path=lora, lora_scale=job["scale"])
    llm = Llama(**kwargs)
    count = 0
    for tok in llm.generate(job["prompt"], temp=job["temperature"], top_k=job["top_k"], top_p=job["top_p"],
                            min_p=0.0, typical_p=1.0, repeat_penalty=1.0):
        if tok in job["stop_ids"] or count >= job["max_new"]:
            break
        count += 1
        print(json.dumps({"which": which, "token": int(tok)}), flush=True)
    del llm
    gc.collect()
print(json.dumps({"done": True}), flush=True)
"""


def generate_llama_cpp(base: Path, adapter: Path, scale: float, prompt: list[int], sampling: Sampling,
                       stop_ids: set[int], n_ctx: int, threads: int,
                       should_stop: Callable[[], bool] = lambda: False,
                       args: dict | None = None) -> tuple[dict[str, list[int]], bool]:
    """({"base": ids, "adapter": ids}, stopped by ``should_stop``): new tokens after ``prompt`` from llama.cpp.

    ``adapter`` must already be a GGUF adapter checked against ``base``; ``args``: more ``Llama()``
    arguments (``llama_check.llama_args``).
    """
    job = {"base": str(base), "adapter": str(adapter), "scale": float(scale), "prompt": list(prompt),
           "n_ctx": int(n_ctx), "threads": max(1, int(threads)), "seed": int(sampling.seed),
           "temperature": float(sampling.temperature), "top_k": int(sampling.top_k), "top_p": float(sampling.top_p),
           "max_new": int(sampling.max_new_tokens), "stop_ids": sorted(stop_ids),
           "llama_args": args or {}}
    out: dict[str, list[int]] = {"base": [], "adapter": []}
    finished = threading.Event()
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen([sys.executable, "-c", _SCRIPT, json.dumps(job)], stdout=subprocess.PIPE,
                                stderr=err, text=True)

        def read() -> None:
            for line in proc.stdout:  # type: ignore[union-attr]
                if not line.startswith("{"):  # anything llama.cpp itself prints
                    continue
                item = json.loads(line)
                if item.get("done"):
                    finished.set()
                else:
                    out[item["which"]].append(int(item["token"]))

        reader = threading.Thread(target=read, name="lora-bridge-llama-read", daemon=True)
        reader.start()
        stopped = False
        while proc.poll() is None:
            if should_stop():
                proc.kill()
                stopped = True
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.1)
        proc.wait()
        reader.join(timeout=5)
        if not stopped and (proc.returncode != 0 or not finished.is_set()):
            err.seek(0)
            tail = err.read().strip().splitlines()[-3:]
            what = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
            raise UserError(f"{adapter}: llama.cpp failed ({what}): {' | '.join(tail) or 'no message'}")
    return out, stopped
