"""TRL trainers with gradient masking wired in. The masking itself lives in ``gmt.masking``.

Where the mask goes in the HF Trainer's step: after the last micro-batch's backward, the Trainer
clips (``_clip_grad_norm``) or measures (``_get_grad_norm``) the gradient, then calls
``optimizer.step()``. SPEC orders a step as accumulate -> mask -> clip -> optimizer, so the mask is
applied at the start of whichever of those two hooks runs first; ``on_pre_optimizer_step`` would
be too late (after clipping). The logged ``grad_norm`` is therefore the masked gradient's.
Under DeepSpeed the real step runs inside the engine, during the last micro-batch's backward, so
the mask wraps the ZeRO optimizer's ``step`` instead (``_hook_deepspeed_step``).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from transformers.utils import logging
from trl import DPOTrainer, SFTTrainer

from gmt.masking import (
    STRATEGIES,
    GradientMasker,
    LocalGradientAccess,
    MaskedAdamW,
    NonFiniteGradientError,
    SparseMaskedAdamW,
    build_strategy,
    default_frozen_params,
)
from gmt.masking.engines import DeepSpeedZero3Access, DeepSpeedZero12Access, FSDP2Access, GradientAccess

logger = logging.get_logger(__name__)


class MaskingMixin:
    """Adds a ``GradientMasker`` to a ``transformers.Trainer`` subclass (put it first in the bases)."""

    _masker: GradientMasker | None = None
    _masked_step: int = -1
    _engine_hooked: bool = False
    _pending_mask_state: dict | None = None  # read from a checkpoint before the masker exists
    _nonfinite_in_a_row: int = 0
    _nonfinite_skipped: int = 0  # steps skipped for a NaN/inf gradient, over the run
    _skip_optimizer_step: bool = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._check_engine_supported()
        self._freeze_params()

    def _freeze_params(self) -> None:
        # Before the optimizer and the engine exist, so frozen parameters get neither gradients nor state.
        pattern = self.args.frozen_params
        if pattern is None:
            pattern = default_frozen_params(self.args.mask_strategy)
        if not pattern:
            return
        trainable = [(name, param) for name, param in self.model.named_parameters() if param.requires_grad]
        frozen = [param for name, param in trainable if re.search(pattern, name)]
        if len(frozen) == len(trainable):
            raise ValueError(f"frozen_params {pattern!r} matches every trainable parameter: nothing would train")
        for param in frozen:
            param.requires_grad_(False)

    def _uses_fixed_masks(self) -> bool:
        return STRATEGIES[self.args.mask_strategy].fixed_masks

    def _check_engine_supported(self) -> None:
        if self.args.mask_strategy == "full":
            return
        if self.is_fsdp_enabled and self._fsdp_version() != 2:
            raise NotImplementedError(
                f"mask_strategy {self.args.mask_strategy!r} needs FSDP2 (fsdp_version: 2), whose gradients are DTensor "
                "shards gmt can mask in place; FSDP1's flat parameters are not supported. Use fsdp_version 2, "
                "DeepSpeed ZeRO-1/2/3, DDP or a single process."
            )
        if self.is_deepspeed_enabled:
            ds_config = self.accelerator.state.deepspeed_plugin.deepspeed_config
            stage = ds_config.get("zero_optimization", {}).get("stage", 0)
            if stage not in (1, 2, 3):
                raise NotImplementedError(
                    f"mask_strategy {self.args.mask_strategy!r} under DeepSpeed needs ZeRO stage 1, 2 or 3 (the mask "
                    f"hooks the ZeRO optimizer's step); the config has stage {stage}."
                )
            if self._uses_fixed_masks() and "optimizer" in ds_config:
                raise ValueError(
                    f"mask_strategy {self.args.mask_strategy!r} needs gmt's sparse-state AdamW as DeepSpeed's "
                    "optimizer: remove the 'optimizer' block from the DeepSpeed config (the Trainer's optim is used "
                    "then)."
                )
            if self._uses_masked_optimizer() and "optimizer" in ds_config:
                raise ValueError(
                    "gmt_mode 'update' needs the masked AdamW as DeepSpeed's optimizer: remove the 'optimizer' block "
                    "from the DeepSpeed config (the Trainer's optim is used then), or use gmt_mode 'grad'."
                )

    def _fsdp_version(self) -> int:
        return int(getattr(self.accelerator.state.fsdp_plugin, "fsdp_version", 1) or 1)

    def _uses_masked_optimizer(self) -> bool:
        return self.args.gmt_mode == "update" and self.args.mask_strategy != "full" and not self._uses_fixed_masks()

    def create_optimizer(self, model=None):
        """The configured AdamW becomes a ``MaskedAdamW`` (``gmt_mode: update``) or, for fixed-mask
        strategies, a ``SparseMaskedAdamW`` (state for kept entries only), with the same settings."""
        if self.optimizer is None and (self._uses_masked_optimizer() or self._uses_fixed_masks()):
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model or self.model)
            if optimizer_cls is not torch.optim.AdamW:
                raise ValueError(
                    f"mask_strategy {self.args.mask_strategy!r} can only mask AdamW, but optim {self.args.optim!r} "
                    f"gives {optimizer_cls}"
                )
            if self._uses_fixed_masks():
                settings = ("lr", "betas", "eps", "weight_decay")
                optimizer_kwargs = {key: value for key, value in optimizer_kwargs.items() if key in settings}
                self.optimizer_cls_and_kwargs = (SparseMaskedAdamW, optimizer_kwargs)
            else:
                self.optimizer_cls_and_kwargs = (MaskedAdamW, optimizer_kwargs)
        return super().create_optimizer(model)

    @property
    def masker(self) -> GradientMasker:
        """The masker, built on first use (after the model is wrapped and the optimizer exists)."""
        if self._masker is None:
            args = self.args
            strategy = build_strategy(
                args.mask_strategy,
                args.mask_ratio,
                args.mask_scope,
                random_fixed=args.random_fixed,
                seed=args.seed,
                dense_params=args.dense_params,
                selection_steps=args.selection_steps,
                gps_k=args.gps_k,
                grft_k=args.grft_k,
                grft_axis=args.grft_axis,
                grft_lambda=args.grft_lambda,
                gspf_keep_ratio=args.gspf_keep_ratio,
                gspf_warmup_steps=args.gspf_warmup_steps,
                gspf_reselect_every=args.gspf_reselect_every,
                gspf_alpha=args.gspf_alpha,
                total_steps=self.state.max_steps,
            )
            self._masker = GradientMasker(
                strategy,
                self._gradient_access(),
                mode=self.args.gmt_mode,
                mask_start_step=self.args.mask_start_step,
            )
            if self._pending_mask_state is not None:
                self._masker.load_state_dict(self._pending_mask_state)
                self._pending_mask_state = None
        return self._masker

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, plus the mask state of every rank (fixed masks, scores, sums).

        Written before the Trainer's own files finish (``trainer_state.json`` comes last), so a
        checkpoint with a ``trainer_state.json`` has its mask state too."""
        if self._masker is not None:
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            state = {"world_size": self.args.world_size, **self._masker.state_dict()}
            torch.save(state, folder / mask_state_name(self.args.process_index))
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = Path(checkpoint) / mask_state_name(self.args.process_index)
        if not path.is_file():
            if self._uses_fixed_masks():
                raise ValueError(
                    f"resume_from_checkpoint {checkpoint!r} has no mask state ({path.name}): it was not written "
                    f"by a gmt run with mask_strategy {self.args.mask_strategy!r}"
                )
            return
        state = torch.load(path, map_location=self.args.device, weights_only=True)
        if state.get("world_size") != self.args.world_size:
            raise ValueError(
                f"resume_from_checkpoint {checkpoint!r} was written by {state.get('world_size')} processes, this run "
                f"has {self.args.world_size}: the mask state is sharded like the optimizer and must match"
            )
        if self._masker is not None:
            self._masker.load_state_dict(state)
        else:
            self._pending_mask_state = state

    def _gradient_access(self) -> GradientAccess:
        if self.is_deepspeed_enabled:
            zero_optimizer = self.model_wrapped.optimizer
            stage = self.accelerator.state.deepspeed_plugin.zero_stage
            access_cls = DeepSpeedZero3Access if stage == 3 else DeepSpeedZero12Access
            return access_cls(zero_optimizer, self.model.named_parameters())
        if self.is_fsdp_enabled:
            return FSDP2Access(self.model.named_parameters())
        return LocalGradientAccess(self.model.named_parameters())

    def training_step(self, *args, **kwargs):
        if self.is_deepspeed_enabled and not self._engine_hooked:
            self._hook_deepspeed_step()
        return super().training_step(*args, **kwargs)

    def _hook_deepspeed_step(self) -> None:
        # DeepSpeed runs the real optimizer step inside the last micro-batch's backward
        # (engine._take_model_step), before the Trainer's grad-norm hooks: mask at the start of the
        # ZeRO optimizer's step, after the last reduce-scatter and before unscale/clip/update.
        zero_optimizer = self.model_wrapped.optimizer
        engine_step = zero_optimizer.step

        def masked_step(*args, **kwargs):
            if not self._mask_gradients():
                return engine_step(*args, **kwargs)
            # A non-finite Γ, left as it is: ZeRO's own overflow path sees it (an inf/NaN norm), skips
            # the update and clears the gradients, as for an fp16 overflow. ZeRO-1/2 in bf16 only
            # look when check_grad_overflow is on, so it is on for this step.
            checks = getattr(zero_optimizer, "check_grad_overflow", None)
            if checks is not None:
                zero_optimizer.check_grad_overflow = True
            try:
                result = engine_step(*args, **kwargs)
            finally:
                if checks is not None:
                    zero_optimizer.check_grad_overflow = checks
            if not getattr(zero_optimizer, "overflow", False):
                raise NonFiniteGradientError(
                    f"step {self.state.global_step}: the gradient holds NaN or inf, and DeepSpeed's "
                    f"{type(zero_optimizer).__name__} did not skip the step; stopping rather than train on it."
                )
            return result

        zero_optimizer.step = masked_step
        self._engine_hooked = True

    def _mask_gradients(self) -> bool:
        """Mask this step's gradient (once per step, whichever hook comes first). Returns True when
        the step must be skipped: Γ holds NaN/inf (the mask state is left as it was)."""
        if self._masked_step == self.state.global_step:
            return False
        self._masked_step = self.state.global_step
        optimizer = self.optimizer
        while not isinstance(optimizer, (MaskedAdamW, SparseMaskedAdamW)) and hasattr(optimizer, "optimizer"):
            optimizer = optimizer.optimizer  # accelerate wraps the optimizer
        try:
            self.masker.apply(self.state.global_step, optimizer)
        except NonFiniteGradientError as error:
            # With fp16 loss scaling an overflow is routine (the scaler skips the step and lowers the
            # scale, several times in a row early on): skipped and counted, never a reason to stop.
            grad_scaler = getattr(self.accelerator, "scaler", None)  # fp16 mixed precision without DeepSpeed
            loss_scaled = self.args.fp16 and (self.is_deepspeed_enabled or grad_scaler is not None)
            self._nonfinite_in_a_row += 0 if loss_scaled else 1
            if self._nonfinite_in_a_row > self.args.max_nonfinite_steps:
                raise NonFiniteGradientError(
                    f"{error} This was {self._nonfinite_in_a_row} optimizer steps in a row (max_nonfinite_steps="
                    f"{self.args.max_nonfinite_steps}); stopping."
                ) from error
            self._nonfinite_skipped += 1
            logger.warning(f"step {self.state.global_step}: {error} Skipping this optimizer step.")
            # DeepSpeed skips it in its engine (masked_step); a GradScaler finds the inf in Γ itself.
            if not self.is_deepspeed_enabled and grad_scaler is None:
                self._skip_step(optimizer)
            return True
        self._nonfinite_in_a_row = 0
        return False

    def _skip_step(self, optimizer) -> None:
        """No update this step: the optimizer's next ``step`` is a no-op, and the gradient is
        zeroed (so the clipping norm stays finite)."""
        for param in self.model.parameters():
            if param.grad is not None:
                param.grad.zero_()
        if not getattr(optimizer, "_gmt_skippable", False):
            step = optimizer.step

            def skippable_step(*args, **kwargs):
                if self._skip_optimizer_step:
                    self._skip_optimizer_step = False
                    return None
                return step(*args, **kwargs)

            optimizer.step = skippable_step
            optimizer._gmt_skippable = True
        self._skip_optimizer_step = True

    def _clip_grad_norm(self, model):
        self._mask_gradients()
        return super()._clip_grad_norm(model)

    def _get_grad_norm(self, model, grad_norm=None):
        if grad_norm is None:  # no clipping this run: this is the first hook of the step
            self._mask_gradients()
        return super()._get_grad_norm(model, grad_norm=grad_norm)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """Add the mask telemetry to the Trainer's training logs (so every ``report_to`` gets it)."""
        if self._masker is not None and "loss" in logs:
            logs = {**logs, **self._masker.pop_logs(), "nonfinite_skipped_steps": self._nonfinite_skipped}
        super().log(logs, *args, **kwargs)


def mask_state_name(process_index: int) -> str:
    """File name of one rank's mask state inside a checkpoint folder."""
    return f"gmt_mask_state_rank{process_index}.pt"


class GMTSFTTrainer(MaskingMixin, SFTTrainer):
    """``trl.SFTTrainer`` that masks the accumulated gradient at every optimizer step.

    Takes a ``gmt.config.GMTSFTConfig`` as ``args``; everything else is ``SFTTrainer``'s.
    """


class GMTDPOTrainer(MaskingMixin, DPOTrainer):
    """``trl.DPOTrainer`` that masks the policy's accumulated gradient at every optimizer step.

    Takes a ``gmt.config.GMTDPOConfig`` as ``args``. The reference model is TRL's (a separate frozen
    copy, or the adapter-disabled base under PEFT); the mask covers only the policy.
    """
