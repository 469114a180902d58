"""The comparison's pictures: score against memory, entries changed and forgetting; the sweep; the
learning curves; GRPO's reward curves."""

from __future__ import annotations

from pathlib import Path

from gmt.compare.rates import failed
from gmt.compare.tables import curve_methods, forgetting_name, shown


def plot(rows: list[dict], path: Path, base_equations: float | None = None,
         forgetting: str = forgetting_name(None), score_name: str = "test exact match") -> None:
    """Each method's test score (mean ± std over seeds) against its optimizer-state memory, against
    the fraction of entries it changed, and against what it kept of the base's pretraining task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("optimizer_state_bytes", "optimizer state (MiB, log scale)", 1 / 2**20),
              ("updated_fraction", "fraction of entries that differ from the base", 1.0),
              ("equations", f"{forgetting}: still solved (%)", 100.0)]  # fmt: skip
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
    axes[0].set_ylabel(f"{score_name} (%)")
    figure.suptitle("each method at its best validation learning rate")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_sweep(sweeps: dict[str, list[dict]], path: Path) -> None:
    """Validation score against the learning rate, a line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for index, (method, records) in enumerate(sweeps.items()):
        records = [record for record in records if not failed(record)]
        axis.plot([r["learning_rate"] for r in records], [float(shown(r)) for r in records], marker="o",
                  label=method, color=f"C{index % 10}", linestyle="-" if index < 10 else "--")  # fmt: skip
    axis.set_xscale("log")
    axis.set_xlabel("learning rate")
    loss = any(r.get("metric") == "eval_loss" for records in sweeps.values() for r in records)
    axis.set_ylabel("validation loss" if loss else "validation score (%)")
    axis.set_title("learning-rate sweep (seed 0, validation rows)")
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _line_figure():
    """A figure for lines over optimizer steps (matplotlib without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 4.5))


def _save_lines(figure, axis, path: Path, xlabel: str, ylabel: str, title: str, legend_size: int) -> None:
    import matplotlib.pyplot as plt

    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.legend(fontsize=legend_size)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_curves(rows: list[dict], path: Path) -> None:
    """Test score against the step, at each saved checkpoint of the seed-0 final runs."""
    by_method = {row["method"]: row for row in rows}
    figure, axis = _line_figure()
    for index, method in enumerate(curve_methods(rows)):
        curve = by_method[method]["curve"]
        axis.plot([p["step"] for p in curve], [100 * p["score"] for p in curve], marker="o", label=method,
                  color=f"C{index}")  # fmt: skip
    _save_lines(figure, axis, path, "optimizer step (checkpoints of one run, seed 0)", "test exact match (%)",
                "learning curves, each method at its best validation rate", 8)  # fmt: skip


def plot_rewards(records: list[dict], path: Path) -> None:
    """GRPO's mean reward at each logging step of every final run (one colour per method, a line
    style per seed): what the policy earned while it trained."""
    runs = [record for record in records if record.get("rewards") and not failed(record)]
    methods = list(dict.fromkeys(record["method"] for record in runs))
    figure, axis = _line_figure()
    for record in runs:
        index = methods.index(record["method"])
        axis.plot([p["step"] for p in record["rewards"]], [p["reward"] for p in record["rewards"]],
                  color=f"C{index}", linestyle=("-", "--", ":")[record["seed"] % 3],
                  label=f"{record['method']} seed {record['seed']}")  # fmt: skip
    _save_lines(figure, axis, path, "optimizer step", "mean reward of the step's completions",
                "GRPO rewards while training, each method at its best validation rate", 7)  # fmt: skip
