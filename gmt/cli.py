"""What gmt/sft.py and gmt/dpo.py share: model arguments, the train/eval splits, train-and-save."""

from __future__ import annotations

from datasets import Dataset
from trl import ModelConfig, get_peft_config

from gmt.config import GMTScriptArguments
from gmt.data import check_columns, load_training_dataset, rename_columns


def set_model_init_kwargs(model_args: ModelConfig, training_args) -> None:
    """Pass the ModelConfig's loading options to the trainer, as TRL's scripts do."""
    model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    training_args.model_init_kwargs = {**model_init_kwargs, **(training_args.model_init_kwargs or {})}


def load_splits(
    script_args: GMTScriptArguments, training_args, column_sets: tuple[tuple[str, ...], ...], purpose: str
) -> tuple[Dataset, Dataset | None]:
    """The train split (checked for ``column_sets``) and, when evaluation is on, the test split."""
    if not script_args.dataset_name:
        raise ValueError("dataset_name is required: a hub data set, a local folder or a local data file")
    dataset = load_training_dataset(script_args.dataset_name, script_args.dataset_config, script_args.dataset_streaming)
    train_dataset = rename_columns(dataset[script_args.dataset_train_split], script_args.dataset_column_map)
    check_columns(train_dataset, column_sets, purpose)
    eval_dataset = None
    if training_args.eval_strategy != "no":
        eval_dataset = rename_columns(dataset[script_args.dataset_test_split], script_args.dataset_column_map)
    return train_dataset, eval_dataset


def train_and_save(
    trainer_cls,
    script_args: GMTScriptArguments,
    training_args,
    model_args: ModelConfig,
    column_sets: tuple[tuple[str, ...], ...],
    purpose: str,
):
    """Build ``trainer_cls`` the way TRL's scripts do, train (resuming if asked), save to ``output_dir``."""
    set_model_init_kwargs(model_args, training_args)
    train_dataset, eval_dataset = load_splits(script_args, training_args, column_sets, purpose)
    trainer = trainer_cls(
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
