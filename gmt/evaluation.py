"""Score a checkpoint with an lm-evaluation-harness suite (``eval/suites/*.yaml``).

A suite is a list of the harness's own tasks with their few-shot counts, whether to wrap prompts in
the model's chat template, and whether the tasks execute model-written code. The ``tiny`` suite's
task lives in ``eval/tasks`` and reads the held-out problems that ``python -m gmt.tiny`` writes,
so train -> evaluate runs offline. Used by ``gmt-eval`` (``eval/run.py``, ``main`` below) and by
``gmt/sft.py --eval_suite``.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gmt.prompts import prompt_task_yaml

EVAL_DIR = Path(__file__).resolve().parents[1] / "eval"
SUITES = ("code", "math", "general", "tiny")
DEFAULT_TINY_DATA = Path(".cache/gmt-tiny/data/sft/test.jsonl")


@dataclass(frozen=True)
class Suite:
    """A suite file: the harness tasks (name, few-shot count) and how to prompt them."""

    name: str
    tasks: tuple[tuple[str, int], ...]
    apply_chat_template: bool
    executes_code: bool


def load_suite(name: str) -> Suite:
    """Read ``eval/suites/<name>.yaml``."""
    if name not in SUITES:
        raise ValueError(f"eval suite must be one of {SUITES}, got {name!r}")
    spec = yaml.safe_load((EVAL_DIR / "suites" / f"{name}.yaml").read_text())
    return Suite(
        name=spec["name"],
        tasks=tuple((entry["task"], int(entry["num_fewshot"])) for entry in spec["tasks"]),
        apply_chat_template=bool(spec.get("apply_chat_template", False)),
        executes_code=bool(spec.get("executes_code", False)),
    )


def task_manager(tiny_data: Path | None = None):
    """The harness's TaskManager, plus gmt's local tasks (the tiny task reads ``tiny_data``)."""
    from lm_eval.tasks import TaskManager

    data = Path(tiny_data or DEFAULT_TINY_DATA).resolve()
    include = Path(tempfile.mkdtemp(prefix="gmt-eval-tasks-"))
    for template in (EVAL_DIR / "tasks").glob("*.yaml"):
        (include / template.name).write_text(fill_task_template(template.read_text(), data))
    return TaskManager(include_path=str(include))


def fill_task_template(text: str, tiny_data: Path) -> str:
    """A task file of eval/tasks with its placeholders filled: ``__DATA__`` (the tiny task's data),
    ``__LM_EVAL_TASKS__`` (the installed harness's task folder, for ``include``) and the training
    prompt formats of gmt/prompts.py."""
    import lm_eval.tasks
    from lm_eval.tasks._yaml_loader import load_yaml

    harness_tasks = Path(lm_eval.tasks.__file__).parent
    text = text.replace("__DATA__", str(tiny_data)).replace("__LM_EVAL_TASKS__", str(harness_tasks))

    def included_doc_to_text() -> str:
        included = yaml.safe_load(text)["include"]
        return load_yaml(included, resolve_func=False)["doc_to_text"]

    return prompt_task_yaml(text, included_doc_to_text)


def resolve_tasks(suite: Suite, manager) -> list[str]:
    """The suite's task names, each checked against the installed harness (no data download)."""
    known = set(manager.all_tasks)
    missing = [task for task, _ in suite.tasks if task not in known]
    if missing:
        raise ValueError(f"suite {suite.name!r}: the installed lm-eval has no task {missing}")
    return [task for task, _ in suite.tasks]


def evaluate_checkpoint(
    model: str | Path,
    suite_name: str,
    limit: int | None = None,
    output_dir: str | Path | None = None,
    batch_size: int | str = 8,
    device: str | None = None,
    dtype: str = "auto",
    tiny_data: str | Path | None = None,
    allow_code_execution: bool = False,
) -> dict[str, Any]:
    """Score ``model`` (a local path or hub id) on a suite; write lm-eval's JSON and a markdown table.

    Returns ``{"suite", "model", "scores": {task: {metric: value}}, "score": mean of each task's
    first metric}``. Code suites run model-written code and need ``allow_code_execution``.
    """
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    suite = load_suite(suite_name)
    if suite.executes_code and not allow_code_execution:
        raise PermissionError(
            f"suite {suite.name!r} executes model-written code; pass --allow_code_execution (sets the harness's "
            "confirm_run_unsafe_code and HF_ALLOW_CODE_EVAL=1) on a machine where that is safe"
        )
    if suite.executes_code:
        os.environ["HF_ALLOW_CODE_EVAL"] = "1"
    manager = task_manager(Path(tiny_data) if tiny_data else None)
    resolve_tasks(suite, manager)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    lm = HFLM(pretrained=str(model), device=device, dtype=dtype, batch_size=batch_size)

    merged: dict[str, Any] = {"results": {}, "configs": {}, "versions": {}, "n-shot": {}}
    by_fewshot: dict[int, list[str]] = {}
    for task, shots in suite.tasks:
        by_fewshot.setdefault(shots, []).append(task)
    for shots, tasks in by_fewshot.items():
        output = simple_evaluate(
            model=lm,
            tasks=tasks,
            num_fewshot=shots,
            limit=limit,
            apply_chat_template=suite.apply_chat_template,
            fewshot_as_multiturn=suite.apply_chat_template and shots > 0,
            task_manager=manager,
            log_samples=False,
            confirm_run_unsafe_code=allow_code_execution,
            random_seed=0,
            numpy_random_seed=0,
            torch_random_seed=0,
            fewshot_random_seed=0,
        )
        for key in merged:
            merged[key].update(output.get(key, {}))

    scores = {task: _metrics(values) for task, values in merged["results"].items()}
    first = [next(iter(scores[task].values())) for task, _ in suite.tasks if scores.get(task)]
    summary = {
        "suite": suite.name,
        "model": str(model),
        "limit": limit,
        "scores": scores,
        "score": sum(first) / len(first) if first else None,
    }
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"lm_eval_{suite.name}.json").write_text(json.dumps({**merged, "gmt": summary}, indent=2, default=str))
        (out / f"eval_{suite.name}.md").write_text(markdown_table(summary))
    return summary


def _metrics(values: dict[str, Any]) -> dict[str, float]:
    # lm-eval keys look like "exact_match,answer" with "exact_match_stderr,answer" beside them.
    return {
        key: float(value)
        for key, value in values.items()
        if "," in key and "_stderr" not in key and isinstance(value, (int, float))
    }


def markdown_table(summary: dict[str, Any]) -> str:
    """A markdown table of every task's metrics."""
    lines = [
        f"Suite `{summary['suite']}` on `{summary['model']}`"
        + (f" (first {summary['limit']} examples per task)" if summary["limit"] else ""),
        "",
        "| task | metric | value |",
        "|---|---|---:|",
    ]
    for task, metrics in summary["scores"].items():
        for metric, value in metrics.items():
            lines.append(f"| {task} | {metric} | {value:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """The ``gmt-eval`` command (also ``python eval/run.py``): score a checkpoint with a suite.

        gmt-eval --suite tiny --model outputs/tiny/sft_gmt            # offline, CPU
        gmt-eval --suite math --model PATH --device cuda --dtype bfloat16 --batch_size auto
        HF_ALLOW_CODE_EVAL=1 gmt-eval --suite code --model PATH --allow_code_execution

    Writes lm-eval's JSON (``lm_eval_<suite>.json``) and a markdown table (``eval_<suite>.md``) to
    ``--output_dir`` (default: ``<model>/eval``). Suites are defined in ``eval/suites/*.yaml``.
    """
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", required=True, choices=SUITES)
    parser.add_argument("--model", required=True, help="checkpoint folder or hub id")
    parser.add_argument("--limit", type=int, default=None, help="first N examples of each task")
    parser.add_argument("--output_dir", default=None)
    parser.add_argument("--batch_size", default="8", help="an integer, or 'auto' on GPU")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--tiny_data", default=None, help="tiny suite: the held-out jsonl (default: the cache's)")
    parser.add_argument("--allow_code_execution", action="store_true", help="code suite: run model-written code")
    args = parser.parse_args(argv)
    batch_size = int(args.batch_size) if args.batch_size.isdigit() else args.batch_size
    output_dir = args.output_dir or str(Path(args.model) / "eval") if Path(args.model).exists() else args.output_dir
    summary = evaluate_checkpoint(
        args.model, args.suite, limit=args.limit, output_dir=output_dir, batch_size=batch_size, device=args.device,
        dtype=args.dtype, tiny_data=args.tiny_data, allow_code_execution=args.allow_code_execution,
    )  # fmt: skip
    print(f"{args.suite}: score {summary['score']}")
    for task, metrics in summary["scores"].items():
        print(f"  {task}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
