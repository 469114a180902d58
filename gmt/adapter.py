"""A PEFT run's output (a LoRA adapter) merged into its base, as an ordinary checkpoint.

``use_peft true`` saves only the adapter; vLLM, ``gmt delta`` and most serving stacks want
a whole model. The merge is PEFT's own (``merge_and_unload``), on the base as it was saved (its
dtype), so the merged checkpoint has exactly the base's tensor names and shapes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def is_adapter(path: str | Path) -> bool:
    """Whether ``path`` is a folder that holds a PEFT adapter (not a whole model)."""
    return (Path(path) / "adapter_config.json").is_file()


def adapter_base(adapter: str | Path) -> str:
    """The base model (hub id or path) the adapter was trained on, as its config records it."""
    config = json.loads((Path(adapter) / "adapter_config.json").read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{adapter}/adapter_config.json names no base_model_name_or_path: pass --base")
    return base


def merged_model(adapter: str | Path, base: str | None = None) -> PreTrainedModel:
    """The base (``base``, else the one the adapter records) with the adapter merged in."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if not is_adapter(adapter):
        raise ValueError(f"{adapter} holds no adapter_config.json: it is not a PEFT adapter")
    model = AutoModelForCausalLM.from_pretrained(base or adapter_base(adapter), dtype="auto")
    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()


def save_merged(adapter: str | Path, out: str | Path, base: str | None = None) -> Path:
    """Write the merged model to ``out`` with the tokenizer the run saved (the base's if it saved none)."""
    from transformers import AutoTokenizer

    base = base or adapter_base(adapter)
    model = merged_model(adapter, base)
    tokenizer_source = adapter if (Path(adapter) / "tokenizer_config.json").is_file() else base
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(out)
    return Path(out)
