"""Flux.1 adapters checked against the Flux base files Forge users hold (``--base``), and ``inspect`` naming
dev/schnell/Chroma. Before, every Flux base was "not a Stable Diffusion checkpoint"."""

from __future__ import annotations

import numpy as np
import pytest
from flux_bases import write_bfl, write_city96_gguf
from flux_cases import flux_adapter

from converters import (
    AdapterError,
    LoraAdapter,
    LoraModule,
    check_against_base,
    convert,
    inspect_adapter,
    save_adapter,
)
from extension import cli


@pytest.fixture(scope="module")
def bases(flux_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("flux-bases")
    return {
        "bfl": write_bfl(flux_model, folder / "flux1-dev.safetensors"),
        "all-in-one": write_bfl(flux_model, folder / "aio.safetensors", "model.diffusion_model.", True),
        "schnell": write_bfl(flux_model, folder / "flux1-schnell.safetensors", schnell=True),
        "gguf": write_city96_gguf(flux_model, folder / "flux1-dev-Q4_0.gguf"),
    }


@pytest.mark.parametrize("kind", ["bfl", "all-in-one", "gguf"])
def test_a_flux_lora_fits_each_kind_of_flux_base(flux_model, bases, kind):
    adapter = flux_adapter(flux_model, clip=kind == "all-in-one")
    assert check_against_base(adapter, bases[kind]) == []


def test_kohya_file_inspected_against_a_gguf_base_names_dev(flux_model, bases, tmp_path):
    src = save_adapter(flux_adapter(flux_model, blocks_only=True), tmp_path / "k.safetensors", to="kohya")
    report = inspect_adapter(src, base=bases["gguf"])
    assert report["base_problems"] == [] and report["variant"] == "dev" and report["variant_from"] == "the base file"
    assert inspect_adapter(src, base=bases["schnell"])["variant"] == "schnell"


def test_a_lora_for_another_width_or_on_dev_only_layers_does_not_fit(flux_model, bases, tmp_path):
    adapter = flux_adapter(flux_model)  # adapts the guidance embedder, which schnell has not
    problems = check_against_base(adapter, bases["schnell"])
    assert problems and all("time_text_embed.guidance_embedder" in p for p in problems), problems
    wide = LoraAdapter(modules={"transformer.transformer_blocks.0.attn.to_q": LoraModule(
        down=np.ones((2, 32), np.float32), up=np.ones((32, 2), np.float32), alpha=2.0)}, arch="flux")
    assert check_against_base(wide, bases["gguf"]) == [
        "transformer.transformer_blocks.0.attn.to_q: adapter implies weight (32, 32), base has (16, 16)"]
    src = save_adapter(wide, tmp_path / "wide.safetensors", to="diffusers")
    with pytest.raises(AdapterError, match="does not fit base"):
        convert(src, tmp_path / "out.safetensors", to="kohya", base=bases["bfl"])
    assert not (tmp_path / "out.safetensors").exists()


def test_an_sd_lora_against_a_flux_base_names_both(bases):
    sd = LoraAdapter(modules={"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": LoraModule(
        down=np.ones((2, 320), np.float32), up=np.ones((320, 2), np.float32), alpha=2.0)}, arch="sd1")
    assert check_against_base(sd, bases["bfl"])[0] == "adapter is for sd1, base is flux"


def test_inspect_names_the_variant_from_metadata_or_shapes(flux_model, tmp_path, capsys):
    adapter = flux_adapter(flux_model, blocks_only=True)
    plain = save_adapter(adapter, tmp_path / "plain.safetensors", to="diffusers")
    assert inspect_adapter(plain)["variant"] is None
    spec = save_adapter(adapter, tmp_path / "spec.safetensors", to="kohya",
                        metadata={"modelspec.architecture": "flux-1-schnell/lora"})
    assert (inspect_adapter(spec)["variant"], inspect_adapter(spec)["variant_from"]) == \
        ("schnell", "modelspec.architecture metadata")
    again = convert(spec, tmp_path / "again.safetensors", to="kohya")  # a schnell LoRA stays one
    assert inspect_adapter(again)["variant"] == "schnell"
    guided = save_adapter(flux_adapter(flux_model), tmp_path / "guided.safetensors", to="bfl")
    assert inspect_adapter(guided)["variant"] == "dev"
    assert cli.main(["inspect", str(guided)]) == 0
    assert "variant: dev (a LoRA on the guidance embedder (only dev has one))" in capsys.readouterr().out


def test_cli_convert_with_a_flux_base_that_does_not_fit_exits_2(flux_model, bases, tmp_path, capsys):
    src = save_adapter(flux_adapter(flux_model), tmp_path / "d.safetensors", to="diffusers")
    code = cli.main(["convert", str(src), str(tmp_path / "o.safetensors"), "--to", "kohya",
                     "--base", str(bases["schnell"])])
    err = capsys.readouterr().err
    assert code == 2 and "guidance_embedder.linear_1: no such module in the base" in err and "Traceback" not in err
    assert cli.main(["convert", str(src), str(tmp_path / "o.safetensors"), "--to", "kohya",
                     "--base", str(bases["gguf"])]) == 0


def test_our_kohya_file_of_an_unknown_variant_does_not_claim_dev(flux_model, bases, tmp_path):
    """sd-scripts' sai_model_spec names an unknown Flux.1 variant ``flux-1`` (``flux-1/lora``); the writer named
    every such file ``flux-1-dev/lora``, so inspect of our own file said dev."""
    plain = save_adapter(flux_adapter(flux_model, blocks_only=True), tmp_path / "plain.safetensors", to="diffusers")
    unknown = convert(plain, tmp_path / "unknown.safetensors", to="kohya")
    report = inspect_adapter(unknown)
    assert report["metadata"]["modelspec.architecture"] == "flux-1/lora"
    assert (report["variant"], report["variant_from"]) == (None, "neither metadata nor shapes tell")
    told = {"schnell": convert(plain, tmp_path / "s.safetensors", to="kohya", base=bases["schnell"]),
            "dev": convert(save_adapter(flux_adapter(flux_model), tmp_path / "g.safetensors", to="diffusers"),
                           tmp_path / "d.safetensors", to="kohya")}  # the guidance embedder's LoRA tells dev
    for variant, path in told.items():
        assert inspect_adapter(path)["metadata"]["modelspec.architecture"] == f"flux-1-{variant}/lora"
