"""Scanning dataset folders: metadata.csv / jsonl, sidecars, kohya repeat folders."""

from __future__ import annotations

import json

import pytest

from extension.config import config_from_dict
from extension.data import ImageDataset, scan_folder
from extension.errors import UserError


def test_csv_with_filename_prompt(tmp_path, make_image):
    make_image(tmp_path / "a.png")
    make_image(tmp_path / "b.jpg", caption="sidecar loses")
    (tmp_path / "metadata.csv").write_text('filename,prompt\na.png,"a red, cat"\nb.jpg,from csv\n', encoding="utf-8")
    scan = scan_folder(tmp_path)
    assert [(e.rel, e.caption, e.caption_source) for e in scan.entries] == [
        ("a.png", "a red, cat", "csv"), ("b.jpg", "from csv", "csv")]
    assert scan.problems == []


def test_diffusers_imagefolder_layout(tmp_path, make_image):
    make_image(tmp_path / "train" / "x.webp")
    (tmp_path / "train" / "metadata.csv").write_text("file_name,text\nx.webp,hello\n", encoding="utf-8")
    make_image(tmp_path / "train" / "y.png")
    (tmp_path / "train" / "metadata.jsonl").write_text(json.dumps({"file_name": "y.png", "text": "jsonl"}) + "\n",
                                                         encoding="utf-8")
    scan = scan_folder(tmp_path)
    assert {e.rel: e.caption for e in scan.entries} == {"train/x.webp": "hello", "train/y.png": "jsonl"}


def test_explicit_metadata_path_and_bad_header(tmp_path, make_image):
    make_image(tmp_path / "imgs" / "a.png")
    meta = tmp_path / "caps.csv"
    meta.write_text("FileName,Prompt\nimgs/a.png,explicit\n", encoding="utf-8")
    scan = scan_folder(tmp_path, metadata_path=str(meta))
    assert scan.entries[0].caption == "explicit"
    meta.write_text("name,words\na.png,x\n", encoding="utf-8")
    with pytest.raises(UserError, match="must be a CSV header naming the image and caption columns"):
        scan_folder(tmp_path, metadata_path=str(meta))
    with pytest.raises(UserError, match="metadata_path does not name a file"):
        scan_folder(tmp_path, metadata_path=str(tmp_path / "nope.csv"))


def test_sidecars_txt_and_caption(tmp_path, make_image):
    make_image(tmp_path / "a.png", caption="  first line\nsecond line \n")
    make_image(tmp_path / "b.png")
    (tmp_path / "b.caption").write_text("kohya style", encoding="utf-8")
    scan = scan_folder(tmp_path, caption_extension=".caption")
    assert {e.rel: e.caption for e in scan.entries} == {"a.png": "first line second line", "b.png": "kohya style"}


def test_repeat_folders_and_default_repeats(tmp_path, make_image):
    make_image(tmp_path / "10_mychar" / "a.png", caption="a")
    make_image(tmp_path / "10_mychar" / "deep" / "b.png", caption="b")
    make_image(tmp_path / "style" / "c.png", caption="c")
    make_image(tmp_path / "root.png", caption="r")
    make_image(tmp_path / ".hidden" / "h.png", caption="h")
    scan = scan_folder(tmp_path, num_repeats=3)
    got = {e.rel: (e.dataset_dir, e.repeats) for e in scan.entries}
    assert got == {"10_mychar/a.png": ("10_mychar", 10), "10_mychar/deep/b.png": ("10_mychar", 10),
                   "style/c.png": ("style", 3), "root.png": (tmp_path.name, 3)}
    cfg = config_from_dict({"train_data_dir": str(tmp_path), "num_repeats": 3, "trigger_word": "sks"})
    ds = ImageDataset(cfg)
    assert len(ds) == 10 + 10 + 3 + 3
    assert ds.caption(0, 0).startswith("sks")


def test_problems_are_collected_not_raised(tmp_path, make_image):
    make_image(tmp_path / "a.png")
    (tmp_path / "metadata.csv").write_text("filename,prompt\ngone.png,x\n", encoding="utf-8")
    scan = scan_folder(tmp_path)
    assert sorted(p.kind for p in scan.problems) == ["csv_missing_file", "no_caption"]
    assert any(p.path == "metadata.csv:2" for p in scan.problems)


def test_missing_root(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        scan_folder(tmp_path / "missing")


def test_output_dir_inside_dataset_is_not_scanned(tmp_path, make_image):
    make_image(tmp_path / "a.png", caption="a")
    make_image(tmp_path / "out" / "samples" / "s.png")
    assert [e.rel for e in scan_folder(tmp_path, exclude=(tmp_path / "out",)).entries] == ["a.png"]
    cfg = config_from_dict({"train_data_dir": str(tmp_path), "output_dir": str(tmp_path / "out")})
    assert len(ImageDataset(cfg)) == 1
