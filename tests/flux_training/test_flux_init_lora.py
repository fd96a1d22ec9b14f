"""``init_lora`` (sd-scripts' ``--network_weights``) on Flux.1: the run starts from the file's delta, whatever
layout the file is in (sd-scripts' kohya, BFL/ComfyUI, diffusers as ai-toolkit saves it), and a file written
after a step at learning rate 0 is the input in kohya layout; misfits stop with one line (before anything
loads when the file alone tells)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flux_consumer import module_deltas
from flux_training_setup import diffusers_lora, flux_config
from safetensors.torch import load_file, save_file

from converters import convert, load_adapter
from converters.flux_names import bfl_modules
from converters.safetensors_io import read_header
from extension.errors import UserError
from extension.runner import run_training

RANK, ALPHA = 4, 2.0


def _bfl_linears(base) -> dict[str, tuple[int, int]]:
    """{BFL path: (out, in)} of every linear in the base's double and single blocks (sd-scripts' default set)."""
    header, _ = read_header(base)
    table = bfl_modules()
    return {k.removesuffix(".weight"): tuple(v["shape"]) for k, v in header.items()
            if k.endswith(".weight") and k.removesuffix(".weight") in table and k.startswith(("double_", "single_"))}


def _sd_scripts_file(path, linears, rank=RANK, extra=None):
    """A Flux LoRA as sd-scripts' networks/lora_flux.py saves one: ``lora_unet_`` + BFL path, fused qkv/linear1
    with one dense down, fp16 tensors, an alpha per module, ss_* metadata."""
    gen = torch.Generator().manual_seed(11)
    tensors = {}
    for path_, (out, inp) in linears.items():
        key = "lora_unet_" + path_.replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = (0.3 * torch.randn(rank, inp, generator=gen)).half()
        tensors[f"{key}.lora_up.weight"] = (0.3 * torch.randn(out, rank, generator=gen)).half()
        tensors[f"{key}.alpha"] = torch.tensor(ALPHA)
    tensors.update(extra or {})
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora_flux", "ss_network_dim": str(rank),
                                            "ss_network_alpha": str(ALPHA), "ss_base_model_version": "flux1",
                                            "modelspec.architecture": "flux-1-dev/lora"})
    return path


def _diffusers_file(folder):
    """A Flux LoRA saved by diffusers + peft themselves (ai-toolkit/SimpleTuner): separate q/k/v, own downs."""
    from diffusers import FluxPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from extension.tiny.flux import build_tiny_flux

    model = build_tiny_flux()["transformer"]
    torch.manual_seed(5)
    model.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights=False, target_modules=[
        "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "proj_mlp",
        "proj_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"]))
    FluxPipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(model),
                                   weight_name="ai_toolkit.safetensors")
    return folder / "ai_toolkit.safetensors"


def _source(layout, flux_files, tmp_path):
    kohya = tmp_path / "sd_scripts.safetensors"
    if layout == "diffusers":
        return _diffusers_file(tmp_path)
    _sd_scripts_file(kohya, _bfl_linears(flux_files["base_model"]))
    if layout == "kohya":
        return kohya
    return convert(kohya, tmp_path / "comfy.safetensors", to="bfl", dtype="f32")


def _config(flux_files, flux_data, out, **overrides):
    values = flux_config(flux_files, flux_data, out, max_train_steps=1, sample_every_n_steps=0, **overrides)
    for key in ("lora_rank", "lora_alpha"):  # left at their defaults: the file's ranks and alphas are used
        if key not in overrides:
            values.pop(key)
    return values


@pytest.mark.parametrize("layout", ["kohya", "bfl", "diffusers"])
def test_run_starts_from_the_files_delta_and_writes_it_back_in_kohya_layout(layout, flux_files, flux_data, tmp_path):
    source = _source(layout, flux_files, tmp_path)
    events = []
    result = run_training(_config(flux_files, flux_data, tmp_path / "out", learning_rate=0.0,
                                  init_lora=str(source)), events.append)
    assert result.status == "done", result.message
    given = load_adapter(source)
    logs = [e.message for e in events if e.kind == "log"]
    assert any(f"{len(given.modules)} modules loaded from the file, 0 fresh" in line for line in logs), logs

    written = tmp_path / "out" / "flux_t.safetensors"
    from extension.tiny.flux import build_tiny_flux

    transformer = build_tiny_flux()["transformer"]
    diffusers_lora(written, transformer)  # the step-0 (lr 0) LoRA as diffusers' Flux loader applies it
    got = module_deltas(transformer, "t")
    want = {n: m.delta() for n, m in given.modules.items() if "blocks." in n}  # diffusers' sd-scripts converter
    assert set(got) == set(want)  # reads the blocks only (the final proj_out is checked in kohya layout below)
    assert max(float(np.linalg.norm(got[n] - w) / np.linalg.norm(w)) for n, w in want.items()) < 1e-5

    as_kohya = convert(source, tmp_path / "as_kohya.safetensors", to="kohya", dtype="f32")
    out, ref = load_file(str(written)), load_file(str(as_kohya))
    assert set(out) == set(ref)
    for key, value in ref.items():
        dtype = torch.float16 if layout == "kohya" and not key.endswith(".alpha") else torch.float32
        assert torch.allclose(out[key].to(dtype).float(), value.to(dtype).float(), rtol=1e-6, atol=0), key
    meta = read_header(written)[0]["__metadata__"]
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == (("4", "2") if layout != "diffusers" else
                                                                   ("Dynamic", "Dynamic"))


_SD_MODULE = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
_CLIP = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
_T5 = "lora_te3_encoder_block_0_layer_0_SelfAttention_q"


def _extra(name, out, inp):
    return {f"{name}.lora_down.weight": torch.ones(RANK, inp).half(),
            f"{name}.lora_up.weight": torch.ones(out, RANK).half(), f"{name}.alpha": torch.tensor(ALPHA)}


@pytest.mark.parametrize(("case", "setting", "message"), [
    ("sd", {}, "sd1.safetensors: is a sd1 LoRA, the base is Flux.1; continue from a Flux.1 LoRA"),
    ("wider", {}, "does not fit the base"),
    ("plain", {"lora_rank": 8}, "transformer modules have rank 4 but lora_rank is 8"),
    ("plain", {"unet_target_modules": ["to_q"]}, "that unet_target_modules leaves out"),
    ("t5", {}, "has T5-XXL \\(text_encoder_2\\) modules; Flux.1 runs train no T5 LoRA"),
    ("clip", {}, "has CLIP-L \\(text_encoder\\) modules; set train_text_encoder: true"),
])
def test_misfits_are_one_line(case, setting, message, flux_files, flux_data, tmp_path,
                                                    monkeypatch):
    from extension.models import flux_loader

    linears = _bfl_linears(flux_files["base_model"])
    if case == "sd":
        source = tmp_path / "sd1.safetensors"
        save_file(_extra(_SD_MODULE, 320, 320), str(source), metadata={"ss_base_model_version": "sd_v1"})
    else:
        if case == "wider":
            linears = {k: (out, inp + 16) for k, (out, inp) in linears.items()}
        extra = {"t5": _extra(_T5, 16, 16), "clip": _extra(_CLIP, 32, 32)}.get(case)
        source = _sd_scripts_file(tmp_path / f"{case}.safetensors", linears, extra=extra)

    def no_load(*args, **kwargs):
        raise AssertionError("the base was loaded before the init_lora check")

    if case != "plain":  # rank and targets are checked once the transformer's layers are known
        monkeypatch.setattr(flux_loader, "load_flux_base", no_load)
    with pytest.raises(UserError, match=message) as caught:
        run_training(_config(flux_files, flux_data, tmp_path / "out", init_lora=str(source), **setting))
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out" / "flux_t.safetensors").exists()


def test_sd_scripts_fused_modules_go_on_training_as_one_lora(flux_files, flux_data, tmp_path):
    """sd-scripts trains ``qkv`` / ``linear1`` as one LoRA (one down); continuing such a file keeps that: the
    layers share one down while they train, so the file keeps rank 4 instead of growing to 12/16."""
    source = _sd_scripts_file(tmp_path / "sd_scripts.safetensors", _bfl_linears(flux_files["base_model"]))
    events = []
    result = run_training(_config(flux_files, flux_data, tmp_path / "out", init_lora=str(source)), events.append)
    assert result.status == "done", result.message
    out, given = load_file(str(tmp_path / "out" / "flux_t.safetensors")), load_file(str(source))
    assert set(out) == set(given)
    for key in ("lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_single_blocks_0_linear1"):
        assert out[f"{key}.lora_down.weight"].shape == given[f"{key}.lora_down.weight"].shape, key
        assert not torch.equal(out[f"{key}.lora_down.weight"].half(), given[f"{key}.lora_down.weight"]), key
    assert read_header(tmp_path / "out" / "flux_t.safetensors")[0]["__metadata__"]["ss_network_dim"] == "4"
    assert any("3 fused qkv/linear1 module(s) go on training as one LoRA" in e.message for e in events
               if e.kind == "log")  # img_attn.qkv, txt_attn.qkv, linear1
