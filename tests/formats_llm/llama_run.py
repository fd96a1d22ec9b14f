"""Run llama.cpp (llama-cpp-python) once and save the logits: a subprocess, so a crash cannot kill pytest.

Usage: python llama_run.py MODEL.gguf OUT.npy ID,ID,... [LORA.gguf [SCALE]]
"""

import sys

import numpy as np
from llama_cpp import Llama


def main() -> None:
    model, out, ids = sys.argv[1], sys.argv[2], [int(i) for i in sys.argv[3].split(",")]
    lora = sys.argv[4] if len(sys.argv) > 4 else None
    scale = float(sys.argv[5]) if len(sys.argv) > 5 else 1.0
    extra = {"lora_path": lora, "lora_scale": scale} if lora else {}
    # F32 KV cache: the default F16 cache alone costs ~2e-3 in logits on the tiny model.
    llm = Llama(model_path=model, n_ctx=32, n_batch=32, logits_all=True, verbose=False, type_k=0, type_v=0,
                n_threads=1, **extra)
    llm.eval(ids)
    np.save(out, np.array(llm.scores[: len(ids)], dtype=np.float32))


if __name__ == "__main__":
    main()
