"""Tiny SD models: diffusers folders load offline; single-file LDM checkpoints load in diffusers' own
single-file loader with exactly our weights; base shapes agree between both forms."""

from __future__ import annotations

import pytest
import yaml


@pytest.mark.parametrize("kind", ["sd1", "sd2", "sdxl"])
def test_single_file_checkpoint_loads_in_diffusers(tmp_path, kind):
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from extension.tiny.sd import build_tiny_sd, save_tiny_sd_pipeline
    from extension.tiny.sd_checkpoint import save_tiny_sd_checkpoint

    cls = StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline
    # The config folder has other weights (seed 1): everything loaded must come from the checkpoint (seed 0).
    config_dir = save_tiny_sd_pipeline(kind, tmp_path / "config", seed=1)
    ckpt = save_tiny_sd_checkpoint(kind, tmp_path / "model.safetensors", seed=0)
    extra = {} if kind == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
    pipe = cls.from_single_file(str(ckpt), config=str(config_dir), local_files_only=True, **extra)
    want = build_tiny_sd(kind, seed=0)
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if component not in want:
            continue
        got = getattr(pipe, component).state_dict()
        for name, value in want[component].state_dict().items():
            if "position_ids" in name:
                continue
            assert torch.equal(got[name].float(), value.float()), (component, name)
    config = yaml.safe_load(ckpt.with_suffix(".yaml").read_text())
    params = config["model"]["params"]
    unet = params["network_config" if kind == "sdxl" else "unet_config"]["params"]
    assert unet["model_channels"] == 32 and unet["num_res_blocks"] == 2
    if kind == "sd2":
        assert unet["use_linear_in_transformer"] is True


def test_pipeline_folder_runs_offline(tmp_path):
    import torch
    from diffusers import StableDiffusionXLPipeline

    from extension.tiny.sd import save_tiny_sd_pipeline

    folder = save_tiny_sd_pipeline("sdxl", tmp_path / "xl")
    pipe = StableDiffusionXLPipeline.from_pretrained(str(folder), local_files_only=True)
    image = pipe("a cat", num_inference_steps=2, height=32, width=32, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 32, 32, 3)


def test_sd2_v_variant(tmp_path):
    from converters.sd_base import read_sd_base_shapes
    from extension.tiny.sd import build_tiny_sd
    from extension.tiny.sd_checkpoint import save_tiny_sd_checkpoint

    parts = build_tiny_sd("sd2-v")
    assert parts["scheduler"].config.prediction_type == "v_prediction"
    assert parts["text_encoder"].config.hidden_act == "gelu"
    ckpt = save_tiny_sd_checkpoint("sd2-v", tmp_path / "v.safetensors")
    assert read_sd_base_shapes(ckpt)[0] == "sd2-v"


@pytest.mark.parametrize("kind", ["sd1", "sd2", "sdxl"])
def test_base_shapes_folder_and_checkpoint_agree(sd_cases, kind):
    from converters.sd_base import read_sd_base_shapes

    case = sd_cases[kind]
    arch_f, folder = read_sd_base_shapes(case.folder)
    arch_c, single = read_sd_base_shapes(case.checkpoint)
    assert arch_f == arch_c == kind
    for name, shape in single.items():
        assert folder[name] == shape, name
    for name in case.deltas:  # every adapter module is found in both
        assert name in folder and name in single, name
