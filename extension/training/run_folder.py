"""A run's output folder: checked before anything loads, locked while a run writes into it, and
tidied after a failed or cancelled run (only the folders that run made).

- ``check_output`` (Start and the CLI's ``train``, before a model loads): the output name fits the file
  system with the longest name a run derives from it, the folder can be written (made and removed
  again if it did not exist), and no final file would replace an existing one unless ``overwrite``.
- ``RunFolder`` (around the engine): makes the folder, takes ``.lora-bridge.lock`` in it with an OS
  lock (``flock``/``msvcrt``: a killed process frees it), and afterwards removes the lock and, when
  the run failed or was cancelled, the empty folders it created; never a folder that was there before.
"""

from __future__ import annotations

import contextlib
import errno
import filecmp
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from .._converters import converters
from ..errors import UserError

log = logging.getLogger("lora_bridge.run_folder")

LOCK_NAME = ".lora-bridge.lock"
TEXT_TASK = "text-generation"
# The longest name a run makes from ``output_name``: an atomic temp of a step save,
# ``.NAME-<step>.safetensors.<pid>-XXXXXXXX.tmp`` (8-digit steps, 7-digit pids).
_LONGEST_DERIVED = ".{}-00000000.safetensors.4194304-abcdefgh.tmp"


# ---- checks at Start -------------------------------------------------------------------------

def _existing_ancestor(path: Path) -> Path:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(_existing_ancestor(folder), "PC_NAME_MAX"))
    except (AttributeError, OSError, ValueError):  # Windows has no pathconf: NTFS allows 255
        return 255


def check_output_name_fits(name: str, folder: str | os.PathLike) -> None:
    """UserError when the names a run derives from ``name`` would be too long for ``folder``'s file system."""
    longest = _LONGEST_DERIVED.format(name)
    size = len(longest) if sys.platform == "win32" else len(os.fsencode(longest))
    limit = _name_max(Path(folder))
    if size > limit:
        room = limit - (size - (len(name) if sys.platform == "win32" else len(os.fsencode(name))))
        raise UserError(f"output_name {name[:40]!r}… is too long for {folder}: at most {max(room, 1)} "
                        "bytes leave room for the step and temporary names; choose a shorter output_name")


def check_writable(folder: str | os.PathLike) -> None:
    """UserError naming ``folder`` unless the run could make it and write into it; nothing is left behind.

    A probe file is created (and removed) in ``folder``, or, when it does not exist yet, in its nearest
    existing ancestor, whose missing components are checked against the file system's name length.
    Making the folders to check would race with a concurrent start and could leave them behind.
    """
    folder = Path(folder).expanduser()
    missing = []
    probe = folder
    while not os.path.lexists(probe) and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{probe}: not a folder; choose another output folder")
    limit = _name_max(probe)
    try:
        for path in missing:
            if len(os.fsencode(path.name)) > limit:
                raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), str(path))
        fd, name = tempfile.mkstemp(prefix=".lora-bridge-probe.", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        reason = converters.atomic.USER_ERRNOS.get(exc.errno, exc.strerror or type(exc).__name__)
        raise UserError(f"{folder}: cannot write the run's files here ({reason.split(';')[0]}); "
                        "choose another output folder") from None


def final_outputs(cfg: Any, lora_dir: str | os.PathLike | None = None) -> list[Path]:
    """The finished files a run of ``cfg`` writes (and publishes into ``lora_dir`` for image runs)."""
    out, name = Path(str(cfg.output_dir)).expanduser(), str(cfg.output_name)
    if str(cfg.task_type) == TEXT_TASK:
        return [out / f"{name}.gguf", out / name]
    paths = [out / f"{name}.safetensors"]
    if lora_dir is not None:
        published = Path(lora_dir) / f"{name}.safetensors"
        if published.resolve() != paths[0].resolve():
            paths.append(published)
    return paths


def _existing_outputs(cfg: Any, lora_dir: str | os.PathLike | None) -> tuple[list[Path], Path | None]:
    """(existing finished files, the first of them the run may not replace without ``overwrite``).

    On a resume of its own state (``checkpoint.resumes_own_run``) the run's output files are its own, and
    so is the copy it published into ``lora_dir`` while that still holds the same bytes.
    """
    existing = [path for path in final_outputs(cfg, lora_dir) if os.path.lexists(path)]
    if not existing:
        return existing, None
    from .checkpoint import resumes_own_run

    own = final_outputs(cfg) if resumes_own_run(cfg) else []
    for path in existing:
        published = own and own[0].is_file() and path.is_file() and filecmp.cmp(own[0], path, shallow=False)
        if path not in own and not published:
            return existing, path
    return existing, None


def may_replace_outputs(cfg: Any, lora_dir: str | os.PathLike | None = None) -> bool:
    """Whether the run replaces finished files when it saves: ``overwrite``, or a resume whose existing files are
    all its own (a file that appears while it trains is then still refused: ``ui/host.publish``)."""
    if bool(cfg.overwrite):
        return True
    existing, blocking = _existing_outputs(cfg, lora_dir)
    return bool(existing) and blocking is None


def check_overwrite(cfg: Any, lora_dir: str | os.PathLike | None = None) -> None:
    """UserError naming the first finished file that already exists, unless ``cfg.overwrite`` or the run resumes
    its own state (then its files are its own)."""
    path = None if bool(cfg.overwrite) else _existing_outputs(cfg, lora_dir)[1]
    if path is not None:
        raise UserError(f"{path}: already exists; choose another output_name, or set overwrite: true "
                        "(Overwrite in the tab) to replace it")


def check_output(cfg: Any, lora_dir: str | os.PathLike | None = None) -> None:
    """Everything about where a run writes that can be known before a model loads (see the module doc)."""
    out = Path(str(cfg.output_dir)).expanduser()
    check_output_name_fits(str(cfg.output_name), out)
    check_writable(out)
    check_overwrite(cfg, lora_dir)
    if not secondary_process():
        RunLock(out).check()


def secondary_process() -> bool:
    """True in the non-main processes of ``accelerate launch``: only the main one locks (and writes)."""
    try:
        return int(os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or 0) > 0
    except ValueError:
        return False


# ---- the lock ----------------------------------------------------------------------------------

class RunLock:
    """An OS lock on ``<folder>/.lora-bridge.lock``: one run per folder, across processes and within one.

    ``flock`` on POSIX and ``msvcrt.locking`` on Windows are released by the OS when the process dies,
    so a killed run's lock is simply taken over; the file records the holder's pid for the message.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise UserError naming the folder (and the holder's pid)."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_lock(fd):
                os.close(fd)
                raise UserError(self._busy_message())
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed the file while we waited on it: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file and let go (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # while still held: nobody can lock the old file in between
        _unlock(fd)
        os.close(fd)

    def check(self) -> None:
        """UserError if another run holds the lock now (Start's check; takes nothing)."""
        if not self.path.exists():
            return
        try:
            fd = os.open(self.path, os.O_RDWR)
        except OSError:
            return
        try:
            if not _try_lock(fd):
                raise UserError(self._busy_message())
            _unlock(fd)
        finally:
            os.close(fd)

    def _busy_message(self) -> str:
        try:
            pid = self.path.read_text().strip()
        except OSError:
            pid = ""
        who = f" (process {pid})" if pid.isdigit() else ""
        return (f"{self.path.parent}: another run is writing into this folder{who}; wait for it to end "
                "or choose another output_dir")

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _unlock(fd: int) -> None:
    with contextlib.suppress(OSError):
        if sys.platform == "win32":
            import msvcrt

            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_UN)


# ---- the run's folder ---------------------------------------------------------------------------

class RunFolder:
    """Make ``output_dir`` (and ``logging_dir``), lock it for the run, tidy after a failed or cancelled one.

    What existed before is recorded first: the missing ancestors of each folder and the entries of
    each existing one. ``tidy`` then removes, where empty, only folders that appeared during the run.
    """

    def __init__(self, output_dir: str | os.PathLike, logging_dir: str | os.PathLike | None = None) -> None:
        self.output_dir = Path(output_dir).expanduser()
        roots = [self.output_dir]
        if logging_dir:
            roots.append(Path(logging_dir).expanduser())
        self._made: list[Path] = []  # folders this run created (topmost missing ancestors)
        self._before: dict[Path, set[str]] = {}  # existing folders -> their entries before the run
        for root in roots:
            top = None
            probe = root
            while not os.path.lexists(probe) and probe != probe.parent:
                top, probe = probe, probe.parent
            if top is not None:
                self._made.append(top)
            else:
                self._before[root] = _entries(root)
        self.lock = RunLock(self.output_dir)
        self.keep = False

    def __enter__(self) -> RunFolder:
        try:
            with converters.atomic.user_os_errors(fallback=self.output_dir):
                self.output_dir.mkdir(parents=True, exist_ok=True)
                if not secondary_process():
                    self.lock.acquire()
        except BaseException:
            self.tidy()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.release()
        if not self.keep:
            self.tidy()

    def tidy(self) -> None:
        """Remove the empty folders this run created; never raises (a cleanup must not hide the run's end)."""
        try:
            for root, before in self._before.items():
                for name in _entries(root) - before:
                    path = root / name
                    if path.is_dir() and not path.is_symlink():
                        _prune_empty(path)
            for top in self._made:
                _prune_empty(top)
        except Exception:
            log.warning("LoRA Bridge: could not tidy %s", self.output_dir, exc_info=True)


def _entries(folder: Path) -> set[str]:
    try:
        return set(os.listdir(folder))
    except OSError:
        return set()


def _prune_empty(root: Path) -> None:
    """Remove ``root`` and the folders under it that hold no file (all of them made by this run)."""
    if not root.is_dir() or root.is_symlink():
        return
    for dirpath, _, _ in sorted(os.walk(root), key=lambda item: len(Path(item[0]).parts), reverse=True):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)  # only succeeds when empty
