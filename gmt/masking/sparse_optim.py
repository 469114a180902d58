"""AdamW with state only for the entries a fixed mask keeps.

When a mask stays fixed for a stretch of training (gps, grft, gspf between reselections), the
optimizer state of dropped entries is never used. ``SparseMaskedAdamW`` stores, per masked
parameter, the flat indices of the kept entries and the two Adam moments for those entries only:
16 bytes per kept entry (int64 index + 2 fp32 moments) instead of 8 bytes per entry of dense
AdamW, so at a keep ratio p the state is 2p of dense AdamW's (0.6% at p = 0.003).

Entries outside the mask never change (no update, no weight decay). Parameters without a mask get
an ordinary dense AdamW update. Setting new masks (gspf's reselection) keeps the moments of
entries that stay selected and starts newly selected entries from zero moments; the step count
(bias correction) stays one per tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


class SparseMaskedAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay) whose state for masked parameters covers kept entries only."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def set_fixed_masks(self, masks: dict[Tensor, Tensor]) -> None:
        """Fix the kept entries of each parameter in ``masks`` (bool, the parameter's shape).

        Moments of entries kept before and after are carried over; new entries start at zero.
        """
        for param, keep in masks.items():
            indices = keep.reshape(-1).nonzero().squeeze(1)
            state = self.state[param]
            exp_avg = torch.zeros(indices.numel(), dtype=torch.float32, device=param.device)
            exp_avg_sq = torch.zeros_like(exp_avg)
            if "indices" in state and state["indices"].numel() and indices.numel():
                old = state["indices"]  # sorted, as nonzero() returns them
                position = torch.searchsorted(old, indices).clamp(max=old.numel() - 1)
                carried = old[position] == indices
                exp_avg[carried] = state["exp_avg"][position[carried]]
                exp_avg_sq[carried] = state["exp_avg_sq"][position[carried]]
            state["indices"], state["exp_avg"], state["exp_avg_sq"] = indices, exp_avg, exp_avg_sq
            state.setdefault("step", torch.tensor(0.0))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, weight_decay = float(group["lr"]), group["eps"], group["weight_decay"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if "indices" not in state and "exp_avg" not in state:  # unmasked: dense state
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(param, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(param, dtype=torch.float32)
                state["step"] += 1
                step = float(state["step"])
                indices = state.get("indices")
                flat = param.view(-1)
                values = flat if indices is None else flat[indices]
                grad = param.grad.view(-1) if indices is None else param.grad.view(-1)[indices]
                values = values.float()
                values.mul_(1 - lr * weight_decay)
                state["exp_avg"].view(-1).lerp_(grad.float(), 1 - beta1)
                state["exp_avg_sq"].view(-1).mul_(beta2).addcmul_(grad.float(), grad.float(), value=1 - beta2)
                denom = (state["exp_avg_sq"].view(-1).sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
                values.addcdiv_(state["exp_avg"].view(-1), denom, value=-lr / (1 - beta1**step))
                if indices is None:
                    flat.copy_(values)
                else:
                    flat.index_copy_(0, indices, values.to(flat.dtype))
        return loss


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by the tensors in an optimizer's state (moments, indices, step counts)."""
    return sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if torch.is_tensor(value)
    )
