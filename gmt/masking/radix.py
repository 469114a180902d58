"""The reference exact top-k selection: radix select over the magnitude keys of every entry.

Digit by digit from the high bits, a histogram of each group's keys (summed across ranks) says
which bucket holds the k-th largest key; only the keys sharing the chosen prefix go on to the next
digit. It is exact and shard-invariant, and reads every entry once per digit: the fast search
(``gmt.masking.search``) runs it on the few candidates it brackets, and falls back to it over all
entries when its bracket misses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gmt.masking.base import AllReduce
from gmt.masking.comm import table_device
from gmt.masking.finite import raise_if_nonfinite
from gmt.masking.keys import INF_KEY, key_to_float, magnitude_keys

# 31 magnitude bits of an fp32 key, split into digits from high to low. Three digits means three
# small collectives per step; the first digit is the only pass over every entry.
DIGIT_BITS: tuple[int, ...] = (11, 10, 10)


def _digit_shifts() -> list[int]:
    shifts, low = [], sum(DIGIT_BITS)
    for bits in DIGIT_BITS:
        low -= bits
        shifts.append(low)
    return shifts


def radix_thresholds(
    tensors: Sequence[Tensor],
    groups: Sequence[int],
    keep_counts: Sequence[int],
    all_reduce: AllReduce | None = None,
    check_finite: bool = True,
) -> Tensor:
    """Return the k-th largest magnitude of every group, exactly, by radix select over all entries.

    The plain algorithm, used on the candidates ``ThresholdSearch`` brackets and as its fallback.

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
    device = table_device(tensors, all_reduce)
    remaining = torch.as_tensor(list(keep_counts), dtype=torch.int64, device=device)
    prefix = torch.zeros(num_groups, dtype=torch.int64, device=device)
    group_index = torch.as_tensor(list(groups), dtype=torch.int64, device=device)
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
                raise_if_nonfinite(int(hist[:, INF_KEY >> shift :].sum()))

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
