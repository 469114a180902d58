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

from trl import ModelConfig, TrlParser, get_peft_config

from gmt.cli import load_splits, set_model_init_kwargs
from gmt.config import GMTScriptArguments, GMTSFTConfig
from gmt.data import SFT_COLUMN_SETS
from gmt.trainer import GMTSFTTrainer


def main(script_args: GMTScriptArguments, training_args: GMTSFTConfig, model_args: ModelConfig) -> GMTSFTTrainer:
    """Train, save the final model to ``output_dir`` and return the trainer."""
    set_model_init_kwargs(model_args, training_args)
    train_dataset, eval_dataset = load_splits(script_args, training_args, SFT_COLUMN_SETS, "SFT")
    trainer = GMTSFTTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}")
    return trainer


def make_parser() -> TrlParser:
    """``--config x.yaml`` plus ``--field value`` overrides of any argument."""
    return TrlParser((GMTScriptArguments, GMTSFTConfig, ModelConfig))


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
