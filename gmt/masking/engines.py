"""Engine adapters: where the accumulated gradient Γ of a step lives, and how ranks talk.

One small interface per engine. The masker asks an adapter for the parameter layout, the local
(writable) gradient of each parameter, a sum-across-ranks for the small threshold histograms,
and how to hand per-parameter keep-masks to the optimizer (which may see flat partitions).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from gmt.masking.base import GradientAccess, ParamLayout, local_shard
from gmt.masking.comm import RankSum
from gmt.masking.finite import NonFiniteGradientError


def trainable_layout(
    named_parameters: Iterable[tuple[str, nn.Parameter]], shape=lambda param: tuple(param.shape)
) -> tuple[list[nn.Parameter], ParamLayout]:
    """The trainable parameters and their layout (names as the user's model spells them, full shapes)."""
    trainable = [(name, param) for name, param in named_parameters if param.requires_grad]
    params = [param for _, param in trainable]
    shapes = [tuple(int(size) for size in shape(param)) for param in params]
    layout = ParamLayout(
        names=[_strip_wrapper_prefix(name) for name, _ in trainable],
        numels=[math.prod(full_shape) for full_shape in shapes],
        shapes=shapes,
    )
    return params, layout


class LocalGradientAccess(GradientAccess):
    """Single process and DDP: after the step's last backward every rank holds the whole,
    already averaged Γ in ``param.grad``, so no collective is needed."""

    steps_grads = True

    def __init__(self, named_parameters: Iterable[tuple[str, nn.Parameter]]) -> None:
        self.params, self.layout = trainable_layout(named_parameters)


class _DeepSpeedAccess(GradientAccess):
    """What ZeRO-1/2 and ZeRO-3 share: the ZeRO optimizer, the data-parallel sum, and the step hook.

    DeepSpeed takes the optimizer step inside the last micro-batch's ``backward``
    (``engine._take_model_step``), before the Trainer's clipping hooks run, so Γ is masked at the
    start of the ZeRO optimizer's ``step``: after the last reduce-scatter, before unscale, clip and
    update. DeepSpeed offers no hook there; the bound method is wrapped (docs/design.md).
    """

    def __init__(self, zero_optimizer, named_parameters: Iterable[tuple[str, nn.Parameter]]) -> None:
        self.zero_optimizer = zero_optimizer
        experts = [
            name
            for name, param in named_parameters
            if param.requires_grad and getattr(param, "allreduce", True) is False
        ]
        if experts:  # deepspeed.moe's expert parameters: partitioned over expert-data-parallel groups
            raise NotImplementedError(
                f"DeepSpeed expert parallelism ({experts[0]}, ...): its experts are partitioned over groups other "
                "than the data-parallel one gmt sums over. An MoE model whose experts are ordinary parameters "
                "(transformers' own MoE layers) is supported."
            )
        # The group that partitions the gradient (the world, in the layouts gmt.parallel lets through).
        self.group = zero_optimizer.dp_process_group
        self.all_reduce = RankSum(self.group)

    def install_step_hook(self, before_step: Callable[[], bool]) -> bool:
        zero = self.zero_optimizer
        # A trainer bound before (an earlier train() on the same engine) wrapped it already: wrap the original.
        engine_step = vars(zero).get("_gmt_engine_step", zero.step)
        zero._gmt_engine_step = engine_step

        def masked_step(*args, **kwargs):
            if not before_step():
                return engine_step(*args, **kwargs)
            # A non-finite Γ, left as it is: ZeRO's own overflow path sees it (an inf/NaN norm), skips
            # the update and clears the gradients, as for an fp16 overflow. ZeRO-1/2 in bf16 only
            # look when check_grad_overflow is on, so it is on for this step.
            checks = getattr(zero, "check_grad_overflow", None)
            if checks is not None:
                zero.check_grad_overflow = True
            try:
                result = engine_step(*args, **kwargs)
            finally:
                if checks is not None:
                    zero.check_grad_overflow = checks
            if not getattr(zero, "overflow", False):
                raise NonFiniteGradientError(
                    f"the gradient holds NaN or inf, and DeepSpeed's {type(zero).__name__} did not skip the step; "
                    "stopping rather than train on it."
                )
            return result

        zero.step = masked_step
        return True


class DeepSpeedZero3Access(_DeepSpeedAccess):
    """DeepSpeed ZeRO-3: each rank holds a flat partition of every parameter's gradient.

    Read right before the ZeRO optimizer's ``step`` (after the last reduce-scatter, before
    unscaling, clipping and the update). The gradient is the engine's own buffer, masked in place
    in its own dtype and on its own device: the accumulation dtype (bf16 unless the config says
    fp32) on the GPU, fp32 on the CPU with ``offload_optimizer``. DeepSpeed's public getter would
    hand out an fp32 copy on the GPU instead (of the whole partition, under offload), which a mask
    must then be written back from. The last rank's partition is padded; only the real entries
    are handed out, so counts and the threshold are those of the unsharded model. The histograms
    are summed over the data-parallel group.
    """

    def __init__(self, zero_optimizer, named_parameters: Iterable[tuple[str, nn.Parameter]]) -> None:
        import torch.distributed as dist

        named_parameters = list(named_parameters)
        super().__init__(zero_optimizer, named_parameters)
        self.params, self.layout = trainable_layout(named_parameters, shape=lambda param: param.ds_shape)
        rank = dist.get_rank(self.group)
        # Rank r holds entries [r * P, (r + 1) * P) of each flattened parameter (P = padded
        # partition size); entries past ds_numel are padding.
        self._real_counts = []
        for param in self.params:
            partition = param.ds_tensor.numel()
            self._real_counts.append(max(0, min(partition, int(param.ds_numel) - rank * partition)))
        self._local: list[Tensor] = []

    def local_numels(self) -> list[int]:
        return list(self._real_counts)

    def local_offsets(self) -> list[int]:
        import torch.distributed as dist

        return [dist.get_rank(self.group) * param.ds_tensor.numel() for param in self.params]

    def grads(self) -> list[Tensor | None]:
        zero = self.zero_optimizer
        # The buffer itself (after the reduce stream is waited for): safe_get_local_grad would copy it.
        self._local = [zero._get_fp32_grad_state_partition(param, release_swap_buffers=False)[0]
                       for param in self.params]  # fmt: skip
        return [grad.view(-1).narrow(0, 0, real) for grad, real in zip(self._local, self._real_counts, strict=True)]

    def weights(self) -> list[Tensor]:
        # The fp32 master partitions, where the gradients are (safe_get_local_fp32_param copies to the GPU).
        zero, weights = self.zero_optimizer, []
        for param, real in zip(self.params, self._real_counts, strict=True):
            group, offset, _ = zero.grad_position[zero.get_param_id(param)]
            weights.append(zero.fp32_partitioned_groups_flat[group].narrow(0, offset, real))
        return weights

    def commit(self) -> None:
        from deepspeed.utils import safe_set_local_grad

        # The mask is already in the engine's buffers. With offload_optimizer DeepSpeed clips by
        # norms it recorded while offloading, before the mask: setting the (masked) buffer onto
        # itself records them again, and copies nothing (a tensor copied onto itself is skipped).
        if self.zero_optimizer.offload_optimizer:
            for param, grad in zip(self.params, self._local, strict=True):
                safe_set_local_grad(param, grad)
        self._local = []

    def optimizer_masks(self, keeps: dict[int, Tensor], fill: bool = True) -> dict[Tensor, Tensor]:
        # The base optimizer steps the flat fp32 partitions, one per sub-group: build one flat mask
        # for each from the parameters' positions in it (padding stays "kept"; its gradient is 0).
        zero = self.zero_optimizer
        flat_masks: dict[Tensor, Tensor] = {}
        for index, keep in keeps.items():
            param = self.params[index]
            group, offset, _ = zero.grad_position[zero.get_param_id(param)]
            flat = zero.fp32_partitioned_groups_flat[group]
            if flat not in flat_masks:
                flat_masks[flat] = torch.full((flat.numel(),), fill, dtype=torch.bool, device=flat.device)
            flat_masks[flat].narrow(0, offset, keep.numel()).copy_(keep.view(-1))
        return flat_masks


class DeepSpeedZero12Access(_DeepSpeedAccess):
    """DeepSpeed ZeRO-1/2: each rank owns a contiguous slice of every parameter group's flat
    gradient, so a parameter is on one rank, split across two, or absent.

    Read right before the ZeRO optimizer's ``step``, through each parameter's ``_hp_mapping``
    (the fragment of it this rank owns): the fragment of the reduced gradient is a writable view,
    masked in place before DeepSpeed flattens it into the fp32 partition, norms and clips it.
    """

    def __init__(self, zero_optimizer, named_parameters: Iterable[tuple[str, nn.Parameter]]) -> None:
        named_parameters = list(named_parameters)
        super().__init__(zero_optimizer, named_parameters)
        self.params, self.layout = trainable_layout(named_parameters)
        self._fragments: list[tuple[nn.Parameter, Tensor]] = []  # this step's (parameter, gradient fragment)

    def local_numels(self) -> list[int]:
        mappings = [getattr(param, "_hp_mapping", None) for param in self.params]
        return [0 if mapping is None else mapping.lp_fragment_address.numel for mapping in mappings]

    def local_offsets(self) -> list[int]:
        offsets = []
        for param in self.params:
            mapping = getattr(param, "_hp_mapping", None)
            offsets.append(0 if mapping is None else mapping.lp_fragment_address.start)
        return offsets

    def _partition_device(self) -> torch.device:
        """Where this rank's fp32 partition (and, offloaded, its gradient) lives: the one device
        of every tensor this access hands out (gmt.masking.comm)."""
        return self.zero_optimizer.single_partition_of_fp32_groups[0].device

    def grads(self) -> list[Tensor | None]:
        zero = self.zero_optimizer
        if zero.cpu_offload:  # the reduced gradients reach the CPU partition by non-blocking copies
            zero._wait_for_offload_copies()
        grads: list[Tensor | None] = []
        self._fragments = []
        for param in self.params:
            mapping = getattr(param, "_hp_mapping", None)
            if mapping is None:  # no entry of this parameter lives on this rank
                grads.append(torch.empty(0, dtype=torch.float32, device=self._partition_device()))
                continue
            fragment = mapping.get_lp_grad_fragment(param._index_in_param_group).view(-1)
            address = mapping.lp_fragment_address
            if fragment.numel() == param.numel() and address.numel != param.numel():
                # Some configurations keep the whole parameter's gradient on every rank: take
                # only the fragment this rank owns, as DeepSpeed's own get_full_hp_grad does.
                fragment = fragment.narrow(0, address.start, address.numel)
            grads.append(fragment)
            self._fragments.append((param, fragment))
        return grads

    def commit(self) -> None:
        from deepspeed.runtime.zero.utils import get_norm_dtype

        # With cpu_offload DeepSpeed clips by per-parameter norms it recorded on the GPU before the
        # copy to the CPU partition, before the mask: record them again from the masked fragments.
        zero = self.zero_optimizer
        if zero.cpu_offload:
            for param, fragment in self._fragments:
                zero.norm_for_param_grads[zero.get_param_id(param)] = fragment.to(get_norm_dtype()).norm(2)
        self._fragments = []

    def weights(self) -> list[Tensor]:
        weights = []
        for param in self.params:
            mapping = getattr(param, "_hp_mapping", None)
            if mapping is None:
                weights.append(torch.empty(0, dtype=torch.float32, device=self._partition_device()))
            else:
                weights.append(mapping.get_hp_fragment())
        return weights

    def optimizer_masks(self, keeps: dict[int, Tensor], fill: bool = True) -> dict[Tensor, Tensor]:
        # The base optimizer steps one flat fp32 partition per parameter group.
        zero = self.zero_optimizer
        flat_masks: dict[Tensor, Tensor] = {}
        for index, keep in keeps.items():
            mapping = getattr(self.params[index], "_hp_mapping", None)
            if mapping is None:  # not on this rank
                continue
            flat = zero.single_partition_of_fp32_groups[mapping.param_group_index]
            if flat not in flat_masks:
                flat_masks[flat] = torch.full((flat.numel(),), fill, dtype=torch.bool, device=flat.device)
            flat_masks[flat].narrow(0, mapping.hp_fragment_address.start, keep.numel()).copy_(keep.view(-1))
        return flat_masks


class FSDP2Access(GradientAccess):
    """FSDP2 (``fully_shard``): parameters and gradients are DTensors sharded on dim 0; each
    rank's gradient shard is ``grad.to_local()``, a writable view (uneven shards included).

    ``numel`` of a DTensor is the global size, so the layout is the unsharded model's. The
    histograms are summed over the mesh's process group.
    """

    def __init__(self, named_parameters: Iterable[tuple[str, nn.Parameter]], group=None) -> None:
        self.params, self.layout = trainable_layout(named_parameters)
        self.all_reduce = RankSum(group)

    def grads(self) -> list[Tensor | None]:
        return [None if param.grad is None else local_shard(param.grad) for param in self.params]

    def local_offsets(self) -> list[int]:
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        offsets = []
        for param in self.params:
            # Shard(0): the local block starts at row offset[0] of the full parameter.
            _, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
            offsets.append(offset[0] * math.prod(param.shape[1:]) if offset else 0)
        return offsets


def _strip_wrapper_prefix(name: str) -> str:
    # DDP and torch.compile wrap the model; report names as the user's model spells them.
    for prefix in ("module.", "_orig_mod."):
        while name.startswith(prefix):
            name = name[len(prefix) :]
    return name
