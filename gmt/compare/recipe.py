"""The recipe a comparison runs, and its data: the held-out validation rows and the comparison's own
copy of the recipe that trains on the rest."""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from gmt.resources import recipe_path

TINY_RECIPE = "recipes/tiny/sft_full.yaml"


@dataclass(frozen=True)
class Recipe:
    """A training recipe as the comparison reads it."""

    path: Path
    settings: dict

    @property
    def script(self) -> str:
        from gmt.config import recipe_script

        return recipe_script(self.settings)

    def setting(self, name: str):
        """A training setting: the recipe's, else its script's config's default."""
        from gmt.config import SCRIPTS

        config = SCRIPTS[self.script].config
        return self.settings.get(name, config.__dataclass_fields__[name].default)

    @property
    def learning_rate(self) -> float:
        return float(self.setting("learning_rate"))

    def steps(self, train_rows: int, world_size: int) -> int:
        """The recipe's optimizer steps on ``train_rows`` rows and ``world_size`` processes, counted
        as the Trainer counts them (``max_steps`` where the recipe sets one)."""
        if int(self.setting("max_steps")) > 0:
            return int(self.setting("max_steps"))
        batches = math.ceil(math.ceil(train_rows / world_size) / int(self.setting("per_device_train_batch_size")))
        per_epoch = max(1, math.ceil(batches / int(self.setting("gradient_accumulation_steps"))))
        return math.ceil(float(self.setting("num_train_epochs")) * per_epoch)


def read_recipe(path: str | Path) -> Recipe:
    """The recipe at ``path`` (a ``recipes/...`` path not found here: the one the package carries)."""
    path = Path(path)
    found = recipe_path(path)
    if not found.is_file():
        sys.exit(f"--config {path}: no such recipe file")
    return Recipe(path, yaml.safe_load(found.read_text()))


def hold_out(recipe: Recipe, out: Path, validation_rows: int, validation_data: str | None, seed: int = 0) -> Path:
    """``out`` with ``train.jsonl`` and ``validation.jsonl`` in the recipe's raw layout (its column
    map and prompt format still apply): ``validation_rows`` rows of the recipe's training split (a
    fixed random choice) held out of it, or, with ``validation_data``, that data set's train split as
    the validation rows and the whole training split to train on. A ``test.jsonl`` beside the
    training data (the tiny task's) is copied. Written once; a later call reads it back."""
    if (out / "validation.jsonl").is_file():
        return out
    source = recipe.settings.get("dataset_name")
    local = Path(source) if source else None
    out.mkdir(parents=True, exist_ok=True)
    if validation_data is None and local is not None and (local / "train.jsonl").is_file():
        # the raw lines, as they are (the tiny comparison's held-out rows, unchanged)
        rows = (local / "train.jsonl").read_text().splitlines()
        held_out = _held_out(len(rows), validation_rows, seed)
        (out / "train.jsonl").write_text("".join(row + "\n" for i, row in enumerate(rows) if i not in held_out))
        (out / "validation.jsonl").write_text("".join(rows[i] + "\n" for i in sorted(held_out)))
    else:
        train = _training_split(recipe)
        if validation_data is None:
            held_out = _held_out(len(train), validation_rows, seed)
            validation = train.select(sorted(held_out))
            train = train.select([i for i in range(len(train)) if i not in held_out])
        else:
            from gmt.data import load_training_dataset

            validation = load_training_dataset(validation_data)["train"]
        _write_rows(train, out / "train.jsonl")
        _write_rows(validation, out / "validation.jsonl")
    if local is not None and (local / "test.jsonl").is_file():
        shutil.copy(local / "test.jsonl", out / "test.jsonl")
    return out


def _held_out(rows: int, validation_rows: int, seed: int) -> set[int]:
    if not 0 < validation_rows < rows:
        sys.exit(f"--validation_rows must be between 1 and {rows - 1} (the training rows), got {validation_rows}")
    return set(random.Random(seed).sample(range(rows), validation_rows))


def _training_split(recipe: Recipe):
    """The recipe's raw training split: ``dataset_name`` (hub, folder or file) or its ``datasets:`` mixture."""
    settings = recipe.settings
    split = settings.get("dataset_train_split", "train")
    if settings.get("datasets"):
        from trl import get_dataset
        from trl.scripts.utils import DatasetConfig, DatasetMixtureConfig

        mixture = DatasetMixtureConfig(datasets=[DatasetConfig(**source) for source in settings["datasets"]])
        return get_dataset(mixture)[split]
    from gmt.data import load_training_dataset

    return load_training_dataset(settings["dataset_name"], settings.get("dataset_config"))[split]


def _write_rows(rows, path: Path) -> None:
    with path.open("w") as file:
        for row in rows:
            file.write(json.dumps(row, ensure_ascii=False) + "\n")


def comparison_recipe(recipe: Recipe, data: Path, model: str | None, out: Path) -> Path:
    """The recipe every run of the comparison starts from (``out/recipe.yaml``): the user's, training
    on the held-out copy of its data (and on ``model`` where given)."""
    settings = {key: value for key, value in recipe.settings.items()
                if key not in ("datasets", "dataset_config", "dataset_train_split", "dataset_test_split")}  # fmt: skip
    settings["dataset_name"] = str(data.resolve())
    if model is not None:
        settings["model_name_or_path"] = str(model)
    path = out / "recipe.yaml"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {recipe.path}, as gmt compare runs it: its data with the validation rows held out\n"
                    + yaml.safe_dump(settings, sort_keys=False))  # fmt: skip
    return path
