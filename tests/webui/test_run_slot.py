"""Issue 22 (#3, #4, #8, #9): a run tidies only what it made, the job slot always returns, one run per
folder, no silent replacement of a LoRA; the Start checks that catch these before anything loads."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from extension.errors import UserError
from extension.jobs import RUNNING_STATES, JobManager
from extension.ui.host import Host

ROOT = Path(__file__).resolve().parents[2]


def _start(host, dataset, tiny_base, **extra):
    return host.start_job({"base_model": str(tiny_base), "train_data_dir": str(dataset), "output_name": "job",
                           **extra})


# ---- #3: cleanup of a failed or cancelled run -----------------------------------------------------

@pytest.mark.parametrize("how", ["failed", "cancelled"])
def test_failed_or_cancelled_run_keeps_empty_folders_it_did_not_make(how, tmp_path, runner_factory):
    out = tmp_path / "out"
    (out / "old_empty" / "deeper").mkdir(parents=True)
    (out / "keep_me").mkdir()
    jobs = JobManager(runner=runner_factory(steps=300, delay=0.02, fail=how == "failed"))
    jobs.start({"base_model": "x", "train_data_dir": "y", "output_dir": str(out), "output_name": "job"})
    time.sleep(0.2)  # the fake engine is looping (cancelled) or failed at step 2
    if how == "cancelled":
        jobs.cancel()
    assert jobs.wait(30)["state"] == how
    empty = sorted(p.name for p in out.iterdir() if p.is_dir() and not any(p.iterdir()))
    assert empty == ["keep_me"]  # the run's own empty folders went, the user's stayed
    assert (out / "old_empty" / "deeper").is_dir()
    assert not (out / ".lora-bridge.lock").exists()


def test_real_run_failing_at_once_leaves_the_folder_as_it_was(tmp_path):
    """The real runner: a base that cannot be read fails the run; pre-existing empty folders stay
    (the report: ``output_dir: /etc`` lost 28 empty folders)."""
    out = tmp_path / "etc_like"
    for name in ("a", "b/c", "d"):
        (out / name).mkdir(parents=True)
    (tmp_path / "data").mkdir()
    jobs = JobManager()
    jobs.start({"base_model": str(tmp_path / "missing.safetensors"), "train_data_dir": str(tmp_path / "data"),
                "output_dir": str(out), "output_name": "x"})
    assert jobs.wait(120)["state"] == "failed"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["a", "b", "b/c", "d"]


# ---- #4: the job slot returns to idle on every path -----------------------------------------------

def test_long_output_name_is_refused_at_start(tmp_path, dataset, tiny_base, fake_runner):
    host = Host(output_dir=tmp_path / "loras", jobs=JobManager(runner=fake_runner), extra_folders=[tmp_path])
    with pytest.raises(UserError, match="too long|longer than 255 bytes") as info:
        _start(host, dataset, tiny_base, output_name="n" * 300)
    assert "\n" not in str(info.value)
    assert host.jobs.status()["state"] == "idle"
    assert not (tmp_path / "loras").exists()  # nothing made by a refused start


def test_name_that_only_its_temp_names_overflow_is_refused(tmp_path, dataset, tiny_base, fake_runner):
    """240 bytes fit NAME_MAX, but ``.NAME-000100.safetensors.<pid>-XXXXXXXX.tmp`` does not."""
    host = Host(output_dir=tmp_path / "loras", jobs=JobManager(runner=fake_runner), extra_folders=[tmp_path])
    with pytest.raises(UserError, match="too long"):
        _start(host, dataset, tiny_base, output_name="n" * 240)
    _start(host, dataset, tiny_base, output_name="n" * 200)
    assert host.jobs.wait(30)["state"] == "done"


def _refuse_writes_under(monkeypatch, folder: Path, code: int) -> None:
    """Root ignores chmod, so a folder the user may not write is simulated where the probe and mkdir write."""
    real_mkstemp, real_mkdir = tempfile.mkstemp, os.mkdir

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and str(dir).startswith(str(folder)):
            raise OSError(code, os.strerror(code), str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    def mkdir(path, *args, **kwargs):
        if str(path).startswith(str(folder)):
            raise OSError(code, os.strerror(code), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "mkdir", mkdir)


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_unwritable_output_dir_is_refused_at_start(code, tmp_path, dataset, tiny_base, fake_runner, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    host = Host(output_dir=tmp_path / "loras", jobs=JobManager(runner=fake_runner), extra_folders=[tmp_path])
    _refuse_writes_under(monkeypatch, locked, code)
    with pytest.raises(UserError, match=f"^{locked / 'run'}: cannot write") as info:
        _start(host, dataset, tiny_base, output_dir=str(locked / "run"))
    assert "\n" not in str(info.value)
    assert host.jobs.status()["state"] == "idle"


def test_writability_check_leaves_no_folder_behind(tmp_path):
    from extension.training.run_folder import check_writable

    check_writable(tmp_path / "a" / "b" / "c")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        check_writable(tmp_path / "file" / "run")


def test_slot_returns_when_the_run_folder_itself_fails(tmp_path, runner_factory):
    """The reported wedge: a 300-character folder name, the run fails, the cleanup must not raise again."""
    jobs = JobManager(runner=runner_factory(fail=True))
    out = tmp_path / ("x" * 300)
    jobs.start({"base_model": "x", "train_data_dir": "y", "output_dir": str(out), "output_name": "job"})
    st = jobs.wait(30)
    assert st["state"] == "failed" and st["state"] not in RUNNING_STATES
    assert st["message"].startswith(str(out)) and "too long" in st["message"]
    jobs.start({"base_model": "x", "train_data_dir": "y", "output_dir": str(tmp_path / "ok"), "output_name": "job"},
               runner=runner_factory())
    assert jobs.wait(30)["state"] == "done"


def test_slot_returns_when_the_host_restore_raises(tmp_path, runner_factory):
    class BadHooks:
        def before_run(self):
            pass

        def after_run(self):
            raise SystemExit("host restore exploded")  # not an Exception: the old handler let it through

        def on_event(self, event):
            pass

        def after_save(self, path):
            return ""

    jobs = JobManager(runner=runner_factory())
    jobs.start({"base_model": "x", "train_data_dir": "y", "output_dir": str(tmp_path / "o"), "output_name": "j"},
               hooks=BadHooks())
    st = jobs.wait(30)
    assert st["state"] == "done" and any("host restore exploded" in line for line in st["log"])
    assert not jobs.running


def test_os_error_in_a_run_is_one_line_naming_the_path(tmp_path):
    """ENOSPC/EROFS deep in a run: ``failed`` with the path, not ``OSError: [Errno 28] ...``."""
    from extension.training.events import TrainResult

    target = tmp_path / "out" / "job.safetensors"

    def runner(cfg, callback, control):
        from extension.runner import RunFolder, converters

        with RunFolder(cfg.output_dir) as folder, converters.atomic.user_os_errors(fallback=cfg.output_dir):
            folder.keep = True
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        return TrainResult("done")

    jobs = JobManager(runner=runner)
    jobs.start({"base_model": "x", "train_data_dir": "y", "output_dir": str(tmp_path / "out"), "output_name": "job"})
    st = jobs.wait(30)
    assert st["state"] == "failed"
    assert st["message"] == f"{target}: no space left on the device; free some space or choose another folder"


# ---- #8: one run per folder ------------------------------------------------------------------------

def test_second_run_on_the_same_folder_is_refused(tmp_path, dataset, tiny_base, runner_factory):
    run_dir = tmp_path / "shared_run"
    first = Host(output_dir=tmp_path / "a", jobs=JobManager(runner=runner_factory(steps=300, delay=0.02)),
                 extra_folders=[tmp_path])
    second = Host(output_dir=tmp_path / "b", jobs=JobManager(runner=runner_factory()), extra_folders=[tmp_path])
    _start(first, dataset, tiny_base, output_dir=str(run_dir))
    deadline = time.time() + 20
    while not (run_dir / ".lora-bridge.lock").exists() and time.time() < deadline:
        time.sleep(0.02)
    busy = f"^{run_dir}: another run is writing into this folder \\(process {os.getpid()}\\)"
    with pytest.raises(UserError, match=busy):
        _start(second, dataset, tiny_base, output_dir=str(run_dir), output_name="other")
    first.jobs.cancel()
    assert first.jobs.wait(30)["state"] == "cancelled"
    assert not (run_dir / ".lora-bridge.lock").exists()
    _start(second, dataset, tiny_base, output_dir=str(run_dir), output_name="other")
    assert second.jobs.wait(30)["state"] == "done"


def test_lock_of_another_process_refuses_and_a_killed_holder_frees_it(tmp_path):
    from extension.training.run_folder import RunLock

    folder = tmp_path / "run"
    folder.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from extension.training.run_folder import RunLock
        RunLock({str(folder)!r}).acquire()
        print("held", flush=True)
        time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"another run is writing into this folder \\(process {holder.pid}\\)"):
            RunLock(folder).acquire()
    finally:
        holder.kill()  # SIGKILL: no cleanup in the holder
        holder.wait()
    assert (folder / ".lora-bridge.lock").exists()  # stale file of a dead process ...
    with RunLock(folder):  # ... is taken over
        pass
    assert not (folder / ".lora-bridge.lock").exists()


def test_second_lock_in_the_same_process_is_refused(tmp_path):
    from extension.training.run_folder import RunLock

    with RunLock(tmp_path), pytest.raises(UserError, match="another run"):
        RunLock(tmp_path).acquire()
    with RunLock(tmp_path):
        pass


# ---- #9: no silent replacement in the Lora folder --------------------------------------------------

def test_existing_lora_is_not_replaced_without_overwrite(tmp_path, dataset, tiny_base, fake_runner):
    loras = tmp_path / "loras"
    loras.mkdir()
    existing = loras / "job.safetensors"
    existing.write_bytes(b"the user's own LoRA")
    host = Host(output_dir=loras, jobs=JobManager(runner=fake_runner), extra_folders=[tmp_path])
    with pytest.raises(UserError, match=f"^{existing}: already exists; .*overwrite: true") as info:
        _start(host, dataset, tiny_base)
    assert "\n" not in str(info.value)
    assert existing.read_bytes() == b"the user's own LoRA" and host.jobs.status()["state"] == "idle"
    _start(host, dataset, tiny_base, overwrite=True)
    assert host.jobs.wait(30)["state"] == "done"
    assert existing.read_bytes() != b"the user's own LoRA" and host.published == [str(existing)]


def test_publish_refuses_a_file_that_appeared_during_the_run(tmp_path):
    from extension.ui.host import publish

    src = tmp_path / "run" / "job.safetensors"
    src.parent.mkdir()
    src.write_bytes(b"new")
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "job.safetensors").write_bytes(b"old")
    with pytest.raises(UserError, match="already exists"):
        publish(src, tmp_path / "loras", overwrite=False)
    assert (tmp_path / "loras" / "job.safetensors").read_bytes() == b"old"


def test_overwrite_is_a_basic_checkbox_of_both_forms():
    from extension.ui.form import schema_fields

    for task in ("text-to-image", "text-generation"):
        fields = schema_fields(task)
        field = next(f for f in fields if f.name == "overwrite")
        assert field.kind == "bool" and field.default is False and field.basic
        assert fields.index(field) == 0  # the first of the basic settings
        assert "overwrite" not in field.help.lower() or "Start refuses" in field.help
