"""Train on tiny SD1/SDXL bases; check the kohya file with diffusers' own LoRA loader."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from extension.config import config_from_dict
from extension.runner import run_training

# The kohya metadata keys the WebUIs and LoRA browsers read.
REQUIRED_META = [
    "ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_v2", "ss_base_model_version", "ss_output_name",
    "ss_sd_model_name", "ss_resolution", "ss_clip_skip", "ss_num_train_images", "ss_training_started_at",
    "ss_tag_frequency", "ss_dataset_dirs", "ss_bucket_info", "ss_learning_rate", "ss_steps", "ss_seed",
    "modelspec.sai_model_spec", "modelspec.architecture", "sshs_model_hash", "sshs_legacy_hash",
]


def _config(base, data, out, **overrides):
    values = dict(base_model=str(base), train_data_dir=str(data), output_dir=str(out), output_name="t",
                  resolution=64, min_bucket_reso=64, max_bucket_reso=64, lora_rank=4, lora_alpha=4,
                  learning_rate=1e-2, batch_size=4, max_train_steps=6, seed=3)
    values.update(overrides)
    return config_from_dict(values, source="test")


def _fixed_loss(pipe, data_dir, sdxl: bool) -> tuple[float, torch.Tensor]:
    """Denoising loss of the pipeline's UNet on the dataset with fixed noise and timesteps (an oracle)."""
    from PIL import Image

    images = sorted(data_dir.glob("*.png"))
    captions = [p.with_suffix(".txt").read_text() for p in images]
    pixels = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), dtype=np.float32)
                                           .transpose(2, 0, 1) / 127.5 - 1) for p in images])
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.tensor([100, 300, 500, 700][: len(images)])
        noisy = pipe.scheduler.add_noise(latents, noise, t)
        kwargs = {}
        if sdxl:
            embeds, _, pooled, _ = pipe.encode_prompt(captions, do_classifier_free_guidance=False)
            time_ids = torch.tensor([[64, 64, 0, 0, 64, 64]] * len(images), dtype=torch.float32)
            kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
        else:
            embeds, _ = pipe.encode_prompt(captions, "cpu", 1, False)
        pred = pipe.unet(noisy, t, embeds, **kwargs).sample
    return float(torch.nn.functional.mse_loss(pred, noise)), pred


def _pipeline(folder, sdxl: bool):
    from diffusers import DDPMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    if sdxl:
        pipe = StableDiffusionXLPipeline.from_pretrained(folder, local_files_only=True)
    else:
        pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None,
                                                       requires_safety_checker=False)
    pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    for tokenizer in (pipe.tokenizer, getattr(pipe, "tokenizer_2", None)):
        if tokenizer is not None:
            tokenizer.model_max_length = 77  # the tiny vocab files carry no length
    return pipe


@pytest.mark.parametrize("kind, source", [("sd1", "file"), ("sd1", "dir"), ("sdxl", "file"), ("sdxl", "dir")])
def test_overfit_and_diffusers_loads_the_lora(kind, source, bases, shapes, tmp_path):
    sdxl = kind == "sdxl"
    base = bases[kind] if source == "file" else bases[f"{kind}-dir"]
    events = []
    result = run_training(_config(base, shapes, tmp_path / "out"), events.append)
    assert result.status == "done", result.message
    final = tmp_path / "out" / "t.safetensors"
    assert result.output_files[-1] == str(final) and final.is_file()
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("step") == 6
    assert all(e.lr is not None and np.isfinite(e.loss) for e in events if e.kind == "step")

    from extension._converters import converters

    report = converters.inspect_adapter(final)
    meta = report["metadata"]
    missing = [k for k in REQUIRED_META if k not in meta]
    assert not missing, missing
    assert meta["ss_base_model_version"] == ("sdxl_base_v1-0" if sdxl else "sd_v1")
    assert meta["ss_output_name"] == "t" and meta["ss_steps"] == "6"
    assert meta["ss_gradient_checkpointing"] == "False"  # the default, auto, keeps it off for image runs
    assert json.loads(meta["ss_tag_frequency"])
    assert report["ranks"] == [4]

    # Independent consumer: diffusers' own loader reads our kohya file into the same tiny model.
    from diffusers.utils import USE_PEFT_BACKEND

    if not USE_PEFT_BACKEND:
        pytest.skip("diffusers' LoRA loader needs transformers >= 4.34 (A1111 ships 4.30)")
    pipe = _pipeline(bases[f"{kind}-dir"], sdxl)
    before, out_before = _fixed_loss(pipe, shapes, sdxl)
    pipe.load_lora_weights(str(final))
    after, out_after = _fixed_loss(pipe, shapes, sdxl)
    print(f"{kind}: fixed-batch loss {before:.4f} -> {after:.4f}")
    assert (out_after - out_before).abs().max() > 1e-3, "the LoRA does not change the output"
    assert after < before * 0.95, f"overfit loss did not fall: {before:.4f} -> {after:.4f}"


def test_stop_saves_and_cancel_does_not(bases, shapes, tmp_path):
    from extension.training.events import TrainingControl

    for action, status, final_exists in (("request_stop", "stopped", True), ("request_cancel", "cancelled", False)):
        control = TrainingControl()
        out = tmp_path / action

        def on_event(event, control=control, action=action):
            if event.kind == "step" and event.step == 2:
                getattr(control, action)()

        result = run_training(_config(bases["sd1"], shapes, out, max_train_steps=50, batch_size=2), on_event, control)
        assert result.status == status and result.steps == 2
        assert (out / "t.safetensors").exists() is final_exists
        kinds_written = sorted(p.name for p in out.glob("*.safetensors"))
        assert kinds_written == (["t.safetensors"] if final_exists else [])


def test_nan_loss_stops_and_keeps_last_good_files(bases, shapes, tmp_path, monkeypatch):
    from extension.image import engine as image_engine

    real = image_engine.diffusion_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] >= 3 else loss

    monkeypatch.setattr(image_engine, "diffusion_loss", poisoned)
    out = tmp_path / "out"
    events = []
    result = run_training(_config(bases["sd1"], shapes, out, max_train_steps=6, batch_size=4, save_steps=2),
                          events.append)
    assert result.status == "failed" and "loss became nan" in result.message
    assert events[-1].kind == "error"
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["t-000002.safetensors"]
    assert (out / "state" / "step-00000002" / "state.json").is_file()


def test_every_option_together_on_sd2_v(bases, shapes, tmp_path):
    """v-prediction, text-encoder LoRA with its own lr, LoCon, min-SNR, noise offset, clip skip,
    checkpointing, accumulation, bf16 autocast and a cosine schedule: all run, all recorded."""
    from extension._converters import converters

    config = _config(bases["sd2-v"], shapes, tmp_path / "out", max_train_steps=2, batch_size=2,
                     train_text_encoder=True, text_encoder_lr=1e-3, conv_rank=2, conv_alpha=1, min_snr_gamma=5,
                     noise_offset=0.05, clip_skip=2, gradient_checkpointing=True, gradient_accumulation_steps=2,
                     mixed_precision="bf16", lr_scheduler="cosine", lr_warmup_steps=1, save_precision="bf16")
    events = []
    result = run_training(config, events.append)
    assert result.status == "done", result.message
    lrs = [e.lr for e in events if e.kind == "step"]
    assert lrs[0] == pytest.approx(1e-2)  # after the one warmup step
    adapter = converters.load_adapter(tmp_path / "out" / "t.safetensors")
    names = list(adapter.modules)
    assert any(n.startswith("text_encoder.text_model.encoder.layers.0.self_attn.q_proj") for n in names)
    conv = [n for n in names if n.endswith("resnets.0.conv1")]
    assert conv and adapter.modules[conv[0]].rank == 2 and adapter.modules[conv[0]].alpha == 1
    meta = adapter.metadata
    assert meta["ss_base_model_version"] == "sd_v2_v" and meta["ss_v2"] == "True"
    assert meta["modelspec.prediction_type"] == "v" and meta["ss_min_snr_gamma"] == "5.0"
    assert meta["ss_network_args"] == '{"conv_dim": "2", "conv_alpha": "1.0"}'
    assert meta["ss_gradient_checkpointing"] == "True"
    # the text encoder moved: its LoRA is non-zero
    te = adapter.modules[[n for n in names if n.startswith("text_encoder.")][0]]
    assert np.abs(te.up).max() > 0


def test_min_snr_and_v_targets():
    from diffusers import DDPMScheduler

    from extension.image.noise import min_snr_weights, snr, target_for

    eps = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    v = DDPMScheduler.from_config(eps.config, prediction_type="v_prediction")
    t = torch.tensor([10, 500, 990])
    s = snr(eps, t)
    assert torch.allclose(min_snr_weights(eps, t, 5.0), torch.clamp(s, max=5.0) / s)
    assert torch.allclose(min_snr_weights(v, t, 5.0), torch.clamp(s, max=5.0) / (s + 1))
    latents, noise = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    assert torch.equal(target_for(eps, latents, noise, t), noise)
    a = eps.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
    b = (1 - eps.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    assert torch.allclose(target_for(v, latents, noise, t), a * noise - b * latents, atol=1e-6)


def test_epoch_saves_keep_last_n_and_resume_of_a_finished_run(bases, shapes, tmp_path):
    out = tmp_path / "out"
    # 4 images, batch 4: one step per epoch.
    config = _config(bases["sd1"], shapes, out, max_train_steps=3, save_every_n_epochs=1, save_last_n=1)
    result = run_training(config)
    assert result.status == "done" and result.steps == 3
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["t-000002.safetensors", "t.safetensors"]
    # Resuming a run that already finished writes the same final file again and trains no further.
    from extension._converters import converters

    before = converters.load_adapter(out / "t.safetensors")
    again = run_training(_config(bases["sd1"], shapes, out, max_train_steps=3, save_every_n_epochs=1,
                                 save_last_n=1, resume="auto"))
    assert again.status == "done" and again.steps == 3
    a = converters.load_adapter(out / "t.safetensors")
    assert a.metadata["ss_steps"] == "3"
    # Same weights; only time stamps in the metadata may differ.
    assert a.modules.keys() == before.modules.keys()
    for name, module in a.modules.items():
        assert (module.up == before.modules[name].up).all() and (module.down == before.modules[name].down).all()
        assert module.alpha == before.modules[name].alpha
