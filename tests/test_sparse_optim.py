"""SparseMaskedAdamW: the updates of dense AdamW with a fixed mask, in a fraction of the memory."""

import torch

from gmt.masking import MaskedAdamW
from gmt.masking.sparse_optim import SparseMaskedAdamW, optimizer_state_bytes


def params_and_masks(keep_ratio: float, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    params = [
        torch.nn.Parameter(torch.randn(64, 48, generator=generator)),
        torch.nn.Parameter(torch.randn(48, generator=generator)),
    ]
    masks = {0: torch.rand(64, 48, generator=generator) < keep_ratio}  # the bias (index 1) is unmasked
    return params, masks


def test_sparse_state_matches_dense_adamw_with_a_fixed_mask():
    dense, masks = params_and_masks(0.1)
    sparse, _ = params_and_masks(0.1)
    start = [p.detach().clone() for p in sparse]
    dense_opt = MaskedAdamW(dense, lr=1e-2, weight_decay=0.1)
    sparse_opt = SparseMaskedAdamW(sparse, lr=1e-2, weight_decay=0.1)
    sparse_opt.set_fixed_masks({sparse[0]: masks[0]})
    for step in range(5):
        generator = torch.Generator().manual_seed(100 + step)
        for d, s in zip(dense, sparse):
            d.grad = torch.randn(d.shape, generator=generator)
            s.grad = d.grad.clone()
        dense_opt.set_update_masks({dense[0]: masks[0]})
        dense_opt.step()
        sparse_opt.step()
    for d, s in zip(dense, sparse):
        torch.testing.assert_close(s, d, rtol=1e-6, atol=1e-7)
    keep = masks[0]
    assert torch.equal(sparse[0][~keep], start[0][~keep])  # outside the mask: bitwise unchanged
    assert (sparse[0][keep] != start[0][keep]).all() and (sparse[1] != start[1]).all()


def test_state_is_a_small_fraction_of_dense_at_low_keep_ratio():
    param = torch.nn.Parameter(torch.randn(1000, 1000))
    keep = torch.rand(1000, 1000, generator=torch.Generator().manual_seed(1)) < 0.003
    param.grad = torch.randn_like(param)
    sparse = SparseMaskedAdamW([param], lr=1e-3)
    sparse.set_fixed_masks({param: keep})
    sparse.step()
    dense = torch.optim.AdamW([torch.nn.Parameter(param.detach().clone())], lr=1e-3)
    dense.param_groups[0]["params"][0].grad = param.grad.clone()
    dense.step()
    ratio = optimizer_state_bytes(sparse) / optimizer_state_bytes(dense)
    assert ratio <= 0.02
    assert ratio >= 2 * 0.003 * 0.8  # 16 bytes per kept entry against 8 per entry


def test_reselection_keeps_moments_of_staying_entries_and_zeroes_new_ones():
    param = torch.nn.Parameter(torch.zeros(10))
    optimizer = SparseMaskedAdamW([param], lr=1e-2)
    first = torch.zeros(10, dtype=torch.bool)
    first[[1, 3, 5]] = True
    optimizer.set_fixed_masks({param: first})
    param.grad = torch.ones(10)
    optimizer.step()
    moment_of_3 = float(optimizer.state[param]["exp_avg"][1])  # entry 3 is the second kept one
    second = torch.zeros(10, dtype=torch.bool)
    second[[3, 4]] = True
    optimizer.set_fixed_masks({param: second})
    assert optimizer.state[param]["indices"].tolist() == [3, 4]
    assert optimizer.state[param]["exp_avg"].tolist() == [moment_of_3, 0.0]


def test_dense_warm_up_then_fixed_mask_matches_masked_adamw():
    # gspf's path: dense AdamW steps, then a fixed mask that carries the kept entries' moments.
    dense, masks = params_and_masks(0.2, seed=3)
    sparse, _ = params_and_masks(0.2, seed=3)
    dense_opt = MaskedAdamW(dense, lr=1e-2, weight_decay=0.0)
    sparse_opt = SparseMaskedAdamW(sparse, lr=1e-2, weight_decay=0.0)
    for step in range(4):
        generator = torch.Generator().manual_seed(200 + step)
        for d, s in zip(dense, sparse):
            d.grad = torch.randn(d.shape, generator=generator)
            s.grad = d.grad.clone()
        if step == 2:
            sparse_opt.set_fixed_masks({sparse[0]: masks[0]})
        dense_opt.set_update_masks({dense[0]: masks[0]} if step >= 2 else {})
        dense_opt.step()
        sparse_opt.step()
    for d, s in zip(dense, sparse):
        torch.testing.assert_close(s, d, rtol=1e-6, atol=1e-7)
    assert "indices" in sparse_opt.state[sparse[0]]
    # An all-True mask turns the state dense again, moments in place.
    exp_avg = sparse_opt.state[sparse[0]]["exp_avg"].clone()
    sparse_opt.set_fixed_masks({sparse[0]: torch.ones(64, 48, dtype=torch.bool)})
    state = sparse_opt.state[sparse[0]]
    assert "indices" not in state and state["exp_avg"].numel() == 64 * 48
    assert torch.equal(state["exp_avg"][masks[0].reshape(-1)], exp_avg)


def test_nothing_kept_counts_no_step():
    (param, _), _ = params_and_masks(0.1)
    optimizer = SparseMaskedAdamW([param], lr=1e-2)
    optimizer.set_fixed_masks({param: torch.zeros(64, 48, dtype=torch.bool)})
    param.grad = torch.ones_like(param)
    before = param.detach().clone()
    optimizer.step()
    assert torch.equal(param, before) and float(optimizer.state[param]["step"]) == 0.0


def test_state_dict_round_trip_keeps_indices_exact_past_float32_precision():
    # 2^24 + 7 entries: float32 (the parameter's dtype, which torch casts state tensors to on
    # load) cannot tell the last indices apart.
    param = torch.nn.Parameter(torch.zeros(2**24 + 7))
    optimizer = SparseMaskedAdamW([param], lr=0.1)
    keep = torch.zeros(param.numel(), dtype=torch.bool)
    keep[-5:] = True
    optimizer.set_fixed_masks({param: keep})
    param.grad = torch.ones_like(param)
    optimizer.step()
    restored = SparseMaskedAdamW([param], lr=0.1)
    restored.load_state_dict(optimizer.state_dict())
    state = restored.state[param]
    assert state["indices"].dtype == torch.int64
    assert torch.equal(state["indices"], torch.arange(2**24 + 2, 2**24 + 7))
    assert torch.equal(state["exp_avg"], optimizer.state[param]["exp_avg"])
