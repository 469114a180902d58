"""``gmt check``: the preflight says what the run would be, from the recipe and the model's config
alone, and refuses what training refuses before its model loads."""

import json
import subprocess
import sys

from conftest import REPO


def check(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gmt.command", "check", *arguments], cwd=REPO, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def test_check_says_what_the_run_would_be_under_a_launch(tiny_assets, tmp_path):
    from gmt.masking import keep_count

    result = check("--config", "recipes/tiny/sft_gmt.yaml", "--accelerate_config", "recipes/accelerate/cpu_zero3.yaml",
                   "--model_name_or_path", str(tiny_assets / "base"), "--dataset_name", str(tiny_assets / "data/sft"),
                   "--output_dir", str(tmp_path / "out"), "--per_device_train_batch_size", "4",
                   "--gradient_accumulation_steps", "1", "--max_steps", "7", "--mask_ratio", "0.5")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    said = result.stdout
    assert "processes: 2, DeepSpeed ZeRO-3, from recipes/accelerate/cpu_zero3.yaml" in said
    assert "batch: 4 per process x 1 accumulated x 2 processes = 8 rows per optimizer step" in said
    assert "steps: 7 optimizer steps (max_steps)" in said
    rows = sum(1 for line in (tiny_assets / "data/sft/train.jsonl").read_text().splitlines() if line.strip())
    assert f"data: {rows} training rows, every one checked" in said
    config = json.loads((tiny_assets / "base" / "config.json").read_text())
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        entries = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.for_model(**config)).parameters())
    assert f"|     kept at a masked step (as asked) | {keep_count(entries, 0.5):,} |" in said
    # one figure of AdamW's state (gmt.summary), in all in the start table and per process under ZeRO-3
    assert f"optimizer state: 2 fp32 moments per trainable entry, about {8 * entries / 2**20:,.1f} MiB in all" in said
    assert f"optimizer state per process: about {8 * entries / 2 / 2**30:.2f} GiB (sharded over" in said
    # the mask step's memory from scripts/mask_memory.py's figures, for each process's half of the entries
    from gmt.resources import MASK_MEMORY

    record = next(r for r in json.loads(MASK_MEMORY.read_text())["records"] if r["case"] == "gmt grad"
                  and r["dtype"] == "float32" and r["engine"] == "deepspeed" and r["layout"] == "equal")  # fmt: skip
    expected = record["peak_per_entry"] * entries / 2 + record["peak_fixed_bytes"]
    assert f"mask step per process: about {expected / 2**30:.2f} GiB at its peak" in said
    assert not (tmp_path / "out").exists()  # a preflight writes nothing


def test_check_refuses_what_training_refuses_in_one_line(tiny_assets, tmp_path):
    bad = tmp_path / "data"
    bad.mkdir()
    (bad / "train.jsonl").write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", '
                                     '"content": "r"}]}\n{"messages": []}\n')  # fmt: skip
    result = check("--config", "recipes/tiny/sft_gmt.yaml", "--model_name_or_path", str(tiny_assets / "base"),
                   "--dataset_name", str(bad), "--output_dir", str(tmp_path / "out"),
                   "--eval_suite", "none")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"gmt check: error: {bad / 'train.jsonl'}:2: messages")
    assert "Traceback" not in result.stderr
    # an output_dir that cannot be made (under a file), judged without making anything
    (tmp_path / "a-file").write_text("")
    result = check("--config", "recipes/tiny/sft_gmt.yaml", "--model_name_or_path", str(tiny_assets / "base"),
                   "--output_dir", str(tmp_path / "a-file" / "out"), "--eval_suite", "none")  # fmt: skip
    assert result.returncode == 2
    assert f"output_dir {tmp_path / 'a-file' / 'out'} cannot be made ({tmp_path / 'a-file'} is not a folder)" in (
        result.stderr)  # fmt: skip


def test_a_model_path_that_is_not_there_is_one_line_in_every_command(tmp_path):
    for command in (["gmt/sft.py", "--config", "recipes/tiny/sft_gmt.yaml", "--output_dir", str(tmp_path / "out")],
                    ["-m", "gmt.evaluation", "--suite", "tiny"]):  # fmt: skip
        result = subprocess.run([sys.executable, *command, "--model_name_or_path" if "gmt/sft.py" in command else
                                 "--model", "./no-such-model"], cwd=REPO, capture_output=True, text=True)  # fmt: skip
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr and "Repo id" not in result.stderr
        assert "./no-such-model does not exist" in result.stderr.strip().splitlines()[-1]


def test_a_low_precision_model_without_mixed_precision_is_refused_before_it_loads(tiny_assets, tmp_path):
    result = check("--config", "recipes/tiny/sft_gmt.yaml", "--model_name_or_path", str(tiny_assets / "base"),
                   "--dataset_name", str(tiny_assets / "data/sft"), "--output_dir", str(tmp_path / "out"),
                   "--dtype", "bfloat16", "--bf16", "false")  # fmt: skip
    assert result.returncode == 2
    assert "dtype bfloat16 loads the trainable weights in low precision, and bf16 and fp16 are false" in result.stderr


def test_a_launch_counts_its_processes_as_accelerate_does():
    # num_processes in an accelerate config is the total over its machines (16 on 2 machines of 8, not 32)
    from gmt.check import launch_layout
    from gmt.launch import accelerate_launch_processes

    assert launch_layout("recipes/accelerate/zero3_multinode.yaml")[0] == 16
    assert accelerate_launch_processes(["--config_file", "recipes/accelerate/zero3_multinode.yaml", "x.py"]) == 16
    assert accelerate_launch_processes(["--num_processes=4", "x.py", "--num_processes", "9"]) == 4  # the script's own
    assert accelerate_launch_processes(["x.py"]) is None


def test_check_reads_a_grpo_recipe_with_its_rewards_columns(tiny_assets, tmp_path):
    # the tiny GRPO recipe: gmt_tiny_arith reads each row's answer, so rows without it are refused
    common = ("--config", "recipes/tiny/grpo_gmt.yaml", "--model_name_or_path", str(tiny_assets / "base"),
              "--output_dir", str(tmp_path / "out"))  # fmt: skip
    result = check(*common, "--dataset_name", str(tiny_assets / "data/dpo"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "gmt check: gmt/grpo.py, data" in result.stdout
    assert "gmt check: everything training checks before its model loads passed" in result.stdout
    bare = tmp_path / "prompts"
    bare.mkdir()
    (bare / "train.jsonl").write_text('{"prompt": [{"role": "user", "content": "What is 2 + 3?"}]}\n')
    refused = check(*common, "--dataset_name", str(bare))
    assert refused.returncode == 2
    assert "GRPO data set needs the columns prompt+answer; it has ['prompt']" in refused.stderr.strip().splitlines()[-1]
