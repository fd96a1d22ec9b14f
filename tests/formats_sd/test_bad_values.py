"""NaN/inf weights, rank 0 and alpha <= 0: convert refuses with one line, inspect reports them."""

import json

import numpy as np
import pytest

from converters.safetensors_io import write_safetensors
from extension.cli import main

_MOD = "lora_unet_mid_block_attentions_0_proj_in"


def _kohya(path, rank=4, alpha=4.0, down_value=0.1):
    down = np.full((rank, 16), down_value, np.float32)
    up = np.full((16, rank), 0.1, np.float32)
    tensors = {f"{_MOD}.lora_down.weight": down, f"{_MOD}.lora_up.weight": up,
               f"{_MOD}.alpha": np.asarray(alpha, np.float32)}
    return write_safetensors(path, tensors, {"ss_base_model_version": "sd_v1"})


_CASES = {
    "nan": ({"down_value": float("nan")}, "NaN/inf"),
    "inf": ({"down_value": float("inf")}, "NaN/inf"),
    "rank 0": ({"rank": 0}, "rank 0"),
    "alpha 0": ({"alpha": 0.0}, "alpha 0"),
    "negative alpha": ({"alpha": -4.0}, "negative"),
}


@pytest.mark.parametrize("case", sorted(_CASES))
def test_convert_refuses_and_inspect_reports(tmp_path, capsys, case):
    kwargs, word = _CASES[case]
    src = _kohya(tmp_path / "bad.safetensors", **kwargs)
    dst = tmp_path / "out"
    code = main(["convert", str(src), str(dst), "--to", "peft"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and word in err and "bad.safetensors" in err, err
    if case == "alpha 0":
        assert "alpha = rank" in err and "scale 0" in err, err
    assert not dst.exists()
    assert main(["inspect", str(src), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert any(word in line for line in report["problems"]), report["problems"]
    assert main(["inspect", str(src)]) == 0
    assert any(line.strip().startswith("warning:") and word in line for line in capsys.readouterr().out.splitlines())


def test_sound_adapter_has_no_problems(tmp_path, capsys):
    src = _kohya(tmp_path / "good.safetensors")
    assert main(["convert", str(src), str(tmp_path / "out"), "--to", "peft"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(src), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["problems"] == []
