"""The step seam checks itself: a bypassed hook stops the run, every train() call is hooked, the
non-finite counters and fixed masks survive a resume intact, telemetry collectives stay out of log()."""

import re

import pytest
import torch
from datasets import load_dataset
from test_sft_trainer import COMMON, PoisonedTrainer, weights
from transformers import AutoModelForCausalLM
from trl import SFTTrainer

from conftest import ACCELERATE_CPU_ZERO3, run_sft
from gmt.config import GMTSFTConfig
from gmt.masking import MaskNotAppliedError, NonFiniteGradientError
from gmt.trainer import GMTSFTTrainer, mask_state_name


def make_trainer(tiny_assets, output_dir, trainer_cls=GMTSFTTrainer, model=None, **overrides):
    settings = {**COMMON, "max_steps": 3, "output_dir": str(output_dir), **overrides}
    dataset = load_dataset("json", data_files=str(tiny_assets / "data/sft/train.jsonl"), split="train")
    model = model or AutoModelForCausalLM.from_pretrained(tiny_assets / "base")
    return trainer_cls(model=model, args=GMTSFTConfig(**settings), train_dataset=dataset.remove_columns("answer"))


class BypassingTrainer(GMTSFTTrainer):
    """Overrides the clipping hook without calling gmt's (as a renamed private hook would leave it)."""

    def _clip_grad_norm(self, model):
        return SFTTrainer._clip_grad_norm(self, model)


def test_a_bypassed_mask_hook_stops_the_run_before_any_update(tiny_assets, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_assets / "base")
    start = weights(model)
    trainer = make_trainer(tiny_assets, tmp_path, trainer_cls=BypassingTrainer, model=model, mask_ratio=0.5)
    with pytest.raises(MaskNotAppliedError, match="optimizer step 0 was not masked"):
        trainer.train()
    after = weights(model)
    assert all(torch.equal(start[name], after[name]) for name in start)  # stopped before the update


def test_zero3_masks_every_train_call(tiny_assets, tmp_path):
    # A second train() builds a new ZeRO engine: it is hooked too, and masks every step.
    base, data = tiny_assets / "base", tiny_assets / "data/sft"
    result = run_sft("recipes/tiny/sft_gmt.yaml", base, data, tmp_path, "--max_steps", "2", "--logging_steps", "1",
                     "--per_device_train_batch_size", "4", "--max_length", "96", "--mask_ratio", "0.5",
                     "--gradient_accumulation_steps", "1", "--ddp_backend", "gloo", "--report_to", "none",
                     launcher=ACCELERATE_CPU_ZERO3, script="tests/sft_train_twice.py")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for run in (1, 2):
        (line,) = re.findall(rf"run {run} kept fractions: \[(.*)\]", result.stdout)
        fractions = [float(value) for value in line.split(",") if value.strip()]
        assert len(fractions) == 2 and all(0.5 <= fraction < 0.51 for fraction in fractions), (run, fractions)


def resume(tiny_assets, output_dir, checkpoint, trainer_cls=GMTSFTTrainer, **overrides):
    trainer = make_trainer(tiny_assets, output_dir, trainer_cls=trainer_cls, **overrides)
    trainer.train(resume_from_checkpoint=str(checkpoint))
    return trainer


@pytest.mark.parametrize("poisoned_after_resume", [True, False], ids=["stops", "counts"])
def test_nonfinite_counters_survive_a_resume(tiny_assets, tmp_path, poisoned_after_resume):
    # Step 2 is non-finite and skipped; the run saves at step 3. Resumed, step 3 is the second bad
    # step in a row, one more than max_nonfinite_steps allows, exactly as in a run that never stopped.
    settings = {"mask_ratio": 0.5, "max_nonfinite_steps": 1, "save_strategy": "steps", "save_steps": 3}
    PoisonedTrainer.poisoned_steps = (2,)
    make_trainer(tiny_assets, tmp_path, trainer_cls=PoisonedTrainer, **settings).train()
    PoisonedTrainer.poisoned_steps = (3,) if poisoned_after_resume else ()
    checkpoint = tmp_path / "checkpoint-3"
    if poisoned_after_resume:
        with pytest.raises(NonFiniteGradientError, match=r"2 optimizer steps in a row \(max_nonfinite_steps=1\)"):
            resume(tiny_assets, tmp_path, checkpoint, trainer_cls=PoisonedTrainer, **{**settings, "max_steps": 5})
    else:
        trainer = resume(tiny_assets, tmp_path, checkpoint, trainer_cls=PoisonedTrainer, **{**settings, "max_steps": 5})
        skipped = [entry["nonfinite_skipped_steps"] for entry in trainer.state.log_history if "loss" in entry]
        assert skipped[-1] == 1  # the skip before the checkpoint is still counted


def test_resume_refuses_a_fixed_mask_the_optimizer_state_does_not_share(tiny_assets, tmp_path):
    settings = {"mask_strategy": "gspf", "gspf_warmup_steps": 1, "gspf_keep_ratio": 0.05, "optim": "adamw_torch",
                "save_strategy": "steps", "save_steps": 3}  # fmt: skip
    make_trainer(tiny_assets, tmp_path, **settings).train()
    checkpoint = tmp_path / "checkpoint-3"
    resume(tiny_assets, tmp_path / "intact", checkpoint, **{**settings, "max_steps": 4})  # agrees: resumes
    path = checkpoint / mask_state_name(0)
    state = torch.load(path, weights_only=True)
    kept = state["strategy_state"]["kept_indices"]
    index = next(i for i, indices in enumerate(kept) if indices is not None and indices.numel())
    kept[index] = torch.arange(kept[index].numel())  # the mask of another run, same size
    torch.save(state, path)
    with pytest.raises(ValueError, match="sparse state and the fixed mask disagree"):
        resume(tiny_assets, tmp_path / "tampered", checkpoint, **{**settings, "max_steps": 4})


class CollectiveRecordingTrainer(GMTSFTTrainer):
    """Records, for every all-reduce of the masking, whether it ran inside ``log()``."""

    inside_log = False

    def _gradient_access(self):
        access = super()._gradient_access()
        self.collectives: list[bool] = []
        access.all_reduce = lambda tensor: self.collectives.append(self.inside_log)  # one rank: the sum is itself
        return access

    def log(self, logs, *args, **kwargs):
        self.inside_log = True
        try:
            super().log(logs, *args, **kwargs)
        finally:
            self.inside_log = False


def test_telemetry_collectives_run_where_logging_is_decided_not_in_log(tiny_assets, tmp_path):
    trainer = make_trainer(tiny_assets, tmp_path, trainer_cls=CollectiveRecordingTrainer, mask_ratio=0.5)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "mask/kept_fraction" in entry]
    assert len(logged) == 3 and all(0.5 <= entry["mask/kept_fraction"] < 0.51 for entry in logged)
    assert trainer.collectives and not any(trainer.collectives)


def test_resume_refuses_changed_mask_settings_by_name(tiny_assets, tmp_path):
    saved = {"mask_ratio": 0.2, "max_steps": 4, "save_strategy": "steps", "save_steps": 2}
    make_trainer(tiny_assets, tmp_path, **saved).train()
    checkpoint = tmp_path / "checkpoint-2"
    changes = {"mask_ratio": (0.5, "mask_ratio: 0.2 in the checkpoint, 0.5 now"),
               "mask_scope": ("layer", "mask_scope: 'global' in the checkpoint, 'layer' now"),
               "gmt_mode": ("update", "gmt_mode: 'grad' in the checkpoint, 'update' now"),
               "frozen_params": ("embed", "frozen_params: '' in the checkpoint, 'embed' now"),
               "dense_params": ("lm_head", "dense_params: '' in the checkpoint, 'lm_head' now"),
               "mask_start_step": (1, "mask_start_step: 0 in the checkpoint, 1 now")}  # fmt: skip
    for name, (value, message) in changes.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            resume(tiny_assets, tmp_path, checkpoint, **{**saved, name: value})
    # Named in resume_mask_changes, the ratio changes from the checkpoint's step on.
    trainer = resume(tiny_assets, tmp_path, checkpoint, **{**saved, "mask_ratio": 0.5},
                     resume_mask_changes="mask_ratio")  # fmt: skip
    kept = [entry["mask/kept_fraction"] for entry in trainer.state.log_history if "mask/kept_fraction" in entry]
    assert trainer.state.global_step == 4 and [round(k, 2) for k in kept] == [0.8, 0.8, 0.5, 0.5]


def test_resume_with_changed_mask_settings_stops_before_the_model_loads(tiny_assets, tmp_path):
    saved = ("--mask_ratio", "0.2", "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2")
    first = run_sft("recipes/tiny/sft_gmt.yaml", tiny_assets / "base", tiny_assets / "data/sft", tmp_path, *saved)
    assert first.returncode == 0, first.stderr[-2000:]
    resumed = run_sft("recipes/tiny/sft_gmt.yaml", tmp_path / "no-model", tiny_assets / "data/sft", tmp_path,
                      "--mask_ratio", "0.5", "--max_steps", "4", "--resume_from_checkpoint", "last")  # fmt: skip
    assert resumed.returncode != 0
    assert "mask_ratio: 0.2 in the checkpoint, 0.5 now" in resumed.stderr
    assert "no-model" not in resumed.stderr  # nothing tried to load it
