"""Direct Preference Optimization with gradient masking (the GMT paper applies the mask to DPO too).

    # the built-in tiny recipe, on CPU: SFT first, then DPO from the SFT checkpoint
    python -m gmt.tiny && accelerate launch gmt/sft.py --config recipes/tiny/sft_gmt.yaml
    accelerate launch gmt/dpo.py --config recipes/tiny/dpo_gmt.yaml
    # a real model, 8 GPUs, DeepSpeed ZeRO-3
    accelerate launch --config_file recipes/accelerate/zero3.yaml \
        gmt/dpo.py --config recipes/llama2-7b/dpo_ultrafeedback_gmt.yaml

Arguments as in gmt/sft.py, with GMTDPOConfig (DPOConfig plus the mask settings). The data needs
``prompt``/``chosen``/``rejected`` (or ``chosen``/``rejected``) columns. The reference model is
TRL's: a frozen copy of ``model_name_or_path`` (or the adapter-disabled base with PEFT).
"""

from __future__ import annotations

from trl import ModelConfig

from gmt.cli import launched, train_and_save
from gmt.config import GMTDPOConfig, GMTScriptArguments
from gmt.parser import GMTParser
from gmt.trainer import GMTDPOTrainer

TRAINER = GMTDPOTrainer  # what gmt check builds its report for


def main(script_args: GMTScriptArguments, training_args: GMTDPOConfig, model_args: ModelConfig) -> GMTDPOTrainer:
    """Train, save the final model to ``output_dir`` and return the trainer (``cli`` ends the run and
    runs ``eval_suite``: ``gmt.cli.finish``)."""
    return train_and_save(GMTDPOTrainer, script_args, training_args, model_args)


def make_parser() -> GMTParser:
    """``--config x.yaml`` plus ``--field value`` overrides of any argument."""
    return GMTParser((GMTScriptArguments, GMTDPOConfig, ModelConfig))


def cli() -> None:
    """The console script: parse ``--config`` and overrides, train, save, end the launched run, then
    score the saved model with ``eval_suite`` (if set)."""
    launched(make_parser().parse_args_and_config, main, "dpo")


if __name__ == "__main__":
    cli()
