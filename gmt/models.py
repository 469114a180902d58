"""Where a model a setting names is, and what its local config says, read without loading it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def check_model_path(name: str | None, setting: str = "model_name_or_path") -> None:
    """Refuse a model ``setting`` that names a local folder that is not there (the hub client would
    report it as a malformed repo id), a folder without a model, or a hub id this machine cannot
    reach offline and has not cached."""
    if not name:
        raise ValueError(f"{setting} is required: a hub id or a local folder")
    path = Path(name)
    if path.exists():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{setting} {name} has no config.json: not a model folder")
        return
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise FileNotFoundError(f"{setting} {name} does not exist (a local folder, or a hub id 'org/name')")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise FileNotFoundError(f"{setting} {name}: not in the hub cache, and HF_HUB_OFFLINE is set")


def local_config(folder: str | Path | None) -> dict[str, Any] | None:
    """A local model's config.json (a multimodal model's text part); None for a hub id or no file."""
    if folder is None:
        return None
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return None
    return config.get("text_config", config) if isinstance(config, dict) else None


def saved_dtype(config: dict[str, Any]) -> str:
    """The dtype a model's config says its weights are stored in (float32 when it says none)."""
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")
