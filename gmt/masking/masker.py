"""The mask of a step: once per optimizer step, choose the mask and apply it.

Order within a step (docs/design.md): accumulate Γ -> mask -> clip by the norm of the masked
gradient -> optimizer. The masker does the mask for every strategy and engine:

- ``gmt_mode: grad``: dropped entries of Γ are zeroed; the optimizer is untouched (the paper).
- ``gmt_mode: update``: Γ is zeroed as well, and the optimizer (``MaskedAdamW``) is told to leave
  dropped entries exactly as they are in this step: no update, no decay, moments untouched.
- fixed-mask strategies (gps, grft, gspf): Γ is zeroed outside the mask, and on the steps the
  mask is (re)chosen the optimizer (``SparseMaskedAdamW``) rebuilds its state for the kept
  entries only; entries outside never move.
"""

from __future__ import annotations

from typing import Any

import torch

from gmt.masking.base import GradientAccess, MaskStrategy
from gmt.masking.comm import table_device
from gmt.masking.finite import check_finite
from gmt.masking.optim import MaskedAdamW
from gmt.masking.scopes import layer_groups


class GradientMasker:
    """Applies a strategy's mask to the gradient (and optimizer) once per optimizer step."""

    def __init__(
        self, strategy: MaskStrategy, access: GradientAccess, mask_start_step: int = 0, total_steps: int = 0
    ) -> None:
        """Sets ``strategy`` up on ``access`` for a run of ``total_steps`` optimizer steps (which
        places gspf's reselections); masking starts at step ``mask_start_step``."""
        self.strategy = strategy
        self.access = access
        self.mask_start_step = mask_start_step
        strategy.setup(access, total_steps)
        self._layer_of_param, self.layer_names = layer_groups(access.layout.names)
        self._numels = torch.tensor(access.layout.numels, dtype=torch.float64, device="cpu")
        self.run_kept_entries = 0.0  # kept entries summed over the run's steps, as far as pop_logs has counted
        self.more_than_asked: str | None = None  # said once a run (gmt.trainer prints it)
        target = strategy.target_kept_entries()  # what a masked step keeps as asked, dense entries included
        dense = sum(numel for numel, is_dense in zip(access.layout.numels, strategy.dense, strict=True) if is_dense)
        self._asked = None if target is None else float(target + dense)
        self.tensor_kept_history: list[list[float]] = []  # per pop_logs: each tensor's kept fraction
        self.threshold_history: list[list[float] | None] = []  # per pop_logs: each scope group's last T
        self.run_steps = 0
        self._reset_telemetry()

    @torch.no_grad()  # strategies read weights (|θ|, W - W_pre) that are leaves requiring grad
    def apply(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Mask the accumulated gradient of optimizer step ``step`` (0-based), in place.

        ``optimizer`` is what ``strategy.optimizer_kind`` asks for: a ``MaskedAdamW`` (``update``
        mode), which receives the masks for its next ``step()``, or a ``SparseMaskedAdamW`` (fixed
        masks), which receives a mask when it is (re)chosen; any optimizer otherwise.
        """
        kind = self.strategy.optimizer_kind
        if kind == "sparse" and not hasattr(optimizer, "set_fixed_masks"):
            raise TypeError(f"mask_strategy {self.strategy.name!r} needs a SparseMaskedAdamW optimizer")
        update_masks = kind == "masked"
        if update_masks and not isinstance(optimizer, MaskedAdamW):
            raise TypeError("gmt_mode 'update' needs a MaskedAdamW optimizer")
        grads = self.access.grads()
        selection = self.strategy.select(grads, step) if step >= self.mask_start_step else None
        if selection is None:
            # Chosen without reading Γ (full, r = 0, before mask_start_step, gspf's warm-up): Γ still
            # has to be finite, on every rank together, before the optimizer sees it.
            check_finite([grad for grad in grads if grad is not None], self.access.all_reduce)
        self._steps += 1
        if selection is None:
            # Everything kept, no pass over the gradient. Counted apart: on a sharded engine every
            # rank would add the full sizes, and the logging all-reduce would multiply them.
            self._unmasked_steps += 1
            if update_masks:
                optimizer.set_update_masks({})
            return

        new_fixed_masks = selection.changed
        # Where the optimizer steps the same tensors as ``grads`` and the masks are the masked
        # gradient's nonzero entries, it reads them off the gradient: no mask tensors to build.
        nonzero_grad = selection.nonzero_grad_masks(grads) if update_masks and self.access.steps_grads else None
        want_keep = (update_masks and nonzero_grad is None) or new_fixed_masks
        kept, keeps = selection.apply_all(grads, want_keep)
        # Counted where the gradients are (gmt.masking.comm): one add for all parameters, no host sync.
        self._kept = kept if self._kept is None else self._kept.add_(kept)
        if new_fixed_masks:  # a dense parameter: its optimizer state stays (or turns) dense
            for index, grad in enumerate(grads):
                if grad is not None and index not in keeps:
                    keeps[index] = torch.ones(grad.shape, dtype=torch.bool, device=grad.device)
        self.access.commit()
        if update_masks and nonzero_grad is not None:
            optimizer.set_update_masks({}, nonzero_grad=[self.access.params[index] for index in nonzero_grad])
        elif update_masks:
            optimizer.set_update_masks(self.access.optimizer_masks(keeps))
        elif new_fixed_masks:
            optimizer.set_fixed_masks(self.access.optimizer_masks(keeps, fill=False))
        thresholds = selection.thresholds()
        if thresholds is not None:
            self._last_thresholds = thresholds  # reduced to one number at logging time

    def check_optimizer_agrees(self, optimizer: torch.optim.Optimizer) -> None:
        """Refuse a fixed mask that the optimizer's sparse state does not share (after a resume, the
        two come from different files of the checkpoint): ``ValueError`` naming the first tensor."""
        keeps = self.strategy.fixed_keep_masks(self.access.local_numels(), table_device(self.access.params))
        if keeps is None:
            return
        optimizer.check_fixed_masks(self.access.optimizer_masks(keeps, fill=False))

    def pop_logs(self) -> dict[str, float]:
        """Mask telemetry averaged over the steps since the last call, then reset.

        Keys: ``mask/kept_fraction``, ``mask/threshold`` (mean over scope groups, last masked
        step) and ``mask/kept_fraction/<layer>``. Every rank must call it (it may all-reduce).
        """
        if self._steps == 0:
            return {}
        all_reduce = self.access.all_reduce
        if self._kept is None:  # nothing masked here since the last call: still a part in the sum
            kept = torch.zeros(len(self._numels), dtype=torch.float64, device=table_device([], all_reduce))
        else:
            kept = self._kept.clone()
        # one all-reduce per logging step, never per optimizer step
        if all_reduce is not None:
            all_reduce(kept)
        numels = self._numels
        self._note_keeping_more_than_asked(float(kept.sum()), self._steps - self._unmasked_steps)
        per_step = (kept.cpu() + self._unmasked_steps * numels) / self._steps
        self.run_kept_entries += float(per_step.sum()) * self._steps
        self.run_steps += self._steps
        logs = {"mask/kept_fraction": float(per_step.sum() / numels.sum())}
        if self._last_thresholds is not None:
            finite = self._last_thresholds[torch.isfinite(self._last_thresholds)]
            logs["mask/threshold"] = float(finite.mean())
        layer_kept = torch.zeros(len(self.layer_names), dtype=torch.float64, device="cpu")
        layer_total = torch.zeros_like(layer_kept)
        layer_index = torch.tensor(self._layer_of_param, device="cpu")
        layer_kept.index_add_(0, layer_index, per_step)
        layer_total.index_add_(0, layer_index, numels)
        for name, kept_count, total in zip(self.layer_names, layer_kept, layer_total, strict=True):
            logs[f"mask/kept_fraction/{name}"] = float(kept_count / total)
        # Per tensor and per scope group, for the run's pictures (gmt.plots): too many for the logs.
        self.tensor_kept_history.append((per_step / numels).tolist())
        thresholds = self._last_thresholds
        self.threshold_history.append(None if thresholds is None else thresholds.float().cpu().tolist())
        self._reset_telemetry()
        return logs

    def _note_keeping_more_than_asked(self, kept: float, masked_steps: int) -> None:
        """Set ``more_than_asked`` (once a run) when the masked steps kept more entries than the
        strategy asks for: entries tied at the threshold are all kept (docs/strategies.md)."""
        if self.more_than_asked is not None or self._asked is None or masked_steps == 0:
            return
        asked, got = self._asked, kept / masked_steps
        if got > asked * 1.001 + 1:
            total = float(self._numels.sum())
            self.more_than_asked = (
                f"mask: the masked steps kept {got / total:.2%} of the entries, {asked / total:.2%} asked: every entry "
                "tied at the threshold T is kept. T is 0 when fewer entries than asked have a nonzero gradient at a "
                "step (the embeddings of tokens not in the batch are exactly zero, say): then every entry is kept"
            )

    def run_kept_fraction(self) -> float | None:
        """The mean kept fraction over the steps ``pop_logs`` has counted this run (None: none yet)."""
        if self.run_steps == 0:
            return None
        return self.run_kept_entries / (self.run_steps * float(self._numels.sum()))

    def _reset_telemetry(self) -> None:
        self._steps = self._unmasked_steps = 0
        self._kept: torch.Tensor | None = None
        self._last_thresholds: torch.Tensor | None = None

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state (the strategy's)."""
        return {"strategy": self.strategy.name, "strategy_state": self.strategy.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict``; refuses a checkpoint written by another strategy."""
        if state.get("strategy") != self.strategy.name:
            raise ValueError(
                f"checkpoint was written with mask_strategy {state.get('strategy')!r}, "
                f"this run uses {self.strategy.name!r}"
            )
        self.strategy.load_state_dict(state.get("strategy_state", {}))
