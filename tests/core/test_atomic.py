"""Atomic writes leave either the old result or the new one, never a partial one."""

import pytest

from converters.atomic import atomic_dir, atomic_file


def test_failed_file_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_old_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(target, force=True) as tmp:
        tmp.write_bytes(b"new but broken")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_dir_replace(tmp_path):
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_dir(target, force=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]
