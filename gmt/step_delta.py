"""Per-step sparse deltas: the entries the last optimizer step (or the last N) changed, in the
dtype the weights are saved in, as a trainer hands new weights to a generator (an RL run's weight
sync) or to disk.

A masked step changes only its kept entries (update mode, fixed masks); a bf16 model whose fp32
master moved by less than bf16's spacing did not change at all, and is counted as unchanged. Each
delta holds, per tensor, the flat indices of the changed entries and their new values, in the
format of ``gmt.delta`` (``gmt delta apply`` rebuilds the weights bit for bit), with the
fingerprint of the weights it applies to: the previous delta's result, or the weights the run
started from. Plain torch: the trainer's callback (gmt/trainer.py) decides when.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor

from gmt.delta import compute_delta, save_delta, weights_fingerprint


def delta_file(out_dir: Path, step: int) -> Path:
    """Where the delta of optimizer step ``step`` is written."""
    return out_dir / f"step-{step:07d}.safetensors"


class StepDeltas:
    """The changes of the weights ``weights()`` returns (named, in their saved dtype), delta after
    delta. ``out_dir``: where each delta is written (None: only measured)."""

    def __init__(self, weights: Callable[[], Mapping[str, Tensor]], out_dir: Path | None = None) -> None:
        self.weights = weights
        self.out_dir = out_dir
        self.previous = {name: tensor.detach().clone() for name, tensor in weights().items()}
        self.entries = sum(tensor.numel() for tensor in self.previous.values())
        self.dense_bytes = sum(tensor.numel() * tensor.element_size() for tensor in self.previous.values())
        self.fingerprint = None
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            self.fingerprint = weights_fingerprint(self.previous)
        self._since_log: list[tuple[int, int]] = []  # (changed entries, delta bytes) of each delta since the last pop

    def take(self, step: int) -> tuple[int, int]:
        """The delta since the last one: written as ``step-<step>.safetensors`` where ``out_dir`` is
        set; returns (changed entries, its bytes: an index and a value per changed entry)."""
        current = {name: tensor.detach() for name, tensor in self.weights().items()}
        delta = compute_delta(self.previous, current)
        changed = sum(t.numel() for key, t in delta.items() if key.endswith(".indices"))
        size = sum(t.numel() * t.element_size() for t in delta.values())
        if self.out_dir is not None:
            save_delta({key: t.cpu() for key, t in delta.items()}, delta_file(self.out_dir, step), self.fingerprint)
        for key, indices in delta.items():  # the next delta starts from these weights
            if key.endswith(".indices"):
                name = key.removesuffix(".indices")
                self.previous[name].view(-1)[indices] = delta[f"{name}.values"]
        if self.out_dir is not None:
            self.fingerprint = weights_fingerprint(self.previous)
        self._since_log.append((changed, size))
        return changed, size

    def pop_logs(self) -> dict[str, float]:
        """Per delta since the last pop, averaged: ``delta/changed_fraction`` (of the entries),
        ``delta/bytes`` and ``delta/bytes_vs_dense`` (against sending the dense weights)."""
        if not self._since_log:
            return {}
        count = len(self._since_log)
        changed = sum(c for c, _ in self._since_log) / count
        size = sum(s for _, s in self._since_log) / count
        self._since_log = []
        return {"delta/changed_fraction": changed / self.entries, "delta/bytes": size,
                "delta/bytes_vs_dense": size / self.dense_bytes}  # fmt: skip


def saved_weights(model: torch.nn.Module, loaded_dtypes: Mapping[str, torch.dtype] | None) -> dict[str, Tensor]:
    """``model``'s state dict as it is saved: the parameters gmt keeps as fp32 masters in the dtype
    they were loaded in (gmt.precision), tied names included; the rest as they are."""
    state = model.state_dict()
    if not loaded_dtypes:
        return state
    parameters = dict(model.named_parameters())
    cast_to = {parameters[name].data_ptr(): dtype for name, dtype in loaded_dtypes.items() if name in parameters}
    return {name: tensor.to(cast_to.get(tensor.data_ptr(), tensor.dtype)) for name, tensor in state.items()}
