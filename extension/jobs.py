"""One background training job at a time, shared by the tab, the REST API and the standalone app.

The state lives in this module (not in the WebUI's script file), so it survives Reload UI, and
every front end sees the same job. A failing run is recorded as ``failed``; it never raises into
the thread that serves the UI.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from ._converters import converters
from .errors import UserError
from .training.events import TrainingControl, TrainingEvent, TrainResult

log = logging.getLogger("lora_bridge.jobs")

Runner = Callable[[Any, Callable[[TrainingEvent], None], TrainingControl], TrainResult]

RUNNING_STATES = ("starting", "running", "stopping", "cancelling")
LOADING = "loading base model…"
MAX_LOSS_POINTS = 2000


class JobBusyError(UserError):
    """A second start while a job runs (REST: 409)."""


class JobHooks(Protocol):
    """What a host (WebUI or standalone) does around a run; every method may be a no-op."""

    def before_run(self) -> None:
        """Free VRAM and take the generation lock; raise JobBusyError if the host is busy."""

    def after_run(self) -> None:
        """Give the lock back and restore the host's model (after success, failure or cancel)."""

    def on_event(self, event: TrainingEvent) -> None:
        """Mirror progress into the host's own progress bar."""

    def after_save(self, path: str) -> str:
        """Check a saved file the way the host loads it; return a one-line report."""


class NullHooks:
    """Hooks that do nothing: the CLI-like default."""

    def before_run(self) -> None:
        """Nothing to free."""

    def after_run(self) -> None:
        """Nothing to restore."""

    def on_event(self, event: TrainingEvent) -> None:
        """No progress bar to feed."""

    def after_save(self, path: str) -> str:
        """No loader to check against."""
        return ""


def _default_runner(config: Any, callback: Callable[[TrainingEvent], None], control: TrainingControl) -> TrainResult:
    """The real engine, imported only when a job starts (torch is heavy)."""
    from .runner import run_training

    return run_training(config, callback, control)


def _to_config(config: Any) -> Any:
    """Accept a TrainConfig or a plain dict in the shared schema (UI and API send dicts)."""
    if isinstance(config, dict):
        from .config import as_config

        return as_config(config)
    return config


AdapterError = converters.AdapterError


def release_memory() -> None:
    """Give what a finished run held back to the host: collect its cycles, empty torch's caches, trim the heap."""
    try:
        gc.collect()
        torch = sys.modules.get("torch")  # never import torch just for this
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
        from .training.heap import release_free_heap

        release_free_heap("cpu")
    except Exception:
        log.debug("could not release memory after the run", exc_info=True)


def _empty_status() -> dict[str, Any]:
    return {
        "state": "idle", "step": 0, "total_steps": 0, "epoch": 0, "loss": None, "lr": None,
        "eta_seconds": None, "it_per_second": None, "losses": [], "samples": [], "saved": [],
        "checks": [], "message": "", "log": [], "started_at": None, "finished_at": None,
        "output_files": [], "job_id": 0,
    }


class JobManager:
    """Start, watch, stop and cancel the one training job of this process."""

    def __init__(self, runner: Runner | None = None) -> None:
        self._runner = runner
        self._lock = threading.Lock()
        self._status = _empty_status()
        self._thread: threading.Thread | None = None
        self._control: TrainingControl | None = None
        self._job_id = 0

    # ---- queries -------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """A JSON-ready copy of the current (or last) job's state."""
        with self._lock:
            out = dict(self._status)
            for key in ("losses", "samples", "saved", "checks", "log", "output_files"):
                out[key] = list(out[key])
        return out

    @property
    def running(self) -> bool:
        """True while a job is starting, running, stopping or cancelling."""
        with self._lock:
            return self._status["state"] in RUNNING_STATES

    # ---- control -------------------------------------------------------------------------
    def start(self, config: Any, hooks: JobHooks | None = None, runner: Runner | None = None) -> dict[str, Any]:
        """Validate ``config`` and start it in a background thread; JobBusyError if one already runs."""
        hooks = hooks or NullHooks()
        with self._lock:
            if self._status["state"] in RUNNING_STATES:
                raise JobBusyError("a training job is already running; stop or cancel it first")
            previous = self._status
            self._status = _empty_status()
            self._status["state"] = "starting"  # reserves the slot while the config is checked
            self._status["job_id"] = self._job_id + 1
            self._status["started_at"] = time.time()
        try:
            cfg = _to_config(config)
            hooks.before_run()  # here, not in the thread: a busy WebUI refuses the start at once
        except BaseException:
            with self._lock:  # a refused start leaves the last job's report as it was
                self._status = previous
            raise
        with self._lock:
            self._job_id += 1
        control = TrainingControl()
        self._control = control
        run = runner or self._runner or _default_runner
        thread = threading.Thread(target=self._run, args=(cfg, hooks, run, control), name="lora-bridge-train",
                                  daemon=True)
        self._thread = thread
        try:
            thread.start()
        except BaseException as exc:  # no thread (resource limits): the slot must not stay "starting"
            self._finish("failed", f"could not start the training thread: {exc}")
            with contextlib.suppress(Exception):
                hooks.after_run()
            raise
        return self.status()

    def stop(self) -> dict[str, Any]:
        """Ask the running job to save and end; harmless when nothing runs."""
        with self._lock:
            if self._control is not None and self._status["state"] in ("starting", "running"):
                self._control.request_stop()
                self._status["state"] = "stopping"
        return self.status()

    def cancel(self) -> dict[str, Any]:
        """Ask the running job to end without a final file; harmless when nothing runs."""
        with self._lock:
            if self._control is not None and self._status["state"] in RUNNING_STATES:
                self._control.request_cancel()
                self._status["state"] = "cancelling"
        return self.status()

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the current job's thread ends (tests, CLI); returns the status."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.status()

    # ---- the worker ----------------------------------------------------------------------
    def _run(self, cfg: Any, hooks: JobHooks, run: Runner, control: TrainingControl) -> None:
        """Thread body: the runner, then ``after_run``; every exception becomes a ``failed`` status."""
        state, message = "failed", ""
        try:
            with self._lock:
                if self._status["state"] == "starting":
                    self._status["state"] = "running"
                    self._status["message"] = LOADING

            def callback(event: TrainingEvent) -> None:
                self._on_event(event, hooks)

            result = run(cfg, callback, control)
            state = {"done": "done", "stopped": "stopped", "cancelled": "cancelled"}.get(result.status, "failed")
            message = result.message or state
            with self._lock:
                self._status["output_files"] = list(result.output_files)
                if result.final_loss is not None:
                    self._status["loss"] = result.final_loss
        except BaseException as exc:  # a failing run must never take the WebUI down
            if isinstance(exc, AdapterError):  # the user's input: one line, no traceback
                log.warning("LoRA Bridge training refused: %s", exc)
                message = str(exc)
            else:
                log.exception("LoRA Bridge training failed")
                message = f"{type(exc).__name__}: {exc}"
        finally:
            # The slot goes back to idle whatever happens here: nothing below may raise past _finish.
            try:
                hooks.after_run()
            except BaseException as exc:  # restoring the model failed: report, keep serving
                log.exception("LoRA Bridge could not restore the WebUI model")
                self._append_log(f"could not restore the WebUI model: {exc}")
            finally:
                self._control = None
                self._finish(state, message)
                release_memory()

    def _on_event(self, event: TrainingEvent, hooks: JobHooks) -> None:
        """Fold one engine event into the status; never let a UI problem kill the run."""
        checks = []
        if event.kind == "saved":
            for path in event.paths:  # a text run saves a GGUF adapter and a PEFT folder: check each
                try:
                    checks.append(hooks.after_save(path))
                except Exception as exc:
                    log.warning("LoRA Bridge: could not check %s: %s", path, exc)
                    checks.append(f"{path}: could not check: {exc}")
        with self._lock:
            st = self._status
            if event.total_steps:
                st["total_steps"] = event.total_steps
            if event.step:
                st["step"] = event.step
            if event.kind in ("start", "step"):  # 1-based, as kohya prints "epoch 1/N" (events count from 0)
                st["epoch"] = event.epoch + 1
            for key in ("lr", "eta_seconds", "it_per_second"):
                value = getattr(event, key)
                if value is not None:
                    st[key] = value
            if event.loss is not None:
                st["loss"] = event.loss
                if event.kind == "step":
                    st["losses"].append((event.step, float(event.loss)))
                    if len(st["losses"]) > MAX_LOSS_POINTS:
                        st["losses"] = st["losses"][::2]
            if event.kind == "sample":
                st["samples"].extend(event.paths)
            if event.kind == "saved":
                st["saved"].extend(event.paths)
                st["checks"].extend(c for c in checks if c)
            if event.kind == "start" and st["message"] == LOADING:
                st["message"] = ""
            if event.message:
                st["log"].append(event.message)
                st["log"] = st["log"][-200:]
                if event.kind in ("log", "error"):
                    st["message"] = event.message
        try:
            hooks.on_event(event)
        except Exception:
            log.debug("progress hook failed", exc_info=True)

    def _append_log(self, line: str) -> None:
        with self._lock:
            self._status["log"].append(line)

    def _finish(self, state: str, message: str) -> None:
        with self._lock:
            self._status["state"] = state
            self._status["message"] = message
            self._status["finished_at"] = time.time()
            self._status["eta_seconds"] = 0 if state == "done" else None  # a stopped run has no ETA


JOBS = JobManager()
"""The process-wide job manager (the tab, the REST API and the standalone app share it)."""
