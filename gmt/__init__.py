"""gmt: gradient-masked fine-tuning on TRL. A TRL user switches with one import:

    from gmt import GMTSFTConfig, GMTSFTTrainer      # for trl's SFTConfig, SFTTrainer
    from gmt import GMTDPOConfig, GMTDPOTrainer      # for trl's DPOConfig, DPOTrainer
    from gmt import GMTGRPOConfig, GMTGRPOTrainer    # for trl's GRPOConfig, GRPOTrainer (Python API)

The names load on first use, so ``import gmt.masking`` (plain torch) never imports TRL.
"""

from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "GMTSFTConfig": "gmt.config",
    "GMTDPOConfig": "gmt.config",
    "GMTScriptArguments": "gmt.config",
    "GMTSFTTrainer": "gmt.trainer",
    "GMTDPOTrainer": "gmt.trainer",
    "GMTGRPOConfig": "gmt.config",
    "GMTGRPOTrainer": "gmt.trainer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'gmt' has no attribute {name!r}")
