"""Where the small tables of a mask step live, and how ranks sum them: the one device rule.

The tables (counts, histograms, thresholds, kept entries) are built where the rank's gradients
are, so building them never moves a gradient. A collective only takes tensors on its process
group's communication device (NCCL: the current CUDA device), so ``RankSum`` moves a table that
lives elsewhere (CPU-offloaded gradients) there and back: the tables travel, the gradients never
do. A rank that holds no gradient tensor at all builds its tables on the communication device,
with the same shapes as every other rank. docs/design.md, "Devices", says why.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor


def communication_device(group=None) -> torch.device | None:
    """The device whose tensors ``group``'s backend sums (``backend_device``), for this process."""
    accelerator = torch.accelerator.current_accelerator()
    if accelerator is not None:
        accelerator = torch.device(accelerator.type, torch.accelerator.current_device_index())
    return backend_device(str(dist.get_backend(group)), accelerator)


def backend_device(backend: str, accelerator: torch.device | None) -> torch.device | None:
    """The device a process group's ``backend`` sums tensors on: ``accelerator`` (the process's
    current one) for NCCL or XCCL, the CPU for gloo; None for a backend that takes several device
    types (``cpu:gloo,cuda:nccl``), or one that names no device torch knows here."""
    if ":" in backend:
        return None
    types = [kind for kind, name in dist.Backend.default_device_backend_map.items() if name == backend]
    if "cpu" in types:
        return torch.device("cpu")
    return accelerator if accelerator is not None and accelerator.type in types else None


class RankSum:
    """``AllReduce`` over a process group: sums a tensor across its ranks, in place. The collective
    only ever sees tensors on ``device`` (the group's communication device); a tensor elsewhere is
    summed through a copy there, which is written back."""

    def __init__(self, group=None, device: torch.device | None = None) -> None:
        """``group``: the process group (None: the world); ``device``: its communication device
        (None: ``communication_device(group)``)."""
        self.group = group
        self.device = device if device is not None else communication_device(group)

    def __call__(self, tensor: Tensor) -> None:
        if self.device is None or tensor.device == self.device:
            dist.all_reduce(tensor, group=self.group)
            return
        staged = tensor.to(self.device)
        dist.all_reduce(staged, group=self.group)
        tensor.copy_(staged)

    def __repr__(self) -> str:
        return f"RankSum(device={self.device})"


def table_device(tensors: Sequence[Tensor | None], all_reduce=None) -> torch.device:
    """Where a rank builds the small tables of a step over ``tensors``: the device of the first
    tensor it holds (an engine hands out one device per rank, empty shards included), or, holding
    none, the communication device of ``all_reduce`` (the CPU on one process)."""
    for tensor in tensors:
        if tensor is not None:
            return tensor.device
    return getattr(all_reduce, "device", None) or torch.device("cpu")
