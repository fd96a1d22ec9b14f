"""LyCORIS files (written by lycoris-lora itself) read exactly, checked against LyCORIS' own module forward,
and what we write from them loads exactly in PEFT (LoRA, DoRA, LoHa, LoKr)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from converters import AdapterError, convert, load_adapter
from converters.safetensors_io import SafetensorsFile
from converters.sd_names import canonical_from_kohya
from extension.cli import main

# LyCORIS 4.1.3's default preset also targets "TimestepEmbedding" (for Anima), which doubles the SD
# UNet's time_embedding modules; this is its SD target list without that entry.
PRESET = """
unet_target_module = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
unet_target_name = ["conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2"]
"""


def lycoris_kohya_file(tmp_path, algo: str, seed: int = 0, **kwargs):
    """A LyCORIS network (lycoris.kohya.create_network) on the tiny SD1 model, saved by LyCORIS in fp16.

    Factors are random (LyCORIS starts one side at zero) and already fp16-exact, so the file holds
    exactly the network's values. LoHa/LoKr factors are larger: their deltas are products of products,
    and a tiny delta would drown in float32 rounding of the base output it is compared through.
    """
    import torch
    from lycoris.kohya import create_network

    from extension.tiny.sd import build_tiny_sd

    preset = tmp_path / "sd.toml"
    preset.write_text(PRESET)
    torch.manual_seed(seed)
    parts = build_tiny_sd("sd1")
    net = create_network(1.0, 4, 2, None, parts["text_encoder"], parts["unet"], preset=str(preset), algo=algo,
                         conv_dim=3, conv_alpha=1.5, **kwargs)
    net.apply_to(parts["text_encoder"], parts["unet"], True, True)
    generator = torch.Generator().manual_seed(seed)
    size = 0.1 if algo == "locon" else 0.5
    with torch.no_grad():
        for name, p in net.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            p.copy_((p * (1 + 0.1 * noise) if name.endswith("dora_scale") else size * noise).half().float())
    path = tmp_path / f"{algo}.safetensors"
    net.save_weights(str(path), torch.float16, {})
    return net, path


def _input(lora, seed: int = 1):
    import torch

    generator = torch.Generator().manual_seed(seed)
    module = lora.org_module[0] if isinstance(lora.org_module, list) else lora.org_module
    if isinstance(module, torch.nn.Conv2d):
        return torch.randn((1, module.in_channels, 6, 6), generator=generator)
    return torch.randn((3, module.in_features), generator=generator)


def _rel(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _ours_output(lora, module, x):
    """The output change our canonical module implies for LyCORIS' layer (DoRA: on its base weight)."""
    import torch

    base = lora.org_weight.detach().float()
    if module.magnitude is not None:
        merged = base + torch.from_numpy(_plain_delta(module)).reshape(base.shape)
        norm = merged.reshape(merged.shape[0], -1).norm(dim=1).reshape((-1,) + (1,) * (merged.dim() - 1))
        delta = torch.from_numpy(module.magnitude).reshape(norm.shape) * merged / norm - base
    else:
        delta = torch.from_numpy(module.delta()).reshape(base.shape)
    return lora.op(x, delta, None, **lora.kw_dict)


def _plain_delta(module) -> np.ndarray:
    up, down = np.asarray(module.up, np.float32), np.asarray(module.down, np.float32)
    return (up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)) * module.scale


def check_against_lycoris(net, adapter) -> tuple[int, int, float]:
    """(matched, total, worst rel error) of every LyCORIS module's forward change vs ours."""
    import torch

    worst, matched = 0.0, 0
    with torch.no_grad():
        for lora in net.loras:
            name = canonical_from_kohya(lora.lora_name, "sd1")
            assert name in adapter.modules, lora.lora_name
            x = _input(lora)
            want = lora.forward(x) - lora.org_forward(x)
            error = _rel(_ours_output(lora, adapter.modules[name], x), want)
            assert error < 1e-3, (lora.lora_name, error)
            worst, matched = max(worst, error), matched + 1
    return matched, len(net.loras), worst


def check_peft_folder(net, folder, tolerance: float = 1e-3) -> float:
    """PEFT loads our folder on a fresh model; each layer's output change equals LyCORIS' forward."""
    import torch
    from sd_cases import load_peft_component

    from extension.tiny.sd import build_tiny_sd

    parts = build_tiny_sd("sd1")
    models = {c: load_peft_component(parts[c], folder / c) for c in ("unet", "text_encoder") if (folder / c).is_dir()}
    worst = 0.0
    with torch.no_grad():
        for lora in net.loras:
            component, _, path = canonical_from_kohya(lora.lora_name, "sd1").partition(".")
            model = models[component].base_model.model
            try:
                layer = model.get_submodule(path)
            except AttributeError:
                layer = model.get_submodule(path.removeprefix("text_model."))
            x = _input(lora)
            want = lora.forward(x) - lora.org_forward(x)
            got = layer(x) - layer.get_base_layer()(x)
            error = _rel(got, want)
            assert error < tolerance, (lora.lora_name, error)
            worst = max(worst, error)
    return worst


def test_locon_and_tucker_locon_read_exactly(tmp_path):
    """Tucker LoCon (lora_mid beside a 1x1 lora_down) folds into a plain conv LoRA: exact in us and in PEFT;
    plain LoCon alike."""
    for tucker in (True, False):
        folder = tmp_path / f"tucker_{tucker}"
        folder.mkdir()
        net, path = lycoris_kohya_file(folder, "locon", use_tucker=tucker)
        assert any(k.endswith(".lora_mid.weight") for k in SafetensorsFile(path).header) == tucker
        adapter = load_adapter(path)
        matched, total, _ = check_against_lycoris(net, adapter)
        assert matched == total == len(adapter.modules)
        check_peft_folder(net, convert(path, folder / "peft", to="peft"))
        plain = convert(path, folder / "plain.safetensors", to="kohya")
        assert not any(k.endswith("lora_mid.weight") for k in SafetensorsFile(plain).header)
        check_against_lycoris(net, load_adapter(plain))


def test_lycoris_dora_read_as_dora_and_loads_in_peft(tmp_path):
    """LyCORIS DoRA (dora_scale per output row) is PEFT's DoRA: read as such, refused for kohya output."""
    net, path = lycoris_kohya_file(tmp_path, "locon", dora_wd=True)
    adapter = load_adapter(path)
    assert all(m.magnitude is not None for m in adapter.modules.values())
    check_against_lycoris(net, adapter)
    folder = convert(path, tmp_path / "peft", to="peft")
    assert json.loads((folder / "unet" / "adapter_config.json").read_text())["use_dora"] is True
    check_peft_folder(net, folder)
    with pytest.raises(AdapterError, match="DoRA"):
        convert(path, tmp_path / "k.safetensors", to="kohya")


@pytest.mark.parametrize("algo,tucker", [("loha", False), ("loha", True), ("lokr", False), ("lokr", True)])
def test_loha_lokr_read_exactly_into_peft(tmp_path, algo, tucker):
    net, path = lycoris_kohya_file(tmp_path, algo, use_tucker=tucker)
    adapter = load_adapter(path)
    matched, total, _ = check_against_lycoris(net, adapter)
    assert matched == total == len(adapter.modules)
    folder = convert(path, tmp_path / "peft", to="peft")
    peft_type = json.loads((folder / "unet" / "adapter_config.json").read_text())["peft_type"]
    assert peft_type == algo.upper()
    check_peft_folder(net, folder)
    back = load_adapter(folder)  # our PEFT LoHa/LoKr folders read back to the same deltas
    assert check_against_lycoris(net, back)[0] == len(back.modules)


def test_loha_to_plain_lora_needs_svd_rank(tmp_path, capsys):
    """Targets that take plain LoRA only: one line naming the algorithm and --svd-rank; with it, the worst
    relative error is printed and each module is the best rank-R LoRA of LyCORIS' delta."""
    net, path = lycoris_kohya_file(tmp_path, "loha")
    out = tmp_path / "plain.safetensors"
    code = main(["convert", str(path), str(out), "--to", "kohya"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "loha" in err and "--svd-rank" in err
    assert not out.exists()
    code = main(["convert", str(path), str(out), "--to", "kohya", "--dtype", "f32", "--svd-rank", "2"])
    printed = capsys.readouterr().out
    assert code == 0 and "worst relative error" in printed
    reported = float(printed.split("worst relative error ")[1].split()[0])
    source = load_adapter(path)
    approx = load_adapter(out)
    assert approx.ranks() == {2}
    errors = []
    for name, module in source.modules.items():
        want = module.delta()
        got = approx.modules[name].delta().reshape(want.shape)
        errors.append(_rel(got, want))
        flat = want.reshape(want.shape[0], -1).astype(np.float64)
        s = np.linalg.svd(flat, compute_uv=False)
        optimum = np.sqrt((s[2:] ** 2).sum() / (s ** 2).sum())  # Eckart-Young: nothing rank-2 does better
        assert errors[-1] <= optimum * (1 + 1e-4) + 1e-6, name
    assert abs(max(errors) - reported) <= 1e-3 * max(errors) + 1e-6
    # At full rank (LoHa rank 4 -> Hadamard product rank <= 16) the approximation is the delta itself.
    assert main(["convert", str(path), str(tmp_path / "full.safetensors"), "--to", "kohya", "--dtype", "f32",
                 "--svd-rank", "16"]) == 0
    capsys.readouterr()
    check_against_lycoris(net, load_adapter(tmp_path / "full.safetensors"))


@pytest.mark.parametrize("algo", ["lora", "locon"])
def test_native_lycoris_file(tmp_path, algo):
    """create_lycoris(unet) files (keys lycoris_<path>) read exactly; ComfyUI reads them too."""
    import torch
    from lycoris import create_lycoris

    from extension.tiny.sd import build_tiny_sd

    torch.manual_seed(0)
    unet = build_tiny_sd("sd1")["unet"]
    net = create_lycoris(unet, 1.0, linear_dim=4, linear_alpha=2, algo=algo, conv_dim=3, conv_alpha=1.5)
    net.apply_to()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_((0.1 * torch.randn(p.shape, generator=generator)).half().float())
    path = tmp_path / "native.safetensors"
    net.save_weights(str(path), torch.float16, {})
    assert all(k.startswith("lycoris_") for k in SafetensorsFile(path).header)
    adapter = load_adapter(path)
    assert adapter.source_format == "lycoris" and adapter.arch == "sd1"
    worst = 0.0
    with torch.no_grad():
        for lora in net.loras:
            name = canonical_from_kohya("lora_unet_" + lora.lora_name.removeprefix("lycoris_"), "sd1")
            x = _input(lora)
            error = _rel(_ours_output(lora, adapter.modules[name], x), lora.forward(x) - lora.org_forward(x))
            worst = max(worst, error)
    assert len(adapter.modules) == len(net.loras) and worst < 1e-3


def test_kohya_to_kohya_keeps_uniform_dims(tmp_path):
    """conv_dim/conv_alpha cover kernels > 1x1 only; 1x1 convs (proj_in, conv_shortcut) are network_dim."""
    _, path = lycoris_kohya_file(tmp_path, "locon")
    out = convert(path, tmp_path / "again.safetensors", to="kohya")
    meta = SafetensorsFile(out).metadata
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("4", "2")
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "3", "conv_alpha": "1.5"}


def test_unknown_tensor_stops_the_read(tmp_path, capsys):
    """A part this tool does not know is never dropped: one line naming the key, exit 2, nothing written."""
    from converters.safetensors_io import write_safetensors

    _, path = lycoris_kohya_file(tmp_path, "locon")
    tensors = dict(SafetensorsFile(path).items())
    tensors["lora_unet_conv_in.lora_foo.weight"] = np.zeros((2, 2), np.float32)
    bad = write_safetensors(tmp_path / "odd.safetensors", tensors)
    code = main(["convert", str(bad), str(tmp_path / "o.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and "lora_unet_conv_in.lora_foo.weight" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.safetensors").exists()
