"""Data that cannot train is refused before training, with the setting named."""

import json
import re

import pandas as pd
import pytest
from datasets import Dataset

from gmt.cli import load_splits
from gmt.config import GMTDPOConfig, GMTScriptArguments, GMTSFTConfig
from gmt.data import DPO_COLUMN_SETS, SFT_COLUMN_SETS, check_columns


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def splits(dataset_name: str, purpose: str, **script_options):
    config = GMTSFTConfig if purpose == "SFT" else GMTDPOConfig
    training_args = config(output_dir="unused", bf16=False)
    column_sets = SFT_COLUMN_SETS if purpose == "SFT" else DPO_COLUMN_SETS
    return load_splits(
        GMTScriptArguments(dataset_name=dataset_name, **script_options), training_args, column_sets, purpose
    )


@pytest.mark.parametrize(
    ("purpose", "rows", "message"),
    [
        ("SFT", [{"question": "1 + 1?", "reply": "2"}], "SFT data set needs the columns messages or prompt+completion"),
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
    train, _ = splits(data, "SFT", dataset_column_map="query:prompt,response:completion")
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
        check_columns(empty, SFT_COLUMN_SETS, "SFT")
