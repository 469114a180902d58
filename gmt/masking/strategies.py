"""Mask strategies: how the entries to keep at a step are chosen.

Every strategy answers one question per optimizer step: given the accumulated gradient Γ (the
local shards of it, on a sharded engine), which entries are kept? It returns a ``MaskSelection``
(or ``None`` for "keep everything"); the ``GradientMasker`` applies it the same way for every
strategy and engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from gmt.masking.scopes import scope_groups
from gmt.masking.threshold import AllReduce, keep_count, magnitude_keys, topk_thresholds


@dataclass(frozen=True)
class ParamLayout:
    """The trainable parameters a strategy selects from, in a fixed order on every rank."""

    names: list[str]
    numels: list[int]  # entries of each full parameter, summed over ranks when sharded

    @property
    def total(self) -> int:
        return sum(self.numels)


class MaskSelection(ABC):
    """The mask of one step, produced lazily one parameter at a time."""

    @abstractmethod
    def keep(self, index: int, grad: Tensor) -> Tensor | None:
        """Boolean keep-mask for parameter ``index`` (shaped like ``grad``), or None to keep all."""

    def thresholds(self) -> Tensor | None:
        """Per-scope thresholds, for telemetry; None when the strategy has none."""
        return None


class ThresholdSelection(MaskSelection):
    """Keep ``|Γ| >= T`` with one threshold per scope group."""

    def __init__(self, group_thresholds: Tensor, group_of_param: Sequence[int]) -> None:
        self.group_thresholds = group_thresholds
        # Compare integer keys, not floats: exact for bf16/fp16 grads against an fp32 threshold.
        self._threshold_keys = magnitude_keys(group_thresholds).tolist()
        self.group_of_param = group_of_param

    def keep(self, index: int, grad: Tensor) -> Tensor:
        threshold_key = self._threshold_keys[self.group_of_param[index]]
        return (magnitude_keys(grad) >= threshold_key).view(grad.shape)

    def thresholds(self) -> Tensor:
        return self.group_thresholds


class MaskStrategy(ABC):
    """Base class of every strategy. Subclasses set ``name`` and implement ``select``."""

    name: str = ""

    def setup(self, layout: ParamLayout, all_reduce: AllReduce | None) -> None:
        """Called once, before the first step, with the parameters to mask."""
        self.layout = layout
        self.all_reduce = all_reduce

    @abstractmethod
    def select(self, grads: Sequence[Tensor | None], step: int) -> MaskSelection | None:
        """Choose the mask for optimizer step ``step`` from the accumulated gradients."""

    def state_dict(self) -> dict[str, Any]:
        """State that must survive a checkpoint (fixed masks, generators, scores)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 (stateless by default)
        """Restore what ``state_dict`` returned."""


class FullStrategy(MaskStrategy):
    """Plain fine-tuning: every entry is updated (the baseline, r = 0)."""

    name = "full"

    def select(self, grads: Sequence[Tensor | None], step: int) -> None:
        return None


class GMTStrategy(MaskStrategy):
    """Gradient-Mask Tuning: keep the entries whose |Γ| is in the top k of their scope."""

    name = "gmt"

    def __init__(self, mask_ratio: float, scope: str = "global") -> None:
        self.mask_ratio = mask_ratio
        self.scope = scope

    def setup(self, layout: ParamLayout, all_reduce: AllReduce | None) -> None:
        super().setup(layout, all_reduce)
        self.group_of_param, self.group_names = scope_groups(layout.names, self.scope)
        group_sizes = [0] * len(self.group_names)
        for group, numel in zip(self.group_of_param, layout.numels, strict=True):
            group_sizes[group] += numel
        self.keep_counts = [keep_count(size, self.mask_ratio) for size in group_sizes]

    def select(self, grads: Sequence[Tensor | None], step: int) -> ThresholdSelection | None:
        if self.mask_ratio == 0:
            return None  # r = 0 is plain fine-tuning, exactly: no threshold pass at all
        present = [i for i, grad in enumerate(grads) if grad is not None]
        thresholds = topk_thresholds(
            [grads[i] for i in present],
            [self.group_of_param[i] for i in present],
            self.keep_counts,
            self.all_reduce,
        )
        return ThresholdSelection(thresholds, self.group_of_param)


STRATEGIES: dict[str, type[MaskStrategy]] = {cls.name: cls for cls in (GMTStrategy, FullStrategy)}


def build_strategy(mask_strategy: str, mask_ratio: float = 0.0, mask_scope: str = "global") -> MaskStrategy:
    """Construct the strategy named by the ``mask_strategy`` setting."""
    if mask_strategy == "gmt":
        return GMTStrategy(mask_ratio, mask_scope)
    if mask_strategy == "full":
        return FullStrategy()
    raise ValueError(f"mask_strategy must be one of {sorted(STRATEGIES)}, got {mask_strategy!r}")
