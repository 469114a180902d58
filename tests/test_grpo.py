"""GMTGRPOTrainer: TRL's GRPOTrainer with the mask, on the tiny model with a reward function. The
first optimizer step moves only the entries the mask kept (AdamW has no moments yet, and no weight
decay), while GRPO's own step counter (``_step``) keeps counting its generation rounds."""

import json

import pytest


def grpo_run(tiny_assets, tmp_path, **mask_settings):
    from datasets import Dataset

    from gmt import GMTGRPOConfig, GMTGRPOTrainer

    rows = [json.loads(line) for line in (tiny_assets / "data/sft/train.jsonl").read_text().splitlines()[:8]]
    prompts = Dataset.from_list([{"prompt": row["messages"][:1]} for row in rows])

    def longer_is_better(completions, **_) -> list[float]:  # rewards that differ within a group
        return [float(len(completion[0]["content"])) for completion in completions]

    steps = mask_settings.pop("max_steps", 1)
    args = GMTGRPOConfig(output_dir=str(tmp_path / "out"), max_steps=steps, per_device_train_batch_size=4,
                         num_generations=4, max_completion_length=8, learning_rate=1e-3, bf16=False, use_cpu=True,
                         report_to="none", logging_steps=1, save_strategy="no", save_plots=False, seed=0,
                         **mask_settings)  # fmt: skip
    trainer = GMTGRPOTrainer(model=str(tiny_assets / "base"), reward_funcs=longer_is_better, args=args,
                             train_dataset=prompts)  # fmt: skip
    before = {name: param.detach().clone() for name, param in trainer.model.named_parameters()}
    trainer.train()
    moved = sum(int((param.detach() != before[name]).sum()) for name, param in trainer.model.named_parameters())
    kept = next(entry["mask/kept_fraction"] for entry in trainer.state.log_history if "mask/kept_fraction" in entry)
    return trainer, moved / sum(p.numel() for p in before.values()), kept


# gmt and random in the quick suite; the other strategies take the same path (slow-marked)
@pytest.mark.parametrize("strategy", ["gmt", "random", pytest.param("gmt-update", marks=pytest.mark.slow),
                                      pytest.param("magnitude", marks=pytest.mark.slow)])
def test_a_grpo_step_moves_only_what_the_mask_kept(tiny_assets, tmp_path, strategy):
    mode = {"gmt_mode": "update"} if strategy == "gmt-update" else {}
    trainer, moved, kept = grpo_run(tiny_assets, tmp_path, mask_strategy=strategy.split("-")[0], mask_ratio=0.8, **mode)
    assert kept == pytest.approx(0.2, abs=1e-3)
    assert 0.5 * kept < moved <= kept + 1e-4  # kept entries with a zero gradient stay too
    assert trainer._step >= 1 and trainer._masked_step.masked_step == 0  # GRPO's counter and gmt's, apart


@pytest.mark.slow  # the fixed masks' own path is the quick suite's under SFT; here, GRPO's step
@pytest.mark.parametrize("strategy", ["gps", "grft", "gspf"])
def test_a_fixed_mask_under_grpo_trains_only_its_entries(tiny_assets, tmp_path, strategy):
    # gps and grft: a selection step that updates nothing, then the chosen mask; gspf without warm-up.
    settings = {"gspf": {"gspf_warmup_steps": 0}}.get(strategy, {})
    trainer, moved, _ = grpo_run(tiny_assets, tmp_path, mask_strategy=strategy, max_steps=2, **settings)
    total = sum(p.numel() for p in trainer.model.parameters())
    allowed = (trainer.strategy.target_kept_entries() + sum(
        numel for numel, dense in zip(trainer.strategy.layout.numels, trainer.strategy.dense) if dense)) / total
    assert 0 < moved <= allowed + 1e-6 and allowed < 0.5


def test_grpo_without_a_mask_moves_far_more(tiny_assets, tmp_path):
    _, moved, kept = grpo_run(tiny_assets, tmp_path, mask_strategy="full")
    assert kept == 1.0 and moved > 0.5


@pytest.mark.parametrize("engine", ["ddp", "zero3"])
def test_grpo_on_two_processes_moves_only_what_the_mask_kept(tiny_assets, tmp_path, engine):
    # DDP (torchrun) and DeepSpeed ZeRO-3, where TRL gathers the shards to generate and gmt masks each
    # rank's partition of the gradient; both over gloo on this CPU.
    import os
    import subprocess
    import sys

    from conftest import ACCELERATE_CPU_ZERO3, REPO, torchrun_two_cpu

    out = tmp_path / engine
    launcher = torchrun_two_cpu() if engine == "ddp" else ACCELERATE_CPU_ZERO3
    command = [sys.executable, *launcher, "tests/grpo_run.py", str(tiny_assets / "base"),
               str(tiny_assets / "data/sft/train.jsonl"), str(out), "--ddp_backend", "gloo"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("DeepSpeed ZeRO-3" if engine == "zero3" else "2 processes, DDP") in result.stdout + result.stderr
    run = json.loads((out / "result.json").read_text())
    assert run["world_size"] == 2 and run["kept"] == pytest.approx(0.2, abs=1e-3)
    assert 0.5 * run["kept"] < run["moved"] <= run["kept"] + 1e-4


@pytest.mark.parametrize("checkpoint", ["meta-llama/Meta-Llama-3-8B-Instruct", "Qwen/Qwen3-8B"])
def test_grpo_on_stand_ins_of_the_instruct_families_users_train(tiny_assets, standin_cache, tmp_path, checkpoint):
    # Each family's tokenizer, EOS and stock chat template, as GRPO renders the prompts and stops generating.
    import os
    import subprocess
    import sys

    from conftest import REPO
    from gmt.standins import model_standin

    out = tmp_path / "run"
    command = [sys.executable, "tests/grpo_run.py", str(model_standin(checkpoint, standin_cache)),
               str(tiny_assets / "data/sft/train.jsonl"), str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((out / "result.json").read_text())
    assert run["kept"] == pytest.approx(0.2, abs=1e-3) and 0.5 * run["kept"] < run["moved"] <= run["kept"] + 1e-4
