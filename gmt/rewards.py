"""GRPO reward functions by name (``reward_funcs`` in a recipe), as ``trl grpo`` takes them.

A name is one of:

- a gmt-eval task (``eval/tasks/<name>.yaml``) that scores one generated answer against its row:
  the reward is the task's own score of the completion, so training optimises what the suite
  reports. ``gmt_reasoning_gym`` gives the reasoning-gym task's ``score_answer`` of the final-answer
  line (partial credit included; the rows need ``task`` and ``entry``, as ``python -m gmt.smollm2``
  writes them); a task scored by a regex filter and ``exact_match`` (``gmt_tiny_arith``,
  ``gmt_tiny_equations``) gives 1 where the filtered answer equals the row's target column, else 0;
- one of TRL's own (``trl.rewards``: accuracy_reward, reasoning_accuracy_reward, think_format_reward);
- a dotted import path (``my_lib.rewards.custom_reward``), as in ``trl grpo``.

TRL passes every data column but ``prompt`` to each reward function as a list per batch; the
columns a gmt-eval reward reads are checked before the model loads (``reward_columns``).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gmt.prompts import task_yaml_spec
from gmt.resources import EVAL_DIR

RewardFunction = Callable[..., list[float]]
TRL_REWARDS = ("accuracy_reward", "reasoning_accuracy_reward", "think_format_reward")
VERIFIER_SCORING = "gmt.evaluation.verifiers.process_results"


def completion_text(completion: Any) -> str:
    """The generated text of one completion: a string, or a conversational list of messages."""
    if isinstance(completion, str):
        return completion
    return "".join(message.get("content") or "" for message in completion)


class TaskReward:
    """The score gmt-eval's task ``name`` gives one completion, as a GRPO reward function."""

    def __init__(self, name: str, spec: dict[str, Any]) -> None:
        self.__name__ = name  # TRL logs each reward under its function's name
        self.name = name
        self.verifier = spec.get("process_results") == VERIFIER_SCORING
        if self.verifier:
            from gmt.evaluation.verifiers import process_results

            self.columns: tuple[str, ...] = ("task", "entry")
            self.pattern, self.process_results = None, process_results
            return
        target = re.fullmatch(r"\{\{\s*(\w+)\s*\}\}", str(spec.get("doc_to_target", "")))
        patterns = [step["regex_pattern"] for group in spec.get("filter_list") or []
                    for step in group.get("filter") or [] if step.get("function") == "regex"]  # fmt: skip
        metrics = [metric.get("metric") for metric in spec.get("metric_list") or []]
        if target is None or len(patterns) != 1 or metrics[:1] != ["exact_match"]:
            raise ValueError(f"reward_funcs {name!r}: this gmt-eval task is not scored by one answer against its row")
        self.columns = (target.group(1),)
        self.pattern = re.compile(patterns[0])

    def __call__(self, completions: Sequence[Any], **columns: list[Any]) -> list[float]:
        rewards = []
        for index, completion in enumerate(completions):
            text = completion_text(completion)
            row = {column: columns[column][index] for column in self.columns}
            if self.verifier:
                rewards.append(self.process_results(row, [text])["reward"])
                continue
            found = self.pattern.search(text)
            answer = found.group(1) if found and found.groups() else found.group(0) if found else None
            rewards.append(float(answer is not None and answer.strip() == str(row[self.columns[0]]).strip()))
        return rewards


def _task_spec(path: Path) -> dict[str, Any]:
    return task_yaml_spec(path.read_text()) or {}


def task_rewards() -> dict[str, Path]:
    """The gmt-eval tasks that can serve as rewards, by name, and their files."""
    found = {}
    for path in sorted((EVAL_DIR / "tasks").glob("*.yaml")):
        try:
            TaskReward(path.stem, _task_spec(path))
        except ValueError:
            continue
        found[path.stem] = path
    return found


def reward_function(name: str) -> RewardFunction:
    """The reward function ``name`` names (module docstring); ``ValueError`` naming ``reward_funcs``
    and the choices for an unknown one."""
    task_file = EVAL_DIR / "tasks" / f"{name}.yaml"
    if task_file.is_file():
        try:
            return TaskReward(name, _task_spec(task_file))
        except ValueError as error:
            raise ValueError(f"{error}; the tasks that are: {', '.join(sorted(task_rewards()))}") from None
    if name in TRL_REWARDS:
        return getattr(importlib.import_module("trl.rewards"), name)
    if "." in name:
        module, _, attribute = name.rpartition(".")
        if os.getcwd() not in sys.path:  # as trl grpo: a module of the folder the run starts in
            sys.path.insert(0, os.getcwd())
        try:
            return getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"reward_funcs {name!r}: cannot import it ({error})") from None
    raise ValueError(f"reward_funcs {name!r} is not a reward gmt knows: use a gmt-eval task "
                     f"({', '.join(sorted(task_rewards()))}), one of TRL's ({', '.join(TRL_REWARDS)}) or a dotted "
                     "import path")  # fmt: skip


def reward_columns(rewards: Sequence[RewardFunction | str]) -> tuple[str, ...]:
    """The data columns the gmt-eval rewards among ``rewards`` read (TRL passes each row's columns to
    them); other reward functions and reward models declare none."""
    columns: list[str] = []
    for reward in rewards:
        for column in getattr(reward, "columns", ()):
            if column not in columns:
                columns.append(column)
    return tuple(columns)
