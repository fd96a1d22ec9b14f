"""Bad inputs through the CLI: one clear line, exit 2, nothing written or lost."""

from __future__ import annotations

import shutil

import pytest
import yaml

from extension.cli import main


def _dataset(root, n=3):
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (64, 64), (40 * i, 100, 200)).save(root / f"img{i}.png")
        (root / f"img{i}.txt").write_text(f"a shape {i}")
    return root


def _config(tmp_path, base, data, **extra):
    values = dict(base_model=str(base), train_data_dir=str(data), output_dir=str(tmp_path / "out"),
                  output_name="t", resolution=64, min_bucket_reso=64, max_bucket_reso=64, lora_rank=2,
                  lora_alpha=2, batch_size=1, max_train_steps=1)
    values.update(extra)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def _run(capsys, config, *sets):
    argv = ["train", "--config", config]
    for item in sets:
        argv += ["--set", item]
    code = main(argv)
    return code, capsys.readouterr().err


def _corrupt(data):
    (data / "img0.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")


def _uncaptioned(data):
    (data / "img1.txt").unlink()


def _csv_missing(data):
    for p in data.glob("*.txt"):
        p.unlink()
    (data / "metadata.csv").write_text("filename,prompt\nimg0.png,a\nimg1.png,b\nimg2.png,c\ngone.png,d\n")


def _empty(data):
    shutil.rmtree(data)
    data.mkdir()


@pytest.mark.parametrize("breakage, expected", [
    (_corrupt, "img0.png"),
    (_uncaptioned, "caption"),
    (_csv_missing, "metadata.csv:5"),
    (_empty, "no usable images"),
])
def test_bad_datasets_exit_2_before_training(breakage, expected, bases, tmp_path, capsys):
    data = _dataset(tmp_path / "data")
    breakage(data)
    out = tmp_path / "out"
    out.mkdir()
    (out / "t.safetensors").write_bytes(b"earlier result")
    code, err = _run(capsys, _config(tmp_path, bases["sd1"], data))
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("lora-bridge: error: ") and expected in last and str(data) in last
    assert (out / "t.safetensors").read_bytes() == b"earlier result"
    assert sorted(p.name for p in out.iterdir()) == ["t.safetensors"]


def test_bad_settings_exit_2(bases, tmp_path, capsys):
    data = _dataset(tmp_path / "data")
    cfg = _config(tmp_path, bases["sd1"], data, lora_rnak=4)
    code, err = _run(capsys, cfg)
    assert code == 2 and "unknown key 'lora_rnak'" in err and "lora_rank" in err
    cfg = _config(tmp_path, bases["sd1"], data, output_name="../escape")
    code, err = _run(capsys, cfg)
    assert code == 2 and "path parts" in err
    cfg = _config(tmp_path, bases["sdxl"], data, model_arch="sd1")
    code, err = _run(capsys, cfg)
    assert code == 2 and "SDXL" in err and "model_arch" in err
    assert not list((tmp_path / "out").glob("*.safetensors"))
    code, err = _run(capsys, _config(tmp_path, tmp_path / "nope.safetensors", data))
    assert code == 2 and "base model not found" in err


def test_skip_policy_reports_and_trains(bases, tmp_path, capsys):
    data = _dataset(tmp_path / "data")
    _corrupt(data)
    code, err = _run(capsys, _config(tmp_path, bases["sd1"], data, bad_data="skip"))
    assert code == 0, err
    assert "img0.png" in err and "lint" in err
    assert (tmp_path / "out" / "t.safetensors").is_file()
