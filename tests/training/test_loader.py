"""Base loading the way users call it: WebUI single files (with .yaml), .ckpt, diffusers folders."""

from __future__ import annotations

import shutil

import pytest
import torch

from extension.errors import UserError
from extension.models.sd_loader import load_sd_base
from extension.tiny.sd import build_tiny_sd


def _unet_out(unet, cross_dim: int, sdxl: bool, pooled_dim: int = 48) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 16, generator=gen)
    ctx = torch.randn(1, 7, cross_dim, generator=gen)
    kwargs = {}
    if sdxl:
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled_dim, generator=gen),
                                       "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        return unet(x, torch.tensor([500]), ctx, **kwargs).sample


@pytest.mark.parametrize("kind", ["sd1", "sdxl", "sd2-v"])
def test_single_file_equals_the_model_it_was_written_from(kind, bases):
    base = load_sd_base(bases[kind])
    ref = build_tiny_sd(kind, seed=0)
    assert base.arch == kind
    assert base.prediction_type == ("v_prediction" if kind == "sd2-v" else "epsilon")
    assert base.noise_scheduler().config.prediction_type == base.prediction_type
    sdxl = kind == "sdxl"
    cross = ref["unet"].config.cross_attention_dim
    assert torch.equal(_unet_out(base.unet, cross, sdxl), _unet_out(ref["unet"], cross, sdxl))
    ids = base.tokenizers[0]("a red circle", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(base.text_encoders[0](ids).last_hidden_state, ref["text_encoder"](ids).last_hidden_state)
        if sdxl:
            assert torch.equal(base.text_encoders[1](ids).text_embeds, ref["text_encoder_2"](ids).text_embeds)
        pixels = torch.rand(1, 3, 32, 32) * 2 - 1
        assert torch.equal(base.vae.encode(pixels).latent_dist.mean, ref["vae"].encode(pixels).latent_dist.mean)


def test_diffusers_folder_and_ckpt(bases, tmp_path):
    folder = load_sd_base(bases["sdxl-dir"])
    assert folder.arch == "sdxl" and len(folder.text_encoders) == 2
    # A .ckpt goes through torch.load(weights_only=True) and is read like the .safetensors.
    from safetensors.torch import load_file

    ckpt = tmp_path / "tiny-sd1.ckpt"
    torch.save({"state_dict": load_file(str(bases["sd1"]))}, ckpt)
    shutil.copy(bases["sd1"].with_suffix(".yaml"), ckpt.with_suffix(".yaml"))
    shutil.copytree(bases["sd1"].with_name("tiny-sd1.tokenizer"), tmp_path / "tiny-sd1.tokenizer")
    assert load_sd_base(ckpt).arch == "sd1"


def test_bad_bases_are_named(bases, tmp_path, monkeypatch):
    from extension.models import tokenizers

    # As on a machine without the HF cache entry and without open_clip.
    monkeypatch.setattr(tokenizers, "hf_cache_dir", lambda repo_id: None)
    monkeypatch.setattr(tokenizers, "open_clip_bpe_path", lambda: None)
    with pytest.raises(UserError, match="is an SDXL model but model_arch is 'sd1'"):
        load_sd_base(bases["sdxl"], model_arch="sd1")
    with pytest.raises(UserError, match="base model not found"):
        load_sd_base(tmp_path / "missing.safetensors")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(bases["sd1"].read_bytes()[:5000])
    with pytest.raises(UserError, match="cannot read the checkpoint"):
        load_sd_base(broken)
    # No tokenizer anywhere offline: the message names what to provide.
    lonely = tmp_path / "lonely" / "m.safetensors"
    lonely.parent.mkdir()
    shutil.copy(bases["sd1"], lonely)
    shutil.copy(bases["sd1"].with_suffix(".yaml"), lonely.with_suffix(".yaml"))
    with pytest.raises(UserError, match="tokenizer_path"):
        load_sd_base(lonely)
    # Without its .yaml the tiny file is read with the full-size SD1 config: a clear mismatch.
    shutil.copytree(bases["sd1"].with_name("tiny-sd1.tokenizer"), lonely.with_name("m.tokenizer"))
    lonely.with_suffix(".yaml").unlink()
    with pytest.raises((UserError, RuntimeError)):
        load_sd_base(lonely)
