"""Watchers of the event interface: a tqdm bar, TensorBoard scalars, fan-out, and the NaN/inf guard."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .events import EventCallback, TrainingEvent

log = logging.getLogger("lora_bridge.training")


def fan_out(*callbacks: EventCallback | None) -> EventCallback:
    """One callback that forwards each event to every non-None callback; a failing watcher never stops training."""
    active = [cb for cb in callbacks if cb is not None]

    def emit(event: TrainingEvent) -> None:
        for cb in active:
            try:
                cb(event)
            except Exception as exc:  # noqa: BLE001 - a broken UI must not kill a long run
                print(f"lora-bridge: progress watcher failed: {exc}", file=sys.stderr)

    return emit


class TqdmSink:
    """A tqdm bar with loss, lr, it/s and ETA; prints saved files, samples and errors above it."""

    def __init__(self, desc: str = "train", file=None) -> None:
        self._bar = None
        self._desc = desc
        self._file = file

    def __call__(self, event: TrainingEvent) -> None:
        from tqdm.auto import tqdm

        if event.kind == "start":
            self._bar = tqdm(total=event.total_steps, initial=event.step, desc=self._desc, file=self._file,
                             dynamic_ncols=True)
            if event.message:
                self._bar.write(event.message)
        elif event.kind == "step" and self._bar is not None:
            self._bar.update(max(0, event.step - self._bar.n))
            post = {"loss": f"{event.loss:.4f}" if event.loss is not None else "-"}
            if event.lr is not None:
                post["lr"] = f"{event.lr:.2e}"
            self._bar.set_postfix(post, refresh=False)
        elif event.kind in ("saved", "sample", "log"):
            text = event.message or ", ".join(event.paths)
            (self._bar.write if self._bar is not None else print)(f"{event.kind}: {text}")
        elif event.kind in ("done", "cancelled", "error") and self._bar is not None:
            self._bar.close()
            self._bar = None


class TensorBoardSink:
    """Loss and learning rate as TensorBoard scalars under ``logdir``, when tensorboard is installed.

    tensorboard is optional and neither WebUI ships it: without it, a run with the default folder
    logs one DEBUG line (nothing that reads as an error on every run); a run whose ``logging_dir``
    was set on purpose says once, on stderr, that nothing is written there and how to change that.
    """

    def __init__(self, logdir: str | Path, explicit: bool = False) -> None:
        self._logdir = Path(logdir)
        self._explicit = explicit
        self._writer = None
        self._failed = False

    @classmethod
    def for_run(cls, logging_dir: str | Path | None, output_dir: str | Path) -> TensorBoardSink:
        """The sink of a run: ``logging_dir`` when set (explicitly), else ``output_dir/logs``."""
        return cls(logging_dir or Path(output_dir) / "logs", explicit=bool(logging_dir))

    def _open(self):
        if self._writer is None and not self._failed:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._logdir.mkdir(parents=True, exist_ok=True)
                self._writer = SummaryWriter(str(self._logdir))
            except ImportError as exc:
                self._failed = True
                if self._explicit:
                    print(f"lora-bridge: logging_dir is set, but tensorboard is not installed ({exc}); no TensorBoard "
                          f"logs are written to {self._logdir}. pip install tensorboard to get them", file=sys.stderr)
                else:
                    log.debug("TensorBoard logs skipped: tensorboard is not installed (%s)", exc)
            except Exception as exc:  # noqa: BLE001 - logging must never stop a run
                self._failed = True
                print(f"lora-bridge: TensorBoard logs could not be written to {self._logdir} "
                      f"({exc.__class__.__name__}: {exc}); training goes on without them", file=sys.stderr)
        return self._writer

    def __call__(self, event: TrainingEvent) -> None:
        if event.kind == "step":
            writer = self._open()
            if writer is None:
                return
            if event.loss is not None:
                writer.add_scalar("loss", event.loss, event.step)
            if event.lr is not None:
                writer.add_scalar("lr", event.lr, event.step)
        elif event.kind in ("done", "cancelled", "error") and self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None


class Throughput:
    """it/s and ETA from a moving window of step times (excludes the slow first steps after start)."""

    def __init__(self, total_steps: int, window: int = 20, clock: Callable[[], float] = time.perf_counter) -> None:
        self.total = total_steps
        self._window = window
        self._clock = clock
        self._times: list[tuple[int, float]] = []

    def update(self, step: int) -> tuple[float | None, float | None]:
        """Record that ``step`` finished now; return (it/s, eta seconds)."""
        self._times.append((step, self._clock()))
        self._times = self._times[-self._window :]
        if len(self._times) < 2:
            return None, None
        (s0, t0), (s1, t1) = self._times[0], self._times[-1]
        if t1 <= t0:
            return None, None
        rate = (s1 - s0) / (t1 - t0)
        return rate, max(0.0, (self.total - step) / rate) if rate > 0 else None


class NonFiniteLoss(RuntimeError):  # noqa: N818 - the name says what happened; shared with the text engine
    """The loss became NaN or infinite: training stops and keeps the last good checkpoint."""


def check_finite(loss: float, step: int) -> float:
    """Return ``loss`` or raise NonFiniteLoss with advice."""
    if not math.isfinite(loss):
        raise NonFiniteLoss(
            f"loss became {loss} at step {step}: stopped and kept the last good checkpoint; lower the "
            "learning rate, use bf16 instead of fp16, or enable min_snr_gamma"
        )
    return loss
