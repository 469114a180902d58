"""Learning rates: the half-decade ladder a sweep's grid sits on, the grid each method starts from,
and the rate a sweep chose."""

from __future__ import annotations

import json
import math
from pathlib import Path

from gmt.resources import PACKAGE

# Each method's usual learning rate as a multiple of full fine-tuning's: what won its sweep on the
# tiny word problems (docs/compare/sweep.json), the centre of its grid on another recipe.
USUAL_MULTIPLES_FROM = PACKAGE / "compare" / "tiny_sweep.json"  # a link to docs/compare/sweep.json in a clone

SWEEP_SHARE = 1 / 3  # a sweep run's length, as a share of the recipe's (--sweep_steps)


def sweep_steps_for(total_steps: int) -> int:
    """A sweep run's default length: a third of the recipe's, to 2 significant figures."""
    steps = total_steps * SWEEP_SHARE
    return max(1, int(float(f"{steps:.2g}")))


def usual_multiples(sweep_file: Path = USUAL_MULTIPLES_FROM) -> dict[str, float]:
    """Each method's winning rate over full fine-tuning's in a finished sweep (``sweep.json``)."""
    if not sweep_file.is_file():
        return {}
    sweeps = json.loads(sweep_file.read_text())["sweeps"]
    if "full" not in sweeps:
        return {}
    full = best_rate(sweeps["full"])
    return {method: best_rate(records) / full for method, records in sweeps.items()}


def ladder(place: int) -> float:
    """The ``place``-th step of the ladder ..., 0.3, 1, 3, 10, 30, ... (place 0 is 1, 1 is 3, 2 is 10)."""
    return normal_rate((1 if place % 2 == 0 else 3) * 10.0 ** (place // 2))


def ladder_place(value: float) -> int:
    """The ladder step ``value`` is nearest to (half-decades in log scale)."""
    return round(2 * math.log10(value))


def normal_rate(rate: float) -> float:
    """``rate`` to 6 significant figures (as its run's folder is named), so that the same rate
    reached two ways compares equal."""
    return float(f"{rate:.6g}")


def best_rate(records: list[dict]) -> float | None:
    """The rate with the best validation score (ties: the lower rate); None when every run failed."""
    scored = [record for record in records if not failed(record)]
    if not scored:
        return None
    return min(scored, key=lambda record: (-record["score"], record["learning_rate"]))["learning_rate"]


def failed(record: dict) -> bool:
    """Whether ``record`` is of a run that failed (``failed.json``; it is tried again next time)."""
    return "failed" in record


def half_decade(rate: float, steps: int) -> float:
    """The rate ``steps`` places away on the ladder 1e-3, 3e-3, 1e-2, ... (``rate`` snapped onto it)."""
    return ladder(ladder_place(rate) + steps)


def sweep_grid(method: str, base_rate: float, factors: list[float] | None, multiples: dict[str, float],
               around: dict[str, list[dict]] | None) -> list[float]:  # fmt: skip
    """The rates a method's sweep starts from: another task's winner and one half-decade either
    side (``--sweep_around``); ``base_rate × factors``; or ``base_rate`` times the method's usual
    multiple, snapped onto the ladder 1, 3, 10, ... of ``base_rate``, and one step either side."""
    if around is not None and method in around:
        best = best_rate(around[method])
        return [half_decade(best, -1), half_decade(best, 0), half_decade(best, 1)]
    if factors is not None:
        return [normal_rate(base_rate * factor) for factor in factors]
    place = ladder_place(multiples.get(method, 1.0))
    return [normal_rate(base_rate * ladder(place + step)) for step in (-1, 0, 1)]
