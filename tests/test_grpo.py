"""GMTGRPOTrainer: TRL's GRPOTrainer with the mask, on the tiny model with a reward function. The
first optimizer step moves only the entries the mask kept (AdamW has no moments yet, and no weight
decay), while GRPO's own step counter (``_step``) keeps counting its generation rounds."""

import json

import pytest
import torch


def grpo_run(tiny_assets, tmp_path, **mask_settings):
    from datasets import Dataset
    from grpo_rewards import longer_is_better  # rewards that differ within a group

    from gmt import GMTGRPOConfig, GMTGRPOTrainer

    rows = [json.loads(line) for line in (tiny_assets / "data/sft/train.jsonl").read_text().splitlines()[:8]]
    prompts = Dataset.from_list([{"prompt": row["messages"][:1]} for row in rows])

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


# `gmt grpo` from a recipe: the tiny word problems' prompts (data/dpo: prompt and answer), rewarded by
# the tiny eval task's own check and, so that an untrained model's groups differ, by length.
GRPO_RECIPE = "recipes/tiny/grpo_gmt.yaml"
REWARDS = ("--reward_funcs", "gmt_tiny_arith", "tests.grpo_rewards.longer_is_better")


def gmt_grpo(tiny_assets, out, *overrides, model=None):
    from conftest import run_sft

    return run_sft(GRPO_RECIPE, model or tiny_assets / "base", tiny_assets / "data/dpo", out, "--max_steps", "1",
                   "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1", *overrides,
                   script="gmt/grpo.py")  # fmt: skip


def test_gmt_grpo_trains_the_recipe_with_rewards_by_name(tiny_assets, tmp_path):
    from safetensors.torch import load_file
    from test_offload import changed_fraction

    from gmt.tools.delta import main as gmt_delta

    deltas = tmp_path / "deltas"
    result = gmt_grpo(tiny_assets, tmp_path / "run", *REWARDS, "--max_steps", "2", "--step_delta_every", "1",
                      "--step_delta_dir", str(deltas))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    log = json.loads((tmp_path / "run" / "trainer_state.json").read_text())["log_history"]
    step = next(entry for entry in log if "mask/kept_fraction" in entry)
    # each reward logged under its name: the eval task's check (an untrained model never answers
    # right: 0) and the length, which differs within the groups
    assert step["rewards/gmt_tiny_arith/mean"] == 0 and step["rewards/longer_is_better/std"] > 0
    # update mode at mask_ratio 0.8: each step changes the kept 20% (those with a gradient), nothing else,
    # and a weight sync of only those sends 8 bytes (int32 index, fp32 value) for each
    assert step["mask/kept_fraction"] == pytest.approx(0.2, abs=1e-3)
    assert 0.1 < step["delta/changed_fraction"] <= 0.2 + 1e-4
    assert step["delta/bytes_vs_dense"] == pytest.approx(2 * step["delta/changed_fraction"], rel=1e-3)
    assert 0.1 < changed_fraction(tiny_assets, tmp_path / "run") <= 2 * 0.2 + 1e-4
    # the two steps' deltas, applied in order to the base, are the saved model, bit for bit
    gmt_delta(["apply", "--base", str(tiny_assets / "base"), "--delta", str(deltas / "step-0000001.safetensors"),
               str(deltas / "step-0000002.safetensors"), "--out", str(tmp_path / "rebuilt")])  # fmt: skip
    rebuilt, saved = load_file(tmp_path / "rebuilt/model.safetensors"), load_file(tmp_path / "run/model.safetensors")
    assert rebuilt.keys() == saved.keys() and all(torch.equal(rebuilt[k], saved[k]) for k in saved)


@pytest.mark.parametrize(
    ("overrides", "refusal"),
    [
        (("--reward_funcs", "no_such_reward"), "reward_funcs 'no_such_reward' is not a reward gmt knows"),
        (("--reward_funcs", "gmt_next_word"), "reward_funcs 'gmt_next_word': this gmt-eval task is not scored by"),
        ((), None),  # the recipe's reward, but a data set without the prompt column (the SFT rows)
        (("--reward_funcs", "gmt_tiny_arith", "--use_vllm", "true"), "use_vllm true needs a GPU"),
    ],
    ids=["unknown-reward", "not-a-reward-task", "no-prompt-column", "vllm-on-cpu"],
)
def test_gmt_grpo_refuses_before_the_model_loads(tiny_assets, tmp_path, overrides, refusal):
    from conftest import run_sft

    data = tiny_assets / ("data/sft" if refusal is None else "data/dpo")
    result = run_sft(GRPO_RECIPE, tmp_path / "no-model", data, tmp_path / "run", *overrides, script="gmt/grpo.py")
    assert result.returncode == 2
    said = result.stderr.strip().splitlines()[-1]
    expected = refusal or "GRPO data set needs the columns prompt+answer; it has ['answer', 'messages']"
    assert expected in said and "Traceback" not in result.stderr
    assert "no-model" not in said  # nothing tried to load it


def test_a_grpo_recipe_runs_as_gmt_grpo():
    import yaml

    from gmt.config import recipe_script

    assert recipe_script(yaml.safe_load(open(GRPO_RECIPE))) == "gmt/grpo.py"
    assert recipe_script({"beta": 0.1, "loss_type": "sigmoid"}) == "gmt/dpo.py"  # fields GRPOConfig shares


def test_rewards_score_as_the_eval_task_does():
    from gmt.rewards import reward_function
    from gmt.smollm2.tasks import entries, reply

    tiny = reward_function("gmt_tiny_arith")
    completions = [[{"role": "assistant", "content": "3 + 4 = 7. The answer is 7."}], "The answer is 8.", "7"]
    assert tiny(completions, answer=[7, 7, 7]) == [1.0, 0.0, 0.0]  # the number after "The answer is"
    entry = entries("word_sequence_reversal", 1, seed=3)[0]
    verifier = reward_function("gmt_reasoning_gym")
    rows = {"task": ["word_sequence_reversal"] * 3, "entry": [json.dumps(entry)] * 3}
    wrong = "Final answer: " + ", ".join(reversed(str(entry["answer"]).split(", ")))  # the list unreversed
    assert verifier([reply(entry), wrong, "no final line"], **rows) == [1.0, 0.0, 0.0]
