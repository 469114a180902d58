"""Every method on the tiny recipe, each at its own best learning rate: sweep, then seeds.

    python -m gmt.tiny && python scripts/compare.py                    # sweep, then the final table
    python scripts/compare.py --phase sweep --methods gps lora         # only the sweep, for a subset
    python scripts/compare.py --smoke --model M --data D --out O       # 3 methods, 2 rates, a few steps

Each run is ``gmt/sft.py --config recipes/tiny/sft_full.yaml`` (the tiny recipe; its training
settings are those of ``sft_gmt.yaml``, without mask settings) with the method's overrides, a
learning rate and ``--seed``, scored with the tiny suite (exact match).

1. Validation: ``--validation_rows`` rows of the training data (a fixed random choice) are held
   out into ``<out>/data/validation.jsonl``; every run trains on the rest (``<out>/data/train.jsonl``).
2. Sweep: every method at ``base × LR_FACTORS`` (base: the recipe's 1e-3), seed 0,
   ``--sweep_steps`` steps, scored on the validation rows; where the best rate is at an edge of the
   grid the grid grows by one factor of 3 that way (at most ``--max_extensions`` times).
   ``--sweep_around OTHER/sweep.json`` starts each method's grid instead at its winning rate on
   another task and one half-decade either side (a second task's sweep in 3 runs a method, not 5;
   the validation rows of this task still choose). ``<out>/sweep.{json,md,png}``.
3. Final: every method at its best validation rate (ties: the lower rate), ``--seeds``, the
   recipe's full length, scored on the test problems, which no choice ever saw, and on the base's
   pretraining equations (forgetting). A checkpoint saved at each quarter of the steps gives the
   optimizer state's size and, for seed 0, the learning curve. ``<out>/compare.{json,md,png}``,
   ``<out>/curve.{md,png}``.

``scripts/compare_report.py`` then writes README's comparison section from every task's results.

A run writes ``<out>/runs/<phase>/<method>/<lr or seed>/result.json``; runs that have one are
skipped, so an interrupted comparison resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = "recipes/tiny/sft_full.yaml"
RATIOS = (0.2, 0.5, 0.8)

# Method name -> overrides of the tiny recipe. The fixed-mask budgets suit the 0.86M-parameter
# model (hidden 128): the papers' budgets (gspf 0.3%, gps K of 1-20) are for 100M+ parameters.
METHODS: dict[str, tuple[str, ...]] = {
    "full": ("--mask_strategy", "full"),
    **{f"gmt-grad-{r}": ("--mask_strategy", "gmt", "--mask_ratio", str(r), "--gmt_mode", "grad") for r in RATIOS},
    # update mode (mask on the optimizer's update) at the middle ratio: does it differ from grad mode?
    "gmt-update-0.5": ("--mask_strategy", "gmt", "--mask_ratio", "0.5", "--gmt_mode", "update"),
    **{f"random-{r}": ("--mask_strategy", "random", "--mask_ratio", str(r)) for r in RATIOS},
    "gps": ("--mask_strategy", "gps", "--gps_k", "16"),
    "grft": ("--mask_strategy", "grft", "--grft_k", "16"),
    "gspf": ("--mask_strategy", "gspf", "--gspf_keep_ratio", "0.05", "--gspf_warmup_steps", "25"),
    # gspf whose dense warm-up runs at full fine-tuning's best rate (dense_phase_learning_rate), the
    # swept rate being that of its sparse phase only
    "gspf-dense-lr": ("--mask_strategy", "gspf", "--gspf_keep_ratio", "0.05", "--gspf_warmup_steps", "25"),
    # gmt at one ratio with the other two scopes (the default is global: one top-k over everything).
    **{f"gmt-grad-0.5-{scope}": ("--mask_strategy", "gmt", "--mask_ratio", "0.5", "--gmt_mode", "grad",
                                 "--mask_scope", scope) for scope in ("tensor", "layer")},  # fmt: skip
    # LoRA on every linear layer.
    "lora": ("--mask_strategy", "full", "--use_peft", "true", "--lora_r", "8", "--lora_alpha", "16",
             "--lora_target_modules", "all-linear"),  # fmt: skip
}
SMOKE_METHODS = ("full", "gmt-grad-0.5", "lora")
# the methods that train one fixed subset (gspf: after its warm-up)
FIXED_MASK = ("gps", "grft", "gspf", "gspf-dense-lr")
DENSE_PHASE_AT_FULLS_RATE = ("gspf-dense-lr",)  # their dense phase at full's best validation rate
BASE_LR = 1e-3  # the tiny recipe's (full fine-tuning's) learning rate
LR_FACTORS = (0.3, 1, 3, 10, 30)  # the sweep grid, as multiples of BASE_LR
SMOKE_LR_FACTORS = (1, 3)


def prepare_data(data: Path, out: Path, validation_rows: int, seed: int = 0) -> Path:
    """``out`` with ``train.jsonl`` (the training rows minus the held-out ones), ``validation.jsonl``
    (``validation_rows`` of them, a fixed random choice) and ``test.jsonl`` (the test problems, as they are)."""
    import random
    import shutil

    if (out / "validation.jsonl").is_file():
        return out
    rows = (data / "train.jsonl").read_text().splitlines()
    if not 0 < validation_rows < len(rows):
        sys.exit(f"--validation_rows must be between 1 and {len(rows) - 1} (the training rows), got {validation_rows}")
    held_out = set(random.Random(seed).sample(range(len(rows)), validation_rows))
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.jsonl").write_text("".join(row + "\n" for i, row in enumerate(rows) if i not in held_out))
    (out / "validation.jsonl").write_text("".join(rows[i] + "\n" for i in sorted(held_out)))
    shutil.copy(data / "test.jsonl", out / "test.jsonl")
    return out


def run_one(method: str, seed: int, learning_rate: float, max_steps: int | None, eval_data: Path, final: bool,
            args, run_dir: Path) -> dict:  # fmt: skip
    """Train one (method, rate, seed) on the training rows, score it on ``eval_data``; returns and
    writes its result. A ``final`` run also saves a checkpoint at every quarter of its steps: their
    optimizer state is measured, seed 0's are scored (the learning curve), and the final model is
    scored on the base's pretraining equations (forgetting)."""
    command = [sys.executable, "gmt/sft.py", "--config", RECIPE, "--model_name_or_path", str(args.model),
               "--dataset_name", str(args.data_dir), "--output_dir", str(run_dir), "--seed", str(seed),
               "--learning_rate", str(learning_rate), "--report_to", "none", *METHODS[method],
               "--eval_suite", "tiny", "--eval_args", f"--tiny_data {eval_data}"]  # fmt: skip
    if max_steps:
        command += ["--max_steps", str(max_steps), "--logging_steps", str(max(1, min(10, max_steps // 5)))]
    if args.eval_limit:
        command += ["--eval_limit", str(args.eval_limit)]
    if final:
        command += ["--save_strategy", "steps", "--save_steps", "0.25"]
    if method in DENSE_PHASE_AT_FULLS_RATE:
        command += ["--dense_phase_learning_rate", str(fulls_best_rate(args))]
    started = time.perf_counter()
    env = subprocess_env(args)
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{method} seed {seed} lr {learning_rate:g} failed:\n{result.stderr[-3000:]}")
    summary = json.loads((run_dir / "eval" / "lm_eval_tiny.json").read_text())["gmt"]
    trainer_state = json.loads((run_dir / "trainer_state.json").read_text())
    history = trainer_state["log_history"]
    kept = [entry["mask/kept_fraction"] for entry in history if "mask/kept_fraction" in entry]
    record = {
        "method": method,
        "seed": seed,
        "learning_rate": learning_rate,
        "max_steps": max_steps,
        "scored_on": eval_data.name,
        "score": summary["score"],
        "kept_fraction": statistics.fmean(kept) if kept else None,  # None: no logging step ran
        "updated_fraction": updated_fraction(args.model, run_dir),
    }
    if final:
        checkpoints = sorted(run_dir.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
        record["optimizer_state_bytes"] = optimizer_state_bytes(checkpoints[-1])
        jobs = [(run_dir, "tiny_equations", args.equations, run_dir / "eval")]
        if seed == 0:  # the learning curve: every checkpoint but the last (the final model is scored above)
            jobs += [(path, "tiny", eval_data, path / "eval") for path in checkpoints[:-1]]
        scores = score_in_subprocess(jobs, args, env)
        record["equations_score"] = scores[0]
        record["curve"] = [{"step": int(path.name.split("-")[1]), "score": score}
                           for path, score in zip(checkpoints[:-1], scores[1:])] if seed == 0 else []  # fmt: skip
        record["curve"].append({"step": trainer_state["global_step"], "score": summary["score"]})
        for path in checkpoints:  # scored and measured: the final model stays in run_dir
            shutil.rmtree(path)
    record["seconds"] = time.perf_counter() - started
    (run_dir / "result.json").write_text(json.dumps(record, indent=2))
    return record


def subprocess_env(args) -> dict[str, str]:
    """The environment of a run: with ``--jobs`` runs side by side, each gets its share of the cores."""
    threads = str(max(1, (os.cpu_count() or 1) // args.jobs))
    return {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def score_in_subprocess(jobs: list[tuple[Path, str, Path, Path]], args, env: dict[str, str]) -> list[float]:
    """The score of each (model, suite, data, output_dir), in one process (the harness's task index
    is built once)."""
    spec = [{"model": str(model), "suite": suite, "tiny_data": str(data), "output_dir": str(out),
             "limit": args.eval_limit} for model, suite, data, out in jobs]  # fmt: skip
    command = [sys.executable, str(Path(__file__).resolve()), "--score_jobs", json.dumps(spec)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"scoring {[job[0] for job in jobs]} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def score_jobs(spec: str) -> None:
    """``--score_jobs``: score each job of the JSON list; print the scores as one JSON line."""
    from gmt.evaluation import evaluate_checkpoint

    scores = [evaluate_checkpoint(job.pop("model"), job.pop("suite"), **job)["score"] for job in json.loads(spec)]
    print(json.dumps(scores))


def optimizer_state_bytes(checkpoint: Path) -> int:
    """Bytes of every tensor in the optimizer state the trainer saved in ``checkpoint``."""
    import torch

    from gmt.masking.sparse_optim import state_bytes

    return state_bytes(torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=False)["state"])


def cached_run(run_dir: Path, method: str, seed: int, learning_rate: float, max_steps: int | None,
               eval_data: Path, final: bool, args) -> dict:  # fmt: skip
    """``run_one``'s result: read back if the run finished before, else run it now. A finished run
    of another length is refused: resuming must not mix lengths."""
    done = run_dir / "result.json"
    if not done.is_file():
        return run_one(method, seed, learning_rate, max_steps, eval_data, final, args, run_dir)
    record = json.loads(done.read_text())
    if record["max_steps"] != max_steps:
        def length(steps: int | None) -> str:
            return f"{steps} steps" if steps else "the recipe's length"

        sys.exit(f"{done} ran {length(record['max_steps'])}, this comparison asks {length(max_steps)} "
                 "(--sweep_steps / --max_steps): remove those runs or use another --out")
    return record


def half_decade(rate: float, steps: int) -> float:
    """The rate ``steps`` places away on the ladder 1e-3, 3e-3, 1e-2, ... (``rate`` snapped onto it)."""
    place = round(2 * math.log10(rate)) + steps
    return float(f"{1 if place % 2 == 0 else 3}e{place // 2}")


def sweep_grid(method: str, factors: tuple[float, ...], around: dict[str, list[dict]] | None) -> list[float]:
    """The rates a method's sweep starts from: ``BASE_LR × factors``, or, given another task's sweeps
    (``--sweep_around``), that task's winning rate for the method and one half-decade either side."""
    if around is None or method not in around:
        return [BASE_LR * factor for factor in factors]
    best = best_rate(around[method])
    return [half_decade(best, -1), half_decade(best, 0), half_decade(best, 1)]


def sweep(method: str, rates: list[float], args, progress, jobs: int = 1) -> list[dict]:
    """One method at every rate of the grid (grown at an edge that wins), scored on validation;
    ``jobs`` rates of a round side by side."""
    rates = list(rates)
    records: dict[float, dict] = {}

    def run_rate(rate: float) -> dict:
        progress.set_postfix_str(f"{method} lr {rate:g}")
        run_dir = args.out / "runs" / "sweep" / method / f"lr{rate:g}"
        record = cached_run(run_dir, method, 0, rate, args.sweep_steps, args.data_dir / "validation.jsonl",
                            False, args)  # fmt: skip
        progress.update()
        return record

    for extension in range(args.max_extensions + 1):
        missing = [rate for rate in rates if rate not in records]
        with ThreadPoolExecutor(jobs) as pool:  # the runs are subprocesses
            records |= dict(zip(missing, pool.map(run_rate, missing)))
        best = best_rate(list(records.values()))
        if extension == args.max_extensions or best not in (min(rates), max(rates)):
            break
        rates.append(best * 3 if best == max(rates) else best / 3)
        progress.total += 1
    return [records[rate] for rate in sorted(records)]


def fulls_best_rate(args) -> float:
    """Full fine-tuning's best validation rate, from its finished sweep runs."""
    runs = [json.loads(path.read_text()) for path in (args.out / "runs" / "sweep" / "full").glob("lr*/result.json")]
    if not runs:
        raise RuntimeError(f"{DENSE_PHASE_AT_FULLS_RATE} take full fine-tuning's best rate: sweep full first")
    return best_rate(runs)


def best_rate(records: list[dict]) -> float:
    """The rate with the best validation score (ties: the lower rate)."""
    return min(records, key=lambda record: (-record["score"], record["learning_rate"]))["learning_rate"]


def updated_fraction(base: Path, tuned: Path) -> float:
    """Fraction of the base model's entries whose final value differs from the base (a PEFT run's
    adapter merged into the base first)."""
    from transformers import AutoModelForCausalLM

    from gmt.adapter import is_adapter, merged_model

    before = dict(AutoModelForCausalLM.from_pretrained(base).named_parameters())
    if is_adapter(tuned):
        model = merged_model(tuned, str(base))
    else:
        model = AutoModelForCausalLM.from_pretrained(tuned)
    after = dict(model.named_parameters())
    changed = sum(int((after[name] != before[name]).sum()) for name in before)
    return changed / sum(p.numel() for p in before.values())


def aggregate(records: list[dict], methods: list[str]) -> list[dict]:
    """One row per method: its final runs' mean and spread, and what they measured."""
    rows = []
    for method in methods:
        runs = [r for r in records if r["method"] == method]
        if not runs:
            continue
        scores = [r["score"] for r in runs]
        rows.append({
            "method": method,
            "learning_rate": runs[0]["learning_rate"],
            "seeds": len(runs),
            "score_mean": statistics.fmean(scores),
            "score_std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
            # a PEFT run's kept fraction is of its adapter, not of the model's entries
            "kept_fraction": None if "--use_peft" in METHODS[method] else _mean_or_none(
                [r["kept_fraction"] for r in runs]),
            "updated_fraction": statistics.fmean(r["updated_fraction"] for r in runs),
            "equations": _mean_or_none([r.get("equations_score") for r in runs]),
            "optimizer_state_bytes": _mean_or_none([r.get("optimizer_state_bytes") for r in runs]),
            "curve": next((r["curve"] for r in runs if r["seed"] == 0 and r.get("curve")), None),
            # median: a run that shared the machine with other work does not move it much
            "seconds": statistics.median(r["seconds"] for r in runs),
        })  # fmt: skip
    return rows


def _mean_or_none(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def markdown(rows: list[dict], header: str, base_equations: float | None = None) -> str:
    """The final table: a row per method, its rate and memory relative to full fine-tuning's."""
    full = next((row for row in rows if row["method"] == "full"), None)
    base = "" if base_equations is None else f" (base {100 * base_equations:.1f}%)"
    columns = ("| method | learning rate (× full's) | seeds | exact match (mean ± std) | pretraining equations"
               f"{base} | optimizer state (× full's) | kept per step | entries changed | wall time (median) |")
    lines = [header, "", columns, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        equations = "-" if row.get("equations") is None else f"{100 * row['equations']:.1f}%"
        rate = f"{row['learning_rate']:g}" + (f" ({row['learning_rate'] / full['learning_rate']:.3g}×)" if full else "")
        state = row.get("optimizer_state_bytes")
        memory = "-" if state is None else f"{state / 2**20:.2f} MiB" + (
            f" ({state / full['optimizer_state_bytes']:.3f}×)" if full and full.get("optimizer_state_bytes") else "")
        lines.append(
            f"| {row['method']} | {rate} | {row['seeds']} | {100 * row['score_mean']:.1f} ± "
            f"{100 * row['score_std']:.1f}% | {equations} | {memory} | {_fraction(row['kept_fraction'])} | "
            f"{row['updated_fraction']:.3f} | {row['seconds'] / 60:.1f} min |"
        )  # fmt: skip
    return "\n".join(lines) + "\n"


def curve_markdown(rows: list[dict], header: str) -> str:
    """Test score at every saved checkpoint of each method's seed-0 final run."""
    rows = [row for row in rows if row.get("curve")]
    steps = sorted({point["step"] for row in rows for point in row["curve"]})
    lines = [header, "", "| method | " + " | ".join(f"step {step}" for step in steps) + " |",
             "|---|" + "---:|" * len(steps)]  # fmt: skip
    for row in rows:
        by_step = {point["step"]: point["score"] for point in row["curve"]}
        cells = ["-" if step not in by_step else f"{100 * by_step[step]:.1f}" for step in steps]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def curve_methods(rows: list[dict]) -> list[str]:
    """The learning curves drawn: full, gmt at its ratios, random, the best fixed-mask method, LoRA."""
    fixed = [row for row in rows if row["method"] in FIXED_MASK]
    chosen = ["full", *(f"gmt-grad-{ratio}" for ratio in RATIOS), "random-0.5", "lora"]
    if fixed:
        chosen.insert(-1, max(fixed, key=lambda row: row["score_mean"])["method"])
    return [method for method in chosen if any(row["method"] == method and row.get("curve") for row in rows)]


def plot_curves(rows: list[dict], path: Path) -> None:
    """Test score against the step, at each saved checkpoint of the seed-0 final runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_method = {row["method"]: row for row in rows}
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for index, method in enumerate(curve_methods(rows)):
        curve = by_method[method]["curve"]
        axis.plot([p["step"] for p in curve], [100 * p["score"] for p in curve], marker="o", label=method,
                  color=f"C{index}")  # fmt: skip
    axis.set_xlabel("optimizer step (checkpoints of one run, seed 0)")
    axis.set_ylabel("test exact match (%)")
    axis.set_title("learning curves, each method at its best validation rate")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def sweep_markdown(sweeps: dict[str, list[dict]], header: str) -> str:
    """Validation score by learning rate, a row per method, its best rate in bold."""
    rates = sorted({record["learning_rate"] for records in sweeps.values() for record in records})
    lines = [header, "", "| method | " + " | ".join(f"{rate:g}" for rate in rates) + " | best |",
             "|---|" + "---:|" * (len(rates) + 1)]  # fmt: skip
    for method, records in sweeps.items():
        by_rate = {record["learning_rate"]: record["score"] for record in records}
        best = best_rate(records)
        cells = [("-" if rate not in by_rate else f"**{100 * by_rate[rate]:.1f}**" if rate == best
                  else f"{100 * by_rate[rate]:.1f}") for rate in rates]  # fmt: skip
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {best:g} |")
    return "\n".join(lines) + "\n"


def plot_sweep(sweeps: dict[str, list[dict]], path: Path) -> None:
    """Validation score against the learning rate, a line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for index, (method, records) in enumerate(sweeps.items()):
        axis.plot([r["learning_rate"] for r in records], [100 * r["score"] for r in records], marker="o",
                  label=method, color=f"C{index % 10}", linestyle="-" if index < 10 else "--")  # fmt: skip
    axis.set_xscale("log")
    axis.set_xlabel("learning rate")
    axis.set_ylabel("validation exact match (%)")
    axis.set_title("learning-rate sweep on the tiny recipe (seed 0, validation rows)")
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def plot(rows: list[dict], path: Path, base_equations: float | None = None) -> None:
    """Each method's test score (mean ± std over seeds) against its optimizer-state memory, against
    the fraction of entries it changed, and against what it kept of the base's pretraining task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("optimizer_state_bytes", "optimizer state (MiB, log scale)", 1 / 2**20),
              ("updated_fraction", "fraction of entries that differ from the base", 1.0),
              ("equations", "pretraining equations still solved (%)", 100.0)]  # fmt: skip
    figure, axes = plt.subplots(1, 3, figsize=(16, 5), sharey=True)
    colors: dict[str, str] = {}  # one color per family (gmt-grad, random, ...), in the legend's order
    for axis, (key, label, scale) in zip(axes, panels):
        for row in rows:
            if row.get(key) is None:
                continue
            family = row["method"].split("-")[0] if not row["method"].startswith("gmt-") else "-".join(
                row["method"].split("-")[:2])  # fmt: skip
            color = colors.setdefault(family, f"C{len(colors) % 10}")
            x = row[key] * scale
            axis.errorbar(x, 100 * row["score_mean"], yerr=100 * row["score_std"], fmt="o", capsize=3,
                          label=family, color=color)  # fmt: skip
            axis.annotate(row["method"], (x, 100 * row["score_mean"]), fontsize=7, xytext=(4, 3),
                          textcoords="offset points")  # fmt: skip
        axis.set_xlabel(label)
    axes[0].set_xscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
    axes[0].xaxis.set_major_formatter(plain)
    axes[0].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if base_equations is not None:
        axes[2].axvline(100 * base_equations, color="grey", linestyle=":", label="the base")
    handles, labels = [], []
    for axis in axes:
        for handle, name in zip(*axis.get_legend_handles_labels()):
            if name not in labels:
                handles.append(handle)
                labels.append(name)
    axes[0].legend(handles, labels, fontsize=8)
    axes[0].set_ylabel("test exact match (%)")
    figure.suptitle("each method at its best validation learning rate")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def result_arguments(argv: list[str]) -> list[str]:
    """The command-line arguments that shape the results: without ``--phase`` and ``--jobs``."""
    kept, skip = [], False
    for argument in argv:
        if skip:
            skip = False
        elif argument in ("--phase", "--jobs"):
            skip = True
        elif not argument.startswith(("--phase=", "--jobs=")):
            kept.append(argument)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=("sweep", "final", "all"), default="all")
    parser.add_argument("--methods", nargs="+", default=None, choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="final phase (default 0 1 2)")
    parser.add_argument("--model", type=Path, default=Path(".cache/gmt-tiny/base"))
    parser.add_argument("--data", type=Path, default=Path(".cache/gmt-tiny/data/sft"))
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "compare")
    parser.add_argument("--validation_rows", type=int, default=400, help="training rows held out for the sweep")
    parser.add_argument("--sweep_steps", type=int, default=300, help="steps of a sweep run (the recipe: 1000)")
    parser.add_argument("--sweep_around", type=Path, default=None,
                        help="another task's sweep.json: start each method's grid at its winning rate there and one "
                             "half-decade either side (3 runs, not 5) instead of the base grid")  # fmt: skip
    parser.add_argument("--max_extensions", type=int, default=2, help="times the grid may grow at a winning edge")
    parser.add_argument("--max_steps", type=int, default=None, help="override the recipe's length (final phase)")
    parser.add_argument("--eval_limit", type=int, default=None, help="score only the first N problems")
    parser.add_argument("--equations", type=Path, default=None,
                        help="pretraining equations (tiny_equations) for forgetting; default: beside --data")
    parser.add_argument("--smoke", action="store_true", help="3 methods, 2 rates, 1 seed, 5 steps, 8 problems")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs side by side, each with its share of the cores (on 2 cores, 2 jobs finish "
                             "about 1.6x the runs per hour of 1)")  # fmt: skip
    parser.add_argument("--score_jobs", help=argparse.SUPPRESS)  # internal: score_in_subprocess's worker
    args = parser.parse_args()
    if args.score_jobs:
        score_jobs(args.score_jobs)
        return
    if args.jobs < 1:
        sys.exit(f"--jobs must be at least 1, got {args.jobs}")
    if args.sweep_around and not args.sweep_around.is_file():
        sys.exit(f"--sweep_around {args.sweep_around}: no such file (another task's sweep.json, from compare.py)")
    factors = LR_FACTORS
    if args.smoke:
        args.methods = args.methods or list(SMOKE_METHODS)
        args.seeds = args.seeds or [0]
        args.max_steps = args.max_steps or 5
        args.sweep_steps = 5
        args.eval_limit = args.eval_limit or 8
        args.validation_rows = min(args.validation_rows, 16)
        args.max_extensions = 0
        factors = SMOKE_LR_FACTORS
    methods = args.methods or list(METHODS)
    seeds = args.seeds if args.seeds is not None else [0, 1, 2]
    args.data_dir = prepare_data(args.data, args.out / "data", args.validation_rows)
    args.equations = args.equations or args.data.parent / "equations" / "test.jsonl"

    # transformers' lazy imports are not thread-safe: resolve what the worker threads use first
    from peft import PeftModel  # noqa: F401
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM  # noqa: F401

    command = "python scripts/compare.py " + " ".join(result_arguments(sys.argv[1:]))
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    around = json.loads(args.sweep_around.read_text())["sweeps"] if args.sweep_around else None
    grids = {method: sweep_grid(method, factors, around) for method in methods}
    with tqdm(total=sum(map(len, grids.values())), desc="sweep runs", unit="run") as progress:
        # full's sweep first (its rates side by side) where a method takes its best rate; then a
        # thread per running method
        first = ["full"] if "full" in methods and set(methods) & set(DENSE_PHASE_AT_FULLS_RATE) else []
        sweeps = {method: sweep(method, grids[method], args, progress, args.jobs) for method in first}
        rest = [method for method in methods if method not in first]
        with ThreadPoolExecutor(args.jobs) as pool:  # the runs are subprocesses
            sweeps |= dict(zip(rest, pool.map(lambda method: sweep(method, grids[method], args, progress), rest)))
        sweeps = {method: sweeps[method] for method in methods}
    sweep_runs = [record for records in sweeps.values() for record in records]
    sweep_header = (f"`{command.strip()}`: {len(sweep_runs)} runs of {args.sweep_steps} steps, seed 0, scored on "
                    f"{args.validation_rows} validation rows held out of the training data "
                    f"(the runs took {sum(r['seconds'] for r in sweep_runs) / 60:.0f} min in all on "
                    f"{machine})")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.json").write_text(json.dumps({"command": command.strip(), "sweeps": sweeps}, indent=2))
    (args.out / "sweep.md").write_text(sweep_markdown(sweeps, sweep_header))
    plot_sweep(sweeps, args.out / "sweep.png")
    print(sweep_markdown(sweeps, sweep_header))
    if args.phase == "sweep":
        return

    def final_run(job: tuple[str, int]) -> dict:
        method, seed = job
        run_dir = args.out / "runs" / "final" / method / f"seed{seed}"
        return cached_run(run_dir, method, seed, best_rate(sweeps[method]), args.max_steps,
                          args.data_dir / "test.jsonl", True, args)  # fmt: skip

    jobs = [(method, seed) for seed in seeds for method in methods]  # every method's first seed comes first
    with ThreadPoolExecutor(args.jobs) as pool:
        records = list(tqdm(pool.map(final_run, jobs), total=len(jobs), desc="final runs", unit="run"))
    rows = aggregate(records, methods)
    base_file = args.out / "base_equations.json"  # the base's own score, for the forgetting column
    if not base_file.is_file():
        (score,) = score_in_subprocess([(args.model, "tiny_equations", args.equations, args.out / "base-eval")],
                                       args, subprocess_env(args))  # fmt: skip
        base_file.write_text(json.dumps({"score": score}))
    base_equations = json.loads(base_file.read_text())["score"]
    total_minutes = sum(r["seconds"] for r in records) / 60
    header = (f"`{command.strip()}` ({len(records)} runs at each method's best validation learning rate, "
              f"the runs took {total_minutes:.0f} min of training and scoring in all on {machine}; scored on "
              "the test problems)")  # fmt: skip
    (args.out / "compare.json").write_text(json.dumps({"command": command.strip(), "base_equations": base_equations,
                                                       "rows": rows, "runs": records}, indent=2))  # fmt: skip
    (args.out / "compare.md").write_text(markdown(rows, header, base_equations))
    plot(rows, args.out / "compare.png", base_equations)
    curve_header = ("Test exact match (%) at each checkpoint of the seed-0 final run (the learning-rate "
                    "schedule is the full run's, so an early point is not a shorter run)")  # fmt: skip
    (args.out / "curve.md").write_text(curve_markdown(rows, curve_header))
    plot_curves(rows, args.out / "curve.png")
    print(markdown(rows, header, base_equations))


if __name__ == "__main__":
    main()
