"""Exact top-k magnitude thresholds by radix select over float bits.

The threshold T of a scope is the k-th largest |x| among its entries. Instead of sorting or
concatenating the gradient, we read the fp32 bit pattern of |x| as an integer "key" (for
non-negative floats the integer order is the float order) and find the k-th largest key digit by
digit: a histogram of the top digit over every entry, then histograms of the next digits over the
few candidates that share the chosen prefix. Every histogram is a small (groups x buckets) count
table, so a distributed caller sums it across ranks with one all-reduce per digit and every rank
arrives at the same exact T, however the entries are sharded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

# 31 magnitude bits of an fp32 key, split into digits from high to low. Three digits means three
# small collectives per step; the first digit is the only pass over every entry.
DIGIT_BITS: tuple[int, ...] = (11, 10, 10)
_ABS_BITS = 0x7FFFFFFF
_INF_KEY = 0x7F800000  # bit pattern of +inf; every NaN key is larger

AllReduce = Callable[[Tensor], None]


class NonFiniteGradientError(FloatingPointError):
    """Raised when a gradient that would be masked holds NaN or inf."""


def magnitude_keys(values: Tensor) -> Tensor:
    """Return int32 keys ordered like ``|values|`` (the fp32 bit pattern with the sign cleared).

    int32 input is taken as keys already (non-negative): strategies that rank by something other
    than a float magnitude (random scores) hand their keys in directly.
    """
    if values.dtype == torch.int32:
        return values.reshape(-1)
    if values.dtype != torch.float32:
        values = values.float()  # bf16/fp16 -> fp32 is exact, so keys stay exact
    return values.reshape(-1).view(torch.int32) & _ABS_BITS


def key_to_float(keys: Tensor) -> Tensor:
    """Turn int32 magnitude keys back into the float32 values they encode."""
    return keys.to(torch.int32).view(torch.float32)


def _digit_shifts() -> list[int]:
    shifts, low = [], sum(DIGIT_BITS)
    for bits in DIGIT_BITS:
        low -= bits
        shifts.append(low)
    return shifts


def topk_thresholds(
    tensors: Sequence[Tensor],
    groups: Sequence[int],
    keep_counts: Sequence[int],
    all_reduce: AllReduce | None = None,
    check_finite: bool = True,
) -> Tensor:
    """Return the k-th largest magnitude of every group, exactly.

    Args:
        tensors: the (local shards of the) values; each belongs to one group.
        groups: ``groups[i]`` is the group index of ``tensors[i]``.
        keep_counts: ``keep_counts[g]`` is k for group g, counted over all ranks. A group with
            k = 0 gets threshold +inf (nothing to keep).
        all_reduce: sums a count tensor across ranks in place; ``None`` on a single process.
            It is called once per digit (``len(DIGIT_BITS)`` times), with the same shapes on
            every rank.
        check_finite: refuse NaN/inf values (off for int32 keys, whose top values are not floats).

    Returns:
        float32 tensor of shape ``[len(keep_counts)]``: T_g such that keeping ``|x| >= T_g``
        keeps at least k_g entries of group g (more only when entries tie at T_g).

    Raises:
        NonFiniteGradientError: if any entry is NaN or inf (checked from the first histogram,
            so every rank raises together).
    """
    num_groups = len(keep_counts)
    device = tensors[0].device if tensors else torch.device("cpu")
    remaining = torch.as_tensor(list(keep_counts), dtype=torch.int64, device=device)
    prefix = torch.zeros(num_groups, dtype=torch.int64, device=device)
    group_index = torch.as_tensor(list(groups), dtype=torch.int64)
    candidates: list[Tensor] = []  # per tensor: keys sharing the chosen prefix, after digit 0

    for depth, (bits, shift) in enumerate(zip(DIGIT_BITS, _digit_shifts(), strict=True)):
        buckets = 1 << bits
        hist = torch.zeros(num_groups, buckets, dtype=torch.int64, device=device)
        for i, group in enumerate(groups):
            if depth == 0:
                keys = magnitude_keys(tensors[i])
            else:
                keys = candidates[i]
            if keys.numel() == 0:
                continue
            digits = (keys >> shift) & (buckets - 1)
            hist[group] += torch.bincount(digits, minlength=buckets)
        if all_reduce is not None:
            all_reduce(hist)

        if depth == 0:
            # Entries with no gradient at all (a parameter that got none) count as zeros: if k
            # reaches into them, T is 0 and everything is kept.
            short = remaining > hist.sum(1)
            if check_finite:
                _raise_if_nonfinite(int(hist[:, _INF_KEY >> shift :].sum()))

        # For each group, the digit d whose bucket holds the k-th largest key: the count of keys
        # in buckets above d is < k and the count at or above d is >= k.
        from_top = hist.flip(1).cumsum(1)
        position = torch.searchsorted(from_top, remaining.clamp(min=1).unsqueeze(1)).squeeze(1)
        position = position.clamp(max=buckets - 1)
        digit = buckets - 1 - position
        above = from_top.gather(1, position.unsqueeze(1)).squeeze(1) - hist.gather(1, digit.unsqueeze(1)).squeeze(1)
        remaining = remaining - above
        prefix = (prefix << bits) | digit

        if depth + 1 < len(DIGIT_BITS):
            # Keep only the keys with the chosen prefix; later digits never look at the rest. The
            # keys are recomputed here rather than kept from the histogram pass: keeping them would
            # cost 4 bytes per entry of the whole gradient.
            chosen = prefix[group_index].tolist()
            next_candidates = []
            for i in range(len(tensors)):
                keys = magnitude_keys(tensors[i]) if depth == 0 else candidates[i]
                next_candidates.append(keys[(keys >> shift) == chosen[i]])
            candidates = next_candidates

    thresholds = key_to_float(prefix).masked_fill(short, 0.0)
    empty = torch.as_tensor([k <= 0 for k in keep_counts], dtype=torch.bool, device=device)
    return thresholds.masked_fill(empty, float("inf"))


def check_finite(tensors: Sequence[Tensor], all_reduce: AllReduce | None = None) -> None:
    """Raise ``NonFiniteGradientError`` on every rank if any rank's tensors hold NaN or inf."""
    device = tensors[0].device if tensors else torch.device("cpu")
    count = torch.zeros(1, dtype=torch.int64, device=device)
    for tensor in tensors:
        count += (~torch.isfinite(tensor)).sum()
    if all_reduce is not None:
        all_reduce(count)
    _raise_if_nonfinite(int(count))


def _raise_if_nonfinite(count: int) -> None:
    if count:
        raise NonFiniteGradientError(
            f"{count} gradient entries are NaN or inf; refusing to compute a mask "
            "threshold from them (check the loss, learning rate and mixed precision)."
        )


def keep_count(numel: int, mask_ratio: float) -> int:
    """Entries kept in a scope of ``numel`` entries: ``n - floor(r * n)`` (SPEC: r is dropped)."""
    return numel - int(mask_ratio * numel)
