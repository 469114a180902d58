"""The real model offline: the GGUF conversion and its checks (each can fail), the reasoning-gym
data, the verifier suite, and a few masked SFT steps of SmolLM2-135M-Instruct."""

import json
import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO, logged, run_sft
from gmt.smollm2 import ensure_smollm2_assets
from gmt.smollm2.build import DEFAULT_TASKS
from gmt.smollm2.convert import (
    PERPLEXITY_BOUND,
    check_perplexity,
    check_shapes,
    check_tokenizer,
    packaged_gguf,
    perplexity,
)
from gmt.smollm2.tasks import (
    FINAL_ANSWER,
    entries,
    final_answer,
    majority_baseline,
    preference_pairs,
    verify,
    write_task,
)

TASK = DEFAULT_TASKS[0]  # the recipes' task


@pytest.fixture(scope="module")
def smollm2():
    """The converted checkpoint and the data, in the repository's cache (built once, like the tiny base)."""
    return ensure_smollm2_assets(REPO / ".cache/smollm2/SmolLM2-135M-Instruct", REPO / ".cache/smollm2/data")


@pytest.fixture(scope="module")
def converted(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = smollm2[0]
    return AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)


def test_the_conversion_records_its_checks(smollm2):
    record = json.loads((smollm2[0] / "gmt_conversion.json").read_text())
    assert record["tensors_compared"] == 272  # 30 blocks of 9, the embedding and the final norm
    assert record["paragraph_perplexity"] < PERPLEXITY_BOUND
    assert "dequantized 4-bit" in record["note"]
    config = json.loads((smollm2[0] / "config.json").read_text())
    assert "quantization_config" not in config and config["eos_token_id"] == 2  # <|im_end|>


def test_shape_check_finds_a_wrong_tensor(converted):
    model, _ = converted
    state = dict(model.state_dict())
    assert check_shapes(state, packaged_gguf(), model.config.num_hidden_layers) == 272
    state["model.layers.3.self_attn.k_proj.weight"] = state["model.layers.3.self_attn.k_proj.weight"].T
    with pytest.raises(ValueError, match=r"model.layers.3.self_attn.k_proj.weight has shape \(576, 192\)"):
        check_shapes(state, packaged_gguf(), model.config.num_hidden_layers)
    del state["model.layers.3.self_attn.k_proj.weight"]
    with pytest.raises(ValueError, match="blk.3.attn_k.weight"):
        check_shapes(state, packaged_gguf(), model.config.num_hidden_layers)


def test_tokenizer_check_on_its_sample(converted):
    _, tokenizer = converted
    ids = check_tokenizer(tokenizer)
    assert ids[0] == 1 and ids.count(2) == 1  # <|im_start|>, <|im_end|>
    assert [tokenizer.decode([i]) for i in ids].count("1") == 1  # "1234" is 4 tokens of one digit
    tokenizer.eos_token = "<|endoftext|>"  # the usual GGUF pitfall: eos read as the document end
    try:
        with pytest.raises(ValueError, match="eos is '<|endoftext|>'"):
            check_tokenizer(tokenizer)
    finally:
        tokenizer.eos_token = "<|im_end|>"


def test_perplexity_check_refuses_the_gguf_permutation(converted):
    """The query/key rows as the GGUF stores them (llama.cpp's rotary permutation not undone): the
    converter mistake the perplexity bound exists for."""
    model, tokenizer = converted
    assert check_perplexity(model, tokenizer) < PERPLEXITY_BOUND
    config = model.config
    wrong = {}
    for index, layer in enumerate(model.model.layers):
        for name, heads in (("q_proj", config.num_attention_heads), ("k_proj", config.num_key_value_heads)):
            weight = getattr(layer.self_attn, name).weight
            wrong[(index, name)] = weight.detach().clone()
            rows = weight.shape[0]
            permuted = weight.reshape(heads, 2, rows // heads // 2, -1).swapaxes(1, 2).reshape(weight.shape)
            with torch.no_grad():
                weight.copy_(permuted)
    try:
        assert perplexity(model, tokenizer) > 2 * PERPLEXITY_BOUND
        with pytest.raises(ValueError, match="perplexity"):
            check_perplexity(model, tokenizer)
    finally:
        with torch.no_grad():
            for (index, name), weight in wrong.items():
                getattr(model.model.layers[index].self_attn, name).weight.copy_(weight)


def test_task_rows_splits_and_pairs(tmp_path):
    folder = write_task("letter_counting", tmp_path / "letter_counting", {"train": 60, "validation": 20, "test": 20})
    rows = {split: [json.loads(line) for line in (folder / f"{split}.jsonl").open()] for split in ("train", "test")}
    assert len(rows["train"]) == 60 and 0 < len(rows["test"]) <= 20
    assert not {r["prompt"][0]["content"] for r in rows["test"]} & {r["prompt"][0]["content"] for r in rows["train"]}
    first = rows["train"][0]
    assert set(first) == {"prompt", "completion", "task", "answer", "entry"}
    assert first["completion"][0]["content"] == f"{FINAL_ANSWER} {first['answer']}"
    entry = json.loads(first["entry"])
    assert verify("letter_counting", final_answer(first["completion"][0]["content"]), entry) == 1.0
    pairs = [json.loads(line) for line in (tmp_path / "letter_counting_dpo" / "train.jsonl").open()]
    assert len(pairs) == 60
    for pair, row in zip(pairs, rows["train"]):
        entry = json.loads(row["entry"])
        assert verify("letter_counting", final_answer(pair["chosen"][0]["content"]), entry) == 1.0
        assert verify("letter_counting", final_answer(pair["rejected"][0]["content"]), entry) < 1.0
    # most letter_counting answers are "1": a model that always says so solves this share of the test rows
    assert majority_baseline(folder) == sum(r["answer"] == "1" for r in rows["test"]) / len(rows["test"]) > 0.2


def test_reasoning_in_the_reply_where_the_task_has_it():
    generated = entries("gsm_symbolic", 4, 1)
    pairs = preference_pairs("gsm_symbolic", generated, 0)
    chosen = pairs[0]["chosen"][0]["content"]
    assert chosen.startswith(generated[0]["metadata"]["answer_cot"].strip()[:40])
    assert chosen.splitlines()[-1] == f"{FINAL_ANSWER} {generated[0]['answer']}"


def test_an_unknown_task_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="--task 'letter_countin': reasoning-gym has no such task \\(did you mean "
                                         "'letter_counting'\\?\\)"):  # fmt: skip
        write_task("letter_countin", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_final_answer_line():
    assert final_answer("3 h's.\nFinal answer: 3") == "3"
    assert final_answer("Final answer: 2\nno, wait\nFinal answer:  4 ") == "4"  # the last one counts
    assert final_answer("The answer is 3.") is None


def test_verifier_scores_the_reply(smollm2):
    from gmt.evaluation.verifiers import process_results

    row = json.loads((smollm2[1] / TASK / "test.jsonl").open().readline())
    assert process_results(row, [f"Final answer: {row['answer']}"]) == {"solved": 1.0, "reward": 1.0, "answered": 1.0}
    wrong = ", ".join(reversed(row["answer"].split(", ")))  # the list as given, not reversed
    assert process_results(row, [f"Final answer: {wrong}"])["solved"] == 0.0
    # reasoning-gym's partial credit for a reply that holds the answer: a reward, not a solve
    partial = process_results(row, [f"Final answer: {row['answer']} or so"])
    assert partial["solved"] == 0.0 and 0 < partial["reward"] < 1
    assert process_results(row, [f"It is {row['answer']}."]) == {"solved": 0.0, "reward": 0.0, "answered": 0.0}


def test_masked_steps_of_the_real_model_then_the_verifier_suite(smollm2, tmp_path):
    """Four gmt steps (ratio 0.5) on short rows: half of the entries kept at every step, the loss
    falls, and gmt-eval's verifier suite scores the result on 6 held-out rows."""
    model_dir, data_dir = smollm2
    out = tmp_path / "run"
    result = run_sft("recipes/smollm2-135m/sft_gmt.yaml", model_dir, data_dir / TASK, out,
                     "--max_steps", "4", "--logging_steps", "1", "--mask_ratio", "0.5", "--learning_rate", "1e-4",
                     "--per_device_train_batch_size", "2", "--warmup_steps", "0", "--eval_suite", "reasoning_gym",
                     "--eval_limit", "6", env={"OMP_NUM_THREADS": "2"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    kept = logged(result.stdout, "mask/kept_fraction")
    assert len(kept) == 4 and all(abs(value - 0.5) < 0.01 for value in kept)
    losses = logged(result.stdout, "loss")
    assert losses[-1] < losses[0] / 2, losses  # the "Final answer:" format is learned within steps
    scores = json.loads((out / "eval" / "lm_eval_reasoning_gym.json").read_text())
    task = scores["gmt"]["scores"]["gmt_reasoning_gym"]
    assert task["answered,none"] > 0.5  # the base answers in this format on none of its rows
    assert 0.0 <= task["solved,none"] <= task["reward,none"] <= task["answered,none"]


def test_the_comparison_plans_the_real_recipe_with_the_models_budgets(smollm2, tmp_path):
    """--plan on the SmolLM2 recipe: fixed-mask budgets from its hidden size (72 of 576), the suite
    checked against the rows it will score, the run lengths from the recipe (80 steps, sweeps of 27),
    the grids around --base_learning_rate."""
    command = [sys.executable, "-m", "gmt.compare", "--config", "recipes/smollm2-135m/sft_gmt.yaml",
               "--model", str(smollm2[0]), "--data", str(smollm2[1] / TASK),
               "--validation_data", str(smollm2[1] / TASK / "validation.jsonl"),
               "--out", str(tmp_path / "out"), "--methods", "full", "grft", "gps", "--plan",
               "--base_learning_rate", "5e-5"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(80 optimizer steps a run on 640 rows)" in result.stdout and "runs of 27 steps" in result.stdout
    # the grid of the committed comparison (docs/compare/smollm2), made when the recipe's rate was 5e-5
    assert "  full: 1.5e-05, 5e-05, 0.00015 (--mask_strategy full)" in result.stdout
    assert "(--mask_strategy grft --grft_k 72)" in result.stdout
    assert "(--mask_strategy gps --gps_k 72)" in result.stdout
    copied = tmp_path / "out" / "data"
    assert sum(1 for _ in (copied / "validation.jsonl").open()) == 200 and (copied / "test.jsonl").is_file()


def test_the_dpo_recipe_masks_the_real_policy(smollm2, tmp_path):
    """recipes/smollm2-135m/dpo_gmt.yaml as shipped, 2 steps from the base on the task's pairs: the
    policy starts as its reference (loss log 2), gmt keeps 80% of the entries at each step, and the
    saved policy differs from the base in no more entries than were kept."""
    model_dir, data_dir = smollm2
    result = run_sft("recipes/smollm2-135m/dpo_gmt.yaml", model_dir, data_dir / f"{TASK}_dpo",
                     tmp_path / "dpo", "--max_steps", "2", "--logging_steps", "1", "--per_device_train_batch_size",
                     "2", script="gmt/dpo.py", env={"OMP_NUM_THREADS": "2"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert [round(value, 3) for value in logged(result.stdout, "mask/kept_fraction")] == [0.8, 0.8]
    assert logged(result.stdout, "loss")[0] == pytest.approx(0.6931, abs=1e-3)
    changed = re.search(r"changed ([\d,]+) of its ([\d,]+) entries", result.stdout)
    share = int(changed[1].replace(",", "")) / int(changed[2].replace(",", ""))
    assert 0.5 < share <= 0.85, share  # two steps' kept entries (80% each, mostly the same ones)


@pytest.mark.slow  # GRPO's generation and 2 steps of the real model (a few minutes)
def test_the_grpo_recipe_masks_the_real_policy_and_syncs_the_kept_entries(smollm2, tmp_path):
    """recipes/smollm2-135m/grpo_gmt.yaml as shipped, 2 steps from the base: the task's verifier is
    logged as a reward (the base never writes the final-answer line it reads, so it gives 0 here;
    the recipe starts from the SFT model), the completions' length is added so that the groups have
    an advantage to follow; gmt keeps 3% of the entries at each step, and each step changes at most
    those (update mode; step_delta_every 1): a sync of the changed entries is a fraction of the dense one."""
    model_dir, data_dir = smollm2
    result = run_sft("recipes/smollm2-135m/grpo_gmt.yaml", model_dir, data_dir / TASK, tmp_path / "grpo",
                     "--reward_funcs", "gmt_reasoning_gym", "tests.grpo_rewards.longer_is_better",
                     "--max_steps", "2", "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1",
                     "--num_generations", "4", "--max_completion_length", "24", script="gmt/grpo.py",
                     env={"OMP_NUM_THREADS": "2"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert [round(value, 3) for value in logged(result.stdout, "mask/kept_fraction")] == [0.03, 0.03]
    assert logged(result.stdout, "rewards/gmt_reasoning_gym/mean") == [0.0, 0.0]
    changed = logged(result.stdout, "delta/changed_fraction")
    assert len(changed) == 2 and all(0 < value <= 0.03 + 1e-4 for value in changed)
    assert all(value <= 2 * 0.03 + 1e-4 for value in logged(result.stdout, "delta/bytes_vs_dense"))
