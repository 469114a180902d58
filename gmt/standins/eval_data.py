"""Local stand-ins for the hub data sets the eval suites read: a few rows per split in each hub
repository's layout (parquet per config and split, a dataset card whose ``configs`` name them), with
the real columns, types and nesting, for ``gmt-eval --data_dir``.

Which configs and splits to write comes from the suite's own task definitions
(``gmt.evaluation.tasks.hub_reads``), so a stand-in folder holds exactly what the real harness
tasks ask the hub repository for. The rows are simple and well-formed; their content is not the point.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from gmt.standins.layouts import NAMES, arithmetic_problem, write_parquet

TYDIQA_LANGUAGES = ["arabic", "bengali", "english", "finnish", "indonesian", "korean", "russian", "swahili", "telugu"]


def gsm8k_row(config: str, split: str, index: int, rng: random.Random) -> list[dict]:
    """openai/gsm8k: ``question``, ``answer`` (worked solution, then "#### N")."""
    question, solution, answer = arithmetic_problem(rng)
    return [{"question": question, "answer": f"{solution}\n#### {answer}"}]


def hendrycks_math_row(config: str, split: str, index: int, rng: random.Random) -> list[dict]:
    """EleutherAI/hendrycks_math: ``problem``, ``level``, ``type``, ``solution`` (answer in \\boxed{})."""
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    solution = f"${a} \\cdot {b} = \\boxed{{{a * b}}}$."
    return [{"problem": f"What is ${a} \\cdot {b}$?", "level": f"Level {rng.randint(1, 5)}",
             "type": config.replace("_", " ").title(), "solution": solution}]  # fmt: skip


def bbh_row(config: str, split: str, index: int, rng: random.Random) -> list[dict]:
    """SaylorTwift/bbh: ``input``, ``target``."""
    value = rng.choice([True, False])
    return [{"input": f"not ( {not value} ) and True is", "target": str(value)}]


def mmlu_row(config: str, split: str, index: int, rng: random.Random) -> list[dict]:
    """cais/mmlu: ``question``, ``subject``, ``choices`` (4 strings), ``answer`` (index of the right one)."""
    a, b = rng.randint(2, 20), rng.randint(2, 20)
    choices = [str(a + b + offset) for offset in (0, 1, 2, 3)]
    rng.shuffle(choices)
    return [{"question": f"What is {a} + {b}?", "subject": config, "choices": choices,
             "answer": choices.index(str(a + b))}]  # fmt: skip


def humanevalplus_row(config: str, split: str, index: int, rng: random.Random) -> list[dict]:
    """evalplus/humanevalplus: ``task_id``, ``prompt``, ``canonical_solution``, ``entry_point``, ``test``."""
    factor = rng.randint(2, 9)
    prompt = f'def scale_{index}(x: int) -> int:\n    """Return x times {factor}."""\n'
    test = f"def check(candidate):\n    assert candidate(3) == {3 * factor}\n    assert candidate(0) == 0\n"
    return [{"task_id": f"HumanEval/{index}", "prompt": prompt, "canonical_solution": f"    return x * {factor}\n",
             "entry_point": f"scale_{index}", "test": test}]  # fmt: skip


def mbpp_row(config: str, split: str, index: int, rng: random.Random) -> list[dict]:
    """google-research-datasets/mbpp (full): ``task_id``, ``text``, ``code``, ``test_list`` (3 asserts),
    ``test_setup_code``, ``challenge_test_list``."""
    factor = rng.randint(2, 9)
    name = f"scale_{index}"
    return [{"task_id": 11 + index, "text": f"Write a function to multiply a number by {factor}.",
             "code": f"def {name}(x):\n  return x * {factor}",
             "test_list": [f"assert {name}({n}) == {n * factor}" for n in (1, 2, 3)], "test_setup_code": "",
             "challenge_test_list": [f"assert {name}(10) == {10 * factor}"]}]  # fmt: skip


def mbppplus_row(config: str, split: str, index: int, rng: random.Random) -> list[dict]:
    """evalplus/mbppplus: ``task_id``, ``code``, ``prompt``, ``source_file``, ``test_imports``,
    ``test_list``, ``test`` (the plus tests as one program)."""
    factor = rng.randint(2, 9)
    name = f"scale_{index}"
    return [{"task_id": 11 + index, "code": f"def {name}(x):\n  return x * {factor}",
             "prompt": f"Write a function to multiply a number by {factor}.", "source_file": "Benchmark Questions",
             "test_imports": [], "test_list": [f"assert {name}({n}) == {n * factor}" for n in (1, 2, 3)],
             "test": f"for n in range(5):\n    assert {name}(n) == n * {factor}\n"}]  # fmt: skip


def tydiqa_row(config: str, split: str, index: int, rng: random.Random) -> list[dict]:
    """google-research-datasets/tydiqa (secondary_task, gold passage): ``id`` ("<language>-..."),
    ``title``, ``context``, ``question``, ``answers`` {``text``, ``answer_start``}; one row per language."""
    rows = []
    for language in TYDIQA_LANGUAGES:
        name = rng.choice(NAMES)
        context = f"{name} was born in the year {1900 + rng.randint(0, 99)}."
        answer = context.split("year ")[1].rstrip(".")
        rows.append({"id": f"{language}-{rng.randint(10**8, 10**9)}-{index}", "title": name, "context": context,
                     "question": f"When was {name} born?",
                     "answers": {"text": [answer], "answer_start": [context.index(answer)]}})  # fmt: skip
    return rows


def truthfulqa_row(config: str, split: str, index: int, rng: random.Random) -> list[dict]:
    """truthfulqa/truthful_qa (multiple_choice): ``question``, ``mc1_targets`` and ``mc2_targets``
    ({``choices``, ``labels``}, the true answers first)."""
    a = rng.randint(2, 20)
    choices = [f"It is {a}.", f"It is {a + 1}.", f"It is {a + 2}."]
    return [{"question": f"What is {a} plus zero?", "mc1_targets": {"choices": choices, "labels": [1, 0, 0]},
             "mc2_targets": {"choices": choices, "labels": [1, 0, 0]}}]  # fmt: skip


# hub id -> rows of one (config, split, index); every hub data set an eval suite reads
ROWS: dict[str, Callable[[str, str, int, random.Random], list[dict]]] = {
    "openai/gsm8k": gsm8k_row,
    "EleutherAI/hendrycks_math": hendrycks_math_row,
    "SaylorTwift/bbh": bbh_row,
    "cais/mmlu": mmlu_row,
    "evalplus/humanevalplus": humanevalplus_row,
    "google-research-datasets/mbpp": mbpp_row,
    "evalplus/mbppplus": mbppplus_row,
    "google-research-datasets/tydiqa": tydiqa_row,
    "truthfulqa/truthful_qa": truthfulqa_row,
}


def build_eval_data(reads: dict[str, dict[str | None, set[str]]], out_dir: Path, rows: int = 3, seed: int = 0) -> Path:
    """Write, under ``out_dir/<hub id>``, the stand-in of each hub data set in ``reads``
    ({hub id: {config (None: the default one): splits}}): ``rows`` rows (per language for TyDiQA)
    per config and split, ``<config or data>/<split>-00000-of-00001.parquet``, and a card naming them."""
    rng = random.Random(seed)
    for hub_id, configs in sorted(reads.items()):
        if hub_id not in ROWS:
            raise ValueError(f"no eval stand-in for the hub data set {hub_id!r}; known: {sorted(ROWS)}")
        repo = out_dir / hub_id
        card = ["---", "configs:"]
        for config in sorted(configs, key=lambda name: name or ""):
            folder = config or "data"
            card += [f"- config_name: {config or 'default'}", "  data_files:"]
            for split in sorted(configs[config]):
                records = [row for index in range(rows) for row in ROWS[hub_id](config or "", split, index, rng)]
                write_parquet(records, repo / folder / f"{split}-00000-of-00001.parquet")
                card += [f"  - split: {split}", f"    path: {folder}/{split}-*"]
        (repo / "README.md").write_text("\n".join(card + ["---", "", "Stand-in rows (gmt.standins.eval_data).", ""]))
    return out_dir


def suite_reads(*suite_names: str) -> dict[str, dict[str | None, set[str]]]:
    """{hub id: {config: splits}} that the suites' tasks read, from the harness's task definitions."""
    from gmt.evaluation import leaf_tasks, load_suite, task_manager
    from gmt.evaluation.tasks import hub_reads

    manager = task_manager()
    leaves = [
        leaf for name in suite_names for task in load_suite(name).tasks for leaf in leaf_tasks(manager, task.name)
    ]
    return hub_reads(leaves)
