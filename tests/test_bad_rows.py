"""A bad row is found before the model loads and named by its file and 1-based line (or split and
row), with what is wrong; rows TRL drops at max_length are counted, and a split it empties is
refused naming max_length (issue 28's table; docs/data.md)."""

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from gmt.sft import main, make_parser

USER = {"role": "user", "content": "Ana has 3 apples and buys 4. How many apples does she have?"}
ASSISTANT = {"role": "assistant", "content": "3 + 4 = 7. The answer is 7."}
GOOD = {"messages": [USER, ASSISTANT]}


def without_weights(tiny_assets: Path, folder: Path) -> Path:
    """The tiny base without its weights: a run that reaches the model load fails there, so an
    error about the data proves that the data was checked first."""
    shutil.copytree(tiny_assets / "base", folder, ignore=shutil.ignore_patterns("*.safetensors"), dirs_exist_ok=True)
    return folder


def sft(model: Path, data: Path, output_dir: Path, *overrides: str, recipe: str = "recipes/tiny/sft_gmt.yaml"):
    """gmt/sft.py's main, in process, on the tiny recipe (``assistant_only_loss`` true)."""
    args = ["--config", recipe, "--model_name_or_path", str(model), "--dataset_name", str(data),
            "--output_dir", str(output_dir), "--eval_suite", "none", "--report_to", "none",
            "--disable_tqdm", "true", *overrides]  # fmt: skip
    return main(*make_parser().parse_args_and_config(args=args))


def write_lines(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


SFT_BAD_ROWS = {
    "an empty messages list": ({"messages": []}, "messages is an empty list: no turns"),
    "no assistant turn": ({"messages": [USER]}, "messages has no 'assistant' turn (roles ['user']), and "
                          "assistant_only_loss true learns only from assistant turns"),
    "ShareGPT's roles": ({"messages": [{"role": "human", "content": "hi"}, {"role": "gpt", "content": "yo"}]},
                         "messages has no 'assistant' turn (roles ['gpt', 'human'])"),
    "ShareGPT's keys": ({"messages": [{"from": "human", "value": "hi"}]},
                        "messages[0] has no string 'role' (ShareGPT's from/value turns"),
    "a number as content": ({"messages": [USER, {"role": "assistant", "content": 7}]},
                            "messages[1] (role 'assistant'): content must be text, got int"),
    "a null conversation": ({"messages": None}, "no 'messages' (the SFT rows are read as messages, from the first row"),
    "a turn that is text": ({"messages": ["hi", ASSISTANT]}, "messages[0] must be an object with 'role' and 'content'"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(SFT_BAD_ROWS))
def test_a_bad_sft_row_is_named_by_file_and_line_before_the_model_loads(tiny_assets, tmp_path, case):
    bad_row, message = SFT_BAD_ROWS[case]
    data = write_lines(tmp_path / "train.jsonl", [GOOD, GOOD, bad_row, GOOD])
    model = without_weights(tiny_assets, tmp_path / "no-weights")
    with pytest.raises(ValueError, match=re.escape(f"{data}:3: {message}")):
        sft(model, data, tmp_path / "out")


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"prompt": "1 + 1?", "completion": "2"}, {"prompt": "2 + 2?", "completion": [ASSISTANT]}],
         ":2: prompt is text but completion is a list: both text or both conversations"),
        ([{"prompt": "1 + 1?", "completion": "2"}, {"prompt": "2 + 2?", "completion": "  "}],
         ":2: completion is empty: the row has nothing to learn"),
        ([{"prompt": "1 + 1?", "completion": "2"}, {"prompt": "2 + 2?"}],
         ":2: no 'completion' (the SFT rows are read as prompt+completion, from the first row"),
        ([{"text": "1 + 1 = 2"}, {"text": 4}], ":2: text (dataset_text_field) must be a non-empty string, got int"),
    ],
)  # fmt: skip
def test_prompt_completion_and_text_types_are_checked(tiny_assets, tmp_path, rows, message):
    data = write_lines(tmp_path / "train.jsonl", rows)
    model = without_weights(tiny_assets, tmp_path / "no-weights")
    with pytest.raises(ValueError, match=re.escape(f"{data}{message}")):
        sft(model, data, tmp_path / "out", "--assistant_only_loss", "false")


def test_a_role_the_template_drops_is_refused_naming_the_row(tiny_assets, tmp_path):
    # TULU's template renders system/user/assistant only: ShareGPT's 'human' turns would vanish
    # from the text (the tiny template renders any role, so the same rows pass with it).
    sharegpt = {"messages": [{"role": "human", "content": "1 + 1?"}, {"role": "gpt", "content": "2"}]}
    data = write_lines(tmp_path / "train.jsonl", [GOOD, sharegpt])
    model = without_weights(tiny_assets, tmp_path / "no-weights")
    tulu = ("--assistant_only_loss", "false", "--chat_template_path", "recipes/templates/tulu.jinja")
    with pytest.raises(ValueError, match=re.escape(f"{data}:2: the chat template does not render role 'human'")
                       + r".*the roles of the data it renders: \['user', 'assistant'\]"):  # fmt: skip
        sft(model, data, tmp_path / "out", *tulu)
    with pytest.raises(OSError, match="no-weights"):  # the same rows with the tiny template: on to the model load
        sft(model, data, tmp_path / "out", "--assistant_only_loss", "false")


def test_a_bad_row_of_a_loaded_split_is_named_by_split_and_row(tiny_assets, tmp_path):
    data = tmp_path / "train.parquet"
    pd.DataFrame({"messages": [GOOD["messages"], [], GOOD["messages"]]}).to_parquet(data)
    model = without_weights(tiny_assets, tmp_path / "no-weights")
    with pytest.raises(ValueError, match=re.escape(f"'{data}' split 'train' row 2: messages is an empty list")):
        sft(model, data, tmp_path / "out")


def test_a_bad_dpo_row_is_named(tiny_assets, tmp_path):
    from gmt.dpo import main as dpo_main
    from gmt.dpo import make_parser as dpo_parser

    rows = [{"prompt": [USER], "chosen": [ASSISTANT], "rejected": [ASSISTANT]},
            {"prompt": [USER], "chosen": "7", "rejected": [ASSISTANT]}]  # fmt: skip
    data = write_lines(tmp_path / "train.jsonl", rows)
    model = without_weights(tiny_assets, tmp_path / "no-weights")
    args = ["--config", "recipes/tiny/dpo_gmt.yaml", "--model_name_or_path", str(model), "--dataset_name", str(data),
            "--output_dir", str(tmp_path / "out"), "--report_to", "none"]  # fmt: skip
    with pytest.raises(ValueError, match=re.escape(f"{data}:2: chosen is text but rejected is a list")):
        dpo_main(*dpo_parser().parse_args_and_config(args=args))


def test_every_row_past_max_length_names_max_length(tiny_assets, tmp_path):
    # Under assistant_only_loss a row whose prompt fills max_length has no learned token left:
    # TRL drops it. With every row so, TRL's error was "num_samples=0", naming nothing.
    data = write_lines(tmp_path / "train.jsonl", [GOOD] * 8)
    with pytest.raises(ValueError, match=r"max_length 8: TRL dropped all 8 rows of the train data set"):
        sft(tiny_assets / "base", data, tmp_path / "out", "--max_length", "8", "--max_steps", "1")


def test_rows_dropped_at_max_length_are_counted(tiny_assets, tmp_path, capsys):
    long_question = {"role": "user", "content": "Ana has many apples. " * 20 + "How many?"}
    rows = [GOOD] * 6 + [{"messages": [long_question, ASSISTANT]}] * 2
    data = write_lines(tmp_path / "train.jsonl", rows)
    trainer = sft(tiny_assets / "base", data, tmp_path / "out", "--max_length", "64", "--max_steps", "1",
                  "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1")  # fmt: skip
    assert "max_length 64: TRL dropped 2 of the 8 rows of the train data set" in capsys.readouterr().out
    assert len(trainer.train_dataset) == 6
