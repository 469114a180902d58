"""The comparison's report over several tasks: ``docs/compare/report.md`` and README's summary.

    gmt compare ... --out docs/compare && gmt compare ... --out docs/compare/twostep   # each task's runs
    python -m gmt.compare.report                        # docs/compare/report.md (the tiny toy's)
    python -m gmt.compare.report --tasks 'word_sequence_reversal=docs/compare/smollm2' \
        --title 'SmolLM2-135M-Instruct (dequantized 4-bit) on reasoning-gym' \
        --out docs/compare/smollm2/report.md --readme README.md   # and README's summary (the real model's)

Reads each task's ``compare.json`` and ``sweep.json`` (written by ``gmt compare``) and writes the
report: which method to start from for a memory budget; every claim of the papers with the measured
numbers and the verdict of the rules in ``gmt/compare/claims.py``; the learning rate that won each
method's sweep as a multiple of full fine-tuning's; and each task's final table, sweep table,
learning curves and plots. The README (``--readme``) gets the summary (the recommendation and the
claims, between the ``compare:start`` / ``compare:end`` markers), with a link to the report.
Paths are relative to the folder it runs in (a clone's root for this repository's docs).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from gmt.compare.claims import NEAR_FULL, claims, lr_scale_table, recommendations
from gmt.sections import replace_section

# this repository's tiny comparison, from a clone's root
TASKS = {"word problems": Path("docs/compare"), "two-step problems": Path("docs/compare/twostep")}


def load(task_dir: Path) -> tuple[dict, dict]:
    """A task's final comparison (``compare.json``) and its sweep (``sweep.json``)."""
    return json.loads((task_dir / "compare.json").read_text()), json.loads((task_dir / "sweep.json").read_text())


def task_section(name: str, task_dir: Path, document: Path) -> str:
    """One task's tables (final, sweep, and the learning curves or GRPO's reward curves where the
    comparison made them) and plots, as compare.py wrote them; the plots linked relative to
    ``document``'s folder."""
    relative = Path(os.path.relpath(task_dir, document.resolve().parent)).as_posix()
    parts = [f"#### {name}", "", (task_dir / "compare.md").read_text(),
             f"![score against optimizer state, entries changed and pretraining kept]({relative}/compare.png)", "",
             "Learning-rate sweep:", "", (task_dir / "sweep.md").read_text(),
             f"![validation score against the learning rate]({relative}/sweep.png)", ""]  # fmt: skip
    if (task_dir / "curve.md").is_file():  # --curve
        parts += ["Learning curves:", "", (task_dir / "curve.md").read_text(),
                  f"![test score against the step]({relative}/curve.png)", ""]  # fmt: skip
    if (task_dir / "rewards.png").is_file():  # a GRPO recipe
        parts += ["Rewards while training:", "", f"![GRPO's mean reward at each step]({relative}/rewards.png)", ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    """Write the report (and README's summary) from the tasks' finished comparisons."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=[f"{name}={path}" for name, path in TASKS.items()],
                        help="NAME=DIR for each task's comparison (compare.py's --out)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("docs/compare/report.md"))
    parser.add_argument("--readme", default="none",
                        help="the file whose compare:start/end section gets the summary, e.g. README.md "
                             "(default 'none': no file)")  # fmt: skip
    parser.add_argument("--title", default="the tiny recipe (a 0.86M-parameter toy)",
                        help="what the tasks were run on, for the report's heading and the summary")
    args = parser.parse_args(argv)
    task_dirs = {name: Path(path).resolve() for name, path in (task.split("=", 1) for task in args.tasks)}
    loaded = {name: load(path) for name, path in task_dirs.items()}
    rows = {name: {row["method"]: row for row in compare["rows"]} for name, (compare, _) in loaded.items()}
    sweeps = {name: sweep for name, (_, sweep) in loaded.items()}
    scale = lr_scale_table(sweeps)

    def summary() -> str:
        return "\n".join([
            "### What we recommend",
            "",
            "For a memory budget, start from the last row whose optimizer state fits it (each row is the "
            "method that outscores every method with less state; state measured from each run's saved "
            "optimizer state, scores averaged over the tasks that ran every method):",
            "",
            recommendations(rows),
            "### The papers' claims, measured",
            "",
            "Rules: A ≥ B holds when its mean is at least B's; a gap below the larger seed std is *within "
            "noise* either way; a scope replaces the default only by beating global beyond that noise; "
            "*insensitive* when gmt's spread over the ratios is within its largest seed std; "
            f"*near full* is ≥ {100 * NEAR_FULL:.0f}% of full fine-tuning's score while training ≤ 10% of the "
            "entries.",
            "",
            claims(rows),
        ])  # fmt: skip

    def report(document: Path) -> str:
        return "\n".join([
            summary(),
            "### Learning rate that won each sweep",
            "",
            scale,
            *(task_section(name, task_dirs[name], document) for name in loaded),
        ])  # fmt: skip

    args.out.parent.mkdir(parents=True, exist_ok=True)
    how = Path("docs/comparison.md")  # this repository's account of how they were run, where it is at hand
    how_line = f"How they were run: [comparison.md]({os.path.relpath(how.resolve(), args.out.resolve().parent)}).\n\n"
    args.out.write_text(f"# The methods compared on {args.title}\n\n" + (how_line if how.is_file() else "")
                        + report(args.out))  # fmt: skip
    if args.readme != "none":
        readme = Path(args.readme)
        link = Path(os.path.relpath(args.out.resolve(), readme.resolve().parent)).as_posix()
        replace_section("<!-- compare:start -->", "<!-- compare:end -->",
                               f"Measured on {args.title}, tasks: {', '.join(loaded)}.\n\n" + summary()
                               + f"\nEach task's tables, sweeps, learning curves and plots: [{link}]({link}).\n",
                               readme)  # fmt: skip
    print(report(args.out))


if __name__ == "__main__":
    main()
