"""Real ComfyUI on our Flux LoRA files (optional: ``LORA_BRIDGE_COMFYUI=/path/to/ComfyUI``, a checkout; ComfyUI
is not on PyPI, so CI skips this).

ComfyUI's own code builds its Flux (``comfy.sd.load_diffusion_model_state_dict`` on our tiny BFL file, widths
read from the file, see ``comfyui_run.py``) and its Flux CLIP-L + T5 (``comfy.sd.CLIP``, tiny configs through
its ``<name>_model_config`` option), then applies each of our kohya, BFL and diffusers files as its LoraLoader
node does (``comfy.sd.load_lora_for_models``, then ``load_models_gpu`` / ``CLIP.load_model`` patch the weights).
Checked: no key "not loaded", every weight changes by our adapter's delta (rel <= 1e-4), ComfyUI's Flux then
computes what diffusers' computes with those deltas, and the restatement in ``comfy_flux.py`` agrees with the
real key map and weight changes. The LoRA trained by our engine: ``tests/flux_training/test_real_comfyui_trained.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from comfy_flux import key_map, load_and_apply
from comfyui_run import COMFYUI, SKIP_REASON, run_comfyui
from flux_bases import write_bfl
from flux_cases import comfy_deltas, deltas, flux_adapter, with_deltas, worst_error
from flux_consumer import INNER, TINY

from converters import save_adapter
from converters.safetensors_io import SafetensorsFile

pytestmark = pytest.mark.skipif(not COMFYUI, reason=SKIP_REASON)
LAYOUTS = ("kohya", "bfl", "diffusers")
# ComfyUI's CLIP-L (2 layers: its Flux CLIP tells CLIP-L from T5 by layer 1) and T5 at the widths flux_adapter's
# text-encoder modules have (8).
CLIP_L = dict(hidden_size=8, intermediate_size=8, num_hidden_layers=2, num_attention_heads=2, projection_dim=8)
T5 = dict(d_model=8, d_kv=4, d_ff=8, num_heads=2, num_layers=1)


def write_encoders(folder: Path) -> dict:
    """Tiny CLIP-L and T5 encoder files as Flux's ``clip_l``/``t5xxl`` files name them, and their configs."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from extension.tiny.flux import save_safetensors

    torch.manual_seed(1)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, **CLIP_L)).state_dict()
    t5 = T5EncoderModel(T5Config(vocab_size=32128, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
                                 **T5)).state_dict()
    # transformers 5 names CLIPTextModel's weights without ``text_model.``; the released clip_l files have it.
    clip = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in clip.items()
            if "position_ids" not in k}
    return dict(clip_l=str(save_safetensors(clip, folder / "clip_l.safetensors")),
                t5xxl=str(save_safetensors({k: v for k, v in t5.items() if k != "encoder.embed_tokens.weight"},
                                           folder / "t5xxl.safetensors")),
                clip_l_config=CLIP_L, t5xxl_config=T5)


def forward_inputs() -> dict[str, np.ndarray]:
    """A 4x6 latent of 2 channels (6 tokens of 8 after 2x2 packing), 5 text tokens, pooled vector, t and guidance."""
    rng = np.random.default_rng(3)
    return dict(x=rng.standard_normal((1, 2, 4, 6)).astype(np.float32), timestep=np.array([0.4], np.float32),
                context=rng.standard_normal((1, 5, TINY["joint_attention_dim"])).astype(np.float32),
                y=rng.standard_normal((1, TINY["pooled_projection_dim"])).astype(np.float32),
                guidance=np.array([3.5], np.float32))


def diffusers_output(model, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """diffusers' Flux output on ``inputs`` (packed and with ids by FluxPipeline's own helpers)."""
    import torch
    from diffusers import FluxPipeline

    b, c, h, w = inputs["x"].shape
    t = {k: torch.from_numpy(v) for k, v in inputs.items()}
    with torch.no_grad():
        return model(hidden_states=FluxPipeline._pack_latents(t["x"], b, c, h, w), encoder_hidden_states=t["context"],
                     pooled_projections=t["y"], timestep=t["timestep"], guidance=t["guidance"],
                     img_ids=FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", torch.float32),
                     txt_ids=torch.zeros(t["context"].shape[1], 3), return_dict=False)[0].numpy()


def packed(latent: np.ndarray) -> np.ndarray:
    """ComfyUI's ``b c h w`` output in diffusers' packed token layout."""
    import torch
    from diffusers import FluxPipeline

    b, c, h, w = latent.shape
    return FluxPipeline._pack_latents(torch.from_numpy(latent), b, c, h, w).numpy()


@pytest.fixture(scope="module")
def comfy(flux_model, tmp_path_factory):
    """(ComfyUI's output folder, {layout: adapter}): ComfyUI run once on the three layouts."""
    folder = tmp_path_factory.mktemp("comfyui")
    adapters = {to: flux_adapter(flux_model, clip=to != "diffusers") for to in LAYOUTS}
    loras = [save_adapter(a, folder / f"{to}.safetensors", to=to, dtype="f32") for to, a in adapters.items()]
    np.savez(folder / "inputs.npz", **forward_inputs())
    run_comfyui(folder, write_bfl(flux_model, folder / "flux1-tiny.safetensors"), loras, TINY["axes_dims_rope"],
                forward=str(folder / "inputs.npz"), **write_encoders(folder))
    return folder, adapters


def test_real_comfyui_builds_its_flux_and_clip_from_our_files(comfy):
    info = json.loads((comfy[0] / "model.json").read_text())
    assert info["model_class"] == "comfy.model_base.Flux"
    assert info["diffusion_model"] == "comfy.ldm.flux.model.Flux"
    assert info["unet_config"]["hidden_size"] == INNER and info["unet_config"]["guidance_embed"]
    assert info["dtype"] == "torch.float32"
    assert not [m for m in info["load_log"] if m.startswith(("unet missing", "unet unexpected"))], info["load_log"]
    # CLIP-L: all but the projection Flux does not use; T5: everything.
    assert info["clip_load"] == [[["text_projection.weight"], []], [[], []]]


@pytest.mark.parametrize("to", LAYOUTS)
def test_real_comfyui_loads_every_key_of_our_flux_files_with_the_same_delta(comfy, flux_model, to):
    folder, adapters = comfy
    report = json.loads((folder / f"{to}.json").read_text())
    assert report["not_loaded"] == [] and report["not_patched"] == []
    assert report["restored"]  # unloading the LoRA clones gave the base weights back
    got = dict(np.load(folder / f"{to}.npz"))
    want = {k: v for k, v in comfy_deltas(flux_model, deltas(adapters[to])).items() if np.any(v)}
    worst = worst_error(got, want)
    print(f"{to}: {report['lora_keys']} keys, {len(report['not_loaded'])} not loaded, {len(got)} weights "
          f"changed, worst rel {worst:.2e}")
    assert len(want) == (26 if to != "diffusers" else 23)  # every layer of the tiny Flux (+ CLIP-L and T5)
    assert worst <= 1e-4


def test_restatement_agrees_with_real_comfyui(comfy):
    folder, _ = comfy
    info = json.loads((folder / "model.json").read_text())
    real = json.loads((folder / "key_map.json").read_text())
    diffsynth = "single_transformer_blocks.0.proj_out" in real  # ComfyUI after 0.3.64
    restated = key_map(info["shapes"], depth=1, depth_single=1, hidden=INNER, diffsynth=diffsynth)
    as_json = {k: v if isinstance(v, str) else [v[0], list(v[1]) if v[1] is not None else None]
               + [f.__name__ for f in v[2:]] for k, v in restated.items()}
    assert sorted(as_json) == sorted(real)
    assert {k: v for k, v in as_json.items() if v != real[k]} == {}
    zeros = {k: np.zeros(shape, np.float32) for k, shape in info["shapes"].items()}
    for to in LAYOUTS:
        st = SafetensorsFile(folder / f"{to}.safetensors")
        names = st.keys()
        patched, not_loaded = load_and_apply({k: st.get(k) for k in names}, restated, zeros)
        assert not_loaded == json.loads((folder / f"{to}.json").read_text())["not_loaded"]
        changed = {k: v for k, v in patched.items() if np.any(v)}
        assert worst_error(dict(np.load(folder / f"{to}.npz")), changed) <= 1e-6, to


def test_real_comfyui_flux_computes_what_diffusers_computes_with_our_files(comfy, flux_model):
    """ComfyUI's Flux on our BFL file equals the diffusers model it came from, and with each LoRA equals that
    model with the adapter's deltas added to its weights."""
    folder, adapters = comfy
    inputs = forward_inputs()
    base = diffusers_output(flux_model, inputs)
    assert np.linalg.norm(packed(np.load(folder / "base.forward.npy")) - base) / np.linalg.norm(base) <= 1e-5
    for to, adapter in adapters.items():
        want = diffusers_output(with_deltas(flux_model, deltas(adapter)), inputs)
        got = packed(np.load(folder / f"{to}.forward.npy"))
        assert np.linalg.norm(want - base) > np.linalg.norm(base)  # the LoRA changes the output
        assert np.linalg.norm(got - want) / np.linalg.norm(want) <= 1e-4, to
