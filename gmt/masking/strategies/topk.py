"""Top-k strategies: keep the k entries of each scope with the largest score, re-chosen every step.

The score is |Γ| for gmt (the paper's method) and something else for the baselines at the same
ratio (``random``, ``magnitude``). A scope of n entries keeps ``n - floor(mask_ratio * n)``; the
threshold T is the exact k-th largest score, and every entry scoring >= T is kept (ties at T all
kept), which makes the mask the same however the entries are sharded (docs/design.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import Tensor

from gmt.masking.base import GradientAccess, MaskSelection, MaskStrategy, keep_count
from gmt.masking.finite import check_finite
from gmt.masking.keys import magnitude_keys
from gmt.masking.options import Option
from gmt.masking.scopes import SCOPES, scope_groups
from gmt.masking.search import ThresholdSearch, topk_thresholds

GMT_MODES = ("grad", "update")

MASK_RATIO = Option(
    "mask_ratio",
    float,
    0.2,
    "Fraction of entries DROPPED in each scope, in [0, 1) (the GMT paper's meaning): a scope of n entries keeps "
    "n - floor(mask_ratio * n). 0 is plain fine-tuning, exactly.",
    low=0,
    high=1,
    high_open=True,
)
MASK_SCOPE = Option(
    "mask_scope",
    str,
    "global",
    "What one top-k runs over: 'global' (all trainable entries), 'tensor' (each parameter on its own) or 'layer' "
    "(each transformer block; embedding and head are blocks of their own).",
    choices=SCOPES,
)
GMT_MODE = Option(
    "gmt_mode",
    str,
    "grad",
    "'grad' (the paper): dropped gradient entries are zeroed, AdamW runs as usual, so momentum and weight decay "
    "still move them. 'update': a dropped entry does not change at all in that step (no update, no decay, Adam "
    "moments untouched); needs optim adamw_torch or adamw_torch_fused.",
    choices=GMT_MODES,
)


ScoreOf = Callable[[int, Tensor], Tensor]  # (parameter index, its local gradient) -> its local scores
# A keep-mask of |Γ| is built this many entries at a time: the int32 keys of a chunk, not of the
# whole tensor (8 bytes an entry of the largest local tensor at the peak, before; docs/mask_memory.md).
KEEP_CHUNK_ENTRIES = 1 << 24


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
        if not self._by_magnitude or grad.numel() <= KEEP_CHUNK_ENTRIES:
            return (magnitude_keys(self.score_of(index, grad)) >= threshold_key).view(grad.shape)
        flat, keep = grad.reshape(-1), torch.empty(grad.numel(), dtype=torch.bool, device=grad.device)
        for start in range(0, flat.numel(), KEEP_CHUNK_ENTRIES):
            torch.ge(magnitude_keys(flat[start : start + KEEP_CHUNK_ENTRIES]), threshold_key,
                     out=keep[start : start + KEEP_CHUNK_ENTRIES])  # fmt: skip
        return keep.view(grad.shape)

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


class TopKStrategy(MaskStrategy):
    """Keep the top k entries of each scope by a score; subclasses say which score."""

    options: ClassVar[tuple[Option, ...]] = (MASK_RATIO, MASK_SCOPE, GMT_MODE)
    integer_scores = False  # scores are int32 keys (random), not floats to check for NaN/inf
    mask_ratio: float
    mask_scope: str
    gmt_mode: str

    def __init__(self, *values, **options) -> None:
        super().__init__(*values, **options)
        self.search = ThresholdSearch()  # its buffers live from step to step

    @property
    def optimizer_kind(self) -> str:
        return "masked" if self.gmt_mode == "update" else "any"

    def setup(self, access: GradientAccess, total_steps: int = 0) -> None:
        super().setup(access, total_steps)
        self.group_of_param, self.group_names = scope_groups(self.layout.names, self.mask_scope)
        group_sizes = [0] * len(self.group_names)
        for group, numel, dense in zip(self.group_of_param, self.layout.numels, self.dense, strict=True):
            group_sizes[group] += 0 if dense else numel  # dense parameters are outside every top-k
        self.keep_counts = [keep_count(size, self.mask_ratio) for size in group_sizes]
        self.total_entries = sum(group_sizes)

    def target_kept_entries(self) -> int | None:
        return sum(self.keep_counts)

    def score_function(self, grads: Sequence[Tensor | None], step: int) -> ScoreOf | None:
        """How to score a parameter's local entries at this step; None scores by |Γ| itself."""
        return None

    def select(self, grads: Sequence[Tensor | None], step: int) -> ThresholdSelection | None:
        if self.mask_ratio == 0:
            return None  # r = 0 is plain fine-tuning, exactly: no threshold pass at all
        present = [i for i, grad in enumerate(grads) if grad is not None and not self.dense[i]]
        score_of = self.score_function(grads, step)
        # The search checks what it reads for NaN/inf; the rest of Γ is checked here, every rank
        # together: the dense tensors (never searched), and all of Γ where the scores don't look at it.
        unread = [grad for grad, dense in zip(grads, self.dense, strict=True) if dense and grad is not None]
        if score_of is not None:
            unread += [grads[i] for i in present]
        if score_of is not None or any(self.dense):  # decided alike on every rank (a collective follows)
            check_finite(unread, self.all_reduce)
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
