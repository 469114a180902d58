"""Every strategy by its ``mask_strategy`` name, and how the settings build one."""

from __future__ import annotations

from gmt.masking.fixed import GPSStrategy, GRFTStrategy, GSPFStrategy
from gmt.masking.strategies import FullStrategy, GMTStrategy, MagnitudeStrategy, MaskStrategy, RandomStrategy

STRATEGIES: dict[str, type[MaskStrategy]] = {
    cls.name: cls
    for cls in (
        GMTStrategy,
        FullStrategy,
        RandomStrategy,
        MagnitudeStrategy,
        GPSStrategy,
        GRFTStrategy,
        GSPFStrategy,
    )
}

# Which parameters each strategy leaves out (frozen) or trains fully (dense) unless the user says
# otherwise; regular expressions searched in parameter names. GPS (authors' code): norms frozen,
# biases fully trainable. GRFT regularizes and selects weight matrices only: norms and biases frozen.
DEFAULT_FROZEN_PARAMS = {"gps": "norm", "grft": "norm|bias"}
DEFAULT_DENSE_PARAMS = {"gps": "bias"}


def default_frozen_params(mask_strategy: str) -> str:
    """The ``frozen_params`` pattern a strategy uses when the user gives none ("" = nothing)."""
    return DEFAULT_FROZEN_PARAMS.get(mask_strategy, "")


def default_dense_params(mask_strategy: str) -> str:
    """The ``dense_params`` pattern a strategy uses when the user gives none ("" = nothing)."""
    return DEFAULT_DENSE_PARAMS.get(mask_strategy, "")


def build_strategy(
    mask_strategy: str,
    mask_ratio: float = 0.0,
    mask_scope: str = "global",
    random_fixed: bool = False,
    seed: int = 0,
    dense_params: str | None = None,
    selection_steps: int = 1,
    gps_k: int = 4,
    grft_k: int = 2,
    grft_axis: str = "row",
    grft_lambda: float = 0.0,
    gspf_keep_ratio: float = 0.003,
    gspf_warmup_steps: int = 10,
    gspf_reselect_every: int = 0,
    gspf_alpha: float = 0.5,
    total_steps: int = 0,
) -> MaskStrategy:
    """Construct the strategy named by the ``mask_strategy`` setting from the mask settings.

    ``dense_params`` None takes the strategy's default; ``total_steps`` (the run's optimizer
    steps) places gspf's reselections.
    """
    if mask_strategy not in STRATEGIES:
        raise ValueError(f"mask_strategy must be one of {sorted(STRATEGIES)}, got {mask_strategy!r}")
    dense = default_dense_params(mask_strategy) if dense_params is None else dense_params
    if mask_strategy == "gmt":
        return GMTStrategy(mask_ratio, mask_scope, dense)
    if mask_strategy == "random":
        return RandomStrategy(mask_ratio, mask_scope, fixed=random_fixed, seed=seed, dense_params=dense)
    if mask_strategy == "magnitude":
        return MagnitudeStrategy(mask_ratio, mask_scope, dense)
    if mask_strategy == "gps":
        return GPSStrategy(gps_k, selection_steps, dense)
    if mask_strategy == "grft":
        return GRFTStrategy(grft_k, grft_axis, grft_lambda, selection_steps, dense)
    if mask_strategy == "gspf":
        return GSPFStrategy(gspf_keep_ratio, gspf_warmup_steps, total_steps, gspf_reselect_every, gspf_alpha, dense)
    return FullStrategy()
