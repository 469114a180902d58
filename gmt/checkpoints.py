"""Which checkpoint a resumed run starts from.

The Trainer writes ``checkpoint-N/trainer_state.json`` last (after the model, the optimizer, the
RNG states and gmt's mask state). A checkpoint folder without it (or with it truncated) was cut short (a kill or a node
failure during the save) and is skipped, so the run resumes from the previous complete one; the
Trainer's own ``get_last_checkpoint`` would pick the newest folder, complete or not.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

TRAINER_STATE = "trainer_state.json"
RESUME_LAST = ("true", "last", "latest")  # resume_from_checkpoint values meaning "the newest complete one"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def is_complete(checkpoint: Path) -> bool:
    """Whether a checkpoint folder was saved to the end: its ``trainer_state.json`` exists and
    parses (a kill while writing it leaves a truncated file)."""
    try:
        json.loads((checkpoint / TRAINER_STATE).read_text())
    except (OSError, ValueError):
        return False
    return True


def last_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest ``checkpoint-N`` folder in ``output_dir`` that was saved to the end, if any."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    numbered = [(int(m.group(1)), path) for path in folder.iterdir() if (m := _CHECKPOINT.match(path.name))]
    for _, path in sorted(numbered, reverse=True):
        if path.is_dir() and is_complete(path):
            return path
    return None


def resolve_resume_checkpoint(value: str | bool | None, output_dir: str | Path) -> str | None:
    """Turn ``resume_from_checkpoint`` into a checkpoint path (or None: start afresh).

    ``true``/``last``/``latest`` pick the newest complete checkpoint in ``output_dir``; a path must
    be a complete checkpoint. Anything else is refused with the setting named.
    """
    if value is None or value is False or (isinstance(value, str) and value.lower() in ("", "false", "none")):
        return None
    if value is True or (isinstance(value, str) and value.lower() in RESUME_LAST):
        found = last_complete_checkpoint(output_dir)
        if found is None:
            raise ValueError(f"resume_from_checkpoint={value!r}: no complete checkpoint-N folder in {output_dir}")
        return str(found)
    path = Path(value)
    if not path.is_dir():
        raise ValueError(f"resume_from_checkpoint {value!r} is not a folder")
    if not is_complete(path):
        raise ValueError(
            f"resume_from_checkpoint {value!r} was not saved to the end (no {TRAINER_STATE}): resume from an "
            f"earlier checkpoint, or give resume_from_checkpoint=last to take the newest complete one"
        )
    return str(path)
