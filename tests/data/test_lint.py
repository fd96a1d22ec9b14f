"""lint: corrupt, zero-byte, truncated, huge images, missing captions, csv rows, empty folder."""

from __future__ import annotations

import io
import subprocess
import sys

from extension.cli import main
from extension.config import config_from_dict
from extension.data import lint_dataset
from extension.data.lint import lint_cli


def truncated_bytes(fmt: str) -> bytes:
    """A valid image of ``fmt`` cut to 60 % of its bytes."""
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(buf, format=fmt)
    data = buf.getvalue()
    return data[: int(len(data) * 0.6)]


def broken_dataset(root, make_image):
    make_image(root / "good.png", caption="fine")
    make_image(root / "nocap.png")
    (root / "zero.png").write_bytes(b"")
    (root / "garbage.jpg").write_bytes(b"\x00\x01 this is not a jpeg" * 10)
    (root / "cut.png").write_bytes(truncated_bytes("PNG"))
    (root / "cut.png").with_suffix(".txt").write_text("x")
    (root / "cut2.jpg").write_bytes(truncated_bytes("JPEG"))
    (root / "cut2.txt").write_text("x")
    make_image(root / "huge.png", (300, 300), caption="big")
    make_image(root / "tiny.png", (20, 20), caption="small")
    (root / "metadata.csv").write_text("filename,prompt\ngood.png,fine\nmissing.png,gone\n", encoding="utf-8")
    return root


def test_every_problem_kind_reported(tmp_path, make_image):
    root = broken_dataset(tmp_path, make_image)
    report = lint_dataset(root, config_from_dict({"max_image_pixels": 200 * 200}))
    assert report.counts() == {"csv_missing_file": 1, "no_caption": 1, "zero_byte": 1, "unreadable": 1,
                               "truncated": 2, "too_large": 1, "too_small": 1}
    by_kind = {p.kind: [] for p in report.problems}
    for p in report.problems:
        by_kind[p.kind].append(p.path)
    assert sorted(by_kind["truncated"]) == ["cut.png", "cut2.jpg"]
    assert by_kind["csv_missing_file"] == ["metadata.csv:3"]
    assert [g.entry.rel for g in report.good] == ["good.png"]
    assert report.found == 8
    summary = report.summary()
    assert "\n" not in summary and "1 images without caption (first: nocap.png)" in summary
    assert report.to_dict()["usable"] == 1
    text = report.format()
    assert text.splitlines()[0].endswith("8 image(s), 1 usable, 8 problem(s)") and "metadata.csv:3" in text


def test_truncated_detected_even_if_host_allows_truncated_loads(tmp_path):
    from PIL import ImageFile

    (tmp_path / "cut.jpg").write_bytes(truncated_bytes("JPEG"))
    (tmp_path / "cut.txt").write_text("x")
    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        assert lint_dataset(tmp_path).counts() == {"truncated": 1}
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


def test_lint_cli_exit_codes(tmp_path, make_image, capsys):
    clean = tmp_path / "clean"
    make_image(clean / "a.png", caption="ok")
    assert lint_cli(str(clean)) == 0
    assert "1 usable, 0 problem(s)" in capsys.readouterr().out
    broken = broken_dataset(tmp_path / "broken", make_image)
    assert main(["lint", str(broken)]) == 2
    out = capsys.readouterr().out
    assert "2 truncated images" in out and "cut2.jpg" in out and "lora-bridge caption" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["lint", str(empty)]) == 2
    assert "1 empty folder" in capsys.readouterr().out
    assert main(["lint", str(tmp_path / "nope")]) == 2
    assert "train_data_dir must be a folder" in capsys.readouterr().err


def test_lora_bridge_lint_command(tmp_path, make_image):
    make_image(tmp_path / "a.png")
    proc = subprocess.run([sys.executable, "-m", "extension", "lint", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "1 images without caption" in proc.stdout and "Traceback" not in proc.stderr
