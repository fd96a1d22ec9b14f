"""#14 memory levers: frozen weights stored in half and computed in fp32, lazy loading, encoders released."""

from __future__ import annotations

import gc
import shutil
import weakref

import pytest
import torch
from image_setup import image_config

from extension.config import config_from_dict
from extension.errors import UserError
from extension.image import memory
from extension.image.frozen_weights import adapters_in_fp32, storage_dtype, store_frozen_weights
from extension.image.lazy_checkpoint import LazyCheckpoint
from extension.models.sd_loader import load_sd_base


def _layers(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(8, 8, 1),
                                torch.nn.Flatten(2), torch.nn.Linear(16, 12))
    with torch.no_grad():  # values a half can hold exactly, as in an fp16 checkpoint
        for p in model.parameters():
            p.copy_(p.half().float())
    return model.requires_grad_(False)


def test_half_storage_computes_in_fp32_and_keeps_no_fp32_weight_copies():
    ref, half = _layers(), _layers()
    stored = store_frozen_weights(half, torch.float16)
    assert all(p.dtype == torch.float16 for p in half.parameters())
    assert stored == sum(p.numel() * 2 for p in half.parameters())
    x = torch.randn(2, 3, 4, 4)
    x_ref, x_half = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ref = ref(x_ref)
    saved = []

    def pack(t):
        saved.append((t.dtype, tuple(t.shape)))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out_half = half(x_half)
    assert out_half.dtype == torch.float32
    torch.testing.assert_close(out_half, out_ref, rtol=0, atol=1e-6)
    weight_shapes = {tuple(p.shape) for p in half.parameters() if p.ndim > 1}
    assert not [s for dtype, s in saved if dtype == torch.float32 and s in weight_shapes]  # no upcast kept
    assert {s for dtype, s in saved if dtype == torch.float16} == weight_shapes  # the stored halves only
    # Frozen convs keep no copy of their input either (the weight needs no gradient).
    assert (torch.float32, (2, 8, 4, 4)) in saved  # SiLU's input, for its own backward
    out_ref.square().sum().backward()
    out_half.square().sum().backward()
    torch.testing.assert_close(x_half.grad, x_ref.grad, rtol=0, atol=1e-5)


def test_storage_choice():
    assert storage_dtype("auto", torch.float16, torch.float32) == torch.float16
    assert storage_dtype("auto", torch.float32, torch.float32) == torch.float32
    assert storage_dtype("auto", None, torch.float32) == torch.float32
    assert storage_dtype("bf16", torch.float16, torch.float32) == torch.bfloat16
    assert storage_dtype("fp32", torch.float16, torch.float32) == torch.float32
    assert storage_dtype("fp16", torch.float32, torch.bfloat16) == torch.bfloat16  # GPU mixed precision: moot


def test_adapters_stay_fp32_next_to_half_base():
    from extension.image.lora import inject_lora

    model = torch.nn.Sequential(torch.nn.Linear(8, 8)).requires_grad_(False)
    store_frozen_weights(model, torch.float16)
    with adapters_in_fp32():
        inject_lora(model, ["0"], 4, 4.0)
    kinds = {n: p.dtype for n, p in model.named_parameters()}
    assert kinds["0.base_layer.weight"] == torch.float16
    assert all(d == torch.float32 for n, d in kinds.items() if "lora_" in n)


def _half_copy(path, folder):
    """The tiny checkpoint stored in fp16 (as real checkpoints ship), with its yaml and tokenizer sidecar."""
    from safetensors.torch import save_file

    out = folder / "half.safetensors"
    save_file({k: v.half() if v.is_floating_point() else v for k, v in LazyCheckpoint(path).items()}, str(out))
    shutil.copy(path.with_suffix(".yaml"), out.with_suffix(".yaml"))
    shutil.copytree(path.with_name(path.stem + ".tokenizer"), folder / "half.tokenizer")
    return out


@pytest.fixture(scope="module")
def half_base(bases, tmp_path_factory):
    return _half_copy(bases["sd1"], tmp_path_factory.mktemp("half"))


def test_lazy_load_equals_full_load_and_auto_keeps_fp16(half_base):
    lazy = load_sd_base(half_base, unet_storage="auto")
    full = load_sd_base(half_base)
    assert lazy.unet_dtype == torch.float16 and full.unet_dtype is None
    for name, value in full.unet.state_dict().items():
        assert torch.equal(lazy.unet.state_dict()[name].float(), value), name
    assert lazy.unet.conv_in.weight.dtype == torch.float16 and lazy.unet.conv_norm_out.weight.dtype == torch.float32
    for a, b in zip(lazy.text_encoders[0].parameters(), full.text_encoders[0].parameters(), strict=True):
        assert a.dtype == torch.float32 and torch.equal(a, b)
    only = load_sd_base(half_base, parts=("vae", "text_encoders"))
    assert only.unet is None and only.vae is not None
    only.release_parts(memory.ENCODERS)
    only.load_parts(("unet", "vae"))
    assert only.unet is not None and only.vae is not None and only.text_encoders == []


def test_half_storage_and_release_train_the_same_lora_as_fp32(half_base, shapes, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from extension.image.engine import _ImageRun
    from extension.training.events import TrainingControl

    gone = []
    real_release = memory.release

    def watch(base, *holders):
        refs = [weakref.ref(m) for m in (base.vae, *base.text_encoders)]
        real_release(base, *holders)
        gc.collect()
        gone.append([r() is None for r in refs])

    monkeypatch.setattr(memory, "release", watch)
    outputs = {}
    for name, extra in (("fp32", {"frozen_weight_dtype": "fp32", "release_encoders": False}), ("levers", {})):
        run = _ImageRun(image_config(half_base, shapes, tmp_path / name, **extra), None, TrainingControl())
        result = run.train()
        assert result.status == "done"
        outputs[name] = load_file(result.output_files[-1])
        if name == "levers":
            assert run.base.vae is None and run.base.text_encoders == []
            assert run.base.unet.conv_in.weight.dtype == torch.float16
    assert gone == [[True, True]]  # VAE and text encoder freed once, before the UNet loaded
    assert outputs["fp32"].keys() == outputs["levers"].keys()
    for key, value in outputs["fp32"].items():
        assert torch.equal(value, outputs["levers"][key]), key  # fp16 file: storing it in fp16 loses nothing


def test_samples_render_with_released_encoders(half_base, shapes, tmp_path):
    from extension.image.engine import train_image

    config = image_config(half_base, shapes, tmp_path, sample_every_n_steps=2, sample_prompts=["a red circle"],
                          sample_steps=2, max_train_steps=2)
    result = train_image(config)
    assert result.status == "done"
    assert (tmp_path / "samples" / "step000002-0.png").is_file()


def test_no_release_when_captions_change(half_base, shapes):
    data = type("D", (), {"text_is_static": False, "pixels_are_static": True})()
    config = config_from_dict({"base_model": str(half_base)})
    assert not memory.memory_plan(config, data, torch.float32).release
    data.text_is_static = True
    assert memory.memory_plan(config, data, torch.float32).release
    assert memory.memory_plan(config, data, torch.float16).unet_storage == "fp32"


@pytest.mark.parametrize(("data", "fragment"), [
    ({"frozen_weight_dtype": "fp8"}, "must be one of auto, fp32, fp16, bf16"),
    ({"release_encoders": "sometimes"}, "'release_encoders' must be true or false"),
    ({"frozen_compute_dtype": "fp16"}, "must be one of fp32, bf16"),
])
def test_lever_keys_validate(data, fragment):
    with pytest.raises(UserError, match=fragment):
        config_from_dict(data, "bad.yaml")


def test_bf16_compute_stays_close_to_fp32_and_keeps_only_bf16_weights():
    ref, fast = _layers(), _layers()
    store_frozen_weights(fast, torch.float16, compute="bf16")
    assert all(p.dtype == torch.bfloat16 for p in fast.parameters())
    x = torch.randn(2, 3, 4, 4)
    x_ref, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: (saved.append(t.dtype), t)[1], lambda t: t):
        out = fast(x_fast)
    assert out.dtype == torch.float32 and torch.bfloat16 in saved
    expected = ref(x_ref)
    torch.testing.assert_close(out, expected, rtol=0.05, atol=0.02)  # bf16 math: close, not equal
    out.square().sum().backward()
    expected.square().sum().backward()
    torch.testing.assert_close(x_fast.grad, x_ref.grad, rtol=0.05, atol=0.05)


def test_bf16_compute_plan(half_base):
    data = type("D", (), {"text_is_static": True, "pixels_are_static": True})()
    config = config_from_dict({"base_model": str(half_base), "frozen_compute_dtype": "bf16"})
    assert memory.memory_plan(config, data, torch.float32).unet_storage == "bf16-compute"
    base = load_sd_base(half_base, unet_storage="bf16-compute")
    assert base.unet_dtype == torch.bfloat16 and base.unet.conv_in.weight.dtype == torch.bfloat16


def test_inplace_lora_add_trains_the_same_lora_as_peft(half_base, shapes, tmp_path):
    """The engine's in-place LoRA add (default) against PEFT's own forward: same LoRA up to float rounding."""
    from safetensors.torch import load_file

    from extension.image.engine import _ImageRun
    from extension.image.lora import lora_layers
    from extension.training.events import TrainingControl

    outputs, wrapped = {}, {}
    for name, flag in (("peft", False), ("inplace", True)):
        run = _ImageRun(image_config(half_base, shapes, tmp_path / name, inplace_lora_add=flag), None,
                        TrainingControl())
        result = run.train()
        assert result.status == "done"
        outputs[name] = load_file(result.output_files[-1])
        wrapped[name] = sum("forward" in layer.__dict__ for _, layer in lora_layers(run.base.unet))
    assert wrapped["peft"] == 0 and wrapped["inplace"] > 0
    assert outputs["peft"].keys() == outputs["inplace"].keys()
    moved = 0
    for key, value in outputs["peft"].items():
        torch.testing.assert_close(outputs["inplace"][key].float(), value.float(), rtol=1e-3, atol=1e-6)
        moved += "lora_up" in key and bool(value.abs().sum() > 0)
    assert moved > 0  # the runs trained something


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_low_resolution_convs_run_in_slices_with_the_same_math(dtype, monkeypatch):
    """Big-weight convolutions on few positions run per slice of output channels (see chunk_rows)."""
    from extension.image import frozen_weights

    monkeypatch.setattr(frozen_weights, "CHUNK_MIN_WEIGHT", 1)
    monkeypatch.setattr(frozen_weights, "CHUNK_BYTES", 16 * 36 * 4)  # 16 output channels per slice
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(36, 64, 3, padding=1)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(p.half().float())
    ref.requires_grad_(False)
    sliced = torch.nn.Conv2d(36, 64, 3, padding=1)
    sliced.load_state_dict(ref.state_dict())
    sliced.requires_grad_(False)
    store_frozen_weights(sliced, dtype)
    x = torch.randn(2, 36, 4, 4)
    assert frozen_weights.chunk_rows(sliced.weight, x, sliced.stride, 1) == 16
    assert frozen_weights.chunk_rows(sliced.weight, torch.randn(1, 36, 32, 32), sliced.stride, 1) == 0  # many positions
    x_ref, x_sliced = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ref, out_sliced = ref(x_ref), sliced(x_sliced)
    torch.testing.assert_close(out_sliced, out_ref, rtol=0, atol=1e-6)
    out_ref.square().sum().backward()
    out_sliced.square().sum().backward()
    torch.testing.assert_close(x_sliced.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
