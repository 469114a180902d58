"""No update is lost to precision: without an engine that keeps fp32 master weights (DeepSpeed,
FSDP), bf16 weights are upcast to fp32 and trained under autocast (gmt.precision)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_standin_recipes import parsed_recipe

from conftest import REPO, first_log

DPO_RECIPE = REPO / "recipes/llama2-7b/dpo_ultrafeedback_gmt.yaml"


def test_dpo_recipe_changes_every_kept_entry_at_its_first_step(standin_cache, tmp_path, monkeypatch):
    # The recipe as on one GPU or under DDP: dtype bfloat16, bf16 true, lr 5e-7. In bf16 weights a
    # step of 5e-7 is below the spacing (~1e-4 at 0.02): 0.5% of the entries changed, where 80% were kept.
    from transformers import AutoModelForCausalLM

    from gmt.dpo import main

    monkeypatch.chdir(REPO)
    arguments = parsed_recipe(DPO_RECIPE, standin_cache, tmp_path, "--max_steps", "1", "--warmup_steps", "0",
                              "--report_to", "none", "--save_strategy", "steps", "--save_steps", "1",
                              "--eval_suite", "none")  # fmt: skip
    model_path = arguments[2].model_name_or_path
    trainer = main(*arguments)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16)
    trained = dict(trainer.model.named_parameters())
    assert all(p.dtype == torch.float32 for p in trained.values() if p.requires_grad)
    changed = sum(int((trained[n].detach() != p.float()).sum()) for n, p in base.named_parameters())
    total = sum(p.numel() for p in base.parameters())
    kept = first_log(trainer)["mask/kept_fraction"] * total
    assert 0.8 <= kept / total < 0.81
    assert changed == pytest.approx(kept, rel=1e-4)  # T > 0, so every kept entry has a gradient and moves
    # The final model in the recipe's dtype; the checkpoint keeps the fp32 weights a resumed run goes on from.
    output_dir = Path(trainer.args.output_dir)
    assert {t.dtype for t in load_file(output_dir / "model.safetensors").values()} == {torch.bfloat16}
    checkpoint = load_file(output_dir / "checkpoint-1" / "model.safetensors")
    assert {t.dtype for t in checkpoint.values()} == {torch.float32}
    name = next(n for n in checkpoint if n in trained)
    assert torch.equal(checkpoint[name], trained[name].detach())


def test_bf16_weights_without_mixed_precision_are_refused_by_name(tiny_assets, tmp_path):
    from gmt.sft import main, make_parser

    args = ["--config", "recipes/tiny/sft_gmt.yaml", "--model_name_or_path", str(tiny_assets / "base"),
            "--dataset_name", str(tiny_assets / "data/sft"), "--output_dir", str(tmp_path / "out"),
            "--dtype", "bfloat16", "--max_steps", "1", "--eval_suite", "none"]  # fmt: skip
    # refused before the model loads (gmt.precision.check_dtype_settings), as once it has loaded
    refusal = r"dtype bfloat16 loads the trainable weights in low precision, and bf16 and fp16 are false.*Set bf16 true"
    with pytest.raises(ValueError, match=refusal):
        main(*make_parser().parse_args_and_config(args=args))
