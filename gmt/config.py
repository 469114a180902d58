"""Training configs: TRL's ``SFTConfig`` plus the mask settings, read from YAML and the CLI.

The mask fields live in one mixin, ``MaskArguments``, shared by every gmt trainer config, so a
setting means the same thing in SFT and DPO and is checked in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Real

from trl import DPOConfig, ScriptArguments, SFTConfig

from gmt.masking import GMT_MODES, SCOPES, STRATEGIES

MASKED_OPTIMIZERS = ("adamw_torch", "adamw_torch_fused")  # what gmt_mode 'update' can mask


@dataclass
class MaskArguments:
    """Parameters that control which gradient entries are updated at each optimizer step."""

    mask_strategy: str = field(
        default="gmt",
        metadata={
            "help": "How the entries to update are chosen. 'gmt': Gradient-Mask Tuning, the top-k |gradient| "
            "of the accumulated gradient at every step; baselines at the same ratio: 'random' (entries drawn at "
            "random) and 'magnitude' (largest |weight|); 'full': plain fine-tuning.",
            "choices": sorted(STRATEGIES),
        },
    )
    mask_ratio: float = field(
        default=0.2,
        metadata={
            "help": "Fraction of entries DROPPED in each scope, in [0, 1) (the GMT paper's meaning): a scope of n "
            "entries keeps n - floor(mask_ratio * n). 0 is plain fine-tuning, exactly."
        },
    )
    mask_scope: str = field(
        default="global",
        metadata={
            "help": "What one top-k runs over: 'global' (all trainable entries), 'tensor' (each parameter on "
            "its own) or 'layer' (each transformer block; embedding and head are blocks of their own).",
            "choices": list(SCOPES),
        },
    )
    gmt_mode: str = field(
        default="grad",
        metadata={
            "help": "'grad' (the paper): dropped gradient entries are zeroed, AdamW runs as usual, so momentum "
            "and weight decay still move them. 'update': a dropped entry does not change at all in that step "
            "(no update, no decay, Adam moments untouched); needs optim adamw_torch or adamw_torch_fused.",
            "choices": list(GMT_MODES),
        },
    )
    random_fixed: bool = field(
        default=False,
        metadata={
            "help": "mask_strategy 'random' only: draw the mask once and keep it (default: a fresh one every step)."
        },
    )
    mask_start_step: int = field(
        default=0,
        metadata={"help": "Optimizer steps of full updates before masking starts (0: mask from the first step)."},
    )

    def __post_init__(self) -> None:
        validate_mask_arguments(self)
        super().__post_init__()  # type: ignore[misc]
        if self.gmt_mode == "update" and self.mask_strategy != "full":
            optim = getattr(self.optim, "value", self.optim)
            if optim not in MASKED_OPTIMIZERS:
                raise ValueError(
                    f"gmt_mode 'update' needs a masked optimizer; optim must be one of {MASKED_OPTIMIZERS}, got "
                    f"{optim!r}. Use gmt_mode 'grad' to mask only the gradient with any optimizer."
                )


def validate_mask_arguments(args: MaskArguments) -> None:
    """Refuse bad mask settings before anything is built, naming the setting."""
    if args.mask_strategy not in STRATEGIES:
        raise ValueError(f"mask_strategy must be one of {sorted(STRATEGIES)}, got {args.mask_strategy!r}")
    ratio = args.mask_ratio
    if isinstance(ratio, bool) or not isinstance(ratio, Real):
        raise ValueError(f"mask_ratio must be a number in [0, 1), got {ratio!r} ({type(ratio).__name__})")
    if not 0 <= ratio < 1:
        raise ValueError(f"mask_ratio must be in [0, 1) (the fraction of entries dropped), got {ratio!r}")
    if args.mask_scope not in SCOPES:
        raise ValueError(f"mask_scope must be one of {SCOPES}, got {args.mask_scope!r}")
    if args.gmt_mode not in GMT_MODES:
        raise ValueError(f"gmt_mode must be one of {GMT_MODES}, got {args.gmt_mode!r}")
    if args.random_fixed and args.mask_strategy != "random":
        raise ValueError(
            f"random_fixed applies to mask_strategy 'random' only; mask_strategy is {args.mask_strategy!r}"
        )
    start = args.mask_start_step
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"mask_start_step must be an integer >= 0, got {start!r}")


@dataclass
class GMTSFTConfig(MaskArguments, SFTConfig):
    """``trl.SFTConfig`` with the mask settings of ``MaskArguments``."""


@dataclass
class GMTDPOConfig(MaskArguments, DPOConfig):
    """``trl.DPOConfig`` with the mask settings of ``MaskArguments``."""


@dataclass
class GMTScriptArguments(ScriptArguments):
    """TRL's ``ScriptArguments`` plus a column mapping for data sets in other layouts."""

    dataset_column_map: str | None = field(
        default=None,
        metadata={
            "help": "Rename data set columns before training, as 'old:new,old:new'; e.g. "
            "'query:prompt,response:completion' turns MetaMathQA into TRL's prompt/completion layout."
        },
    )
