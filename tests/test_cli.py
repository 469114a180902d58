"""The entry point as users run it: `accelerate launch gmt/sft.py --config <recipe> --overrides`."""

import json

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import ACCELERATE_ONE_CPU, logged, run_sft


def test_tiny_recipe_end_to_end_saves_a_loadable_checkpoint(tiny_assets, tmp_path):
    out = tmp_path / "sft_gmt"
    result = run_sft(
        "recipes/tiny/sft_gmt.yaml", tiny_assets / "base", tiny_assets / "data/sft", out,
        "--max_steps", "3", "--logging_steps", "1", "--mask_ratio", "0.5",
        launcher=ACCELERATE_ONE_CPU,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_assets / "base")
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, base.get_parameter(n))]
    assert moved, "the saved checkpoint holds the base weights"
    # An ordinary HF checkpoint: the chat template travels with it and the model generates.
    messages = [{"role": "user", "content": "Ana has 3 apples."}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>\n")
    prompt_ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    generated = model.generate(prompt_ids, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > prompt_ids.shape[1]
    # The CLI override reached the masker: half of the entries kept at every step.
    fractions = logged(result.stdout, "mask/kept_fraction")
    assert len(fractions) == 3 and all(0.5 <= f < 0.51 for f in fractions)


@pytest.mark.parametrize("layout", ["prompt_completion_jsonl", "parquet_file"])
def test_prompt_completion_data_and_single_files(tiny_assets, tmp_path, layout):
    rows = [json.loads(line) for line in (tiny_assets / "data/sft/train.jsonl").read_text().splitlines()[:64]]
    if layout == "prompt_completion_jsonl":
        data = tmp_path / "pc.jsonl"
        records = [{"prompt": r["messages"][:1], "completion": r["messages"][1:]} for r in rows]
        data.write_text("".join(json.dumps(record) + "\n" for record in records))
    else:
        data = tmp_path / "conv.parquet"
        pd.DataFrame({"messages": [r["messages"] for r in rows]}).to_parquet(data)
    out = tmp_path / "out"
    overrides = ("--max_steps", "2", "--logging_steps", "1")
    result = run_sft("recipes/tiny/sft_full.yaml", tiny_assets / "base", data, out, *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = logged(result.stdout, "loss")
    assert len(losses) == 2 and all(0 < loss < 20 for loss in losses)
    assert (out / "model.safetensors").exists()


def test_missing_columns_are_refused_with_their_names(tiny_assets, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"question": "1 + 1?", "reply": "2"}) + "\n")
    result = run_sft("recipes/tiny/sft_full.yaml", tiny_assets / "base", data, tmp_path / "out")
    assert result.returncode != 0
    assert "needs the columns messages or conversations or prompt+completion" in result.stderr


@pytest.mark.parametrize("setting", ["load_in_4bit", "load_in_8bit"])
def test_quantization_that_cannot_be_honoured_is_refused_before_loading(tmp_path, setting):
    # No bitsandbytes or no CUDA GPU here: refused by name, never silently ignored.
    from gmt.sft import main, make_parser

    arguments = ["--config", "recipes/tiny/sft_gmt.yaml", "--output_dir", str(tmp_path), f"--{setting}", "true",
                 "--model_name_or_path", str(tmp_path / "no-model-here"), "--use_peft", "true",
                 "--eval_suite", "none"]  # fmt: skip
    with pytest.raises(ValueError, match=f"{setting} needs"):
        main(*make_parser().parse_args_and_config(arguments))


FLASH_RECIPES = ["recipes/llama3-8b/sft_math_gmt.yaml", "recipes/llama2-7b/dpo_ultrafeedback_gmt.yaml"]


@pytest.mark.parametrize(("recipe", "implementation"), [(FLASH_RECIPES[0], None), (FLASH_RECIPES[1], None),
                                                        (FLASH_RECIPES[0], "flash_attention_3")])  # fmt: skip
def test_flash_attention_this_machine_cannot_run_is_refused_before_anything_loads(tmp_path, recipe, implementation):
    # The GPU recipes name flash_attention_2; without the package (or a GPU) transformers would only
    # fail at the model load, after the data set. The recipe runs unchanged (its hub model and data
    # set, which cannot be fetched here): the refusal comes first, names the setting, the GPU extra
    # and the way around it.
    from gmt.attention import attention_available
    from gmt.dpo import main as dpo_main
    from gmt.dpo import make_parser as dpo_parser
    from gmt.sft import main as sft_main
    from gmt.sft import make_parser as sft_parser

    wanted = implementation or "flash_attention_2"
    if attention_available(wanted):
        pytest.skip(f"{wanted} runs on this machine")
    main, make_parser = (dpo_main, dpo_parser) if "dpo" in recipe else (sft_main, sft_parser)
    # --use_cpu: what a CPU machine needs to parse the bf16 recipe at all (as gmt.standins runs it)
    arguments = ["--config", recipe, "--output_dir", str(tmp_path), "--eval_suite", "none", "--use_cpu", "true"]
    arguments += ["--attn_implementation", implementation] if implementation else []
    with pytest.raises(ValueError, match=rf"attn_implementation '{wanted}' needs the flash-attn\S* package"):
        main(*make_parser().parse_args_and_config(arguments))


def test_a_trl_user_switches_with_one_import():
    import trl

    from gmt import GMTDPOConfig, GMTDPOTrainer, GMTSFTConfig, GMTSFTTrainer

    assert issubclass(GMTSFTTrainer, trl.SFTTrainer) and issubclass(GMTDPOTrainer, trl.DPOTrainer)
    assert issubclass(GMTSFTConfig, trl.SFTConfig) and issubclass(GMTDPOConfig, trl.DPOConfig)


def test_console_scripts_are_the_entry_points():
    import subprocess
    import sys
    from importlib.metadata import entry_points
    from pathlib import Path

    from gmt import dpo, evaluation, sft

    ours = [entry for entry in entry_points(group="console_scripts") if entry.name.startswith("gmt-")]
    scripts = {entry.name: entry.load() for entry in ours}
    assert scripts["gmt-sft"] is sft.cli and scripts["gmt-dpo"] is dpo.cli and scripts["gmt-eval"] is evaluation.main
    result = subprocess.run([str(Path(sys.executable).parent / "gmt-eval"), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--suite" in result.stdout, result.stderr[-2000:]
    result = subprocess.run([str(Path(sys.executable).parent / "gmt-sft"), "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--mask_strategy" in result.stdout and "--gps_k" in result.stdout
