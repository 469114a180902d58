"""Which distributed layouts gmt can mask, decided from the launch settings before any model loads.

gmt sums its counts over the group that shards the gradient and reads each rank's shard in place
(docs/design.md, "Where each engine is hooked"). A layout where that sum would count entries
twice or miss some (replicas of a shard, tensor or sequence parallel slices, MiCS shard groups),
or where the gradient is not in memory (NVMe offload), is refused here by name; so is an
optimizer gmt cannot steer. The training arguments already hold DeepSpeed's config
(``deepspeed_plugin``, from ``--deepspeed`` or ``accelerate launch``) and the parallelism config,
so every check runs before the model loads, and again when a trainer is built directly.
"""

from __future__ import annotations

import os
from typing import Any

from gmt.launch import processes_asked_of_accelerate
from gmt.masking import MaskStrategy, optimizer_requirement

LAYOUTS_DOC = 'docs/distributed.md, "What is supported"'


def check_parallel_layout(strategy: MaskStrategy, args: Any) -> None:
    """Refuse, with the setting named, a distributed layout ``strategy`` cannot mask right.

    ``args``: the training arguments (``GMTSFTConfig`` / ``GMTDPOConfig``). ``full`` masks nothing
    and runs everywhere."""
    _check_cpu_processes(args)
    _check_step_deltas(args)
    if strategy.name == "full":
        return
    _check_parallelism_config(strategy, args)
    _check_fsdp_checkpoints(strategy, args)
    plugin = getattr(args, "deepspeed_plugin", None)
    if plugin is not None:
        _check_deepspeed(strategy, args, plugin.deepspeed_config)


def _check_cpu_processes(args: Any) -> None:
    """A launch that asked for several processes and got one is refused (accelerate launch's plain
    launcher says nothing). Several processes without a GPU talk over gloo: DeepSpeed's default backend
    there fails only after the model loads (an assertion on train_batch_size), so the setting is named first."""
    import torch

    if "WORLD_SIZE" not in os.environ:
        asked = processes_asked_of_accelerate()
        if asked is not None and asked > 1:
            raise ValueError(
                f"accelerate launch was asked for {asked} processes (--num_processes) but started one: without "
                "--multi_gpu and with fewer than 2 GPUs its plain launcher runs a single process. Add --multi_gpu "
                "(on a machine without a GPU, with --use_cpu true: DDP over gloo), or launch with a config that "
                "starts them (recipes/accelerate/cpu_zero3.yaml on CPU)"
            )
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if processes < 2 or torch.cuda.is_available() or getattr(args, "deepspeed_plugin", None) is None:
        return
    if (args.ddp_backend or "") != "gloo":
        raise ValueError(
            f"{processes} DeepSpeed processes on a machine without a GPU need ddp_backend gloo (got "
            f"{args.ddp_backend!r}): add --ddp_backend gloo, and launch with a CPU accelerate config "
            "(recipes/accelerate/cpu_zero2.yaml or cpu_zero3.yaml: 2 processes); a GPU config starts one process "
            "per GPU it expects"
        )


def _check_step_deltas(args: Any) -> None:
    """Per-step deltas compare whole parameters (gmt.step_delta): a layout that shards them is refused."""
    if not getattr(args, "step_delta_every", 0):
        return
    fsdp = bool(getattr(args, "fsdp", None)) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    plugin = getattr(args, "deepspeed_plugin", None)
    stage = (plugin.deepspeed_config.get("zero_optimization") or {}).get("stage", 0) if plugin is not None else 0
    if fsdp or stage == 3:
        layout = "FSDP" if fsdp else "DeepSpeed ZeRO-3"
        raise NotImplementedError(
            f"step_delta_every under {layout} is not supported yet: the parameters are sharded over the ranks and a "
            "step's delta is taken of whole ones. Use one process, DDP or ZeRO-1/2, or set step_delta_every 0"
        )


def _check_fsdp_checkpoints(strategy: MaskStrategy, args: Any) -> None:
    """A fixed mask's optimizer state (moments of the kept entries, and their indices) is not shaped
    like its parameter; torch's distributed checkpoint, which FSDP2 saves through, keeps per
    parameter only state of the parameter's own layout, so a resume would lose or mangle it."""
    fsdp = bool(getattr(args, "fsdp", None)) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if fsdp and strategy.fixed_masks and args.save_strategy != "no":  # SaveStrategy is a str enum
        raise NotImplementedError(
            f"mask_strategy {strategy.name!r} under FSDP2 cannot save checkpoints yet: its optimizer keeps moments "
            "for the kept entries only, which torch's distributed checkpoint does not carry, so a resume would lose "
            "them. Set save_strategy no (the final model is still saved), or train under DeepSpeed ZeRO-1/2/3, "
            f"whose checkpoints carry them ({LAYOUTS_DOC})"
        )


def _check_parallelism_config(strategy: MaskStrategy, args: Any) -> None:
    config = getattr(args, "parallelism_config", None)
    if config is None and os.environ.get("ACCELERATE_USE_PARALLELISM_CONFIG", "false").lower() == "true":
        from accelerate.parallelism_config import ParallelismConfig

        config = ParallelismConfig()  # from accelerate launch's PARALLELISM_CONFIG_* variables
    if config is None:
        return
    why = {
        "dp_replicate_size": "hybrid sharding (HSDP): every replica of a shard would add its counts again",
        "tp_size": "tensor parallelism: a tensor-parallel slice is not the dim-0 shard gmt counts",
        "cp_size": "context parallelism",
        "sp_size": "sequence parallelism",
    }
    for name, reason in why.items():
        size = getattr(config, name, None) or 1
        if size > 1:
            raise NotImplementedError(
                f"mask_strategy {strategy.name!r} cannot run with parallelism_config {name}={size} ({reason}); "
                f"supported: DDP, FSDP2 fully sharded, DeepSpeed ZeRO-1/2/3 ({LAYOUTS_DOC})"
            )


def _check_deepspeed(strategy: MaskStrategy, args: Any, ds_config: dict) -> None:
    zero = ds_config.get("zero_optimization", {})
    stage = zero.get("stage", 0)
    name = repr(strategy.name)
    if stage not in (1, 2, 3):
        raise NotImplementedError(
            f"mask_strategy {name} under DeepSpeed needs ZeRO stage 1, 2 or 3 (the mask hooks the ZeRO "
            f"optimizer's step); the config has stage {stage}."
        )
    if args.dense_phase_learning_rate is not None and "scheduler" in ds_config:
        raise ValueError(
            "dense_phase_learning_rate scales the Trainer's own learning-rate schedule (lr_scheduler_type): "
            "remove the 'scheduler' block from the DeepSpeed config"
        )
    need = optimizer_requirement(strategy)
    if need is not None and "optimizer" in ds_config:
        raise ValueError(
            f"{need}, as DeepSpeed's optimizer: remove the 'optimizer' block from the DeepSpeed config (the "
            "Trainer's optim is used then)"
        )
    offload = (zero.get("offload_optimizer") or {}).get("device", "none") or "none"
    if offload == "nvme":
        raise NotImplementedError(
            f"mask_strategy {name} reads each rank's gradient partition in memory; with zero_optimization."
            "offload_optimizer.device 'nvme' DeepSpeed swaps it to disk. Use device 'cpu' or 'none'."
        )
    if offload != "none" and need is not None and ds_config.get("zero_force_ds_cpu_optimizer", True) is not False:
        raise ValueError(
            f"{need}; with zero_optimization.offload_optimizer.device {offload!r} DeepSpeed and accelerate put "
            'DeepSpeedCPUAdam in its place. Set "zero_force_ds_cpu_optimizer": false in the DeepSpeed config '
            "(gmt's AdamW then steps the CPU partitions, slower than DeepSpeedCPUAdam), or use gmt_mode 'grad' "
            "with a top-k strategy, which runs with DeepSpeedCPUAdam."
        )
    bf16 = (ds_config.get("bf16") or {}).get("enabled", False)
    bf16 = bool(args.bf16) if bf16 == "auto" else bf16 in (True, "true")
    grad_accum = str((ds_config.get("data_types") or {}).get("grad_accum_dtype") or "").removeprefix("torch.")
    if stage == 1 and bf16 and grad_accum in ("fp32", "float32", "float") and offload == "none":
        # DeepSpeed's engine (_do_optimizer_sanity_check) then wraps the optimizer in BF16_Optimizer, not ZeRO's
        raise NotImplementedError(
            f"mask_strategy {name} under ZeRO-1 with bf16 and data_types.grad_accum_dtype {grad_accum!r}: DeepSpeed "
            "steps that layout with its BF16_Optimizer, whose gradients gmt does not read. Remove grad_accum_dtype "
            f"(ZeRO-1's own optimizer then steps), or use ZeRO stage 2 ({LAYOUTS_DOC})"
        )
    ratio = (zero.get("offload_optimizer") or {}).get("ratio", 1.0)
    if stage == 3 and offload != "none" and ratio is not None and float(ratio) < 1.0:
        raise NotImplementedError(
            f"mask_strategy {name} under ZeRO-3 with zero_optimization.offload_optimizer.ratio {ratio}: partial "
            "offload keeps one rank's gradient on two devices, and gmt's search reads it on one. Use ratio 1.0 "
            f"(the default) or no optimizer offload ({LAYOUTS_DOC})"
        )
    param_offload = (zero.get("offload_param") or {}).get("device", "none") or "none"
    if param_offload == "nvme":
        raise NotImplementedError(
            f"mask_strategy {name} sizes each rank's partition from its parameter's tensor; with zero_optimization."
            "offload_param.device 'nvme' a swapped-out partition is a placeholder, and the mask would keep "
            "everything. Use offload_param device 'cpu' or 'none'."
        )
    if (zero.get("mics_shard_size") or -1) > 0:
        raise NotImplementedError(
            f"mask_strategy {name} cannot run under DeepSpeed MiCS (zero_optimization.mics_shard_size "
            f"{zero['mics_shard_size']}): its shard groups replicate the gradient, and gmt's counts would add "
            f"every replica ({LAYOUTS_DOC})"
        )
    layouts = {
        "sequence_parallel_size": (ds_config.get("sequence_parallel_size") or 1, "sequence parallelism"),
        "tensor_parallel.autotp_size": (
            (ds_config.get("tensor_parallel") or {}).get("autotp_size") or 1, "tensor parallelism"),
    }  # fmt: skip
    for setting, (size, what) in layouts.items():
        if size > 1:
            raise NotImplementedError(
                f"mask_strategy {name} cannot run with DeepSpeed {what} ({setting} {size}): a slice of a tensor "
                f"is not the partition gmt counts ({LAYOUTS_DOC})"
            )
