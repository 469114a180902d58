"""`datasets:` mixtures, as `trl sft` reads them from a recipe: TRL's own loader (splits, columns,
fractions), with gmt's column checks after it; a recipe that sets both a mixture and
`dataset_name` is refused rather than one of them dropped."""

import json

import pytest

from gmt.cli import load_splits
from gmt.data import SFT_DATA
from gmt.sft import make_parser


def write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def parse(tmp_path, recipe: str):
    (tmp_path / "recipe.yaml").write_text(recipe + f"output_dir: {tmp_path / 'out'}\nbf16: false\n")
    script_args, training_args, _ = make_parser().parse_args_and_config(["--config", str(tmp_path / "recipe.yaml")])
    return script_args, training_args


def test_a_mixture_loads_every_source_with_its_fraction(tmp_path):
    math = write(tmp_path / "math.jsonl", [{"prompt": f"{i} + 1?", "completion": str(i + 1)} for i in range(40)])
    chat = write(tmp_path / "code.jsonl", [{"prompt": f"f{i}?", "completion": "pass", "lang": "py"} for i in range(40)])
    recipe = f"""datasets:
  - path: json
    data_files: {math}
    fraction: 0.75
  - path: json
    data_files: {chat}
    columns: [prompt, completion]
    fraction: 0.25
"""
    script_args, training_args = parse(tmp_path, recipe)
    train = load_splits(script_args, training_args, SFT_DATA).train
    assert train.column_names == ["prompt", "completion"]
    code_rows = sum(row["prompt"].startswith("f") for row in train)
    # Capped so that no source is oversampled: all 40 math rows are 3/4, round(40 / 3) code rows the rest.
    assert (len(train) - code_rows, code_rows) == (40, 13)


def test_a_mixture_with_dataset_name_is_refused(tmp_path):
    data = write(tmp_path / "a.jsonl", [{"prompt": "1?", "completion": "1"}])
    script_args, training_args = parse(
        tmp_path, f"dataset_name: {data}\ndatasets:\n  - path: json\n    data_files: {data}\n"
    )
    with pytest.raises(ValueError, match="set dataset_name or datasets"):
        load_splits(script_args, training_args, SFT_DATA)


def test_a_mixture_source_without_the_columns_is_named(tmp_path):
    data = write(tmp_path / "a.jsonl", [{"question": "1?", "answer": "1"}])
    script_args, training_args = parse(tmp_path, f"datasets:\n  - path: json\n    data_files: {data}\n")
    with pytest.raises(ValueError, match="SFT data set needs the columns"):
        load_splits(script_args, training_args, SFT_DATA)
