"""GGUF-quantized Flux.1 transformers in city96's layout: the values llama.cpp's blocks hold, kept packed,
trained on with LoRA, and the file applies in diffusers as trained."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flux_consumer import at_tiny_width
from flux_training_setup import diffusers_lora, flux_config, state_deltas

from extension.config import config_from_dict
from extension.models.flux_gguf import GGUFLinear
from extension.models.flux_loader import load_flux_base
from extension.tiny.flux import build_tiny_flux, save_tiny_flux, transformer_kwargs

WIDE = 16  # head size: a 32-wide transformer, whose rows split into 32-element Q8_0/Q4_0 blocks


_FILES: dict[str, dict] = {}


def _gguf_files(qtype: str, tmp_path_factory) -> dict:
    """The tiny 32-wide Flux with its transformer as a city96 GGUF of ``qtype`` (written once per session)."""
    if qtype not in _FILES:
        _FILES[qtype] = save_tiny_flux(tmp_path_factory.mktemp(qtype), gguf_qtype=qtype, head_dim=WIDE)
    return _FILES[qtype]


def _reference(path):
    """A float FluxTransformer2DModel from gguf-py's own dequantization, renamed by diffusers' single-file converter."""
    import gguf
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders import single_file_utils

    reader = gguf.GGUFReader(str(path))
    state = {t.name: torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
                                      .reshape(tuple(reversed(t.shape.tolist())))) for t in reader.tensors}
    to_diffusers = at_tiny_width(single_file_utils.convert_flux_transformer_checkpoint_to_diffusers,
                                 "inner_dim = 3072", f"inner_dim = {2 * WIDE}")
    model = FluxTransformer2DModel(**transformer_kwargs("dev", WIDE))
    model.load_state_dict(to_diffusers({"model.diffusion_model." + k: v for k, v in state.items()}))
    return model.eval()


def _inputs():
    gen = torch.Generator().manual_seed(0)
    return dict(hidden_states=torch.randn(1, 16, 64, generator=gen),
                encoder_hidden_states=torch.randn(1, 5, 16, generator=gen),
                pooled_projections=torch.randn(1, 32, generator=gen), timestep=torch.tensor([0.5]),
                img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(5, 3), guidance=torch.ones(1), return_dict=False)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_packed_transformer_computes_what_the_gguf_blocks_hold(qtype, tmp_path_factory):
    gguf_files = _gguf_files(qtype, tmp_path_factory)
    config = config_from_dict({k: str(v) for k, v in gguf_files.items()}, "test")
    base = load_flux_base(config, ("transformer",))
    packed = [m for m in base.transformer.modules() if isinstance(m, GGUFLinear)]
    assert len(packed) >= 20 and all(m.packed.weight.raw.dtype == torch.uint8 for m in packed)
    with torch.no_grad():
        got, want = base.transformer(**_inputs())[0], _reference(gguf_files["base_model"])(**_inputs())[0]
        exact = build_tiny_flux(head_dim=WIDE)["transformer"](**_inputs())[0]
    assert float((got - want).norm() / want.norm()) < 1e-5
    assert float((got - exact).norm() / exact.norm()) > 1e-4  # really quantized, not the float weights


def test_gguf_packs_under_forges_torch_without_set_submodule(tmp_path_factory, monkeypatch):
    """Forge pins torch 2.3.1, whose ``nn.Module`` has no ``set_submodule`` (torch 2.4+): a Start from real Forge's
    tab on a GGUF base failed with AttributeError once the transformer loaded."""
    monkeypatch.delattr(torch.nn.Module, "set_submodule", raising=False)
    config = config_from_dict({k: str(v) for k, v in _gguf_files("Q4_0", tmp_path_factory).items()}, "test")
    transformer = load_flux_base(config, ("transformer",)).transformer
    packed = {n for n, m in transformer.named_modules() if isinstance(m, GGUFLinear)}
    assert "transformer_blocks.0.attn.to_q" in packed and "single_transformer_blocks.0.proj_out" in packed


def test_lora_trains_on_the_packed_gguf_and_diffusers_applies_it(flux_data, tmp_path, tmp_path_factory):
    from flux_consumer import module_deltas

    from extension.runner import run_training

    gguf_files = _gguf_files("Q4_0", tmp_path_factory)
    config = flux_config(gguf_files, flux_data, tmp_path / "out", max_train_steps=2, sample_every_n_steps=2,
                         gradient_checkpointing=True)
    result = run_training(config)
    assert result.status == "done", result.message
    path = tmp_path / "out" / "flux_t.safetensors"
    transformer = build_tiny_flux(head_dim=WIDE)["transformer"]
    diffusers_lora(path, transformer, inner=2 * WIDE)
    got, want = module_deltas(transformer, "t"), state_deltas(tmp_path / "out" / "state", alpha=4.0)
    assert set(got) == set(want) and all(np.any(w) for w in want.values())
    assert max(float(np.linalg.norm(got[n] - w) / np.linalg.norm(w)) for n, w in want.items()) <= 1e-4
