"""The fast exact top-k threshold search (``ThresholdSearch``) and its entry point ``topk_thresholds``.

The threshold T of a scope is the k-th largest |x| among its entries. Instead of sorting or
concatenating the gradient, we compare magnitude keys (``gmt.masking.keys``). ``ThresholdSearch``
brackets the k-th largest key from a sample, counts and collects the keys in the bracket in one
pass over every entry, and finishes with a radix select (``gmt.masking.radix``) over the few
candidates. Everything that crosses ranks is a small (groups x buckets) table, summed with one
all-reduce, so every rank arrives at the same exact T however the entries are sharded.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from itertools import accumulate

import torch
from torch import Tensor

from gmt.masking.base import AllReduce
from gmt.masking.comm import table_device
from gmt.masking.finite import raise_if_nonfinite
from gmt.masking.keys import ABS_BITS, INF_KEY, key_to_float, magnitude_keys
from gmt.masking.radix import count_into, radix_thresholds

# The bracketing sample: a histogram of the top BRACKET_BITS key bits (8 exponent + 10 mantissa
# bits: buckets 1/1024 of an octave wide) of about SAMPLE_ENTRIES entries per rank, shared among
# the groups by size (at least MIN_GROUP_SAMPLE each). Scopes with many groups (one per tensor) use
# coarser buckets to keep that histogram (summed across ranks) small.
BRACKET_BITS = 18
BRACKET_BITS_MANY_GROUPS = 12
FEW_GROUPS = 8
SAMPLE_ENTRIES = 1 << 20
SAMPLE_FRACTION = 8  # smaller problems sample 1 entry in 8: enough for a band of ~1% of the entries
MIN_GROUP_SAMPLE = 1 << 12
BRACKET_SIGMAS = 4.0  # a bracket misses about once in 10^4 searches; a miss costs time, not exactness
CHUNK_ENTRIES = 1 << 20  # entries per pass chunk on CPU: 9 MiB of buffers, in the last-level cache
# On a GPU every op is a kernel launch of a few microseconds: chunks as large as memory allows
# cheaply (144 MiB of buffers) keep a 1B-entry gradient to ~60 chunks, not ~1000.
CUDA_CHUNK_ENTRIES = 1 << 24
# At most this many entries on one process: radix select over everything. Its first digit costs a
# bincount over every entry and a candidate set of ~5% of them; beyond ~2^16 entries the sample,
# one integer pass and a ~1% band cost less. (Across ranks the limit is a chunk: see __call__.)
SMALL_ENTRIES = 1 << 16
# Where the band is selected in with torch.kthvalue on one process. On CUDA kthvalue runs one thread
# block per slice, so a 1-D band of tens of millions of entries (a 7B model's) takes a large part of
# a step; there the radix select of the sharded path runs instead, as it does across ranks.
KTHVALUE_DEVICES = frozenset({"cpu"})


def topk_thresholds(
    tensors: Sequence[Tensor],
    groups: Sequence[int],
    keep_counts: Sequence[int],
    all_reduce: AllReduce | None = None,
    check_finite: bool = True,
    search: ThresholdSearch | None = None,
    total_entries: int | None = None,
) -> Tensor:
    """Return the k-th largest magnitude of every group, exactly.

    Args:
        tensors: the (local shards of the) values; each belongs to one group.
        groups: ``groups[i]`` is the group index of ``tensors[i]``.
        keep_counts: ``keep_counts[g]`` is k for group g, counted over all ranks. A group with
            k = 0 gets threshold +inf (nothing to keep).
        all_reduce: sums a tensor across ranks in place; ``None`` on a single process. It is
            called the same number of times, with the same shapes, on every rank.
        check_finite: refuse NaN/inf values (off for int32 keys, whose top values are not floats).
        search: a ``ThresholdSearch`` whose buffers are reused between calls (a new one if None).
        total_entries: entries of all groups over all ranks, when the caller knows it.

    Returns:
        float32 tensor of shape ``[len(keep_counts)]``: T_g such that keeping ``|x| >= T_g``
        keeps at least k_g entries of group g (more only when entries tie at T_g). Entries a
        group lacks (a parameter that got no gradient) count as zeros: if k reaches into them, T = 0.

    Raises:
        NonFiniteGradientError: if any entry is NaN or inf (on every rank together).
    """
    return (search or ThresholdSearch())(tensors, groups, keep_counts, all_reduce, check_finite, total_entries)


class ThresholdSearch:
    """The exact top-k threshold search of one strategy, with buffers reused from step to step.

    A plain radix select reads every entry once per digit and builds a 2048-bucket histogram of
    all of them; ``bincount`` over 100M entries costs about twice a ``g.abs()`` pass on CPU. This
    search reads every entry once, with cheap elementwise ops, and leaves the exact work to a small
    candidate set:

    1. Bracket: a strided sample of each group (about ``sample_entries`` per rank) gives a
       histogram of the top key bits, summed across ranks; the bucket range that holds the k-th
       largest key with a margin of ``BRACKET_SIGMAS`` standard deviations is ``[lo, hi]``.
    2. One pass, chunk by chunk through reused buffers (small tensors of a group are packed into one
       chunk, large ones cut): count keys ``>= lo`` and ``> hi``, and keep the keys in ``[lo, hi]``.
    3. The counts are summed across ranks. Where the bracket holds (``count(> hi) < k <= count(>= lo)``)
       the exact threshold is the ``(k - count(> hi))``-th largest candidate, found by radix select
       on the candidates. Where it misses (unlucky sample), that group falls back to radix select
       over all its entries: slower, equally exact.

    Every decision is taken from all-reduced counts, so every rank takes the same branch, issues the
    same collectives and finds the same T, however the entries are sharded.
    """

    def __init__(
        self,
        sample_entries: int = SAMPLE_ENTRIES,
        chunk_entries: int | None = None,
        small_entries: int = SMALL_ENTRIES,
    ) -> None:
        """``chunk_entries``: entries per pass chunk; None takes ``CHUNK_ENTRIES`` on CPU and
        ``CUDA_CHUNK_ENTRIES`` on a GPU (set at the first search, from the tensors' device)."""
        self.sample_entries = sample_entries
        self._chunk_setting = chunk_entries
        self._small_setting = small_entries
        self._use_device(torch.device("cpu"))
        self._buffers: dict[torch.device, tuple[Tensor, Tensor, Tensor]] = {}
        self._tables: dict[tuple[str, torch.device], tuple[tuple, Tensor]] = {}  # _layout_table's
        self.fallback_groups = 0  # groups whose bracket missed, over this search's lifetime
        # After a search: the kept entries (|x| >= T) of each input tensor (int64), -1 where the
        # search did not count them (a group that missed its bracket, T = 0 or inf).
        self.kept_counts = torch.empty(0, dtype=torch.int64, device="cpu")

    def __call__(
        self,
        tensors: Sequence[Tensor],
        groups: Sequence[int],
        keep_counts: Sequence[int],
        all_reduce: AllReduce | None = None,
        check_finite: bool = True,
        total_entries: int | None = None,
    ) -> Tensor:
        """See ``topk_thresholds``. ``total_entries``: the entries of all groups over all ranks, if
        known (the same on every rank); it picks the plain radix select for small problems and
        sizes the sample histogram.

        Runs in inference mode (no autograd bookkeeping per op: ~10% of a small model's search);
        what it returns (thresholds, ``kept_counts``) is only read afterwards, never written."""
        with torch.inference_mode():
            return self._search(tensors, groups, keep_counts, all_reduce, check_finite, total_entries)

    def _search(
        self,
        tensors: Sequence[Tensor],
        groups: Sequence[int],
        keep_counts: Sequence[int],
        all_reduce: AllReduce | None,
        check_finite: bool,
        total_entries: int | None,
    ) -> Tensor:
        num_groups = len(keep_counts)
        device = table_device(tensors, all_reduce)
        self._use_device(device)
        flats = [t.reshape(-1) for t in tensors]
        self.kept_counts = torch.full((len(flats),), -1, dtype=torch.int64, device=device)
        if total_entries is None and all_reduce is None:
            total_entries = sum(flat.numel() for flat in flats)
        # Across ranks every collective costs a round trip and the bracket's sample table is the
        # largest of them: there, everything up to a chunk takes the plain radix select.
        small_entries = self.small_entries if all_reduce is None else self.chunk_entries
        if total_entries is not None and total_entries <= small_entries:
            return self._small(flats, groups, keep_counts, all_reduce, check_finite, device)
        bits = BRACKET_BITS if num_groups <= FEW_GROUPS else BRACKET_BITS_MANY_GROUPS
        if total_entries is not None:  # no finer than the sample can fill (a 2 MiB table to sum otherwise)
            sampled = min(self.sample_entries, total_entries // SAMPLE_FRACTION)
            bits = min(bits, max(10, sampled.bit_length() - 2))
        resident = None
        if self._fits_buffer(flats):
            # This rank's keys fit the buffer: load them once, then sample and count from there.
            resident = self._load_resident(flats, device)
        lo_keys, hi_keys = self._bracket(flats, groups, keep_counts, bits, all_reduce, device, resident)

        group_of_tensor = self._layout_table("group_of_tensor", groups, torch.int64, device)
        counts, pass_result = self._count_pass(
            flats, groups, group_of_tensor, num_groups, lo_keys, hi_keys, check_finite, resident
        )
        if all_reduce is not None:
            all_reduce(counts)
        # A few numbers per group: decided on the host, from all-reduced counts, so every rank
        # takes the same branch.
        counts_list = counts.tolist()
        count_lo, count_hi, nonfinite = counts_list[:num_groups], counts_list[num_groups:-1], counts_list[-1]
        if check_finite and nonfinite:  # counted per chunk above; the entries, for the message (every rank)
            exact = torch.zeros(1, dtype=torch.int64, device=device)
            for flat in flats:
                exact += (~torch.isfinite(flat)).sum().to(device)
            if all_reduce is not None:
                all_reduce(exact)
            raise_if_nonfinite(int(exact))
        bracketed, missed, base = [], [], []
        for k, lo, above_lo, above_hi in zip(keep_counts, lo_keys, count_lo, count_hi, strict=True):
            inside = 0 < k and above_hi < k <= above_lo
            # Fewer nonzero entries than k (lo is never below key 1): T = 0, keep everything.
            short = 0 < k and lo == 1 and above_lo < k
            bracketed.append(inside)
            missed.append(0 < k and not inside and not short)
            base.append(0.0 if short else float("inf"))
        # The host's decisions reach the device in one copy (on a GPU each copy from host memory waits).
        thresholds, inside, outside = torch.tensor(base + bracketed + missed, dtype=torch.float32,
                                                   device=device).view(3, num_groups).unbind()  # fmt: skip
        inside_mask, missed_mask = inside.bool(), outside.bool()
        band = pass_result

        if any(bracketed):
            remaining = [k - above_hi if inside else 0 for k, above_hi, inside in zip(keep_counts, count_hi, bracketed)]
            if all_reduce is None and device.type in KTHVALUE_DEVICES:  # the whole band is here: select in it
                found = _kth_largest(band.keys, band.key_groups, remaining)
            else:
                found = radix_thresholds([band.keys], [band.key_groups], remaining, all_reduce, check_finite=False)
            thresholds = torch.where(inside_mask, found, thresholds)
            ends = self._layout_table("ends", accumulate(flat.numel() for flat in flats), torch.int64, device)
            kept = band.above_per_tensor + band.kept_per_tensor(magnitude_keys(thresholds), ends)
            self.kept_counts = torch.where(inside_mask[group_of_tensor], kept, -1)
        if any(missed):
            self.fallback_groups += sum(missed)
            fallback_counts = [k if miss else 0 for k, miss in zip(keep_counts, missed, strict=True)]
            found = radix_thresholds(flats, groups, fallback_counts, all_reduce, check_finite=False)
            thresholds = torch.where(missed_mask, found, thresholds)
        return thresholds

    def _layout_table(self, name: str, values, dtype: torch.dtype, device: torch.device) -> Tensor:
        """A small table that depends on the layout alone (the same every step), on ``device``: copied
        from the host once, then reused while its values stay the same. Callers must not write to it."""
        values = tuple(values)
        cached = self._tables.get((name, device))
        if cached is None or cached[0] != values:
            cached = (values, torch.as_tensor(list(values), dtype=dtype, device=device))
            self._tables[(name, device)] = cached
        return cached[1]

    def _use_device(self, device: torch.device) -> None:
        """Chunk sizes for where the tensors are (the same on every rank: one device type)."""
        default = CUDA_CHUNK_ENTRIES if device.type == "cuda" else CHUNK_ENTRIES
        self.chunk_entries = self._chunk_setting or default
        self.small_entries = min(self._small_setting, self.chunk_entries)

    def _small(
        self,
        flats: Sequence[Tensor],
        groups: Sequence[int],
        keep_counts: Sequence[int],
        all_reduce: AllReduce | None,
        check_finite: bool,
        device: torch.device,
    ) -> Tensor:
        """A few entries over all ranks: radix select over the keys, no sample (the bracket's fixed
        costs would outweigh the pass it saves)."""
        if not self._fits_buffer(flats):  # only with very many tiny tensors: select on them as they are
            return radix_thresholds(flats, groups, keep_counts, all_reduce, check_finite)
        resident = self._load_resident(flats, device)
        pieces = [(groups[index], keys) for chunk in resident for index, keys in _piece_keys(*chunk)]
        keys, key_groups = [keys for _, keys in pieces], [group for group, _ in pieces]
        return radix_thresholds(keys, key_groups, keep_counts, all_reduce, check_finite)

    def _fits_buffer(self, flats: Sequence[Tensor]) -> bool:
        """Whether this rank's keys fit the key buffer side by side, each chunk padded to a
        multiple of 8 entries (a bound: every tensor padded)."""
        return sum(_round_up(flat.numel(), 8) for flat in flats) <= self.chunk_entries

    def _load_resident(
        self, flats: Sequence[Tensor], device: torch.device
    ) -> list[tuple[list[tuple[int, Tensor]], Tensor]]:
        """Load the keys of every chunk (``_chunks``) side by side into the key buffer, which must
        hold them all; returns ``(pieces, keys)`` per chunk. Each chunk starts at a multiple of 8
        entries (the count pass reads its keys 8 at a time)."""
        keys_buffer = self._buffers_for(device)[0]
        resident, start = [], 0
        for pieces in _chunks(flats, self.chunk_entries):
            end = start + sum(piece.numel() for _, piece in pieces)
            _load_keys([piece for _, piece in pieces], keys_buffer[start:end])
            resident.append((pieces, keys_buffer[start:end]))
            start = _round_up(end, 8)
        return resident

    def _bracket(
        self,
        flats: Sequence[Tensor],
        groups: Sequence[int],
        keep_counts: Sequence[int],
        bits: int,
        all_reduce: AllReduce | None,
        device: torch.device,
        resident: list[tuple[list[tuple[int, Tensor]], Tensor]] | None = None,
    ) -> tuple[list[int], list[int]]:
        """Key ranges ``[lo, hi]`` per group that hold the k-th largest key, from a sample (of the
        ``resident`` keys when loaded already, else of the tensors themselves)."""
        num_groups, buckets, shift = len(keep_counts), 1 << bits, 31 - bits
        local_sizes = [0] * num_groups
        for flat, group in zip(flats, groups, strict=True):
            local_sizes[group] += flat.numel()
        total = max(1, sum(local_sizes))
        sample_entries = min(self.sample_entries, max(total // SAMPLE_FRACTION, 1))
        floor = min(MIN_GROUP_SAMPLE, self.sample_entries)
        budgets = [max(floor, sample_entries * size // total) for size in local_sizes]
        # An odd stride: weight matrices have power-of-two rows, and an even stride could walk one column.
        strides = [max(1, size // budget) | 1 for size, budget in zip(local_sizes, budgets, strict=True)]
        if resident is not None:
            sources = [(groups[index], keys) for chunk in resident for index, keys in _piece_keys(*chunk)]
        else:
            sources = list(zip(groups, flats))
        # One histogram of every group (group x bucket): one op per tensor, nothing read back.
        hist = torch.zeros(num_groups * buckets, dtype=torch.int64, device=device)
        for group, values in sources:
            if values.numel():
                stride = strides[group]
                sample = magnitude_keys(values[stride // 2 :: stride])
                index = (sample >> shift).to(torch.int64).add_(group * buckets)
                count_into(hist, index)
        # Per group: sample counts scaled by the stride (estimated entries), then the variance of
        # that estimate (stride * n * p(1-p) <= stride * n / 4) and the stride, summed across ranks.
        table = torch.zeros(num_groups, buckets + 2, dtype=torch.float64, device=device)
        # strides, variance bounds and keep counts depend on the layout alone: one table, copied once
        variances = [stride * size / 4 for stride, size in zip(strides, local_sizes, strict=True)]
        layout = self._layout_table("bracket", [*strides, *variances, *keep_counts], torch.float64, device)
        stride_column, keep = layout[:num_groups], layout[2 * num_groups :]
        table[:, :buckets] = hist.view(num_groups, buckets).double() * stride_column.unsqueeze(1)
        table[:, buckets] = layout[num_groups : 2 * num_groups]
        table[:, buckets + 1] = stride_column
        if all_reduce is not None:
            all_reduce(table)
        # The estimates are whole numbers (counts times an integer stride, exact in float64): summed
        # as integers, since a floating-point cumsum raises under deterministic algorithms on CUDA
        # (full_determinism; docs/design.md). Against whole numbers, ">= x" is ">= ceil(x)" and
        # "> x" is "> floor(x)".
        estimated = table[:, :buckets].round().to(torch.int64)
        margin = BRACKET_SIGMAS * table[:, buckets].sqrt() + table[:, buckets + 1] + 1
        # from_top[g, j]: estimated keys in the top j + 1 buckets (of bucket buckets - 1 - j and above).
        from_top = estimated.flip(1).cumsum(1)
        at_least = (keep + margin).ceil().to(torch.int64).unsqueeze(1)
        more_than = (keep - margin).floor().to(torch.int64).unsqueeze(1)
        # lo: the highest bucket with at least k + margin estimated keys at or above it.
        lo_bucket = (buckets - 1 - torch.searchsorted(from_top, at_least).squeeze(1)).clamp(min=0)
        # hi: the number of buckets b whose count strictly above b exceeds k - margin (those are all
        # below hi). Count above b = count at or above b + 1; the top bucket has 0 above it.
        at_or_above_exceeding = buckets - torch.searchsorted(from_top, more_than, right=True).squeeze(1)
        exceeding = at_or_above_exceeding - (from_top[:, -1:] > more_than).squeeze(1).long()
        exceeding += (more_than < 0).squeeze(1).long()
        hi_bucket = exceeding.clamp(max=buckets - 1)
        lo_keys = (lo_bucket << shift).clamp(min=1).tolist()  # zeros are never candidates
        hi_keys = (((hi_bucket + 1) << shift) - 1).tolist()
        return lo_keys, hi_keys

    def _count_pass(
        self,
        flats: Sequence[Tensor],
        groups: Sequence[int],
        group_of_tensor: Tensor,
        num_groups: int,
        lo_keys: list[int],
        hi_keys: list[int],
        check_finite: bool,
        resident: list[tuple[list[tuple[int, Tensor]], Tensor]] | None = None,
    ) -> tuple[Tensor, _Band]:
        """One pass over every entry: per-group counts of keys >= lo and > hi, and the keys between
        (read from ``resident`` when the keys are loaded already).

        Returns ``counts`` (``[count_lo per group, count_hi per group, nonfinite chunks]``, int64)
        and the band (``_Band``: its keys, where they are, and the count above it per tensor).
        """
        device = group_of_tensor.device
        keys_buffer, from_hi_buffer, flags_buffer = self._buffers_for(device)
        above_parts: list[Tensor] = []  # per chunk: minus the number of its keys <= hi, per piece
        above_owners: list[int] = []
        above_sizes: list[int] = []
        row_parts: list[Tensor] = []
        row_start_parts: list[Tensor] = []
        row_group_parts: list[Tensor] = []
        largest: list[Tensor] = []
        position = 0  # where the chunk starts in the concatenation of ``flats``
        aligned = True  # every tensor packed into a chunk starts at a multiple of 8 entries in it
        # Integer arithmetic only: on CPU a comparison writing bools costs ~4x an int32 add, and
        # count_nonzero ~5x an int32 sum. Chunks are small enough to stay in cache between ops.
        if resident is None:
            chunks = [(pieces, None) for pieces in _chunks(flats, self.chunk_entries)]  # views: no copy
        else:
            chunks = resident
        # Every tensor a multiple of 8 entries: no 8-entry row holds two tensors, so one group per row.
        rows_of_one_piece = all(flat.numel() % 8 == 0 for flat in flats)
        # For the chunks that hold several scope groups: each piece's end in its chunk, hi + 1 and
        # group, copied to the device once for all chunks (a host-to-device copy waits on a GPU).
        piece_rows: list[tuple[int, int, int]] = []
        for pieces, _ in chunks:
            if len({groups[index] for index, _ in pieces}) > 1:
                ends = accumulate(piece.numel() for _, piece in pieces)
                piece_rows += [
                    (end, hi_keys[groups[index]] + 1, groups[index]) for end, (index, _) in zip(ends, pieces)
                ]
        piece_table = torch.tensor(piece_rows, dtype=torch.int64, device=device).reshape(-1, 3).T
        table_start = 0
        for chunk_index, (pieces, loaded) in enumerate(chunks):
            sizes = [piece.numel() for _, piece in pieces]
            piece_groups = [groups[index] for index, _ in pieces]
            size = sum(sizes)
            padded = _round_up(size, 8)
            aligned = aligned and all(piece_size % 8 == 0 for piece_size in sizes[:-1])
            if loaded is None:
                keys = keys_buffer[:size]
                _load_keys([piece for _, piece in pieces], keys)
                key_rows = keys_buffer[:padded]
            else:
                keys = loaded
                offset = loaded.storage_offset() - keys_buffer.storage_offset()
                key_rows = keys_buffer[offset : offset + padded]
            if check_finite:
                largest.append(keys.max())
            # Tensors of several scope groups share a chunk (a chunk per tensor would cost a host
            # sync per tensor below): each piece is compared with its own group's bracket.
            mixed = len(set(piece_groups)) > 1
            from_hi = from_hi_buffer[:padded]
            start = 0
            for piece_size, group in zip(sizes, piece_groups, strict=True) if mixed else [(size, piece_groups[0])]:
                piece_keys = keys[start : start + piece_size]
                torch.sub(piece_keys, hi_keys[group] + 1, out=from_hi[start : start + piece_size])  # < 0 iff key <= hi
                piece_keys.sub_(lo_keys[group])
                start += piece_size
            from_hi[size:].zero_()
            # In the band iff key - lo >= 0 > key - hi - 1: the only case where their signs differ.
            # The band flags (-1 in the band, else 0) overwrite the keys: the band's keys come back
            # from key - hi - 1, and one buffer less stays in cache.
            keys.bitwise_xor_(from_hi[:size]).bitwise_right_shift_(31)
            in_band = key_rows
            in_band[size:].zero_()
            # The band is ~1% of the entries. Find the 8-entry rows that hold any of it (one scan of
            # the flags read as int64 words, 8x fewer than the entries) and keep those rows whole,
            # with the keys outside the band zeroed: no per-entry positions needed.
            flags = flags_buffer[:padded]
            flags.copy_(in_band)  # int32 -> int8: -1 stays -1
            words = flags.view(torch.int64).nonzero().squeeze(1)
            rows = from_hi.view(-1, 8).index_select(0, words)
            if mixed:  # each slot's piece, from its position: band-sized work only
                ends, his, piece_group = piece_table[:, table_start : table_start + len(sizes)]
                table_start += len(sizes)
                slots = words.unsqueeze(1) * 8 + torch.arange(8, device=device)
                if rows_of_one_piece:
                    slots = slots[:, :1].contiguous()
                piece = torch.searchsorted(ends.contiguous(), slots, right=True).clamp_(max=len(sizes) - 1)
                # int64 -> int32 wraps hi + 1 = 2^31 to -2^31, as the scalar path's arithmetic does.
                rows.add_(his.to(torch.int32)[piece])
                row_group_parts.append(piece_group[piece])
            else:
                rows.add_(hi_keys[piece_groups[0]] + 1)
                if num_groups > 1:
                    shape = (words.numel(), 1 if rows_of_one_piece else 8)
                    row_group_parts.append(torch.full(shape, piece_groups[0], dtype=torch.int64, device=device))
            rows.bitwise_and_(in_band.view(-1, 8).index_select(0, words))
            from_hi = from_hi[:size].bitwise_right_shift_(31)  # -1 where key <= hi, 0 above
            row_ends = functools.partial(self._layout_table, f"row ends of chunk {chunk_index}")
            above_parts.append(_piece_sums(from_hi, sizes, row_ends))
            above_owners += [owner for owner, _ in pieces]
            above_sizes += sizes
            row_parts.append(rows)
            row_start_parts.append(words * 8 + position)
            position += size

        above_per_tensor = torch.zeros(len(flats), dtype=torch.int64, device=device)
        if above_parts:  # owners and sizes of the pieces: the layout's, copied once
            pieces = self._layout_table("pieces", [*above_owners, *above_sizes], torch.int64, device)
            owners, sizes = pieces[: len(above_owners)], pieces[len(above_owners) :]
            above_per_tensor.index_add_(0, owners, torch.cat(above_parts).to(torch.int64) + sizes)
        band = _Band(row_parts, row_start_parts, row_group_parts, num_groups, above_per_tensor, aligned, device)
        counts = torch.zeros(2 * num_groups + 1, dtype=torch.int64, device=device)
        counts[num_groups:-1].index_add_(0, group_of_tensor, above_per_tensor)  # count(> hi)
        counts[:num_groups] = counts[num_groups:-1] + band.sizes  # count(>= lo)
        if largest:
            counts[-1] = (torch.stack(largest) >= INF_KEY).sum()
        return counts, band

    def _buffers_for(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        if device not in self._buffers:
            entries = self.chunk_entries
            self._buffers[device] = (
                torch.zeros(entries, dtype=torch.int32, device=device),  # keys, then the band flags
                torch.zeros(entries, dtype=torch.int32, device=device),  # key - hi - 1
                torch.zeros(entries, dtype=torch.int8, device=device),  # band flags, 8 per word
            )
        return self._buffers[device]


class _Band:
    """The keys of one count pass that lie in their group's bracket, as 8-entry rows of keys with
    the keys outside the band zeroed (band keys are never 0: the bracket starts at key 1)."""

    def __init__(
        self,
        row_parts: list[Tensor],
        row_start_parts: list[Tensor],
        row_group_parts: list[Tensor],
        num_groups: int,
        above_per_tensor: Tensor,
        rows_within_tensors: bool,
        device: torch.device,
    ) -> None:
        self.rows = torch.cat(row_parts) if row_parts else torch.empty(0, 8, dtype=torch.int32, device=device)
        self.row_starts = (
            torch.cat(row_start_parts) if row_start_parts else torch.empty(0, dtype=torch.int64, device=device)
        )
        self.row_groups = torch.cat(row_group_parts) if row_group_parts else None
        self.above_per_tensor = above_per_tensor  # keys above the band, per tensor
        self.rows_within_tensors = rows_within_tensors  # no row holds entries of two tensors
        # The band's keys with their groups, in one compaction whatever the number of groups (one
        # host sync; a split by group would cost one per group).
        present = self.rows != 0
        self.keys = self.rows[present]
        if self.row_groups is None:
            self.key_groups = torch.zeros_like(self.keys, dtype=torch.int64)
        else:  # [rows, 1], or [rows, 8] where a row may hold entries of two groups
            self.key_groups = self.row_groups.expand(-1, 8)[present]
        sizes = count_into(torch.zeros(num_groups + 1, dtype=torch.int64, device=device), self.key_groups)
        self.sizes = sizes[:num_groups]  # band keys per group

    def kept_per_tensor(self, threshold_keys: Tensor, ends: Tensor) -> Tensor:
        """The band's keys >= their group's threshold key, counted per tensor (``ends``: where each
        tensor ends in the concatenation of them all, on the band's device)."""
        threshold_keys = threshold_keys.clamp(min=1)  # a zeroed slot is never a kept key (T = 0 keeps all)
        if self.row_groups is None:
            row_thresholds = threshold_keys
        else:  # a slot of no group (chunk padding) is never kept
            never = torch.full((1,), ABS_BITS, dtype=threshold_keys.dtype, device=threshold_keys.device)
            row_thresholds = torch.cat([threshold_keys, never])[self.row_groups]
        kept = self.rows >= row_thresholds
        if self.rows_within_tensors:  # count per row, then add the rows up per tensor
            owners = torch.searchsorted(ends, self.row_starts, right=True)
            return torch.zeros(len(ends), dtype=torch.int64, device=kept.device).index_add_(0, owners, kept.sum(1))
        rows, columns = kept.nonzero().unbind(1)
        positions = self.row_starts[rows] + columns
        return torch.bincount(torch.searchsorted(ends, positions, right=True), minlength=len(ends))


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _piece_sums(values: Tensor, sizes: list[int], row_ends: Callable[..., Tensor]) -> Tensor:
    """int32 sums of consecutive pieces of ``values`` (of ``sizes``), in about one pass. ``row_ends``:
    ``ThresholdSearch._layout_table`` for this chunk, which keeps its piece ends on the device."""
    if len(sizes) == 1:
        return values.sum(dtype=torch.int32).reshape(1)
    row = math.gcd(*sizes)
    if row < 64:  # no common row length worth reshaping to: one sum per piece
        return torch.stack([piece.sum(dtype=torch.int32) for piece in values.split(sizes)])
    # Sum rows of a common length (one op), then read each piece's total off a running sum of rows.
    running = values.view(-1, row).sum(1, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    totals = running[row_ends([end // row - 1 for end in accumulate(sizes)], torch.int64, values.device)]
    return torch.diff(totals, prepend=totals.new_zeros(1))


def _kth_largest(keys: Tensor, key_groups: Tensor, ranks: Sequence[int]) -> Tensor:
    """The ``ranks[g]``-th largest of the ``keys`` (int32) of group g (``key_groups``) as floats;
    +inf where the rank is 0. On the CPU only (``KTHVALUE_DEVICES``): it splits by group."""
    found = []
    for group, rank in enumerate(ranks):
        if rank <= 0:
            found.append(torch.full((), INF_KEY, dtype=torch.int32, device=keys.device))
        else:
            members = keys if len(ranks) == 1 else keys[key_groups == group]
            found.append(torch.kthvalue(members, members.numel() - rank + 1).values)
    return key_to_float(torch.stack(found))


def _chunks(flats: Sequence[Tensor], chunk_entries: int):
    """Yield ``pieces``, a list of ``(tensor index, flat piece)``: runs of small tensors (of any
    groups) packed up to ``chunk_entries``, and large tensors cut into pieces of that size."""
    pending: list[tuple[int, Tensor]] = []
    pending_size = 0
    for index, flat in enumerate(flats):
        numel = flat.numel()
        if numel == 0:
            continue
        if pending and pending_size + numel > chunk_entries:
            yield pending
            pending, pending_size = [], 0
        if numel > chunk_entries:
            for start in range(0, numel, chunk_entries):
                yield [(index, flat[start : start + chunk_entries])]
            continue
        pending.append((index, flat))
        pending_size += numel
    if pending:
        yield pending


def _piece_keys(pieces: list[tuple[int, Tensor]], keys: Tensor):
    """``(tensor index, keys)`` of each piece of a loaded chunk (views into its ``keys``)."""
    start = 0
    for index, piece in pieces:
        yield index, keys[start : start + piece.numel()]
        start += piece.numel()


def _load_keys(pieces: Sequence[Tensor], keys: Tensor) -> None:
    """Write the magnitude keys of ``pieces`` (concatenated) into ``keys`` (an int32 buffer)."""
    if len(pieces) > 1 and all(piece.dtype == torch.float32 for piece in pieces):
        # Many small tensors: one cat and one in-place op, not one dispatched op per tensor.
        torch.cat(pieces, out=keys.view(torch.float32))
        keys.bitwise_and_(ABS_BITS)
        return
    start = 0
    for piece in pieces:
        end = start + piece.numel()
        if piece.dtype == torch.int32:  # keys already (random scores)
            keys[start:end].copy_(piece)
        else:
            source = piece if piece.dtype == torch.float32 else piece.float()  # bf16 -> fp32 is exact
            torch.bitwise_and(source.view(torch.int32), ABS_BITS, out=keys[start:end])
        start = end
