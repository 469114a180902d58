"""Shared fixtures: a fast build of the tiny assets (barely pretrained: the mechanics, not quality)."""

import os
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
