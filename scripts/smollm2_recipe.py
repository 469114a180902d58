"""The real model's main job, timed from nothing, and the base model on reasoning-gym tasks.

    python scripts/smollm2_recipe.py              # docs/smollm2/recipe.{json,md}, README's main-job lines
    python scripts/smollm2_recipe.py --survey     # docs/smollm2/survey.{json,md}: the base on candidate tasks

The recipe run converts the model and writes the data into a fresh folder (nothing cached), then
runs README's command 1 (gmt-sft on recipes/smollm2-135m/sft_gmt.yaml, which scores the result
with the task's verifier) and scores the base on the same rows. The survey scores the base on 24
held-out rows of each candidate task with the reasoning_gym suite: it chose the recipes' task (one
where the base is weak: docs/smollm2.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe_machine
from readme_section import replace_readme_section

from gmt.smollm2.build import DEFAULT_TASKS
from gmt.smollm2.tasks import majority_baseline

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "smollm2"
SURVEY_TASKS = ("letter_counting", "spell_backward", "word_sorting", "number_sorting", "basic_arithmetic",
                "leg_counting", "gsm_symbolic", "count_bits", "word_sequence_reversal", "gcd", "base_conversion",
                "caesar_cipher", "simple_equations", "number_filtering", "calendar_arithmetic",
                "sentence_reordering", "syllogism", "family_relationships")  # fmt: skip
SURVEY_ROWS = 24


def run(command: list[str]) -> tuple[float, str]:
    """Run ``command`` from the repository root; its seconds and its stdout (its error ends the script)."""
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{result.stderr[-3000:]}")
    return time.perf_counter() - started, result.stdout


def by_metric(task_scores: dict[str, float]) -> dict[str, float]:
    """A task's scores by metric name (the harness's keys are ``metric,filter``)."""
    return {key.split(",")[0]: value for key, value in task_scores.items()}


def score(model: Path, data: Path, suite: str = "reasoning_gym") -> dict[str, float]:
    """gmt-eval's metrics of ``suite`` on ``data`` for ``model``."""
    from gmt.evaluation import evaluate_checkpoint

    summary = evaluate_checkpoint(model, suite, task_data=str(data), batch_size="16", device="cpu")
    return by_metric(next(iter(summary["scores"].values())))


def recipe(args) -> None:
    with tempfile.TemporaryDirectory() as work:
        model_dir, data_dir = Path(work) / "model", Path(work) / "data"
        build = [sys.executable, "-c", "from gmt.smollm2 import ensure_smollm2_assets; "
                 f"ensure_smollm2_assets({str(model_dir)!r}, {str(data_dir)!r})"]  # fmt: skip
        build_seconds, _ = run(build)
        out = Path(work) / "sft"
        train_seconds, stdout = run([sys.executable, "gmt/sft.py", "--config", args.recipe, "--model_name_or_path",
                                     str(model_dir), "--dataset_name", str(data_dir / args.task),
                                     "--output_dir", str(out)])  # fmt: skip
        scores = json.loads((out / "eval" / "lm_eval_reasoning_gym.json").read_text())["gmt"]["scores"]
        tuned = by_metric(scores["gmt_reasoning_gym"])
        base = score(model_dir, data_dir / args.task / "test.jsonl")
        majority = majority_baseline(data_dir / args.task)
        forgetting = {"base": score(model_dir, data_dir / "next_word" / "test.jsonl", "next_word"),
                      "tuned": score(out, data_dir / "next_word" / "test.jsonl", "next_word")}  # fmt: skip
    result = {"recipe": args.recipe, "machine": describe_machine("cpu"), "build_seconds": build_seconds,
              "train_and_score_seconds": train_seconds, "task": args.task, "base": base, "tuned": tuned,
              "majority_answer": majority,
              "next_word": forgetting, "stdout_tail": stdout[-2000:]}  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "recipe.json").write_text(json.dumps(result, indent=2) + "\n")
    render(result)


def render(result: dict) -> None:
    """recipe.md, and the lines of README.md and docs/smollm2.md, from a recipe run's record."""
    base, tuned, forgetting = result["base"], result["tuned"], result["next_word"]
    minutes = (result["build_seconds"] + result["train_and_score_seconds"]) / 60
    line = (f"On {result['machine']}, the whole command took {minutes:.1f} min ({result['build_seconds']:.0f} s "
            "to convert the model and write the data, the rest to train and score): the task's verifier "
            f"gave full marks on {100 * tuned['solved']:.1f}% of the 200 held-out rows, against "
            f"{100 * base['solved']:.1f}% for the base (which gave the final-answer line on "
            f"{100 * base['answered']:.0f}% of them) and {100 * result['majority_answer']:.1f}% for always giving the "
            "training rows' most common answer; the next-word probe of its English went from "
            f"{100 * forgetting['base']['acc']:.1f}% to {100 * forgetting['tuned']['acc']:.1f}% "
            "(`python scripts/smollm2_recipe.py`")  # fmt: skip
    (OUT / "recipe.md").write_text(line + ").\n")
    replace_readme_section("<!-- smollm2-job:start -->", "<!-- smollm2-job:end -->",
                           line + "; [docs/smollm2.md](docs/smollm2.md)).\n")  # fmt: skip
    replace_readme_section("<!-- smollm2-recipe:start -->", "<!-- smollm2-recipe:end -->", line + ").\n",
                           REPO / "docs" / "smollm2.md")  # fmt: skip
    print(line + ").")


def survey() -> None:
    from gmt.smollm2.tasks import write_task

    rows = []
    with tempfile.TemporaryDirectory() as work:
        model_dir = REPO / ".cache/smollm2/SmolLM2-135M-Instruct"
        from gmt.smollm2.convert import convert

        convert(model_dir)
        for task in SURVEY_TASKS:
            folder = write_task(task, Path(work) / task, {"train": 640, "validation": 1, "test": SURVEY_ROWS})
            metrics = score(model_dir, folder / "test.jsonl")
            rows.append({"task": task, **metrics, "majority_answer": majority_baseline(folder)})
            print(rows[-1], flush=True)
    lines = [f"SmolLM2-135M-Instruct (dequantized Q4_1) on {SURVEY_ROWS} rows of each task, greedy, chat "
             "format, scored by the task's verifier on the final-answer line (`python scripts/smollm2_recipe.py "
             f"--survey`, {describe_machine('cpu')})", "",
             "| task | solved | verifier's mean reward | gave the final-answer line "
             "| always the most common training answer: solved |", "|---|---:|---:|---:|---:|"]  # fmt: skip
    lines += [f"| {r['task']} | {100 * r['solved']:.1f}% | {r['reward']:.3f} | {100 * r['answered']:.0f}% "
              f"| {100 * r['majority_answer']:.1f}% |" for r in rows]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "survey.json").write_text(json.dumps(rows, indent=2) + "\n")
    (OUT / "survey.md").write_text("\n".join(lines) + "\n")
    replace_readme_section("<!-- smollm2-survey:start -->", "<!-- smollm2-survey:end -->", "\n".join(lines) + "\n",
                           REPO / "docs" / "smollm2.md")  # fmt: skip
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/smollm2-135m/sft_gmt.yaml")
    parser.add_argument("--task", default=DEFAULT_TASKS[0], help="the recipe's reasoning-gym task")
    parser.add_argument("--survey", action="store_true", help="score the base on the candidate tasks instead")
    parser.add_argument("--render", action="store_true", help="rewrite the docs' lines from recipe.json, no run")
    args = parser.parse_args()
    if args.render:
        render(json.loads((OUT / "recipe.json").read_text()))
    else:
        survey() if args.survey else recipe(args)


if __name__ == "__main__":
    main()
