"""A TRL user's config works unchanged (issue 29): what plain TRL accepts, gmt accepts too."""

import pytest
import torch

from conftest import REPO, first_log
from gmt.cli import build_trainer
from gmt.sft import make_parser
from gmt.standins import model_standin
from gmt.trainer import GMTSFTTrainer

# Stand-ins of chat checkpoints whose stock templates (TRL's copies, unmodified) have no
# {% generation %} markers: TRL's SFTTrainer patches them for assistant_only_loss.
STOCK_TEMPLATES = {
    "Qwen/Qwen3-8B": "<|im_end|>",
    "meta-llama/Meta-Llama-3-8B-Instruct": "<|eot_id|>",
}


def tiny_recipe(model, data, output_dir, *overrides):
    return make_parser().parse_args_and_config(
        ["--config", str(REPO / "recipes/tiny/sft_gmt.yaml"), "--model_name_or_path", str(model),
         "--dataset_name", str(data), "--output_dir", str(output_dir), "--report_to", "none",
         "--eval_suite", "none", "--disable_tqdm", "true", *overrides]
    )  # fmt: skip


@pytest.mark.parametrize("checkpoint", list(STOCK_TEMPLATES))
def test_assistant_only_loss_with_a_stock_template_trl_patches(checkpoint, standin_cache, tiny_assets, tmp_path):
    from trl.chat_template_utils import has_generation_markers

    model = model_standin(checkpoint, standin_cache)
    script_args, training_args, model_args = tiny_recipe(model, tiny_assets / "data/sft", tmp_path / "out",
                                                         "--max_steps", "1", "--logging_steps", "1")  # fmt: skip
    assert training_args.assistant_only_loss
    trainer = build_trainer(GMTSFTTrainer, script_args, training_args, model_args)
    tokenizer = trainer.processing_class
    assert not has_generation_markers(tokenizer.chat_template)  # the stock template, as shipped
    end_of_turn = STOCK_TEMPLATES[checkpoint]
    for row in trainer.train_dataset.select(range(4)):
        learned = tokenizer.decode([label for label in row["labels"] if label != -100])
        assert "user" not in learned and "assistant" not in learned  # no prompt, no role header
        assert learned.rstrip().endswith(end_of_turn) and learned.count(end_of_turn) == 1, learned
        assert any(ch.isdigit() for ch in learned)
    trainer.train()
    kept = first_log(trainer)["mask/kept_fraction"]
    assert 0.8 <= kept < 0.81


def write_lines(path, rows):
    import json

    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_dataset_text_field_names_the_text_column(tiny_assets, tmp_path):
    rows = [{"body": f"{a} + {a} = {2 * a}.", "source": "sums"} for a in range(10, 30)]
    data = write_lines(tmp_path / "train.jsonl", rows)
    arguments = tiny_recipe(tiny_assets / "base", data, tmp_path / "out", "--dataset_text_field", "body",
                            "--assistant_only_loss", "false", "--max_steps", "1", "--logging_steps", "1")  # fmt: skip
    trainer = build_trainer(GMTSFTTrainer, *arguments)
    first = trainer.processing_class.decode(trainer.train_dataset[0]["input_ids"])
    assert first.startswith("10 + 10 = 20.")
    trainer.train()
    assert 0.8 <= first_log(trainer)["mask/kept_fraction"] < 0.81


def test_sharegpt_conversations_are_read_as_trl_reads_them(tiny_assets, tmp_path):
    # TRL's SFTTrainer renames a conversations column of from/value turns to messages of role/content.
    def turns(a: int) -> list[dict]:
        question, reply = f"What is {a} + {a}?", f"{a} + {a} = {2 * a}."
        return [{"from": "user", "value": question}, {"from": "assistant", "value": reply}]

    data = write_lines(tmp_path / "train.jsonl", [{"conversations": turns(a)} for a in range(10, 30)])
    arguments = tiny_recipe(tiny_assets / "base", data, tmp_path / "out", "--assistant_only_loss", "false")
    trainer = build_trainer(GMTSFTTrainer, *arguments)
    text = trainer.processing_class.decode(trainer.train_dataset[0]["input_ids"])
    assert text == "<|user|>\nWhat is 10 + 10?<|end|>\n<|assistant|>\n10 + 10 = 20.<|end|>"
    # TRL refuses assistant_only_loss on them (it checks before converting): refused here before the model loads.
    with pytest.raises(ValueError, match=r"assistant_only_loss true needs role/content turns in a messages column"):
        build_trainer(GMTSFTTrainer, *tiny_recipe(tmp_path / "no-model", data, tmp_path / "out"))


def test_masking_with_lora_runs_over_the_adapter_entries(tiny_assets, tmp_path):
    # docs/running.md, "GMT with LoRA": the mask runs over the adapter's entries. LoRA starts with B = 0, so
    # A's gradient is all zero: more than mask_ratio of the entries tie at 0, T = 0 and the tie
    # rule keeps all of them (a dense step). Masking starts at the first step after B moved.
    lora = ("--use_peft", "true", "--lora_r", "8", "--max_steps", "3", "--logging_steps", "1", "--warmup_steps", "0")
    arguments = tiny_recipe(tiny_assets / "base", tiny_assets / "data/sft", tmp_path / "out", *lora)
    trainer = build_trainer(GMTSFTTrainer, *arguments)
    trainable = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
    frozen = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if not p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    trainer.train()
    kept = [log["mask/kept_fraction"] for log in trainer.state.log_history if "mask/kept_fraction" in log]
    assert kept[0] == 1.0 and all(0.8 <= fraction < 0.81 for fraction in kept[1:]), kept
    after = dict(trainer.model.named_parameters())
    assert all(torch.equal(after[name], value) for name, value in frozen.items())  # the base never moves
    changed = sum(int((after[name].detach() != value).sum()) for name, value in trainable.items())
    assert changed > 0


def test_a_lora_output_merges_into_an_ordinary_checkpoint(tiny_assets, tmp_path):
    import subprocess
    import sys

    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from gmt.evaluation import EvalArguments
    from gmt.evaluation.harness import model_arguments
    from gmt.sft import main

    lora = ("--use_peft", "true", "--lora_r", "8", "--max_steps", "3", "--warmup_steps", "0", "--learning_rate", "1e-2")
    main(*tiny_recipe(tiny_assets / "base", tiny_assets / "data/sft", tmp_path / "lora", *lora))
    with pytest.raises(ValueError, match=r"PEFT adapter; merge it into its base first: gmt merge"):
        model_arguments(EvalArguments(suite="tiny", model=str(tmp_path / "lora"), backend="vllm"))
    subprocess.run([sys.executable, "scripts/merge_adapter.py", "--adapter", str(tmp_path / "lora"),
                    "--out", str(tmp_path / "merged")], cwd=REPO, check=True, capture_output=True)  # fmt: skip
    merged = tmp_path / "merged"
    assert not (merged / "adapter_config.json").exists() and (merged / "tokenizer_config.json").is_file()
    with safe_open(str(merged / "model.safetensors"), "pt") as merged_file, \
            safe_open(str(tiny_assets / "base/model.safetensors"), "pt") as base_file:  # fmt: skip
        assert set(merged_file.keys()) == set(base_file.keys())  # the base's names: no lora_ tensors left
        changed = [key for key in base_file.keys()  # noqa: SIM118 (safe_open has no iteration)
                   if not torch.equal(merged_file.get_tensor(key), base_file.get_tensor(key))]
    assert changed and all("proj" in key for key in changed)  # the adapted projections moved, nothing else
    assert model_arguments(EvalArguments(suite="tiny", model=str(merged)))[0]["pretrained"] == str(merged)
    ids = torch.arange(3, 40).unsqueeze(0)
    with torch.no_grad():
        before = AutoModelForCausalLM.from_pretrained(tiny_assets / "base")(ids).logits
        adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_assets / "base"),
                                            str(tmp_path / "lora")).eval()(ids).logits  # fmt: skip
        got = AutoModelForCausalLM.from_pretrained(merged).eval()(ids).logits
    assert (adapted - got).abs().max() < 1e-4 and (adapted - before).abs().max() > 1e-3


@pytest.mark.parametrize("show_blocks", [False, True])
def test_console_gets_the_overall_fraction_and_the_backends_every_block(tiny_assets, tmp_path, capsys, show_blocks):
    from gmt.sft import main

    arguments = tiny_recipe(tiny_assets / "base", tiny_assets / "data/sft", tmp_path / "out", "--max_steps", "2",
                            "--logging_steps", "1", "--log_mask_blocks", str(show_blocks).lower())  # fmt: skip
    trainer = main(*arguments)
    printed = [line for line in capsys.readouterr().out.splitlines() if "'loss'" in line]
    assert len(printed) == 2 and all("'mask/kept_fraction'" in line for line in printed)
    assert all(("'mask/kept_fraction/" in line) == show_blocks for line in printed)
    blocks = [key for key in first_log(trainer) if key.startswith("mask/kept_fraction/")]
    assert len(blocks) >= 5  # the trainer state (and so every report_to backend) has each block


def test_a_run_says_what_it_masks_before_the_first_step_and_after_the_last(tiny_assets, tmp_path, capsys):
    from gmt.masking import keep_count
    from gmt.sft import main

    patterns = ("--frozen_params", "embed_tokens", "--dense_params", "lm_headd")
    arguments = tiny_recipe(tiny_assets / "base", tiny_assets / "data/sft", tmp_path / "out", "--max_steps", "3",
                            "--logging_steps", "2", *patterns)  # fmt: skip
    trainer = main(*arguments)
    said = capsys.readouterr().out
    table = said[said.index("gmt: mask_strategy 'gmt' (mask_ratio 0.2, mask_scope 'global', gmt_mode 'grad')"):]
    assert "gmt: 1 process, no distributed engine\n" in said  # the world size, said before the table
    model = trainer.model
    embed = model.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())
    assert f"| frozen | {embed:,} |" in table and f"| trainable | {total - embed:,} |" in table
    assert f"frozen_params 'embed_tokens' matched 1 tensors, {embed:,} entries" in table
    assert "warning: dense_params 'lm_headd' matches no trainable parameter name" in table
    assert f"|   masked (selectable) | {total - embed:,} |" in table
    assert f"|     kept at a masked step (as asked) | {keep_count(total - embed, 0.2):,} |" in table
    start = first_log(trainer, "gmt/entries_trainable")
    assert start["gmt/entries_trainable"] == total - embed and start["gmt/entries_frozen"] == embed
    assert trainer.state.log_history.index(start) == 0  # before the first step's log
    # after the last step: the mean kept fraction over all 3 steps (the last one was never logged)
    assert "gmt: mean kept fraction over the run's 3 optimizer steps: 0.8" in said
    end = first_log(trainer, "gmt/run_kept_fraction")
    assert 0.8 <= end["gmt/run_kept_fraction"] < 0.81
    # AdamW's two fp32 moments per trainable entry, and a step count per tensor
    tensors = sum(1 for p in model.parameters() if p.requires_grad)
    assert 8 * (total - embed) <= end["gmt/optimizer_state_bytes_per_rank"] <= 8 * (total - embed) + 8 * tensors
    changed = first_log(trainer, "gmt/entries_changed")
    assert 0 < changed["gmt/entries_changed"] < total - embed  # the frozen embedding never changed
    assert f"gmt: the saved model changed {changed['gmt/entries_changed']:,} of its {total:,} entries" in said


@pytest.mark.parametrize("strategy", ["full", "gps"])
def test_the_start_table_says_what_a_strategy_trains_and_its_defaults_never_warn(strategy):
    from gmt.config import GMTSFTConfig
    from gmt.masking import LocalGradientAccess, strategy_class
    from gmt.summary import format_summary, mask_summary

    model = torch.nn.Sequential(torch.nn.Linear(8, 16, bias=False), torch.nn.Linear(16, 4, bias=False))  # no bias
    args = GMTSFTConfig(output_dir="unused", bf16=False, mask_strategy=strategy)
    chosen = strategy_class(strategy).from_args(args)
    chosen.setup(LocalGradientAccess(model.named_parameters()))
    table = format_summary(chosen, mask_summary(chosen, model, [], args), args)
    assert "warning" not in table  # gps's own dense_params 'bias' matches nothing here, and says nothing
    if strategy == "full":
        assert "|   masked (selectable) | 0 | 0.0% |" in table
        assert "|   dense (always trained) | 192 | 100.0% |" in table
    else:  # gps_k 4 inputs of each of the 16 + 4 rows
        assert "|     kept at a masked step (as asked) | 80 | 41.7% |" in table
