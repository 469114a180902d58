"""The tiny suite measures learning: a short fine-tune of a base that knows some arithmetic scores
above that base, and the harness's numbers are the ones gmt writes."""

import json

import pytest

from gmt.evaluation import evaluate_checkpoint


@pytest.fixture(scope="module")
def scored_assets(tmp_path_factory):
    """A base that knows some arithmetic (600 pretraining steps) and a short SFT of it. Half the
    tiny model's width and depth: it learns as much here (16% of the test problems after the SFT,
    against 9% for the full-size one) in a third of the pretraining time."""
    from test_sft_trainer import train

    from gmt.tiny import TinySettings, ensure_tiny_assets

    settings = TinySettings(hidden_size=64, intermediate_size=176, num_hidden_layers=2, pretrain_steps=600,
                            sft_train_examples=2000, sft_test_examples=64, dpo_train_examples=16,
                            dpo_test_examples=16)  # fmt: skip
    assets = ensure_tiny_assets(tmp_path_factory.mktemp("gmt-tiny-scored"), settings)
    out = tmp_path_factory.mktemp("tuned")
    trainer = train(assets, out, mask_strategy="gmt", mask_ratio=0.2, max_steps=400, per_device_train_batch_size=16,
                    logging_steps=50)  # fmt: skip
    trainer.save_model(str(out / "model"))
    return assets, out / "model"


def test_tiny_suite_scores_the_fine_tune_above_its_base(scored_assets, tmp_path):
    assets, tuned = scored_assets
    data = assets / "data/sft/test.jsonl"
    base = evaluate_checkpoint(assets / "base", "tiny", tiny_data=data, output_dir=tmp_path / "base")
    after = evaluate_checkpoint(tuned, "tiny", tiny_data=data, output_dir=tmp_path / "tuned")
    assert after["score"] > base["score"]
    assert after["score"] > 0.05
    written = json.loads((tmp_path / "tuned" / "lm_eval_tiny.json").read_text())
    assert written["results"]["gmt_tiny_arith"]["exact_match,answer"] == after["score"]
    assert "| gmt_tiny_arith | exact_match,answer |" in (tmp_path / "tuned" / "eval_tiny.md").read_text()


