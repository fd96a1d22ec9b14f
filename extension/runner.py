"""The one entry point every front end calls: ``run_training`` (API/UI) and ``train_from_cli`` (CLI).

It sits above both engines (``image/``, ``text/``) and the lifecycle pieces they share (``training/``).
"""

from __future__ import annotations

import sys
from typing import Any

from ._converters import converters
from .config import TrainConfig, as_config
from .training.events import EventCallback, TrainingControl, TrainResult
from .training.progress import TensorBoardSink, TqdmSink, fan_out
from .training.run_folder import RunFolder, check_output


def run_training(config: TrainConfig | dict[str, Any], callback: EventCallback | None = None,
                 control: TrainingControl | None = None) -> TrainResult:
    """Train what ``config.task_type`` says; events go to ``callback``; ``control`` stops or cancels.

    ``config`` is a ``TrainConfig`` or a mapping in its schema (validated here, defaults from the schema).

    Bad input raises ``UserError``; a NaN/inf loss returns a ``failed`` result with the last good
    files kept. TensorBoard scalars are written under ``logging_dir`` (default ``output_dir/logs``).

    Only one run at a time writes into an ``output_dir`` (a lock file, see ``training/run_folder.py``);
    a failed or cancelled run leaves no empty folder it made. A full disk, read-only folder or refused
    permission is a ``UserError`` naming the path.
    """
    config = as_config(config)
    fixable = converters.atomic.user_os_errors(fallback=config.output_dir)
    with RunFolder(config.output_dir, config.logging_dir) as folder, fixable:
        result = _run_engine(config, callback, control)
        folder.keep = result.status not in ("failed", "cancelled")
    return result


def _run_engine(config: TrainConfig, callback: EventCallback | None, control: TrainingControl | None) -> TrainResult:
    if config.task_type == "text-generation":
        from .text.engine import train_text

        return train_text(config, callback, control)
    from .models.flux_loader import is_flux_run

    callback = fan_out(callback, TensorBoardSink.for_run(config.logging_dir, config.output_dir))
    if is_flux_run(config):
        from .image.flux.engine import train_flux

        return train_flux(config, callback, control)
    from .image.engine import train_image

    return train_image(config, callback, control)


def train_from_cli(config_path: str, overrides: list[str]) -> int:
    """``lora-bridge train --config F [--set k=v]``: load, lint, train with a progress bar, print the result."""
    from .config import config_warnings, load_config, require_keys

    config = load_config(config_path, overrides)
    require_keys(config, config_path)
    for line in config_warnings(config):
        print(f"lora-bridge: note: {line}", file=sys.stderr)
    if config.task_type == "text-to-image":
        _lint_first(config)
    check_output(config)  # before the model loads: a read-only folder is not found after minutes
    if config.task_type == "text-generation":  # before the vocabulary and the samples are read
        from .text.engine import training_device
        from .text.memory_plan import check_fit

        check_fit(config, training_device())
    result = run_training(config, TqdmSink(desc=config.output_name))
    for path in result.output_files:
        print(f"wrote {path}")
    if result.message:
        print(result.message)
    if result.status == "failed":
        print(f"lora-bridge: training failed: {result.message}", file=sys.stderr)
        return 1
    if result.status == "cancelled":
        return 130
    return 0


def _lint_first(config: TrainConfig) -> None:
    """Run the dataset lint before any model loads; report skips, stop on fatal problems."""
    from .data.lint import enforce_bad_data, lint_dataset

    report = lint_dataset(config.train_data_dir, config)
    enforce_bad_data(report, config.bad_data)
    if report.problems:
        for line in report.lines():
            print(f"lora-bridge: lint: {line}", file=sys.stderr)
