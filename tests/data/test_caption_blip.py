"""lora-bridge caption with a tiny random BLIP from a local folder."""

from __future__ import annotations

import csv

import pytest

from extension.cli import main
from extension.data.caption import caption_cli
from extension.errors import UserError


def test_sidecars_written_existing_kept(tmp_path, make_image, tiny_blip_dir):
    make_image(tmp_path / "a.png", caption="my own caption")
    make_image(tmp_path / "sub" / "b.jpg", (40, 50), seed=1)
    assert caption_cli(str(tmp_path), str(tiny_blip_dir)) == 0
    assert (tmp_path / "a.txt").read_text() == "my own caption"
    generated = (tmp_path / "sub" / "b.txt").read_text().strip()
    assert generated  # gibberish from a random model, but written
    assert not list(tmp_path.rglob("*.tmp"))
    assert caption_cli(str(tmp_path), str(tiny_blip_dir), overwrite=True) == 0
    assert (tmp_path / "a.txt").read_text() != "my own caption"


def test_csv_output_keeps_rows(tmp_path, make_image, tiny_blip_dir):
    make_image(tmp_path / "a.png")
    make_image(tmp_path / "b.png", seed=2)
    make_image(tmp_path / "c.png", seed=3, caption="from sidecar")
    (tmp_path / "metadata.csv").write_text("file_name,text\na.png,kept row\n", encoding="utf-8")
    assert main(["caption", str(tmp_path), "--model", str(tiny_blip_dir), "--to", "csv"]) == 0
    with open(tmp_path / "metadata.csv", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["file_name", "text"]
    got = dict(rows[1:])
    assert got["a.png"] == "kept row" and got["c.png"] == "from sidecar" and got["b.png"].strip()


def test_model_folder_errors(tmp_path, make_image):
    make_image(tmp_path / "a.png")
    with pytest.raises(UserError, match="local BLIP folder"):
        caption_cli(str(tmp_path), str(tmp_path / "no-model"))
    bogus = tmp_path / "bogus"
    bogus.mkdir()
    assert main(["caption", str(tmp_path), "--model", str(bogus)]) == 2
