"""The masking core: plain torch, no TRL import, testable on tensors (docs/design.md maps it)."""

from gmt.masking.base import (
    AllReduce,
    GradientAccess,
    MaskSelection,
    MaskStrategy,
    ParamLayout,
    keep_count,
    local_shard,
)
from gmt.masking.engines import LocalGradientAccess
from gmt.masking.finite import NonFiniteGradientError, check_finite
from gmt.masking.masker import GradientMasker
from gmt.masking.optim import MaskedAdamW
from gmt.masking.options import COMMON_OPTIONS, Option
from gmt.masking.prepare import (
    freeze_parameters,
    masking_optimizer,
    optimizer_requirement,
    scale_dense_phase,
    unwrap_optimizer,
)
from gmt.masking.registry import (
    STRATEGIES,
    build_strategy,
    effective_frozen_params,
    register_strategy,
    resolve_strategy_options,
    strategy_class,
)
from gmt.masking.scopes import SCOPES, layer_name, scope_groups
from gmt.masking.search import ThresholdSearch, topk_thresholds
from gmt.masking.sparse_optim import SparseMaskedAdamW
from gmt.masking.step import MaskedStep, MaskNotAppliedError
from gmt.masking.strategies.fixed import FixedMaskStrategy
from gmt.masking.strategies.full import FullStrategy
from gmt.masking.strategies.gps import GPSStrategy
from gmt.masking.strategies.gradient_mask import GMTStrategy
from gmt.masking.strategies.grft import GRFTStrategy
from gmt.masking.strategies.gspf import GSPFStrategy
from gmt.masking.strategies.magnitude import MagnitudeStrategy
from gmt.masking.strategies.random_mask import RandomStrategy
from gmt.masking.strategies.topk import GMT_MODES, TopKStrategy

__all__ = [
    "COMMON_OPTIONS",
    "GMT_MODES",
    "SCOPES",
    "STRATEGIES",
    "AllReduce",
    "FixedMaskStrategy",
    "FullStrategy",
    "GMTStrategy",
    "GPSStrategy",
    "GRFTStrategy",
    "GSPFStrategy",
    "GradientAccess",
    "GradientMasker",
    "LocalGradientAccess",
    "MagnitudeStrategy",
    "MaskNotAppliedError",
    "MaskSelection",
    "MaskStrategy",
    "MaskedAdamW",
    "MaskedStep",
    "NonFiniteGradientError",
    "Option",
    "ParamLayout",
    "RandomStrategy",
    "SparseMaskedAdamW",
    "ThresholdSearch",
    "TopKStrategy",
    "build_strategy",
    "check_finite",
    "effective_frozen_params",
    "freeze_parameters",
    "keep_count",
    "layer_name",
    "local_shard",
    "masking_optimizer",
    "optimizer_requirement",
    "register_strategy",
    "resolve_strategy_options",
    "scale_dense_phase",
    "scope_groups",
    "strategy_class",
    "topk_thresholds",
    "unwrap_optimizer",
]
