"""Mask selection rules of the fixed-mask methods (GPS, GRFT, GSPF), on tensors.

Each function turns gradient statistics into boolean keep-masks. They take the *local* entries of
each parameter as flat slices of its flattened full tensor (``offsets``, full ``shapes``), so the
same code runs whole tensors on one process and shards under ZeRO or FSDP2; with ``all_reduce``
(a sum over ranks) the result equals the unsharded one exactly. The strategies that run them at
the right moments of training are in ``gmt.masking.fixed``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gmt.masking.threshold import AllReduce, keep_count, magnitude_keys, topk_thresholds


def _positions(values: Tensor, offset: int, shape: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Row and column of each local entry of a 2-D parameter stored as a flat slice."""
    columns = shape[1]
    position = torch.arange(offset, offset + values.numel(), device=values.device)
    return position // columns, position % columns


def row_topk_masks(
    values: Sequence[Tensor],
    offsets: Sequence[int],
    shapes: Sequence[Sequence[int]],
    k: int,
    all_reduce: AllReduce | None = None,
) -> list[Tensor]:
    """GPS: in each 2-D weight W[out, in], keep the top-``k`` entries of every row by |value|
    (``k`` input connections per output neuron): exactly ``min(k, in)`` per row.

    Ties (zeros, mostly) go to the lower column, so the count is exact and the choice does not
    depend on how rows are split across ranks. Whole local matrices use ``torch.topk``; sharded
    ones find each row's k-th largest key by bisection over the 63-bit (|value|, column) keys, one
    all-reduce of the row counts per bit for all matrices together.
    """
    keys, rows = [], []
    for value, offset, shape in zip(values, offsets, shapes):
        if len(shape) != 2:
            raise ValueError(f"gps selects per row of a 2-D weight; got a parameter of shape {tuple(shape)}")
        row, column = _positions(value, offset, shape)
        # |value| key in the high bits, reversed column in the low bits: unique keys per row.
        keys.append((magnitude_keys(value).to(torch.int64) << 32) | (0xFFFFFFFF - column))
        rows.append(row)
    whole = all_reduce is None and all(
        offset == 0 and value.numel() == shape[0] * shape[1] for value, offset, shape in zip(values, offsets, shapes)
    )
    if whole:
        masks = []
        for key, shape, value in zip(keys, shapes, values):
            top = key.view(shape[0], shape[1]).topk(min(k, shape[1]), dim=1).indices
            mask = torch.zeros(shape[0], shape[1], dtype=torch.bool, device=key.device).scatter_(1, top, True)
            masks.append(mask.view(value.shape))
        return masks

    row_starts = [0]
    for shape in shapes:
        row_starts.append(row_starts[-1] + shape[0])
    device = keys[0].device if keys else torch.device("cpu")
    wanted = torch.cat([torch.full((shape[0],), min(k, shape[1]), dtype=torch.int64) for shape in shapes]).to(device)
    threshold = torch.zeros(row_starts[-1], dtype=torch.int64, device=device)
    global_rows = [row + start for row, start in zip(rows, row_starts)]
    for bit in range(62, -1, -1):  # the largest T with count(key >= T) >= k is the k-th largest key
        candidate = threshold | (1 << bit)
        counts = torch.zeros_like(threshold)
        for key, row in zip(keys, global_rows):
            counts.index_add_(0, row, (key >= candidate[row]).to(torch.int64))
        if all_reduce is not None:
            all_reduce(counts)
        threshold = torch.where(counts >= wanted, candidate, threshold)
    return [(key >= threshold[row]).view(value.shape) for key, row, value in zip(keys, global_rows, values)]


def line_top_masks(
    squared_sums: Sequence[Tensor],
    offsets: Sequence[int],
    shapes: Sequence[Sequence[int]],
    k: int,
    axis: str = "row",
    all_reduce: AllReduce | None = None,
) -> list[Tensor]:
    """GRFT: in each 2-D weight, keep the top-``k`` whole rows (or columns) by summed squared
    gradient. The per-line sums of all matrices travel in one all-reduce (a few floats per row)."""
    if axis not in ("row", "column"):
        raise ValueError(f"grft_axis must be 'row' or 'column', got {axis!r}")
    lines, line_sums = [], []
    for value, offset, shape in zip(squared_sums, offsets, shapes):
        if len(shape) != 2:
            raise ValueError(f"grft selects rows/columns of a 2-D weight; got a parameter of shape {tuple(shape)}")
        row, column = _positions(value, offset, shape)
        line = row if axis == "row" else column
        lines.append(line)
        size = shape[0] if axis == "row" else shape[1]
        sums = torch.zeros(size, dtype=torch.float64, device=value.device)
        line_sums.append(sums.index_add_(0, line, value.reshape(-1).double()))
    if all_reduce is not None and line_sums:
        together = torch.cat(line_sums)
        all_reduce(together)
        line_sums = list(together.split([s.numel() for s in line_sums]))
    masks = []
    for scores, line, value in zip(line_sums, lines, squared_sums):
        # Every rank holds the same sums, so every rank picks the same lines (ties: lower index).
        order = torch.sort(scores, descending=True, stable=True).indices
        chosen = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
        chosen[order[: min(k, scores.numel())]] = True
        masks.append(chosen[line].view(value.shape))
    return masks


def gps_mask(grad_sum: Tensor, k: int) -> Tensor:
    """GPS on one whole 2-D weight: exactly ``min(k, in)`` largest |entries| per row."""
    if grad_sum.dim() != 2:
        raise ValueError(f"gps selects per row of a 2-D weight; got a tensor of shape {tuple(grad_sum.shape)}")
    return row_topk_masks([grad_sum], [0], [grad_sum.shape], k)[0]


def grft_mask(grad_sq_sum: Tensor, k: int, axis: str = "row") -> Tensor:
    """GRFT on one whole 2-D weight: the top-``k`` rows (or columns) by summed squared gradient."""
    if grad_sq_sum.dim() != 2:
        raise ValueError(f"grft selects rows/columns of a 2-D weight; got shape {tuple(grad_sq_sum.shape)}")
    return line_top_masks([grad_sq_sum], [0], [grad_sq_sum.shape], k, axis)[0]


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
    """Keep the global top ``keep_ratio`` of non-negative ``scores`` (``total`` entries over all ranks).

    A threshold of 0 (more entries wanted than have a positive score) keeps the positive ones only:
    zero-score entries are the unremarkable ones, and keeping all of them would keep everything.
    """
    keep = keep_count(total, 1 - keep_ratio)
    (threshold,) = topk_thresholds(list(scores), [0] * len(scores), [keep], all_reduce).tolist()
    return [s > 0 if threshold == 0 else s >= threshold for s in scores]


def blend_scores(previous: Sequence[Tensor], new: Sequence[Tensor], alpha: float) -> list[Tensor]:
    """GSPF's reselection EMA: ``alpha * previous + (1 - alpha) * new``."""
    return [alpha * p + (1 - alpha) * n for p, n in zip(previous, new)]


def gspf_reselection_steps(total_steps: int, warmup_steps: int, every: int) -> list[int]:
    """Optimizer steps at which GSPF reselects: every ``every`` steps after the first selection
    (at ``warmup_steps``), only while training progress is below 80%."""
    if every <= 0:
        return []
    return [step for step in range(warmup_steps + every, total_steps, every) if step < 0.8 * total_steps]
