"""The dataset scan is bounded: train_data_dir set to a big tree (``/``) is one line with counts, not a disk walk."""

from __future__ import annotations

import pytest

from extension.data import scan
from extension.errors import UserError


def test_too_many_entries_refused_with_counts_only(tmp_path, monkeypatch, make_image):
    monkeypatch.setattr(scan, "MAX_ENTRIES", 50)
    for i in range(60):
        (tmp_path / f"unrelated-SECRET-{i}.txt").write_text("x")
    with pytest.raises(UserError) as err:
        scan.scan_folder(tmp_path)
    message = str(err.value)
    assert "more than 50 files and folders" in message and "SECRET" not in message and "\n" not in message


def test_depth_is_bounded_and_symlinks_not_followed(tmp_path, make_image):
    make_image(tmp_path / "10_char" / "a.png", caption="a")
    make_image(tmp_path / "10_char" / "sub" / "deeper" / "b.png", caption="b")
    make_image(tmp_path / "x" / "y" / "z" / "w" / "too_deep.png", caption="c")
    (tmp_path / "link").symlink_to(tmp_path / "10_char")
    found = sorted(e.rel for e in scan.scan_folder(tmp_path).entries)
    assert found == ["10_char/a.png", "10_char/sub/deeper/b.png"]
