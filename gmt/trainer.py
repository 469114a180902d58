"""TRL trainers with gradient masking wired in. The masking itself lives in ``gmt.masking``.

The step order (docs/design.md, "The step") is accumulate Γ -> mask -> clip -> optimizer, and
``gmt.masking.MaskedStep`` owns it. This module only wires it into the HF Trainer:

- at every ``train()`` call (``on_train_begin``, once the model is wrapped, the engine and the
  optimizer exist and a checkpoint is loaded) the strategy, the masker and the step are bound to
  the engine of that call (under DeepSpeed a second call builds a new one), and the engine's own
  step is hooked where it has one;
- ``_clip_grad_norm`` / ``_get_grad_norm``, the first Trainer hooks after the last backward of a
  step, mask Γ (``on_pre_optimizer_step`` would be too late: after clipping), so the logged
  ``grad_norm`` is the masked gradient's;
- ``on_pre_optimizer_step`` checks that the step was masked, and stops the run if it was not;
- ``on_step_end`` / ``on_epoch_end`` collect the mask telemetry (an all-reduce on sharded
  engines) where the Trainer decides to log, the same point on every rank; ``log`` adds it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from transformers import TrainerCallback
from transformers.trainer_utils import rotate_checkpoints
from trl import DPOTrainer, GRPOTrainer, SFTTrainer

from gmt.checkpoints import (
    RESUME_LAST,
    batch_layout,
    check_resume_settings,
    remove_partial_checkpoint,
    resolve_resume_checkpoint,
    save_failure,
    write_manifest,
    write_mask_settings,
)
from gmt.config import check_masked_steps
from gmt.console import quiet_console
from gmt.data import DPO_DATA, GRPO_DATA, SFT_DATA, ReportsDroppedRows
from gmt.masking import (
    GradientMasker,
    LocalGradientAccess,
    MaskedStep,
    MaskStrategy,
    effective_frozen_params,
    freeze_parameters,
    masking_optimizer,
    scale_dense_phase,
    strategy_class,
    unwrap_optimizer,
)
from gmt.masking.engines import DeepSpeedZero3Access, DeepSpeedZero12Access, FSDP2Access, GradientAccess
from gmt.output_dir import claim_output_dir, current_run, lock_output_dir, record_run
from gmt.parallel import check_parallel_layout
from gmt.precision import MasterWeights, keep_fp32_masters
from gmt.step_delta import StepDeltas, saved_weights
from gmt.summary import format_summary, mask_summary, optimizer_state_bytes


class MaskingMixin:
    """Adds gmt's masked step to a ``transformers.Trainer`` subclass (put it first in the bases)."""

    _masker: GradientMasker | None = None
    _masked_step: MaskedStep | None = None  # not _step: GRPOTrainer counts its steps under that name
    _resumed_state: dict | None = None  # one rank's mask state, read from the checkpoint being resumed
    _pending_logs: dict[str, float] | None = None  # telemetry collected for the next training log
    _master_weights: MasterWeights | None = None  # the weights gmt keeps in fp32 (gmt.precision)
    _frozen_by_pattern: list[str] = []  # what frozen_params froze (gmt.summary reports it)
    _run: dict | None = None  # the run that owns output_dir (gmt.output_dir), on the main process
    _step_deltas: StepDeltas | None = None  # step_delta_every: the weights' changes, on the main process

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.strategy: MaskStrategy = strategy_class(self.args.mask_strategy).from_args(self.args)
        self._check_engine_supported()
        self._check_matrix_orientation()
        # Before the optimizer and the engine exist, so frozen parameters get neither gradients nor state.
        self._frozen_by_pattern = freeze_parameters(self.model.named_parameters(), effective_frozen_params(self.args))
        # Before the optimizer exists, so that it steps the fp32 weights (gmt.precision says why).
        engine_keeps_masters = self.is_deepspeed_enabled or (
            self.is_fsdp_enabled and self.accelerator.mixed_precision != "no"
        )
        self._master_weights = keep_fp32_masters(self.model, self.args, engine_keeps_masters)
        if self.args.step_delta_every and hasattr(self.model, "peft_config"):
            raise ValueError("step_delta_every with use_peft: the adapter is already the whole update (gmt merge "
                             "folds it in); set step_delta_every 0")  # fmt: skip
        self.add_callback(_MaskStepCallback(self))
        if not self.args.log_mask_blocks:
            quiet_console(self.callback_handler)

    def _check_engine_supported(self) -> None:
        if self.strategy.name == "full":
            return
        if self.is_fsdp_enabled and self._fsdp_version() != 2:
            raise NotImplementedError(
                f"mask_strategy {self.strategy.name!r} needs FSDP2 (fsdp_version: 2), whose gradients are DTensor "
                "shards gmt can mask in place; FSDP1's flat parameters are not supported. Use fsdp_version 2, "
                "DeepSpeed ZeRO-1/2/3, DDP or a single process."
            )
        check_parallel_layout(self.strategy, self.args)  # run before the model loads as well (gmt.cli)

    def _check_matrix_orientation(self) -> None:
        """Per-matrix rules (gps, grft) read a weight as torch's Linear stores it, [out, in]. The
        Conv1D of GPT-2 and its kin stores [in, out], where those rules would pick along the wrong
        axis: refused by name instead."""
        if not self.strategy.matrices_only:
            return
        from transformers.pytorch_utils import Conv1D

        transposed = [name for name, module in self.model.named_modules() if isinstance(module, Conv1D)]
        if transposed:
            raise ValueError(
                f"mask_strategy {self.strategy.name!r} selects per output neuron of [out, in] weight matrices, but "
                f"this model's Conv1D layers ({transposed[0]}, ...) store [in, out] (GPT-2 style); use gmt, gspf, "
                "random or magnitude, whose masks do not depend on the matrix orientation"
            )

    def _fsdp_version(self) -> int:
        return int(getattr(self.accelerator.state.fsdp_plugin, "fsdp_version", 1) or 1)

    def create_optimizer(self, model=None):
        """The configured AdamW becomes the optimizer the strategy needs (``MaskedAdamW`` for
        ``gmt_mode: update``, ``SparseMaskedAdamW`` for fixed masks), with the same settings."""
        if self.optimizer is None and self.strategy.optimizer_kind != "any":
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model or self.model)
            self.optimizer_cls_and_kwargs = masking_optimizer(
                self.strategy.optimizer_kind, optimizer_cls, optimizer_kwargs, self.strategy.name
            )
        return super().create_optimizer(model)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The configured schedule; with ``dense_phase_learning_rate``, its dense steps scaled to that
        peak rate (the masked steps keep ``learning_rate``'s)."""
        built = self.lr_scheduler is not None
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        rate = self.args.dense_phase_learning_rate
        if rate is not None and not built:
            dense_steps = self.strategy.dense_phase_steps(self.args.mask_start_step)
            scale_dense_phase(scheduler, dense_steps, rate / self.args.learning_rate)
        return scheduler

    @property
    def masker(self) -> GradientMasker:
        """The masker of the current (or last) ``train()`` call."""
        if self._masker is None:
            raise RuntimeError("the masker is bound at the start of train(); train() has not started")
        return self._masker

    def train(self, *args, **kwargs):
        """The Trainer's ``train``. Under DeepSpeed a call after a finished one starts from the bare
        model: accelerate frees the finished run's engine when the next run starts, and the Trainer
        builds a new engine only from the bare model (from the old one it would train without any)."""
        if self.is_deepspeed_enabled and self._masker is not None and self.model_wrapped is not self.model:
            self.model_wrapped = self.model
        checkpoint = kwargs.pop("resume_from_checkpoint", args[0] if args else None)
        args = args[1:]
        if checkpoint is True or isinstance(checkpoint, str) and checkpoint.lower() in RESUME_LAST:
            # gmt's "last": the newest complete checkpoint of this run (the Trainer's takes the newest folder)
            checkpoint = resolve_resume_checkpoint(checkpoint, self.args.output_dir)
        if isinstance(checkpoint, (str, Path)):  # gmt.cli checks before the model loads; a direct call here
            check_resume_settings(checkpoint, self.args)
        if self.args.process_index == 0:
            self._run = current_run(self.args.output_dir)
            if self._run is None:  # a direct call (gmt.cli claims the folder before the model loads)
                lock_output_dir(self.args.output_dir)
                self._run = claim_output_dir(self.args.output_dir, checkpoint or None, self.args.overwrite_output_dir)
        return super().train(checkpoint, *args, **kwargs)

    def _bind(self) -> None:
        """Bind strategy, masker and step to this ``train()`` call's engine (a second call may build
        a new one), restore a resumed run's mask state, and hook the engine's step if it has one."""
        # The run's length is known now (epochs-based runs included): a run that masks nothing is refused.
        check_masked_steps(self.strategy, self.args.mask_start_step, self.state.max_steps, "the run's optimizer steps")
        access = self._gradient_access()
        self._masker = GradientMasker(
            self.strategy, access, mask_start_step=self.args.mask_start_step, total_steps=self.state.max_steps
        )
        optimizer = unwrap_optimizer(self.optimizer)
        grad_scaler = getattr(self.accelerator, "scaler", None)  # fp16 mixed precision without DeepSpeed
        skips_itself = self.is_deepspeed_enabled or grad_scaler is not None  # overflow path or GradScaler
        # The hook reads self._masked_step when the engine steps, so it may be installed before the step exists.
        hooked = access.install_step_hook(lambda: self._masked_step.mask(self.state.global_step))
        self._masked_step = MaskedStep(
            self._masker,
            optimizer,
            self.args.max_nonfinite_steps,
            engine_hooked=hooked,
            engine_skips=skips_itself,
            loss_scaled=self.args.fp16 and skips_itself,
        )
        self._pending_logs = None
        self._history_steps: list[int] = []
        summary = mask_summary(self.strategy, self.model, self._frozen_by_pattern, self.args)
        if self.args.process_index == 0:
            print(f"gmt: {self.args.world_size} process{'es' if self.args.world_size > 1 else ''}, "
                  f"{self._engine_name()}", flush=True)  # fmt: skip
            print(format_summary(self.strategy, summary, self.args), flush=True)
        self.log(summary.logs())
        state, self._resumed_state = self._resumed_state, None
        if state is not None:
            self._masker.load_state_dict(state)
            self._masked_step.load_state_dict(state.get("step", {}))
            if self.strategy.fixed_masks:
                self._masker.check_optimizer_agrees(optimizer)

    def _engine_name(self) -> str:
        """The engine this run trains under, in words (the start banner)."""
        if self.is_deepspeed_enabled:
            return f"DeepSpeed ZeRO-{self.accelerator.state.deepspeed_plugin.zero_stage}"
        if self.is_fsdp_enabled:
            return f"FSDP{self._fsdp_version()}"
        return "DDP" if self.args.world_size > 1 else "no distributed engine"

    def _gradient_access(self) -> GradientAccess:
        if self.is_deepspeed_enabled:
            zero_optimizer = self.model_wrapped.optimizer
            stage = self.accelerator.state.deepspeed_plugin.zero_stage
            access_cls = DeepSpeedZero3Access if stage == 3 else DeepSpeedZero12Access
            return access_cls(zero_optimizer, self.model.named_parameters())
        if self.is_fsdp_enabled:
            return FSDP2Access(self.model.named_parameters())
        return LocalGradientAccess(self.model.named_parameters())

    def _clip_grad_norm(self, model):
        self._masked_step.before_clip(self.state.global_step)
        return super()._clip_grad_norm(model)

    def _get_grad_norm(self, model, grad_norm=None):
        if grad_norm is None:  # no clipping this run: this is the first hook of the step
            self._masked_step.before_clip(self.state.global_step)
        return super()._get_grad_norm(model, grad_norm=grad_norm)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The Trainer's ``save_model``; the final model (not a checkpoint, which keeps the fp32
        master weights for resuming) in the dtype its weights were loaded in."""
        folder = output_dir or self.args.output_dir
        if self._run is not None and not _internal_call and self.args.should_save and folder == self.args.output_dir:
            record_run(folder, self._run)
        if self._master_weights is None or _internal_call:
            return super().save_model(output_dir, _internal_call)
        with self._master_weights.in_loaded_dtype(self.model):
            return super().save_model(output_dir, _internal_call)

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, plus the mask state of every rank (fixed masks, scores, sums,
        the non-finite counters).

        Written before the Trainer's own files finish (``trainer_state.json`` comes last), so a
        checkpoint with a ``trainer_state.json`` has its mask state too."""
        run_dir = self._get_output_dir(trial=trial)
        folder = Path(run_dir) / f"checkpoint-{self.state.global_step}"
        save_total_limit = self.args.save_total_limit
        try:
            if self._masker is not None:
                folder.mkdir(parents=True, exist_ok=True)
                state = {"world_size": self.args.world_size, **self._masker.state_dict(),
                         "step": self._masked_step.state_dict()}  # fmt: skip
                torch.save(state, folder / mask_state_name(self.args.process_index))
                if self.args.should_save:
                    write_mask_settings(folder, self.args)
            # The Trainer rotates at the end of its save, before gmt marks the new checkpoint complete:
            # rotated here instead, once it is complete on every rank (docs/reliability.md).
            self.args.save_total_limit = None
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self.args.save_total_limit = save_total_limit
            self.accelerator.wait_for_everyone()  # every rank's files are written: mark it complete
            if self.args.should_save and folder.is_dir():
                if self._run is not None:
                    record_run(run_dir, self._run)
                write_manifest(folder, self._run, self.args.save_only_model, batch_layout(self.args))
        except (OSError, RuntimeError, SafetensorError) as error:  # torch.save: a full disk is a RuntimeError
            if self.args.should_save:
                remove_partial_checkpoint(folder)
            raise OSError(save_failure(folder, error)) from error
        if self.args.should_save:
            rotate_checkpoints(output_dir=run_dir, save_total_limit=save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)  # fmt: skip

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = Path(checkpoint) / mask_state_name(self.args.process_index)
        if not path.is_file():
            if self.strategy.fixed_masks:
                raise ValueError(
                    f"resume_from_checkpoint {checkpoint!r} has no mask state ({path.name}): it was not written "
                    f"by a gmt run with mask_strategy {self.strategy.name!r}"
                )
            return
        state = torch.load(path, map_location=self.args.device, weights_only=True)
        if state.get("world_size") != self.args.world_size:
            raise ValueError(
                f"resume_from_checkpoint {checkpoint!r} was written by {state.get('world_size')} processes, this run "
                f"has {self.args.world_size}: the mask state is sharded like the optimizer and must match"
            )
        self._resumed_state = state  # restored when this train() call binds (on_train_begin)

    def _collect_logs(self) -> None:
        """Pop the telemetry since the last log; called where the Trainer has decided to log, the
        same point on every rank (the pop may all-reduce)."""
        said = self._masker.more_than_asked
        logs = {**self._pop_mask_logs(), "nonfinite_skipped_steps": self._masked_step.nonfinite_skipped}
        if self._step_deltas is not None:
            logs |= self._step_deltas.pop_logs()
        if said is None and self._masker.more_than_asked is not None and self.args.process_index == 0:
            print(self._masker.more_than_asked, flush=True)
        self._pending_logs = {**(self._pending_logs or {}), **logs}

    def _pop_mask_logs(self) -> dict[str, float]:
        """The masker's telemetry since the last pop, its per-tensor history marked with this step."""
        logs = self._masker.pop_logs()
        if len(self._masker.tensor_kept_history) > len(self._history_steps):
            self._history_steps.append(self.state.global_step)
        return logs

    def mask_history(self) -> dict:
        """Each tensor's kept fraction and each scope group's threshold at every logging point of
        the last ``train()`` (gmt.plots draws them; written as ``gmt_mask_history.json``)."""
        strategy = self.strategy
        return {"strategy": strategy.name, "scope": getattr(strategy, "mask_scope", None),
                "tensors": list(strategy.layout.names), "numels": [int(n) for n in strategy.layout.numels],
                "groups": list(getattr(strategy, "group_names", [])),
                "steps": list(self._history_steps), "kept": self._masker.tensor_kept_history,
                "thresholds": self._masker.threshold_history}  # fmt: skip

    def _start_step_deltas(self) -> None:
        """step_delta_every: compare from the weights this train() starts with, on the main process
        (every rank of DDP or ZeRO-1/2 holds the same whole weights)."""
        self._step_deltas = None
        if not self.args.step_delta_every or self.args.process_index != 0:
            return
        loaded = self._master_weights.loaded_dtypes if self._master_weights is not None else None
        out = Path(self.args.step_delta_dir) if self.args.step_delta_dir else None
        self._step_deltas = StepDeltas(lambda: saved_weights(self.model, loaded), out)

    def _take_step_delta(self, step: int) -> None:
        if self._step_deltas is not None and step % self.args.step_delta_every == 0:
            self._step_deltas.take(step)

    def _end_of_run(self) -> None:
        """Count the steps not logged yet (every rank: it may all-reduce), then say and log the
        run's mean kept fraction and its optimizer state per rank (the largest rank's: what has to
        fit in a device's memory; under ZeRO each rank holds a shard)."""
        self._pop_mask_logs()
        per_rank = torch.tensor([optimizer_state_bytes(self.optimizer)], dtype=torch.int64,
                                device=self.accelerator.device)  # fmt: skip
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(per_rank, op=dist.ReduceOp.MAX)
        logs = {"gmt/optimizer_state_bytes_per_rank": int(per_rank.item())}
        kept = self._masker.run_kept_fraction()
        if kept is not None:
            if self.args.process_index == 0:
                print(f"gmt: mean kept fraction over the run's {self._masker.run_steps} optimizer steps: {kept:.4f}",
                      flush=True)  # fmt: skip
            logs["gmt/run_kept_fraction"] = kept
        self.log(logs)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """Add the collected mask telemetry to the Trainer's training logs (so every ``report_to``
        gets it). No collective here: ``log`` may be called on one rank only."""
        if self._pending_logs is not None and "loss" in logs:
            logs, self._pending_logs = {**logs, **self._pending_logs}, None
        super().log(logs, *args, **kwargs)


class _MaskStepCallback(TrainerCallback):
    """The public Trainer events gmt's step needs: bind at the start of every ``train()``, check
    that each step was masked before its optimizer step, collect telemetry where logging happens."""

    def __init__(self, trainer: MaskingMixin) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._bind()
        self.trainer._start_step_deltas()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._masked_step.check_masked(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._take_step_delta(state.global_step)  # the step's update is in the weights now
        if control.should_log:
            self.trainer._collect_logs()

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer._end_of_run()

    def on_epoch_end(self, args, state, control, **kwargs):
        if control.should_log:
            self.trainer._collect_logs()


def mask_state_name(process_index: int) -> str:
    """File name of one rank's mask state inside a checkpoint folder."""
    return f"gmt_mask_state_rank{process_index}.pt"


class GMTSFTTrainer(MaskingMixin, ReportsDroppedRows, SFTTrainer):
    """``trl.SFTTrainer`` that masks the accumulated gradient at every optimizer step.

    Takes a ``gmt.config.GMTSFTConfig`` as ``args``; everything else is ``SFTTrainer``'s.
    """

    data_layout = SFT_DATA  # what gmt/sft.py checks the data for


class GMTDPOTrainer(MaskingMixin, ReportsDroppedRows, DPOTrainer):
    """``trl.DPOTrainer`` that masks the policy's accumulated gradient at every optimizer step.

    Takes a ``gmt.config.GMTDPOConfig`` as ``args``. The reference model is TRL's (a separate frozen
    copy, or the adapter-disabled base under PEFT); the mask covers only the policy.
    """

    data_layout = DPO_DATA  # what gmt/dpo.py checks the data for and how it reads H4's layout


class GMTGRPOTrainer(MaskingMixin, GRPOTrainer):
    """``trl.GRPOTrainer`` that masks the policy's gradient, accumulated over an optimizer step's
    micro-batches and generation rounds, at every optimizer step.

    Takes a ``gmt.config.GMTGRPOConfig`` as ``args``; everything else (reward functions, generation,
    the reference model) is ``GRPOTrainer``'s. ``gmt grpo`` (gmt/grpo.py) runs it from a recipe.
    """

    data_layout = GRPO_DATA  # what gmt/grpo.py checks the data for (with the columns its rewards read)
