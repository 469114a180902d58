"""A TRL user's config works unchanged (issue 29): what plain TRL accepts, gmt accepts too."""

import pytest

from conftest import REPO
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
    kept = trainer.state.log_history[0]["mask/kept_fraction"]
    assert 0.8 <= kept < 0.81
