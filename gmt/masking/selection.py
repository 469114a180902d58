"""Mask selection rules of the fixed-mask methods (GPS, GRFT, GSPF), on tensors.

Each function turns gradient statistics into a boolean keep-mask (or scores for a global top-k).
The strategies that run them at the right moments of training are built on top of these.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gmt.masking.threshold import AllReduce, keep_count, topk_thresholds


def gps_mask(grad_sum: Tensor, k: int) -> Tensor:
    """GPS: for a weight W[out, in], keep the top-``k`` input connections of every output neuron,
    ranked by the summed gradient's magnitude. Exactly ``min(k, in)`` entries per row."""
    if grad_sum.dim() != 2:
        raise ValueError(f"gps selects per row of a 2-D weight; got a tensor of shape {tuple(grad_sum.shape)}")
    k = min(k, grad_sum.shape[1])
    columns = grad_sum.abs().topk(k, dim=1).indices
    return torch.zeros(grad_sum.shape, dtype=torch.bool, device=grad_sum.device).scatter_(1, columns, True)


def grft_mask(grad_sq_sum: Tensor, k: int, axis: str = "row") -> Tensor:
    """GRFT: keep the top-``k`` whole rows (or columns) of W[out, in] by summed squared gradient."""
    if axis not in ("row", "column"):
        raise ValueError(f"grft_axis must be 'row' or 'column', got {axis!r}")
    if grad_sq_sum.dim() != 2:
        raise ValueError(f"grft selects rows/columns of a 2-D weight; got shape {tuple(grad_sq_sum.shape)}")
    scores = grad_sq_sum.sum(dim=1 if axis == "row" else 0)
    chosen = scores.topk(min(k, scores.numel())).indices
    mask = torch.zeros(grad_sq_sum.shape, dtype=torch.bool, device=grad_sq_sum.device)
    if axis == "row":
        mask[chosen, :] = True
    else:
        mask[:, chosen] = True
    return mask


def gspf_scores(sensitivity: Sequence[Tensor], params: Sequence[Tensor], all_reduce: AllReduce | None = None):
    """GSPF: ``z(S) * tanh(|θ|)`` with S the mean |g| of the warm-up, z-normalized over all entries
    of all tensors (of all ranks, with ``all_reduce``). Scores below 0 (entries less sensitive than
    average) are clamped to 0: they can only matter when more entries are kept than are above average,
    and then they tie at 0 and are kept together."""
    moments = torch.zeros(3, dtype=torch.float64)
    for s in sensitivity:
        moments += torch.stack(
            [torch.tensor(float(s.numel())), s.double().sum().cpu(), s.double().square().sum().cpu()]
        )
    if all_reduce is not None:
        all_reduce(moments)
    count, total, total_sq = moments.tolist()
    mean = total / count
    std = max((total_sq / count - mean * mean) ** 0.5, 1e-30)
    return [
        ((s.float() - mean) / std * p.detach().float().abs().tanh()).clamp_(min=0) for s, p in zip(sensitivity, params)
    ]


def global_top_fraction_masks(
    scores: Sequence[Tensor], keep_ratio: float, total: int, all_reduce: AllReduce | None = None
) -> list[Tensor]:
    """Keep the global top ``keep_ratio`` of non-negative ``scores`` (``total`` entries over all ranks)."""
    keep = keep_count(total, 1 - keep_ratio)
    (threshold,) = topk_thresholds(list(scores), [0] * len(scores), [keep], all_reduce).tolist()
    return [s >= threshold for s in scores]


def blend_scores(previous: Sequence[Tensor], new: Sequence[Tensor], alpha: float) -> list[Tensor]:
    """GSPF's reselection EMA: ``alpha * previous + (1 - alpha) * new``."""
    return [alpha * p + (1 - alpha) * n for p, n in zip(previous, new)]


def gspf_reselection_steps(total_steps: int, warmup_steps: int, every: int) -> list[int]:
    """Optimizer steps at which GSPF reselects: every ``every`` steps after the first selection
    (at ``warmup_steps``), only while training progress is below 80%."""
    if every <= 0:
        return []
    return [step for step in range(warmup_steps + every, total_steps, every) if step < 0.8 * total_steps]
