"""Cancel points: long phases ask whether the run they work for was cancelled, without being passed its control.

The engine makes its ``TrainingControl`` current for its thread (``training.events.TrainingControl.active``);
loops deep in data, model loading, caching and sampling call ``cancel_point()``, which raises
``RunCancelled`` once cancel was asked for and does nothing outside a run (CLI lint, tests).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Protocol


class RunCancelled(Exception):  # noqa: N818 (a signal, not an error)
    """Raised at a cancel point after cancel was asked for; the engine ends the run as ``cancelled``."""


class _Cancellable(Protocol):
    @property
    def cancel_requested(self) -> bool: ...


CURRENT: ContextVar[_Cancellable | None] = ContextVar("lora_bridge_run_control", default=None)


def cancel_point() -> None:
    """Raise ``RunCancelled`` when the current thread's run was cancelled; a no-op outside a run."""
    control = CURRENT.get()
    if control is not None and control.cancel_requested:
        raise RunCancelled("cancelled")
