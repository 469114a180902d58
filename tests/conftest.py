"""Shared fixtures: a fast build of the tiny assets (barely pretrained: the mechanics, not quality)."""

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", category=FutureWarning)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory) -> Path:
    from gmt.tiny import TinySettings, ensure_tiny_assets

    out = tmp_path_factory.mktemp("gmt-tiny")
    return ensure_tiny_assets(out, TinySettings(pretrain_steps=20, sft_train_examples=256, sft_test_examples=16))


def run_sft(
    recipe: str,
    model: Path,
    data: Path,
    output_dir: Path,
    *overrides: str,
    accelerate: bool = False,
    accelerate_config: str | None = None,
) -> subprocess.CompletedProcess:
    """Run gmt/sft.py on ``recipe`` with the model, data and output paths overridden.

    ``accelerate``: launch through ``accelerate launch`` (1 CPU process, or ``accelerate_config``).
    """
    launcher = []
    if accelerate_config:
        launcher = ["-m", "accelerate.commands.launch", "--config_file", accelerate_config]
    elif accelerate:
        launcher = ["-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu"]
    command = [sys.executable, *launcher, "gmt/sft.py", "--config", recipe]
    command += ["--model_name_or_path", str(model), "--dataset_name", str(data), "--output_dir", str(output_dir)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    return subprocess.run([*command, *overrides], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def logged(stdout: str, key: str) -> list[float]:
    """Values of ``key`` in the Trainer's printed log dicts."""
    return [float(value) for value in re.findall(rf"'{re.escape(key)}': '([^']+)'", stdout)]
