"""``eval_suite`` after training: the saved checkpoint scored in a process of its own.

Why a fresh process: inside a launched run (DDP, DeepSpeed, FSDP; one node or many) the harness's
model builds its own Accelerator from the launcher's environment and joins or breaks the training
world (under ZeRO-3 it fails on the launcher's ``auto`` values). So the training world ends first,
every rank but the main one exits, and the main process runs ``python -m gmt.evaluation`` with the
launcher's variables removed. The checkpoint is already saved; a failed evaluation is reported
with its cause (the child's own output) and a non-zero exit, and the command that reruns it.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from gmt.evaluation.harness import EvalArguments, check_model, check_settings, parse
from gmt.evaluation.suites import check_requirements, load_suite

# Set by torchrun / accelerate launch / DeepSpeed for the training world; none applies to the evaluation.
LAUNCHER_VARIABLES = frozenset({
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
    "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "CROSS_RANK", "CROSS_SIZE",
})  # fmt: skip
LAUNCHER_PREFIXES = ("ACCELERATE_", "TORCHELASTIC_", "PET_", "FSDP_")


def evaluation_settings(script_args, training_args) -> EvalArguments | None:
    """The ``gmt-eval`` settings ``eval_suite``, ``eval_limit`` and ``eval_args`` ask for (None: no
    evaluation): the checkpoint in ``output_dir``, results in ``output_dir/eval``, on the CPU when
    training was."""
    if script_args.eval_suite in (None, "none"):
        if script_args.eval_limit is not None or script_args.eval_args:
            raise ValueError("eval_limit and eval_args apply to eval_suite, which is not set")
        return None
    args = parse(["--suite", script_args.eval_suite, "--model", str(training_args.output_dir),
                  *shlex.split(script_args.eval_args or "")])  # fmt: skip
    if script_args.eval_limit is not None:
        args.limit = script_args.eval_limit
    if args.output_dir is None:
        args.output_dir = str(Path(training_args.output_dir) / "eval")
    if args.device is None and getattr(training_args, "use_cpu", False):
        args.device = "cpu"
    if args.task_data is None and load_suite(args.suite).scores_training_test_split and script_args.dataset_name:
        candidate = Path(script_args.dataset_name) / "test.jsonl"  # the held-out split beside the training data
        args.task_data = str(candidate) if candidate.is_file() else None
    return args


def check_before_training(args: EvalArguments, model_name_or_path: str, chat_template_path: str | None) -> None:
    """What can be refused before training: the suite, its dependencies, settings, and a chat suite
    for a model that will have no chat template. The tasks and their data are checked here too."""
    from gmt.evaluation.tasks import task_manager

    suite = load_suite(args.suite)
    check_requirements(suite)
    check_settings(args, suite)
    if suite.apply_chat_template and not chat_template_path:
        check_model(EvalArguments(suite=args.suite, model=model_name_or_path), suite)
    task_manager(suite, Path(args.task_data) if args.task_data else None,
                 Path(args.data_dir) if args.data_dir else None)  # fmt: skip


def evaluation_environment() -> dict[str, str]:
    """This process's environment without the launcher's variables."""
    return {
        key: value
        for key, value in os.environ.items()
        if key not in LAUNCHER_VARIABLES and not key.startswith(LAUNCHER_PREFIXES)
    }


def run_evaluation(args: EvalArguments) -> int:
    """Score the checkpoint in a fresh process; its exit status (0: the suite's JSON is written)."""
    command = [sys.executable, "-m", "gmt.evaluation", *args.to_argv()]
    print(f"eval_suite {args.suite}: scoring {args.model} in a process of its own", flush=True)
    returncode = subprocess.run(command, env=evaluation_environment()).returncode
    if returncode != 0:
        print(
            f"eval_suite {args.suite} failed (exit status {returncode}; its error is above). The trained model is "
            f"saved in {args.model}. Rerun the evaluation with:\n  gmt-eval {shlex.join(args.to_argv())}",
            file=sys.stderr,
            flush=True,
        )
    return returncode
