"""A Flux.1 LoRA trained from scratch holds BFL's fused modules as sd-scripts (networks/lora_flux.py) trains them:
``qkv`` / ``linear1`` as ONE LoRA of the run's rank (one down, one alpha), not q/k/v[/mlp] LoRAs whose ranks add."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flux_training_setup import flux_config

from converters import load_adapter
from converters.flux_names import bfl_modules
from converters.safetensors_io import read_header
from extension.errors import UserError

RANK = 4  # flux_config's lora_rank
FUSED = ("double_blocks.0.img_attn.qkv", "double_blocks.0.txt_attn.qkv", "single_blocks.0.linear1")


def _sd_scripts_shapes(base) -> dict[str, tuple[int, int]]:
    """{BFL path: (out, in)} of the linears sd-scripts adapts by default (every one of the double and single
    blocks), from the base file's header."""
    header, _ = read_header(base)
    table = bfl_modules()
    return {k.removesuffix(".weight"): tuple(v["shape"]) for k, v in header.items()
            if k.endswith(".weight") and k.removesuffix(".weight") in table and k.startswith(("double_", "single_"))}


def test_a_new_run_writes_fused_modules_at_its_rank(trained, flux_files):
    path = trained / "flux_t.safetensors"
    header = read_header(path)[0]
    shapes = _sd_scripts_shapes(flux_files["base_model"])
    for bfl in FUSED:
        key = "lora_unet_" + bfl.replace(".", "_")
        assert header[f"{key}.lora_down.weight"]["shape"] == [RANK, shapes[bfl][1]], bfl
        assert header[f"{key}.lora_up.weight"]["shape"] == [shapes[bfl][0], RANK], bfl
    adapter = load_adapter(path)  # our kohya reader: the fused module's parts come back with one shared down
    table = bfl_modules()
    for bfl in FUSED:
        parts = [adapter.modules[p] for p in table[bfl].parts]
        assert all(p.rank == RANK and np.array_equal(p.down, parts[0].down) and p.alpha == parts[0].alpha
                   for p in parts), bfl
    # the file's size is sd-scripts' for this rank: r * (in + out) per adapted linear, one alpha each
    file_params = sum(int(np.prod(v["shape"])) for k, v in header.items()
                      if k.startswith("lora_unet_") and k.endswith(".weight"))
    assert file_params == sum(RANK * (o + i) for o, i in shapes.values())


def test_comfyui_mapping_applies_the_delta_the_run_trained(trained):
    """The file through ComfyUI's Flux key map and loader (restated in tests/formats_flux/comfy_flux.py): every key
    loads and each fused weight changes by the training state's delta (the shared down's up rows per part)."""
    from comfy_flux import key_map, load_and_apply
    from diffusers import FluxTransformer2DModel
    from flux_cases import comfy_deltas, worst_error
    from flux_consumer import bfl_checkpoint
    from flux_training_setup import state_deltas
    from safetensors.numpy import load_file

    from extension.tiny.flux import transformer_kwargs

    kwargs = transformer_kwargs()
    model = FluxTransformer2DModel(**kwargs)
    base = {"diffusion_model." + k: v.detach().numpy() for k, v in bfl_checkpoint(model).items()}
    hidden = kwargs["num_attention_heads"] * kwargs["attention_head_dim"]
    mapping = key_map(base, depth=1, depth_single=1, hidden=hidden)
    patched, not_loaded = load_and_apply(load_file(str(trained / "flux_t.safetensors")), mapping, base)
    assert not_loaded == []
    want = {k: v for k, v in comfy_deltas(model, state_deltas(trained / "state", 4.0)).items() if np.any(v)}
    assert len(want) == 13  # 10 double + 3 single BFL linears
    assert worst_error({k: patched[k] - base[k] for k in want}, want) <= 1e-4


def _tiny_run_lora(flux_files, tmp_path):
    """The tiny Flux transformer with LoRA layers on it as a new run puts them (rank 4, sd-scripts' targets)."""
    from extension.config import DEFAULT_UNET_TARGETS, as_config
    from extension.image.flux.engine import flux_targets
    from extension.image.flux.init_lora import flux_layouts, tie_fused_downs
    from extension.image.lora import inject_lora
    from extension.tiny.flux import build_tiny_flux

    config = as_config(flux_config(flux_files, tmp_path, tmp_path / "out"))
    transformer = build_tiny_flux()["transformer"]
    wanted = {"transformer": flux_targets(transformer, DEFAULT_UNET_TARGETS)}
    layout = flux_layouts(config, wanted, {}, None, print)["transformer"]
    inject_lora(transformer, layout.names, RANK, 4.0, module_ranks=layout.ranks)
    return transformer, tie_fused_downs(layout, transformer)


def test_trained_parameters_are_sd_scripts_count(flux_files, tmp_path):
    from extension.image.lora import lora_parameters

    transformer, tied = _tiny_run_lora(flux_files, tmp_path)
    assert tied == 3  # img_attn.qkv, txt_attn.qkv, linear1 of the tiny Flux's one double and one single block
    count = sum(p.numel() for p in lora_parameters(transformer))
    assert count == sum(RANK * (o + i) for o, i in _sd_scripts_shapes(flux_files["base_model"]).values())


def test_training_state_round_trips_shared_downs_and_refuses_one_saved_apart(flux_files, tmp_path):
    from extension.image.lora import load_lora_state, lora_state

    transformer, _ = _tiny_run_lora(flux_files, tmp_path)
    q, k = (f"transformer/transformer_blocks.0.attn.{n}.lora_A.default.weight" for n in ("to_q", "to_k"))
    state = {key: value.clone() + 1 for key, value in lora_state({"transformer": transformer}).items()}
    assert q in state and k in state and torch.equal(state[q], state[k])  # each layer's path is in the state
    load_lora_state({"transformer": transformer}, state)
    assert all(torch.equal(v, state[k_]) for k_, v in lora_state({"transformer": transformer}).items())
    state[k] = state[k] + 1  # a state saved when to_k had its own down
    with pytest.raises(UserError, match="start fresh") as caught:
        load_lora_state({"transformer": transformer}, state)
    assert "\n" not in str(caught.value)
