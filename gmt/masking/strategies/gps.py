"""GPS (gradient-based parameter selection): the top k input connections of every output neuron."""

from __future__ import annotations

import math
from typing import ClassVar

from torch import Tensor

from gmt.masking.options import Option
from gmt.masking.selection import row_topk_masks
from gmt.masking.strategies.fixed import SelectionPassStrategy

GPS_K = Option("gps_k", int, 4, "Input connections kept per output neuron (row).", low=1)


class GPSStrategy(SelectionPassStrategy):
    """GPS: after a selection pass summing Γ, keep the top ``gps_k`` input connections (|Σ Γ| per
    row) of every output neuron of every weight matrix (of every expert, for fused MoE experts);
    exactly ``gps_k`` per row."""

    name = "gps"
    summary = "fixed mask: the top gps_k inputs of every neuron by summed gradient"
    options: ClassVar[tuple[Option, ...]] = (GPS_K,)
    # The authors' code: norms frozen, biases fully trainable.
    default_frozen_params = "norm"
    default_dense_params = "bias"
    statistic = "signed"  # GPS ranks |Σ Γ|: signed sums, the magnitude at the end
    gps_k: int

    def target_kept_entries(self) -> int | None:
        shapes = self.layout.shapes
        if shapes is None:
            return None
        return sum(math.prod(shapes[i][:-1]) * min(self.gps_k, shapes[i][-1]) for i in self.selectable)

    def choose(self, sums: list[Tensor]) -> dict[int, Tensor]:
        shapes, offsets = self._selected_shapes_and_offsets()
        masks = row_topk_masks(sums, offsets, shapes, self.gps_k, self.all_reduce)
        return dict(zip(self.selectable, masks))
