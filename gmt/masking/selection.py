"""Mask selection rules of the fixed-mask methods (GPS, GRFT, GSPF), on tensors.

Each function turns gradient statistics into boolean keep-masks. They take the *local* entries of
each parameter as flat slices of its flattened full tensor (``offsets``, full ``shapes``), so the
same code runs whole tensors on one process and shards under ZeRO or FSDP2; with ``all_reduce``
(a sum over ranks) the result equals the unsharded one exactly. The strategies that run them at
the right moments of training are in ``gmt.masking.strategies``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from gmt.masking.base import AllReduce, keep_count
from gmt.masking.comm import table_device
from gmt.masking.keys import magnitude_keys
from gmt.masking.search import topk_thresholds

# The sharded GPS search holds 8 bytes of key per local entry of the matrices it works on at once
# (and a 1-byte comparison of one matrix's slice);
# matrices are taken in chunks of at most this many (full, unsharded) entries, the same on every rank.
ROW_SEARCH_CHUNK = 1 << 27


def row_topk_masks(
    values: Sequence[Tensor],
    offsets: Sequence[int],
    shapes: Sequence[Sequence[int]],
    k: int,
    all_reduce: AllReduce | None = None,
) -> list[Tensor]:
    """GPS: in each weight W[out, in], keep the top-``k`` entries of every row by |value|
    (``k`` input connections per output neuron): exactly ``min(k, in)`` per row. A stack of
    matrices (``[experts, out, in]``, a mixture-of-experts layer) is a stack of weights: every row
    of every expert keeps its ``k``.

    Ties (zeros, mostly) go to the lower column, so the count is exact and the choice does not
    depend on how rows are split across ranks: each entry's key is its |value| key in the high 32
    bits and its reversed column in the low ones. Whole local matrices use ``torch.topk``, one at
    a time; sharded ones find each row's k-th largest key by bisection over the 63 key bits, one
    all-reduce of the row counts per bit for a chunk of matrices.
    """
    for shape in shapes:
        if len(shape) < 2:
            raise ValueError(f"gps selects per row of a weight matrix; got a parameter of shape {tuple(shape)}")
    shapes = [(math.prod(shape[:-1]), shape[-1]) for shape in shapes]  # the rows of every matrix of a stack
    whole = all_reduce is None and all(
        offset == 0 and value.numel() == shape[0] * shape[1] for value, offset, shape in zip(values, offsets, shapes)
    )
    if whole:
        return [_row_topk_whole(value, shape, k) for value, shape in zip(values, shapes)]
    masks: list[Tensor] = []
    chunk: list[int] = []
    chunk_size = 0
    for index, shape in enumerate(shapes):  # chunks by full sizes: every rank forms the same ones
        if chunk and chunk_size + shape[0] * shape[1] > ROW_SEARCH_CHUNK:
            masks += _row_topk_sharded([values[i] for i in chunk], [offsets[i] for i in chunk],
                                       [shapes[i] for i in chunk], k, all_reduce)  # fmt: skip
            chunk, chunk_size = [], 0
        chunk.append(index)
        chunk_size += shape[0] * shape[1]
    if chunk:
        masks += _row_topk_sharded([values[i] for i in chunk], [offsets[i] for i in chunk],
                                   [shapes[i] for i in chunk], k, all_reduce)  # fmt: skip
    return masks


def _row_keys(magnitude: Tensor, column: Tensor) -> Tensor:
    keys = magnitude.to(torch.int64) << 32
    return keys.bitwise_or_(0xFFFFFFFF - column)


def _row_topk_whole(value: Tensor, shape: Sequence[int], k: int) -> Tensor:
    rows, columns = shape
    column = torch.arange(columns, device=value.device)
    keys = _row_keys(magnitude_keys(value).view(rows, columns), column)
    top = keys.topk(min(k, columns), dim=1).indices
    del keys
    return torch.zeros(rows, columns, dtype=torch.bool, device=value.device).scatter_(1, top, True).view(value.shape)


def _row_topk_sharded(values, offsets, shapes, k: int, all_reduce: AllReduce | None) -> list[Tensor]:
    # Each local slice of a flattened matrix covers whole rows but for its first and last: it is
    # padded to whole rows (keys of -1, below every candidate) and viewed as [rows, columns], so a
    # row's count is a sum along dim 1, with no per-entry row index (8 bytes of key per entry).
    keys, first_rows, heads, row_start = [], [], [], 0
    for value, offset, (rows, columns) in zip(values, offsets, shapes):
        # an empty slice (a rank past the end of a padded ZeRO-3 partition) holds no row
        first_row, head = divmod(offset, columns) if value.numel() else (0, 0)
        local_rows = -(-(head + value.numel()) // columns)
        padded = torch.full((local_rows * columns,), -1, dtype=torch.int64, device=value.device)
        column = torch.arange(head, head + value.numel(), device=value.device).remainder_(columns)
        padded.narrow(0, head, value.numel()).copy_(_row_keys(magnitude_keys(value), column))
        del column
        keys.append(padded.view(local_rows, columns))
        first_rows.append(row_start + first_row)  # rows numbered across the chunk
        heads.append(head)
        row_start += rows
    device = table_device(values, all_reduce)
    wanted = torch.cat(
        [torch.full((rows,), min(k, columns), dtype=torch.int64, device=device) for rows, columns in shapes]
    )
    threshold = torch.zeros(row_start, dtype=torch.int64, device=device)
    for bit in range(62, -1, -1):  # the largest T with count(key >= T) >= k is the k-th largest key
        candidate = threshold | (1 << bit)
        counts = torch.zeros_like(threshold)
        for key, first_row in zip(keys, first_rows):
            row_candidates = candidate.narrow(0, first_row, key.shape[0]).unsqueeze(1).to(key.device)
            counts.narrow(0, first_row, key.shape[0]).add_((key >= row_candidates).sum(dim=1).to(device))
        if all_reduce is not None:
            all_reduce(counts)
        threshold = torch.where(counts >= wanted, candidate, threshold)
    masks = []
    for key, first_row, head, value in zip(keys, first_rows, heads, values):
        kept = key >= threshold.narrow(0, first_row, key.shape[0]).unsqueeze(1).to(key.device)
        masks.append(kept.view(-1).narrow(0, head, value.numel()).view(value.shape))
    return masks


def line_top_masks(
    squared_sums: Sequence[Tensor],
    offsets: Sequence[int],
    shapes: Sequence[Sequence[int]],
    k: int,
    axis: str = "row",
    all_reduce: AllReduce | None = None,
) -> list[Tensor]:
    """GRFT: in each weight matrix, keep the top-``k`` whole rows (or columns) by summed squared
    gradient. A stack of matrices (``[experts, out, in]``) keeps ``k`` lines in every matrix of it.
    The per-line sums of all matrices travel in one all-reduce (a few floats per row)."""
    if axis not in ("row", "column"):
        raise ValueError(f"grft_axis must be 'row' or 'column', got {axis!r}")
    dim = 1 if axis == "row" else 0
    line_sums = []
    for value, offset, shape in zip(squared_sums, offsets, shapes):
        if len(shape) < 2:
            raise ValueError(f"grft selects rows/columns of a weight matrix; got a parameter of shape {tuple(shape)}")
        matrices, rows, columns = math.prod(shape[:-2]), shape[-2], shape[-1]
        if offset == 0 and value.numel() == matrices * rows * columns:  # the whole parameter is here
            if len(shape) == 2:
                line_sums.append(value.reshape(rows, columns).to(torch.float64).sum(dim=dim))
            else:
                stacked = value.reshape(matrices, rows, columns).to(torch.float64)
                line_sums.append(stacked.sum(dim=dim + 1).reshape(-1))
        else:
            line = _line_of(value, offset, shape, axis)
            lines = matrices * (rows if axis == "row" else columns)
            sums = torch.zeros(lines, dtype=torch.float64, device=value.device)
            line_sums.append(sums.index_add_(0, line, value.reshape(-1).double()))
    if all_reduce is not None and line_sums:
        together = torch.cat(line_sums)
        all_reduce(together)
        line_sums = list(together.split([s.numel() for s in line_sums]))
    masks = []
    for scores, value, offset, shape in zip(line_sums, squared_sums, offsets, shapes):
        # Every rank holds the same sums, so every rank picks the same lines (ties: lower index).
        matrices = math.prod(shape[:-2])
        if matrices == 1:
            order = torch.sort(scores, descending=True, stable=True).indices
            chosen = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
            chosen[order[: min(k, scores.numel())]] = True
        else:  # the lines of each matrix of the stack compete among themselves
            per_matrix = scores.view(matrices, -1)
            order = torch.sort(per_matrix, dim=1, descending=True, stable=True).indices[:, :k]
            chosen = torch.zeros_like(per_matrix, dtype=torch.bool).scatter_(1, order, True).view(-1)
        masks.append(chosen[_line_of(value, offset, shape, axis)].view(value.shape))
    return masks


def _line_of(value: Tensor, offset: int, shape: Sequence[int], axis: str) -> Tensor:
    """The line (row or column) of each local entry of a parameter stored as a flat slice; the
    lines of a stack of matrices are numbered matrix after matrix."""
    position = torch.arange(offset, offset + value.numel(), device=value.device)
    rows, columns = shape[-2], shape[-1]
    if len(shape) == 2:
        return position.floor_divide_(columns) if axis == "row" else position.remainder_(columns)
    matrix, within = position // (rows * columns), position % (rows * columns)
    if axis == "row":
        return within.floor_divide_(columns).add_(matrix * rows)
    return within.remainder_(columns).add_(matrix * columns)


def gps_mask(grad_sum: Tensor, k: int) -> Tensor:
    """GPS on one whole weight (or stack of them): exactly ``min(k, in)`` largest |entries| per row."""
    if grad_sum.dim() < 2:
        raise ValueError(f"gps selects per row of a weight matrix; got a tensor of shape {tuple(grad_sum.shape)}")
    return row_topk_masks([grad_sum], [0], [grad_sum.shape], k)[0]


def grft_mask(grad_sq_sum: Tensor, k: int, axis: str = "row") -> Tensor:
    """GRFT on one whole weight (or stack of them): the top-``k`` rows (or columns) of each matrix by
    summed squared gradient."""
    if grad_sq_sum.dim() < 2:
        raise ValueError(f"grft selects rows/columns of a weight matrix; got shape {tuple(grad_sq_sum.shape)}")
    return line_top_masks([grad_sq_sum], [0], [grad_sq_sum.shape], k, axis)[0]


def gspf_scores(sensitivity: Sequence[Tensor], params: Sequence[Tensor], all_reduce: AllReduce | None = None):
    """GSPF: ``z(S) * tanh(|θ|)`` with S the mean |g| of the warm-up, z-normalized over all entries
    of all tensors (of all ranks, with ``all_reduce``). Scores below 0 (entries less sensitive than
    average) are clamped to 0: they can only matter when more entries are kept than are above
    average, and then they are not kept (see ``global_top_fraction_masks``).

    Computed in place, one tensor at a time: ``sensitivity`` (fp32) is overwritten with the scores,
    so scoring needs no second model-sized buffer.
    """
    moments = torch.zeros(3, dtype=torch.float64, device=table_device(sensitivity, all_reduce))
    for s in sensitivity:  # no host sync per tensor: the sums stay on the device until the all-reduce
        moments[0] += s.numel()
        moments[1:] += torch.stack([s.double().sum(), s.double().square().sum()])
    if all_reduce is not None:
        all_reduce(moments)
    count, total, total_sq = moments.tolist()
    mean = total / count
    std = max((total_sq / count - mean * mean) ** 0.5, 1e-30)
    for s, p in zip(sensitivity, params):
        s.sub_(mean).div_(std).mul_(p.detach().float().abs().tanh_()).clamp_(min=0)
    return list(sensitivity)


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
    """GSPF's reselection EMA: ``alpha * previous + (1 - alpha) * new``, written into ``new``."""
    return [n.mul_(1 - alpha).add_(p, alpha=alpha) for p, n in zip(previous, new)]


def gspf_reselection_steps(total_steps: int, warmup_steps: int, every: int) -> list[int]:
    """Optimizer steps at which GSPF reselects: every ``every`` steps after the first selection
    (at ``warmup_steps``), only while training progress is below 80%."""
    if every <= 0:
        return []
    return [step for step in range(warmup_steps + every, total_steps, every) if step < 0.8 * total_steps]
