"""What happens before the first step, shared by the trainers and the benchmarks: freeze, pick the optimizer."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from gmt.masking.base import MaskStrategy
from gmt.masking.optim import MaskedAdamW
from gmt.masking.sparse_optim import SparseMaskedAdamW

# The AdamW settings SparseMaskedAdamW has (it is AdamW without amsgrad, maximize, foreach, fused).
SPARSE_ADAMW_SETTINGS = ("lr", "betas", "eps", "weight_decay")


def freeze_parameters(named_parameters: Iterable[tuple[str, nn.Parameter]], pattern: str) -> list[str]:
    """Stop training every trainable parameter whose name matches ``pattern`` (``re.search``; ""
    freezes nothing). Run it before the optimizer and the engine exist, so that frozen parameters
    get neither gradients nor optimizer state. Returns the frozen names.

    Raises ``ValueError`` (naming ``frozen_params``) when the pattern matches every trainable parameter.
    """
    if not pattern:
        return []
    trainable = [(name, param) for name, param in named_parameters if param.requires_grad]
    frozen = [(name, param) for name, param in trainable if re.search(pattern, name)]
    if len(frozen) == len(trainable):
        raise ValueError(f"frozen_params {pattern!r} matches every trainable parameter: nothing would train")
    for _, param in frozen:
        param.requires_grad_(False)
    return [name for name, _ in frozen]


def optimizer_requirement(strategy: MaskStrategy) -> str | None:
    """What ``strategy`` needs of the optimizer, in words for error messages (None: any optimizer)."""
    if strategy.optimizer_kind == "sparse":
        return f"mask_strategy {strategy.name!r} trains a fixed subset with gmt's sparse-state AdamW"
    if strategy.optimizer_kind == "masked":
        return f"gmt_mode 'update' holds dropped entries still with gmt's masked AdamW ({strategy.name!r})"
    return None


def masking_optimizer(
    optimizer_kind: str, optimizer_cls: type, optimizer_kwargs: dict[str, Any], strategy_name: str = ""
) -> tuple[type, dict[str, Any]] | None:
    """The optimizer that takes the place of the configured AdamW, with the same settings, for a
    strategy whose ``optimizer_kind`` needs one: ``MaskedAdamW`` (``masked``) or
    ``SparseMaskedAdamW`` (``sparse``). None for ``any``: the configured optimizer is used as it is.

    Raises ``ValueError`` when the configured optimizer is not torch's AdamW (nothing else can be masked).
    """
    if optimizer_kind == "any":
        return None
    if optimizer_cls is not torch.optim.AdamW:
        raise ValueError(
            f"mask_strategy {strategy_name!r} can only mask AdamW, but the optim setting gives {optimizer_cls}"
        )
    if optimizer_kind == "sparse":
        settings = {key: value for key, value in optimizer_kwargs.items() if key in SPARSE_ADAMW_SETTINGS}
        return SparseMaskedAdamW, settings
    if optimizer_kind == "masked":
        return MaskedAdamW, dict(optimizer_kwargs)
    raise ValueError(f"unknown optimizer kind {optimizer_kind!r}")


def unwrap_optimizer(optimizer: Any) -> Any:
    """The optimizer gmt talks to, inside the wrappers of accelerate and DeepSpeed (``.optimizer``)."""
    while not isinstance(optimizer, (MaskedAdamW, SparseMaskedAdamW)) and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def scale_dense_phase(scheduler: torch.optim.lr_scheduler.LRScheduler, dense_steps: int, scale: float) -> None:
    """Multiply the learning rate of optimizer steps ``[0, dense_steps)`` by ``scale``, in place: the
    schedule (warm-up, decay) stays the configured one. ``scheduler`` must be a ``LambdaLR`` (every
    schedule ``transformers.get_scheduler`` builds but ``reduce_lr_on_plateau``)."""
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        raise ValueError(
            f"dense_phase_learning_rate scales the learning-rate schedule of the dense steps, which needs a "
            f"LambdaLR schedule; this run's is {type(scheduler).__name__} (lr_scheduler_type)"
        )

    def scaled(schedule):
        return lambda step: schedule(step) * (scale if step < dense_steps else 1.0)

    scheduler.lr_lambdas = [scaled(schedule) for schedule in scheduler.lr_lambdas]
    # LambdaLR set the rate of the step to come when it was built: set it again, scaled.
    step = scheduler.last_epoch
    for group, base, schedule in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * schedule(step)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
