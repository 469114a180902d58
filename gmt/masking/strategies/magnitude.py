"""The magnitude baseline: keep the entries with the largest |θ|, re-chosen every step."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from gmt.masking.strategies.topk import ScoreOf, TopKStrategy


class MagnitudeStrategy(TopKStrategy):
    """Baseline: keep the k entries of each scope with the largest |θ|, re-chosen every step."""

    name = "magnitude"
    summary = "baseline: the same number of entries as gmt keeps, those with the largest |weight|"

    def score_function(self, grads: Sequence[Tensor | None], step: int) -> ScoreOf:
        weights = self.access.weights()
        return lambda index, grad: weights[index]
