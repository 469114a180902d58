"""Mask strategies: how the entries to keep at a step are chosen.

Every strategy answers one question per optimizer step: given the accumulated gradient Γ (the
local shards of it, on a sharded engine), which entries are kept? It returns a ``MaskSelection``
(or ``None`` for "keep everything"); the ``GradientMasker`` applies it the same way for every
strategy and engine.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from gmt.masking.scopes import scope_groups
from gmt.masking.threshold import ThresholdSearch, check_finite, keep_count, magnitude_keys, topk_thresholds

if TYPE_CHECKING:
    from gmt.masking.engines import GradientAccess


@dataclass(frozen=True)
class ParamLayout:
    """The trainable parameters a strategy selects from, in a fixed order on every rank."""

    names: list[str]
    numels: list[int]  # entries of each full parameter, summed over ranks when sharded
    shapes: list[tuple[int, ...]] | None = None  # full (unsharded) shapes, for per-row rules


class MaskSelection(ABC):
    """The mask of one step, produced lazily one parameter at a time."""

    @abstractmethod
    def keep(self, index: int, grad: Tensor) -> Tensor | None:
        """Boolean keep-mask for parameter ``index`` (shaped like ``grad``), or None to keep all."""

    def apply(self, index: int, grad: Tensor, want_keep: bool) -> tuple[Tensor | int, Tensor | None]:
        """Zero the dropped entries of ``grad`` in place.

        Returns the number of kept entries and, when ``want_keep``, the keep-mask (None: all kept).
        """
        keep = self.keep(index, grad)
        if keep is None:
            return grad.numel(), None
        grad.mul_(keep)
        return keep.sum(), keep if want_keep else None

    def apply_all(self, grads: Sequence[Tensor | None], want_keep: bool) -> tuple[Tensor, dict[int, Tensor]]:
        """``apply`` to every gradient (None: a parameter without one).

        Returns the kept entries per parameter (float64, on the gradients' device; 0 for a missing
        gradient) and, when ``want_keep``, the keep-masks of the parameters that have one.
        """
        counts, keeps = _KeptCounts(len(grads)), {}
        for index, grad in enumerate(grads):
            if grad is None:
                continue
            kept, keep = self.apply(index, grad, want_keep)
            counts.add(index, kept)
            if keep is not None:
                keeps[index] = keep
        return counts.merged(grads), keeps

    def nonzero_grad_masks(self, grads: Sequence[Tensor | None]) -> list[int] | None:
        """The parameters whose keep-mask is exactly the nonzero entries of their gradient after
        ``apply`` (the others are kept whole), or None where the selection can't promise that."""
        return None

    def thresholds(self) -> Tensor | None:
        """Per-scope thresholds, for telemetry; None when the strategy has none."""
        return None


class _KeptCounts:
    """Kept entries per parameter over one step: counts known on the host, and device counts
    merged in at the end with one copy (no host sync)."""

    def __init__(self, size: int) -> None:
        self.on_host = [0.0] * size
        self.indices: list[int] = []
        self.tensors: list[Tensor] = []

    def add(self, index: int, kept: Tensor | int) -> None:
        if isinstance(kept, Tensor):
            self.indices.append(index)
            self.tensors.append(kept)
        else:
            self.on_host[index] = float(kept)

    def merged(self, grads: Sequence[Tensor | None]) -> Tensor:
        """One float64 tensor, on the gradients' device."""
        device = next((grad.device for grad in grads if grad is not None), torch.device("cpu"))
        merged = torch.tensor(self.on_host, dtype=torch.float64, device=device)
        if self.tensors:
            merged[torch.tensor(self.indices, device=device)] = torch.stack(self.tensors).to(torch.float64)
        return merged


ScoreOf = Callable[[int, Tensor], Tensor]  # (parameter index, its local gradient) -> its local scores


class ThresholdSelection(MaskSelection):
    """Keep the entries whose score clears their scope's threshold; the score is |Γ| by default."""

    def __init__(
        self,
        group_thresholds: Tensor,
        group_of_param: Sequence[int],
        score_of: ScoreOf | None = None,
        dense: Sequence[bool] | None = None,
        kept_counts: tuple[list[int], Tensor] | None = None,
    ) -> None:
        self.dense = dense
        # Kept counts the search found on its way, by parameter index (-1: not counted): one read to the host.
        indices, counts = kept_counts if kept_counts is not None else ([], None)
        self.search_counts: dict[int, int] = dict(zip(indices, counts.tolist(), strict=True)) if indices else {}
        self.group_thresholds = group_thresholds
        # Compare integer keys, not floats: exact for bf16/fp16 grads against an fp32 threshold.
        self._threshold_keys = magnitude_keys(group_thresholds).tolist()
        self.group_of_param = group_of_param
        self.score_of = score_of or (lambda index, grad: grad)

        self._by_magnitude = score_of is None
        # Largest float32 below each T: ``hardshrink`` keeps |x| > it, which is |x| >= T exactly.
        self._below = torch.nextafter(group_thresholds, torch.zeros_like(group_thresholds)).tolist()
        self._threshold_values = group_thresholds.tolist()

    def keep(self, index: int, grad: Tensor) -> Tensor | None:
        if self.dense is not None and self.dense[index]:
            return None
        threshold_key = self._threshold_keys[self.group_of_param[index]]
        return (magnitude_keys(self.score_of(index, grad)) >= threshold_key).view(grad.shape)

    def apply(self, index: int, grad: Tensor, want_keep: bool) -> tuple[Tensor | int, Tensor | None]:
        if self.dense is not None and self.dense[index]:
            return grad.numel(), None
        if not self._by_magnitude or grad.dtype != torch.float32:
            return super().apply(index, grad, want_keep)
        # Scored by |grad| itself: one in-place pass, no mask tensor unless the optimizer needs one.
        group = self.group_of_param[index]
        threshold = self._threshold_values[group]
        if threshold == 0:
            return grad.numel(), None
        if threshold == float("inf"):
            grad.zero_()
            return 0, torch.zeros(grad.shape, dtype=torch.bool, device=grad.device) if want_keep else None
        torch.ops.aten.hardshrink.out(grad, self._below[group], out=grad)
        kept = self.search_counts.get(index, -1)
        if kept < 0:
            # Not counted by the search (its bracket missed). T > 0, so the kept entries are exactly
            # the nonzero ones (dropped ones are +0.0: all bits zero, so counting on the int32 view
            # is exact, and ~10x faster than on floats).
            kept = torch.count_nonzero(grad.view(torch.int32))
        return kept, (grad != 0) if want_keep else None

    def nonzero_grad_masks(self, grads: Sequence[Tensor | None]) -> list[int] | None:
        if not self._by_magnitude:
            return None  # a kept entry (by its score) may have a zero gradient
        # Kept iff |g| >= T > 0, so kept entries are nonzero and dropped ones are zeroed; with T = 0
        # (or a dense parameter) everything is kept and the parameter gets a plain update.
        return [
            index
            for index, grad in enumerate(grads)
            if grad is not None
            and not (self.dense is not None and self.dense[index])
            and self._threshold_values[self.group_of_param[index]] > 0
        ]

    def thresholds(self) -> Tensor:
        return self.group_thresholds


class MaskStrategy(ABC):
    """Base class of every strategy. Subclasses set ``name`` and implement ``select``.

    ``dense_params`` is a regular expression (``re.search`` on parameter names, "" for none):
    matching parameters are never masked, they get every update (biases under gps, say).
    """

    name: str = ""
    fixed_masks = False  # True: the mask stays fixed for stretches of training (sparse optimizer state)

    def __init__(self, dense_params: str = "") -> None:
        self.dense_params = dense_params

    def setup(self, access: GradientAccess) -> None:
        """Called once, before the first step, with the engine's view of the parameters to mask."""
        self.access = access
        self.layout = access.layout
        self.all_reduce = access.all_reduce
        pattern = re.compile(self.dense_params) if self.dense_params else None
        self.dense = [bool(pattern and pattern.search(name)) for name in self.layout.names]

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
    """Keep the top k entries of each scope by a score; subclasses say which score."""

    integer_scores = False  # scores are int32 keys (random), not floats to check for NaN/inf

    def __init__(self, mask_ratio: float, scope: str = "global", dense_params: str = "") -> None:
        super().__init__(dense_params)
        self.mask_ratio = mask_ratio
        self.scope = scope
        self.search = ThresholdSearch()  # its buffers live from step to step

    def setup(self, access: GradientAccess) -> None:
        super().setup(access)
        self.group_of_param, self.group_names = scope_groups(self.layout.names, self.scope)
        group_sizes = [0] * len(self.group_names)
        for group, numel, dense in zip(self.group_of_param, self.layout.numels, self.dense, strict=True):
            group_sizes[group] += 0 if dense else numel  # dense parameters are outside every top-k
        self.keep_counts = [keep_count(size, self.mask_ratio) for size in group_sizes]
        self.total_entries = sum(group_sizes)

    def score_function(self, grads: Sequence[Tensor | None], step: int) -> ScoreOf | None:
        """How to score a parameter's local entries at this step; None scores by |Γ| itself."""
        return None

    def select(self, grads: Sequence[Tensor | None], step: int) -> ThresholdSelection | None:
        if self.mask_ratio == 0:
            return None  # r = 0 is plain fine-tuning, exactly: no threshold pass at all
        present = [i for i, grad in enumerate(grads) if grad is not None and not self.dense[i]]
        score_of = self.score_function(grads, step)
        if score_of is not None:  # the scores don't look at Γ: check it for NaN/inf on its own
            check_finite([grads[i] for i in present], self.all_reduce)
        scores = [grads[i] if score_of is None else score_of(i, grads[i]) for i in present]
        thresholds = topk_thresholds(
            scores,
            [self.group_of_param[i] for i in present],
            self.keep_counts,
            self.all_reduce,
            check_finite=not self.integer_scores,
            search=self.search,
            total_entries=self.total_entries,
        )
        # Scored by |Γ| itself: the search counted |Γ| >= T per tensor on its way.
        kept_counts = (present, self.search.kept_counts) if score_of is None else None
        return ThresholdSelection(thresholds, self.group_of_param, score_of, self.dense, kept_counts)


class GMTStrategy(TopKStrategy):
    """Gradient-Mask Tuning: keep the entries whose |Γ| is in the top k of their scope."""

    name = "gmt"


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


class RandomStrategy(TopKStrategy):
    """Baseline: keep a uniformly random k entries of each scope, fresh every step or fixed
    (``random_fixed``). Exactly k (keys are 31-bit, ties are rare) and shard-invariant."""

    name = "random"
    integer_scores = True

    def __init__(
        self, mask_ratio: float, scope: str = "global", fixed: bool = False, seed: int = 0, dense_params: str = ""
    ) -> None:
        super().__init__(mask_ratio, scope, dense_params)
        self.fixed, self.seed = fixed, seed

    def setup(self, access: GradientAccess) -> None:
        super().setup(access)
        offsets, start = access.local_offsets(), 0
        self.first_index = []  # global index of each parameter's first local entry
        for offset, numel in zip(offsets, self.layout.numels, strict=True):
            self.first_index.append(start + offset)
            start += numel

    def score_function(self, grads: Sequence[Tensor | None], step: int) -> ScoreOf:
        seed = self.seed * 1_000_003 + (0 if self.fixed else step)

        def keys(index: int, grad: Tensor) -> Tensor:  # recomputed when needed, never stored
            first = self.first_index[index]
            return random_keys(torch.arange(first, first + grad.numel(), device=grad.device), seed)

        return keys


class MagnitudeStrategy(TopKStrategy):
    """Baseline: keep the k entries of each scope with the largest |θ|, re-chosen every step."""

    name = "magnitude"

    def score_function(self, grads: Sequence[Tensor | None], step: int) -> ScoreOf:
        weights = self.access.weights()
        return lambda index, grad: weights[index]
