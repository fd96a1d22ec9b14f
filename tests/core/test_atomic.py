"""Atomic writes leave either the old result or the new one, never a partial one."""

from pathlib import Path

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


# ---- issue 22 #12: leftovers of killed writers, folder replace that never loses the destination ----

def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_next_save_removes_only_dead_writers_temps(tmp_path):
    import os
    import time

    dead, live = _dead_pid(), os.getpid()
    stale_file = tmp_path / f".a.safetensors.{dead}-abcd_123.tmp"
    stale_file.write_bytes(b"half")
    stale_dir = tmp_path / f".adapter.{dead}-zzzz0000.tmp"
    stale_dir.mkdir()
    (stale_dir / "adapter_model.safetensors").write_bytes(b"half")
    kept = [tmp_path / f".b.gguf.{live}-abcdefgh.tmp", tmp_path / ".notes.tmp", tmp_path / "x.12-abcdefgh.tmp",
            tmp_path / ".c.gguf.qwertyui.tmp"]  # a live writer, someone else's, not hidden, pid-less but new
    for path in kept:
        path.write_bytes(b"keep")
    old_legacy = tmp_path / ".d.gguf.asdfghjk.tmp"
    old_legacy.write_bytes(b"old")
    os.utime(old_legacy, (time.time() - 2 * 86400,) * 2)
    with atomic_file(tmp_path / "new.bin") as tmp:
        tmp.write_bytes(b"new")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["new.bin", *(p.name for p in kept)])


def test_a_backup_without_destination_is_restored(tmp_path):
    dead = _dead_pid()
    backup = tmp_path / f".adapter.old-{dead}"
    backup.mkdir()
    (backup / "adapter_config.json").write_text("{}")
    with atomic_file(tmp_path / "other.bin") as tmp:
        tmp.write_bytes(b"x")
    assert (tmp_path / "adapter" / "adapter_config.json").read_text() == "{}"
    assert not backup.exists()


def test_failed_second_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    import os

    from converters import atomic

    target = tmp_path / "adapter"
    target.mkdir()
    (target / "old.txt").write_text("old")
    monkeypatch.setattr(atomic, "_RENAMEAT2", None)  # the two-rename path (Windows, macOS, old kernels)
    real, calls = os.replace, []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", flaky)
    with pytest.raises(OSError), atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


@pytest.mark.parametrize("exchange", [True, False])
def test_kill_during_folder_replace_never_leaves_no_destination(tmp_path, exchange):
    """A writer killed (SIGKILL) right after its first rename: the next write in the folder repairs it."""
    import subprocess
    import sys
    import textwrap

    from converters import atomic

    if exchange and atomic._RENAMEAT2 is None:
        pytest.skip("no renameat2 here")
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "old.txt").write_text("old")
    script = textwrap.dedent(f"""
        import os, signal
        from converters import atomic
        if not {exchange}:
            atomic._RENAMEAT2 = None
        real_replace, real_remove = os.replace, atomic._remove
        def die(*a):
            os.kill(os.getpid(), signal.SIGKILL)
        def replace_then_die(src, dst):
            real_replace(src, dst)
            die()
        atomic.os.replace = replace_then_die
        atomic._remove = die
        with atomic.atomic_dir({str(target)!r}) as tmp:
            (tmp / "new.txt").write_text("new")
    """)
    import os

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    assert subprocess.run([sys.executable, "-c", script], env=env).returncode == -9
    assert target.exists() or any(p.name.startswith(".adapter.old-") for p in tmp_path.iterdir())
    with atomic_file(tmp_path / "next.bin") as tmp:
        tmp.write_bytes(b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "next.bin"]
    assert [p.name for p in target.iterdir()] in (["old.txt"], ["new.txt"])


@pytest.mark.parametrize("code", ["ENOSPC", "EROFS", "EACCES", "ENAMETOOLONG"])
def test_fixable_os_errors_are_one_line_naming_the_destination(tmp_path, code):
    import errno

    from converters.errors import AdapterError

    target = tmp_path / "out.safetensors"
    with pytest.raises(AdapterError, match=f"^{target}: ") as info, atomic_file(target) as tmp:
        tmp.write_bytes(b"part")
        raise OSError(getattr(errno, code), "simulated", str(tmp))
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []
