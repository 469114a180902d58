"""``gmt check``: the preflight of a recipe. Loads no weights and trains nothing; says what the run
would be, and refuses what training would refuse before its model loads.

    gmt check --config recipes/tiny/sft_gmt.yaml [--setting value ...]
    gmt check --config recipes/llama3-8b/sft_math_gmt.yaml --accelerate_config recipes/accelerate/zero3.yaml

It runs the checks ``gmt sft`` / ``gmt dpo`` run before the model loads, the same functions (settings, eval suite,
output_dir, resume, launch layout, every data row, chat template), then builds the model from its
config on the ``meta`` device (no memory, no weights) to count what the mask covers, and prints:
processes and engine (``--accelerate_config``: the file ``accelerate launch --config_file`` would
read; else one process), the batch per optimizer step, the steps, the data, the start table of the
mask, and the optimizer state per process. Exit status 2 with one line on a refusal, as training.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from gmt.launch import accelerate_config_processes


def launch_layout(accelerate_config: str | None) -> tuple[int, str]:
    """Processes and engine, in words, from an accelerate config file (None: one process)."""
    if accelerate_config is None:
        return 1, "no distributed engine (one process; give --accelerate_config for a launch)"
    config = yaml.safe_load(Path(accelerate_config).read_text()) or {}
    processes = accelerate_config_processes(accelerate_config)  # the total over the machines
    kind = str(config.get("distributed_type", "NO"))
    if kind == "DEEPSPEED":
        stage = (config.get("deepspeed_config") or {}).get("zero_stage")
        engine = f"DeepSpeed ZeRO-{stage}" if stage is not None else "DeepSpeed (stage in its JSON config)"
    elif kind == "FSDP":
        engine = f"FSDP{(config.get('fsdp_config') or {}).get('fsdp_version', 1)}"
    else:
        engine = {"MULTI_GPU": "DDP", "MULTI_CPU": "DDP (CPU)", "NO": "no distributed engine"}.get(kind, kind)
    return processes, f"{engine}, from {accelerate_config}"


def meta_model(model_args, training_args):
    """The model built from its config on the meta device (shapes, no weights), as training would
    see it (LoRA adapters included with ``use_peft``)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from trl import get_peft_config

    remote_code = training_args.trust_remote_code
    config = AutoConfig.from_pretrained(model_args.model_name_or_path, trust_remote_code=remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=remote_code)
    peft_config = get_peft_config(model_args)
    if peft_config is not None:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config)
    return model


def report(script: str, trainer_cls, script_args, training_args, model_args, accelerate_config: str | None,
           layout=None) -> str:  # fmt: skip
    """Run the checks and return what the run would be, in lines (``layout``: the data's, where it is
    not the trainer's own: GRPO's reward columns)."""
    from gmt.cli import checked_inputs, checked_run_settings
    from gmt.masking import LocalGradientAccess, effective_frozen_params, freeze_parameters, strategy_class
    from gmt.output_dir import traces_a_fresh_run_may_remove
    from gmt.summary import format_summary, mask_summary

    checkpoint = checked_run_settings(script_args, training_args, model_args, claim=False)
    data, _ = checked_inputs(trainer_cls, script_args, training_args, model_args, layout)
    processes, engine = launch_layout(accelerate_config)
    per_step = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * processes
    rows = len(data.train) if hasattr(data.train, "__len__") else None
    if training_args.max_steps > 0:
        steps = f"{training_args.max_steps} optimizer steps (max_steps)"
    elif rows is not None:
        per_epoch = -(-rows // per_step)
        steps = (f"{per_epoch} per epoch x {training_args.num_train_epochs:g} epochs = "
                 f"{round(per_epoch * training_args.num_train_epochs)} optimizer steps")  # fmt: skip
    else:
        steps = "set by max_steps (a streamed data set has no length)"
    output_dir = Path(training_args.output_dir)
    if checkpoint is not None:
        folder = f"{output_dir}: resumes from {checkpoint}"
    else:
        traces = traces_a_fresh_run_may_remove(output_dir, training_args.overwrite_output_dir)
        folder = f"{output_dir}" + (f" (its {len(traces)} earlier run files will be removed)" if traces else "")

    model = meta_model(model_args, training_args)
    strategy = strategy_class(training_args.mask_strategy).from_args(training_args)
    frozen = freeze_parameters(model.named_parameters(), effective_frozen_params(training_args))
    strategy.setup(LocalGradientAccess(model.named_parameters()))
    summary = mask_summary(strategy, model, frozen, training_args)
    sharded = "ZeRO" in engine or "FSDP" in engine
    state_bytes = summary.optimizer_state_bytes / (processes if sharded else 1)
    lines = [
        f"gmt check: {script}, data {script_args.dataset_name or 'a mixture (datasets)'}",
        f"processes: {processes}, {engine}",
        f"batch: {training_args.per_device_train_batch_size} per process x {training_args.gradient_accumulation_steps} "
        f"accumulated x {processes} processes = {per_step} rows per optimizer step",
        f"steps: {steps}",
        f"data: {rows if rows is not None else 'streamed'} training rows, every one checked"
        + (f"; {len(data.eval)} evaluation rows" if data.eval is not None and hasattr(data.eval, "__len__") else ""),
        f"model: {model_args.model_name_or_path} ({type(model).__name__}, built from its config: no weights loaded)",
        f"output_dir: {folder}",
        "",
        format_summary(strategy, summary, training_args),
        f"optimizer state per process: about {state_bytes / 2**30:.2f} GiB"
        + (" (sharded over the processes)" if sharded else ""),
    ]
    gradient_dtype = "bfloat16" if training_args.bf16 and sharded else "float32"  # ZeRO reduces bf16 gradients
    memory_engine = "deepspeed" if "DeepSpeed" in engine or training_args.deepspeed else "torch"
    step = mask_step_bytes(strategy, summary.trainable / (processes if sharded else 1), gradient_dtype, memory_engine)
    if step is not None:
        lines.append(f"mask step per process: about {step / 2**30:.2f} GiB at its peak, above the gradient "
                     "(docs/mask_memory.md)")  # fmt: skip
    if script_args.eval_suite not in (None, "none"):
        lines.append(f"eval_suite {script_args.eval_suite}: its tasks and data were checked; it scores the saved "
                     "model after training")  # fmt: skip
    lines.append("gmt check: everything training checks before its model loads passed")
    return "\n".join(lines)


MASK_MEMORY_ENGINES = ("torch", "deepspeed")  # the optimizer steps the gradients' tensors / DeepSpeed's flat partitions


def mask_memory_case(strategy) -> str | None:
    """The name under which ``scripts/mask_memory.py`` records the mask step of ``strategy`` (the one
    list of those names); None for ``full`` or a strategy it does not measure."""
    name = strategy.name
    if name == "gmt":
        return "gmt tensor-scope grad" if strategy.mask_scope == "tensor" else f"gmt {strategy.gmt_mode}"
    if name in ("gps", "grft"):
        return f"{name} (selection pass: the sums)"
    if name == "gspf":
        return "gspf (reselecting: scores and sums held)" if strategy.gspf_reselect_every else "gspf (one choice)"
    return {"random": "random", "magnitude": "magnitude"}.get(name)


def mask_step_bytes(strategy, entries_per_process: float, gradient_dtype: str, engine: str) -> float | None:
    """The mask step's peak memory above the gradient on one process, from the figures
    ``scripts/mask_memory.py`` measured for ``engine`` (one of ``MASK_MEMORY_ENGINES``); None for
    ``full`` or a strategy it does not measure."""
    import json

    from gmt.resources import MASK_MEMORY

    case = mask_memory_case(strategy)
    records = json.loads(MASK_MEMORY.read_text())["records"]
    found = [r for r in records if r["case"] == case and r["dtype"] == gradient_dtype and r["engine"] == engine
             and r["layout"] == "equal"]  # fmt: skip
    if not found:
        return None
    return found[0]["peak_per_entry"] * entries_per_process + max(found[0]["peak_fixed_bytes"], 0.0)


def split_accelerate_config(argv: list[str]) -> tuple[list[str], str | None]:
    """``argv`` without ``--accelerate_config FILE`` (a setting of ``gmt check`` only), and FILE."""
    if "--accelerate_config" not in argv:
        return argv, None
    at = argv.index("--accelerate_config")
    if at + 1 >= len(argv):
        raise ValueError("--accelerate_config needs a file (the one accelerate launch --config_file would read)")
    return argv[:at] + argv[at + 2 :], argv[at + 1]


def main(argv: list[str] | None = None) -> None:
    """``gmt check --config RECIPE [--accelerate_config FILE] [--setting value ...]``."""
    import importlib

    from gmt.config import SCRIPTS, recipe_script
    from gmt.errors import REFUSALS, exit_refused, show_tracebacks
    from gmt.resources import recipe_path

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        argv, accelerate_config = split_accelerate_config(argv)
        if "--config" not in argv or argv.index("--config") + 1 >= len(argv):
            raise ValueError("gmt check needs --config RECIPE.yaml (the recipe gmt sft, dpo or grpo would run)")
        recipe = recipe_path(argv[argv.index("--config") + 1])
        settings: dict[str, Any] = yaml.safe_load(recipe.read_text()) or {}
        script = recipe_script(settings)
        module = importlib.import_module(SCRIPTS[script].module)
        script_args, training_args, model_args = module.make_parser().parse_args_and_config(argv)
        layout = None
        if script == "gmt/grpo.py":  # the rewards by name, and the columns they read
            _, layout = module.rewards_and_layout(script_args)
            module.check_generation(training_args)
        said = report(script, module.TRAINER, script_args, training_args, model_args, accelerate_config, layout)
        print(said, flush=True)
    except REFUSALS as error:
        if show_tracebacks():
            raise
        exit_refused("check", error)


if __name__ == "__main__":
    main()
