"""XLabs (x-flux) Flux LoRAs read as diffusers' own XLabs converter and Flux loader apply them."""

from __future__ import annotations

import numpy as np
import pytest
from flux_cases import deltas, worst_error
from flux_consumer import INNER, MLP, diffusers_deltas

from converters import AdapterError, convert, inspect_adapter, load_adapter
from converters.safetensors_io import write_safetensors


def _xlabs_file(path, prefix="", rank=4):
    """As x-flux saves its processors' LoRA layers (no alpha): double block 0's four, single block 0's two."""
    rng = np.random.default_rng(7)
    layers = {"double_blocks.0.processor.qkv_lora1": (3 * INNER, INNER), "double_blocks.0.processor.proj_lora1":
              (INNER, INNER), "double_blocks.0.processor.qkv_lora2": (3 * INNER, INNER),
              "double_blocks.0.processor.proj_lora2": (INNER, INNER),
              "single_blocks.0.processor.qkv_lora": (3 * INNER, INNER),
              "single_blocks.0.processor.proj_lora": (INNER, INNER + MLP)}
    tensors = []
    for name, (out, inp) in layers.items():
        tensors += [(f"{prefix}{name}.down.weight", rng.standard_normal((rank, inp)).astype(np.float32)),
                    (f"{prefix}{name}.up.weight", rng.standard_normal((out, rank)).astype(np.float32))]
    return write_safetensors(path, tensors)


@pytest.mark.parametrize("prefix", ["", "diffusion_model."])
def test_xlabs_file_reads_as_diffusers_applies_it(tmp_path, prefix):
    src = _xlabs_file(tmp_path / "xlabs.safetensors", prefix)
    adapter = load_adapter(src)
    assert adapter.arch == "flux" and adapter.source_format == "xlabs"
    assert worst_error(diffusers_deltas(src), deltas(adapter)) <= 1e-5
    assert len(adapter.modules) == 12  # q/k/v x3 (img, txt, single) + img/txt proj + linear2
    peft = convert(src, tmp_path / "peft", to="peft", dtype="f32")
    assert worst_error(deltas(load_adapter(peft)), deltas(adapter)) < 1e-6
    with pytest.raises(AdapterError, match="proj_mlp is not adapted"):  # kohya's linear1 needs the MLP width
        convert(src, tmp_path / "kohya.safetensors", to="kohya")
    report = inspect_adapter(src)
    assert report["format"] == "xlabs" and "single_blocks.0.linear1[q/k/v]" in report["fused"]


def test_unknown_xlabs_layer_stops_the_read(tmp_path):
    src = _xlabs_file(tmp_path / "x.safetensors")
    bad = write_safetensors(tmp_path / "bad.safetensors", [
        ("double_blocks.0.processor.qkv_lora3.down.weight", np.ones((2, 16), np.float32)),
        ("double_blocks.0.processor.qkv_lora3.up.weight", np.ones((48, 2), np.float32))])
    with pytest.raises(AdapterError, match="qkv_lora3.down.weight is not an x-flux LoRA layer"):
        load_adapter(bad, format="xlabs")
    assert load_adapter(src).modules
