"""Whether this machine can run the ``attn_implementation`` a recipe names, checked before any data
or model loads (transformers would only say so after the data set is loaded)."""

from __future__ import annotations

import importlib.util

# The flash-attention implementations transformers takes, and the package each one needs.
FLASH_ATTENTION_PACKAGES = {"flash_attention_2": "flash-attn", "flash_attention_3": "flash-attn-3"}


def attention_available(implementation: str | None) -> bool:
    """Whether ``implementation`` can run here: anything but flash attention always; flash attention
    with its package on a CUDA GPU (transformers' own test), or on a CUDA GPU with the ``kernels``
    package, from which transformers fetches a hub build of the kernel instead."""
    if implementation not in FLASH_ATTENTION_PACKAGES:
        return True
    import torch
    from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

    installed = is_flash_attn_2_available() if implementation == "flash_attention_2" else is_flash_attn_3_available()
    return installed or (torch.cuda.is_available() and importlib.util.find_spec("kernels") is not None)


def check_attention(implementation: str | None) -> None:
    """Refuse an ``attn_implementation`` this machine cannot run, naming the setting, the GPU extra
    and the way to run without it."""
    if attention_available(implementation):
        return
    import torch

    where = "" if torch.cuda.is_available() else "; this machine has no CUDA GPU, which it needs too"
    raise ValueError(
        f"attn_implementation {implementation!r} needs the {FLASH_ATTENTION_PACKAGES[implementation]} package on a "
        f"CUDA GPU (pip install -e '.[gpu]' installs flash-attn){where}. To run without it, set "
        "--attn_implementation sdpa"
    )
