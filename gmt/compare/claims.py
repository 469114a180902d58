"""The comparison's answers from final tables: which method to start from for a memory budget, and
the papers' claims judged by fixed rules (docs/comparison.md).

Rules (fixed before the runs; every number is a mean over the final seeds):

- "A ≥ B" holds when A's mean is at least B's; a gap smaller than the larger of the two seed
  standard deviations is "within noise" (either way).
- mask scope: another scope replaces the default (global) only where it beats global by at least
  that noise on every task.
- "insensitive to the ratio": gmt's spread over its ratios is within the largest seed std among them.
- "near full fine-tuning": at least 90% of full fine-tuning's score.
"""

from __future__ import annotations

import math
import statistics

from gmt.compare.methods import FIXED_MASK
from gmt.compare.methods import RATIOS as COMPARED_RATIOS
from gmt.compare.rates import best_rate

RATIOS = tuple(str(ratio) for ratio in COMPARED_RATIOS)  # gmt's and random's, as in compare.py's method names

NEAR_FULL = 0.9  # "near full fine-tuning": this share of its score


def seed_noise(a: dict, b: dict) -> float:
    """The noise a gap between two methods' means is judged against: the larger seed std."""
    return max(a["score_std"], b["score_std"])


def versus(a: dict, b: dict) -> str:
    """"A ≥ B" by the rule above, with the numbers."""
    gap = a["score_mean"] - b["score_mean"]
    noise = seed_noise(a, b)
    verdict = ("holds" if gap >= noise else "holds, within noise" if gap >= 0 else "within noise" if -gap < noise
               else "does not hold")  # fmt: skip
    return (f"{verdict}: {100 * a['score_mean']:.1f} vs {100 * b['score_mean']:.1f}% "
            f"({100 * gap:+.1f} points, seed std up to {100 * noise:.1f})")  # fmt: skip


def claims(tasks: dict[str, dict[str, dict]]) -> str:
    """A table: each claim, per task, measured and judged by the rules above."""
    lines = ["| claim | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]

    def row(claim: str, judge) -> None:
        cells = []
        for rows in tasks.values():
            try:
                cells.append(judge(rows))
            except KeyError as missing:  # a method this task's comparison did not run
                cells.append(f"not run ({missing.args[0]})")
        lines.append(f"| {claim} | " + " | ".join(cells) + " |")

    def best_gmt(rows: dict[str, dict]) -> dict:
        present = [rows[f"gmt-grad-{ratio}"] for ratio in RATIOS if f"gmt-grad-{ratio}" in rows]
        if not present:
            raise KeyError("gmt-grad")
        return max(present, key=lambda r: r["score_mean"])

    row("GMT ≥ full SFT (gmt's best ratio)",
        lambda rows: f"{best_gmt(rows)['method']}: " + versus(best_gmt(rows), rows["full"]))  # fmt: skip
    for ratio in RATIOS:
        row(f"gradient-chosen ≥ random at ratio {ratio}",
            lambda rows, ratio=ratio: versus(rows[f"gmt-grad-{ratio}"], rows[f"random-{ratio}"]))  # fmt: skip
    # update mode, each step changing only the kept entries (the RL methods): where a task ran a pair
    update_ratios = sorted({ratio for rows in tasks.values() for name in rows if name.startswith("gmt-update-")
                            and f"random-update-{(ratio := name.removeprefix('gmt-update-'))}" in rows})  # fmt: skip
    for ratio in update_ratios:
        row(f"gradient-chosen ≥ random at ratio {ratio}, update mode",
            lambda rows, ratio=ratio: versus(rows[f"gmt-update-{ratio}"], rows[f"random-update-{ratio}"]))  # fmt: skip

    def insensitive(rows: dict[str, dict]) -> str:
        gmt = [rows[f"gmt-grad-{ratio}"] for ratio in RATIOS]
        spread = max(r["score_mean"] for r in gmt) - min(r["score_mean"] for r in gmt)
        noise = max(r["score_std"] for r in gmt)
        scores = ", ".join(f"{100 * r['score_mean']:.1f}" for r in gmt)
        return (f"{'holds' if spread <= noise else 'does not hold'}: {scores}% at ratios {', '.join(RATIOS)} "
                f"(spread {100 * spread:.1f} points, seed std up to {100 * noise:.1f})")  # fmt: skip

    row("GMT insensitive to the mask ratio", insensitive)
    for method in FIXED_MASK:
        def near(rows: dict[str, dict], method: str = method) -> str:
            share = rows[method]["score_mean"] / rows["full"]["score_mean"]
            changed = rows[method]["updated_fraction"]
            kept = rows[method]["kept_fraction"]
            failed = [reason for reason, fails in ((f"below {100 * NEAR_FULL:.0f}% of full's", share < NEAR_FULL),
                                                   ("trains more than 10%", kept > 0.1)) if fails]  # fmt: skip
            verdict = f"does not hold ({' and '.join(failed)})" if failed else "holds"
            return (f"{verdict}: {100 * rows[method]['score_mean']:.1f}% = {100 * share:.0f}% of full's, "
                    f"training {100 * kept:.1f}% of the entries per step ({100 * changed:.1f}% changed in all)")

        row(f"{method} near full fine-tuning with ≤ 10% of the entries", near)

    def scope(rows: dict[str, dict]) -> str:
        # the scopes this task ran (the second task runs tensor only); global and one other at least
        others = {s: rows[f"gmt-grad-0.5-{s}"] for s in ("tensor", "layer") if f"gmt-grad-0.5-{s}" in rows}
        if not others:
            raise KeyError("gmt-grad-0.5-tensor")
        scopes = {"global": rows["gmt-grad-0.5"], **others}
        best = max(scopes, key=lambda s: scopes[s]["score_mean"])
        scores = ", ".join(f"{s} {100 * r['score_mean']:.1f} ± {100 * r['score_std']:.1f}%" for s, r in scopes.items())
        gap = scopes[best]["score_mean"] - scopes["global"]["score_mean"]
        clearly = best != "global" and gap >= seed_noise(scopes[best], scopes["global"])
        return (f"{best + ' beats global beyond noise' if clearly else 'global is not beaten beyond noise'} "
                f"({scores})")  # fmt: skip

    row("mask scope at ratio 0.5 (default: global)", scope)
    return "\n".join(lines) + "\n"


def lr_scale_table(sweeps: dict[str, dict]) -> str:
    """The learning rate that won each method's sweep, as a multiple of full fine-tuning's, per task."""
    methods = list(dict.fromkeys(method for sweep in sweeps.values() for method in sweep["sweeps"]))
    lines = ["| method | " + " | ".join(sweeps) + " |", "|---|" + "---:|" * len(sweeps)]
    for method in methods:
        cells = []
        for sweep in sweeps.values():
            if method not in sweep["sweeps"] or "full" not in sweep["sweeps"]:
                cells.append("-")
                continue
            rate, full = best_rate(sweep["sweeps"][method]), best_rate(sweep["sweeps"]["full"])
            cells.append(f"{rate:g} ({rate / full:.3g}× full's)")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def frontier(tasks: dict[str, dict[str, dict]]) -> list[tuple[str, float, float]]:
    """The methods that beat every method with a smaller optimizer state (mean test score over the
    tasks that ran every method; state as a share of full AdamW's, the largest over the tasks),
    smallest state first, as (method, state share, score). A tie goes to the smaller state."""
    methods = set.intersection(*(set(rows) for rows in tasks.values()))

    def state_share(method: str) -> float:
        return max(rows[method]["optimizer_state_bytes"] / rows["full"]["optimizer_state_bytes"]
                   for rows in tasks.values())  # fmt: skip

    def score(method: str) -> float:
        return statistics.fmean(rows[method]["score_mean"] for rows in tasks.values())

    chosen, best_so_far = [], -math.inf
    for method in sorted(methods, key=lambda m: (state_share(m), -score(m), m)):
        if score(method) > best_so_far:
            best_so_far = score(method)
            chosen.append((method, state_share(method), score(method)))
    return chosen


def recommendations(tasks: dict[str, dict[str, dict]]) -> str:
    """Which method to start from for a memory budget (``frontier``), with its learning rate as a
    multiple of full fine-tuning's."""
    lines = ["| optimizer state (× full AdamW's) | start from | mean test score over the tasks | "
             "its learning rate, × full's |", "|---:|---|---:|---|"]  # fmt: skip
    for method, share, score in frontier(tasks):
        scales = ", ".join(f"{rows[method]['learning_rate'] / rows['full']['learning_rate']:.3g}×"
                           for rows in tasks.values())  # fmt: skip
        lines.append(f"| {share:.3g} | {method} | {100 * score:.1f}% | {scales} |")
    return "\n".join(lines) + "\n"
