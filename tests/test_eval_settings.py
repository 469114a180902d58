"""gmt-eval's settings: what reaches the harness (backend, model and generation arguments, limits),
and every bad input refused before a model loads, naming the setting."""

import json
import shutil
from dataclasses import replace

import pytest

from gmt.config import GMTScriptArguments, GMTSFTConfig
from gmt.evaluation import EvalArguments, load_suite, plan
from gmt.evaluation.after_training import check_before_training, evaluation_environment, evaluation_settings
from gmt.evaluation.harness import list_data, model_arguments, parse
from gmt.evaluation.suites import check_requirements
from gmt.standins.eval_data import build_eval_data


def tiny_args(tiny_assets, **settings) -> EvalArguments:
    defaults = {
        "suite": "tiny",
        "model": str(tiny_assets / "base"),
        "task_data": str(tiny_assets / "data/sft/test.jsonl"),
    }
    return EvalArguments(**{**defaults, **settings})


def test_model_and_generation_arguments_reach_the_harness(tiny_assets):
    planned = plan(tiny_args(tiny_assets, model_args="max_length=64,trust_remote_code=True", gen_kwargs=
                             "max_gen_toks=5", limit=3, batch_size="4", device="cpu"))  # fmt: skip
    assert planned.backend == "hf"
    assert planned.model_args == {"pretrained": str(tiny_assets / "base"), "dtype": "auto", "max_length": 64,
                                  "trust_remote_code": True}  # fmt: skip
    assert planned.lm_config == {"batch_size": 4, "device": "cpu"}
    (call,) = planned.calls  # what simple_evaluate receives besides the model and the task manager
    assert call["tasks"] == ["gmt_tiny_arith"] and call["num_fewshot"] == 0 and call["limit"] == 3
    assert call["gen_kwargs"] == "max_gen_toks=5" and call["apply_chat_template"] is True
    assert call["confirm_run_unsafe_code"] is False


def test_vllm_arguments_are_passed_through(tiny_assets):
    args = tiny_args(tiny_assets, backend="vllm", tensor_parallel_size=4, data_parallel_size=2,
                     gpu_memory_utilization=0.8, model_args="max_model_len=4096", batch_size="auto")  # fmt: skip
    model_args, lm_config = model_arguments(args)
    assert model_args == {"pretrained": str(tiny_assets / "base"), "dtype": "auto", "tensor_parallel_size": 4,
                          "data_parallel_size": 2, "gpu_memory_utilization": 0.8, "max_model_len": 4096}  # fmt: skip
    assert lm_config == {"batch_size": "auto"}


def test_vllm_is_refused_where_it_is_not_installed(tiny_assets):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    with pytest.raises(ModuleNotFoundError, match="--backend vllm needs vllm"):
        plan(tiny_args(tiny_assets, backend="vllm"))
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        plan(tiny_args(tiny_assets, tensor_parallel_size=2))


def test_a_peft_adapter_is_scored_on_its_base(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/models/base"}))
    model_args, _ = model_arguments(EvalArguments(suite="tiny", model=str(tmp_path), device="cpu"))
    assert model_args["pretrained"] == "/models/base" and model_args["peft"] == str(tmp_path)
    with pytest.raises(ValueError, match="PEFT adapter"):
        model_arguments(EvalArguments(suite="tiny", model=str(tmp_path), backend="vllm"))


def test_paper_protocol_subsamples_per_task(tiny_assets, tmp_path):
    """general_paper scores BBH, TyDiQA and GSM8K on open-instruct's subsample sizes; --limit caps all."""
    from gmt.standins.eval_data import build_eval_data, suite_reads

    data = build_eval_data(suite_reads("general_paper"), tmp_path)  # no hub here: local copies
    args = EvalArguments(suite="general_paper", model=str(tiny_assets / "base"), allow_code_execution=True,
                         data_dir=str(data))  # fmt: skip
    limits = {task: call["limit"] for call in plan(args).calls for task in call["tasks"]}
    assert limits == {"mmlu": None, "bbh_cot_fewshot": 40, "tydiqa_goldp": 100, "gsm8k_cot": 200,
                      "gmt_humaneval_instruct": None}  # fmt: skip
    capped = {task: call["limit"] for call in plan(replace(args, limit=2)).calls for task in call["tasks"]}
    assert set(capped.values()) == {2}


def test_list_data_prints_the_copies_to_make():
    listing = list_data(parse(["--suite", "math_paper", "--list_data", "--data_dir", "/data/eval"]))
    assert "hf download openai/gsm8k --repo-type dataset --local-dir /data/eval/openai/gsm8k" in listing
    assert "hf download EleutherAI/hendrycks_math --repo-type dataset" in listing


def test_bad_suite_and_missing_task_data_are_named(tiny_assets, tmp_path):
    with pytest.raises(ValueError, match="suite must be one of"):
        plan(tiny_args(tiny_assets, suite="nope"))
    with pytest.raises(FileNotFoundError, match="python -m gmt.tiny writes it"):
        plan(tiny_args(tiny_assets, task_data=str(tmp_path / "missing.jsonl")))
    with pytest.raises(FileNotFoundError, match="python -m gmt.smollm2 writes it"):  # the real model's suites
        plan(tiny_args(tiny_assets, suite="reasoning_gym", task_data=str(tmp_path / "missing.jsonl")))
    with pytest.raises(FileNotFoundError, match="model .* does not exist"):
        plan(tiny_args(tiny_assets, model=str(tmp_path / "no-model")))


def test_local_data_missing_or_without_a_split_is_refused(tiny_assets, tmp_path):
    args = EvalArguments(suite="math", model=str(tiny_assets / "base"), data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="'openai/gsm8k'.*hf download openai/gsm8k"):
        plan(args)
    build_eval_data({"openai/gsm8k": {"main": {"test"}}}, tmp_path)  # the harness's gsm8k also reads train
    with pytest.raises(
        ValueError, match=r"split\(s\) \['train'\] of .*openai/gsm8k \(main\), which has only \['test'\]"
    ):
        plan(args)
    build_eval_data({"openai/gsm8k": {"main": {"test", "train"}}}, tmp_path)
    assert plan(args).calls[0]["tasks"] == ["gmt_gsm8k_metamath"]


def test_chat_suite_needs_a_chat_template(tiny_assets, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(tiny_assets / "base", bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="apply_chat_template in eval/suites/tiny.yaml"):
        plan(tiny_args(tiny_assets, model=str(bare)))


def test_code_execution_and_dependencies_need_their_opt_ins(tiny_assets):
    with pytest.raises(PermissionError, match="--allow_code_execution"):
        plan(EvalArguments(suite="code", model=str(tiny_assets / "base")))
    with pytest.raises(ModuleNotFoundError, match=r"needs gmt_no_such_module.*pip install 'gmt\[eval\]'"):
        check_requirements(replace(load_suite("code"), requires=("gmt_no_such_module",)))


def test_after_training_settings_are_the_training_run_s(tmp_path):
    training = GMTSFTConfig(output_dir=str(tmp_path / "run"), bf16=False, use_cpu=True, report_to="none")
    script = GMTScriptArguments(dataset_name=str(tmp_path), eval_suite="math", eval_limit=3,
                                eval_args="--batch_size 2 --gen_kwargs max_gen_toks=4")  # fmt: skip
    args = evaluation_settings(script, training)
    assert (args.model, args.output_dir, args.device) == (str(tmp_path / "run"), str(tmp_path / "run/eval"), "cpu")
    assert (args.limit, args.batch_size, args.gen_kwargs) == (3, "2", "max_gen_toks=4")
    assert parse(args.to_argv()) == args  # the evaluation process gets exactly these settings
    assert evaluation_settings(replace(script, eval_suite="none", eval_limit=None, eval_args=None), training) is None


def test_after_training_bad_settings_are_refused_before_training(tmp_path):
    training = GMTSFTConfig(output_dir=str(tmp_path / "run"), bf16=False, use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="eval_limit and eval_args apply to eval_suite"):
        evaluation_settings(GMTScriptArguments(dataset_name="x", eval_args="--limit 2"), training)
    code = evaluation_settings(GMTScriptArguments(dataset_name="x", eval_suite="code"), training)
    with pytest.raises(PermissionError, match="eval_args '--allow_code_execution'"):
        check_before_training(code, "unused", None)
    with pytest.raises(SystemExit):  # argparse names the flag and its choices
        evaluation_settings(
            GMTScriptArguments(dataset_name="x", eval_suite="tiny", eval_args="--backend nope"), training
        )
    with pytest.raises(ValueError, match="not used by the HfArgumentParser"):
        evaluation_settings(GMTScriptArguments(dataset_name="x", eval_suite="tiny", eval_args="--no_such 1"), training)


def test_the_evaluation_process_leaves_the_launcher_s_world(monkeypatch):
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "MASTER_PORT": "29500", "ACCELERATE_USE_DEEPSPEED": "true",
                        "TORCHELASTIC_RUN_ID": "x", "HF_HOME": "/hf"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    environment = evaluation_environment()
    assert not {"RANK", "WORLD_SIZE", "MASTER_PORT", "ACCELERATE_USE_DEEPSPEED", "TORCHELASTIC_RUN_ID"} & set(
        environment
    )
    assert environment["HF_HOME"] == "/hf"


def test_tiny_build_writes_the_equation_probes_and_the_second_task(tiny_assets):
    """tiny_equations reads bare equations from pretraining's distribution, each with its result;
    the second task's replies are two consistent equations."""
    import operator

    from gmt.tiny.build import BUILD_VERSION

    rows = [json.loads(line) for line in (tiny_assets / "data/equations/test.jsonl").read_text().splitlines()]
    assert len(rows) == 16  # the tests' sft_test_examples
    for row in rows:
        a, op, b, equals = row["prompt"].split(" ")
        assert (
            equals == "="
            and {"+": operator.add, "-": operator.sub, "*": operator.mul}[op](int(a), int(b)) == row["answer"]
        )
    assert json.loads((tiny_assets / "build.json").read_text())["build_version"] == BUILD_VERSION
    # The second task: two equations in a row, the second starting from the first's result.
    for line in (tiny_assets / "data/sft_twostep/test.jsonl").read_text().splitlines():
        record = json.loads(line)
        first, second, answer = record["messages"][1]["content"].split(". ")
        (a, op, b), middle = first.split(" = ")[0].split(" "), int(first.split(" = ")[1])
        (m, op2, c), result = second.split(" = ")[0].split(" "), int(second.split(" = ")[1])
        apply = {"+": operator.add, "-": operator.sub, "*": operator.mul}
        assert apply[op](int(a), int(b)) == middle == int(m) and apply[op2](middle, int(c)) == result >= 0
        assert answer == f"The answer is {result}." and record["answer"] == result
    assert load_suite("tiny_equations").default_data == ".cache/gmt-tiny/data/equations/test.jsonl"


def test_offline_without_a_local_copy_is_refused_before_the_model_loads(tiny_assets, tmp_path):
    import os
    import subprocess
    import sys

    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_assets / "base", no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    command = [sys.executable, "-m", "gmt.evaluation", "--suite", "code", "--model", str(no_weights),
               "--allow_code_execution"]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    said = result.stderr.strip().splitlines()[-1]
    assert "ConnectionError: suite 'code': task" in said and "reads the hub data set 'evalplus/humanevalplus'" in said
    assert "--list_data" in said and "--data_dir DIR" in said and "OfflineModeIsEnabled" in said
