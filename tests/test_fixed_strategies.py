"""gps, grft and gspf in the SFT and DPO trainers: what moves, how much is kept, when gspf reselects,
and how small the optimizer state is."""

import pytest
import torch
from outcomes import GSPF_LAST_SELECTION, OUTCOMES, TEST_SEED, check, gspf_moved_fraction, gspf_run
from test_dpo_trainer import train as dpo_trainer
from test_sft_trainer import base_weights, train, weights
from transformers import TrainerCallback

from gmt.masking import GSPFStrategy, keep_count, scale_dense_phase
from gmt.masking.sparse_optim import SparseMaskedAdamW, optimizer_state_bytes


def kept_masks(trainer) -> dict[str, torch.Tensor | None]:
    """The strategy's fixed mask of each trainable parameter (None: dense), shaped like it."""
    strategy = trainer.masker.strategy
    masks = {}
    for name, indices, param in zip(strategy.layout.names, strategy.kept_indices, trainer.masker.access.params):
        if indices is None:
            masks[name] = None
            continue
        mask = torch.zeros(param.numel(), dtype=torch.bool)
        mask[indices] = True
        masks[name] = mask.view(param.shape)
    return masks


def sparse_optimizer(trainer) -> SparseMaskedAdamW:
    optimizer = trainer.optimizer
    while not isinstance(optimizer, SparseMaskedAdamW):
        optimizer = optimizer.optimizer
    return optimizer


class StopAfter(TrainerCallback):
    """Ends training after ``steps`` optimizer steps (a run of only the selection pass would be refused)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step >= self.steps


def test_gps_selection_pass_moves_nothing(tiny_assets, tmp_path):
    start = base_weights(tiny_assets)
    stop = [StopAfter(2)]
    trainer = train(tiny_assets, tmp_path, mask_strategy="gps", selection_steps=2, max_steps=4, callbacks=stop)
    assert trainer.state.global_step == 2
    after = weights(trainer.model)
    assert all(torch.equal(start[name], after[name]) for name in start)
    assert trainer.masker.strategy.kept_indices is not None  # the pass ran: everything held still


def test_gps_trains_exactly_k_inputs_per_neuron(tiny_assets, tmp_path):
    start = base_weights(tiny_assets)
    trainer = train(tiny_assets, tmp_path, mask_strategy="gps", gps_k=3, max_steps=4)
    after = weights(trainer.model)
    masks = kept_masks(trainer)
    assert not any("norm" in name for name in masks)  # norms are frozen by default
    for name in start:
        changed = after[name] != start[name]
        if "norm" in name:
            assert not changed.any(), name
            continue
        keep = masks[name]
        assert keep.sum(dim=1).tolist() == [3] * keep.shape[0], name  # exactly K per row
        assert not (changed & ~keep).any(), name  # outside the mask: bitwise unchanged
        if "embed_tokens" not in name:  # rows of tokens absent from the batches get no gradient
            assert torch.equal(changed, keep), name  # every kept entry trained
    budget = 3 * sum(start[name].shape[0] for name in masks)
    assert trainer.masker.strategy.kept_count() == budget


@pytest.mark.parametrize("axis", ["row", "column"])
def test_grft_changes_whole_rows_or_columns(tiny_assets, tmp_path, axis):
    start = base_weights(tiny_assets)
    trainer = train(tiny_assets, tmp_path, mask_strategy="grft", grft_k=2, grft_axis=axis, max_steps=3)
    after = weights(trainer.model)
    masks = kept_masks(trainer)
    for name in start:
        changed = after[name] != start[name]
        if name not in masks:  # norms (and biases) are frozen by default
            assert not changed.any(), name
            continue
        keep = masks[name]
        lines = keep.all(dim=1) if axis == "row" else keep.all(dim=0)
        assert int(lines.sum()) == 2, name
        expanded = lines[:, None].expand_as(keep) if axis == "row" else lines[None, :].expand_as(keep)
        assert torch.equal(keep, expanded), name  # whole lines only
        assert not (changed & ~keep).any(), name
        if axis == "row" or "embed_tokens" not in name:
            assert torch.equal(changed, keep), name


def test_grft_pull_keeps_weights_nearer_the_pretrained_ones(tiny_assets, tmp_path):
    # The ratio's spread over seeds and thread counts: docs/margins/margins.md (check_margins).
    outcome = OUTCOMES["grft_pull"]
    check(outcome.measure(tiny_assets, tmp_path, TEST_SEED), outcome.bounds)


def test_gspf_reselects_on_schedule_and_keeps_its_budget(tiny_assets, tmp_path, monkeypatch):
    selections = []
    reselect = GSPFStrategy._reselect

    def recording_reselect(self, grads, step):
        selections.append(step)
        return reselect(self, grads, step)

    monkeypatch.setattr(GSPFStrategy, "_reselect", recording_reselect)
    trainer, after_last_selection = gspf_run(tiny_assets, tmp_path, TEST_SEED)
    assert selections == [2, 4, GSPF_LAST_SELECTION]  # warm-up end, then every 2 steps, never at/after 80% (step 8)
    total = sum(p.numel() for p in trainer.model.parameters())
    assert trainer.masker.strategy.kept_count() == keep_count(total, 1 - 0.003)
    # Nothing moves outside the last mask, and the kept entries train (the fraction's spread over
    # seeds and thread counts: docs/margins/margins.md).
    check({"moved_over_kept": gspf_moved_fraction(trainer, after_last_selection)}, OUTCOMES["gspf_moved"].bounds)
    # Sparse state: 16 bytes per kept entry against dense AdamW's 8 per entry.
    assert optimizer_state_bytes(sparse_optimizer(trainer)) <= 0.02 * 8 * total
    assert trainer.masker.strategy.scores is None  # score buffers freed after the last selection


@pytest.mark.parametrize(("strategy", "dense"), [({"mask_strategy": "gspf", "gspf_warmup_steps": 3}, 3),
                                               ({"mask_strategy": "gmt", "mask_start_step": 2}, 2)])
def test_dense_phase_learning_rate_scales_the_dense_steps_only(tiny_assets, tmp_path, strategy, dense):
    rates = []

    class Rates(TrainerCallback):  # the rate each optimizer step is taken with
        def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
            rates.append(optimizer.param_groups[0]["lr"])

    train(tiny_assets, tmp_path, **strategy, max_steps=6, learning_rate=1e-2, dense_phase_learning_rate=1e-3,
          lr_scheduler_type="linear", warmup_steps=0, callbacks=[Rates()])  # fmt: skip
    scheduled = [1e-2 * (6 - step) / 6 for step in range(6)]  # the linear decay, the same in both phases
    expected = [rate / 10 if step < dense else rate for step, rate in enumerate(scheduled)]
    assert rates == pytest.approx(expected, rel=1e-6)


def test_dense_phase_learning_rate_needs_a_lambda_schedule():
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-2)
    with pytest.raises(ValueError, match="dense_phase_learning_rate .* ReduceLROnPlateau"):
        scale_dense_phase(torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer), 3, 0.1)


def test_fixed_strategies_train_the_dpo_policy_only(tiny_assets, tmp_path):
    trainer = dpo_trainer(tiny_assets, tmp_path, mask_strategy="gps", gps_k=2, max_steps=3)
    start, reference = weights(trainer.model), weights(trainer.ref_model)
    trainer.train()
    after, masks = weights(trainer.model), kept_masks(trainer)
    moved = 0
    for name in start:
        changed = after[name] != start[name]
        assert not (changed & ~masks[name]).any() if name in masks else not changed.any(), name
        moved += int(changed.sum())
    assert moved > 0
    assert all(torch.equal(reference[n], p) for n, p in trainer.ref_model.named_parameters())


def test_frozen_and_dense_params_of_a_top_k_strategy(tiny_assets, tmp_path):
    start = base_weights(tiny_assets)
    trainer = train(tiny_assets, tmp_path, mask_ratio=0.9, gmt_mode="update", max_steps=1,
                    frozen_params="embed_tokens", dense_params="lm_head")  # fmt: skip
    after = weights(trainer.model)
    changed = {name: int((after[name] != start[name]).sum()) for name in start}
    assert changed["model.embed_tokens.weight"] == 0  # frozen: no gradient, no state, no update
    assert changed["lm_head.weight"] == start["lm_head.weight"].numel()  # dense: every entry updated
    rest = [name for name in start if name not in ("model.embed_tokens.weight", "lm_head.weight")]
    assert sum(changed[n] for n in rest) == keep_count(sum(start[n].numel() for n in rest), 0.9)


RESUMED = {
    "gps": dict(gps_k=4, selection_steps=1),  # the kept indices
    "grft": dict(grft_k=2, selection_steps=1, grft_lambda=0.1),  # ... and the pretrained weights
    "gspf": dict(gspf_warmup_steps=1, gspf_keep_ratio=0.1, gspf_reselect_every=2),  # ... and scores and sums
}


@pytest.mark.parametrize("name", sorted(RESUMED))
def test_a_resumed_mask_state_moves_to_its_gradients_device_at_the_first_step(name):
    # A GPU run reads the checkpoint onto its GPU while offloaded gradients are on the CPU
    # (docs/distributed.md); here the state is read onto the CPU and the gradients are on ``meta``,
    # the one other device a CPU machine has: every restored tensor must follow its gradient.
    from gmt.masking import LocalGradientAccess, build_strategy

    params = [torch.nn.Parameter(torch.randn(8, 16)) for _ in range(2)]
    named = [(f"model.layers.{index}.mlp.weight", param) for index, param in enumerate(params)]

    def built():
        strategy = build_strategy(name, **RESUMED[name])
        strategy.setup(LocalGradientAccess(named), total_steps=20)
        return strategy

    chooser = built()
    for step in range(3):
        chooser.select([torch.randn(8, 16) for _ in params], step)
    resumed = built()
    resumed.load_state_dict(chooser.state_dict())
    restored = [t for n in resumed.restored_state_names() for t in getattr(resumed, n) or [] if t is not None]
    restored += list(getattr(resumed, "scores", None) or [])
    assert restored and all(t.device.type == "cpu" for t in restored)
    resumed._place_restored_state([torch.empty(8, 16, device="meta") for _ in params])
    moved = [t for n in resumed.restored_state_names() for t in getattr(resumed, n) or [] if t is not None]
    moved += list(getattr(resumed, "scores", None) or [])
    assert len(moved) == len(restored) and all(t.device.type == "meta" for t in moved)
