"""The selection rules of GPS, GRFT and GSPF on tensors."""

import pytest
import torch

from gmt.masking.selection import (
    blend_scores,
    global_top_fraction_masks,
    gps_mask,
    grft_mask,
    gspf_reselection_steps,
    gspf_scores,
    line_top_masks,
    row_topk_masks,
)


def test_gps_keeps_exactly_k_largest_per_row():
    grad = torch.randn(12, 30, generator=torch.Generator().manual_seed(0))
    mask = gps_mask(grad, k=4)
    assert mask.sum(dim=1).tolist() == [4] * 12
    for row, keep in zip(grad.abs(), mask):
        assert row[keep].min() >= row[~keep].max()
    assert gps_mask(grad, k=100).all()  # K larger than the row keeps the row


@pytest.mark.parametrize("axis", ["row", "column"])
def test_grft_keeps_whole_rows_or_columns(axis):
    grad_sq = torch.rand(10, 6, generator=torch.Generator().manual_seed(1))
    grad_sq[7] += 5  # row 7 and column 2 dominate
    grad_sq[:, 2] += 5
    mask = grft_mask(grad_sq, k=1, axis=axis)
    expected = torch.zeros(10, 6, dtype=torch.bool)
    if axis == "row":
        expected[7] = True
    else:
        expected[:, 2] = True
    assert torch.equal(mask, expected)
    with pytest.raises(ValueError, match="grft_axis"):
        grft_mask(grad_sq, 1, axis="diagonal")


@pytest.mark.parametrize("axis", ["row", "column"])
def test_a_stack_of_matrices_is_selected_matrix_by_matrix(axis):
    # [experts, out, in]: each expert gets what it would get alone.
    stack = torch.randn(3, 5, 12, generator=torch.Generator().manual_seed(3))
    assert torch.equal(gps_mask(stack, k=4), torch.stack([gps_mask(matrix, k=4) for matrix in stack]))
    squares = stack.square()
    expected = torch.stack([grft_mask(matrix, 2, axis) for matrix in squares])
    assert torch.equal(grft_mask(squares, 2, axis), expected)


def test_gspf_scores_and_global_budget():
    generator = torch.Generator().manual_seed(2)
    sensitivity = [torch.rand(50, 40, generator=generator), torch.rand(300, generator=generator)]
    params = [torch.randn(50, 40, generator=generator), torch.randn(300, generator=generator)]
    flat_s = torch.cat([s.reshape(-1) for s in sensitivity])
    scores = gspf_scores([s.clone() for s in sensitivity], params)
    z = (flat_s - flat_s.mean()) / flat_s.std(unbiased=False)
    expected = (z * torch.cat([p.reshape(-1) for p in params]).abs().tanh()).clamp(min=0)
    torch.testing.assert_close(torch.cat([s.reshape(-1) for s in scores]), expected)
    masks = global_top_fraction_masks(scores, keep_ratio=0.01, total=2300)
    assert sum(int(m.sum()) for m in masks) == 23  # ceil-free budget: n - floor((1 - p) n)
    kept = torch.cat([s[m] for s, m in zip(scores, masks)])
    dropped = torch.cat([s[~m] for s, m in zip(scores, masks)])
    assert kept.min() >= dropped.max()


def test_gspf_blend_and_reselection_schedule():
    blended = blend_scores([torch.tensor([1.0, 0.0])], [torch.tensor([0.0, 1.0])], alpha=0.75)
    assert blended[0].tolist() == [0.75, 0.25]
    steps = gspf_reselection_steps(total_steps=100, warmup_steps=10, every=15)
    assert steps == [25, 40, 55, 70]  # never at or after 80% of training
    assert gspf_reselection_steps(100, 10, 0) == []


def test_the_sharded_row_search_takes_slices_that_cut_rows_and_empty_ones():
    # One rank's view (a sum over one rank is the identity): slices starting and ending inside rows,
    # and an empty one past the end of its matrix (the padding of a ZeRO-3 partition).
    generator = torch.Generator().manual_seed(5)
    first, second = torch.randn(7, 9, generator=generator), torch.randn(4, 5, generator=generator)
    first[3, :6] = 0.5  # ties: the lowest columns win
    expected = gps_mask(first, k=3).reshape(-1)[22:59]
    masks = row_topk_masks([first.reshape(-1)[22:59], second.reshape(-1)[:0]], [22, 24], [first.shape, second.shape],
                           3, all_reduce=lambda counts: None)  # fmt: skip
    # whole rows (3 to 5) as on one process; a cut row keeps its 3 among the entries held here
    assert torch.equal(masks[0][5:32], expected[5:32])
    assert int(masks[0][:5].sum()) == 3 and int(masks[0][32:].sum()) == 3
    assert masks[1].numel() == 0


def matrices(seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    out = [torch.randn(7, 13, generator=generator), torch.randn(5, 40, generator=generator)]
    out.append(torch.randn(3, 2, generator=generator))
    out.append(torch.randn(3, 4, 9, generator=generator))  # a stack of matrices (fused MoE experts)
    out[0][2] = 0.0  # a row of ties (zeros): exactly k still, the lowest columns
    out[1][:, 10:20] = 0.25  # ties inside rows, across the cut
    return out


def flat_cut(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, int]:
    """Rank 0 holds the first 40% of the flattened matrix (cutting rows in two), rank 1 the rest."""
    cut = int(matrix.numel() * 0.4)
    flat = matrix.reshape(-1)
    return (flat[:cut], 0) if rank == 0 else (flat[cut:], cut)


def selection_worker(rank: int, port: int, results) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        whole = matrices(seed=4)
        local = [flat_cut(m, rank) for m in whole]
        values, offsets, shapes = [v for v, _ in local], [o for _, o in local], [m.shape for m in whole]
        results[("gps", rank)] = row_topk_masks(values, offsets, shapes, 3, dist.all_reduce)
        import gmt.masking.selection as selection

        selection.ROW_SEARCH_CHUNK = 100  # one matrix per chunk: the chunked search agrees
        chunked = row_topk_masks(values, offsets, shapes, 3, dist.all_reduce)
        assert all(torch.equal(a, b) for a, b in zip(chunked, results[("gps", rank)]))
        squares = [v.square() for v in values]
        for axis in ("row", "column"):
            results[(axis, rank)] = line_top_masks(squares, offsets, shapes, 2, axis, dist.all_reduce)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_sharded_row_and_line_selection_equals_the_whole():
    import torch.multiprocessing as mp
    from test_threshold_distributed import free_port

    results = mp.Manager().dict()
    mp.spawn(selection_worker, args=(free_port(), results), nprocs=2, join=True)
    whole = matrices(seed=4)
    expected = {
        "gps": [gps_mask(m, 3) for m in whole],
        "row": [grft_mask(m.square(), 2, "row") for m in whole],
        "column": [grft_mask(m.square(), 2, "column") for m in whole],
    }
    for key, masks in expected.items():
        joined = [torch.cat([results[(key, 0)][i], results[(key, 1)][i]]) for i in range(len(whole))]
        for mask, got in zip(masks, joined):
            assert torch.equal(got, mask.reshape(-1)), key
    assert expected["gps"][0][2].tolist() == [True] * 3 + [False] * 10  # tied row: lowest columns
    assert expected["gps"][2].all()  # rows shorter than k keep every entry
