"""Sparse delta export/apply: the round trip reproduces the fine-tuned weights bit for bit."""

import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import REPO
from gmt.delta import apply_delta, changed_fraction, compute_delta, load_delta, save_delta


def test_round_trip_is_exact_and_stores_only_changes(tmp_path):
    generator = torch.Generator().manual_seed(0)
    base = {"a": torch.randn(40, 30, generator=generator), "b": torch.randn(7, generator=generator).bfloat16()}
    base_copy = {name: t.clone() for name, t in base.items()}
    tuned = {name: t.clone() for name, t in base.items()}
    tuned["a"].view(-1)[::10] += 1e-3  # a tenth of "a" changes
    tuned["b"][3] = -tuned["b"][3]
    delta = compute_delta(base, tuned)
    assert delta["a.indices"].numel() == 120 and delta["b.indices"].tolist() == [3]
    save_delta(delta, tmp_path / "d.safetensors")
    rebuilt = apply_delta(base, load_delta(tmp_path / "d.safetensors"))
    for name in base:
        assert rebuilt[name].dtype == tuned[name].dtype and torch.equal(rebuilt[name], tuned[name])
        assert torch.equal(base[name], base_copy[name])  # apply_delta returns a copy
    assert changed_fraction(delta, base) == pytest.approx(121 / (1200 + 7))


def test_mismatched_weights_are_refused():
    with pytest.raises(ValueError, match="names"):
        compute_delta({"a": torch.zeros(2)}, {"b": torch.zeros(2)})
    with pytest.raises(ValueError, match="a:"):
        compute_delta({"a": torch.zeros(2)}, {"a": torch.zeros(3)})


def test_cli_round_trip_on_a_masked_fine_tune(tiny_assets, tmp_path):
    from datasets import load_dataset

    from gmt.config import GMTSFTConfig
    from gmt.trainer import GMTSFTTrainer

    dataset = load_dataset("json", data_files=str(tiny_assets / "data/sft/train.jsonl"), split="train")
    args = GMTSFTConfig(output_dir=str(tmp_path / "run"), bf16=False, activation_checkpointing=False, max_steps=2,
                        mask_ratio=0.9, gmt_mode="update", learning_rate=1e-3, lr_scheduler_type="constant",
                        report_to="none", save_strategy="no", max_length=96, per_device_train_batch_size=4)  # fmt: skip
    trainer = GMTSFTTrainer(model=str(tiny_assets / "base"), args=args, train_dataset=dataset.remove_columns("answer"))
    trainer.train()
    trainer.save_model(tmp_path / "tuned")

    script = [sys.executable, "scripts/export_delta.py"]
    subprocess.run([*script, "export", "--base", str(tiny_assets / "base"), "--tuned", str(tmp_path / "tuned"),
                    "--out", str(tmp_path / "d.safetensors")], cwd=REPO, check=True)  # fmt: skip
    subprocess.run([*script, "apply", "--base", str(tiny_assets / "base"), "--delta", str(tmp_path / "d.safetensors"),
                    "--out", str(tmp_path / "rebuilt")], cwd=REPO, check=True)  # fmt: skip
    tuned = AutoModelForCausalLM.from_pretrained(tmp_path / "tuned").state_dict()
    rebuilt = AutoModelForCausalLM.from_pretrained(tmp_path / "rebuilt").state_dict()
    assert all(torch.equal(tuned[name], rebuilt[name]) for name in tuned)
    # update mode at ratio 0.9 for 2 steps: at most 2 x 10% of the entries changed
    delta = load_delta(tmp_path / "d.safetensors")
    base = AutoModelForCausalLM.from_pretrained(tiny_assets / "base").state_dict()
    assert 0.1 <= changed_fraction(delta, base) <= 0.2 + 1e-6
