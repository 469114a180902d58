"""The methods a comparison knows, as overrides of the recipe, and the budgets that depend on the model."""

from __future__ import annotations

import shlex
import sys

RATIOS = (0.2, 0.5, 0.8)
RL_RATIO = 0.97  # the ratio of the RL methods: 3% kept, in the 1-5% RL updates touch

# Method name -> overrides of the recipe. gps and grft get their budgets from the model at hand
# (fixed_mask_budgets); gspf's keep ratio is a share of the model already.
METHODS: dict[str, tuple[str, ...]] = {
    "full": ("--mask_strategy", "full"),
    **{f"gmt-grad-{r}": ("--mask_strategy", "gmt", "--mask_ratio", str(r), "--gmt_mode", "grad") for r in RATIOS},
    # update mode (mask on the optimizer's update) at the middle ratio: does it differ from grad mode?
    "gmt-update-0.5": ("--mask_strategy", "gmt", "--mask_ratio", "0.5", "--gmt_mode", "update"),
    # RL (GRPO): update mode keeping 3%, each step changing only its kept entries (a small weight sync),
    # and random at the same density the same way: the bar a gradient-chosen mask has to clear in RL
    **{f"{strategy}-update-{RL_RATIO}": ("--mask_strategy", strategy, "--mask_ratio", str(RL_RATIO), "--gmt_mode",
                                         "update") for strategy in ("gmt", "random")},  # fmt: skip
    **{f"random-{r}": ("--mask_strategy", "random", "--mask_ratio", str(r)) for r in RATIOS},
    "gps": ("--mask_strategy", "gps"),
    "grft": ("--mask_strategy", "grft"),
    "gspf": ("--mask_strategy", "gspf", "--gspf_keep_ratio", "0.05", "--gspf_warmup_steps", "25"),
    # gspf whose dense warm-up runs at full fine-tuning's best rate (dense_phase_learning_rate), the
    # swept rate being that of its sparse phase only
    "gspf-dense-lr": ("--mask_strategy", "gspf", "--gspf_keep_ratio", "0.05", "--gspf_warmup_steps", "25"),
    # gmt at one ratio with the other two scopes (the default is global: one top-k over everything).
    **{f"gmt-grad-0.5-{scope}": ("--mask_strategy", "gmt", "--mask_ratio", "0.5", "--gmt_mode", "grad",
                                 "--mask_scope", scope) for scope in ("tensor", "layer")},  # fmt: skip
    # LoRA on every linear layer.
    "lora": ("--mask_strategy", "full", "--use_peft", "true", "--lora_r", "8", "--lora_alpha", "16",
             "--lora_target_modules", "all-linear"),  # fmt: skip
}

FIXED_MASK = ("gps", "grft", "gspf", "gspf-dense-lr")  # the methods that train a fixed subset of entries
RL_METHODS = tuple(f"{strategy}-update-{RL_RATIO}" for strategy in ("gmt", "random"))


def default_methods(script: str, methods: dict[str, tuple[str, ...]]) -> list[str]:
    """What a comparison runs unless --methods says: for a GRPO recipe full, the RL methods and the
    fixed mask gspf; for SFT and DPO every method but the RL ones. Methods defined by --method are added."""
    defined = [name for name in methods if name not in METHODS]
    if script == "gmt/grpo.py":
        return ["full", *RL_METHODS, "gspf", *defined]
    return [name for name in methods if name not in RL_METHODS]

# gps keeps gps_k input connections of every output neuron, grft grft_k rows of every matrix: an
# eighth of the hidden size each (16 in the tiny model, hidden 128, as its comparison ran), so that
# they train about the same share of every model. The papers' budgets (gps K of 1-20, gspf 0.3%)
# are for 100M+ parameters and far sparser; --method 'gps=--gps_k 4' sets one.
FIXED_MASK_SHARE_OF_HIDDEN = 1 / 8

# gspf's dense warm-up, at most this share of a run (the tiny comparison's 25 steps in 300-step
# sweeps is 1/12); a shorter run gets a shorter warm-up, said by --plan.
GSPF_WARMUP_MAX_SHARE = 1 / 4

DENSE_PHASE_AT_FULLS_RATE = ("gspf-dense-lr",)  # their dense phase at full's best validation rate


def fixed_mask_budgets(model: str) -> dict[str, tuple[str, ...]]:
    """gps's and grft's budgets for ``model`` (a folder or a hub id: its config only), an eighth of
    its hidden size (FIXED_MASK_SHARE_OF_HIDDEN)."""
    from transformers import AutoConfig

    try:
        hidden = AutoConfig.from_pretrained(model).hidden_size
    except (OSError, ValueError, AttributeError) as error:
        sys.exit(f"the fixed-mask budgets (gps_k, grft_k) come from the model's hidden size, and {model}'s config "
                 f"cannot be read ({type(error).__name__}: {error}); set them with --method 'gps=--gps_k K' "
                 "--method 'grft=--grft_k K'")  # fmt: skip
    budget = str(max(1, round(hidden * FIXED_MASK_SHARE_OF_HIDDEN)))
    return {"gps": ("--gps_k", budget), "grft": ("--grft_k", budget)}


def gspf_warmup(overrides: tuple[str, ...], steps: int | None) -> tuple[str, ...]:
    """``overrides`` with gspf's warm-up shortened to at most GSPF_WARMUP_MAX_SHARE of a run of
    ``steps`` (gmt-sft refuses a warm-up as long as the run)."""
    if not steps or "--gspf_warmup_steps" not in overrides:
        return overrides
    at = overrides.index("--gspf_warmup_steps") + 1
    longest = max(1, int(steps * GSPF_WARMUP_MAX_SHARE))
    if int(overrides[at]) <= longest:
        return overrides
    return (*overrides[:at], str(longest), *overrides[at + 1 :])


def method_table(definitions: list[str], model: str | None = None) -> dict[str, tuple[str, ...]]:
    """The methods: the built-in ones (gps's and grft's budgets from ``model``), with ``--method
    NAME=ARGS`` adding ARGS to NAME's overrides (a later flag wins over an earlier one) or defining
    a new method NAME."""
    methods = dict(METHODS)
    if model is not None:
        for name, budget in fixed_mask_budgets(model).items():
            methods[name] = (*methods[name], *budget)
    for definition in definitions:
        name, separator, arguments = definition.partition("=")
        if not separator or not name:
            sys.exit(f"--method {definition!r}: expected NAME=ARGS, e.g. 'gps=--gps_k 4'")
        methods[name] = (*methods.get(name, ()), *shlex.split(arguments))
    return methods
