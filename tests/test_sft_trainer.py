"""GMTSFTTrainer on the tiny base: exactness at r = 0, frozen entries, accumulation, telemetry."""

import json

import pytest
import torch
from datasets import load_dataset
from outcomes import OUTCOMES, TEST_SEED, check
from transformers import AutoModelForCausalLM
from trl import SFTConfig, SFTTrainer

from conftest import TINY_TRAINING_ARGS
from gmt.config import GMTSFTConfig
from gmt.masking import NonFiniteGradientError, keep_count
from gmt.trainer import GMTSFTTrainer

COMMON = {**TINY_TRAINING_ARGS, "assistant_only_loss": True}


def train(
    tiny_assets, tmp_path, trainer_cls=GMTSFTTrainer, config_cls=GMTSFTConfig, model=None, callbacks=None, **overrides
):
    settings = {**COMMON, "max_steps": 3, "output_dir": str(tmp_path / "run"), **overrides}
    dataset = load_dataset("json", data_files=str(tiny_assets / "data/sft/train.jsonl"), split="train")
    model = model or AutoModelForCausalLM.from_pretrained(tiny_assets / "base")
    trainer = trainer_cls(
        model=model, args=config_cls(**settings), train_dataset=dataset.remove_columns("answer"), callbacks=callbacks
    )
    trainer.train()
    return trainer


def weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def base_weights(tiny_assets) -> dict[str, torch.Tensor]:
    return weights(AutoModelForCausalLM.from_pretrained(tiny_assets / "base"))


def mask_logs(trainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "mask/kept_fraction" in entry]


@pytest.mark.parametrize("gmt_mode", ["grad", "update"])
def test_ratio_zero_matches_plain_sft_trainer_exactly(tiny_assets, tmp_path, gmt_mode):
    plain = train(tiny_assets, tmp_path / "plain", trainer_cls=SFTTrainer, config_cls=SFTConfig)
    masked = train(tiny_assets, tmp_path / "gmt", mask_strategy="gmt", mask_ratio=0.0, gmt_mode=gmt_mode)
    plain_weights, masked_weights = weights(plain.model), weights(masked.model)
    assert plain_weights.keys() == masked_weights.keys()
    for name in plain_weights:
        assert torch.equal(plain_weights[name], masked_weights[name]), name
    start = base_weights(tiny_assets)
    assert any(not torch.equal(start[n], plain_weights[n]) for n in start)  # training did move them


def test_update_mode_changes_exactly_the_kept_entries(tiny_assets, tmp_path):
    start = base_weights(tiny_assets)
    trainer = train(tiny_assets, tmp_path, mask_ratio=0.9, gmt_mode="update", max_steps=1)
    after = weights(trainer.model)
    total = sum(t.numel() for t in start.values())
    changed = sum(int((after[n] != start[n]).sum()) for n in start)
    assert changed == keep_count(total, 0.9)  # every kept entry moved, nothing else did
    (log,) = mask_logs(trainer)
    assert log["mask/kept_fraction"] == pytest.approx(changed / total)


def test_grad_mode_zeroes_the_gradient_adamw_sees(tiny_assets, tmp_path):
    # In grad mode, on the first step, an entry whose gradient was dropped has zero Adam moments.
    trainer = train(tiny_assets, tmp_path, mask_ratio=0.7, gmt_mode="grad", max_steps=1, optim="adamw_torch")
    optimizer = trainer.optimizer.optimizer
    total = sum(p.numel() for p in trainer.model.parameters())
    moved = sum(int((optimizer.state[p]["exp_avg"] != 0).sum()) for p in trainer.model.parameters())
    assert moved == keep_count(total, 0.7)


def test_mask_is_computed_once_per_step_from_the_accumulated_gradient(tiny_assets, tmp_path):
    calls = []

    class CountingTrainer(GMTSFTTrainer):
        def _bind(self):
            super()._bind()
            apply = self._masker.apply

            def counting_apply(step, optimizer=None):
                calls.append(step)
                apply(step, optimizer)

            self._masker.apply = counting_apply

    # 4 accumulated micro-batches of 4 against one batch of 16: the same gradient per step,
    # so the same masks and (up to float rounding) the same weights, only if the mask is
    # computed from the accumulated gradient. The distance's spread: docs/margins/margins.md.
    outcome = OUTCOMES["accumulation_distance"]
    check(outcome.measure(tiny_assets, tmp_path, TEST_SEED, accumulating_trainer=CountingTrainer), outcome.bounds)
    assert calls == [0, 1]  # once per optimizer step, not per micro-batch or per hook


def test_mask_start_step_and_telemetry(tiny_assets, tmp_path):
    trainer = train(tiny_assets, tmp_path, mask_ratio=0.5, mask_start_step=2, max_steps=3, mask_scope="layer")
    logs = mask_logs(trainer)
    assert [log["mask/kept_fraction"] for log in logs[:2]] == [1.0, 1.0]
    assert logs[2]["mask/kept_fraction"] >= 0.5
    layers = {key.removeprefix("mask/kept_fraction/") for key in logs[-1] if key.startswith("mask/kept_fraction/")}
    assert layers == {
        "model.embed_tokens",
        "model.layers.0",
        "model.layers.1",
        "model.layers.2",
        "model.layers.3",
        "model.norm",
        "lm_head",
    }
    # layer scope: every block keeps its own half...
    for layer in layers - {"model.embed_tokens"}:
        assert logs[-1][f"mask/kept_fraction/{layer}"] == pytest.approx(0.5, abs=0.01)
    # ...except the embedding: rows of tokens absent from the batch have zero gradient, more than
    # half of them, so T = 0 there and the tie rule keeps the whole block.
    assert logs[-1]["mask/kept_fraction/model.embed_tokens"] == 1.0
    assert logs[-1]["mask/threshold"] > 0
    history = trainer.state.log_history
    assert json.loads(json.dumps(history)) == history  # telemetry is plain numbers, fit for any report_to


class PoisonedTrainer(GMTSFTTrainer):
    """Puts a NaN into the gradient during the optimizer steps in ``poisoned_steps``."""

    poisoned_steps: tuple[int, ...] = ()

    def training_step(self, *args, **kwargs):
        loss = super().training_step(*args, **kwargs)
        if self.state.global_step in self.poisoned_steps:
            self.model.lm_head.weight.grad[0, 0] = float("nan")
        return loss


@pytest.mark.parametrize(
    "settings",
    [{"mask_ratio": 0.5}, {"mask_strategy": "full"}, {"mask_strategy": "gspf", "gspf_warmup_steps": 1}],
    ids=["gmt", "full", "gspf"],
)
def test_nonfinite_steps_are_skipped_and_counted(tiny_assets, tmp_path, settings):
    PoisonedTrainer.poisoned_steps = (0, 1)
    model = AutoModelForCausalLM.from_pretrained(tiny_assets / "base")
    start = weights(model)
    trainer = train(tiny_assets, tmp_path, trainer_cls=PoisonedTrainer, model=model, max_steps=2, **settings)
    # Both steps skipped: no weight moved, nothing non-finite reached them, and the logs say so.
    after = weights(model)
    assert all(torch.equal(start[name], after[name]) for name in start)
    last_step = [log for log in trainer.state.log_history if "nonfinite_skipped_steps" in log][-1]
    assert last_step["nonfinite_skipped_steps"] == 2 and last_step["step"] == 2
    if settings.get("mask_strategy") == "gspf":  # the warm-up recorded nothing from the bad steps
        assert trainer.masker.strategy._recorded_steps == 0


def test_nonfinite_gradient_stops_the_run_after_max_nonfinite_steps(tiny_assets, tmp_path):
    PoisonedTrainer.poisoned_steps = tuple(range(10))
    model = AutoModelForCausalLM.from_pretrained(tiny_assets / "base")
    start = weights(model)
    with pytest.raises(NonFiniteGradientError, match=r"2 optimizer steps in a row \(max_nonfinite_steps=1\)"):
        train(tiny_assets, tmp_path, trainer_cls=PoisonedTrainer, model=model, mask_ratio=0.5, max_nonfinite_steps=1)
    after = weights(model)
    assert all(torch.equal(start[name], after[name]) for name in start)


def test_logged_loss_is_finite_and_drops(tiny_assets, tmp_path):
    # The drop's spread over seeds and thread counts is in docs/margins/margins.md (check_margins).
    outcome = OUTCOMES["sft_loss_drop"]
    check(outcome.measure(tiny_assets, tmp_path, TEST_SEED), outcome.bounds)
