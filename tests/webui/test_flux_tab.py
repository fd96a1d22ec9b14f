"""Flux.1 in the tab (#21 section 3): Forge's Flux checkpoints and its text-encoder/VAE files as choices, the
"Flux.1 LoRA" preset, and A1111 1.10 refusing a Flux base at Start while Convert still converts Flux LoRAs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from converters import LoraAdapter, LoraModule, save_adapter
from converters.safetensors_io import write_safetensors
from extension.jobs import JobManager


def _write(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_safetensors(path, [(k, np.zeros(s, np.float16)) for k, s in shapes.items()])


@pytest.fixture
def flux_files(tmp_path):
    """As a Forge user holds them: a BFL transformer (dev: it has guidance_in) in Stable-diffusion, CLIP-L and
    T5-XXL in text_encoder, Flux's ae and an SD VAE (4 latent channels) in VAE. Headers are what is read."""
    models = tmp_path / "models"
    return {
        "base": _write(models / "Stable-diffusion" / "flux1-dev.safetensors", {
            "double_blocks.0.img_attn.qkv.weight": (48, 16), "single_blocks.0.linear1.weight": (112, 16),
            "guidance_in.in_layer.weight": (16, 8), "img_in.weight": (16, 8)}),
        "clip_l": _write(models / "text_encoder" / "clip_l.safetensors",
                         {"text_model.encoder.layers.0.self_attn.q_proj.weight": (768, 768)}),
        "t5xxl": _write(models / "text_encoder" / "t5xxl_fp16.safetensors",
                        {"encoder.block.0.layer.0.SelfAttention.q.weight": (8, 8)}),
        "ae": _write(models / "VAE" / "ae.safetensors", {"decoder.conv_in.weight": (8, 16, 3, 3)}),
        "sd_vae": _write(models / "VAE" / "sd-vae-ft-mse.safetensors", {"decoder.conv_in.weight": (8, 4, 3, 3)}),
    }


def _host(runner_factory, flux_files):
    from modules import sd_models

    from extension.webui.host import WebUIHost

    sd_models.list_models([str(flux_files["base"])])
    return WebUIHost(jobs=JobManager(runner=runner_factory(steps=2)))


def test_forge_offers_its_text_encoders_and_vae_sorted_by_kind(fake_forge, runner_factory, flux_files):
    from extension.ui.flux_parts import flux_picks

    host = _host(runner_factory, flux_files)
    assert sorted(host.flux_part_files()) == sorted(str(flux_files[k]) for k in ("clip_l", "t5xxl", "ae", "sd_vae"))
    assert flux_picks(host) == {k: [str(flux_files[k])] for k in ("clip_l", "t5xxl", "ae")}
    assert host.checkpoints() == ["flux1-dev.safetensors"] and host.runs_flux


def test_flux_preset_fills_forge_selected_modules(fake_forge, runner_factory, flux_files, tmp_path):
    from modules import shared

    from extension.ui.handlers import Handlers
    from extension.ui.presets import PRESETS

    other_clip = _write(tmp_path / "elsewhere" / "clip_l_other.safetensors",
                        {"text_model.encoder.layers.0.self_attn.q_proj.weight": (768, 768)})
    shared.opts.data["forge_additional_modules"] = [str(flux_files["ae"]), str(other_clip)]
    h = Handlers(_host(runner_factory, flux_files))
    assert "Flux.1 LoRA" in PRESETS
    values = dict(zip([f.name for f in h.image_fields], h.apply_preset("Flux.1 LoRA"), strict=True))
    assert values["clip_l"] == str(other_clip)  # Forge's selection wins over the only file in text_encoder
    assert values["t5xxl"] == str(flux_files["t5xxl"]) and values["ae"] == str(flux_files["ae"])
    assert values["fp8_base"] is True and values["timestep_sampling"] == "shift"
    sd = dict(zip([f.name for f in h.image_fields], h.apply_preset("SD1.5"), strict=True))
    assert sd["clip_l"] == ""  # SD presets leave the Flux parts empty
    assert h.detect_model("flux1-dev.safetensors").startswith("Detected: **Flux.1 dev**")


def test_forge_start_checks_the_flux_parts_before_anything_runs(fake_forge, runner_factory, flux_files, dataset):
    from extension.errors import UserError
    from extension.ui.preflight import check_start

    host = _host(runner_factory, flux_files)
    config = {"base_model": str(flux_files["base"]), "train_data_dir": str(dataset), "output_name": "flux_lora",
              "output_dir": str(host.work_dir("flux_lora", "text-to-image"))}
    with pytest.raises(UserError, match="flux1-dev.safetensors: a Flux.1 transformer without the CLIP-L text "
                                        "encoder; choose its file in clip_l"):
        check_start(config, host.lora_dir(), {}, flux=host.runs_flux)
    wrong = {**config, "clip_l": str(flux_files["ae"]), "t5xxl": str(flux_files["t5xxl"]), "ae": str(flux_files["ae"])}
    with pytest.raises(UserError, match="given as clip_l but holds the Flux VAE"):
        check_start(wrong, host.lora_dir(), {}, flux=True)
    right = {**wrong, "clip_l": str(flux_files["clip_l"])}
    cfg, summary = check_start(right, host.lora_dir(), host.tokenizer_dirs(), flux=True)
    assert cfg.clip_l == str(flux_files["clip_l"]) and summary.startswith("3 usable image(s)")
    assert cfg.tokenizer_path == str(host.tokenizer_dirs()["flux"])  # Forge's own FLUX.1-dev tokenizers


def test_neo_offers_its_flux_parts_sft_and_extra_folders_included(fake_neo, runner_factory, flux_files, dataset,
                                                                   tmp_path):
    """Forge Neo's "VAE / Text Encoder" list (fake_neo/modules_forge/main_entry.py mirrors Neo's 3df257ae) also holds
    ``.sft`` files (BFL's first name for ``ae`` / ``flux1-dev``) and the ``--text-encoder-dirs`` folders: each is
    offered in its field, Start takes the ``.sft`` ae, and the tokenizers are Neo's own FLUX.1-dev folder."""
    from modules import shared

    from extension.ui.flux_parts import flux_picks
    from extension.ui.preflight import check_start

    ae_sft = flux_files["ae"].rename(flux_files["ae"].with_suffix(".sft"))
    comfy_clip = tmp_path / "ComfyUI" / "models" / "clip"
    t5_fp8 = _write(comfy_clip / "t5xxl_fp8_e4m3fn.safetensors",
                    {"encoder.block.0.layer.0.SelfAttention.q.weight": (8, 8)})
    shared.cmd_opts.text_encoder_dirs = [str(comfy_clip)]  # what Neo's --text-encoder-dirs (or its Comfy link) adds
    host = _host(runner_factory, flux_files)
    assert flux_picks(host) == {"clip_l": [str(flux_files["clip_l"])], "ae": [str(ae_sft)],
                                "t5xxl": sorted([str(t5_fp8), str(flux_files["t5xxl"])])}
    config = {"base_model": str(flux_files["base"]), "train_data_dir": str(dataset), "output_name": "flux_lora",
              "output_dir": str(host.work_dir("flux_lora", "text-to-image")), "clip_l": str(flux_files["clip_l"]),
              "t5xxl": str(t5_fp8), "ae": str(ae_sft)}
    cfg, summary = check_start(config, host.lora_dir(), host.tokenizer_dirs(), flux=host.runs_flux)
    assert cfg.ae == str(ae_sft) and summary.startswith("3 usable image(s)")
    assert cfg.tokenizer_path == str(tmp_path / "backend" / "huggingface" / "black-forest-labs" / "FLUX.1-dev")


def test_a1111_refuses_a_flux_base_at_start_and_still_converts_flux_loras(fake_webui, runner_factory, flux_files,
                                                                          dataset, tmp_path):
    from extension.ui.handlers import Handlers

    host = _host(runner_factory, flux_files)
    assert not host.runs_flux and host.flux_part_files() == []
    h = Handlers(host)
    assert "A1111 1.10 cannot run Flux" in h.detect_model("flux1-dev.safetensors")
    values = h.apply_preset("Flux.1 LoRA")
    message = h.start(str(dataset), "flux1-dev.safetensors", "flux_lora", *values)
    assert message == ("⚠️ flux1-dev.safetensors: is a Flux.1 model, which A1111 1.10 cannot run, so LoRA Bridge "
                       "does not train on it here; train in Forge or with lora-bridge train (Convert handles Flux "
                       "LoRAs)"), message
    assert host.jobs.status()["state"] == "idle" and not host.work_dir("flux_lora", "text-to-image").exists()
    src = save_adapter(LoraAdapter(modules={"transformer.transformer_blocks.0.attn.to_q": LoraModule(
        down=np.ones((2, 16), np.float32), up=np.ones((16, 2), np.float32), alpha=2.0)}, arch="flux"),
        tmp_path / "flux_diffusers.safetensors", to="diffusers")
    out = h.convert(str(src), str(tmp_path / "flux_kohya.safetensors"), "kohya", str(flux_files["base"]), "", "", False)
    assert out.startswith("wrote ") and (tmp_path / "flux_kohya.safetensors").is_file()


def test_forge_tab_trains_a_tiny_flux_and_forge_maps_every_key(fake_forge, dataset, tmp_path):
    """#21 end to end in Forge: a tiny Flux.1 dev as Forge holds it (BFL transformer in models/Stable-diffusion,
    CLIP-L and T5 in models/text_encoder, ae in models/VAE, Forge's own FLUX.1-dev tokenizers), the "Flux.1 LoRA"
    preset, Start → the Flux engine trains (fp32, CPU, 2 steps) → the file is in the Lora list at once → every key
    of it maps in Forge's Flux LoRA loader and changes the weight it names.

    Forge's loader is ``backend/patcher/lora.py`` → ``packages_3rdparty/comfyui_lora_collection/lora.py``
    (``model_lora_keys_unet`` with its Flux branch over ``utils.flux_to_diffusers``, ``load_lora``), ComfyUI's
    ``comfy/lora.py`` as Forge copied it; ``tests/formats_flux/comfy_flux.py`` restates that code (its docstring).
    The fake ``networks.load_network`` matches no real key names, so the key check goes through comfy_flux."""
    import sys

    import networks
    from modules import sd_models
    from safetensors.numpy import load_file

    from extension.tiny.flux import build_tiny_flux, save_tiny_flux
    from extension.ui.handlers import Handlers
    from extension.webui.host import WebUIHost

    sys.path.insert(0, str(Path(__file__).parents[1] / "formats_flux"))
    from comfy_flux import key_map, load_and_apply
    from flux_consumer import bfl_checkpoint

    files = save_tiny_flux(tmp_path / "download")
    models = tmp_path / "models"
    where = {"base_model": "Stable-diffusion", "clip_l": "text_encoder", "t5xxl": "text_encoder", "ae": "VAE"}
    for key, folder in where.items():
        (models / folder).mkdir(parents=True, exist_ok=True)
        files[key] = files[key].rename(models / folder / files[key].name)
    sd_models.list_models([str(files["base_model"])])
    host = WebUIHost(jobs=JobManager())
    networks.list_available_networks()  # Forge's startup scan
    h = Handlers(host)
    values = dict(zip([f.name for f in h.image_fields], h.apply_preset("Flux.1 LoRA"), strict=True))
    assert {k: values[k] for k in ("clip_l", "t5xxl", "ae")} == {k: str(files[k]) for k in ("clip_l", "t5xxl", "ae")}
    values.update(resolution=64, min_bucket_reso=64, max_bucket_reso=64, max_train_steps=2, lora_rank=4,
                  lora_alpha=4, mixed_precision="no", fp8_base=False, learning_rate=1e-2, t5xxl_max_token_length=16)
    message = h.start(str(dataset), files["base_model"].name, "flux_e2e", *values.values())
    assert message.startswith("started training flux_e2e"), message
    status = host.jobs.wait(300)
    assert status["state"] == "done", status["message"]
    assert status["checks"] == ["flux_e2e.safetensors: 20/20 modules match flux1-tiny-dev.safetensors (all keys match) "
                                "(format-layer check)"]  # Forge: the format layer checks against the base
    published = host.lora_dir() / "flux_e2e.safetensors"
    assert networks.available_networks["flux_e2e"].filename == str(published)  # listed without a manual refresh

    model = build_tiny_flux()["transformer"]  # the same seeded weights save_tiny_flux wrote
    weights = {"diffusion_model." + k: v.detach().numpy() for k, v in bfl_checkpoint(model).items()}
    hidden = model.config.num_attention_heads * model.config.attention_head_dim
    lora = load_file(str(published))
    patched, not_loaded = load_and_apply(lora, key_map(weights, 1, 1, hidden), weights)
    assert not_loaded == []  # Forge prints "(skipped 0 keys)" and no unmatched keys
    changed = [k for k in weights if not np.array_equal(weights[k], patched[k])]
    assert len(changed) == len({k.split(".")[0] for k in lora}), (len(changed), sorted(changed)[:5])
