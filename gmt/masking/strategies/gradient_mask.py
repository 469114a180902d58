"""Gradient-Mask Tuning (Li et al., AAAI 2025): keep the top-k |Γ| of each scope at every step."""

from __future__ import annotations

from gmt.masking.strategies.topk import TopKStrategy


class GMTStrategy(TopKStrategy):
    """Gradient-Mask Tuning: keep the entries whose |Γ| is in the top k of their scope."""

    name = "gmt"
    summary = "Gradient-Mask Tuning, the top-k |gradient| of the accumulated gradient at every step"
