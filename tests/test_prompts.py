"""One prompt format per task: the math and code recipes train on prompts in the format that the
matching eval suite's tasks render (gmt/prompts.py holds each format once)."""

from pathlib import Path

import jinja2
import pytest
import yaml
from datasets import Dataset, load_dataset
from lm_eval.tasks._yaml_loader import load_yaml

from conftest import REPO
from gmt.cli import load_splits
from gmt.data import SFT_DATA
from gmt.evaluation import EVAL_DIR, fill_task_template, load_suite
from gmt.prompts import PROMPT_FORMATS, apply_prompt_format, format_prompt
from gmt.sft import make_parser
from gmt.standins import data_standin

SETUPS = {  # recipe -> (its eval suite, the raw data column its prompt comes from)
    "recipes/llama3-8b/sft_math_gmt.yaml": ("math", "query"),
    "recipes/mistral-7b/sft_code_gmt.yaml": ("code", "instruction"),
}


def task_config(task: str, tmp_path: Path) -> dict:
    """The task as the harness reads it: gmt's file with its placeholders filled, includes merged."""
    filled = tmp_path / f"{task}.yaml"
    filled.write_text(fill_task_template((EVAL_DIR / "tasks" / f"{task}.yaml").read_text(), tmp_path / "none"))
    return load_yaml(filled, resolve_func=False)


def render(template: str, doc: dict) -> str:
    return jinja2.Template(template, keep_trailing_newline=True).render(**doc)


@pytest.mark.parametrize("recipe", sorted(SETUPS))
def test_recipe_trains_in_the_format_its_suite_scores(recipe, standin_cache, tmp_path):
    suite, raw_column = SETUPS[recipe]
    settings = yaml.safe_load((REPO / recipe).read_text())
    script_args, training_args, _ = make_parser().parse_args_and_config(
        ["--config", str(REPO / recipe), "--bf16", "false", "--dataset_name",
         str(data_standin(settings["dataset_name"], standin_cache))]
    )  # fmt: skip
    train = load_splits(script_args, training_args, SFT_DATA).train

    raw_row = load_dataset(str(data_standin(settings["dataset_name"], standin_cache)))["train"][0]
    name = script_args.prompt_format
    trained_prompt = train[0]["prompt"]
    assert trained_prompt == format_prompt(name, raw_row[raw_column])
    assert trained_prompt != raw_row[raw_column]

    tasks = [task.name for task in load_suite(suite).tasks]
    assert not load_suite(suite).apply_chat_template  # the prompt is the format: no chat template on top
    for task in tasks:
        config = task_config(task, tmp_path)
        if suite == "math":  # the eval question is wrapped exactly as a training query is
            assert render(config["doc_to_text"], {"question": raw_row[raw_column]}) == trained_prompt
        else:  # the harness's own instruction for the task, in the training format
            harness = load_yaml(config_include(task), resolve_func=False)["doc_to_text"]
            doc = {"prompt": "def f(x):\n", "text": "Add one.", "test_list": ["assert f(1) == 2"] * 3}
            assert render(config["doc_to_text"], doc) == format_prompt(name, render(harness, doc))


def config_include(task: str) -> str:
    import lm_eval.tasks

    included = yaml.safe_load((EVAL_DIR / "tasks" / f"{task}.yaml").read_text())["include"]
    return included.replace("__LM_EVAL_TASKS__", str(Path(lm_eval.tasks.__file__).parent))


def test_prompt_format_is_refused_for_data_it_cannot_wrap():
    chats = Dataset.from_list([{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(ValueError, match="prompt_format 'metamath' wraps a text prompt column"):
        apply_prompt_format(chats, "metamath")
    with pytest.raises(ValueError, match="prompt_format must be one of"):
        apply_prompt_format(chats, "alpaca")
    assert sorted(PROMPT_FORMATS) == ["magicoder", "metamath"]


def test_math_paper_scores_math_in_the_metamath_training_prompt(tmp_path):
    text = fill_task_template((EVAL_DIR / "tasks" / "gmt_minerva_math_metamath.yaml").read_text(), tmp_path / "none")
    group = yaml.safe_load(text)  # the group's doc_to_text applies to each of its minerva_math tasks
    problem = "What is $2 \\cdot 3$?"
    assert render(group["doc_to_text"], {"problem": problem}) == format_prompt("metamath", problem)
    assert "gmt_minerva_math_metamath" in [task.name for task in load_suite("math_paper").tasks]
