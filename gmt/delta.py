"""Sparse deltas: only the entries a fine-tune changed, relative to its base.

A masked fine-tune changes a fraction of the weights; its delta stores, per tensor, the flat
indices of the changed entries and their new values (not the differences, so applying a delta is
exact, bit for bit). Saved as safetensors: ``<name>.indices`` (int32, int64 for a tensor of 2^31
entries or more) and ``<name>.values``, with
a fingerprint of the base's weights in the metadata: applied to any other base (same names and
shapes, other values) it would rebuild a wrong model, so that is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import xxhash
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor


def compute_delta(base: Mapping[str, Tensor], tuned: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Indices and values of every entry of ``tuned`` that differs from ``base`` (same names and shapes)."""
    if base.keys() != tuned.keys():
        missing, extra = sorted(base.keys() - tuned.keys()), sorted(tuned.keys() - base.keys())
        raise ValueError(f"base and fine-tuned weights differ in names: missing {missing}, extra {extra}")
    delta: dict[str, Tensor] = {}
    for name, tuned_tensor in tuned.items():
        base_tensor = base[name]
        if base_tensor.shape != tuned_tensor.shape or base_tensor.dtype != tuned_tensor.dtype:
            raise ValueError(f"{name}: base {base_tensor.dtype}{tuple(base_tensor.shape)} vs "
                             f"fine-tuned {tuned_tensor.dtype}{tuple(tuned_tensor.shape)}")  # fmt: skip
        changed = changed_entries(base_tensor, tuned_tensor).nonzero().squeeze(1)
        if tuned_tensor.numel() <= torch.iinfo(torch.int32).max:  # half the bytes of an index
            changed = changed.to(torch.int32)
        if changed.numel():
            delta[f"{name}.indices"] = changed
            delta[f"{name}.values"] = tuned_tensor.reshape(-1)[changed].contiguous()
    return delta


def changed_entries(base: Tensor, tuned: Tensor) -> Tensor:
    """Which entries of ``tuned`` differ from ``base`` (same shape and dtype), flat, as booleans.
    Bit patterns are compared, so that -0.0 vs 0.0 and NaN payloads count as changes too."""
    return _bits(base.reshape(-1)) != _bits(tuned.reshape(-1))


def weights_fingerprint(weights: Mapping[str, Tensor]) -> str:
    """An xxh3-128 hash of named weights: names, dtypes, shapes and every entry's bits."""
    digest = xxhash.xxh3_128()
    for name in sorted(weights):
        tensor = weights[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(_bits(tensor.reshape(-1)).numpy().tobytes())
    return digest.hexdigest()


def apply_delta(
    base: Mapping[str, Tensor], delta: Mapping[str, Tensor], base_fingerprint: str | None = None
) -> dict[str, Tensor]:
    """``base`` with the delta's entries written in (a new dict; ``base`` is not modified).
    ``base_fingerprint``: the fingerprint of the base the delta was computed against (refused if
    ``base`` is another)."""
    if base_fingerprint is not None and weights_fingerprint(base) != base_fingerprint:
        raise ValueError(
            "this base is not the one the delta was computed against (its weights' fingerprint differs): applied "
            "to it, the delta would rebuild a model that was never trained; give the delta's own base"
        )
    out = {name: tensor.clone() for name, tensor in base.items()}
    for key, indices in delta.items():
        if not key.endswith(".indices"):
            continue
        name = key.removesuffix(".indices")
        if name not in out:
            raise ValueError(f"delta has entries for {name!r}, which the base does not have")
        out[name].view(-1)[indices] = delta[f"{name}.values"]
    return out


def save_delta(delta: Mapping[str, Tensor], path: str | Path, base_fingerprint: str | None = None) -> None:
    """Write a delta as safetensors, with its base's ``weights_fingerprint``."""
    metadata = {"format": "gmt-sparse-delta"}
    if base_fingerprint is not None:
        metadata["base_xxh3_128"] = base_fingerprint
    save_file(dict(delta), str(path), metadata=metadata)


def load_delta(path: str | Path) -> dict[str, Tensor]:
    """Read a delta written by ``save_delta``."""
    return load_file(str(path))


def delta_base_fingerprint(path: str | Path) -> str | None:
    """The fingerprint of the base a saved delta was computed against (None: an older delta)."""
    with safe_open(str(path), framework="pt") as file:
        return (file.metadata() or {}).get("base_xxh3_128")


def changed_fraction(delta: Mapping[str, Tensor], base: Mapping[str, Tensor]) -> float:
    """Fraction of the base's entries the delta changes."""
    changed = sum(t.numel() for key, t in delta.items() if key.endswith(".indices"))
    return changed / sum(t.numel() for t in base.values())


def _bits(tensor: Tensor) -> Tensor:
    integer = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()]
    return tensor.view(integer)
