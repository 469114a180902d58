"""GRFT: the top k whole rows (or columns) of every weight matrix, pulled toward the pretrained weights."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

from torch import Tensor

from gmt.masking.base import GradientAccess
from gmt.masking.options import Option
from gmt.masking.selection import line_top_masks
from gmt.masking.strategies.fixed import FixedSelection, SelectionPassStrategy

GRFT_K = Option("grft_k", int, 2, "Rows (or columns) kept per weight matrix.", low=1)
GRFT_AXIS = Option("grft_axis", str, "row", "Keep whole rows (output neurons) or columns (inputs).",
                   choices=("row", "column"))  # fmt: skip
GRFT_LAMBDA = Option(
    "grft_lambda", float, 1e-4, "Strength of the lambda * sum ||W - W_pre||^2 pull to the pretrained weights (0 off).",
    low=0,
)  # fmt: skip


class GRFTStrategy(SelectionPassStrategy):
    """GRFT: after a selection pass summing Γ², keep the top ``grft_k`` whole rows (or columns) of
    every weight matrix (of every expert, for fused MoE experts), and pull the kept entries toward
    their pretrained values: the loss gains ``grft_lambda * Σ ||W - W_pre||²``, added to Γ as its
    gradient ``2 grft_lambda (W - W_pre)`` before the mask (so clipping sees it). Entries outside
    the mask never move, so their term is 0."""

    name = "grft"
    summary = "fixed mask: the top grft_k rows/columns of every matrix, pulled to the pretrained weights"
    options: ClassVar[tuple[Option, ...]] = (GRFT_K, GRFT_AXIS, GRFT_LAMBDA)
    # GRFT regularizes and selects weight matrices only: norms and biases frozen.
    default_frozen_params = "norm|bias"
    statistic = "square"
    grft_k: int
    grft_axis: str
    grft_lambda: float

    def setup(self, access: GradientAccess, total_steps: int = 0) -> None:
        super().setup(access, total_steps)
        self.pretrained: list[Tensor | None] = []

    def target_kept_entries(self) -> int | None:
        shapes = self.layout.shapes
        if shapes is None:
            return None
        kept = 0
        for i in self.selectable:  # a tensor of 3 or more dimensions is a stack of [out, in] matrices
            *stack, rows, columns = shapes[i]
            lines, length = (rows, columns) if self.grft_axis == "row" else (columns, rows)
            kept += math.prod(stack) * min(self.grft_k, lines) * length
        return kept

    def choose(self, sums: list[Tensor]) -> dict[int, Tensor]:
        shapes, offsets = self._selected_shapes_and_offsets()
        masks = line_top_masks(sums, offsets, shapes, self.grft_k, self.grft_axis, self.all_reduce)
        return dict(zip(self.selectable, masks))

    def select(self, grads: Sequence[Tensor | None], step: int) -> FixedSelection:
        selection = super().select(grads, step)
        if step < self.selection_steps:
            return selection
        if selection.changed:  # just chosen: remember W_pre of the kept entries
            weights = self.access.weights()
            self.pretrained = [
                None if indices is None else weights[i].reshape(-1)[indices].float().clone()
                for i, indices in enumerate(self.kept_indices)
            ]
        if self.grft_lambda:
            self._add_pull_gradient(grads)
        return selection

    def _add_pull_gradient(self, grads: Sequence[Tensor | None]) -> None:
        weights = self.access.weights()
        for index in self.selectable:
            indices, grad, pretrained = self.kept_indices[index], grads[index], self.pretrained[index]
            if grad is None or indices is None or not indices.numel():
                continue
            pull = (weights[index].reshape(-1)[indices].float() - pretrained).mul_(2 * self.grft_lambda)
            grad.view(-1).index_add_(0, indices, pull.to(grad.dtype))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "pretrained": self.pretrained}

    def restored_state_names(self) -> tuple[str, ...]:
        return (*super().restored_state_names(), "pretrained")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.pretrained = state.get("pretrained", [])
