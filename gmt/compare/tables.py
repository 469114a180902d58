"""The comparison's tables: final runs aggregated per method, the sweep, the learning curves."""

from __future__ import annotations

import statistics

from gmt.compare.methods import FIXED_MASK, RATIOS
from gmt.compare.rates import best_rate, failed


def aggregate(records: list[dict], chosen: list[str], methods: dict[str, tuple[str, ...]]) -> list[dict]:
    """One row per method of ``chosen``: its final runs' mean and spread, and what they measured."""
    rows = []
    for method in chosen:
        runs = [r for r in records if r["method"] == method and not failed(r)]
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
            "kept_fraction": None if "--use_peft" in methods[method] else _mean_or_none(
                [r["kept_fraction"] for r in runs]),
            "updated_fraction": statistics.fmean(r["updated_fraction"] for r in runs),
            "equations": _mean_or_none([r.get("equations_score") for r in runs]),
            "optimizer_state_bytes": _mean_or_none([r.get("optimizer_state_bytes") for r in runs]),
            "sync_vs_dense": _mean_or_none([(r.get("step_delta") or {}).get("bytes_vs_dense") for r in runs]),
            "curve": next((r["curve"] for r in runs if r["seed"] == 0 and r.get("curve")), None),
            # median: a run that shared the machine with other work does not move it much
            "seconds": statistics.median(r["seconds"] for r in runs),
        })  # fmt: skip
    return rows


def _sync(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _mean_or_none(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def forgetting_name(suite: str | None) -> str:
    """What the forgetting column measures, as the tables name it."""
    return "pretraining equations" if suite in (None, "tiny_equations") else f"{suite} (forgetting probe)"


def markdown(rows: list[dict], header: str, base_equations: float | None = None,
             score_name: str = "exact match", forgetting: str = forgetting_name(None)) -> str:
    """The final table: a row per method, its rate and memory relative to full fine-tuning's."""
    full = next((row for row in rows if row["method"] == "full"), None)
    base = "" if base_equations is None else f" (base {100 * base_equations:.1f}%)"
    # runs that took step deltas (step_delta_every) say what a sync of each step's changes sends
    syncs = any(row.get("sync_vs_dense") is not None for row in rows)
    columns = (f"| method | learning rate (× full's) | seeds | {score_name} (mean ± std) | {forgetting}"
               f"{base} | optimizer state (× full's) | kept per step | entries changed |"
               + (" sync a step (× dense) |" if syncs else "") + " wall time (median) |")
    lines = [header, "", columns, "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if syncs else "") + "---:|"]
    for row in rows:
        equations = "-" if row.get("equations") is None else f"{100 * row['equations']:.1f}%"
        rate = f"{row['learning_rate']:g}" + (f" ({row['learning_rate'] / full['learning_rate']:.3g}×)" if full else "")
        state = row.get("optimizer_state_bytes")
        memory = "-" if state is None else f"{state / 2**20:.2f} MiB" + (
            f" ({state / full['optimizer_state_bytes']:.3f}×)" if full and full.get("optimizer_state_bytes") else "")
        lines.append(
            f"| {row['method']} | {rate} | {row['seeds']} | {100 * row['score_mean']:.1f} ± "
            f"{100 * row['score_std']:.1f}% | {equations} | {memory} | {_fraction(row['kept_fraction'])} | "
            f"{row['updated_fraction']:.3f} | " + (f"{_sync(row.get('sync_vs_dense'))} | " if syncs else "")
            + f"{row['seconds'] / 60:.1f} min |"
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


def sweep_markdown(sweeps: dict[str, list[dict]], header: str) -> str:
    """Validation score by learning rate, a row per method, its best rate in bold."""
    rates = sorted({record["learning_rate"] for records in sweeps.values() for record in records})
    lines = [header, "", "| method | " + " | ".join(f"{rate:g}" for rate in rates) + " | best |",
             "|---|" + "---:|" * (len(rates) + 1)]  # fmt: skip
    for method, records in sweeps.items():
        by_rate = {record["learning_rate"]: shown(record) for record in records}
        best = best_rate(records)
        cells = [("-" if rate not in by_rate else f"**{by_rate[rate]}**" if rate == best else by_rate[rate])
                 for rate in rates]  # fmt: skip
        best_text = "every run failed" if best is None else f"{best:g}"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {best_text} |")
    return "\n".join(lines) + "\n"


def shown(record: dict) -> str:
    """A sweep run's score as the sweep table shows it: a percentage, or the validation loss."""
    if failed(record):
        return "failed"
    if record.get("metric") == "eval_loss":
        return f"{-record['score']:.4f}"
    return f"{100 * record['score']:.1f}"


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
