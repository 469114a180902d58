"""Run a shipped recipe on stand-ins of its model and data: the recipe file unchanged except for
``model_name_or_path``, ``dataset_name``, ``output_dir`` and a 2-step budget logged every step, plus
what a machine without a GPU needs (``attn_implementation sdpa`` without flash-attn, ``use_cpu true``
so that the recipe's bf16 runs as CPU autocast). Then check what a first GPU run would: the loss is
finite, the mask ran (its kept fraction is logged at every step), the checkpoint loads.
"""

from __future__ import annotations

import math
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from gmt.attention import attention_available
from gmt.standins.layouts import LAYOUTS, build_layout, sample_texts
from gmt.standins.models import REPO, build_model

DEFAULT_DIR = Path(".cache/gmt-standins")
BUILD_VERSION = "1"  # bump when a builder changes: cached stand-ins are rebuilt

# The checkpoints the recipes name -> the family of their stand-in. The DPO recipe starts from the
# TULU SFT recipe's output, which carries the TULU chat template.
MODEL_STANDINS = {
    "meta-llama/Llama-2-7b-hf": "llama2",
    "outputs/llama2-7b/sft_tulu_gmt": "llama2-tulu",
    "meta-llama/Meta-Llama-3-8B": "llama3",
    "mistralai/Mistral-7B-v0.1": "mistral",
    "meta-llama/Meta-Llama-3-8B-Instruct": "llama3-instruct",
    "Qwen/Qwen3-8B": "qwen3",
}


def script_for(recipe: Path) -> str:
    """The training script a recipe is for (``gmt.config.recipe_script``)."""
    from gmt.config import recipe_script

    return recipe_script(yaml.safe_load(Path(recipe).read_text()))


def _cached(folder: Path, build) -> Path:
    stamp = folder / ".gmt-standin"
    if stamp.is_file() and stamp.read_text() == BUILD_VERSION:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    build(folder)
    stamp.write_text(BUILD_VERSION)
    return folder


def model_standin(name: str, cache: Path = DEFAULT_DIR) -> Path:
    """The stand-in checkpoint folder for the real checkpoint ``name`` (built once, then cached)."""
    if name not in MODEL_STANDINS:
        raise ValueError(f"no stand-in for the model {name!r}; known: {sorted(MODEL_STANDINS)}")
    family = MODEL_STANDINS[name]
    return _cached(Path(cache) / "models" / family, lambda folder: build_model(family, folder, sample_texts()))


def data_standin(name: str, cache: Path = DEFAULT_DIR) -> Path:
    """The stand-in data folder for the hub data set ``name`` (built once, then cached)."""
    if name not in LAYOUTS:
        raise ValueError(f"no stand-in for the data set {name!r}; known: {sorted(LAYOUTS)}")
    return _cached(Path(cache) / "data" / name.replace("/", "__"), lambda folder: build_layout(name, folder))


@dataclass(frozen=True)
class StandinRun:
    """One recipe on its stand-ins: the command to launch and where it writes."""

    recipe: Path
    model: Path
    data: Path
    output_dir: Path
    arguments: tuple[str, ...]  # script, --config and the overrides

    def command(self, launcher: tuple[str, ...] = ()) -> list[str]:
        """``python [launcher] script --config recipe overrides``."""
        return [sys.executable, *launcher, *self.arguments]


def standin_run(
    recipe: str | Path, output_dir: str | Path, cache: Path = DEFAULT_DIR, max_steps: int = 2
) -> StandinRun:
    """Build (or reuse) the stand-ins of ``recipe``'s model and data, and the overrides that run it."""
    recipe = Path(recipe)
    settings = yaml.safe_load(recipe.read_text())
    model, data = model_standin(settings["model_name_or_path"], cache), data_standin(settings["dataset_name"], cache)
    overrides = ["--model_name_or_path", str(model.resolve()), "--dataset_name", str(data.resolve()),
                 "--output_dir", str(output_dir), "--max_steps", str(max_steps), "--logging_steps", "1"]  # fmt: skip
    if not attention_available(settings.get("attn_implementation")):
        overrides += ["--attn_implementation", "sdpa"]
    if not torch.cuda.is_available():  # the Trainer runs bf16 on a CPU (autocast) only when told to use it
        overrides += ["--use_cpu", "true"]
    return StandinRun(recipe, model, data, Path(output_dir), (script_for(recipe), "--config", str(recipe), *overrides))


def run(standin: StandinRun, launcher: tuple[str, ...] = (), extra: tuple[str, ...] = (), timeout: float = 900):
    """Launch ``standin`` from the repository root; returns the finished process (output captured)."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    command = [*standin.command(launcher), *extra]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def check_output(output_dir: str | Path) -> dict:
    """What a finished stand-in run must show: finite logged losses, the mask's kept fraction at
    every logged step, a checkpoint that loads. Returns them; raises ``RuntimeError`` otherwise."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    output_dir = Path(output_dir)
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    steps = [entry for entry in history if "loss" in entry]
    losses = [float(entry["loss"]) for entry in steps]
    kept = [entry.get("mask/kept_fraction") for entry in steps]
    if not losses or not all(math.isfinite(loss) for loss in losses):
        raise RuntimeError(f"{output_dir}: logged losses {losses} (expected finite values)")
    if any(value is None for value in kept):
        raise RuntimeError(f"{output_dir}: a logged step has no mask/kept_fraction: {steps}")
    model = AutoModelForCausalLM.from_pretrained(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    return {"losses": losses, "kept_fraction": kept, "parameters": model.num_parameters(),
            "chat_template": tokenizer.chat_template, "model_type": model.config.model_type,
            "dtype": str(model.config.dtype).removeprefix("torch.")}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """``python -m gmt.standins RECIPE... [--launcher '...']``: run each recipe on its stand-ins and check it."""
    import argparse
    import json
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="+", type=Path, help="recipe files, e.g. recipes/llama3-8b/sft_math_gmt.yaml")
    parser.add_argument(
        "--launcher",
        default="",
        help="module launcher and its flags, e.g. "
        "'-m accelerate.commands.launch --config_file recipes/accelerate/zero3.yaml --num_processes 2'",
    )
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_DIR, help="where stand-ins are built (default: %(default)s)"
    )
    parser.add_argument("--output_root", type=Path, default=None, help="where the runs write (default: a temp dir)")
    parser.add_argument("--dry_run", action="store_true", help="build the stand-ins and print the commands only")
    args = parser.parse_args(argv)  # fmt: skip
    root = args.output_root or Path(tempfile.mkdtemp(prefix="gmt-standins-"))
    failed = []
    for recipe in args.recipes:
        standin = standin_run(recipe, root / recipe.parent.name / recipe.stem, args.cache)
        command = standin.command(tuple(shlex.split(args.launcher)))
        print(shlex.join(command), flush=True)
        if args.dry_run:
            continue
        finished = run(standin, tuple(shlex.split(args.launcher)))
        try:
            if finished.returncode != 0:
                raise RuntimeError(
                    f"exit status {finished.returncode}:\n{finished.stdout[-3000:]}{finished.stderr[-3000:]}"
                )
            summary = check_output(standin.output_dir)
            print(json.dumps({"recipe": str(recipe), **{k: v for k, v in summary.items() if k != "chat_template"}}))
        except RuntimeError as error:
            failed.append(str(recipe))
            print(f"FAILED {recipe}: {error}", flush=True)
    if failed:
        raise SystemExit(f"{len(failed)} recipe(s) failed on their stand-ins: {failed}")
