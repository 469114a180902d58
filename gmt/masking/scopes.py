"""Scopes: which entries one top-k runs over.

- ``global``: every trainable entry of the model is one scope (the default).
- ``tensor``: each parameter tensor is its own scope.
- ``layer``: each transformer block is a scope; modules outside the blocks (embedding, final
  norm, head) are blocks of their own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

SCOPES = ("global", "tensor", "layer")

# "model.layers.3.self_attn.q_proj.weight" -> "model.layers.3"; covers Llama/Mistral/Qwen
# (layers), GPT-2 (h), BERT (layer) and most others (blocks).
_BLOCK = re.compile(r"^(.*?\b(?:layers|layer|h|blocks)\.\d+)\.")


def layer_name(param_name: str) -> str:
    """Return the block a parameter belongs to (used for the ``layer`` scope and telemetry)."""
    match = _BLOCK.match(param_name)
    if match:
        return match.group(1)
    # Outside the blocks: the owning module ("model.embed_tokens", "lm_head", "model.norm").
    return param_name.rsplit(".", 1)[0] if "." in param_name else param_name


def scope_groups(param_names: Sequence[str], scope: str) -> tuple[list[int], list[str]]:
    """Assign each parameter to a scope group.

    Returns ``(group_of_param, group_names)`` where ``group_of_param[i]`` indexes
    ``group_names``.
    """
    if scope == "global":
        return [0] * len(param_names), ["global"]
    if scope == "tensor":
        return list(range(len(param_names))), list(param_names)
    if scope == "layer":
        return layer_groups(param_names)
    raise ValueError(f"mask_scope must be one of {SCOPES}, got {scope!r}")


def _group_by(keys: Sequence[str]) -> tuple[list[int], list[str]]:
    names: dict[str, int] = {}
    groups = [names.setdefault(key, len(names)) for key in keys]
    return groups, list(names)


def layer_groups(param_names: Sequence[str]) -> tuple[list[int], list[str]]:
    """Group parameters by block, for per-layer telemetry."""
    return _group_by([layer_name(name) for name in param_names])
