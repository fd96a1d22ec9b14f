"""Optimizers by name: AdamW, AdamW8bit (bitsandbytes), Prodigy (prodigyopt), Adafactor (transformers).

Optional packages are imported only when chosen, with a message naming what to install.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ..config import TrainConfig
from ..errors import UserError

OPTIMIZERS = ("adamw", "adamw8bit", "prodigy", "adafactor")


def _normalise(name: str) -> str:
    return str(name).lower().replace("_", "").replace("-", "").replace(" ", "")


def _lazy(module: str, package: str, optimizer: str) -> Any:
    """Import an optional package or raise a UserError naming it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"optimizer {optimizer!r} needs the {package!r} package: pip install {package}, "
            "or set optimizer: adamw"
        ) from None


def build_optimizer(param_groups: Iterable[dict] | Iterable[torch.nn.Parameter],
                    config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer ``config.optimizer`` over ``param_groups`` (each group may carry its own ``lr``).

    Reads ``learning_rate``, ``weight_decay``, ``adam_beta1/2``, ``adam_epsilon`` and
    ``optimizer_args`` (a dict passed through to the optimizer) from ``config``.
    """
    name = _normalise(config.optimizer)
    lr = float(config.learning_rate)
    weight_decay = float(config.weight_decay)
    betas = (float(config.adam_beta1), float(config.adam_beta2))
    eps = float(config.adam_epsilon)
    extra = dict(config.optimizer_args or {})
    items = list(param_groups)
    groups = [dict(g, params=list(g["params"])) for g in items] if items and isinstance(items[0], dict) else [
        {"params": items}
    ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise UserError("nothing to train: no LoRA parameters were created (check the target modules)")

    if name == "adamw":
        # foreach: one batched update instead of a Python loop over the many small LoRA tensors.
        kwargs = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "foreach": True} | extra
        return torch.optim.AdamW(groups, **kwargs)
    if name == "adamw8bit":
        bnb = _lazy("bitsandbytes", "bitsandbytes", "AdamW8bit")
        kwargs = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay} | extra
        return bnb.optim.AdamW8bit(groups, **kwargs)
    if name == "prodigy":
        prodigyopt = _lazy("prodigyopt", "prodigyopt", "Prodigy")
        # Prodigy estimates the step size itself: lr is a multiplier and 1.0 is the intended value.
        kwargs = {"lr": lr, "betas": betas, "weight_decay": weight_decay} | extra
        return prodigyopt.Prodigy(groups, **kwargs)
    if name == "adafactor":
        optimization = _lazy("transformers.optimization", "transformers", "Adafactor")
        kwargs = {
            "lr": lr,
            "scale_parameter": False,
            "relative_step": False,
            "warmup_init": False,
            "weight_decay": weight_decay,
        } | extra
        return optimization.Adafactor(groups, **kwargs)
    raise UserError(f"unknown optimizer {config.optimizer!r}; use one of: AdamW, AdamW8bit, "
                    "Prodigy, Adafactor")
