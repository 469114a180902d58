"""The random baseline: k entries of each scope drawn at random, at the ratio gmt keeps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from gmt.masking.base import GradientAccess
from gmt.masking.options import Option
from gmt.masking.strategies.topk import ScoreOf, TopKStrategy

# The hash's int64 temporaries (about 32 bytes an entry at their peak) are made this many entries at a
# time: a tensor's keys then cost their own 4 bytes an entry, plus a fixed ~128 MiB.
KEY_CHUNK_ENTRIES = 1 << 22
RANDOM_FIXED = Option("random_fixed", bool, False, "Draw the mask once and keep it (default: a fresh one every step).")


def random_keys(global_index: Tensor, seed: int) -> Tensor:
    """31-bit pseudo-random int32 keys, a pure function of (entry index, seed): the same entry
    gets the same key on every rank, however the parameter is sharded (splitmix64 finalizer)."""
    x = global_index.to(torch.int64) + _wrap_int64(seed * _GOLDEN)
    for shift, multiplier in ((30, _MIX1), (27, _MIX2)):
        x = (x ^ _logical_shift(x, shift)) * multiplier  # int64 products wrap, as the hash wants
    x = x ^ _logical_shift(x, 31)
    return (_logical_shift(x, 33) & 0x7FFFFFFF).to(torch.int32)


_GOLDEN, _MIX1, _MIX2 = -7046029254386353131, -4658895280553007687, -7723592293110705685  # as int64


def _wrap_int64(value: int) -> int:
    return (value + 2**63) % 2**64 - 2**63


def _logical_shift(x: Tensor, shift: int) -> Tensor:
    return (x >> shift) & ((1 << (64 - shift)) - 1)


class RandomStrategy(TopKStrategy):
    """Baseline: keep a uniformly random k entries of each scope, fresh every step or fixed
    (``random_fixed``). Exactly k (keys are 31-bit, ties are rare) and shard-invariant."""

    name = "random"
    summary = "baseline: the same number of entries as gmt keeps, drawn at random (fresh every step or fixed)"
    options: ClassVar[tuple[Option, ...]] = (RANDOM_FIXED,)
    integer_scores = True
    mask_seeded = True
    random_fixed: bool

    def __init__(self, *values, seed: int = 0, **options) -> None:
        """``seed``: the run's seed (the trainer's ``seed`` setting); the keys depend on nothing else."""
        super().__init__(*values, **options)
        self.seed = seed

    @classmethod
    def from_args(cls, args) -> RandomStrategy:
        return cls(**cls.options_from(args), seed=args.seed)

    def setup(self, access: GradientAccess, total_steps: int = 0) -> None:
        super().setup(access, total_steps)
        offsets, start = access.local_offsets(), 0
        self.first_index = []  # global index of each parameter's first local entry
        for offset, numel in zip(offsets, self.layout.numels, strict=True):
            self.first_index.append(start + offset)
            start += numel

    def score_function(self, grads: Sequence[Tensor | None], step: int) -> ScoreOf:
        seed = self.seed * 1_000_003 + (0 if self.random_fixed else step)

        def keys(index: int, grad: Tensor) -> Tensor:  # recomputed when needed, never stored
            first, numel = self.first_index[index], grad.numel()
            out = torch.empty(numel, dtype=torch.int32, device=grad.device)
            for start in range(0, numel, KEY_CHUNK_ENTRIES):  # int64 temporaries a chunk at a time
                end = min(numel, start + KEY_CHUNK_ENTRIES)
                out[start:end] = random_keys(torch.arange(first + start, first + end, device=grad.device), seed)
            return out

        return keys
