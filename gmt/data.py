"""Loading training data the way a TRL user expects, plus a clear check of its columns."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset

from gmt.rows import RowChecker, missing_columns, unmapped_columns

# Local file suffix -> the datasets builder that reads it.
_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}

# Stands for the column SFTConfig's dataset_text_field names ("text" by default).
TEXT_FIELD = "<dataset_text_field>"
# Column sets TRL's SFTTrainer accepts (conversational or standard, language modeling or
# prompt-completion; ShareGPT's from/value "conversations", which TRL converts), and already
# tokenized data.
SFT_COLUMN_SETS = (("messages",), ("conversations",), ("prompt", "completion"), (TEXT_FIELD,), ("input_ids",))
# TRL's DPOTrainer: explicit prompt, or the prompt implicit in the two conversations.
DPO_COLUMN_SETS = (("prompt", "chosen", "rejected"), ("chosen", "rejected"))


def conversational_prompt(dataset: Dataset) -> Dataset:
    """Preference rows with a string ``prompt`` beside ``chosen``/``rejected`` conversations that
    already hold it (HuggingFaceH4/ultrafeedback_binarized's layout): take the prompt turns from the
    conversations, with TRL's own ``maybe_extract_prompt``. TRL's DPOTrainer reads this layout only
    without the ``prompt`` column, and fails on it with a ``str + list`` error otherwise. Rows whose
    string prompt is not the conversations' last prompt turn are refused: the two disagree."""
    from trl.data_utils import is_conversational, maybe_extract_prompt

    first = next(iter(dataset))
    if not (isinstance(first.get("prompt"), str) and is_conversational({"chosen": first["chosen"]})):
        return dataset

    def extract(row: dict) -> dict:
        extracted = maybe_extract_prompt(row)
        turns = extracted["prompt"]
        if not turns or turns[-1].get("content") != row["prompt"]:
            raise ValueError(
                f"DPO data: the string prompt {row['prompt'][:80]!r} is not the last shared turn of its chosen and "
                "rejected conversations; drop the prompt column or make it conversational"
            )
        return extracted

    return dataset.map(extract, desc="Taking the prompt turns from the conversations")


@dataclass(frozen=True)
class DataLayout:
    """What a trainer's data must look like: the column sets it accepts, the name used in errors, and
    a step that turns other known layouts into one TRL reads."""

    purpose: str
    column_sets: tuple[tuple[str, ...], ...]
    prepare: Callable[[Dataset], Dataset] | None = None

    def columns_for(self, training_args) -> tuple[tuple[str, ...], ...]:
        """The column sets of a run: SFT's text column is the one ``dataset_text_field`` names."""
        text_field = getattr(training_args, "dataset_text_field", "text")
        return tuple(tuple(text_field if c == TEXT_FIELD else c for c in columns) for columns in self.column_sets)


SFT_DATA = DataLayout("SFT", SFT_COLUMN_SETS)
DPO_DATA = DataLayout("DPO", DPO_COLUMN_SETS, conversational_prompt)
# TRL's GRPOTrainer: a prompt (text or turns); the columns a run's rewards read are added to it (gmt/grpo.py).
GRPO_DATA = DataLayout("GRPO", (("prompt",),))


def load_training_dataset(
    name: str, config: str | None = None, streaming: bool = False, row_checker: RowChecker | None = None
) -> DatasetDict:
    """Load ``name``: a hub data set, a local folder of data files, or one local data file.

    A single file becomes the ``train`` split, as ``load_dataset(builder, data_files=...)`` does.
    Local JSON-lines files are read once first, line by line (``check_json_lines``), each row
    going through ``row_checker`` when one is given.
    """
    path = Path(name)
    if path.is_file():
        builder = _BUILDERS.get(path.suffix)
        if builder is None:
            raise ValueError(
                f"dataset_name {name!r}: cannot read {path.suffix!r} files; use one of {sorted(_BUILDERS)}"
            )
        if _has_no_rows(path):  # the builders fail on these with errors that name no setting
            raise ValueError(f"dataset_name {name!r} is an empty file: no examples to train on")
        if path.suffix == ".jsonl":
            check_json_lines(path, row_checker)
        return load_dataset(builder, data_files=str(path), streaming=streaming)
    if path.is_dir():
        for file in sorted(path.rglob("*.jsonl")):
            check_json_lines(file, row_checker)
        return _load_folder(name, config, streaming)
    return load_dataset(name, name=config, streaming=streaming)


def write_jsonl(rows: list[dict], path: Path) -> None:
    """``rows`` as a JSON-lines file at ``path`` (its folder made first): the local layout gmt's own
    data (stand-ins, the SmolLM2 tasks) is written in and ``load_training_dataset`` reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _load_folder(name: str, config: str | None, streaming: bool):
    """A local data folder, one split at a time: the splits datasets finds in it (its own file
    patterns), each read on its own, so that a test split with a column more than the training
    split's (a scoring ``answer``) is not cast to the training split's columns and refused."""
    from datasets import IterableDatasetDict, load_dataset_builder

    builder = load_dataset_builder(name, name=config)
    splits = dict(builder.config.data_files or {})
    if len(splits) < 2 or builder.name not in set(_BUILDERS.values()):
        return load_dataset(name, name=config, streaming=streaming)
    loaded = {split: load_dataset(builder.name, data_files=list(files), split="train", streaming=streaming)
              for split, files in splits.items()}  # fmt: skip
    return IterableDatasetDict(loaded) if streaming else DatasetDict(loaded)


def json_lines_only(name: str | None) -> bool:
    """Whether ``name`` is a local JSON-lines file, or a local folder whose data files all are one
    (its rows are then checked line by line as they are read: ``check_json_lines``)."""
    if not name:
        return False
    path = Path(name)
    if path.is_file():
        return path.suffix == ".jsonl"
    if not path.is_dir():
        return False
    files = [file for file in path.rglob("*") if file.is_file() and file.suffix in _BUILDERS]
    return bool(files) and all(file.suffix == ".jsonl" for file in files)


def check_json_lines(path: Path, row_checker: RowChecker | None = None) -> None:
    """Refuse a JSON-lines file with a line that is not UTF-8 or not a JSON object, naming the file
    and the 1-based line, before anything loads (the json builder reports neither); also what Python
    reads and pyarrow refuses: a key given twice in one object, a lone surrogate escape. Each row then
    goes through ``row_checker``. Blank lines are allowed, as the builder skips them, and so is a
    UTF-8 byte-order mark at the start. The cost, on 100k rows, is in docs/data.md
    (``scripts/row_check_cost.py``)."""
    import json

    decode = json.JSONDecoder(object_pairs_hook=_object_with_unique_keys).decode
    with path.open("rb") as file:
        for number, raw in enumerate(file, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a BOM: the json builder reads past it
                raw = raw[3:]
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{path}:{number}: not UTF-8 (byte 0x{raw[error.start]:02x} at column {error.start + 1})"
                ) from None
            try:
                row = decode(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg} at column {error.colno})") from None
            except _DuplicateKey as error:
                raise ValueError(f"{path}:{number}: the key {error.args[0]!r} is given twice in one object (Python "
                                 "would keep the last, pyarrow refuses the row)") from None  # fmt: skip
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: a row must be a JSON object, got {type(row).__name__}")
            if b"\\ud" in raw.lower() and (where := _lone_surrogate(row)) is not None:  # only escapes make one
                raise ValueError(f"{path}:{number}: {where} holds a lone UTF-16 surrogate escape (\\ud800-\\udfff "
                                 "without its pair), which is not text; pyarrow refuses the row")  # fmt: skip
            if row_checker is not None:
                row_checker.check(row, f"{path}:{number}")


class _DuplicateKey(Exception):
    pass


def _object_with_unique_keys(pairs: list[tuple[str, object]]) -> dict:
    row = dict(pairs)
    if len(row) != len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(key for key, _ in pairs if key in seen or seen.add(key)))
    return row


def _lone_surrogate(value, where: str = "row") -> str | None:
    """Where in ``value`` a string holds a lone surrogate (None: nowhere)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if (found := _lone_surrogate(item, f"{where}[{key!r}]")) is not None:
            return found
    return None


def _has_no_rows(path: Path) -> bool:
    """Whether a local data file holds no rows at all (nothing but whitespace, or a 0-row parquet)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet

        return pyarrow.parquet.ParquetFile(path).metadata.num_rows == 0
    if path.suffix in (".json", ".jsonl", ".csv"):
        with path.open("rb") as file:
            return not file.read(1 << 16).strip() and not file.read(1)
    return path.stat().st_size == 0


def skips_preparation(training_args) -> bool:
    """Whether TRL takes the data as it is (SFTConfig's ``dataset_kwargs: {skip_prepare_dataset:
    true}``): it then reads no raw column, so gmt checks none."""
    dataset_kwargs = getattr(training_args, "dataset_kwargs", None) or {}
    return isinstance(dataset_kwargs, dict) and bool(dataset_kwargs.get("skip_prepare_dataset"))


def check_columns(dataset: Dataset, column_sets: tuple[tuple[str, ...], ...], purpose: str) -> None:
    """Refuse a data set that has none of the column sets ``purpose`` needs, or no rows."""
    columns = set(dataset.column_names or [])
    if not any(set(required) <= columns for required in column_sets):
        raise ValueError(missing_columns(purpose, column_sets, columns))
    if hasattr(dataset, "__len__") and len(dataset) == 0:
        raise ValueError(f"{purpose} data set is empty (dataset_name, dataset_train_split): no examples to train on")


def check_dataset_rows(dataset: Dataset, row_checker: RowChecker, source: str, batch_size: int = 1024) -> None:
    """``row_checker`` over every row of a loaded split, named ``<source> row N``; read in column
    batches (a row at a time costs several times more)."""
    for start in range(0, len(dataset), batch_size):
        batch = dataset[start : start + batch_size]
        columns = list(batch)
        for offset, values in enumerate(zip(*(batch[column] for column in columns), strict=True)):
            row_checker.check(dict(zip(columns, values, strict=True)), f"{source} row {start + offset + 1}")


def parse_column_map(column_map: str | None) -> dict[str, str]:
    """A ``dataset_column_map`` ('old:new,old:new') as a dict (empty for none)."""
    mapping: dict[str, str] = {}
    for pair in column_map.split(",") if column_map else []:
        old, sep, new = pair.partition(":")
        if not sep or not old.strip() or not new.strip():
            raise ValueError(f"dataset_column_map must look like 'old:new,old:new', got {column_map!r}")
        mapping[old.strip()] = new.strip()
    return mapping


def rename_columns(dataset: Dataset, column_map: str | None) -> Dataset:
    """Apply a ``dataset_column_map`` ('old:new,old:new') to ``dataset``."""
    mapping = parse_column_map(column_map)
    if not mapping:
        return dataset
    problem = unmapped_columns(mapping, dataset.column_names or [])
    if problem:
        raise ValueError(problem)
    return dataset.rename_columns(mapping)


class ReportsDroppedRows:
    """Mixed into a TRL trainer (before it in the bases): after TRL prepares a data set, say how
    many rows its ``max_length`` filter dropped (SFT: rows whose learned tokens all fall past
    ``max_length``; DPO: rows whose prompt alone fills it), and refuse a split it emptied, naming
    ``max_length``. TRL drops them without a word, and an emptied split fails later as
    ``num_samples=0``."""

    def _prepare_dataset(self, dataset, processing_class, args, *rest):
        prepared = super()._prepare_dataset(dataset, processing_class, args, *rest)
        # The rest is SFTTrainer's (packing, formatting_func, dataset_name) or DPOTrainer's (dataset_name,).
        packing, dataset_name = (bool(rest[0]) if len(rest) > 1 else False), rest[-1]
        if not (isinstance(dataset, Dataset) and isinstance(prepared, Dataset)) or packing:
            return prepared  # a stream has no length; packing regroups rows into sequences
        before, after = len(dataset), len(prepared)
        max_length = args.max_length
        if before and not after:
            raise ValueError(
                f"max_length {max_length}: TRL dropped all {before} rows of the {dataset_name} data set, because "
                "truncated to max_length not one of their learned tokens is left (a prompt alone fills it); raise "
                "max_length, or shorten the prompts"
            )
        if after < before and args.process_index == 0:
            print(
                f"warning: max_length {max_length}: TRL dropped {before - after} of the {before} rows of the "
                f"{dataset_name} data set, whose learned tokens all fall past max_length",
                flush=True,
            )
        return prepared
