"""Training configs: TRL's ``SFTConfig`` / ``DPOConfig`` plus the mask settings, from YAML and the CLI.

The mask fields live in one mixin, ``MaskArguments``, shared by every gmt trainer config, so a
setting means the same thing in SFT and DPO and is checked in one place. Its fields are built from
the settings' declarations (``gmt.masking.options`` and each registered strategy's ``options``)
when this module is imported: register extra strategies before that.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, make_dataclass
from typing import Optional

from trl import DatasetMixtureConfig, DPOConfig, GRPOConfig, ScriptArguments, SFTConfig

from gmt.evaluation.suites import SUITES
from gmt.masking import (
    COMMON_OPTIONS,
    STRATEGIES,
    MaskStrategy,
    Option,
    resolve_strategy_options,
    strategy_class,
)
from gmt.masking.prepare import optimizer_requirement
from gmt.masking.registry import seal_registry, strategies_taking, strategy_options
from gmt.prompts import PROMPT_FORMATS

MASKED_OPTIMIZERS = ("adamw_torch", "adamw_torch_fused")  # the optim names whose AdamW gmt can replace


def _strategy_help() -> str:
    summaries = "; ".join(f"'{name}': {cls.summary}" for name, cls in STRATEGIES.items())
    return f"How the entries to update are chosen. {summaries}."


def _defaults_help(attribute: str) -> str:
    defaults = [f"{name}: {getattr(cls, attribute)!r}" for name, cls in STRATEGIES.items() if getattr(cls, attribute)]
    return f" Strategy defaults: {', '.join(defaults)}; none otherwise." if defaults else ""


def _field(option: Option, help_text: str, default=MISSING) -> tuple[str, object, object]:
    """A dataclass field for ``option``; HfArgumentParser makes it a ``--name`` flag with this help."""
    default = option.default if default is MISSING else default
    metadata = {"help": help_text.replace("%", "%%")}  # argparse formats help strings with %
    if option.choices is not None:
        metadata["choices"] = list(option.choices)
    field_type = Optional[option.type] if default is None else option.type  # noqa: UP045 (HfArgumentParser)
    return option.name, field_type, field(default=default, metadata=metadata)


def _mask_fields() -> list[tuple[str, object, object]]:
    """The config fields of every mask setting, derived from the declarations (gmt.masking.options
    and each strategy's ``options``). A strategy's option defaults to None ("unset"): the strategy
    that takes it fills in its declared default, and setting it for another strategy is refused."""
    strategy = Option("mask_strategy", str, "gmt", _strategy_help(), choices=tuple(sorted(STRATEGIES)))
    fields_ = [_field(strategy, strategy.help)]
    extra_help = {"frozen_params": _defaults_help("default_frozen_params"),
                  "dense_params": _defaults_help("default_dense_params")}  # fmt: skip
    matrices_only = [name for name, cls in STRATEGIES.items() if cls.matrices_only]
    if matrices_only:
        extra_help["dense_params"] += (
            f" {' and '.join(matrices_only)} also train every parameter with fewer than 2 dimensions fully, "
            "unless frozen."
        )
    for option in COMMON_OPTIONS:
        fields_.append(_field(option, option.help + extra_help.get(option.name, "")))
    for option in strategy_options():
        takers = ", ".join(strategies_taking(option.name))
        fields_.append(_field(option, f"{takers} only: {option.help} Unset: {option.default!r}.", default=None))
    return fields_


class _CheckedMaskArguments:
    """Checks the mask settings before the rest of the config (``check_mask_arguments``)."""

    def __post_init__(self) -> None:
        strategy = check_mask_arguments(self)
        for name in ("gradient_accumulation_steps", "per_device_train_batch_size"):
            if getattr(self, name) < 1:  # the Trainer would divide by it at train()
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        super().__post_init__()  # type: ignore[misc]
        check_masked_steps(strategy, self.mask_start_step, self.max_steps, "max_steps")
        optim = getattr(self.optim, "value", self.optim)
        need = optimizer_requirement(strategy)
        if need is not None and optim not in MASKED_OPTIMIZERS:
            masked = strategy.optimizer_kind == "masked"
            advice = " Use gmt_mode 'grad' to mask only the gradient with any optimizer." if masked else ""
            raise ValueError(f"{need}; optim must be one of {MASKED_OPTIMIZERS}, got {optim!r}.{advice}")


MaskArguments = make_dataclass("MaskArguments", _mask_fields(), bases=(_CheckedMaskArguments,))
MaskArguments.__module__ = __name__
MaskArguments.__doc__ = "Parameters that control which gradient entries are updated at each optimizer step."
seal_registry(__name__)


def check_mask_arguments(args) -> MaskStrategy:
    """Refuse bad mask settings before anything is built, naming the setting; fill in the chosen
    strategy's defaults; return the strategy the settings describe (built, not yet set up)."""
    cls = strategy_class(args.mask_strategy)
    for option in COMMON_OPTIONS:
        option.check(getattr(args, option.name))
    resolve_strategy_options(args)
    strategy = cls.from_args(args)
    if args.dense_phase_learning_rate is not None and strategy.dense_phase_steps(args.mask_start_step) == 0:
        raise ValueError(
            "dense_phase_learning_rate is the rate of the steps that update every entry before the mask starts, "
            f"and mask_strategy {strategy.name!r} with mask_start_step {args.mask_start_step} has none: set "
            "mask_start_step (or gspf's gspf_warmup_steps), or use learning_rate"
        )
    return strategy


def check_masked_steps(strategy: MaskStrategy, mask_start_step: int, steps: int, source: str) -> None:
    """Refuse a run of ``steps`` optimizer steps (``source`` says where the number comes from; 0 or
    less: not known yet) in which ``strategy`` would mask no step at all."""
    if strategy.name == "full" or steps <= 0:
        return
    first = strategy.first_masked_step(mask_start_step)
    if first >= steps:
        raise ValueError(
            f"mask_strategy {strategy.name!r} masks from optimizer step {first} on (mask_start_step "
            f"{mask_start_step}, and the strategy's warm-up or selection steps), but the run has {steps} steps "
            f"({source}): no step would be masked. Lower mask_start_step (or the warm-up/selection steps) or "
            "train longer."
        )


@dataclass
class RunFolderArguments:
    """What a run does with its output_dir: another run's files there (gmt.output_dir), and the
    pictures it leaves (gmt.plots)."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start a fresh run in an output_dir that holds another run's checkpoints, removing them first "
            "(refused otherwise, so that two runs' checkpoints never mix). A resume never needs it."
        },
    )
    save_plots: bool = field(
        default=True,
        metadata={
            "help": "At the end, write loss.png and mask_heatmap.png (where the mask went) into output_dir (needs "
            "matplotlib, the plots extra; without it the run says so and goes on)."
        },
    )


@dataclass
class StepDeltaArguments:
    """Sparse per-step deltas of the weights (gmt.step_delta): measured, and written if asked."""

    step_delta_every: int = field(
        default=0,
        metadata={
            "help": "Every this many optimizer steps, take the entries the weights changed since the last time, in "
            "the dtype they are saved in: logged as delta/changed_fraction, delta/bytes and delta/bytes_vs_dense "
            "(what a weight sync of only those entries sends, against the dense weights). 0: off. Keeps one copy "
            "of the weights to compare with; one process, DDP or ZeRO-1/2 (whole parameters on each rank)."
        },
    )
    step_delta_dir: str | None = field(
        default=None,
        metadata={
            "help": "With step_delta_every: write each delta there as step-<N>.safetensors (gmt.delta's format: "
            "indices and values, and the fingerprint of the weights it applies to); gmt delta apply --base MODEL "
            "--delta step-*.safetensors rebuilds the weights of any step bit for bit."
        },
    )

    def __post_init__(self) -> None:
        if self.step_delta_every < 0:
            raise ValueError(
                f"step_delta_every must be 0 (off) or a number of optimizer steps, got {self.step_delta_every}"
            )
        if self.step_delta_dir is not None and self.step_delta_every == 0:
            raise ValueError("step_delta_dir is set but step_delta_every is 0: no delta would be taken; set "
                             "step_delta_every (1: every optimizer step)")  # fmt: skip
        super().__post_init__()  # type: ignore[misc]


@dataclass
class GMTSFTConfig(MaskArguments, RunFolderArguments, StepDeltaArguments, SFTConfig):
    """``trl.SFTConfig`` with the mask settings of ``MaskArguments``."""


@dataclass
class GMTDPOConfig(MaskArguments, RunFolderArguments, StepDeltaArguments, DPOConfig):
    """``trl.DPOConfig`` with the mask settings of ``MaskArguments``."""


@dataclass
class GMTGRPOConfig(MaskArguments, RunFolderArguments, StepDeltaArguments, GRPOConfig):
    """``trl.GRPOConfig`` with the mask settings of ``MaskArguments``."""


@dataclass
class GMTScriptArguments(ScriptArguments, DatasetMixtureConfig):
    """TRL's ``ScriptArguments`` and its ``datasets:`` mixture (``DatasetMixtureConfig``, as ``trl sft``
    reads it), plus a column mapping and a prompt format for data sets in other layouts."""

    dataset_column_map: str | None = field(
        default=None,
        metadata={
            "help": "Rename data set columns before training, as 'old:new,old:new'; e.g. "
            "'query:prompt,response:completion' turns MetaMathQA into TRL's prompt/completion layout."
        },
    )
    prompt_format: str | None = field(
        default=None,
        metadata={
            "help": "Wrap the prompt column of prompt/completion data in a named format before training: "
            "metamath (MetaMath's Alpaca prompt) or magicoder (Magicoder's); the math and code eval suites "
            "score in the same format (gmt/prompts.py).",
            "choices": tuple(PROMPT_FORMATS),
        },
    )
    eval_suite: str | None = field(
        default=None,
        metadata={
            "help": "After training, score the saved model with this lm-eval suite (eval/suites: "
            + ", ".join(SUITES)
            + ") in a process of its own, results in <output_dir>/eval; none: no evaluation (as report_to "
            "none). Code suites run model-written code: only with eval_args '--allow_code_execution'.",
            "choices": (*SUITES, "none"),
        },
    )
    eval_limit: int | None = field(
        default=None, metadata={"help": "eval_suite: score only the first N examples of each task."}
    )
    eval_args: str | None = field(
        default=None,
        metadata={
            "help": "eval_suite: more gmt-eval settings, as on its command line; e.g. '--backend vllm "
            "--tensor_parallel_size 8' or '--data_dir /data/eval' (gmt-eval --help lists them)."
        },
    )


@dataclass
class GMTGRPOScriptArguments(GMTScriptArguments):
    """``GMTScriptArguments`` plus the rewards, as ``trl grpo``'s ``GRPOScriptArguments`` takes them."""

    reward_funcs: list[str] | None = field(
        default=None,
        metadata={
            "help": "Reward functions, by name: a gmt-eval task scored against its row (gmt_reasoning_gym, "
            "gmt_tiny_arith, ...), one of TRL's (accuracy_reward, think_format_reward, ...) or a dotted import "
            "path (gmt/rewards.py)."
        },
    )
    reward_model_name_or_path: str | None = field(
        default=None, metadata={"help": "A reward model (hub id or local path), scored before reward_funcs."}
    )


@dataclass(frozen=True)
class TrainingScript:
    """A training script: the module that holds its ``make_parser``, ``main`` and ``TRAINER``, and its config."""

    module: str
    config: type


# Every training script, by the path recipes and run records name it with.
SCRIPTS = {
    "gmt/sft.py": TrainingScript("gmt.sft", GMTSFTConfig),
    "gmt/dpo.py": TrainingScript("gmt.dpo", GMTDPOConfig),
    "gmt/grpo.py": TrainingScript("gmt.grpo", GMTGRPOConfig),
}


def recipe_script(settings: dict) -> str:
    """The training script a recipe's settings are for: ``gmt/grpo.py`` when it sets a reward or a
    field only GRPOConfig has (``num_generations``, ...); ``gmt/dpo.py`` when it sets a field only
    DPOConfig has (``beta``, ``loss_type``, ... GRPOConfig has some of them too); else ``gmt/sft.py``."""
    from dataclasses import fields

    def names(*classes) -> set[str]:
        return {f.name for cls in classes for f in fields(cls)}

    grpo_only = names(GMTGRPOConfig, GMTGRPOScriptArguments) - names(GMTSFTConfig, GMTDPOConfig, GMTScriptArguments)
    if grpo_only & set(settings):
        return "gmt/grpo.py"
    dpo_only = names(GMTDPOConfig) - names(GMTSFTConfig)
    return "gmt/dpo.py" if dpo_only & set(settings) else "gmt/sft.py"
