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
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from gmt.masking.base import local_shard


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
        """Fix the kept entries of each parameter in ``masks`` (bool, the parameter's local shape).

        Moments of entries kept before and after are carried over (from sparse or dense state);
        newly kept entries start at zero. An all-True mask makes the parameter's state dense again.
        """
        for param, keep in masks.items():
            flat_keep = keep.reshape(-1)
            state = self.state[param]
            indices = None if bool(flat_keep.all()) else flat_keep.nonzero().squeeze(1)
            size = flat_keep.numel() if indices is None else indices.numel()
            exp_avg = torch.zeros(size, dtype=torch.float32, device=flat_keep.device)
            exp_avg_sq = torch.zeros_like(exp_avg)
            old_indices = state.get("indices")
            if "exp_avg" in state and old_indices is None:  # dense before: read the kept entries
                positions = slice(None) if indices is None else indices
                exp_avg.copy_(state["exp_avg"].reshape(-1)[positions])
                exp_avg_sq.copy_(state["exp_avg_sq"].reshape(-1)[positions])
            elif old_indices is not None and old_indices.numel() and size:  # sparse before
                wanted = torch.arange(size, device=flat_keep.device) if indices is None else indices
                position = torch.searchsorted(old_indices, wanted).clamp(max=old_indices.numel() - 1)
                carried = old_indices[position] == wanted  # sorted, as nonzero() returns them
                exp_avg[carried] = state["exp_avg"][position[carried]]
                exp_avg_sq[carried] = state["exp_avg_sq"][position[carried]]
            state.pop("indices", None)
            if indices is not None:
                state["indices"] = indices
            state["exp_avg"], state["exp_avg_sq"] = exp_avg, exp_avg_sq
            # On the host, as torch's AdamW keeps it: read per parameter at every step, no device sync.
            state.setdefault("step", torch.tensor(0.0, device="cpu"))

    def check_fixed_masks(self, masks: dict[Tensor, Tensor]) -> None:
        """Raise ``ValueError`` unless the sparse state keeps exactly the entries of ``masks`` (as
        ``set_fixed_masks`` would store them: an all-True mask is dense state, no indices)."""
        groups = enumerate(self.param_groups)
        positions = {param: (g, i) for g, group in groups for i, param in enumerate(group["params"])}
        for param, keep in masks.items():
            flat_keep = keep.reshape(-1)
            expected = None if bool(flat_keep.all()) else flat_keep.nonzero().squeeze(1)
            held = self.state.get(param, {}).get("indices")
            same = held is None if expected is None else held is not None and torch.equal(held.cpu(), expected.cpu())
            if not same:
                group, index = positions.get(param, ("?", "?"))
                held_count = "all (dense state)" if held is None else int(held.numel())
                expected_count = "all" if expected is None else int(expected.numel())
                raise ValueError(
                    f"the optimizer's sparse state and the fixed mask disagree for tensor {index} of parameter group "
                    f"{group} ({tuple(param.shape)}): the optimizer keeps {held_count} entries, the mask "
                    f"{expected_count}. The checkpoint's optimizer and mask-state files do not belong together."
                )

    def state_dict(self) -> dict:
        """torch's optimizer state dict, with the kept-entry indices under their own key.

        ``Optimizer.load_state_dict`` casts every state tensor of a float parameter to its dtype:
        int64 indices would come back as float32, wrong past 2^24 entries. They travel apart.
        """
        state_dict = super().state_dict()
        indices = {}
        for param_id, param_state in state_dict["state"].items():
            if "indices" in param_state:
                param_state = dict(param_state)
                indices[param_id] = param_state.pop("indices")
                state_dict["state"][param_id] = param_state
        return {**state_dict, "kept_indices": indices}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore ``state_dict()``, indices as int64 on each parameter's device."""
        state_dict = dict(state_dict)
        indices = state_dict.pop("kept_indices", {})
        super().load_state_dict(state_dict)
        params = [param for group in self.param_groups for param in group["params"]]
        for param_id, kept in indices.items():
            param = params[int(param_id)]
            self.state[param]["indices"] = kept.to(device=param.device, dtype=torch.int64)

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
                if "indices" in state and not state["indices"].numel():
                    continue  # nothing kept (a selection pass): no step counted, so bias correction starts later
                if "indices" not in state and "exp_avg" not in state:  # unmasked: dense state
                    state["step"] = torch.tensor(0.0, device="cpu")
                    state["exp_avg"] = torch.zeros(flat_numel(param), dtype=torch.float32, device=param.device)
                    state["exp_avg_sq"] = torch.zeros_like(state["exp_avg"])
                state["step"] += 1
                step = float(state["step"])
                indices = state.get("indices")
                flat = local_shard(param).view(-1)  # FSDP2: the local shard; masks are local-shaped
                flat_grad = local_shard(param.grad).reshape(-1)
                values = (flat if indices is None else flat[indices]).float()
                grad = flat_grad if indices is None else flat_grad[indices]
                values.mul_(1 - lr * weight_decay)
                state["exp_avg"].view(-1).lerp_(grad.float(), 1 - beta1)
                state["exp_avg_sq"].view(-1).mul_(beta2).addcmul_(grad.float(), grad.float(), value=1 - beta2)
                denom = (state["exp_avg_sq"].view(-1).sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
                values.addcdiv_(state["exp_avg"].view(-1), denom, value=-lr / (1 - beta1**step))
                if indices is None:
                    flat.copy_(values)  # no-op copy for fp32 parameters (values is flat itself)
                else:
                    flat.index_copy_(0, indices, values.to(flat.dtype))
        return loss


def flat_numel(param: Tensor) -> int:
    """Entries of a parameter's local shard."""
    return local_shard(param).numel()


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by the tensors in an optimizer's state (moments, indices, step counts)."""
    return state_bytes(optimizer.state)


def state_bytes(state: Mapping[Any, Mapping[str, Any]]) -> int:
    """Bytes of the tensors in an optimizer state: ``optimizer.state``, or the ``"state"`` of a
    saved ``optimizer.state_dict()``."""
    return sum(value.numel() * value.element_size() for entry in state.values() for value in entry.values()
               if torch.is_tensor(value))  # fmt: skip
