"""GradientMasker on a small module: what is zeroed, what the optimizer is told, the telemetry."""

import pytest
import torch

from gmt.masking import (
    GMTStrategy,
    GradientMasker,
    LocalGradientAccess,
    MaskedAdamW,
    NonFiniteGradientError,
    RandomStrategy,
    ThresholdSearch,
    build_strategy,
    keep_count,
)


def model_with_grads(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    model(torch.randn(8, 16)).square().mean().backward()
    return model


def total_entries(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("scope", ["global", "tensor", "layer"])
@pytest.mark.parametrize("search", ["radix", "bracket"])
def test_grad_mode_zeroes_exactly_the_entries_below_threshold(scope, search):
    model = model_with_grads()
    original = [p.grad.clone() for p in model.parameters()]
    strategy = GMTStrategy(0.75, scope)
    if search == "bracket":  # sampled brackets and kept counts found by the search, as on big models
        strategy.search = ThresholdSearch(sample_entries=64, chunk_entries=256, small_entries=16)
    masker = GradientMasker(strategy, LocalGradientAccess(model.named_parameters()))
    masker.apply(step=0)
    kept = sum(int((p.grad != 0).sum()) for p in model.parameters())
    if scope == "global":
        assert kept == keep_count(total_entries(model), 0.75)
    else:
        assert kept == sum(keep_count(p.numel(), 0.75) for p in model.parameters())  # tensor == layer here
    for p, grad in zip(model.parameters(), original):
        survivors = p.grad != 0
        assert torch.equal(p.grad[survivors], grad[survivors])  # kept entries untouched
        if survivors.any() and (~survivors).any():
            assert grad[~survivors].abs().max() <= grad[survivors].abs().min()
    logs = masker.pop_logs()
    assert logs["mask/kept_fraction"] == pytest.approx(kept / total_entries(model))
    assert {"mask/kept_fraction/0", "mask/kept_fraction/2"} <= set(logs)
    assert logs["mask/threshold"] > 0


def test_update_mode_hands_masks_to_the_optimizer():
    model = model_with_grads()
    optimizer = MaskedAdamW(model.parameters(), lr=1e-2)
    masker = GradientMasker(GMTStrategy(0.9, gmt_mode="update"), LocalGradientAccess(model.named_parameters()))
    before = [p.detach().clone() for p in model.parameters()]
    masker.apply(step=0, optimizer=optimizer)
    optimizer.step()
    changed = sum(int((p != b).sum()) for p, b in zip(model.parameters(), before))
    assert changed == keep_count(total_entries(model), 0.9)


def test_update_mode_refuses_an_optimizer_it_cannot_mask():
    model = model_with_grads()
    masker = GradientMasker(GMTStrategy(0.5, gmt_mode="update"), LocalGradientAccess(model.named_parameters()))
    with pytest.raises(TypeError, match="MaskedAdamW"):
        masker.apply(step=0, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


def test_mask_start_step_and_ratio_zero_leave_the_gradient_alone():
    for strategy, start, step in ((GMTStrategy(0.5), 3, 2), (GMTStrategy(0.0), 0, 0), (build_strategy("full"), 0, 0)):
        model = model_with_grads()
        original = [p.grad.clone() for p in model.parameters()]
        masker = GradientMasker(strategy, LocalGradientAccess(model.named_parameters()), mask_start_step=start)
        masker.apply(step=step)
        assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), original))
        assert masker.pop_logs()["mask/kept_fraction"] == 1.0


@pytest.mark.parametrize("strategy", ["gmt", "random", "full"])
def test_nonfinite_gradient_never_reaches_the_mask(strategy):
    model = model_with_grads()
    model[0].weight.grad[3, 4] = float("nan")
    before = [p.grad.clone() for p in model.parameters()]
    options = {} if strategy == "full" else {"mask_ratio": 0.5}  # full chooses without reading Γ, and still checks it
    masker = GradientMasker(build_strategy(strategy, **options), LocalGradientAccess(model.named_parameters()))
    with pytest.raises(NonFiniteGradientError):
        masker.apply(step=0)
    for p, grad in zip(model.parameters(), before):
        assert torch.equal(p.grad.nan_to_num(7.0), grad.nan_to_num(7.0))  # nothing was zeroed


def test_bad_strategy_settings_are_refused():
    with pytest.raises(ValueError, match="mask_strategy"):
        build_strategy("lottery")
    with pytest.raises(ValueError, match="gmt_mode"):
        GradientMasker(GMTStrategy(0.5, gmt_mode="weights"), LocalGradientAccess([]))
    with pytest.raises(ValueError, match="mask_scope"):
        GradientMasker(GMTStrategy(0.5, "row"), LocalGradientAccess(torch.nn.Linear(2, 2).named_parameters()))


def test_masking_core_does_not_import_trl():
    import subprocess
    import sys

    code = "import sys, gmt.masking; sys.exit('trl' in sys.modules or 'transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_random_baseline_keeps_exactly_k_fresh_or_fixed():
    def masks_over_steps(fixed: bool) -> list[list[torch.Tensor]]:
        model = model_with_grads()
        strategy = RandomStrategy(0.7, random_fixed=fixed, seed=5)
        masker = GradientMasker(strategy, LocalGradientAccess(model.named_parameters()))
        out = []
        for step in range(2):
            for p in model.parameters():
                p.grad = torch.ones_like(p)
            masker.apply(step=step)
            out.append([p.grad != 0 for p in model.parameters()])
        return out

    total = total_entries(model_with_grads())
    fresh, fixed = masks_over_steps(False), masks_over_steps(True)
    for masks in (*fresh, *fixed):
        assert sum(int(m.sum()) for m in masks) == keep_count(total, 0.7)
    assert any(not torch.equal(a, b) for a, b in zip(*fresh))  # a new draw every step
    assert all(torch.equal(a, b) for a, b in zip(*fixed))  # the same mask every step


def test_magnitude_baseline_keeps_the_largest_weights():
    model = model_with_grads()
    masker = GradientMasker(build_strategy("magnitude", mask_ratio=0.75), LocalGradientAccess(model.named_parameters()))
    masker.apply(step=0)
    kept = [p.grad != 0 for p in model.parameters()]
    assert sum(int(k.sum()) for k in kept) == keep_count(total_entries(model), 0.75)
    kept_weights = torch.cat([p.detach()[k].abs() for p, k in zip(model.parameters(), kept)])
    dropped_weights = torch.cat([p.detach()[~k].abs() for p, k in zip(model.parameters(), kept)])
    assert kept_weights.min() >= dropped_weights.max()


def test_keeping_more_than_asked_is_said_once_with_the_reason():
    model = model_with_grads()
    masker = GradientMasker(build_strategy("gmt", mask_ratio=0.5), LocalGradientAccess(model.named_parameters()))
    masker.apply(step=0)  # real gradients: no ties, exactly half kept
    assert masker.pop_logs()["mask/kept_fraction"] == pytest.approx(0.5, abs=1e-3)
    assert masker.more_than_asked is None
    for parameter in model.parameters():  # most entries get no gradient at all: T is 0, everything is kept
        parameter.grad[parameter.grad.abs() < parameter.grad.abs().quantile(0.8)] = 0
    masker.apply(step=1)
    assert masker.pop_logs()["mask/kept_fraction"] == 1.0
    assert masker.more_than_asked.startswith("mask: the masked steps kept 100.00% of the entries, 50.00% asked")


def test_random_keys_drawn_in_chunks_are_the_whole_tensors_keys(monkeypatch):
    # The hash's int64 temporaries are made a chunk at a time (KEY_CHUNK_ENTRIES); the keys must be
    # those of the whole tensor at once, across every chunk boundary, so masks stay shard-invariant.
    import gmt.masking.strategies.random_mask as random_mask

    monkeypatch.setattr(random_mask, "KEY_CHUNK_ENTRIES", 1000)
    strategy = random_mask.RandomStrategy(mask_ratio=0.5, seed=3)
    weight = torch.nn.Parameter(torch.zeros(37, 101))  # 3737 entries: 4 chunks, the last one short
    strategy.setup(LocalGradientAccess([("model.layers.0.w.weight", weight)]))
    keys = strategy.score_function([weight], step=2)(0, torch.zeros(37, 101))
    whole = random_mask.random_keys(torch.arange(3737), 3 * 1_000_003 + 2)
    assert keys.dtype == torch.int32 and torch.equal(keys, whole)


def test_a_keep_mask_built_in_chunks_is_the_whole_tensors(monkeypatch):
    # bf16 gradients take the keep-mask path; built KEEP_CHUNK_ENTRIES at a time, it must be the same mask.
    import gmt.masking.strategies.topk as topk

    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(300, 70, dtype=torch.bfloat16))
    gradient = torch.randn_like(weight)

    def masked(chunk: int) -> torch.Tensor:
        monkeypatch.setattr(topk, "KEEP_CHUNK_ENTRIES", chunk)
        weight.grad = gradient.clone()
        access = LocalGradientAccess([("model.w.weight", weight)])
        GradientMasker(build_strategy("gmt", mask_ratio=0.8), access).apply(0)
        return weight.grad.clone()

    whole, chunked = masked(1 << 24), masked(1000)  # 21,000 entries: 21 chunks
    assert torch.equal(whole, chunked) and 4200 <= int((chunked != 0).sum()) < 4300  # bf16 ties at T are kept
