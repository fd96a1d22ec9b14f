"""init_lora on text runs: the first step starts from the given adapter (PEFT folder or GGUF), layouts and conflicts."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from textutil import text_config

from extension.errors import UserError
from extension.text.data import IGNORE, load_text_dataset
from extension.text.engine import train_text
from extension.text.gguf_model import read_gguf_metadata
from extension.text.tokenizer import Tokenizer

LINES = ["the cat sat on the mat", "the dog ran to the mat"]


@pytest.fixture(scope="module")
def first_run(tiny, tmp_path_factory):
    """A finished run on the F32 base (rank 8, alpha 16, the default seven targets): its output folder."""
    root = tmp_path_factory.mktemp("first-run")
    data = root / "data.txt"
    data.write_text("\n".join(LINES) + "\n")
    out = root / "out"
    assert train_text(text_config(tiny["F32"], data, out), callback=lambda e: None).status == "done"
    return {"out": out, "data": data}


def _run(cfg) -> tuple[list, list[str]]:
    events = []
    result = train_text(cfg, callback=events.append)
    assert result.status == "done"
    return [e.loss for e in events if e.kind == "step"], [e.message for e in events if e.kind == "log"]


def _oracle_loss(tiny, peft_folder, data) -> float:
    """Mean next-token loss of the HF model + the PEFT folder loaded by peft itself, on the whole dataset."""
    from peft import PeftModel

    tok = Tokenizer.from_metadata(read_gguf_metadata(tiny["F32"])[1], str(tiny["F32"]))
    samples = load_text_dataset(data, tok)
    model = PeftModel.from_pretrained(copy.deepcopy(tiny["model"]), str(peft_folder)).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for s in samples:
            logits = model(torch.tensor([s.ids])).logits[0, :-1]
            labels = torch.tensor(s.labels[1:])
            keep = labels != IGNORE
            total += float(torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum"))
            count += int(keep.sum())
    return total / count


def _gguf_tensors(path) -> dict[str, np.ndarray]:
    from gguf import GGUFReader

    return {t.name: np.array(t.data) for t in GGUFReader(str(path)).tensors}


@pytest.mark.parametrize("source", ["tl.gguf", "tl"])
def test_first_step_starts_from_the_given_adapter(tiny, tmp_path, first_run, source):
    """Step 1's loss is the loss of base + the given adapter (computed by transformers + peft), not of a fresh LoRA."""
    init = first_run["out"] / source
    cfg = dict(init_lora=str(init), learning_rate=0.0, max_train_steps=1)
    losses, logs = _run(text_config(tiny["F32"], first_run["data"], tmp_path / "b", **cfg))
    fresh, _ = _run(text_config(tiny["F32"], first_run["data"], tmp_path / "c", learning_rate=0.0, max_train_steps=1))
    expected = _oracle_loss(tiny, first_run["out"] / "tl", first_run["data"])
    assert losses[0] == pytest.approx(expected, rel=1e-4)
    assert fresh[0] > 2 * losses[0]
    assert any(f"init_lora {init} (" in line and "14 modules loaded from the file, 0 fresh" in line for line in logs)
    # learning rate 0: the exported adapter is the given one, tensor for tensor (the PEFT folder holds fp16)
    got, want = _gguf_tensors(tmp_path / "b" / "tl.gguf"), _gguf_tensors(first_run["out"] / "tl.gguf")
    rtol = 0 if source.endswith(".gguf") else 1e-3
    assert got.keys() == want.keys()
    assert all(np.allclose(got[k], want[k], rtol=rtol, atol=1e-7 if rtol else 0) for k in want)


def test_rank_alpha_and_targets_follow_the_file(tiny, tmp_path, first_run):
    """lora_rank/lora_alpha/targets at their defaults take the file's; extra targets start fresh and are counted."""
    from extension.config import config_from_dict

    base = dict(task_type="text-generation", base_model=str(tiny["F32"]), train_data_dir=str(first_run["data"]),
                output_name="tl", max_train_steps=1, llama_cpp_check="off", init_lora=str(first_run["out"] / "tl"))
    _, logs = _run(config_from_dict({**base, "output_dir": str(tmp_path / "a")}))
    assert any("14 modules loaded from the file, 0 fresh; rank 8" in line for line in logs)

    partial = tmp_path / "partial"
    train_text(text_config(tiny["F32"], first_run["data"], partial, lora_target_modules=["q_proj", "v_proj"],
                           max_train_steps=2), callback=lambda e: None)
    cfg = {**base, "output_dir": str(tmp_path / "b"), "init_lora": str(partial / "tl.gguf"),
           "lora_target_modules": ["q_proj", "v_proj", "o_proj"]}
    _, logs = _run(config_from_dict(cfg))
    assert any("4 modules loaded from the file, 2 fresh; rank 8" in line for line in logs)


@pytest.mark.parametrize(("setting", "message"), [
    ({"lora_rank": 4}, "modules have rank 8 but lora_rank is 4"),
    ({"lora_alpha": 3}, "modules have alpha 16 but lora_alpha is 3"),
    ({"lora_target_modules": ["q_proj", "k_proj"]}, "that lora_target_modules leaves out"),
])
def test_conflicting_settings_are_errors(tiny, tmp_path, first_run, setting, message):
    cfg = text_config(tiny["F32"], first_run["data"], tmp_path / "x", init_lora=str(first_run["out"] / "tl"),
                      **{"lora_rank": 8, "lora_alpha": 16, **setting})
    with pytest.raises(UserError, match=message):
        train_text(cfg, callback=lambda e: None)
    assert not (tmp_path / "x" / "tl.gguf").exists()


def test_adapter_for_another_base_is_refused(tiny_qwen2, tmp_path, first_run):
    cfg = text_config(tiny_qwen2["F32"], first_run["data"], tmp_path / "x", init_lora=str(first_run["out"] / "tl"))
    with pytest.raises(UserError, match=r"init_lora .*: does not fit the base .*qwen2-f32.gguf"):
        train_text(cfg, callback=lambda e: None)


def test_missing_init_file(tiny, tmp_path, first_run):
    cfg = text_config(tiny["F32"], first_run["data"], tmp_path / "x", init_lora=str(tmp_path / "nope.gguf"))
    with pytest.raises(UserError, match="nope.gguf: not found"):
        train_text(cfg, callback=lambda e: None)
