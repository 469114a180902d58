"""The suite files of ``eval/suites``: which harness tasks a suite runs and how to prompt them."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import yaml

EVAL_DIR = Path(__file__).resolve().parents[2] / "eval"
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
    default_data: str | None = None  # gmt's local tiny tasks: the file they read unless tiny_data says


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
    )


def check_requirements(suite: Suite) -> None:
    """Refuse a suite whose Python dependencies are not installed, naming the extra that has them."""
    missing = [module for module in ("lm_eval", *suite.requires) if importlib.util.find_spec(module) is None]
    if missing:
        raise ModuleNotFoundError(f"suite {suite.name!r} needs {', '.join(missing)}, not installed here: {EVAL_EXTRA}")
