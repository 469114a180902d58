"""Every method at its own best learning rate, on a recipe: sweep on held-out rows, then seeds.

    python -m gmt.tiny && gmt compare                    # the tiny comparison (docs/comparison.md)
    gmt compare --phase sweep --methods gps lora         # only the sweep, for a subset
    gmt compare --smoke --model M --data D --out O       # 3 methods, 2 rates, a few steps
    gmt compare --config recipes/llama3-8b/sft_math_gmt.yaml --out outputs/compare/math \\
        --launcher 'accelerate launch --config_file recipes/accelerate/zero3.yaml' --methods full gmt-grad-0.2 gps lora
    gmt compare --config RECIPE --out O --submit slurm --slurm_args '--nodes 1 --gpus-per-node 8'

Each run is the recipe's training script (``gmt/sft.py``, or ``gmt/dpo.py`` for a DPO recipe) on
``<out>/recipe.yaml`` (the recipe, training on its data minus the held-out validation rows) with the
method's overrides, a learning rate and ``--seed``.

1. Validation: ``--validation_rows`` rows of the recipe's training split (a fixed random choice)
   are held out into ``<out>/data/validation.jsonl`` (or ``--validation_data`` names a data set of
   its own); every run trains on the rest.
2. Sweep: every method at a grid of rates, seed 0, ``--sweep_steps`` steps (default: a third of
   the recipe's length), scored on the validation rows: by the eval suite where it reads them (the
   tiny suite, or ``--validation_eval_args``), else by the loss on them (``--select_by``). The grid
   is the recipe's rate (or ``--base_learning_rate``) times the method's usual multiple (what won
   its sweep on the tiny task) and one half-decade either side, or ``--lr_factors`` times that
   rate; where the best rate is at an edge the grid grows by a factor of 3 that way (at most
   ``--max_extensions`` times), so a method stops once its rate is bracketed. ``--sweep_around
   OTHER/sweep.json`` starts each grid at the method's winning rate on another task instead.
   ``<out>/sweep.{json,md,png}``.
3. Final: every method at its best validation rate (ties: the lower rate), ``--seeds``, the
   recipe's full length, scored with the eval suite on its test data, which no choice ever saw.
   ``<out>/compare.{json,md,png}``, and ``<out>/recommendation.md``: the method and rate to start from for
   each memory budget, the papers' claims on this task, and the command that trains the winner.

Without ``--config`` this is the tiny comparison, as committed in docs/compare: the tiny recipe, its
wide grid, 300-step sweeps, a learning curve and a forgetting score (the base's pretraining
equations) for every final run. ``python -m gmt.compare.report`` writes the README's summary.

A run writes ``<out>/runs/<phase>/<method>/<lr or seed>/run.json`` (how it is made) and, once
finished, ``result.json``; a finished run is never rerun, and one made with other settings is
refused, so an interrupted comparison resumes where it stopped. ``--submit slurm`` writes the runs
still to do as a SLURM job array (one run per array task, ``--task RUN_DIR``) instead of running
them; run the same command again once the array has finished, until it prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gmt.compare.methods import (
    DENSE_PHASE_AT_FULLS_RATE,
    METHODS,
    RL_METHODS,
    default_methods,
    gspf_warmup,
    method_table,
)
from gmt.compare.plots import plot, plot_curves, plot_rewards, plot_sweep
from gmt.compare.rates import best_rate, failed, normal_rate, sweep_grid, sweep_steps_for, usual_multiples
from gmt.compare.recipe import TINY_RECIPE, comparison_recipe, hold_out, read_recipe
from gmt.compare.runs import Run, cached, execute, score_checkpoints, score_jobs, training_command
from gmt.compare.slurm import write_array
from gmt.compare.tables import aggregate, curve_markdown, forgetting_name, markdown, sweep_markdown

SMOKE_METHODS = ("full", "gmt-grad-0.5", "lora")

# the methods that train one fixed subset (gspf: after its warm-up)
TINY = {  # the tiny comparison's settings (no --config), as committed in docs/compare
    "data": ".cache/gmt-tiny/data/sft", "out": "docs/compare", "eval_suite": "tiny",
    "lr_factors": [0.3, 1, 3, 10, 30], "sweep_steps": 300, "curve": True, "forgetting_suite": "tiny_equations",
}  # fmt: skip

SMOKE_LR_FACTORS = [1, 3]


class Pending(Exception):
    """Runs that have not finished (``--submit slurm`` / ``--collect``)."""

    def __init__(self, runs: list[Run]) -> None:
        super().__init__(f"{len(runs)} runs to go")
        self.runs = runs


class Runner:
    """Gets the records of a round of runs: runs the missing ones here (``jobs`` side by side), or,
    with ``submit``, raises ``Pending`` with them so that they go to the cluster."""

    def __init__(self, jobs: int, submit: bool) -> None:
        self.jobs, self.submit = jobs, submit
        self.threads = max(1, (os.cpu_count() or 1) // jobs)

    def records(self, runs: list[Run], progress=None) -> list[dict]:
        missing = [run for run in runs if not (Path(run.run_dir) / "result.json").is_file()]
        if self.submit and missing:
            raise Pending(missing)

        def one(run: Run) -> dict:
            record = cached(run, self.threads)
            record["learning_rate"] = normal_rate(record["learning_rate"])
            if progress is not None:
                progress.set_postfix_str(f"{run.method} lr {run.learning_rate:g}")
                progress.update()
            return record

        with ThreadPoolExecutor(self.jobs) as pool:  # the runs are subprocesses
            return list(pool.map(one, runs))


def sweep_all(methods: list[str], grids: dict[str, list[float]], plan: Plan, runner: Runner,
              progress) -> dict[str, list[dict]]:  # fmt: skip
    """Every method at every rate of its grid, a round at a time; a method's grid grows by 3× at an
    edge that wins (at most ``max_extensions`` times) until its best rate is bracketed. A method
    whose dense phase takes full's best rate joins once full's sweep has ended."""
    rates = {method: list(grids[method]) for method in methods}
    records: dict[str, dict[float, dict]] = {method: {} for method in methods}
    extensions = dict.fromkeys(methods, 0)
    finished: set[str] = set()
    while len(finished) < len(methods):
        ready = [m for m in methods if m not in finished
                 and (m not in DENSE_PHASE_AT_FULLS_RATE or "full" in finished or "full" not in methods)]  # fmt: skip
        runs = [plan.run("sweep", m, 0, rate, records) for m in ready for rate in rates[m] if rate not in records[m]]
        for run, record in zip(runs, runner.records(runs, progress)):
            records[run.method][run.learning_rate] = record
        for method in ready:
            best = best_rate(list(records[method].values()))
            if best is None:  # every rate failed: reported in the sweep table, left out of the final phase
                finished.add(method)
                continue
            best = normal_rate(best)
            edge = best in (min(rates[method]), max(rates[method]))
            if not edge or extensions[method] == plan.args.max_extensions:
                finished.add(method)
                continue
            rates[method].append(normal_rate(best * 3 if best == max(rates[method]) else best / 3))
            extensions[method] += 1
            progress.total += 1
    return {method: [records[method][rate] for rate in sorted(records[method])] for method in methods}


class Plan:
    """How each run of this comparison is made (``run``), from the settings of the command line."""

    def __init__(self, args, recipe_file: Path, script: str, methods: dict[str, tuple[str, ...]]) -> None:
        self.args, self.recipe_file, self.script, self.methods = args, recipe_file, script, methods

    def run(self, phase: str, method: str, seed: int, rate: float, sweeps: dict) -> Run:
        """The run of ``method`` at ``rate`` and ``seed`` in ``phase`` (``sweeps``: the sweep records so far)."""
        args = self.args
        run_dir = args.out / "runs" / phase / method / (f"lr{rate:g}" if phase == "sweep" else f"seed{seed}")
        steps = args.sweep_steps if phase == "sweep" else args.max_steps
        # A run folder is the comparison's own: a run cut short is run again from its start, over what it left.
        arguments = ["--output_dir", str(run_dir), "--overwrite_output_dir", "true", "--seed", str(seed),
                     "--learning_rate", str(rate), "--report_to", "none",
                     *gspf_warmup(self.methods[method], steps)]  # fmt: skip
        validation = phase == "sweep"
        scored_on = "validation.jsonl" if validation else "test"
        suite = args.eval_suite
        if validation and args.select_by == "eval_loss":
            suite = None
            arguments += ["--eval_suite", "none", "--eval_strategy", "steps", "--eval_steps", str(steps),
                          "--dataset_test_split", "validation"]  # fmt: skip
        else:
            extra = args.validation_eval_args if validation else args.test_eval_args
            arguments += ["--eval_suite", suite, "--eval_args", " ".join(filter(None, [args.eval_args, extra]))]
            if args.eval_limit:
                arguments += ["--eval_limit", str(args.eval_limit)]
            if not validation and args.test_eval_args:
                scored_on = Path(shlex.split(args.test_eval_args)[-1]).name
        if steps:
            arguments += ["--max_steps", str(steps), "--logging_steps", str(max(1, min(10, steps // 5)))]
        curve = phase == "final" and args.curve and seed == 0
        # a run that ends is rerun from its start if it is cut short: only a learning curve needs checkpoints
        arguments += ["--save_strategy", "steps", "--save_steps", "0.25"] if curve else ["--save_strategy", "no"]
        if method in DENSE_PHASE_AT_FULLS_RATE:
            arguments += ["--dense_phase_learning_rate", str(best_rate(list(sweeps["full"].values())))]
        train, env = training_command(args.launcher, self.script, self.recipe_file, arguments)
        limit = f" --limit {args.eval_limit}" if args.eval_limit else ""
        forgetting = None
        if phase == "final" and args.forgetting_suite:
            forgetting = {"suite": args.forgetting_suite, "eval_args": args.forgetting_args + limit}
        return Run(phase, method, seed, rate, steps, str(run_dir), train, env, model=str(args.model), suite=suite,
                   scored_on=scored_on, curve=curve, curve_eval_args=f"{args.eval_args} {args.test_eval_args}{limit}",
                   forgetting=forgetting)  # fmt: skip


def write_sweep(sweeps: dict[str, list[dict]], args, command: str, machine: str) -> None:
    """``<out>/sweep.{json,md,png}``."""
    sweep_runs = [record for records in sweeps.values() for record in records]
    chooser = (f"{args.validation_rows} validation rows held out of the training data" if not args.validation_data
               else f"the validation rows of {args.validation_data}")  # fmt: skip
    if args.select_by == "eval_loss":
        chooser = f"the loss on {chooser} (lower is better)"
    header = (f"`{command}`: {len(sweep_runs)} runs of {args.sweep_steps} steps, seed 0, scored on {chooser} "
              f"(the runs took {sum(r['seconds'] for r in sweep_runs) / 60:.0f} min in all on {machine})")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.json").write_text(json.dumps({"command": command, "sweeps": sweeps}, indent=2))
    (args.out / "sweep.md").write_text(sweep_markdown(sweeps, header))
    plot_sweep(sweeps, args.out / "sweep.png")
    print(sweep_markdown(sweeps, header))


def write_final(records: list[dict], args, methods: dict[str, tuple[str, ...]], recipe, command: str,
                machine: str) -> None:  # fmt: skip
    """``<out>/compare.{json,md,png}``, the learning curves where they were scored, and ``<out>/recommendation.md``."""
    rows = aggregate(records, args.methods, methods)
    score_name = "exact match" if args.eval_suite == "tiny" else f"{args.eval_suite} test score"
    base_equations = None
    if args.forgetting_suite:  # the base's own score, for the forgetting column
        base_file = args.out / "base_equations.json"
        if not base_file.is_file():
            limit = f" --limit {args.eval_limit}" if args.eval_limit else ""
            (score,) = score_checkpoints([(Path(args.model), args.forgetting_suite, args.forgetting_args + limit,
                                           args.out / "base-eval")], dict(os.environ))  # fmt: skip
            base_file.write_text(json.dumps({"score": score}))
        base_equations = json.loads(base_file.read_text())["score"]
    total_minutes = sum(r["seconds"] for r in records) / 60
    failures = [f"{r['method']} seed {r['seed']}" for r in records if failed(r)]
    header = (f"`{command}` ({len(records)} runs at each method's best validation learning rate, "
              f"the runs took {total_minutes:.0f} min of training and scoring in all on {machine}; scored with "
              f"the {args.eval_suite} suite on its test data)"
              + (f". Failed, left out (each run's failed.json says why; the same command tries them again): "
                 f"{', '.join(failures)}" if failures else ""))  # fmt: skip
    forgetting = forgetting_name(args.forgetting_suite)
    (args.out / "compare.json").write_text(json.dumps({"command": command, "base_equations": base_equations,
                                                       "rows": rows, "runs": records}, indent=2))  # fmt: skip
    (args.out / "compare.md").write_text(markdown(rows, header, base_equations, score_name, forgetting))
    plot(rows, args.out / "compare.png", base_equations, forgetting, score_name)
    if any(row.get("curve") and len(row["curve"]) > 1 for row in rows):
        curve_header = ("Test score (%) at each checkpoint of the seed-0 final run (the learning-rate "
                        "schedule is the full run's, so an early point is not a shorter run)")  # fmt: skip
        (args.out / "curve.md").write_text(curve_markdown(rows, curve_header))
        plot_curves(rows, args.out / "curve.png")
    if any(record.get("rewards") for record in records):  # GRPO runs
        plot_rewards(records, args.out / "rewards.png")
    print(markdown(rows, header, base_equations, score_name, forgetting))
    if "full" in args.methods:
        report = task_report(rows, args, methods, recipe)
        (args.out / "recommendation.md").write_text(report)
        print(report)


def task_report(rows: list[dict], args, methods: dict[str, tuple[str, ...]], recipe) -> str:
    """What a user acts on: the method and rate to start from for each memory budget on this task,
    the papers' claims on it, and the command that trains each recommended method."""
    from gmt.compare.claims import claims, frontier, recommendations

    task = {args.out.name: {row["method"]: row for row in rows}}
    lines = [f"# What to train on {recipe.path}", "",
             "For a memory budget, start from the last row whose optimizer state fits it (each row is the method that "
             "outscores every method with less state on this task; state per rank, as each run measured it):", "",
             recommendations(task), "The command that trains each, on the recipe's whole data:", "",
             "```bash"]  # fmt: skip
    launcher = "" if args.launcher == "python" else f"{args.launcher} "
    by_method = {row["method"]: row for row in rows}
    given = []  # what this comparison changed of the recipe
    if args.model != recipe.settings["model_name_or_path"]:
        given += ["--model_name_or_path", str(args.model)]
    if args.data is not None and str(args.data) != recipe.settings.get("dataset_name"):
        given += ["--dataset_name", str(args.data)]
    for method, _, _ in frontier(task):
        arguments = [*given, "--learning_rate", f"{by_method[method]['learning_rate']:g}", *methods[method]]
        if method in DENSE_PHASE_AT_FULLS_RATE:
            arguments += ["--dense_phase_learning_rate", f"{by_method['full']['learning_rate']:g}"]
        script = f"{launcher or 'accelerate launch '}-m {recipe.script.removesuffix('.py').replace('/', '.')}"
        lines.append(f"{script} --config {recipe.path} {shlex.join(arguments)}")
    lines += ["```", "", "The papers' claims on this task (a gap below the larger seed std is within noise):", "",
              claims(task)]  # fmt: skip
    return "\n".join(lines)


def result_arguments(argv: list[str]) -> list[str]:
    """The command-line arguments that shape the results: without ``--phase``, ``--jobs`` and the
    cluster's settings."""
    kept, skip = [], False
    dropped = ("--phase", "--jobs", "--submit", "--slurm_args", "--activate")  # and --collect, --plan
    for argument in argv:
        if skip:
            skip = False
        elif argument in dropped:
            skip = True
        elif argument not in ("--collect", "--plan") and not argument.startswith(tuple(f"{name}=" for name in dropped)):
            kept.append(argument)
    return kept


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_argument_group("what is compared")
    what.add_argument("--config", type=Path, default=None,
                      help=f"the recipe (SFT or DPO); default: the tiny comparison ({TINY_RECIPE})")  # fmt: skip
    what.add_argument("--model", default=None, help="the base model (default: the recipe's model_name_or_path)")
    what.add_argument("--data", type=Path, default=None, help="the training data (default: the recipe's)")
    what.add_argument("--methods", nargs="+", default=None,
                      help=f"methods to compare, of {list(METHODS)} (default: all but {list(RL_METHODS)} for "
                           "an SFT or DPO recipe; full, those and gspf for a GRPO recipe)")
    what.add_argument("--method", action="append", default=[], metavar="NAME=ARGS",
                      help="add ARGS to method NAME's overrides, or define a new method, e.g. 'gps=--gps_k 4' or "
                           "'gmt-0.9=--mask_strategy gmt --mask_ratio 0.9' (repeatable)")  # fmt: skip
    what.add_argument("--out", type=Path, default=None, help="output folder (default: docs/compare for the tiny "
                                                              "comparison, else outputs/compare/<recipe>)")  # fmt: skip
    score = parser.add_argument_group("how runs are scored")
    score.add_argument("--eval_suite", default=None, help="gmt-eval suite of the final runs (default: the recipe's)")
    score.add_argument("--eval_args", default="", help="more gmt-eval settings for every score, e.g. '--data_dir D'")
    score.add_argument("--validation_eval_args", default=None,
                       help="gmt-eval settings that point the suite at validation data (the tiny suite: "
                            "--task_data <out>/data/validation.jsonl, set for you)")  # fmt: skip
    score.add_argument("--select_by", choices=("suite", "eval_loss"), default=None,
                       help="what chooses each rate: the suite on validation data (where it can read them), "
                            "or the loss on the held-out rows (default where it cannot)")  # fmt: skip
    score.add_argument("--validation_rows", type=int, default=400, help="training rows held out for the sweep")
    score.add_argument("--validation_data", default=None,
                       help="a data set of validation rows (the recipe's layout) instead of held-out training rows")
    score.add_argument("--eval_limit", type=int, default=None, help="score only the first N problems")
    score.add_argument("--forgetting_suite", default=None, help="also score final runs with this suite")
    score.add_argument("--forgetting_args", default=None, help="gmt-eval settings of the forgetting suite")
    score.add_argument("--curve", action=argparse.BooleanOptionalAction, default=None,
                       help="score seed 0's checkpoint at each quarter of its steps (a learning curve)")
    budget = parser.add_argument_group("the sweep's budget")
    budget.add_argument("--base_learning_rate", type=float, default=None,
                        help="the rate the grids are built around (default: the recipe's learning_rate); e.g. a "
                             "committed comparison run again after its recipe took the rate it chose")  # fmt: skip
    budget.add_argument("--lr_factors", nargs="+", type=float, default=None,
                        help="the grid as multiples of the recipe's rate or --base_learning_rate (default: each "
                             "method's usual multiple "
                             "and one half-decade either side)")  # fmt: skip
    budget.add_argument("--sweep_steps", type=int, default=None, help="steps of a sweep run (default: a third of "
                                                                      "the recipe's)")  # fmt: skip
    budget.add_argument("--sweep_around", type=Path, default=None,
                        help="another task's sweep.json: start each method's grid at its winning rate there and one "
                             "half-decade either side")  # fmt: skip
    budget.add_argument("--max_extensions", type=int, default=2, help="times a grid may grow at a winning edge")
    budget.add_argument("--seeds", nargs="+", type=int, default=None, help="final phase (default 0 1 2)")
    budget.add_argument("--max_steps", type=int, default=None, help="override the recipe's length (final phase)")
    budget.add_argument("--world_size", type=int, default=None,
                        help="processes a run trains on, for the recipe's length (default: the launcher's "
                             "--num_processes, else 1)")  # fmt: skip
    budget.add_argument("--smoke", action="store_true", help="3 methods, 2 rates, 1 seed, 5 steps, 8 problems")
    where = parser.add_argument_group("where runs run")
    where.add_argument("--launcher", default=None,
                       help="how a run is launched: python (one process; the default here), 'accelerate launch "
                            "--config_file C', 'torchrun ...', or 'scripts/launch.slurm [ACCELERATE_CONFIG]' (one "
                            "accelerate launch per node of a SLURM allocation; the default with --submit "
                            "slurm)")  # fmt: skip
    where.add_argument("--jobs", type=int, default=1,
                       help="runs side by side here, each with its share of the cores (on 2 cores, 2 jobs finish "
                            "about 1.6x the runs per hour of 1)")  # fmt: skip
    where.add_argument("--submit", choices=("slurm",), default=None,
                       help="write the runs still to do as a SLURM job array instead of running them")
    where.add_argument("--slurm_args", default="", help="#SBATCH options of each array task, e.g. '--nodes 1 "
                                                        "--gpus-per-node 8 --time 12:00:00'")  # fmt: skip
    where.add_argument("--activate", default=None, help="a file each array task sources first (a venv's activate)")
    where.add_argument("--collect", action="store_true",
                       help="only gather the finished runs and write the tables; run nothing")
    parser.add_argument("--phase", choices=("sweep", "final", "all"), default="all")
    parser.add_argument("--plan", action="store_true", help="print the runs the comparison will make and stop")
    parser.add_argument("--task", help="run one planned run (RUN_DIR with run.json): what a SLURM array task does")
    parser.add_argument("--score_jobs", help=argparse.SUPPRESS)  # internal: runs.score_checkpoints' worker
    return parser.parse_args(argv)


def settle(args: argparse.Namespace) -> tuple:
    """Fill in the defaults that depend on the recipe, refuse what cannot work; returns the recipe,
    the comparison's recipe file, the methods and their grids."""
    args.launcher = args.launcher or ("scripts/launch.slurm" if args.submit == "slurm" else "python")
    tiny = args.config is None
    recipe = read_recipe(args.config or TINY_RECIPE)
    if tiny:
        for name, value in TINY.items():
            if getattr(args, name, None) is None:
                setattr(args, name, Path(value) if name in ("data", "out") else value)
        if args.forgetting_args is None:
            args.forgetting_args = f"--task_data {args.data.parent / 'equations' / 'test.jsonl'}"
    args.forgetting_args = args.forgetting_args or ""
    args.out = (args.out or Path("outputs") / "compare" / recipe.path.stem).resolve()
    args.eval_suite = args.eval_suite or recipe.settings.get("eval_suite")
    if not args.eval_suite or args.eval_suite == "none":
        sys.exit(f"{recipe.path} sets no eval_suite: pass --eval_suite, the gmt-eval suite that scores the final runs")
    if args.smoke:
        args.methods = args.methods or list(SMOKE_METHODS)
        args.seeds = args.seeds or [0]
        args.max_steps = args.max_steps or 5
        args.sweep_steps = 5
        args.eval_limit = args.eval_limit or 8
        args.validation_rows = min(args.validation_rows, 16)
        args.max_extensions = 0
        args.lr_factors = SMOKE_LR_FACTORS
    if args.jobs < 1:
        sys.exit(f"--jobs must be at least 1, got {args.jobs}")
    if args.sweep_around and not args.sweep_around.is_file():
        sys.exit(f"--sweep_around {args.sweep_around}: no such file (another task's sweep.json, from compare.py)")
    if args.base_learning_rate is not None and not args.base_learning_rate > 0:
        sys.exit(f"--base_learning_rate must be above 0, got {args.base_learning_rate:g}")
    methods = method_table(args.method)
    chosen = args.methods or default_methods(recipe.script, methods)
    unknown = [name for name in chosen if name not in methods]
    if unknown:
        sys.exit(f"--methods {unknown}: unknown; known: {list(methods)} (or define one with --method NAME=ARGS)")
    if set(chosen) & set(DENSE_PHASE_AT_FULLS_RATE) and "full" not in chosen:
        sys.exit(f"{sorted(set(chosen) & set(DENSE_PHASE_AT_FULLS_RATE))} take full fine-tuning's best rate: "
                 "add full to --methods")  # fmt: skip
    args.methods = chosen
    trained = recipe  # the recipe with --data in place of its dataset_name
    if args.data is not None:
        trained = type(recipe)(recipe.path, {**recipe.settings, "dataset_name": str(args.data)})
    args.model = args.model or recipe.settings["model_name_or_path"]
    if {"gps", "grft"} & set(chosen):  # their budgets come from the model's config
        methods = method_table(args.method, str(args.model))
    try:
        args.data_dir = hold_out(trained, args.out / "data", args.validation_rows, args.validation_data)
    except (ConnectionError, FileNotFoundError, OSError, ValueError) as error:  # the hub's data offline, above all
        source = args.validation_data if args.validation_data and str(args.validation_data) in str(error) else (
            trained.settings.get("dataset_name") or "the recipe's datasets")  # fmt: skip
        sys.exit(f"the comparison cannot read {source} ({type(error).__name__}: {str(error)[:300]}); it holds out "
                 "validation rows and counts the training rows from it, --plan too. Copy the data set where the hub "
                 "is reachable and pass --data LOCAL_COPY (and --validation_data), or run with the hub")
    from gmt.evaluation.suites import check_columns, load_suite

    suite = load_suite(args.eval_suite)
    suite_reads_files = suite.default_data is not None  # its rows come from --task_data
    if suite_reads_files and args.validation_eval_args is None:  # the rows it will score, checked now
        for split in ("validation", "test"):
            try:
                check_columns(suite, args.data_dir / f"{split}.jsonl")
            except ValueError as error:
                sys.exit(f"--eval_suite {args.eval_suite}: {error}")
    if args.validation_eval_args is None and suite_reads_files:
        args.validation_eval_args = f"--task_data {args.data_dir / 'validation.jsonl'}"
    args.test_eval_args = f"--task_data {args.data_dir / 'test.jsonl'}" if suite_reads_files else ""
    if args.select_by is None:
        args.select_by = "suite" if args.validation_eval_args else "eval_loss"
    if args.select_by == "suite" and not args.validation_eval_args:
        sys.exit(f"--select_by suite: the suite {args.eval_suite!r} would choose the rates on its test data; pass "
                 "--validation_eval_args (settings that point it at validation data) or --select_by eval_loss")
    args.curve = bool(args.curve)
    recipe_file = comparison_recipe(trained, args.data_dir, args.model, args.out)
    args.train_rows = sum(1 for _ in (args.data_dir / "train.jsonl").open())
    args.recipe_steps = recipe.steps(args.train_rows, args.world_size or launcher_processes(args))
    if args.sweep_steps is None:
        args.sweep_steps = sweep_steps_for(args.recipe_steps)
    around = json.loads(args.sweep_around.read_text())["sweeps"] if args.sweep_around else None
    multiples = usual_multiples()
    base_rate = args.base_learning_rate or recipe.learning_rate
    grids = {m: sweep_grid(m, base_rate, args.lr_factors, multiples, around) for m in args.methods}
    return recipe, recipe_file, methods, grids


def launcher_processes(args) -> int:
    """The processes the launcher starts: accelerate launch's (gmt.launch reads them as accelerate
    does), torchrun's ``--nproc_per_node``, else 1."""
    from gmt.launch import accelerate_launch_processes

    words = shlex.split(args.launcher)
    if words[:2] == ["accelerate", "launch"]:
        return accelerate_launch_processes(words[2:]) or 1
    if "--nproc_per_node" in words:
        return int(words[words.index("--nproc_per_node") + 1])
    return 1


def cost(args, recipe, grids: dict[str, list[float]], methods: dict[str, tuple[str, ...]]) -> str:
    """What the comparison will run: its runs and their optimizer steps, in recipe-lengths."""
    train_rows, length = args.train_rows, args.max_steps or args.recipe_steps
    seeds = len(args.seeds if args.seeds is not None else [0, 1, 2])
    fewest = sum(map(len, grids.values()))
    most = fewest + args.max_extensions * len(grids)
    sweep_lengths = (fewest * args.sweep_steps / length, most * args.sweep_steps / length)
    finals = len(grids) * seeds
    lines = [f"{len(grids)} methods on {recipe.path} ({length} optimizer steps a run on {train_rows} rows):",
             f"  sweep: {fewest} to {most} runs of {args.sweep_steps} steps (grids grow at a winning edge), "
             f"{sweep_lengths[0]:.1f} to {sweep_lengths[1]:.1f} recipe-lengths",
             f"  final: {finals} runs ({seeds} seeds) of {length} steps, {finals:.0f} recipe-lengths",
             f"  in all: {sweep_lengths[0] + finals:.0f} to {sweep_lengths[1] + finals:.0f} times the GPU-hours of one "
             "training run of the recipe, plus scoring"]  # fmt: skip
    # each method's rates and settings, as a sweep run gets them (gspf's warm-up fitted to its length)
    lines += [f"  {method}: {', '.join(f'{rate:g}' for rate in rates)} "
              f"({shlex.join(gspf_warmup(methods[method], args.sweep_steps))})" for method, rates in grids.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    if args.score_jobs:
        score_jobs(args.score_jobs)
        return
    if args.task:
        execute(Run.load(args.task))
        return
    recipe, recipe_file, methods, grids = settle(args)
    if args.plan:
        print(cost(args, recipe, grids, methods))
        return
    plan = Plan(args, recipe_file, recipe.script, methods)
    runner = Runner(args.jobs, submit=bool(args.submit) or args.collect)

    from tqdm import tqdm

    if not runner.submit:  # transformers' lazy imports are not thread-safe: resolve what the worker threads use first
        from peft import PeftModel  # noqa: F401
        from transformers import AutoModelForCausalLM  # noqa: F401

    command = "gmt compare " + " ".join(result_arguments(sys.argv[1:] if argv is None else argv))
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    try:
        with tqdm(total=sum(map(len, grids.values())), desc="sweep runs", unit="run") as progress:
            sweeps = sweep_all(args.methods, grids, plan, runner, progress)
        write_sweep(sweeps, args, command.strip(), machine)
        if args.phase == "sweep":
            return
        records_by_rate = {method: {r["learning_rate"]: r for r in records} for method, records in sweeps.items()}
        seeds = args.seeds if args.seeds is not None else [0, 1, 2]
        swept = [method for method in args.methods if best_rate(sweeps[method]) is not None]
        runs = [plan.run("final", method, seed, best_rate(sweeps[method]), records_by_rate)
                for seed in seeds for method in swept]  # every method's first seed comes first  # fmt: skip
        with tqdm(total=len(runs), desc="final runs", unit="run") as progress:
            records = runner.records(runs, progress)
    except Pending as pending:
        if args.collect:
            sys.exit(f"{len(pending.runs)} runs have not finished, e.g. {pending.runs[0].run_dir}")
        phase = pending.runs[0].phase
        for run in pending.runs:
            run.save()
        path = write_array(pending.runs, args, phase)
        print(f"{len(pending.runs)} {phase} runs to do: sbatch {path}\nOnce the array has finished, run this "
              "command again: it reads the finished runs and writes the next array, or the tables.")  # fmt: skip
        return
    write_final(records, args, methods, recipe, command.strip(), machine)
