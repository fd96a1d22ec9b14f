"""Image runs: the articles' config as written (image-generation, LLM-style targets), and init_lora from a kohya file
written the way sd-scripts writes one and from the run's own output."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent))
from image_setup import image_config, tiny_checkpoint  # noqa: E402

from extension.cli import main
from extension.config import config_from_dict
from extension.errors import UserError
from extension.runner import run_training

# As the articles publish it; the test puts a tiny SD1 checkpoint and images at its paths.
ARTICLE_IMAGE_YAML = (Path(__file__).resolve().parents[2] / "configs" / "lora_scripts_image.yaml").read_text()


def _attention_linears(base_path) -> dict[str, tuple[int, int]]:
    """{diffusers path: (out, in)} of the tiny UNet's attention projections."""
    from extension.models.sd_loader import load_sd_base

    unet = load_sd_base(base_path).unet
    return {n: (m.out_features, m.in_features) for n, m in unet.named_modules()
            if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v")
            or n.endswith("to_out.0")}


def _kohya_file(path, linears, rank=4, alpha=2.0, extra=None):
    """A kohya LoRA written with plain safetensors, as sd-scripts' networks/lora.py names and stores it (fp16)."""
    gen = torch.Generator().manual_seed(7)
    tensors = {}
    for name, (out, inp) in linears.items():
        key = "lora_unet_" + name.replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = (0.1 * torch.randn(rank, inp, generator=gen)).half()
        tensors[f"{key}.lora_up.weight"] = (0.1 * torch.randn(out, rank, generator=gen)).half()
        tensors[f"{key}.alpha"] = torch.tensor(alpha).half()
    tensors.update(extra or {})
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora", "ss_network_dim": str(rank),
                                            "ss_network_alpha": str(alpha)})
    return path


def _logs(events):
    return [e.message for e in events if e.kind == "log"]


def test_article_image_config_trains_as_written(tmp_path, monkeypatch, capsys):
    from PIL import Image

    tiny_checkpoint("sd1", tmp_path / "models" / "Stable-diffusion")
    for suffix in (".safetensors", ".yaml", ".tokenizer"):
        (tmp_path / "models" / "Stable-diffusion" / f"tiny-sd1{suffix}").rename(
            tmp_path / "models" / "Stable-diffusion" / f"v1-5-pruned{suffix}")
    data = tmp_path / "data" / "style_train"
    data.mkdir(parents=True)
    rows = []
    for i, colour in enumerate(["red", "blue", "green", "yellow"]):
        Image.new("RGB", (64, 64), (60 * i, 255 - 60 * i, 128)).save(data / f"{i}.png")  # bucket 64: fast
        rows.append((f"{i}.png", f"a {colour} picture in my style"))
    with open(data / "metadata.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("filename", "prompt"), *rows])
    (tmp_path / "article.yaml").write_text(ARTICLE_IMAGE_YAML)
    monkeypatch.chdir(tmp_path)

    assert main(["train", "--config", "article.yaml"]) == 0
    text = "".join(capsys.readouterr())
    assert text.count("LLM names mapped to the SD UNet's attention layers (q_proj -> to_q, v_proj -> to_v)") == 1
    out = tmp_path / "output" / "my_style_lora" / "my_lora.safetensors"
    tensors = load_file(str(out))
    modules = {k.split(".")[0] for k in tensors}
    assert {m[-4:] for m in modules} == {"to_q", "to_v"}  # only the mapped attention projections
    assert {t.shape[0] for k, t in tensors.items() if k.endswith("lora_down.weight")} == {8}


def test_continue_from_a_kohya_file_made_by_another_tool(bases, shapes, tmp_path):
    """lr 0, one step: the LoRA written after the first step holds exactly the file's weights (rank 4, alpha 2)."""
    source = _kohya_file(tmp_path / "downloaded.safetensors", _attention_linears(bases["sd1"]))
    events = []
    cfg = config_from_dict(dict(base_model=str(bases["sd1"]), train_data_dir=str(shapes), output_name="t",
                                output_dir=str(tmp_path / "o"), resolution=64, min_bucket_reso=64, max_bucket_reso=64,
                                learning_rate=0.0, batch_size=2, max_train_steps=1, network_weights=str(source)))
    assert run_training(cfg, events.append).status == "done"
    n = len(_attention_linears(bases["sd1"]))
    assert any(f"{n} modules loaded from the file, 0 fresh; rank 4" in line for line in _logs(events)), _logs(events)
    got, want = load_file(str(tmp_path / "o" / "t.safetensors")), load_file(str(source))
    assert got.keys() == want.keys()
    from safetensors import safe_open

    with safe_open(str(tmp_path / "o" / "t.safetensors"), "pt") as fh:
        meta = fh.metadata()
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("4", "2")  # the file's, not lora_rank's default
    for key in want:
        assert torch.equal(got[key].half(), want[key]), key


def test_continue_from_own_output_and_add_fresh_modules(bases, shapes, tmp_path):
    first = tmp_path / "a"
    assert run_training(image_config(bases["sd1"], shapes, first, unet_target_modules=["to_q", "to_v"]),
                        lambda e: None).status == "done"
    events = []
    cfg = image_config(bases["sd1"], shapes, tmp_path / "b", init_lora=str(first / "t.safetensors"),
                       learning_rate=0.0, max_train_steps=1, unet_target_modules=["q_proj", "v_proj", "to_k"])
    assert run_training(cfg, events.append).status == "done"
    n = len(_attention_linears(bases["sd1"])) // 4
    assert any(f"{2 * n} modules loaded from the file, {n} fresh; rank 4" in line for line in _logs(events))
    got, want = load_file(str(tmp_path / "b" / "t.safetensors")), load_file(str(first / "t.safetensors"))
    for key in want:
        if key.startswith("lora_"):
            assert torch.equal(got[key], want[key]), key
    fresh_up = [t for k, t in got.items() if "to_k" in k and k.endswith("lora_up.weight")]
    assert len(fresh_up) == n and all(not t.any() for t in fresh_up)  # fresh modules start at B = 0


_TE_MODULE = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"


@pytest.mark.parametrize(("setting", "change", "message"), [
    ({"lora_rank": 8}, None, "unet modules have rank 4 but lora_rank is 8"),
    ({"lora_alpha": 4}, None, "unet modules have alpha 2 but lora_alpha is 4"),
    ({"unet_target_modules": ["to_q"]}, None, "that unet_target_modules leaves out"),
    ({}, "text encoder", "has text_encoder modules; set train_text_encoder: true"),
    ({}, "wider", "does not fit the base"),
])
def test_conflicts_and_misfits_are_refused(bases, shapes, tmp_path, setting, change, message):
    linears = _attention_linears(bases["sd1"])
    extra = None
    if change == "wider":  # made for a model with wider attention inputs
        linears = {k: (out, inp + 16) for k, (out, inp) in linears.items()}
    if change == "text encoder":
        extra = {f"{_TE_MODULE}.lora_down.weight": torch.zeros(4, 32).half(),
                 f"{_TE_MODULE}.lora_up.weight": torch.zeros(32, 4).half(), f"{_TE_MODULE}.alpha": torch.tensor(2.0)}
    source = _kohya_file(tmp_path / "x.safetensors", linears, extra=extra)
    values = dict(base_model=str(bases["sd1"]), train_data_dir=str(shapes), output_dir=str(tmp_path / "o"),
                  resolution=64, min_bucket_reso=64, max_bucket_reso=64, max_train_steps=1, init_lora=str(source))
    with pytest.raises(UserError, match=message):
        run_training(config_from_dict({**values, **setting}), lambda e: None)
    assert not (tmp_path / "o" / "my_lora.safetensors").exists()
