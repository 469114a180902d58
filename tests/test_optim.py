"""MaskedAdamW: plain AdamW without masks, frozen entries outside them."""

import pytest
import torch

from gmt.masking import MaskedAdamW


def make_params(seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(5, 7, generator=generator)),
        torch.nn.Parameter(torch.randn(11, generator=generator)),
    ]


def set_grads(params, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator)


def adamw_and_masked_adamw(unmasked_steps: int, **options):
    """Two copies of the same parameters, stepped ``unmasked_steps`` times by AdamW and MaskedAdamW."""
    plain, masked = make_params(), make_params()
    settings = {key: value for key, value in options.items() if key in ("fused", "foreach")}
    opt_plain = torch.optim.AdamW(plain, lr=1e-2, weight_decay=0.1, **settings)
    opt_masked = MaskedAdamW(masked, lr=1e-2, weight_decay=0.1, **options)
    for step in range(unmasked_steps):
        set_grads(plain, step)
        set_grads(masked, step)
        opt_plain.step()
        opt_masked.step()
    return plain, opt_plain, masked, opt_masked


def test_without_masks_it_is_adamw_bitwise():
    plain, _, masked, _ = adamw_and_masked_adamw(unmasked_steps=3)
    for a, b in zip(plain, masked):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "options",
    [{}, {"fused": True}, {"foreach": False}, {"chunk_entries": 4}],
    ids=["default", "fused", "single-tensor", "sliced"],  # sliced: 4-entry slices, stepped in batches
)
@pytest.mark.parametrize("mask_from", ["bool", "nonzero_grad", "mixed"])
def test_masked_step_freezes_dropped_entries_and_matches_adamw_on_kept(options, mask_from):
    # Two unmasked steps build up moments, then one masked step.
    reference, opt_reference, masked, opt_masked = adamw_and_masked_adamw(unmasked_steps=2, **options)
    before = [p.detach().clone() for p in masked]
    moments_before = [
        (opt_masked.state[p]["exp_avg"].clone(), opt_masked.state[p]["exp_avg_sq"].clone()) for p in masked
    ]
    set_grads(reference, 2)
    set_grads(masked, 2)
    keeps = [torch.rand(p.shape, generator=torch.Generator().manual_seed(9)) < 0.3 for p in masked]
    if mask_from == "bool":
        opt_masked.set_update_masks({p: keep for p, keep in zip(masked, keeps)})
    else:  # a gradient masked by magnitude: zero where dropped, the mask is its nonzero entries
        from_grad = masked if mask_from == "nonzero_grad" else masked[:1]
        for p, keep in zip(from_grad, keeps):
            p.grad.mul_(keep)
        opt_masked.set_update_masks(dict(zip(masked[len(from_grad) :], keeps[len(from_grad) :])), from_grad)
    opt_masked.step()
    opt_reference.step()
    for p, p_ref, keep, old, (m_old, v_old) in zip(masked, reference, keeps, before, moments_before):
        state = opt_masked.state[p]
        # Outside the mask: weight and both moments bitwise unchanged (no update, no decay).
        assert torch.equal(p[~keep], old[~keep])
        assert torch.equal(state["exp_avg"][~keep], m_old[~keep])
        assert torch.equal(state["exp_avg_sq"][~keep], v_old[~keep])
        # Inside: what AdamW does, bitwise (the same kernel ran on them), with one step counted.
        assert torch.equal(p[keep], p_ref[keep])
        assert torch.equal(state["exp_avg"][keep], opt_reference.state[p_ref]["exp_avg"][keep])
        assert float(state["step"]) == float(opt_reference.state[p_ref]["step"]) == 3
        assert not torch.equal(p[keep], old[keep])
    # Masks are used once: the next step is a full AdamW step again.
    set_grads(masked, 3)
    frozen = masked[1].detach().clone()
    opt_masked.step()
    assert (masked[1] != frozen).all()
