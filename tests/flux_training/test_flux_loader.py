"""The Flux.1 base as Forge users hold it: BFL names proven by diffusers' single-file converter, all-in-one
checkpoints, float8 files, and the objective's pieces against diffusers' FluxPipeline and scheduler."""

from __future__ import annotations

import pytest
import torch
from flux_consumer import INNER, at_tiny_width

from extension.config import config_from_dict
from extension.models.flux_loader import load_flux_base
from extension.tiny.flux import build_tiny_flux, save_tiny_flux


def _config(files: dict, **overrides):
    values = {"base_model": str(files["base_model"])}
    values.update({k: str(files[k]) for k in ("clip_l", "t5xxl", "ae") if k in files})
    values.update(overrides)
    return config_from_dict(values, "test")


def _same_state(got: torch.nn.Module, want: torch.nn.Module) -> list[str]:
    a, b = got.state_dict(), want.state_dict()
    return [k for k in b if k not in a or not torch.equal(a[k].float(), b[k].float())]


def test_our_bfl_file_is_what_diffusers_single_file_converter_reads(flux_files):
    from diffusers.loaders import single_file_utils
    from safetensors.torch import load_file

    to_diffusers = at_tiny_width(single_file_utils.convert_flux_transformer_checkpoint_to_diffusers,
                                 "inner_dim = 3072", f"inner_dim = {INNER}")
    converted = to_diffusers({"model.diffusion_model." + k: v for k, v in load_file(flux_files["base_model"]).items()})
    reference = build_tiny_flux()["transformer"].state_dict()
    assert set(converted) == set(reference)
    assert all(torch.equal(converted[k], v) for k, v in reference.items())
    assert not _same_state(load_flux_base(_config(flux_files), ("transformer",)).transformer,
                           build_tiny_flux()["transformer"])


def test_all_in_one_checkpoint_loads_the_same_parts(flux_files, tmp_path):
    aio = save_tiny_flux(tmp_path, all_in_one=True)
    one, separate = load_flux_base(_config(aio)), load_flux_base(_config(flux_files))
    assert one.variant == separate.variant == "dev"
    for got, want in ((one.transformer, separate.transformer), (one.vae, separate.vae),
                      *zip(one.text_encoders, separate.text_encoders, strict=True)):
        assert not _same_state(got, want)


def test_float8_file_trains_on_float8_storage_with_the_upcast_values(tmp_path):
    files = save_tiny_flux(tmp_path, transformer_dtype=torch.float8_e4m3fn)
    kept = load_flux_base(_config(files, fp8_base=True), ("transformer",))
    upcast = load_flux_base(_config(files), ("transformer",))
    qkv = kept.transformer.transformer_blocks[0].attn.to_q.weight
    assert qkv.dtype == torch.float8_e4m3fn and kept.transformer_dtype == torch.float8_e4m3fn
    assert upcast.transformer.transformer_blocks[0].attn.to_q.weight.dtype == torch.float32
    gen = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 16, 64, generator=gen), encoder_hidden_states=torch.randn(1, 5, 16,
                  generator=gen), pooled_projections=torch.randn(1, 32, generator=gen), timestep=torch.tensor([0.5]),
                  img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(5, 3), guidance=torch.ones(1), return_dict=False)
    with torch.no_grad():
        assert torch.equal(kept.transformer(**inputs)[0], upcast.transformer(**inputs)[0])


def test_float8_t5_stays_float8_and_encodes_as_its_float32_upcast(flux_files, tmp_path):
    """An fp8 T5-XXL upcast whole is 19 GB of float32 (more than real Forge's host held next to Forge): its
    block matrices stay float8 (``wo`` float32, as transformers wants) and encode the same as the upcast."""
    from safetensors.torch import load_file
    from transformers import T5EncoderModel

    from extension.tiny.flux import save_safetensors

    state = load_file(flux_files["t5xxl"])  # as the usual t5xxl_fp8_e4m3fn file: block matrices fp8, rest fp16
    fp8 = {k: v.to(torch.float8_e4m3fn if k.startswith("encoder.block.") and v.ndim == 2 and "relative" not in k
                   else torch.float16) for k, v in state.items()}
    t5_file = save_safetensors(fp8, tmp_path / "t5xxl_fp8_e4m3fn.safetensors")
    t5 = load_flux_base(_config({**flux_files, "t5xxl": t5_file}), ("text_encoders",)).text_encoders[1]
    block = t5.encoder.block[0]
    assert block.layer[0].SelfAttention.q.weight.dtype == torch.float8_e4m3fn
    assert block.layer[1].DenseReluDense.wi_0.weight.dtype == torch.float8_e4m3fn
    assert block.layer[1].DenseReluDense.wo.weight.dtype == torch.float32
    upcast = T5EncoderModel(t5.config).eval()
    upcast.load_state_dict({k: v.float() for k, v in fp8.items()}, strict=False)
    upcast.encoder.embed_tokens.weight = upcast.shared.weight
    ids = torch.randint(0, t5.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(t5(ids)[0], upcast(ids)[0])


def test_missing_part_files_are_one_line(flux_files, tmp_path):
    from extension.errors import UserError

    with pytest.raises(UserError, match=r"without the Flux VAE \(ae\); choose its file in ae"):
        load_flux_base(_config({k: v for k, v in flux_files.items() if k != "ae"}))
    with pytest.raises(UserError, match=r"given as ae but holds the CLIP-L text encoder; choose the Flux VAE \(ae\)"):
        load_flux_base(_config({**flux_files, "ae": flux_files["clip_l"]}))


def test_packing_ids_and_sigmas_match_diffusers():
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    from extension.config import TrainConfig
    from extension.image.flux.flow import dev_mu, image_ids, pack, sample_sigmas, sampling_sigmas, unpack

    latents = torch.randn(2, 16, 6, 4)
    packed = FluxPipeline._pack_latents(latents, 2, 16, 6, 4)
    assert torch.equal(pack(latents), packed) and torch.equal(unpack(packed, 6, 4), latents)
    assert torch.equal(image_ids(6, 4), FluxPipeline._prepare_latent_image_ids(2, 3, 2, "cpu", torch.float32))
    assert dev_mu(1024) == pytest.approx(calculate_shift(1024, 256, 4096, 0.5, 1.15))

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    drawn = sample_sigmas(TrainConfig(timestep_sampling="sigma"), 64, torch.Generator().manual_seed(0), (8, 8))
    assert all(torch.isclose(scheduler.sigmas, s, atol=1e-6).any() for s in drawn)

    dev = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    dev.set_timesteps(sigmas=[1 - i / 4 for i in range(4)], mu=dev_mu(1024))
    shipped = {"base_shift": 0.5, "max_shift": 1.15, "base_seq_len": 256, "max_seq_len": 4096}
    assert sampling_sigmas(4, 1024, True, shipped) == pytest.approx(dev.sigmas.tolist(), abs=1e-6)


def test_tiny_encoder_files_are_named_as_the_released_ones(flux_files):
    """clip_l.safetensors as comfyanonymous/flux_text_encoders ships it (``text_model.`` keys: ComfyUI detects
    CLIP-L by ``text_model.encoder.layers.1.mlp.fc1.weight``; transformers 5's state dict drops the prefix), and
    t5xxl with ``encoder.block.*`` keys."""
    from safetensors import safe_open

    with safe_open(str(flux_files["clip_l"]), "pt") as clip, safe_open(str(flux_files["t5xxl"]), "pt") as t5:
        assert all(key.startswith("text_model.") for key in clip.keys())  # noqa: SIM118 (safe_open has no __iter__)
        assert "text_model.encoder.layers.1.mlp.fc1.weight" in clip.keys()  # noqa: SIM118
        assert any(key.startswith("encoder.block.0.") for key in t5.keys())  # noqa: SIM118


def _rewrite(files: dict, path, prefixes: dict[str, str]) -> dict:
    """One file holding the tiny Flux's parts under ``prefixes`` ({part file key: key prefix})."""
    from safetensors.torch import load_file, save_file

    merged = {}
    for key, prefix in prefixes.items():
        merged.update({prefix + k: v for k, v in load_file(str(files[key])).items()})
    save_file(merged, str(path))
    return {"base_model": path, **{k: files[k] for k in ("clip_l", "t5xxl", "ae") if k not in prefixes}}


def test_transformer_under_diffusion_model_and_an_all_in_one_with_a_first_stage_model_vae(flux_files, tmp_path):
    """Prefixes no test loaded before: a BFL transformer saved with ``diffusion_model.`` keys (ComfyUI's LoRA and
    model-patch key space), and an all-in-one whose VAE sits under ``first_stage_model.`` (ComfyUI's
    ``supported_models_base.BASE.vae_key_prefix``, what SD-style checkpoint savers write) beside
    ``model.diffusion_model.`` and ``text_encoders.*`` (``BASE.process_*_state_dict_for_saving``)."""
    from extension.models.flux_loader import CLIP_PREFIX, T5_PREFIX

    separate = load_flux_base(_config(flux_files))
    bare = _rewrite(flux_files, tmp_path / "flux1-dev-dm.safetensors", {"base_model": "diffusion_model."})
    aio = _rewrite(flux_files, tmp_path / "flux1-dev-aio.safetensors", {
        "base_model": "model.diffusion_model.", "clip_l": CLIP_PREFIX, "t5xxl": T5_PREFIX, "ae": "first_stage_model."})
    tokenizers = str(flux_files["base_model"].parent)  # tokenizer/ and tokenizer_2/ of the tiny Flux
    for files in (bare, aio):
        base = load_flux_base(_config(files, tokenizer_path=tokenizers))
        assert base.variant == "dev" and base.files.transformer[0] == files["base_model"]
        for got, want in ((base.transformer, separate.transformer), (base.vae, separate.vae),
                          *zip(base.text_encoders, separate.text_encoders, strict=True)):
            assert not _same_state(got, want)
        assert base.files.vae == ((aio["base_model"], "first_stage_model.") if files is aio else (flux_files["ae"], ""))
