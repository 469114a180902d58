"""The threshold over shards on 2 gloo processes equals torch.kthvalue on the whole, with a
constant number of small collectives."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gmt.masking import keep_count, topk_thresholds
from gmt.masking.radix import DIGIT_BITS
from gmt.masking.search import BRACKET_BITS, ThresholdSearch

WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def whole_tensors(num_tensors: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tensors = [
        torch.randn(int(torch.randint(1, 400, (1,), generator=generator)), generator=generator)
        for _ in range(num_tensors)
    ]
    for t in tensors[::3]:
        t[: len(t) // 2] = 0.5  # ties, possibly straddling the shard boundary
    return tensors


def shard(tensor: torch.Tensor, rank: int) -> torch.Tensor:
    # Unequal shards: rank 0 takes the first third. A 1-entry tensor leaves rank 1 empty.
    cut = len(tensor) // 3
    return tensor[:cut] if rank == 0 else tensor[cut:]


def worker(rank: int, port: int, num_tensors: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        tensors = whole_tensors(num_tensors, seed=3)
        shards = [shard(t, rank) for t in tensors]
        if rank == 1:
            shards[0] = shards[0][:0]  # an empty local shard
        calls = []

        def all_reduce(t: torch.Tensor) -> None:
            calls.append(t.numel() * t.element_size())
            dist.all_reduce(t)

        numels = [len(shard(t, 0)) + (0 if i == 0 else len(shard(t, 1))) for i, t in enumerate(tensors)]
        for scope_groups, ratio in ((None, 0.5), (None, 0.9), ("tensor", 0.5)):
            groups = list(range(num_tensors)) if scope_groups == "tensor" else [0] * num_tensors
            sizes = [0] * (max(groups) + 1)
            for g, n in zip(groups, numels):
                sizes[g] += n
            keep = [keep_count(n, ratio) for n in sizes]
            thresholds = topk_thresholds(shards, groups, keep, all_reduce)
            results[(rank, num_tensors, scope_groups, ratio)] = (thresholds.tolist(), list(calls))
            calls.clear()
            # A 3-entry sample per rank: loose brackets, and misses that take the fallback on both ranks.
            search = ThresholdSearch(sample_entries=3, chunk_entries=64)
            thresholds = search(shards, groups, keep, all_reduce)
            results[(rank, num_tensors, scope_groups, ratio, "sparse")] = (thresholds.tolist(), len(calls))
            calls.clear()
            # Told the total is small: the plain radix select over the shards, one all-reduce per digit.
            thresholds = topk_thresholds(shards, groups, keep, all_reduce, total_entries=sum(numels))
            results[(rank, num_tensors, scope_groups, ratio, "small")] = (thresholds.tolist(), len(calls))
            calls.clear()
        dist.barrier()  # both ranks done before the group goes away
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("num_tensors", [4, 40])
def test_sharded_threshold_equals_kthvalue_of_the_whole(num_tensors):
    results = mp.Manager().dict()
    mp.spawn(worker, args=(free_port(), num_tensors, results), nprocs=WORLD, join=True)
    tensors = whole_tensors(num_tensors, seed=3)
    tensors[0] = shard(tensors[0], 0)  # rank 1's part of tensor 0 was emptied
    for scope, ratio in ((None, 0.5), (None, 0.9), ("tensor", 0.5)):
        members = [[t] for t in tensors] if scope == "tensor" else [tensors]
        expected = []
        for group in members:
            magnitudes = torch.cat([t.abs() for t in group])
            k = keep_count(magnitudes.numel(), ratio)
            expected.append(float(torch.kthvalue(magnitudes, magnitudes.numel() - k + 1).values))
        for rank in range(WORLD):
            thresholds, calls = results[(rank, num_tensors, scope, ratio)]
            assert thresholds == expected
            # Sample histogram, counts, one per digit over the candidates, whatever the number of
            # tensors (the sample is the whole shard here: no fallback); each at most a sample
            # histogram per group.
            assert len(calls) == 2 + len(DIGIT_BITS)
            assert max(calls) <= len(members) * ((1 << BRACKET_BITS) + 2) * 8
            thresholds, num_calls = results[(rank, num_tensors, scope, ratio, "sparse")]
            assert thresholds == expected
            assert num_calls == results[(0, num_tensors, scope, ratio, "sparse")][1]
            assert results[(rank, num_tensors, scope, ratio, "small")] == (expected, len(DIGIT_BITS))
