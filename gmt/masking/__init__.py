"""The masking core: plain torch, no TRL import, testable on tensors."""

from gmt.masking.engines import GradientAccess, LocalGradientAccess
from gmt.masking.fixed import FixedMaskStrategy, GPSStrategy, GRFTStrategy, GSPFStrategy
from gmt.masking.masker import GMT_MODES, GradientMasker
from gmt.masking.optim import MaskedAdamW
from gmt.masking.registry import STRATEGIES, build_strategy, default_dense_params, default_frozen_params
from gmt.masking.scopes import SCOPES, layer_name, scope_groups
from gmt.masking.sparse_optim import SparseMaskedAdamW
from gmt.masking.strategies import FullStrategy, GMTStrategy, MaskSelection, MaskStrategy, ParamLayout
from gmt.masking.threshold import NonFiniteGradientError, keep_count, topk_thresholds

__all__ = [
    "GMT_MODES",
    "SCOPES",
    "STRATEGIES",
    "FixedMaskStrategy",
    "FullStrategy",
    "GPSStrategy",
    "GRFTStrategy",
    "GSPFStrategy",
    "GMTStrategy",
    "GradientAccess",
    "GradientMasker",
    "LocalGradientAccess",
    "MaskSelection",
    "MaskStrategy",
    "MaskedAdamW",
    "NonFiniteGradientError",
    "ParamLayout",
    "SparseMaskedAdamW",
    "build_strategy",
    "default_dense_params",
    "default_frozen_params",
    "keep_count",
    "layer_name",
    "scope_groups",
    "topk_thresholds",
]
