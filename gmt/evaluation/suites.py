"""The suite files of ``eval/suites``: which harness tasks a suite runs and how to prompt them."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import yaml

from gmt.resources import EVAL_DIR

# One suite per file; the names are the files', so adding a suite is adding a file.
SUITES: tuple[str, ...] = tuple(sorted(path.stem for path in (EVAL_DIR / "suites").glob("*.yaml")))
# What every suite needs from the `eval` extra, beside what a suite file lists under `requires`.
EVAL_EXTRA = "pip install 'gmt[eval]'"


class SuiteTask(NamedTuple):
    """A task of a suite: the harness's name, its few-shot count, and how many of its examples the
    suite's protocol scores (None: all; the harness takes the first ``limit``)."""

    name: str
    num_fewshot: int
    limit: int | None = None


@dataclass(frozen=True)
class Suite:
    """A suite file: the harness tasks (name, few-shot count), how to prompt them, and what they need.

    ``protocol`` says whose evaluation the suite follows (shown in the results table);
    ``requires`` names the Python modules its tasks import (all in the ``eval`` extra)."""

    name: str
    tasks: tuple[SuiteTask, ...]
    apply_chat_template: bool
    executes_code: bool
    protocol: str
    requires: tuple[str, ...] = ()
    default_data: str | None = None  # gmt's local-file tasks: the file they read unless task_data says
    # the suite scores the test.jsonl beside a recipe's training data (after training, unless task_data says)
    scores_training_test_split: bool = False
    columns: tuple[str, ...] = ()  # what every row of default_data / task_data must hold


def load_suite(name: str) -> Suite:
    """Read ``eval/suites/<name>.yaml``."""
    if name not in SUITES:
        raise ValueError(f"suite must be one of {SUITES}, got {name!r}")
    spec = yaml.safe_load((EVAL_DIR / "suites" / f"{name}.yaml").read_text())
    return Suite(
        name=spec["name"],
        tasks=tuple(SuiteTask(entry["task"], int(entry["num_fewshot"]), entry.get("limit")) for entry in spec["tasks"]),
        apply_chat_template=bool(spec.get("apply_chat_template", False)),
        executes_code=bool(spec.get("executes_code", False)),
        protocol=str(spec["protocol"]).strip(),
        requires=tuple(spec.get("requires", ())),
        default_data=spec.get("default_data"),
        scores_training_test_split=bool(spec.get("scores_training_test_split", False)),
        columns=tuple(spec.get("columns", ())),
    )


def check_requirements(suite: Suite) -> None:
    """Refuse a suite whose Python dependencies are not installed, naming the extra that has them."""
    missing = [module for module in ("lm_eval", *suite.requires) if importlib.util.find_spec(module) is None]
    if missing:
        raise ModuleNotFoundError(f"suite {suite.name!r} needs {', '.join(missing)}, not installed here: {EVAL_EXTRA}")


def check_columns(suite: Suite, data: Path) -> None:
    """Refuse local rows that lack a column the suite's tasks read (``columns`` in its file), naming
    the suite, the file and the columns, before any model loads (the harness would fail mid-scoring)."""
    if not suite.columns or not data.is_file() or data.suffix not in (".jsonl", ".json"):
        return
    import json

    with data.open() as rows:
        first = rows.readline()
    try:
        row = json.loads(first) if first.strip() else {}
    except json.JSONDecodeError:
        return  # not JSON lines: the harness's own loader says what is wrong with it
    missing = [column for column in suite.columns if column not in row]
    if missing:
        raise ValueError(f"suite {suite.name!r} scores rows with the columns {list(suite.columns)}; {data} has "
                         f"{sorted(row)}, without {missing}")
