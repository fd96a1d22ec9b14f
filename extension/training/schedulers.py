"""Learning-rate schedules with linear warmup, as plain ``LambdaLR`` factors.

Written here rather than taken from diffusers or transformers: the WebUIs ship different versions
of both, and a LambdaLR's state (the step count) resumes identically everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..config import TrainConfig
from ..errors import UserError

SCHEDULERS = ("constant", "linear", "cosine", "cosine_with_restarts", "polynomial")


def lr_factor(name: str, total_steps: int, warmup_steps: int = 0, num_cycles: int = 1, power: float = 1.0,
              end_factor: float = 0.0) -> Callable[[int], float]:
    """The multiplier on the base learning rate at each step for schedule ``name``."""
    total = max(1, int(total_steps))
    warmup = max(0, min(int(warmup_steps), total))

    def decay(progress: float) -> float:
        if name == "constant":
            return 1.0
        if name == "linear":
            return max(0.0, 1.0 - progress)
        if name == "cosine":
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
        if name == "cosine_with_restarts":
            if progress >= 1.0:
                return 0.0
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((num_cycles * progress) % 1.0))))
        if name == "polynomial":
            return end_factor + (1.0 - end_factor) * (1.0 - min(progress, 1.0)) ** power
        raise AssertionError(name)

    def factor(step: int) -> float:
        if step < warmup:
            return float(step + 1) / float(warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return decay(progress)

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR for ``config.lr_scheduler`` with ``lr_warmup_steps`` warmup over ``total_steps``.

    Also reads ``lr_scheduler_num_cycles`` (restarts) and ``lr_scheduler_power`` (polynomial).
    ``lr_warmup_steps`` below 1 is read as a fraction of ``total_steps``.
    """
    name = str(config.lr_scheduler).lower().replace("-", "_")
    if name == "constant_with_warmup":
        name = "constant"
    if name not in SCHEDULERS:
        raise UserError(f"unknown lr_scheduler {name!r}; use one of: {', '.join(SCHEDULERS)}")
    warmup = float(config.lr_warmup_steps)
    if 0 < warmup < 1:
        warmup = warmup * total_steps
    factor = lr_factor(
        name,
        total_steps,
        int(warmup),
        num_cycles=int(config.lr_scheduler_num_cycles),
        power=float(config.lr_scheduler_power),
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
