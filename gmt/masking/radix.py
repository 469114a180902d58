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


# Entries per histogram op: bounds the int64 bucket indices built at once (32 MiB).
HISTOGRAM_CHUNK = 1 << 22


def radix_thresholds(
    tensors: Sequence[Tensor],
    groups: Sequence[int | Tensor],
    keep_counts: Sequence[int],
    all_reduce: AllReduce | None = None,
    check_finite: bool = True,
) -> Tensor:
    """Return the k-th largest magnitude of every group, exactly, by radix select over all entries.

    The plain algorithm, used on the candidates ``ThresholdSearch`` brackets and as its fallback.
    Each digit is one histogram of every group (group x bucket, one table) over every entry, with
    the entries outside their group's chosen prefix counted in a spare row: no entry is filtered
    out, so nothing has a size that depends on the data and nothing waits for the device (a
    boolean index or a ``bincount`` would, once per tensor and digit on a GPU).

    Args:
        tensors: the (local shards of the) values; each belongs to one group.
        groups: ``groups[i]`` is the group index of ``tensors[i]``, or an int64 tensor of one group
            per entry of ``tensors[i]`` (flattened), where ``len(keep_counts)`` marks an entry of
            no group (never counted).
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
    empty = remaining <= 0  # from the one host-to-device copy of the counts, not a second
    # The chosen high bits of every group so far, and -1 for "no group" (no key matches it).
    prefix = torch.zeros(num_groups + 1, dtype=torch.int64, device=device)
    prefix[num_groups] = -1

    for depth, (bits, shift) in enumerate(zip(DIGIT_BITS, _digit_shifts(), strict=True)):
        buckets = 1 << bits
        table = torch.zeros((num_groups + 1) * buckets, dtype=torch.int64, device=device)
        for tensor, group in zip(tensors, groups, strict=True):
            values = tensor.reshape(-1)
            for start in range(0, values.numel(), HISTOGRAM_CHUNK):
                piece = values[start : start + HISTOGRAM_CHUNK]
                piece_group = group if isinstance(group, int) else group[start : start + HISTOGRAM_CHUNK]
                _add_digits(table, magnitude_keys(piece), piece_group, prefix, num_groups, bits, shift, depth)
        hist = table.view(num_groups + 1, buckets)[:num_groups]
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
        prefix[:num_groups] = (prefix[:num_groups] << bits) | digit

    thresholds = key_to_float(prefix[:num_groups]).masked_fill(short, 0.0)
    return thresholds.masked_fill(empty, float("inf"))


def _add_digits(
    table: Tensor, keys: Tensor, group: int | Tensor, prefix: Tensor, num_groups: int, bits: int, shift: int, depth: int
) -> None:
    """Count ``keys`` into ``table`` (group x bucket, flat) by their digit at ``shift``; a key whose
    higher digits are not its group's chosen prefix (after the first digit) goes to the spare row."""
    buckets = 1 << bits
    row = group
    if depth > 0:
        chosen = prefix[group] if isinstance(group, int) else prefix.index_select(0, group)
        row = torch.where((keys >> (shift + bits)) != chosen, num_groups, group)
    index = ((keys >> shift) & (buckets - 1)).to(torch.int64).add_(row * buckets)
    count_into(table, index)


def count_into(table: Tensor, index: Tensor) -> Tensor:
    """Add 1 to ``table[i]`` for every ``i`` in ``index``, in place: a histogram with no host sync
    (``bincount`` reads its input's maximum on a GPU) and exact in any order (integer adds)."""
    return table.index_add_(0, index, torch.ones(1, dtype=table.dtype, device=table.device).expand(index.numel()))
