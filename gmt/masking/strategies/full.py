"""Plain fine-tuning: every entry updated, the baseline every method is measured against."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from gmt.masking.base import MaskStrategy


class FullStrategy(MaskStrategy):
    """Plain fine-tuning: every entry is updated (the baseline, r = 0)."""

    name = "full"
    summary = "plain fine-tuning (every entry updated)"

    def dense_phase_steps(self, mask_start_step: int) -> int:
        return 0  # every step is dense: there is no masked phase to set apart

    def select(self, grads: Sequence[Tensor | None], step: int) -> None:
        return None
