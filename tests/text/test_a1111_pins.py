"""The tiny builders and a text run under A1111 1.10's pins (transformers 4.30.2, diffusers 0.31, peft 0.13.2).

transformers 4.30 keeps ``rotary_emb.inv_freq`` as a persistent buffer, which no file format stores.
Runs in the gradio 3.41 side venv that ``.ci/ui-compat`` builds (before the main test run in
``.ci/run``); LORA_BRIDGE_A1111_VENV points elsewhere.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("LORA_BRIDGE_A1111_VENV", ROOT / ".ci-cache" / "venvs" / "gradio-3.41"))
PYTHON = VENV / "bin" / "python"
needs_venv = pytest.mark.skipif(not PYTHON.exists(), reason=f"no A1111-pins venv at {VENV} (.ci/ui-compat makes it)")

SCRIPT = r"""
import sys
from pathlib import Path
import numpy as np, torch, transformers
assert transformers.__version__ == "4.30.2", transformers.__version__
from extension.config import config_from_dict
from extension.text.engine import train_text
from extension.text.gguf_model import load_text_model
from extension.tiny.ggml import write_ggml
from extension.tiny.llama import build_tiny_llama, save_tiny_hf, tiny_vocab, write_tiny_gguf

out = Path(sys.argv[1])
vocab = tiny_vocab()
model = build_tiny_llama(seed=0, vocab=vocab)
assert any(n.endswith("rotary_emb.inv_freq") for n in model.state_dict())  # the buffer this test is about
files = {"gguf": write_tiny_gguf(model, out / "t-f32.gguf", qtype="F32", vocab=vocab),
         "q4": write_tiny_gguf(model, out / "t-q4_0.gguf", qtype="Q4_0", vocab=vocab),
         "ggml": write_ggml(model, vocab, out / "t.ggmlv3.f32.bin", "F32"),
         "hf": save_tiny_hf(out / "hf", model=model, vocab=vocab)}
ids = torch.tensor([[1, 300, 301, 302, 303]])
with torch.no_grad():
    want = model(ids).logits[0].numpy()
for key in ("gguf", "ggml"):
    got = load_text_model(files[key], {"rms_eps": 1e-5} if key == "ggml" else None).eval()
    with torch.no_grad():
        delta = float(np.abs(got(ids)[0].float().numpy() - want).max())
    assert delta < 1e-4, (key, delta)
(out / "data.txt").write_text("the cat sat on the mat\nthe dog ran to the mat\n")
cfg = config_from_dict({"task_type": "text-generation", "base_model": str(files["ggml"]),
                        "train_data_dir": str(out / "data.txt"), "output_dir": str(out / "run"), "max_train_steps": 3,
                        "lora_rank": 4, "llama_cpp_check": "off", "ggml_rms_eps": 1e-5})
result = train_text(cfg, callback=lambda e: None)
assert result.status == "done" and (out / "run" / "my_lora.gguf").is_file(), result

# The image half of the demo: the tiny SD1 checkpoint as A1111 stores it, loaded by our single-file loader.
from extension.demo import build_demo_base
from extension.models.sd_loader import load_sd_base
sd = load_sd_base(build_demo_base(out / "sd"))
assert sd.arch == "sd1" and sum(p.numel() for p in sd.unet.parameters()) > 0
print("ok")
"""


@pytest.mark.slow
@needs_venv
def test_tiny_builders_and_a_ggml_run_under_a1111_pins(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([str(PYTHON), "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


FAMILY_SCRIPT = r"""
import sys
from pathlib import Path
import numpy as np, torch, transformers
assert transformers.__version__ == "4.30.2", transformers.__version__
from extension.config import config_from_dict
from extension.text.engine import train_text
from extension.text.gguf_model import load_text_model

base, out, ids = Path(sys.argv[1]), Path(sys.argv[2]), [int(i) for i in sys.argv[3].split(",")]
with torch.no_grad():
    np.save(out / "logits.npy", load_text_model(base)(torch.tensor([ids]))[0].numpy())
(out / "data.txt").write_text("the cat sat on the mat and the dog ran to the mat\n")
cfg = config_from_dict({"task_type": "text-generation", "base_model": str(base),
                        "train_data_dir": str(out / "data.txt"), "output_dir": str(out / "run"), "max_train_steps": 3,
                        "lora_rank": 4, "llama_cpp_check": "off"})
result = train_text(cfg, callback=lambda e: None)
assert result.status == "done" and (out / "run" / "my_lora.gguf").is_file(), result
print("ok")
"""


@pytest.mark.slow
@needs_venv
@pytest.mark.parametrize("family", ["qwen3", "gemma3", "starcoder2", "stablelm"])
def test_family_bases_under_a1111_pins(family, family_bases, tmp_path):
    """A Qwen3 / Gemma 3 / StarCoder 2 / StableLM GGUF (llama.cpp's converter) loads and trains without
    transformers' model classes."""
    import numpy as np
    import torch

    from extension.text.gguf_model import load_text_model

    base = family_bases(family)["Q8_0"]
    ids = [1, 259, 260, 261, 50, 100, 7, 300, 20, 21, 22, 23]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([str(PYTHON), "-c", FAMILY_SCRIPT, str(base), str(tmp_path), ",".join(map(str, ids))],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
    with torch.no_grad():
        want = load_text_model(base)(torch.tensor([ids]))[0].numpy()
    assert np.abs(np.load(tmp_path / "logits.npy") - want).max() < 1e-5
