"""The interface between a training run and whoever watches it (CLI, UI, API).

A run reports through a callback of ``TrainingEvent``s and is steered through a ``TrainingControl``;
no front end parses text.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from ..cancel import CURRENT, RunCancelled, cancel_point

__all__ = ["EventCallback", "RunCancelled", "TrainResult", "TrainingControl", "TrainingEvent", "cancel_point"]

EventKind = Literal["start", "step", "sample", "saved", "log", "done", "cancelled", "error"]


@dataclass
class TrainingEvent:
    """One thing that happened in a run. Fields that do not apply stay None/empty."""

    kind: EventKind
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    loss: float | None = None
    lr: float | None = None
    eta_seconds: float | None = None
    it_per_second: float | None = None
    paths: list[str] = field(default_factory=list)  # sample images or saved files
    message: str = ""


EventCallback = Callable[[TrainingEvent], None]


class TrainingControl:
    """Thread-safe requests from a front end: stop and save, or cancel without saving."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._cancel = threading.Event()

    def request_stop(self) -> None:
        """Finish the current step, save the LoRA and end the run."""
        self._stop.set()

    def request_cancel(self) -> None:
        """End the run after the current step without writing a final LoRA."""
        self._cancel.set()

    @property
    def stop_requested(self) -> bool:
        """True once stop-and-save was asked for."""
        return self._stop.is_set()

    @property
    def cancel_requested(self) -> bool:
        """True once cancel was asked for."""
        return self._cancel.is_set()

    @contextlib.contextmanager
    def active(self) -> Iterator[TrainingControl]:
        """Make this the control that ``cancel_point()`` asks, in this thread, for the block."""
        token = CURRENT.set(self)
        try:
            yield self
        finally:
            CURRENT.reset(token)


@dataclass
class TrainResult:
    """What a finished run produced."""

    status: Literal["done", "stopped", "cancelled", "failed"]
    output_files: list[str] = field(default_factory=list)
    final_loss: float | None = None
    steps: int = 0
    message: str = ""
