"""What gmt/sft.py and gmt/dpo.py share: model arguments, the train/eval splits, train-and-save,
and how a refusal reaches the user."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset
from safetensors import SafetensorError
from transformers.trainer_utils import SaveStrategy
from trl import ModelConfig, get_dataset, get_peft_config, get_quantization_config

from gmt.attention import check_attention
from gmt.chat import check_chat_template
from gmt.checkpoints import (
    check_output_dir,
    check_resume_layout,
    check_resume_settings,
    resolve_resume_checkpoint,
    save_failure,
    warn_if_a_save_will_not_fit,
)
from gmt.config import GMTScriptArguments
from gmt.data import (
    DataLayout,
    check_columns,
    check_dataset_rows,
    json_lines_only,
    load_training_dataset,
    parse_column_map,
    rename_columns,
    skips_preparation,
)
from gmt.errors import REFUSALS, exit_refused, show_tracebacks
from gmt.evaluation.after_training import check_before_training, evaluation_settings, run_evaluation
from gmt.launch import is_main_launched_process
from gmt.masking import strategy_class
from gmt.models import check_model_path
from gmt.output_dir import claim_output_dir, lock_output_dir
from gmt.parallel import check_parallel_layout
from gmt.precision import check_dtype_settings
from gmt.prompts import apply_prompt_format
from gmt.rows import RoleExample, RowChecker
from gmt.shutdown import exit_without_finalizing
from gmt.summary import changed_entries


def set_model_init_kwargs(model_args: ModelConfig, training_args) -> None:
    """Pass the ModelConfig's loading options to the trainer, as TRL's scripts do."""
    model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    training_args.model_init_kwargs = {**model_init_kwargs, **(training_args.model_init_kwargs or {})}


def quantization_config(model_args: ModelConfig):
    """TRL's ``BitsAndBytesConfig`` for ``load_in_4bit`` / ``load_in_8bit`` (None when neither is set),
    refused before any model is loaded where it cannot be honoured: without bitsandbytes, without a
    CUDA GPU, or without adapters to train (a quantized base is frozen; gmt masks what trains)."""
    config = get_quantization_config(model_args)
    if config is None:
        return None
    setting = "load_in_4bit" if model_args.load_in_4bit else "load_in_8bit"
    import importlib.util

    import torch

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(f"{setting} needs the bitsandbytes package: pip install bitsandbytes (on a CUDA machine)")
    if not torch.cuda.is_available():
        raise ValueError(f"{setting} needs a CUDA GPU (bitsandbytes quantizes on the GPU); this machine has none")
    if not model_args.use_peft:
        raise ValueError(f"{setting} quantizes the base model, which then cannot be trained: set use_peft true")
    return config


@dataclass(frozen=True)
class Splits:
    """The data of a run: the train split, the test split (when evaluation is on), and the first
    row of each conversational role (for gmt.chat's template check; empty off the main process)."""

    train: Dataset
    eval: Dataset | None
    roles: dict[str, RoleExample] = field(default_factory=dict)


def load_splits(script_args: GMTScriptArguments, training_args, layout: DataLayout) -> Splits:
    """The train split (checked for the ``layout``'s columns, then put in a layout TRL reads) and,
    when evaluation is on, the test split. The main process goes first and checks every raw row
    (gmt.rows) before the others load; a bad row stops the run there."""
    if script_args.datasets and script_args.dataset_name:
        raise ValueError(
            "set dataset_name or datasets (a mixture), not both: TRL's scripts would drop dataset_name without a word"
        )
    if not (script_args.datasets or script_args.dataset_name):
        raise ValueError(
            "dataset_name (a hub data set, a local folder or a local data file) or datasets (a mixture) is required"
        )
    column_sets = layout.columns_for(training_args)
    checked = not skips_preparation(training_args)  # TRL reads no raw column then
    checker = None
    if training_args.process_index == 0 and checked:
        checker = RowChecker(
            layout.purpose,
            column_sets,
            assistant_turn_needed=getattr(training_args, "assistant_only_loss", False),
            column_map=parse_column_map(script_args.dataset_column_map),
            text_field=getattr(training_args, "dataset_text_field", "text"),
        )
    read_as_lines = not script_args.datasets and json_lines_only(script_args.dataset_name)
    source = repr(script_args.dataset_name) if script_args.dataset_name else "mixture (datasets)"
    splits = [script_args.dataset_train_split]
    if training_args.eval_strategy != "no":
        splits.append(script_args.dataset_test_split)
    prepared = []
    with training_args.main_process_first(local=False, desc="checking and loading the data"):
        if script_args.datasets:
            dataset = get_dataset(script_args)  # TRL's mixture loader: its splits, fractions and test_split_size
        else:
            dataset = load_training_dataset(
                script_args.dataset_name,
                script_args.dataset_config,
                script_args.dataset_streaming,
                row_checker=checker if read_as_lines else None,
            )
        for split in splits:
            if split not in dataset:
                raise ValueError(
                    f"the data set {source} has no split {split!r} (dataset_train_split / dataset_test_split); it "
                    f"has {list(dataset)}"
                )
            rows = rename_columns(dataset[split], script_args.dataset_column_map)
            if checked:
                check_columns(rows, column_sets, layout.purpose)
            if checker is not None and not read_as_lines and isinstance(rows, Dataset):  # a stream is not read ahead
                check_dataset_rows(dataset[split], checker, f"{source} split {split!r}")
            if script_args.prompt_format:
                rows = apply_prompt_format(rows, script_args.prompt_format)
            prepared.append(layout.prepare(rows) if layout.prepare else rows)
    return Splits(prepared[0], prepared[1] if len(prepared) > 1 else None, checker.roles if checker else {})


def checked_inputs(trainer_cls, script_args: GMTScriptArguments, training_args, model_args: ModelConfig,
                   layout: DataLayout | None = None):  # fmt: skip
    """Everything ``build_trainer`` checks and loads before the model: the attention and launch
    layout, the quantization, the data (every raw row, in ``layout``: the trainer's own unless
    given) and the chat template. Returns the data (``Splits``) and the quantization config;
    ``gmt check`` stops here."""
    layout = layout or trainer_cls.data_layout
    check_attention(model_args.attn_implementation)  # refused first, before any data or model loads
    check_dtype_settings(model_args, training_args)
    check_parallel_layout(strategy_class(training_args.mask_strategy).from_args(training_args), training_args)
    quantization = quantization_config(model_args)
    set_model_init_kwargs(model_args, training_args)
    data = load_splits(script_args, training_args, layout)
    check_model_path(model_args.model_name_or_path)  # the tokenizer is read next
    check_chat_template(data.train, training_args, model_args, layout.purpose, data.roles)
    return data, quantization


def build_trainer(trainer_cls, script_args: GMTScriptArguments, training_args, model_args: ModelConfig,
                  layout: DataLayout | None = None, **trainer_kwargs):  # fmt: skip
    """``trainer_cls`` on the model and data the arguments name, as TRL's scripts build it; the
    data must fit ``layout`` (the trainer's ``data_layout`` unless given; see ``gmt.data``).
    ``trainer_kwargs``: what else the trainer takes (GRPO's ``reward_funcs``)."""
    data, quantization = checked_inputs(trainer_cls, script_args, training_args, model_args, layout)
    return trainer_cls(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        peft_config=get_peft_config(model_args),
        quantization_config=quantization,
        **trainer_kwargs,
    )


_training_started = False  # from here on an error is a crash, with its traceback


def launched(parse: Callable[[], tuple], main: Callable, script: str) -> None:
    """Run an entry point (``parse`` the arguments, ``main`` trains): a refusal before training
    starts is one line (gmt.errors); anything after that point, or any other exception, keeps its
    traceback."""
    try:
        script_args, training_args, model_args = parse()
        trainer = main(script_args, training_args, model_args)
    except REFUSALS as error:
        if _training_started or show_tracebacks():
            raise
        exit_refused(script, error)
    finish(trainer, script_args)


def checked_run_settings(script_args: GMTScriptArguments, training_args, model_args: ModelConfig,
                         claim: bool) -> str | None:  # fmt: skip
    """The checks on the settings, the output folder and a resume that run before anything loads, for
    training and for ``gmt check`` (``claim`` False: it locks and claims nothing). Returns the
    checkpoint a resume starts from (None: a fresh run)."""
    check_eval_settings(script_args, training_args, model_args)
    check_output_dir(training_args.output_dir, create=claim)
    main_process = claim and is_main_launched_process()
    if main_process:
        lock_output_dir(training_args.output_dir)  # before anything reads or writes it (gmt.output_dir)
        checkpoints = training_args.save_strategy not in ("no", SaveStrategy.NO)
        warn_if_a_save_will_not_fit(training_args.output_dir, model_args.model_name_or_path, checkpoints)
    checkpoint = agreed_resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    if checkpoint is not None:
        check_resume_settings(checkpoint, training_args)
        check_resume_layout(checkpoint, training_args, model_args.model_name_or_path)
    if main_process:
        claim_output_dir(training_args.output_dir, checkpoint, training_args.overwrite_output_dir)
    return checkpoint


def train_and_save(trainer_cls, script_args: GMTScriptArguments, training_args, model_args: ModelConfig,
                   layout: DataLayout | None = None, **trainer_kwargs):  # fmt: skip
    """Build ``trainer_cls`` the way TRL's scripts do (``build_trainer``), train (resuming if asked),
    save to ``output_dir``."""
    checkpoint = checked_run_settings(script_args, training_args, model_args, claim=True)
    trainer = build_trainer(trainer_cls, script_args, training_args, model_args, layout, **trainer_kwargs)
    global _training_started
    _training_started = True
    trainer.train(resume_from_checkpoint=checkpoint)
    try:
        trainer.save_model(training_args.output_dir)
    except (OSError, RuntimeError, SafetensorError) as error:  # a full disk, said as such (gmt.checkpoints)
        raise OSError(save_failure(Path(training_args.output_dir), error, checkpoint=False)) from error
    if trainer.accelerator.is_main_process:
        report_changed_entries(trainer, model_args.model_name_or_path, training_args.output_dir)
        # the logs (mask telemetry included) beside the model
        trainer.state.save_to_json(str(Path(training_args.output_dir) / "trainer_state.json"))
        if training_args.save_plots:
            save_run_plots(trainer, training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}")
    return trainer


def agreed_resume_checkpoint(value, output_dir: str) -> str | None:
    """``resolve_resume_checkpoint`` on the main process only, which reads every file of the
    candidates to check their hashes, and its answer (or its refusal) handed to every rank, so the
    ranks neither read the checkpoint N times over nor choose apart."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return resolve_resume_checkpoint(value, output_dir)
    from accelerate.utils import broadcast_object_list

    answer: list = [None, None]  # the checkpoint, or the refusal
    if dist.get_rank() == 0:
        try:
            answer[0] = resolve_resume_checkpoint(value, output_dir)
        except ValueError as error:
            answer[1] = str(error)
    broadcast_object_list(answer, from_process=0)
    if answer[1] is not None:
        raise ValueError(answer[1])
    return answer[0]


def save_run_plots(trainer, output_dir: str) -> None:
    """The run's pictures in ``output_dir`` (gmt.plots), said by name; skipped, with a word, where
    matplotlib is not installed."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        print("gmt: no loss.png or mask_heatmap.png: matplotlib is not installed (pip install 'gmt[plots]'; "
              "save_plots false stops this note)", flush=True)  # fmt: skip
        return
    from gmt.plots import write_run_plots

    try:
        written = write_run_plots(output_dir, trainer.state.log_history, trainer.mask_history())
    except Exception as error:  # a picture is never worth the saved run: said, and the run ends as it would
        print(f"gmt: warning: the run's pictures could not be drawn ({type(error).__name__}: {error})", flush=True)
        return
    if written:
        print(f"gmt: wrote {', '.join(path.name for path in written)} in {output_dir}", flush=True)


def report_changed_entries(trainer, base: str, output_dir: str) -> None:
    """Say and log how many entries the saved model changed against its base (gmt.summary)."""
    counted = changed_entries(base, output_dir)
    if counted is None:  # a LoRA adapter, or weights that are not safetensors
        return
    changed, compared = counted
    print(f"gmt: the saved model changed {changed:,} of its {compared:,} entries ({changed / compared:.2%}) "
          f"against {base}", flush=True)  # fmt: skip
    trainer.log({"gmt/entries_changed": changed, "gmt/entries_changed_fraction": changed / compared})


def finish(trainer, script_args: GMTScriptArguments | None = None) -> None:
    """End a launched run: every rank reaches here, trackers end and the process group is destroyed;
    then, with ``eval_suite``, the main process scores the saved model in a fresh process (see
    gmt.evaluation.after_training) while the other ranks leave. A distributed rank exits without
    interpreter finalization (see gmt.shutdown for why); a failed evaluation exits non-zero."""
    trainer.accelerator.wait_for_everyone()
    distributed = trainer.accelerator.use_distributed
    main_process = trainer.accelerator.is_main_process
    evaluation = evaluation_settings(script_args, trainer.args) if script_args is not None else None
    if evaluation is not None:
        release_training_memory(trainer)  # while the process group lives: a DeepSpeed engine's teardown needs it
    trainer.accelerator.end_training()
    returncode = 0
    if evaluation is not None and main_process:
        returncode = run_evaluation(evaluation)
    if distributed:
        exit_without_finalizing(returncode)
    if returncode:
        sys.exit(returncode)


def release_training_memory(trainer) -> None:
    """Drop the trainer's model, optimizer and engine so that the evaluation process has the GPU."""
    import gc

    import torch

    trainer.accelerator.free_memory()
    for name in ("model", "model_wrapped", "ref_model", "optimizer", "lr_scheduler"):  # ref_model: DPO's
        if hasattr(trainer, name):
            setattr(trainer, name, None)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def check_eval_settings(script_args: GMTScriptArguments, training_args, model_args: ModelConfig) -> None:
    """Refuse eval settings that cannot work, before any training (the tasks and their data on the
    main process only: every rank would find the same)."""
    evaluation = evaluation_settings(script_args, training_args)
    if evaluation is None:
        return
    if is_main_launched_process():
        check_before_training(
            evaluation, model_args.model_name_or_path, getattr(training_args, "chat_template_path", None)
        )
