"""Write files and folders so that a reader never sees a partial result.

Temporary names carry the writer's pid (``.NAME.<pid>-XXXXXXXX.tmp``), so the next save or convert
in a folder can tell a dead process's leftovers from a live writer's and remove only those. A
folder is replaced by an atomic exchange where the OS has one (Linux ``renameat2``); elsewhere the
old folder is moved to ``.NAME.old-<pid>`` first, and a backup whose destination went missing (a
kill between the two renames) is put back by the next write in that folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import AdapterError

# Our own leftovers only: ``.NAME.<pid>-<8 mkstemp chars>.tmp`` and ``.NAME.old-<pid>``.
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[a-z0-9_]{8}\.tmp$")
_BACKUP_RE = re.compile(r"^\.(?P<name>.+)\.old-(?P<pid>\d+)$")
# Temp names of older versions carry no pid; they count as stale once this old (no write takes a day).
_LEGACY_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")
LEGACY_TEMP_AGE = 24 * 3600

# What a full disk, a read-only or forbidden folder, or a too-long name look like: the user's to fix.
USER_ERRNOS = {
    errno.ENOSPC: "no space left on the device; free some space or choose another folder",
    errno.EROFS: "the folder is on a read-only file system; choose a writable folder",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "operation not permitted; choose a folder you can write to",
    errno.ENAMETOOLONG: "the name is too long for the file system; choose a shorter output name",
    getattr(errno, "EDQUOT", -1): "disk quota exceeded; free some space or choose another folder",
}


def user_os_error(exc: BaseException, path: str | os.PathLike | None = None,
                  fallback: str | os.PathLike | None = None) -> AdapterError | None:
    """One line for an OSError the user can fix (disk full or over quota, read-only file system, permission
    refused, name too long); None for any other exception.

    It names ``path``, else the file the error names, else ``fallback``.
    """
    if not isinstance(exc, OSError) or exc.errno not in USER_ERRNOS:
        return None
    where = next((p for p in (path, exc.filename, fallback) if p is not None), "(unknown path)")
    return AdapterError(f"{where}: {USER_ERRNOS[exc.errno]}")


@contextlib.contextmanager
def user_os_errors(path: str | os.PathLike | None = None,
                   fallback: str | os.PathLike | None = None) -> Iterator[None]:
    """Turn a fixable OSError inside the block into an AdapterError (see ``user_os_error``)."""
    try:
        yield
    except OSError as exc:
        mapped = user_os_error(exc, path, fallback)
        if mapped is None:
            raise
        raise mapped from None


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists on this machine (True too when that cannot be told)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    if sys.platform == "win32":
        # os.kill(pid, 0) would send CTRL_C_EVENT on Windows; ask for a handle instead.
        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.get_last_error() == 5  # access denied: it exists
        code = ctypes.c_ulong()
        kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: someone else's live process
    return True


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove this module's leftovers of dead processes in ``folder``; returns what was removed.

    Only names this module makes are touched: temps whose embedded pid is gone (or pid-less temps of
    older versions over a day old), and folder backups ``.NAME.old-<pid>`` of dead processes once
    ``NAME`` exists again. A backup whose ``NAME`` is missing is renamed back instead (see ``atomic_dir``).
    """
    root = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        path = Path(entry.path)
        if _stale(entry, now):
            _remove(path)
            removed.append(path)
        elif (m := _BACKUP_RE.match(entry.name)) and not pid_alive(int(m.group("pid"))):
            target = root / m.group("name")
            with contextlib.suppress(OSError):
                if os.path.lexists(target):
                    _remove(path)  # the new result is in place: the old one is garbage
                    removed.append(path)
                else:
                    os.rename(path, target)  # killed between the two renames: the old result comes back
    return removed


def _stale(entry: os.DirEntry, now: float) -> bool:
    """True for a temp of this module whose writer is gone."""
    if m := _TEMP_RE.match(entry.name):
        return not pid_alive(int(m.group("pid")))
    if _LEGACY_TEMP_RE.match(entry.name):
        try:
            return now - entry.stat(follow_symlinks=False).st_mtime > LEGACY_TEMP_AGE
        except OSError:
            return False
    return False


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
    with user_os_errors(dst):
        exists = dst.exists()
    if exists and not force:
        raise AdapterError(f"{dst}: already exists; pass --force to overwrite it")
    if not dst.parent.exists():
        raise AdapterError(f"{dst}: folder {dst.parent} does not exist; create it first")
    return dst


def _temp_prefix(dst: Path) -> str:
    return f".{dst.name}.{os.getpid()}-"


def _libc_renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


_RENAMEAT2 = _libc_renameat2()
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux); False where the OS or file system cannot."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, getattr(errno, "EOPNOTSUPP", errno.ENOTSUP)):
        return False
    raise OSError(code, os.strerror(code), str(b))


def replace_dir(tmp: Path, dst: Path) -> None:
    """Put folder ``tmp`` at ``dst`` (replacing what is there) so that ``dst`` never goes missing.

    With an exchange the old content lands at ``tmp`` and is removed; without one it is moved to
    ``.NAME.old-<pid>`` first, which ``remove_stale_temps`` renames back if the process dies before
    the new folder is in place.
    """
    if not os.path.lexists(dst):
        os.replace(tmp, dst)
        return
    if _exchange(tmp, dst):
        _remove(tmp)
        return
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
    if os.path.lexists(old):
        _remove(old)
    os.replace(dst, old)
    try:
        os.replace(tmp, dst)
    except BaseException:
        os.replace(old, dst)  # never leave no destination
        raise
    _remove(old)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, force: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success.

    Dead processes' leftovers beside ``path`` are removed first; a full disk, read-only folder,
    refused permission or too-long name becomes one AdapterError line naming the path.
    """
    dst = check_destination(path, force)
    with user_os_errors(dst):
        remove_stale_temps(dst.parent)
        fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(dst), suffix=".tmp", dir=dst.parent)
        os.close(fd)
    tmp = Path(tmp_name)
    try:
        with user_os_errors(dst):
            _readable(tmp, folder=False)
            yield tmp
            if tmp.exists():
                _readable(tmp, folder=False)  # a writer may have replaced the temp file with its own
            os.replace(tmp, dst)
    finally:
        if os.path.lexists(tmp):
            _remove(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, force: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; swap it in for ``path`` only on success (see ``replace_dir``)."""
    dst = check_destination(path, force)
    with user_os_errors(dst):
        remove_stale_temps(dst.parent)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(dst), suffix=".tmp", dir=dst.parent))
    try:
        with user_os_errors(dst):
            _readable(tmp, folder=True)
            yield tmp
            replace_dir(tmp, dst)
    finally:
        if os.path.lexists(tmp):
            _remove(tmp)
