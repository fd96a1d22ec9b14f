"""The text half of ``lora-bridge demo``: a tiny Q4_0 GGUF base, a text LoRA, llama.cpp before/after."""

from __future__ import annotations

from pathlib import Path

from ..config import config_from_dict
from .engine import train_text
from .llama_check import llama_cpp_available, run_llama_cpp
from .tokenizer import Tokenizer

DEMO_LINES = ["the cat sat on the mat", "the dog ran to the mat"]
PROMPT = "the cat"


def _generate(base: Path, adapter: Path | None, tokenizer: Tokenizer) -> str:
    prompt = tokenizer.encode(PROMPT)
    _, new = run_llama_cpp(base, adapter, [prompt], generate=prompt, max_new=6)
    return tokenizer.decode(prompt + (new or []))


def run_text_demo(workdir: Path) -> None:
    """Build a tiny LLaMA as a Q4_0 GGUF in ``workdir``, train a LoRA on two sentences, show generations."""
    from ..tiny.ggml import write_ggml
    from ..tiny.llama import build_tiny_llama, kv_heads, tiny_vocab, write_tiny_gguf
    from .gguf_model import read_gguf_metadata

    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab()
    base = workdir / "tiny-llama-q4_0.gguf"
    model = build_tiny_llama(seed=0, vocab=vocab)
    write_tiny_gguf(model, base, qtype="Q4_0", vocab=vocab)
    legacy = write_ggml(model, vocab, workdir / "tiny-llama.ggmlv3.q4_0.bin", "Q4_0")
    data = workdir / "text-data.txt"
    data.write_text("\n".join(DEMO_LINES) + "\n", encoding="utf-8")
    tokenizer = Tokenizer.from_metadata(read_gguf_metadata(base)[1], str(base))
    print(f"text demo: base {base} (tiny LLaMA, Q4_0), data {data}")

    have_llama = llama_cpp_available()
    if have_llama:
        print(f"  llama.cpp before: {_generate(base, None, tokenizer)!r}")
    else:
        print("  llama-cpp-python is not installed: skipping llama.cpp generation (pip install llama-cpp-python)")

    config = config_from_dict({
        "task_type": "text-generation", "base_model": str(base), "train_data_dir": str(data),
        "output_dir": str(workdir / "text-lora"), "output_name": "demo_text_lora", "lora_rank": 8,
        "lora_alpha": 16, "learning_rate": 1e-2, "max_train_steps": 30, "batch_size": 2, "seed": 1,
        "weight_decay": 0.0,
    })
    result = train_text(config)
    print(f"  trained {result.steps} steps, final loss {result.final_loss:.3f}")
    for path in result.output_files:
        print(f"  wrote {path}")
    for line in result.message.splitlines():
        print(f"  {line}")
    if have_llama:
        adapter = Path(result.output_files[0])
        print(f"  llama.cpp after:  {_generate(base, adapter, tokenizer)!r}")
    print(f"  The same tiny model as a legacy GGML file: {legacy}. Train on it with")
    print(f"    lora-bridge train --config CONFIG --set base_model={legacy} --set ggml_n_kv_heads={kv_heads(model)}")
