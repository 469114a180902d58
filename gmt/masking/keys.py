"""Magnitude keys: the fp32 bit pattern of |x| read as an int32, ordered like |x|.

For non-negative floats the integer order of the bit patterns is the float order, so the exact
top-k searches (``gmt.masking.search``, ``gmt.masking.radix``) compare and bucket integers, never
floats, and bf16/fp16 values (widened to fp32 exactly) get exact keys too.
"""

from __future__ import annotations

import torch
from torch import Tensor

ABS_BITS = 0x7FFFFFFF
INF_KEY = 0x7F800000  # bit pattern of +inf; every NaN key is larger


def magnitude_keys(values: Tensor) -> Tensor:
    """Return int32 keys ordered like ``|values|`` (the fp32 bit pattern with the sign cleared).

    int32 input is taken as keys already (non-negative): strategies that rank by something other
    than a float magnitude (random scores) hand their keys in directly.
    """
    if values.dtype == torch.int32:
        return values.reshape(-1)
    if values.dtype != torch.float32:
        values = values.float()  # bf16/fp16 -> fp32 is exact, so keys stay exact
    return values.reshape(-1).view(torch.int32) & ABS_BITS


def key_to_float(keys: Tensor) -> Tensor:
    """Turn int32 magnitude keys back into the float32 values they encode."""
    return keys.to(torch.int32).view(torch.float32)
