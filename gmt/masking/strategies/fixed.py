"""Fixed-mask strategies: the shared machinery of GPS, GRFT and GSPF (docs/design.md, "Strategies").

Each gathers gradient statistics for a while, chooses a set of entries from them and then trains
only those: the mask stays fixed (until GSPF reselects), so the optimizer keeps state for the kept
entries only (``SparseMaskedAdamW``) and entries outside the mask never move (no update, no decay).

Which parameters take part: ``dense_params`` (a regex) are trained fully, never masked. For gps
and grft, which select inside weight matrices, every parameter with fewer than 2 dimensions is
dense too; one with more (fused MoE experts ``[experts, out, in]``) is a stack of matrices.
Parameters to leave out altogether are frozen by the trainer (``frozen_params``) before training.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from gmt.masking.base import GradientAccess, MaskSelection, MaskStrategy
from gmt.masking.comm import table_device
from gmt.masking.finite import check_finite
from gmt.masking.options import Option


class FixedSelection(MaskSelection):
    """A fixed mask, stored as the sorted flat indices of the kept local entries of each parameter.

    ``kept_indices[i]`` is None for a dense parameter (every entry kept). ``changed`` is True on
    the step the mask was (re)chosen: the masker then hands it to the optimizer's sparse state.
    """

    def __init__(self, kept_indices: Sequence[Tensor | None], changed: bool) -> None:
        self.kept_indices = kept_indices
        self.changed = changed

    def keep(self, index: int, grad: Tensor) -> Tensor | None:
        return keep_mask(self.kept_indices[index], grad.numel(), grad.device, grad.shape)


def keep_mask(indices: Tensor | None, numel: int, device: torch.device, shape=None) -> Tensor | None:
    """The boolean keep-mask of ``numel`` entries whose kept flat ``indices`` are given (None: all kept)."""
    if indices is None:
        return None
    mask = torch.zeros(numel, dtype=torch.bool, device=device)
    mask[indices] = True
    return mask if shape is None else mask.view(shape)


class FixedMaskStrategy(MaskStrategy):
    """Base of the strategies whose mask stays fixed between (re)selections."""

    fixed_masks = True

    def setup(self, access: GradientAccess, total_steps: int = 0) -> None:
        super().setup(access, total_steps)
        self.selectable = [i for i, dense in enumerate(self.dense) if not dense]
        self.offsets = access.local_offsets()
        self.kept_indices: list[Tensor | None] | None = None
        self._state_restored = False  # a resumed state, not yet on its gradients' devices

    def restored_state_names(self) -> tuple[str, ...]:
        """The attributes of per-parameter tensors a resume restores (lists indexed as the layout)."""
        return ("kept_indices",)

    def _place_restored_state(self, grads: Sequence[Tensor | None]) -> None:
        """Move a resumed state onto the devices of the gradients it masks, at the first step after
        the resume: the checkpoint is read onto one device, and under CPU optimizer offload the
        gradient partitions are on the CPU (docs/distributed.md)."""
        if not self._state_restored:
            return
        self._state_restored = False
        fallback = table_device(grads, self.all_reduce)
        for name in self.restored_state_names():
            tensors = getattr(self, name)
            if tensors:  # None or [] (grft's pretrained weights before its choice): nothing restored
                setattr(self, name, [None if tensor is None else tensor.to(fallback if grad is None else grad.device)
                                     for tensor, grad in zip(tensors, grads, strict=True)])  # fmt: skip

    def _nothing_kept(self, grads: Sequence[Tensor | None]) -> list[Tensor | None]:
        # Every parameter, dense ones included, is held still (the selection pass updates nothing).
        return [torch.empty(0, dtype=torch.int64, device=table_device(grads, self.all_reduce)) for _ in grads]

    def _set_masks(self, masks: dict[int, Tensor]) -> FixedSelection:
        self.kept_indices = [None] * len(self.layout.names)
        for index, mask in masks.items():
            self.kept_indices[index] = mask.reshape(-1).nonzero().squeeze(1)
        return FixedSelection(self.kept_indices, changed=True)

    def _accumulate(self, sums: list[Tensor | None] | None, grads: Sequence[Tensor | None], statistic: str):
        """Add Γ (``signed``), |Γ| (``abs``) or Γ² (``square``) of the selectable parameters to
        running fp32 sums."""
        if sums is None:
            sums = [None] * len(grads)
        for index in self.selectable:
            grad = grads[index]
            if grad is None:
                continue
            if statistic == "signed":
                sums[index] = grad.float().clone() if sums[index] is None else sums[index].add_(grad.float())
                continue
            term = grad.float().abs() if statistic == "abs" else grad.float().square()
            sums[index] = term if sums[index] is None else sums[index].add_(term)
        return sums

    def _sums_or_zeros(self, sums: list[Tensor | None], grads: Sequence[Tensor | None]) -> list[Tensor]:
        """The running sums of the selectable parameters (zeros for one that never got a gradient)."""
        out, device = [], table_device(grads, self.all_reduce)
        for index in self.selectable:
            if sums[index] is None:
                grad = grads[index]
                shape = grad.shape if grad is not None else (0,)
                sums[index] = torch.zeros(shape, dtype=torch.float32, device=device)
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

    def fixed_keep_masks(self, local_numels: Sequence[int], device: torch.device) -> dict[int, Tensor] | None:
        if self.kept_indices is None:
            return None
        return {
            index: torch.ones(numel, dtype=torch.bool, device=device) if indices is None
            else keep_mask(indices.to(device), numel, device)
            for index, (indices, numel) in enumerate(zip(self.kept_indices, local_numels, strict=True))
        }  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        return {"kept_indices": self.kept_indices}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kept_indices = state.get("kept_indices")
        self._state_restored = True


SELECTION_STEPS = Option(
    "selection_steps",
    int,
    1,
    "Optimizer steps at the start of training that only gather gradients (nothing is updated) to choose the "
    "mask; each sees gradient_accumulation_steps x processes batches. They count toward max_steps.",
    low=1,
)


class SelectionPassStrategy(FixedMaskStrategy):
    """gps and grft: a selection pass on the pretrained weights, then one mask for the whole run.

    Steps ``[0, selection_steps)`` gather a statistic of Γ (``statistic``) and update *nothing*;
    at step ``selection_steps`` the mask is chosen from it (``choose``) and trained from then on.
    The selection steps count toward ``max_steps`` and the learning-rate schedule.
    """

    options: ClassVar[tuple[Option, ...]] = (SELECTION_STEPS,)
    matrices_only = True
    statistic: ClassVar[str] = "signed"  # what the pass sums (see FixedMaskStrategy._accumulate)
    selection_steps: int

    def first_masked_step(self, mask_start_step: int) -> int:
        return max(mask_start_step, self.selection_steps)

    def setup(self, access: GradientAccess, total_steps: int = 0) -> None:
        super().setup(access, total_steps)
        self._sums: list[Tensor | None] | None = None

    @abstractmethod
    def choose(self, sums: list[Tensor]) -> dict[int, Tensor]:
        """Keep-masks of the selectable parameters (by index) from the pass's sums."""

    def select(self, grads: Sequence[Tensor | None], step: int) -> FixedSelection:
        check_finite([grad for grad in grads if grad is not None], self.all_reduce)
        self._place_restored_state(grads)
        if step < self.selection_steps:
            self._sums = self._accumulate(self._sums, grads, self.statistic)
            if self.kept_indices is None:
                self.kept_indices = self._nothing_kept(grads)
                return FixedSelection(self.kept_indices, changed=True)
            return FixedSelection(self.kept_indices, changed=False)
        if self._sums is not None:  # first step after the selection pass: choose
            sums = self._sums_or_zeros(self._sums, grads)
            self._sums = None
            return self._set_masks(self.choose(sums))
        return FixedSelection(self.kept_indices, changed=False)

    def _selected_shapes_and_offsets(self) -> tuple[list[tuple[int, ...]], list[int]]:
        return [self.layout.shapes[i] for i in self.selectable], [self.offsets[i] for i in self.selectable]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "sums": self._sums}  # mid-selection-pass sums

    def restored_state_names(self) -> tuple[str, ...]:
        return (*super().restored_state_names(), "_sums")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._sums = state.get("sums")
