"""The one-job-at-a-time manager: start, status, stop, cancel, refusal, failure isolation."""

from __future__ import annotations

import pytest

from extension.jobs import JobBusyError, JobManager


class RecordingHooks:
    def __init__(self):
        self.calls = []

    def before_run(self):
        self.calls.append("before")

    def after_run(self):
        self.calls.append("after")

    def on_event(self, event):
        self.calls.append(event.kind)

    def after_save(self, path):
        return f"checked {path}"


def config(tmp_path, **extra):
    return {"base_model": "x", "train_data_dir": "y", "output_dir": str(tmp_path / "out"), "output_name": "job",
            **extra}


def test_run_reports_progress_and_result(tmp_path, fake_runner):
    jobs, hooks = JobManager(runner=fake_runner), RecordingHooks()
    jobs.start(config(tmp_path), hooks=hooks)
    st = jobs.wait(30)
    assert st["state"] == "done"
    assert st["step"] == st["total_steps"] == 6
    assert [s for s, _ in st["losses"]] == [1, 2, 3, 4, 5, 6]
    assert st["losses"][-1][1] == pytest.approx(1 / 6)
    assert len(st["samples"]) == 1 and st["saved"][0].endswith("job.safetensors")
    assert st["checks"] == [f"checked {st['saved'][0]}"]
    assert hooks.calls[0] == "before" and hooks.calls[-1] == "after"


def test_second_start_is_refused_and_stop_saves(tmp_path, runner_factory):
    jobs = JobManager(runner=runner_factory(steps=200, delay=0.02))
    jobs.start(config(tmp_path))
    with pytest.raises(JobBusyError, match="already running"):
        jobs.start(config(tmp_path))
    assert jobs.stop()["state"] == "stopping"
    st = jobs.wait(30)
    assert st["state"] == "stopped" and st["saved"] and st["step"] < 200


def test_cancel_writes_no_final_file(tmp_path, runner_factory):
    jobs = JobManager(runner=runner_factory(steps=200, delay=0.02))
    jobs.start(config(tmp_path))
    jobs.cancel()
    st = jobs.wait(30)
    assert st["state"] == "cancelled" and not st["saved"]
    assert not (tmp_path / "out" / "job.safetensors").exists()


def test_failing_run_is_contained_and_hooks_restore(tmp_path, runner_factory):
    jobs, hooks = JobManager(runner=runner_factory(fail=True)), RecordingHooks()
    jobs.start(config(tmp_path), hooks=hooks)
    st = jobs.wait(30)
    assert st["state"] == "failed" and "boom at step 2" in st["message"]
    assert hooks.calls[-1] == "after"
    jobs.start(config(tmp_path), hooks=hooks, runner=runner_factory())  # the manager still works
    assert jobs.wait(30)["state"] == "done"


def test_bad_config_is_refused_before_a_thread_starts(tmp_path, fake_runner):
    jobs = JobManager(runner=fake_runner)
    with pytest.raises(Exception, match="lora_rnak|unknown key"):
        jobs.start({**config(tmp_path), "lora_rnak": 4})
    assert jobs.status()["state"] == "idle" and not jobs.running


@pytest.mark.parametrize("user_error", [True, False])
def test_user_errors_log_one_warning_internal_errors_a_traceback(tmp_path, caplog, user_error):
    """#10.10: a failed run's log: one WARNING line for bad input, ERROR with traceback for a bug."""
    import logging

    from extension.errors import UserError

    def runner(cfg, callback, control):
        if user_error:
            raise UserError("data.txt: no training text; add some")
        raise RuntimeError("internal bug")

    jobs = JobManager(runner=runner)
    with caplog.at_level(logging.WARNING, logger="lora_bridge"):
        jobs.start(config(tmp_path))
        st = jobs.wait(30)
    assert st["state"] == "failed"
    records = [r for r in caplog.records if r.name.startswith("lora_bridge")]
    assert len(records) == 1
    if user_error:
        assert records[0].levelname == "WARNING" and records[0].exc_info is None
        assert st["message"] == "data.txt: no training text; add some"
    else:
        assert records[0].levelname == "ERROR" and records[0].exc_info is not None
        assert st["message"] == "RuntimeError: internal bug"
