"""The gmt part of one optimizer step, in one place: mask once, skip a non-finite step, check.

The Trainer's loop runs, per optimizer step: the micro-batches' backward passes (Γ accumulates),
then clipping, then the optimizer step. gmt's order (docs/design.md, "The step") is

    accumulate Γ -> mask Γ (once) -> clip by the masked gradient's norm -> optimizer step

so ``MaskedStep.mask`` is called from the first of the Trainer's hooks before clipping (or, where
the engine steps inside ``backward``, from the engine's hook: ``GradientAccess.install_step_hook``),
and ``check_masked`` right before the optimizer step: a step whose mask did not run (a hook that
moved, an engine that was never hooked) stops the run instead of training unmasked.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from gmt.masking.finite import NonFiniteGradientError
from gmt.masking.masker import GradientMasker

logger = logging.getLogger(__name__)


class MaskNotAppliedError(RuntimeError):
    """Raised when an optimizer step is about to happen (or happened, inside an engine) unmasked."""


class MaskedStep:
    """Owns the order of one optimizer step's masking, and the non-finite skip policy.

    ``engine_hooked``: the engine calls ``mask`` itself before its own step (DeepSpeed); the
    trainer's hooks then leave it alone, so a missing engine hook is caught by ``check_masked``
    rather than covered by a mask that comes too late. ``engine_skips``: the engine (DeepSpeed's
    overflow path) or a GradScaler skips a non-finite update itself; otherwise the gradients are
    dropped, which makes every torch optimizer step a no-op. ``loss_scaled``: fp16 loss scaling,
    where an overflow is the scaler's routine business: skipped and counted, never a reason to stop.
    """

    def __init__(
        self,
        masker: GradientMasker,
        optimizer: torch.optim.Optimizer | None,
        max_nonfinite_steps: int,
        engine_hooked: bool = False,
        engine_skips: bool = False,
        loss_scaled: bool = False,
    ) -> None:
        self.masker = masker
        self.optimizer = optimizer
        self.max_nonfinite_steps = max_nonfinite_steps
        self.engine_hooked = engine_hooked
        self.engine_skips = engine_skips
        self.loss_scaled = loss_scaled
        self.masked_step = -1  # the last optimizer step whose Γ was masked
        self.nonfinite_in_a_row = 0
        self.nonfinite_skipped = 0  # steps skipped for a NaN/inf gradient, over the run

    def before_clip(self, step: int) -> None:
        """The trainer's hook before clipping (or measuring) the gradient of optimizer step ``step``."""
        if not self.engine_hooked:
            self.mask(step)

    def mask(self, step: int) -> bool:
        """Mask the accumulated gradient of optimizer step ``step``, once however often it is called.

        Returns True (on the call that masks) when the update must be skipped: Γ holds NaN or inf;
        the mask state is left as it was. Raises ``NonFiniteGradientError`` after more than
        ``max_nonfinite_steps`` such steps in a row.
        """
        if self.masked_step == step:
            return False
        self.masked_step = step
        try:
            self.masker.apply(step, self.optimizer)
        except NonFiniteGradientError as error:
            self.nonfinite_in_a_row += 0 if self.loss_scaled else 1
            if self.nonfinite_in_a_row > self.max_nonfinite_steps:
                raise NonFiniteGradientError(
                    f"step {step}: {error} This was {self.nonfinite_in_a_row} optimizer steps in a row "
                    f"(max_nonfinite_steps={self.max_nonfinite_steps}); stopping."
                ) from error
            self.nonfinite_skipped += 1
            logger.warning(f"step {step}: {error} Skipping this optimizer step.")
            if not self.engine_skips:
                self._drop_gradients()
            return True
        self.nonfinite_in_a_row = 0
        return False

    def _drop_gradients(self) -> None:
        # No update this step: torch optimizers skip a parameter without a gradient (no update,
        # decay, moment or step count), and the clipping norm of no gradients is 0.
        for param in self.masker.access.params:
            param.grad = None

    def check_masked(self, step: int) -> None:
        """Raise ``MaskNotAppliedError`` unless optimizer step ``step`` was masked."""
        if self.masked_step == step:
            return
        where = "DeepSpeed's ZeRO optimizer step" if self.engine_hooked else "the Trainer's clipping hooks"
        raise MaskNotAppliedError(
            f"optimizer step {step} was not masked: gmt's hook into {where} did not run (a changed transformers or "
            "DeepSpeed, or a subclass that overrides the hook without calling it). Stopping rather than train "
            "unmasked; see docs/design.md, 'Where each engine is hooked'."
        )

    def state_dict(self) -> dict[str, Any]:
        """The non-finite counters, for checkpoints."""
        return {"nonfinite_in_a_row": self.nonfinite_in_a_row, "nonfinite_skipped": self.nonfinite_skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict``."""
        self.nonfinite_in_a_row = int(state.get("nonfinite_in_a_row", 0))
        self.nonfinite_skipped = int(state.get("nonfinite_skipped", 0))
