"""GSPF: a dense warm-up recording |Γ|, then the global top fraction by sensitivity, reselected on a schedule."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from torch import Tensor

from gmt.masking.base import GradientAccess
from gmt.masking.finite import check_finite
from gmt.masking.options import Option
from gmt.masking.selection import blend_scores, global_top_fraction_masks, gspf_reselection_steps, gspf_scores
from gmt.masking.strategies.fixed import FixedMaskStrategy, FixedSelection

GSPF_KEEP_RATIO = Option("gspf_keep_ratio", float, 0.003, "Fraction of selectable entries kept (trained), in (0, 1].",
                         low=0, high=1, low_open=True)  # fmt: skip
GSPF_WARMUP_STEPS = Option(
    "gspf_warmup_steps", int, 100, "Optimizer steps of full updates, recording |gradient|, before the first selection.",
    low=0,
)  # fmt: skip
GSPF_RESELECT_EVERY = Option(
    "gspf_reselect_every",
    int,
    0,
    "Reselect every this many steps after the first selection, while progress < 80% (0: never). Newly selected "
    "entries start with zero Adam moments.",
    low=0,
)
GSPF_ALPHA = Option("gspf_alpha", float, 0.5, "Reselection EMA, scores = alpha * previous + (1 - alpha) * new.",
                    low=0, high=1)  # fmt: skip


class GSPFStrategy(FixedMaskStrategy):
    """GSPF: warm up with full updates recording |Γ|; keep the global top ``gspf_keep_ratio`` of
    ``z(mean |Γ|) * tanh(|θ|)``; reselect every ``gspf_reselect_every`` steps before 80% of training.

    Steps ``[0, gspf_warmup_steps)`` are ordinary full updates. The mask is chosen at step
    ``gspf_warmup_steps`` and rechosen on schedule from the |Γ| recorded since the previous choice,
    blended with the previous scores (EMA ``gspf_alpha``). Newly selected entries start with zero
    Adam moments.
    """

    name = "gspf"
    summary = "fixed mask: the global top gspf_keep_ratio by sensitivity after a dense warm-up, reselected on schedule"
    options: ClassVar[tuple[Option, ...]] = (GSPF_KEEP_RATIO, GSPF_WARMUP_STEPS, GSPF_RESELECT_EVERY, GSPF_ALPHA)
    gspf_keep_ratio: float
    gspf_warmup_steps: int
    gspf_reselect_every: int
    gspf_alpha: float

    def dense_phase_steps(self, mask_start_step: int) -> int:
        return max(mask_start_step, self.gspf_warmup_steps)

    def setup(self, access: GradientAccess, total_steps: int = 0) -> None:
        super().setup(access, total_steps)
        self.selectable_total = sum(self.layout.numels[i] for i in self.selectable)
        self.reselection_steps = gspf_reselection_steps(total_steps, self.gspf_warmup_steps, self.gspf_reselect_every)
        self.choice_steps = [self.gspf_warmup_steps, *self.reselection_steps]
        self._sums: list[Tensor | None] | None = None
        self._recorded_steps = 0
        self.scores: list[Tensor] | None = None  # blended scores of the last selection (for the EMA)

    def target_kept_entries(self) -> int | None:
        return round(self.gspf_keep_ratio * self.selectable_total)

    def select(self, grads: Sequence[Tensor | None], step: int) -> FixedSelection | None:
        check_finite([grad for grad in grads if grad is not None], self.all_reduce)
        self._place_restored_state(grads)
        if step <= self.choice_steps[-1]:  # |Γ| still feeds a selection to come
            self._sums = self._accumulate(self._sums, grads, "abs")
            self._recorded_steps += 1
        if step < self.gspf_warmup_steps:
            return None  # warm-up: ordinary full updates
        if step in self.choice_steps or self.kept_indices is None:
            return self._reselect(grads, step)
        return FixedSelection(self.kept_indices, changed=False)

    def _reselect(self, grads: Sequence[Tensor | None], step: int) -> FixedSelection:
        # In place, one buffer per selectable entry: the |Γ| sums become the mean, then the scores,
        # then the blend with the previous scores (which are freed).
        sums = self._sums_or_zeros(self._sums, grads)
        sensitivity = [s.div_(max(self._recorded_steps, 1)) for s in sums]
        weights = self.access.weights()
        new_scores = gspf_scores(sensitivity, [weights[i] for i in self.selectable], self.all_reduce)
        scores = new_scores if self.scores is None else blend_scores(self.scores, new_scores, self.gspf_alpha)
        masks = global_top_fraction_masks(scores, self.gspf_keep_ratio, self.selectable_total, self.all_reduce)
        more_to_come = step < self.choice_steps[-1]
        # The score buffers live only while a reselection is still to come; new sums start afresh.
        self.scores = scores if more_to_come else None
        self._sums = None
        self._recorded_steps = 0
        return self._set_masks(dict(zip(self.selectable, masks)))

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "scores": self.scores,
            "sums": self._sums,
            "recorded_steps": self._recorded_steps,
        }

    def restored_state_names(self) -> tuple[str, ...]:
        return (*super().restored_state_names(), "_sums")

    def _place_restored_state(self, grads: Sequence[Tensor | None]) -> None:
        restored = self._state_restored
        super()._place_restored_state(grads)
        if restored and self.scores is not None:  # one per selectable parameter
            self.scores = [score.to(grads[index].device) if grads[index] is not None else score
                           for score, index in zip(self.scores, self.selectable, strict=True)]  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.scores, self._sums = state.get("scores"), state.get("sums")
        self._recorded_steps = state.get("recorded_steps", 0)
