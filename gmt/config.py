"""Training configs: TRL's ``SFTConfig`` plus the mask settings, read from YAML and the CLI.

The mask fields live in one mixin, ``MaskArguments``, shared by every gmt trainer config, so a
setting means the same thing in SFT and DPO and is checked in one place.
"""

from __future__ import annotations

import math
import re
from dataclasses import MISSING, dataclass, field, fields
from numbers import Real

from trl import DPOConfig, ScriptArguments, SFTConfig

from gmt.masking import GMT_MODES, SCOPES, STRATEGIES

MASKED_OPTIMIZERS = ("adamw_torch", "adamw_torch_fused")  # what gmt_mode 'update' can mask
FIXED_MASK_STRATEGIES = ("gps", "grft", "gspf")
TOP_K_STRATEGIES = ("gmt", "random", "magnitude")

# Options that belong to some strategies only: giving one to another strategy is a mistake.
STRATEGY_OPTIONS = {
    "mask_ratio": TOP_K_STRATEGIES,
    "mask_scope": TOP_K_STRATEGIES,
    "gmt_mode": TOP_K_STRATEGIES,
    "random_fixed": ("random",),
    "selection_steps": ("gps", "grft"),
    "gps_k": ("gps",),
    "grft_k": ("grft",),
    "grft_axis": ("grft",),
    "grft_lambda": ("grft",),
    "gspf_keep_ratio": ("gspf",),
    "gspf_warmup_steps": ("gspf",),
    "gspf_reselect_every": ("gspf",),
    "gspf_alpha": ("gspf",),
}


@dataclass
class MaskArguments:
    """Parameters that control which gradient entries are updated at each optimizer step."""

    mask_strategy: str = field(
        default="gmt",
        metadata={
            "help": "How the entries to update are chosen. 'gmt': Gradient-Mask Tuning, the top-k |gradient| "
            "of the accumulated gradient at every step; baselines at the same ratio: 'random' (entries drawn at "
            "random) and 'magnitude' (largest |weight|); fixed masks chosen from gradient statistics: 'gps' "
            "(top gps_k inputs per neuron), 'grft' (top grft_k rows/columns per matrix, pulled to the pretrained "
            "weights), 'gspf' (global top gspf_keep_ratio by sensitivity); 'full': plain fine-tuning.",
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
    max_nonfinite_steps: int = field(
        default=3,
        metadata={
            "help": "Optimizer steps in a row whose accumulated gradient holds NaN or inf that are skipped (no "
            "update, mask state unchanged; counted in the logs as nonfinite_skipped_steps); one more stops the "
            "run with NonFiniteGradientError. 0: stop at the first."
        },
    )
    frozen_params: str | None = field(
        default=None,
        metadata={
            "help": "Regular expression (searched in parameter names) of parameters never trained, e.g. "
            "'embed_tokens|lm_head'. Default: the strategy's ('norm' for gps, 'norm|bias' for grft, none "
            "otherwise); '' freezes nothing."
        },
    )
    dense_params: str | None = field(
        default=None,
        metadata={
            "help": "Regular expression of parameters trained fully, never masked, e.g. 'lm_head'. Default: the "
            "strategy's ('bias' for gps, none otherwise); '' makes every parameter selectable. gps and grft "
            "also train every parameter that is not 2-D fully, unless frozen."
        },
    )
    selection_steps: int = field(
        default=1,
        metadata={
            "help": "gps/grft: optimizer steps at the start of training that only gather gradients (nothing is "
            "updated) to choose the mask; each sees gradient_accumulation_steps x processes batches. They count "
            "toward max_steps."
        },
    )
    gps_k: int = field(default=4, metadata={"help": "gps: input connections kept per output neuron (row)."})
    grft_k: int = field(default=2, metadata={"help": "grft: rows (or columns) kept per weight matrix."})
    grft_axis: str = field(
        default="row",
        metadata={"help": "grft: keep whole rows (output neurons) or columns (inputs).", "choices": ("row", "column")},
    )
    grft_lambda: float = field(
        default=1e-4,
        metadata={"help": "grft: strength of the lambda * sum ||W - W_pre||^2 pull to the pretrained weights (0 off)."},
    )
    gspf_keep_ratio: float = field(
        default=0.003, metadata={"help": "gspf: fraction of selectable entries kept (trained), in (0, 1]."}
    )
    gspf_warmup_steps: int = field(
        default=100,
        metadata={"help": "gspf: optimizer steps of full updates, recording |gradient|, before the first selection."},
    )
    gspf_reselect_every: int = field(
        default=0,
        metadata={
            "help": "gspf: reselect every this many steps after the first selection, while progress < 80% "
            "(0: never). Newly selected entries start with zero Adam moments."
        },
    )
    gspf_alpha: float = field(
        default=0.5, metadata={"help": "gspf: reselection EMA, scores = alpha * previous + (1 - alpha) * new."}
    )

    def __post_init__(self) -> None:
        validate_mask_arguments(self)
        super().__post_init__()  # type: ignore[misc]
        optim = getattr(self.optim, "value", self.optim)
        if self.mask_strategy in FIXED_MASK_STRATEGIES and optim not in MASKED_OPTIMIZERS:
            raise ValueError(
                f"mask_strategy {self.mask_strategy!r} trains a fixed subset with a sparse-state AdamW; optim must be "
                f"one of {MASKED_OPTIMIZERS}, got {optim!r}."
            )
        if self.gmt_mode == "update" and self.mask_strategy != "full" and optim not in MASKED_OPTIMIZERS:
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
    defaults = {f.name: f.default for f in fields(MaskArguments) if f.default is not MISSING}
    for option, strategies in STRATEGY_OPTIONS.items():
        value = getattr(args, option)
        if value != defaults[option] and args.mask_strategy not in strategies:
            raise ValueError(
                f"{option} applies to mask_strategy {' or '.join(map(repr, strategies))} only; mask_strategy is "
                f"{args.mask_strategy!r}"
            )
    _check_int(args, "mask_start_step", 0)
    _check_int(args, "max_nonfinite_steps", 0)
    _check_int(args, "selection_steps", 1)
    _check_int(args, "gps_k", 1)
    _check_int(args, "grft_k", 1)
    _check_int(args, "gspf_warmup_steps", 0)
    _check_int(args, "gspf_reselect_every", 0)
    if args.grft_axis not in ("row", "column"):
        raise ValueError(f"grft_axis must be 'row' or 'column', got {args.grft_axis!r}")
    _check_number(args, "grft_lambda", 0, math.inf, "[0, inf)")
    _check_number(args, "gspf_keep_ratio", 0, 1, "(0, 1]", low_open=True)
    _check_number(args, "gspf_alpha", 0, 1, "[0, 1]")
    for option in ("frozen_params", "dense_params"):
        pattern = getattr(args, option)
        if pattern is None:
            continue
        try:
            re.compile(pattern)
        except (re.error, TypeError) as error:
            raise ValueError(f"{option} must be a regular expression, got {pattern!r}: {error}") from None


def _check_int(args: MaskArguments, option: str, minimum: int) -> None:
    value = getattr(args, option)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{option} must be an integer >= {minimum}, got {value!r}")


def _check_number(
    args: MaskArguments, option: str, low: float, high: float, interval: str, low_open: bool = False
) -> None:
    value = getattr(args, option)
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{option} must be a finite number in {interval}, got {value!r}")
    if value < low or value > high or (low_open and value == low):
        raise ValueError(f"{option} must be in {interval}, got {value!r}")


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
    eval_suite: str | None = field(
        default=None,
        metadata={
            "help": "After training, score the saved model with this lm-eval suite (code, math, general or tiny; "
            "see eval/) and write the results to <output_dir>/eval. The code suite runs model-written code and "
            "is refused here: run eval/run.py --allow_code_execution yourself.",
            "choices": ("code", "math", "general", "tiny"),
        },
    )
    eval_limit: int | None = field(
        default=None, metadata={"help": "eval_suite: score only the first N examples of each task."}
    )
