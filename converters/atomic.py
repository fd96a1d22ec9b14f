"""Write files and folders so that a reader never sees a partial result."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import AdapterError


def _umask() -> int:
    """The process umask, read without changing it where Linux allows.

    Setting it and putting it back is the only portable getter, but a WebUI process has other threads
    creating files meanwhile, so /proc is asked first.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _readable(path: Path, folder: bool) -> None:
    """Give a temp file/folder the mode a plain ``open``/``mkdir`` would (0644/0755 under umask 022).

    ``mkstemp``/``mkdtemp`` create 0600/0700 whatever the umask, so without this every output
    would be private to the user who ran the conversion or the WebUI.
    """
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


def check_destination(path: str | os.PathLike, force: bool) -> Path:
    """Refuse an existing destination unless ``force``; return the destination as a Path."""
    dst = Path(path)
    if dst.exists() and not force:
        raise AdapterError(f"{dst}: already exists; pass --force to overwrite it")
    if not dst.parent.exists():
        raise AdapterError(f"{dst}: folder {dst.parent} does not exist; create it first")
    return dst


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, force: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success."""
    dst = check_destination(path, force)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _readable(tmp, folder=False)
        yield tmp
        if tmp.exists():
            _readable(tmp, folder=False)  # a writer may have replaced the temp file with its own
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, force: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; swap it in for ``path`` only on success."""
    dst = check_destination(path, force)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    try:
        _readable(tmp, folder=True)
        yield tmp
        if dst.exists():
            old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
            os.replace(dst, old)
            os.replace(tmp, dst)
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        else:
            os.replace(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
