"""The masking core: plain torch, no TRL import, testable on tensors."""

from gmt.masking.engines import GradientAccess, LocalGradientAccess
from gmt.masking.masker import GMT_MODES, GradientMasker
from gmt.masking.optim import MaskedAdamW
from gmt.masking.scopes import SCOPES, layer_name, scope_groups
from gmt.masking.strategies import (
    STRATEGIES,
    FullStrategy,
    GMTStrategy,
    MaskSelection,
    MaskStrategy,
    ParamLayout,
    build_strategy,
)
from gmt.masking.threshold import NonFiniteGradientError, keep_count, topk_thresholds

__all__ = [
    "GMT_MODES",
    "SCOPES",
    "STRATEGIES",
    "FullStrategy",
    "GMTStrategy",
    "GradientAccess",
    "GradientMasker",
    "LocalGradientAccess",
    "MaskSelection",
    "MaskStrategy",
    "MaskedAdamW",
    "NonFiniteGradientError",
    "ParamLayout",
    "build_strategy",
    "keep_count",
    "layer_name",
    "scope_groups",
    "topk_thresholds",
]
