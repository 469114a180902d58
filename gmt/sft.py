"""Supervised fine-tuning with gradient masking.

    # the built-in tiny recipe, on CPU (build the tiny base first: python -m gmt.tiny)
    accelerate launch gmt/sft.py --config recipes/tiny/sft_gmt.yaml
    # any field of the YAML can be overridden on the command line
    python gmt/sft.py --config recipes/tiny/sft_gmt.yaml --mask_ratio 0.5 --max_steps 3 --output_dir out/x
    # a real model, 8 GPUs, DeepSpeed ZeRO-3
    accelerate launch --config_file recipes/accelerate/zero3.yaml \
        gmt/sft.py --config recipes/llama3-8b/sft_math_gmt.yaml

Arguments: TRL's ScriptArguments (dataset_name: hub name, local folder or a json/jsonl/parquet
file) plus dataset_column_map, ModelConfig (model_name_or_path: hub id or local path) and
GMTSFTConfig (SFTConfig plus the mask settings). Saves model and tokenizer to ``output_dir`` as an
ordinary HF checkpoint.
"""

from __future__ import annotations

from trl import ModelConfig

from gmt.cli import launched, train_and_save
from gmt.config import GMTScriptArguments, GMTSFTConfig
from gmt.parser import GMTParser
from gmt.trainer import GMTSFTTrainer

TRAINER = GMTSFTTrainer  # what gmt check builds its report for


def main(script_args: GMTScriptArguments, training_args: GMTSFTConfig, model_args: ModelConfig) -> GMTSFTTrainer:
    """Train, save the final model to ``output_dir`` and return the trainer (``cli`` ends the run and
    runs ``eval_suite``: ``gmt.cli.finish``)."""
    return train_and_save(GMTSFTTrainer, script_args, training_args, model_args)


def make_parser() -> GMTParser:
    """``--config x.yaml`` plus ``--field value`` overrides of any argument."""
    return GMTParser((GMTScriptArguments, GMTSFTConfig, ModelConfig))


def cli() -> None:
    """The console script: parse ``--config`` and overrides, train, save, end the launched run, then
    score the saved model with ``eval_suite`` (if set)."""
    launched(make_parser().parse_args_and_config, main, "sft")


if __name__ == "__main__":
    cli()
