"""Every method on the tiny recipe, several seeds, scored with the tiny suite: one table, one plot.

    python -m gmt.tiny && python scripts/compare.py                    # the full comparison
    python scripts/compare.py --methods full gmt-grad-0.5 --seeds 0    # a subset
    python scripts/compare.py --smoke --model M --data D --out O       # 1 seed, 2 methods, a few steps

Each run is ``gmt/sft.py --config recipes/tiny/sft_full.yaml`` (the tiny recipe; its training settings are
those of ``sft_gmt.yaml``, without mask settings) with the method's overrides and
``--seed``, scored on the held-out problems with ``eval_suite: tiny`` (exact match). A run writes
``<out>/runs/<method>/seed<k>/result.json``; runs that have one are skipped, so an interrupted
comparison resumes where it stopped. Then ``<out>/compare.json``, ``compare.md`` (mean ± std over
seeds, the mean kept fraction per step, the fraction of entries that differ from the base at the
end, wall time) and ``compare.png`` (score against the fraction of entries updated).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from readme_section import replace_readme_section

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- compare:start -->", "<!-- compare:end -->"
RECIPE = "recipes/tiny/sft_full.yaml"
RATIOS = (0.2, 0.5, 0.8)

# Method name -> overrides of the tiny recipe. The fixed-mask budgets suit the 0.86M-parameter
# model (hidden 128): the papers' budgets (gspf 0.3%, gps K of 1-20) are for 100M+ parameters.
METHODS: dict[str, tuple[str, ...]] = {
    "full": ("--mask_strategy", "full"),
    **{f"gmt-grad-{r}": ("--mask_strategy", "gmt", "--mask_ratio", str(r), "--gmt_mode", "grad") for r in RATIOS},
    **{f"gmt-update-{r}": ("--mask_strategy", "gmt", "--mask_ratio", str(r), "--gmt_mode", "update") for r in RATIOS},
    **{f"random-{r}": ("--mask_strategy", "random", "--mask_ratio", str(r)) for r in RATIOS},
    "gps": ("--mask_strategy", "gps", "--gps_k", "16"),
    "grft": ("--mask_strategy", "grft", "--grft_k", "16"),
    "gspf": ("--mask_strategy", "gspf", "--gspf_keep_ratio", "0.05", "--gspf_warmup_steps", "25"),
    # LoRA on every linear layer; a higher learning rate, as LoRA usually needs.
    "lora": (
        "--mask_strategy",
        "full",
        "--use_peft",
        "true",
        "--lora_r",
        "8",
        "--lora_alpha",
        "16",
        "--lora_target_modules",
        "all-linear",
        "--learning_rate",
        "5e-3",
    ),  # fmt: skip
}
SMOKE_METHODS = ("full", "gmt-grad-0.5")


def run_one(method: str, seed: int, args, run_dir: Path) -> dict:
    """Train and score one (method, seed); returns and writes its result."""
    command = [sys.executable, "gmt/sft.py", "--config", RECIPE, "--model_name_or_path", str(args.model),
               "--dataset_name", str(args.data), "--output_dir", str(run_dir), "--seed", str(seed),
               "--report_to", "none", *METHODS[method]]  # fmt: skip
    if args.max_steps:
        command += ["--max_steps", str(args.max_steps), "--logging_steps", str(max(1, min(10, args.max_steps // 5)))]
    if method != "lora":  # LoRA checkpoints are adapters: merged and scored below
        command += ["--eval_suite", "tiny"]
        if args.eval_limit:
            command += ["--eval_limit", str(args.eval_limit)]
    else:
        command += ["--eval_suite", "none"]
    started = time.perf_counter()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(f"{method} seed {seed} failed:\n{result.stderr[-3000:]}")
    if method == "lora":
        score_lora(run_dir, args)
    seconds = time.perf_counter() - started
    summary = json.loads((run_dir / "eval" / "lm_eval_tiny.json").read_text())["gmt"]
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    kept = [entry["mask/kept_fraction"] for entry in history if "mask/kept_fraction" in entry]
    record = {
        "method": method,
        "seed": seed,
        "score": summary["score"],
        "kept_fraction": statistics.fmean(kept) if kept else None,  # None: no logging step ran
        "updated_fraction": updated_fraction(args.model, run_dir if method != "lora" else run_dir / "merged"),
        "seconds": seconds,
    }
    (run_dir / "result.json").write_text(json.dumps(record, indent=2))
    return record


def score_lora(run_dir: Path, args) -> None:
    """Merge the adapter into the base and score the merged model with the tiny suite."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gmt.evaluation import evaluate_checkpoint

    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(args.model), run_dir).merge_and_unload()
    merged.save_pretrained(run_dir / "merged")
    AutoTokenizer.from_pretrained(run_dir).save_pretrained(run_dir / "merged")
    evaluate_checkpoint(run_dir / "merged", "tiny", limit=args.eval_limit, output_dir=run_dir / "eval",
                        tiny_data=Path(args.data) / "test.jsonl")  # fmt: skip


def updated_fraction(base: Path, tuned: Path) -> float:
    """Fraction of the base model's entries whose final value differs from the base."""
    from transformers import AutoModelForCausalLM

    before = dict(AutoModelForCausalLM.from_pretrained(base).named_parameters())
    after = dict(AutoModelForCausalLM.from_pretrained(tuned).named_parameters())
    changed = sum(int((after[name] != before[name]).sum()) for name in before)
    return changed / sum(p.numel() for p in before.values())


def aggregate(records: list[dict], methods: list[str]) -> list[dict]:
    rows = []
    for method in methods:
        runs = [r for r in records if r["method"] == method]
        if not runs:
            continue
        scores = [r["score"] for r in runs]
        rows.append({
            "method": method,
            "seeds": len(runs),
            "score_mean": statistics.fmean(scores),
            "score_std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
            "kept_fraction": _mean_or_none([r["kept_fraction"] for r in runs]),
            "updated_fraction": statistics.fmean(r["updated_fraction"] for r in runs),
            # median: a run that shared the machine with other work does not move it much
            "seconds": statistics.median(r["seconds"] for r in runs),
        })  # fmt: skip
    return rows


def _mean_or_none(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def markdown(rows: list[dict], header: str) -> str:
    columns = "| method | seeds | exact match (mean ± std) | kept per step | entries changed | wall time (median) |"
    lines = [header, "", columns, "|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row['method']} | {row['seeds']} | {100 * row['score_mean']:.1f} ± {100 * row['score_std']:.1f}% | "
            f"{_fraction(row['kept_fraction'])} | {row['updated_fraction']:.3f} | {row['seconds'] / 60:.1f} min |"
        )
    return "\n".join(lines) + "\n"


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    colors: dict[str, str] = {}  # one color per family (gmt-grad, random, ...), in the legend's order
    for row in rows:
        family = row["method"].split("-")[0] if not row["method"].startswith("gmt-") else "-".join(
            row["method"].split("-")[:2])  # fmt: skip
        color = colors.setdefault(family, f"C{len(colors) % 10}")
        axis.errorbar(row["updated_fraction"], 100 * row["score_mean"], yerr=100 * row["score_std"], fmt="o",
                      capsize=3, label=family, color=color)  # fmt: skip
        axis.annotate(row["method"], (row["updated_fraction"], 100 * row["score_mean"]), fontsize=7,
                      xytext=(4, 3), textcoords="offset points")  # fmt: skip
    handles, labels = axis.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    axis.legend(unique.values(), unique.keys(), fontsize=8)
    axis.set_xlabel("fraction of entries that differ from the base after training")
    axis.set_ylabel("tiny suite exact match (%)")
    axis.set_title("methods on the tiny recipe")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=None, choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument("--model", type=Path, default=Path(".cache/gmt-tiny/base"))
    parser.add_argument("--data", type=Path, default=Path(".cache/gmt-tiny/data/sft"))
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "compare")
    parser.add_argument("--max_steps", type=int, default=None, help="override the recipe's length")
    parser.add_argument("--eval_limit", type=int, default=None, help="score only the first N held-out problems")
    parser.add_argument("--smoke", action="store_true", help="1 seed, 2 methods, 5 steps, 8 problems")
    args = parser.parse_args()
    if args.smoke:
        args.methods = args.methods or list(SMOKE_METHODS)
        args.seeds = args.seeds or [0]
        args.max_steps = args.max_steps or 5
        args.eval_limit = args.eval_limit or 8
    methods = args.methods or list(METHODS)
    seeds = args.seeds if args.seeds is not None else [0, 1, 2]

    from tqdm import tqdm

    records = []
    jobs = [(method, seed) for seed in seeds for method in methods]  # every method's first seed comes first
    for method, seed in tqdm(jobs, desc="runs", unit="run"):
        run_dir = args.out / "runs" / method / f"seed{seed}"
        done = run_dir / "result.json"
        records.append(json.loads(done.read_text()) if done.is_file() else run_one(method, seed, args, run_dir))

    rows = aggregate(records, methods)
    command = "python scripts/compare.py " + " ".join(sys.argv[1:])
    total_minutes = sum(r["seconds"] for r in records) / 60
    header = (f"`{command.strip()}` ({len(records)} runs, {total_minutes:.0f} min of training and scoring on "
              f"{platform.machine()}, {os.cpu_count()} cores)")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.json").write_text(json.dumps({"command": command.strip(), "rows": rows, "runs": records},
                                                      indent=2))  # fmt: skip
    (args.out / "compare.md").write_text(markdown(rows, header))
    plot(rows, args.out / "compare.png")
    if not args.smoke and args.out.resolve() == (REPO / "docs" / "compare").resolve():
        image = "![score against the fraction of entries updated](docs/compare/compare.png)"
        replace_readme_section(START, END, f"{markdown(rows, header)}\n{image}\n")
    print(markdown(rows, header))


if __name__ == "__main__":
    main()
