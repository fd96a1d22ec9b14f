"""``--svd-rank R`` on Flux adapters: fused BFL modules (ranks added by fusing) become their best rank-R LoRA."""

from __future__ import annotations

import numpy as np
import pytest
from flux_cases import deltas

from converters import AdapterError, LoraAdapter, LoraModule, convert, load_adapter, save_adapter
from converters.flux_names import bfl_of_canonical
from converters.safetensors_io import SafetensorsFile
from extension import cli


def _fused_deltas(adapter) -> dict[str, np.ndarray]:
    """{BFL module: delta}, the canonical parts' deltas stacked by output rows as BFL fuses them."""
    by_part = deltas(adapter)
    groups: dict[str, list] = {}
    for name, delta in by_part.items():
        bfl, index = bfl_of_canonical()[name]
        groups.setdefault(bfl.path, [None] * len(bfl.parts))[index] = delta
    return {path: np.concatenate(parts) for path, parts in groups.items()}


def _best_error(delta: np.ndarray, rank: int) -> float:
    s = np.linalg.svd(delta.astype(np.float64), compute_uv=False)
    return float(np.sqrt(np.sum(s[rank:] ** 2) / np.sum(s ** 2)))


@pytest.fixture()
def diffusers_file(flux_lora, tmp_path):
    return save_adapter(flux_lora, tmp_path / "flux.safetensors", to="diffusers", dtype="f32")


def test_svd_rank_makes_fused_flux_modules_the_best_rank_r_lora(flux_lora, diffusers_file, tmp_path):
    rank, report = 3, {}
    out = convert(diffusers_file, tmp_path / "small.safetensors", to="kohya", dtype="f32", svd_rank=rank,
                  report=report)
    st = SafetensorsFile(out)
    names = st.keys()
    ranks = {k: st.get(k).shape[0] for k in names if k.endswith("lora_down.weight")}
    assert max(ranks.values()) == rank and "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in ranks
    want, got = _fused_deltas(flux_lora), _fused_deltas(load_adapter(out))
    assert set(got) == set(want)
    errors = {path: float(np.linalg.norm(got[path] - w) / np.linalg.norm(w)) for path, w in want.items()}
    for path, w in want.items():  # optimal (Eckart-Young), and untouched where the rank was low enough
        assert errors[path] == pytest.approx(_best_error(w, rank), abs=1e-5), path
    assert errors["double_blocks.0.img_attn.qkv"] > 0.05  # ranks 9 -> 3: a real approximation
    assert report["svd_worst_rel_error"] == pytest.approx(max(errors.values()), abs=1e-5)
    assert errors[report["svd_worst_module"]] == pytest.approx(report["svd_worst_rel_error"], abs=1e-5)
    assert report["svd_modules"] == sum(1 for w in want.values() if np.linalg.matrix_rank(w) > rank)


def test_svd_rank_is_exact_when_the_fused_delta_has_that_rank(tmp_path):
    """q/k/v of rank 2 each whose downs share one 2-row space: fused rank 6 as stored, 2 in truth."""
    rng = np.random.default_rng(3)
    space = rng.standard_normal((2, 16)).astype(np.float32)
    modules = {f"transformer.transformer_blocks.0.attn.to_{p}": LoraModule(
        down=rng.standard_normal((2, 2)).astype(np.float32) @ space,
        up=rng.standard_normal((16, 2)).astype(np.float32), alpha=float(i + 1)) for i, p in enumerate("qkv")}
    adapter = LoraAdapter(modules=modules, arch="flux")
    src = save_adapter(adapter, tmp_path / "qkv", to="peft")
    report = {}
    out = convert(src, tmp_path / "small.safetensors", to="kohya", dtype="f32", svd_rank=2, report=report)
    assert SafetensorsFile(out).get("lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight").shape == (2, 16)
    want, got = _fused_deltas(adapter), _fused_deltas(load_adapter(out))
    qkv = "double_blocks.0.img_attn.qkv"
    assert float(np.linalg.norm(got[qkv] - want[qkv]) / np.linalg.norm(want[qkv])) < 1e-5
    assert report == {"svd_modules": 1, "svd_worst_rel_error": pytest.approx(0, abs=1e-5), "svd_worst_module": qkv}
    back = convert(out, tmp_path / "back", to="peft", dtype="f32")  # canonical names, each part rank 2
    assert {n: m.rank for n, m in load_adapter(back).modules.items()} == dict.fromkeys(modules, 2)


def test_svd_rank_above_every_rank_says_so(diffusers_file, tmp_path):
    with pytest.raises(AdapterError, match="rank 40 or less already"):
        convert(diffusers_file, tmp_path / "x.safetensors", to="kohya", svd_rank=40)
    assert not (tmp_path / "x.safetensors").exists()


def test_cli_prints_the_worst_relative_error(diffusers_file, tmp_path, capsys):
    code = cli.main(["convert", str(diffusers_file), str(tmp_path / "s.safetensors"), "--to", "bfl",
                     "--svd-rank", "2"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "by rank-2 LoRA; worst relative error" in printed and "wrote" in printed
