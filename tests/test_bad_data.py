"""Data that cannot train is refused before training, with the setting named."""

import json
import re

import pandas as pd
import pytest
from datasets import Dataset

from gmt.cli import load_splits
from gmt.config import GMTDPOConfig, GMTScriptArguments, GMTSFTConfig
from gmt.data import DPO_DATA, SFT_COLUMN_SETS, SFT_DATA, check_columns


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def splits(dataset_name: str, purpose: str, **script_options):
    config = GMTSFTConfig if purpose == "SFT" else GMTDPOConfig
    training_args = config(output_dir="unused", bf16=False)
    layout = SFT_DATA if purpose == "SFT" else DPO_DATA
    return load_splits(GMTScriptArguments(dataset_name=dataset_name, **script_options), training_args, layout)


@pytest.mark.parametrize(
    ("purpose", "rows", "message"),
    [
        ("SFT", [{"question": "1 + 1?", "reply": "2"}],
         "SFT data set needs the columns messages or conversations or prompt+completion or text"),
        ("DPO", [{"prompt": "1 + 1?", "chosen": "2"}], "DPO data set needs the columns prompt+chosen+rejected"),
    ],
)
def test_missing_columns_are_named(tmp_path, purpose, rows, message):
    with pytest.raises(ValueError, match=re.escape(message) + r".*dataset_column_map"):
        splits(write_jsonl(tmp_path / "data.jsonl", rows), purpose)


def test_a_column_map_that_names_absent_columns_is_refused(tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", [{"query": "1 + 1?", "response": "2"}])
    with pytest.raises(ValueError, match=r"dataset_column_map names columns the data set lacks: \['answer'\]"):
        splits(data, "SFT", dataset_column_map="query:prompt,answer:completion")
    train = splits(data, "SFT", dataset_column_map="query:prompt,response:completion").train
    assert train.column_names == ["prompt", "completion"]


@pytest.mark.parametrize("name", ["empty.jsonl", "blank.jsonl", "none.parquet"])
def test_a_file_without_rows_is_refused(tmp_path, name):
    path = tmp_path / name
    if name == "none.parquet":
        empty = {"prompt": pd.Series([], dtype=str), "completion": pd.Series([], dtype=str)}
        pd.DataFrame(empty).to_parquet(path)
    else:
        path.write_text("" if name == "empty.jsonl" else "\n  \n")
    with pytest.raises(ValueError, match=f"dataset_name .*{name}' is an empty file"):
        splits(str(path), "SFT")


def test_a_split_without_rows_is_refused():
    # A split that loads but holds no rows (a hub split, or one emptied by a filter).
    empty = Dataset.from_dict({"prompt": [], "completion": []})
    with pytest.raises(ValueError, match=r"SFT data set is empty \(dataset_name, dataset_train_split\)"):
        check_columns(empty, SFT_COLUMN_SETS[:3], "SFT")


CHAT_ROWS = [{"messages": [{"role": "user", "content": "1 + 1?"}, {"role": "assistant", "content": "2"}]}]


def chat_check(standin_cache, tmp_path, model="meta-llama/Llama-2-7b-hf", **training_options):
    from trl import ModelConfig

    from gmt.chat import check_chat_template
    from gmt.standins import model_standin

    training_args = GMTSFTConfig(output_dir=str(tmp_path / "unused"), bf16=False, **training_options)
    model_args = ModelConfig(model_name_or_path=str(model_standin(model, standin_cache)))
    check_chat_template(Dataset.from_list(CHAT_ROWS), training_args, model_args, "SFT")


def test_chat_data_with_a_tokenizer_without_a_template_names_chat_template_path(standin_cache, tmp_path):
    # The Llama-2 base checkpoint ships no chat template (its stand-in neither).
    with pytest.raises(
        ValueError, match="conversational, but the tokenizer .* has no chat template .*: set chat_template_path"
    ):
        chat_check(standin_cache, tmp_path)
    chat_check(standin_cache, tmp_path, chat_template_path="recipes/templates/tulu.jinja")  # what the recipe sets


def test_assistant_only_loss_needs_generation_markers(standin_cache, tmp_path):
    plain = tmp_path / "plain.jinja"
    plain.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    with pytest.raises(ValueError, match=r"assistant_only_loss true needs a chat template .*\{% generation %\}"):
        chat_check(standin_cache, tmp_path, chat_template_path=str(plain), assistant_only_loss=True)
    chat_check(standin_cache, tmp_path, chat_template_path=str(plain))  # fine without assistant_only_loss
    chat_check(standin_cache, tmp_path, chat_template_path="recipes/templates/tulu.jinja", assistant_only_loss=True)


def test_a_missing_chat_template_file_is_named(standin_cache, tmp_path):
    with pytest.raises(ValueError, match="chat_template_path 'recipes/templates/nope.jinja': no such file"):
        chat_check(standin_cache, tmp_path, chat_template_path="recipes/templates/nope.jinja")


def ultrafeedback_row(prompt: str, first_turn: str) -> dict:
    user = {"content": first_turn, "role": "user"}
    return {"prompt": prompt, "chosen": [user, {"content": "4", "role": "assistant"}],
            "rejected": [user, {"content": "5", "role": "assistant"}], "score_chosen": 9.0}  # fmt: skip


def test_ultrafeedback_layout_becomes_a_conversational_prompt(tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", [ultrafeedback_row("2 + 2?", "2 + 2?")])
    train = splits(data, "DPO").train
    row = train[0]
    assert row["prompt"] == [{"content": "2 + 2?", "role": "user"}]
    assert row["chosen"] == [{"content": "4", "role": "assistant"}]
    assert row["rejected"] == [{"content": "5", "role": "assistant"}]


def test_ultrafeedback_rows_whose_prompt_disagrees_are_refused(tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", [ultrafeedback_row("2 + 2?", "3 + 3?")])
    with pytest.raises(ValueError, match="string prompt '2 \\+ 2\\?' is not the last shared turn"):
        splits(data, "DPO")


def test_a_split_the_data_lacks_is_named(tmp_path):
    # A single file is the train split only; the UltraFeedback recipe reads train_prefs.
    data = write_jsonl(tmp_path / "prefs.jsonl", [ultrafeedback_row("2 + 2?", "2 + 2?")])
    with pytest.raises(ValueError, match=r"has no split 'train_prefs' \(dataset_train_split .*\['train'\]"):
        splits(data, "DPO", dataset_train_split="train_prefs")


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [(b'{"messages": [{"role": "user", "content": "hi"}\n', ":3: not valid JSON"),
     (b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n', ":3: not UTF-8 (byte 0xe9"),
     (b'["a", "list"]\n', ":3: a row must be a JSON object, got list")],  # fmt: skip
)
def test_a_bad_json_line_is_named_by_file_and_line_before_anything_loads(tmp_path, bad_line, message):
    from gmt.data import load_training_dataset

    good = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
    path = tmp_path / "train.jsonl"
    path.write_bytes(good + b"\n" + bad_line + good)  # line 2 is blank: allowed
    with pytest.raises(ValueError, match=re.escape(f"{path}{message}")):
        load_training_dataset(str(path))
    with pytest.raises(ValueError, match=re.escape(f"{path}{message}")):
        load_training_dataset(str(tmp_path))  # a folder of data files: each checked


def test_a_folder_whose_test_split_has_a_column_more_loads_each_split_as_it_is(tmp_path):
    """train.jsonl for training and a test.jsonl with the scoring's `answer` beside it: datasets casts
    a folder's splits to one schema and refuses this one (CastError); gmt reads each split alone."""
    from gmt.data import load_training_dataset

    rows = [{"prompt": [{"role": "user", "content": "1 + 1?"}], "completion": [{"role": "assistant", "content": "2"}]}]
    write_jsonl(tmp_path / "train.jsonl", rows * 3)
    write_jsonl(tmp_path / "test.jsonl", [{**rows[0], "answer": "2"}])
    loaded = load_training_dataset(str(tmp_path))
    assert loaded["train"].column_names == ["prompt", "completion"] and loaded["train"].num_rows == 3
    assert loaded["test"].column_names == ["prompt", "completion", "answer"]
    assert splits(str(tmp_path), "SFT").train.num_rows == 3  # and the run's own loading, with its checks
