"""Group Relative Policy Optimization (online RL with verifiable rewards) with gradient masking.

    # the built-in tiny recipe, on CPU: rewards from the tiny task's own answer check
    python -m gmt.tiny && gmt grpo --config recipes/tiny/grpo_gmt.yaml
    # SmolLM2-135M-Instruct on a reasoning-gym task, rewarded by the task's verifier
    python -m gmt.smollm2 && gmt grpo --config recipes/smollm2-135m/grpo_gmt.yaml
    # a real model, 8 GPUs, DeepSpeed ZeRO-3 (generation with vLLM: use_vllm true)
    accelerate launch --config_file recipes/accelerate/zero3.yaml -m gmt.grpo --config RECIPE.yaml

Arguments as in gmt/sft.py, with GMTGRPOConfig (GRPOConfig plus the mask settings) and, as
``trl grpo`` takes them, ``reward_funcs`` (names: gmt/rewards.py) and ``reward_model_name_or_path``.
The data needs a ``prompt`` column and the columns its rewards read. The mask is taken once per
optimizer step from the gradient accumulated over that step's micro-batches and generation rounds.
"""

from __future__ import annotations

from trl import ModelConfig

from gmt.cli import launched, train_and_save
from gmt.config import GMTGRPOConfig, GMTGRPOScriptArguments
from gmt.data import GRPO_DATA, DataLayout
from gmt.parser import GMTParser
from gmt.rewards import reward_columns, reward_function
from gmt.trainer import GMTGRPOTrainer


def rewards_and_layout(script_args: GMTGRPOScriptArguments) -> tuple[list, DataLayout]:
    """The reward functions (and reward model) the arguments name, and the data layout they need:
    refused by name, before anything loads, where there is none or one is unknown."""
    names = list(script_args.reward_funcs or [])
    if not names and not script_args.reward_model_name_or_path:
        raise ValueError("GRPO needs a reward: set reward_funcs (gmt/rewards.py lists the names) or "
                         "reward_model_name_or_path")  # fmt: skip
    rewards = [reward_function(name) for name in names]
    if script_args.reward_model_name_or_path:
        rewards.insert(0, script_args.reward_model_name_or_path)
    columns = (*GRPO_DATA.column_sets[0], *reward_columns(rewards))
    return rewards, DataLayout(GRPO_DATA.purpose, (columns,))


def check_generation(training_args: GMTGRPOConfig) -> None:
    """Refuse ``use_vllm`` where vLLM cannot run (no GPU, or vLLM not installed), by name, before
    the model loads: TRL would fail later, inside its own setup."""
    if not training_args.use_vllm:
        return
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise ValueError("use_vllm true needs a GPU (vLLM generates on CUDA); this machine has none: set use_vllm "
                         "false to generate with the policy itself")  # fmt: skip
    if importlib.util.find_spec("vllm") is None:
        raise ValueError("use_vllm true needs vLLM, which is not installed here (pip install vllm), or set use_vllm "
                         "false to generate with the policy itself")  # fmt: skip


TRAINER = GMTGRPOTrainer  # what gmt check builds its report for


def main(script_args: GMTGRPOScriptArguments, training_args: GMTGRPOConfig, model_args: ModelConfig) -> GMTGRPOTrainer:
    """Train, save the final model to ``output_dir`` and return the trainer (``cli`` ends the run and
    runs ``eval_suite``: ``gmt.cli.finish``)."""
    rewards, layout = rewards_and_layout(script_args)
    check_generation(training_args)
    return train_and_save(GMTGRPOTrainer, script_args, training_args, model_args, layout, reward_funcs=rewards)


def make_parser() -> GMTParser:
    """``--config x.yaml`` plus ``--field value`` overrides of any argument."""
    return GMTParser((GMTGRPOScriptArguments, GMTGRPOConfig, ModelConfig))


def cli() -> None:
    """The console script: parse ``--config`` and overrides, train, save, end the launched run, then
    score the saved model with ``eval_suite`` (if set)."""
    launched(make_parser().parse_args_and_config, main, "grpo")


if __name__ == "__main__":
    cli()
