"""Fixed-mask strategies: GPS, GRFT and GSPF.

Each gathers gradient statistics for a while, chooses a set of entries from them and then trains
only those: the mask stays fixed (until GSPF reselects), so the optimizer keeps state for the kept
entries only (``SparseMaskedAdamW``) and entries outside the mask never move (no update, no decay).

Phases, in optimizer steps (0-based), on every engine (Γ is the accumulated, reduced gradient):

- ``gps``, ``grft``: steps ``[0, selection_steps)`` are the selection pass on the pretrained
  weights: Γ is summed (gps) or squared and summed (grft), and *nothing* is updated. The mask is
  chosen at step ``selection_steps`` and trained from that step on. The selection steps count
  toward ``max_steps`` (and the learning-rate schedule), like any other step.
- ``gspf``: steps ``[0, warmup_steps)`` are the warm-up with ordinary full updates, recording |Γ|.
  The mask is chosen at step ``warmup_steps`` and rechosen every ``reselect_every`` steps while
  training progress is below 80%, from the |Γ| recorded since the previous choice, blended with the
  previous scores (EMA ``alpha``). Newly selected entries start with zero Adam moments.

Which parameters take part: ``dense_params`` (a regex) are trained fully, never masked. For gps
and grft, which select inside weight matrices, every parameter that is not 2-D is dense too.
Parameters to leave out altogether are frozen by the trainer (``frozen_params``) before training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from gmt.masking.selection import (
    blend_scores,
    global_top_fraction_masks,
    gspf_reselection_steps,
    gspf_scores,
    line_top_masks,
    row_topk_masks,
)
from gmt.masking.strategies import MaskSelection, MaskStrategy
from gmt.masking.threshold import check_finite

if TYPE_CHECKING:
    from gmt.masking.engines import GradientAccess


class FixedSelection(MaskSelection):
    """A fixed mask, stored as the sorted flat indices of the kept local entries of each parameter.

    ``kept_indices[i]`` is None for a dense parameter (every entry kept). ``changed`` is True on
    the step the mask was (re)chosen: the masker then hands it to the optimizer's sparse state.
    """

    def __init__(self, kept_indices: Sequence[Tensor | None], changed: bool) -> None:
        self.kept_indices = kept_indices
        self.changed = changed

    def keep(self, index: int, grad: Tensor) -> Tensor | None:
        indices = self.kept_indices[index]
        if indices is None:
            return None
        mask = torch.zeros(grad.numel(), dtype=torch.bool, device=grad.device)
        mask[indices] = True
        return mask.view(grad.shape)


class FixedMaskStrategy(MaskStrategy):
    """Base of the strategies whose mask stays fixed between (re)selections."""

    fixed_masks = True
    matrices_only = False  # gps/grft select inside 2-D weights; other parameters are dense

    def setup(self, access: GradientAccess) -> None:
        super().setup(access)
        shapes = self.layout.shapes or [()] * len(self.layout.names)
        if self.matrices_only:
            self.dense = [dense or len(shape) != 2 for dense, shape in zip(self.dense, shapes)]
        self.selectable = [i for i, dense in enumerate(self.dense) if not dense]
        self.offsets = access.local_offsets()
        self.kept_indices: list[Tensor | None] | None = None

    def _nothing_kept(self, grads: Sequence[Tensor | None]) -> list[Tensor | None]:
        # Every parameter, dense ones included, is held still (the selection pass updates nothing).
        return [torch.empty(0, dtype=torch.int64, device=self._device(grads)) for _ in grads]

    def _set_masks(self, masks: dict[int, Tensor]) -> FixedSelection:
        self.kept_indices = [None] * len(self.layout.names)
        for index, mask in masks.items():
            self.kept_indices[index] = mask.reshape(-1).nonzero().squeeze(1)
        return FixedSelection(self.kept_indices, changed=True)

    @staticmethod
    def _device(grads: Sequence[Tensor | None]) -> torch.device:
        return next((grad.device for grad in grads if grad is not None), torch.device("cpu"))

    def _accumulate(self, sums: list[Tensor | None] | None, grads: Sequence[Tensor | None], power: int):
        """Add |Γ| (power 1) or Γ² (power 2) of the selectable parameters to running sums (fp32)."""
        if sums is None:
            sums = [None] * len(grads)
        for index in self.selectable:
            grad = grads[index]
            if grad is None:
                continue
            term = grad.float().abs() if power == 1 else grad.float().square()
            sums[index] = term if sums[index] is None else sums[index].add_(term)
        return sums

    def _sums_or_zeros(self, sums: list[Tensor | None], grads: Sequence[Tensor | None]) -> list[Tensor]:
        """The running sums of the selectable parameters (zeros for one that never got a gradient)."""
        out = []
        for index in self.selectable:
            if sums[index] is None:
                grad = grads[index]
                sums[index] = torch.zeros(
                    grad.shape if grad is not None else (0,), dtype=torch.float32, device=self._device(grads)
                )
            out.append(sums[index])
        return out

    def kept_count(self) -> int:
        """Entries kept on this rank (all entries of dense parameters included)."""
        if self.kept_indices is None:
            return 0
        return sum(
            numel if indices is None else int(indices.numel())
            for indices, numel in zip(self.kept_indices, self.layout.numels)
        )

    def state_dict(self) -> dict[str, Any]:
        return {"kept_indices": self.kept_indices}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kept_indices = state.get("kept_indices")


class GPSStrategy(FixedMaskStrategy):
    """GPS: after a selection pass summing Γ, keep the top ``k`` input connections (|Σ Γ| per
    row) of every output neuron of every weight matrix; exactly ``k`` per row."""

    name = "gps"
    matrices_only = True

    def __init__(self, k: int, selection_steps: int = 1, dense_params: str = "") -> None:
        super().__init__(dense_params)
        self.k, self.selection_steps = k, selection_steps
        self._sums: list[Tensor | None] | None = None

    def select(self, grads: Sequence[Tensor | None], step: int) -> FixedSelection:
        check_finite([grad for grad in grads if grad is not None], self.all_reduce)
        if step < self.selection_steps:
            self._sums = self._sum_gradients(grads)
            if self.kept_indices is None:
                self.kept_indices = self._nothing_kept(grads)
                return FixedSelection(self.kept_indices, changed=True)
            return FixedSelection(self.kept_indices, changed=False)
        if self._sums is not None:  # first step after the selection pass: choose
            sums = self._sums_or_zeros(self._sums, grads)
            self._sums = None
            return self._set_masks(self._choose(sums))
        return FixedSelection(self.kept_indices, changed=False)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "sums": self._sums}  # mid-selection-pass sums

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._sums = state.get("sums")

    def _sum_gradients(self, grads: Sequence[Tensor | None]) -> list[Tensor | None]:
        sums = self._sums or [None] * len(grads)
        for index in self.selectable:  # GPS ranks |Σ Γ|: signed sums, the magnitude at the end
            grad = grads[index]
            if grad is not None:
                sums[index] = grad.float().clone() if sums[index] is None else sums[index].add_(grad.float())
        return sums

    def _choose(self, sums: list[Tensor]) -> dict[int, Tensor]:
        shapes = [self.layout.shapes[i] for i in self.selectable]
        offsets = [self.offsets[i] for i in self.selectable]
        masks = row_topk_masks(sums, offsets, shapes, self.k, self.all_reduce)
        return dict(zip(self.selectable, masks))


class GRFTStrategy(FixedMaskStrategy):
    """GRFT: after a selection pass summing Γ², keep the top ``k`` whole rows (or columns) of every
    weight matrix, and pull the kept entries toward their pretrained values: the loss gains
    ``lambda_ * Σ ||W - W_pre||²``, added to Γ as its gradient ``2 lambda_ (W - W_pre)`` before
    the mask (so clipping sees it). Entries outside the mask never move, so their term is 0."""

    name = "grft"
    matrices_only = True

    def __init__(
        self, k: int, axis: str = "row", lambda_: float = 0.0, selection_steps: int = 1, dense_params: str = ""
    ) -> None:
        super().__init__(dense_params)
        if axis not in ("row", "column"):
            raise ValueError(f"grft_axis must be 'row' or 'column', got {axis!r}")
        self.k, self.axis, self.lambda_, self.selection_steps = k, axis, lambda_, selection_steps
        self._sums: list[Tensor | None] | None = None
        self.pretrained: list[Tensor | None] = []

    def select(self, grads: Sequence[Tensor | None], step: int) -> FixedSelection:
        check_finite([grad for grad in grads if grad is not None], self.all_reduce)
        if step < self.selection_steps:
            self._sums = self._accumulate(self._sums, grads, power=2)
            if self.kept_indices is None:
                self.kept_indices = self._nothing_kept(grads)
                return FixedSelection(self.kept_indices, changed=True)
            return FixedSelection(self.kept_indices, changed=False)
        changed = self._sums is not None
        if changed:  # first step after the selection pass: choose, remember W_pre of the kept entries
            sums = self._sums_or_zeros(self._sums, grads)
            self._sums = None
            shapes = [self.layout.shapes[i] for i in self.selectable]
            offsets = [self.offsets[i] for i in self.selectable]
            masks = line_top_masks(sums, offsets, shapes, self.k, self.axis, self.all_reduce)
            selection = self._set_masks(dict(zip(self.selectable, masks)))
            weights = self.access.weights()
            self.pretrained = [
                None if indices is None else weights[i].reshape(-1)[indices].float().clone()
                for i, indices in enumerate(self.kept_indices)
            ]
        else:
            selection = FixedSelection(self.kept_indices, changed=False)
        if self.lambda_:
            self._add_pull_gradient(grads)
        return selection

    def _add_pull_gradient(self, grads: Sequence[Tensor | None]) -> None:
        weights = self.access.weights()
        for index in self.selectable:
            indices, grad, pretrained = self.kept_indices[index], grads[index], self.pretrained[index]
            if grad is None or indices is None or not indices.numel():
                continue
            pull = (weights[index].reshape(-1)[indices].float() - pretrained).mul_(2 * self.lambda_)
            grad.view(-1).index_add_(0, indices, pull.to(grad.dtype))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "pretrained": self.pretrained, "sums": self._sums}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.pretrained = state.get("pretrained", [])
        self._sums = state.get("sums")


class GSPFStrategy(FixedMaskStrategy):
    """GSPF: warm up with full updates recording |Γ|; keep the global top ``keep_ratio`` of
    ``z(mean |Γ|) * tanh(|θ|)``; reselect every ``reselect_every`` steps before 80% of training."""

    name = "gspf"

    def __init__(
        self,
        keep_ratio: float,
        warmup_steps: int,
        total_steps: int,
        reselect_every: int = 0,
        alpha: float = 0.5,
        dense_params: str = "",
    ) -> None:
        super().__init__(dense_params)
        self.keep_ratio, self.warmup_steps, self.total_steps = keep_ratio, warmup_steps, total_steps
        self.reselect_every, self.alpha = reselect_every, alpha
        self.reselection_steps = gspf_reselection_steps(total_steps, warmup_steps, reselect_every)
        self.selection_steps = [warmup_steps, *self.reselection_steps]
        self._sums: list[Tensor | None] | None = None
        self._recorded_steps = 0
        self.scores: list[Tensor] | None = None  # blended scores of the last selection (for the EMA)

    def setup(self, access: GradientAccess) -> None:
        super().setup(access)
        self.selectable_total = sum(self.layout.numels[i] for i in self.selectable)

    def select(self, grads: Sequence[Tensor | None], step: int) -> FixedSelection | None:
        check_finite([grad for grad in grads if grad is not None], self.all_reduce)
        if step <= self.selection_steps[-1]:  # |Γ| still feeds a selection to come
            self._sums = self._accumulate(self._sums, grads, power=1)
            self._recorded_steps += 1
        if step < self.warmup_steps:
            return None  # warm-up: ordinary full updates
        if step in self.selection_steps or self.kept_indices is None:
            return self._reselect(grads, step)
        return FixedSelection(self.kept_indices, changed=False)

    def _reselect(self, grads: Sequence[Tensor | None], step: int) -> FixedSelection:
        # In place, one buffer per selectable entry: the |Γ| sums become the mean, then the scores,
        # then the blend with the previous scores (which are freed).
        sums = self._sums_or_zeros(self._sums, grads)
        sensitivity = [s.div_(max(self._recorded_steps, 1)) for s in sums]
        weights = self.access.weights()
        new_scores = gspf_scores(sensitivity, [weights[i] for i in self.selectable], self.all_reduce)
        scores = new_scores if self.scores is None else blend_scores(self.scores, new_scores, self.alpha)
        masks = global_top_fraction_masks(scores, self.keep_ratio, self.selectable_total, self.all_reduce)
        more_to_come = step < self.selection_steps[-1]
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

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.scores, self._sums = state.get("scores"), state.get("sums")
        self._recorded_steps = state.get("recorded_steps", 0)
