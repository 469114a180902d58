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
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from gmt.masking.scopes import scope_groups
from gmt.masking.threshold import check_finite, keep_count, magnitude_keys, topk_thresholds

if TYPE_CHECKING:
    from gmt.masking.engines import GradientAccess


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

    def setup(self, access: GradientAccess) -> None:
        """Called once, before the first step, with the engine's view of the parameters to mask."""
        self.access = access
        self.layout = access.layout
        self.all_reduce = access.all_reduce

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


class TopKStrategy(MaskStrategy):
    """Keep the top k entries of each scope by some score; subclasses say which score."""

    def __init__(self, mask_ratio: float, scope: str = "global") -> None:
        self.mask_ratio = mask_ratio
        self.scope = scope

    def setup(self, access: GradientAccess) -> None:
        super().setup(access)
        self.group_of_param, self.group_names = scope_groups(self.layout.names, self.scope)
        group_sizes = [0] * len(self.group_names)
        for group, numel in zip(self.group_of_param, self.layout.numels, strict=True):
            group_sizes[group] += numel
        self.keep_counts = [keep_count(size, self.mask_ratio) for size in group_sizes]


class GMTStrategy(TopKStrategy):
    """Gradient-Mask Tuning: keep the entries whose |Γ| is in the top k of their scope."""

    name = "gmt"

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


def random_keys(global_index: Tensor, seed: int) -> Tensor:
    """31-bit pseudo-random int32 keys, a pure function of (entry index, seed): the same entry
    gets the same key on every rank, however the parameter is sharded (splitmix64 finalizer)."""
    x = global_index.to(torch.int64) + _wrap_int64(seed * _GOLDEN)
    for shift, multiplier in ((30, _MIX1), (27, _MIX2)):
        x = (x ^ _logical_shift(x, shift)) * multiplier  # int64 products wrap, as the hash wants
    x = x ^ _logical_shift(x, 31)
    return (_logical_shift(x, 33) & 0x7FFFFFFF).to(torch.int32)


_GOLDEN, _MIX1, _MIX2 = -7046029254386353131, -4658895280553007687, -7723592293110705685  # as int64


def _wrap_int64(value: int) -> int:
    return (value + 2**63) % 2**64 - 2**63


def _logical_shift(x: Tensor, shift: int) -> Tensor:
    return (x >> shift) & ((1 << (64 - shift)) - 1)


class RandomSelection(MaskSelection):
    """Keep entries whose random key clears the scope's threshold key; keys are recomputed, not stored."""

    def __init__(self, strategy: RandomStrategy, seed: int, threshold_keys: list[int]) -> None:
        self.strategy, self.seed, self.threshold_keys = strategy, seed, threshold_keys

    def keep(self, index: int, grad: Tensor) -> Tensor:
        keys = self.strategy.keys(index, grad, self.seed)
        return (keys >= self.threshold_keys[self.strategy.group_of_param[index]]).view(grad.shape)


class RandomStrategy(TopKStrategy):
    """Baseline: keep a uniformly random k entries of each scope, fresh every step or fixed
    (``random_fixed``). Exactly k (keys are 31-bit, ties are rare) and shard-invariant."""

    name = "random"

    def __init__(self, mask_ratio: float, scope: str = "global", fixed: bool = False, seed: int = 0) -> None:
        super().__init__(mask_ratio, scope)
        self.fixed, self.seed = fixed, seed

    def setup(self, access: GradientAccess) -> None:
        super().setup(access)
        self.offsets = access.local_offsets()
        starts, total = [], 0
        for numel in self.layout.numels:  # each parameter's entries get their own index range
            starts.append(total)
            total += numel
        self.param_starts = starts

    def keys(self, index: int, grad: Tensor, seed: int) -> Tensor:
        first = self.param_starts[index] + self.offsets[index]
        return random_keys(torch.arange(first, first + grad.numel(), device=grad.device), seed)

    def select(self, grads: Sequence[Tensor | None], step: int) -> RandomSelection | None:
        if self.mask_ratio == 0:
            return None
        seed = self.seed * 1_000_003 + (0 if self.fixed else step)
        present = [i for i, grad in enumerate(grads) if grad is not None]
        check_finite([grads[i] for i in present], self.all_reduce)  # the keys don't look at Γ
        thresholds = topk_thresholds(
            [self.keys(i, grads[i], seed) for i in present],
            [self.group_of_param[i] for i in present],
            self.keep_counts,
            self.all_reduce,
            check_finite=False,
        )
        # The threshold comes back as the float whose bits are the key; read the key back.
        return RandomSelection(self, seed, thresholds.view(torch.int32).tolist())


class MagnitudeSelection(ThresholdSelection):
    """Keep ``|θ| >= T``: the threshold selection, compared on the weights instead of Γ."""

    def __init__(self, group_thresholds: Tensor, group_of_param: Sequence[int], weights: Sequence[Tensor]) -> None:
        super().__init__(group_thresholds, group_of_param)
        self.weights = weights

    def keep(self, index: int, grad: Tensor) -> Tensor:
        return super().keep(index, self.weights[index]).view(grad.shape)


class MagnitudeStrategy(TopKStrategy):
    """Baseline: keep the k entries of each scope with the largest |θ|, re-chosen every step."""

    name = "magnitude"

    def select(self, grads: Sequence[Tensor | None], step: int) -> MagnitudeSelection | None:
        if self.mask_ratio == 0:
            return None
        present = [i for i, grad in enumerate(grads) if grad is not None]
        check_finite([grads[i] for i in present], self.all_reduce)  # the scores don't look at Γ
        weights = self.access.weights()
        thresholds = topk_thresholds(
            [weights[i] for i in present],
            [self.group_of_param[i] for i in present],
            self.keep_counts,
            self.all_reduce,
        )
        return MagnitudeSelection(thresholds, self.group_of_param, weights)


STRATEGIES: dict[str, type[MaskStrategy]] = {
    cls.name: cls for cls in (GMTStrategy, FullStrategy, RandomStrategy, MagnitudeStrategy)
}


def build_strategy(
    mask_strategy: str,
    mask_ratio: float = 0.0,
    mask_scope: str = "global",
    random_fixed: bool = False,
    seed: int = 0,
) -> MaskStrategy:
    """Construct the strategy named by the ``mask_strategy`` setting."""
    if mask_strategy == "gmt":
        return GMTStrategy(mask_ratio, mask_scope)
    if mask_strategy == "random":
        return RandomStrategy(mask_ratio, mask_scope, fixed=random_fixed, seed=seed)
    if mask_strategy == "magnitude":
        return MagnitudeStrategy(mask_ratio, mask_scope)
    if mask_strategy == "full":
        return FullStrategy()
    raise ValueError(f"mask_strategy must be one of {sorted(STRATEGIES)}, got {mask_strategy!r}")
