"""A masked AdamW step for ``gmt_mode: update``.

Zeroing a gradient entry does not freeze it: AdamW's momentum and weight decay still move it.
``MaskedAdamW`` takes one boolean keep-mask per parameter for the next step; an entry outside its
mask does not change at all in that step (no update, no decay, moments untouched). The step count
used for bias correction stays one per parameter tensor, as in torch's ``SparseAdam`` and TF's
``LazyAdam``: a per-entry count would double the optimizer state.

Without masks (or for parameters with no mask) the step is torch's own ``AdamW.step``, so an
unmasked run is bitwise the run a plain ``AdamW`` gives.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


class MaskedAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` that can restrict its next step to masked entries."""

    def __init__(self, params, *args, **kwargs) -> None:
        super().__init__(params, *args, **kwargs)
        for group in self.param_groups:
            if group.get("amsgrad") or group.get("maximize"):
                raise ValueError("MaskedAdamW supports neither amsgrad nor maximize")
        self._update_masks: dict[Tensor, Tensor] = {}

    def set_update_masks(self, masks: dict[Tensor, Tensor]) -> None:
        """Restrict the next update of each ``param`` to ``masks[param]`` (bool, its shape).

        Parameters absent from ``masks`` get the ordinary update. Each mask is used once, by the
        next step that updates its parameter (DeepSpeed steps its flat partitions one sub-group
        per ``step()`` call); setting new masks drops any unused ones.
        """
        self._update_masks = dict(masks)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):  # type: ignore[override]
        masks = self._update_masks
        if not masks:
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                self._masked_update(param, group, masks.pop(param, None))
        return loss

    def _masked_update(self, param: Tensor, group: dict, keep: Tensor | None) -> None:
        state = self.state[param]
        if not state:
            # Same state layout as torch's AdamW, so masked and unmasked steps interleave.
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["step"] += 1
        step = float(state["step"])
        beta1, beta2 = group["betas"]
        lr, eps, weight_decay = float(group["lr"]), group["eps"], group["weight_decay"]
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = math.sqrt(1 - beta2**step)

        # FSDP2 parameters are DTensors: update the local shard (masks are local-shaped).
        param_local, grad_local = local_shard(param), local_shard(param.grad)
        exp_avg_local, exp_avg_sq_local = local_shard(state["exp_avg"]), local_shard(state["exp_avg_sq"])
        if keep is None:
            values, grad = param_local, grad_local
            exp_avg, exp_avg_sq = exp_avg_local, exp_avg_sq_local
        else:
            # Work on the kept entries only and scatter them back: the rest stay bitwise as they were.
            values, grad = param_local[keep], grad_local[keep]
            exp_avg, exp_avg_sq = exp_avg_local[keep], exp_avg_sq_local[keep]

        values.mul_(1 - lr * weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        values.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)

        if keep is not None:
            param_local.masked_scatter_(keep, values)
            exp_avg_local.masked_scatter_(keep, exp_avg)
            exp_avg_sq_local.masked_scatter_(keep, exp_avg_sq)


def local_shard(tensor: Tensor) -> Tensor:
    """The local shard of a DTensor (a view), or the tensor itself."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor
