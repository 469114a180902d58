"""fp32 master weights where no engine keeps them (docs/design.md, "Master weights").

A recipe's ``dtype: bfloat16`` with ``bf16: true`` means mixed precision: the forward pass runs in
bf16, the weights and their updates stay in fp32. DeepSpeed (its optimizer's fp32 partitions) and
FSDP (accelerate upcasts the trainable parameters) keep the fp32 copy themselves. Without them (one
process, or DDP) the Trainer would store and update bf16 weights, where a step below bf16's spacing
(about 1e-4 at 0.02) is rounded away: the DPO recipe's lr 5e-7 changed 0.5% of the entries its
mask kept. Here the trainable weights are upcast to fp32 as accelerate's FSDP path does, and the
final model is saved in the dtype it was loaded in. Checkpoints keep fp32, so that a resumed run
goes on from the same weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from gmt.models import local_config, saved_dtype

LOW_PRECISION = (torch.bfloat16, torch.float16)


@dataclass
class MasterWeights:
    """The trainable parameters gmt upcast to fp32, each with the dtype it was loaded in."""

    loaded_dtypes: dict[str, torch.dtype]

    @contextmanager
    def in_loaded_dtype(self, model: torch.nn.Module) -> Iterator[None]:
        """The upcast parameters cast back to the loaded dtype inside the block (to save the final
        model as it was asked for), their fp32 values restored after it."""
        parameters = dict(model.named_parameters())
        masters = {name: parameters[name].data for name in self.loaded_dtypes}
        try:
            for name, dtype in self.loaded_dtypes.items():
                parameters[name].data = masters[name].to(dtype)
            yield
        finally:
            for name, master in masters.items():
                parameters[name].data = master


def keep_fp32_masters(model: torch.nn.Module, args, engine_keeps_masters: bool) -> MasterWeights | None:
    """Upcast ``model``'s trainable bf16/fp16 parameters to fp32 when no engine keeps an fp32 copy
    (``engine_keeps_masters``: DeepSpeed, or FSDP under mixed precision) and ``args`` ask for
    mixed precision (``bf16`` or ``fp16``). Low-precision trainable weights without mixed precision
    are refused by name. Returns what was upcast (None when nothing was)."""
    low = [(name, p.dtype) for name, p in model.named_parameters() if p.requires_grad and p.dtype in LOW_PRECISION]
    if not low or engine_keeps_masters:
        return None
    dtypes = sorted({str(dtype).removeprefix("torch.") for _, dtype in low})
    if not (args.bf16 or args.fp16):
        raise ValueError(
            f"the trainable weights are {'/'.join(dtypes)} (dtype, e.g. {low[0][0]}) but bf16 and fp16 are false: "
            "they would be stored and updated in low precision, with no fp32 master copy, and updates below its "
            "spacing are lost. Set bf16 true (gmt then keeps fp32 weights and runs the forward pass under bf16 "
            "autocast) or dtype float32"
        )
    parameters = dict(model.named_parameters())
    for name, _ in low:
        parameters[name].data = parameters[name].data.to(torch.float32)
    if args.process_index == 0:
        print(
            f"gmt: {len(low)} trainable {'/'.join(dtypes)} tensors upcast to float32 master weights (no DeepSpeed or "
            "FSDP keeps them here): the forward pass runs under "
            f"{'bf16' if args.bf16 else 'fp16'} autocast, the final model is saved as {dtypes[0]}",
            flush=True,
        )
    return MasterWeights(dict(low))


def check_dtype_settings(model_args, args) -> None:
    """Before the model loads: refuse what ``keep_fp32_masters`` would refuse once it has, a model
    loaded in bf16/fp16 (``dtype``; ``auto`` reads a local config.json) with bf16 and fp16 false and
    no engine or adapter that keeps fp32 weights."""
    dtype = model_args.dtype
    if dtype == "auto":
        config = local_config(model_args.model_name_or_path)
        if config is None:
            return  # a hub id: known once it loads
        dtype = saved_dtype(config)
    # With bf16 and fp16 false only DeepSpeed keeps fp32 masters (FSDP does under mixed precision
    # only), as MaskingMixin decides; LoRA's adapters are fp32.
    engine_keeps_masters = getattr(args, "deepspeed_plugin", None) is not None
    if dtype not in ("bfloat16", "float16") or args.bf16 or args.fp16 or engine_keeps_masters or model_args.use_peft:
        return
    raise ValueError(
        f"dtype {dtype} loads the trainable weights in low precision, and bf16 and fp16 are false: they would be "
        "updated with no fp32 master copy, and updates below its spacing are lost. Set bf16 true (gmt then keeps "
        "fp32 weights and runs the forward pass under bf16 autocast) or dtype float32"
    )
