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


def test_gspf_scores_and_global_budget():
    generator = torch.Generator().manual_seed(2)
    sensitivity = [torch.rand(50, 40, generator=generator), torch.rand(300, generator=generator)]
    params = [torch.randn(50, 40, generator=generator), torch.randn(300, generator=generator)]
    scores = gspf_scores(sensitivity, params)
    flat_s = torch.cat([s.reshape(-1) for s in sensitivity])
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
