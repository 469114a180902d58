"""Which checkpoint a resumed run starts from.

The Trainer writes ``checkpoint-N/trainer_state.json`` last (after the model, the optimizer, the
RNG states and gmt's mask state). A checkpoint folder without it (or with it truncated) was cut short (a kill or a node
failure during the save) and is skipped, so the run resumes from the previous complete one; the
Trainer's own ``get_last_checkpoint`` would pick the newest folder, complete or not.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

TRAINER_STATE = "trainer_state.json"
MASK_SETTINGS = "gmt_mask_settings.json"  # the mask settings a checkpoint was trained with
MANIFEST = "gmt_manifest.json"  # written last: the checkpoint is complete, with these file sizes
RESUME_LAST = ("true", "last", "latest")  # resume_from_checkpoint values meaning "the newest complete one"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def write_manifest(checkpoint: Path) -> None:
    """Mark ``checkpoint`` complete, last of all its files: the size of every file in it."""
    sizes = {str(path.relative_to(checkpoint)): path.stat().st_size
             for path in sorted(checkpoint.rglob("*")) if path.is_file() and path.name != MANIFEST}  # fmt: skip
    partial = checkpoint / f".{MANIFEST}.partial"
    partial.write_text(json.dumps(sizes, indent=1) + "\n")
    partial.replace(checkpoint / MANIFEST)  # atomic: there is a whole manifest or none


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from (None: it was saved to the end). A checkpoint gmt
    wrote has a manifest, written last, whose file sizes must all match; an older one (or the
    Trainer's alone) must at least have a ``trainer_state.json`` that parses."""
    manifest = checkpoint / MANIFEST
    if manifest.is_file():
        try:
            sizes = json.loads(manifest.read_text())
        except (OSError, ValueError):
            return f"its {MANIFEST} is unreadable"
        for name, size in sizes.items():
            path = checkpoint / name
            if not path.is_file():
                return f"{path} is missing"
            if path.stat().st_size != size:
                return f"{path} is {path.stat().st_size} bytes, {size} when it was saved (damaged or cut short)"
        return None
    if (checkpoint / MASK_SETTINGS).is_file():  # gmt began this save and never marked it complete
        return f"its save did not finish (no {MANIFEST})"
    try:
        json.loads((checkpoint / TRAINER_STATE).read_text())
    except (OSError, ValueError):
        return f"its save did not finish (no readable {TRAINER_STATE})"
    return None


def is_complete(checkpoint: Path) -> bool:
    """Whether a checkpoint folder was saved to the end (``checkpoint_problem`` finds nothing)."""
    return checkpoint_problem(checkpoint) is None


def last_complete_checkpoint(output_dir: str | Path, report: bool = False) -> Path | None:
    """The newest ``checkpoint-N`` folder in ``output_dir`` that was saved to the end, if any;
    ``report``: say on stdout which one was taken and which newer ones were skipped, and why."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    numbered = [(int(m.group(1)), path) for path in folder.iterdir() if (m := _CHECKPOINT.match(path.name))]
    skipped = []
    for _, path in sorted(numbered, reverse=True):
        problem = checkpoint_problem(path) if path.is_dir() else "not a folder"
        if problem is None:
            if report:
                for name, why in skipped:
                    print(f"resume: skipping {name}: {why}")
                print(f"resume: from {path}")
            return path
        skipped.append((path, problem))
    return None


def resolve_resume_checkpoint(value: str | bool | None, output_dir: str | Path) -> str | None:
    """Turn ``resume_from_checkpoint`` into a checkpoint path (or None: start afresh).

    ``true``/``last``/``latest`` pick the newest complete checkpoint in ``output_dir``; a path must
    be a complete checkpoint. Anything else is refused with the setting named.
    """
    if value is None or value is False or (isinstance(value, str) and value.lower() in ("", "false", "none")):
        return None
    if value is True or (isinstance(value, str) and value.lower() in RESUME_LAST):
        found = last_complete_checkpoint(output_dir, report=int(os.environ.get("RANK", "0")) == 0)  # once
        if found is None:
            raise ValueError(f"resume_from_checkpoint={value!r}: no complete checkpoint-N folder in {output_dir}")
        return str(found)
    path = Path(value)
    if not path.is_dir():
        raise ValueError(f"resume_from_checkpoint {value!r} is not a folder")
    problem = checkpoint_problem(path)
    if problem is not None:
        raise ValueError(
            f"resume_from_checkpoint {value!r} was not saved to the end ({problem}): resume from an "
            f"earlier checkpoint, or give resume_from_checkpoint=last to take the newest complete one"
        )
    return str(path)


def mask_settings(args: Any) -> dict[str, Any]:
    """Every setting that decides the mask, as the run uses it: the strategy, the common settings
    (the frozen and dense patterns in force) and every strategy option (None where the strategy
    takes none)."""
    from gmt.masking import COMMON_OPTIONS, effective_frozen_params, strategy_class
    from gmt.masking.registry import strategy_options

    settings = {"mask_strategy": args.mask_strategy}
    for option in (*COMMON_OPTIONS, *strategy_options()):
        if option.decides_mask:
            settings[option.name] = getattr(args, option.name)
    settings["frozen_params"] = effective_frozen_params(args)
    if settings["dense_params"] is None:
        settings["dense_params"] = strategy_class(args.mask_strategy).default_dense_params
    return settings


def write_mask_settings(checkpoint: Path, args: Any) -> None:
    """Record ``mask_settings(args)`` in a checkpoint folder (before the Trainer's last file)."""
    (checkpoint / MASK_SETTINGS).write_text(json.dumps(mask_settings(args), indent=1, sort_keys=True) + "\n")


_SAID_UNCHECKED: set[str] = set()  # checkpoints whose unchecked settings this process has reported


def check_resume_settings(checkpoint: str | Path, args: Any) -> None:
    """Refuse to resume from ``checkpoint`` with mask settings other than those it was trained with,
    naming each setting with both values, unless ``resume_mask_changes`` lists it. A checkpoint
    written before gmt recorded its settings is not checked (said on stdout)."""
    path = Path(checkpoint) / MASK_SETTINGS
    if not path.is_file():
        if args.process_index == 0 and str(checkpoint) not in _SAID_UNCHECKED:  # checked by gmt.cli and train()
            _SAID_UNCHECKED.add(str(checkpoint))
            print(f"resume_from_checkpoint {checkpoint}: no {MASK_SETTINGS} (written by an older gmt); its mask "
                  "settings are not checked against this run's")  # fmt: skip
        return
    recorded, now = json.loads(path.read_text()), mask_settings(args)
    allowed = {name.strip() for name in (args.resume_mask_changes or "").split(",") if name.strip()}
    unknown = allowed - set(now)
    if unknown:
        raise ValueError(f"resume_mask_changes names {sorted(unknown)}, which are not mask settings: {sorted(now)}")
    if recorded.get("mask_strategy", now["mask_strategy"]) != now["mask_strategy"]:
        raise ValueError(
            f"resume_from_checkpoint {checkpoint} was written with mask_strategy {recorded['mask_strategy']!r}, "
            f"this run uses {now['mask_strategy']!r}: another strategy's mask state cannot be resumed"
        )
    changed = [name for name in sorted(now) if name in recorded and recorded[name] != now[name]]
    refused = [name for name in changed if name not in allowed]
    if refused:
        differences = "; ".join(f"{name}: {recorded[name]!r} in the checkpoint, {now[name]!r} now" for name in refused)
        raise ValueError(
            f"resume_from_checkpoint {checkpoint} was trained with other mask settings ({differences}). Resume "
            "with the checkpoint's values, or list the settings to change in resume_mask_changes "
            f"(e.g. --resume_mask_changes {','.join(refused)})."
        )


def check_output_dir(output_dir: str | Path) -> None:
    """Refuse an ``output_dir`` that cannot be written (made, or a file put in it), before the
    model loads: ``ValueError`` naming it and why."""
    path = Path(output_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".gmt-write-check-") as probe:
            probe.write(b"gmt")
            probe.flush()
    except OSError as error:
        raise ValueError(
            f"output_dir {path} cannot be written ({error.strerror or error}): checkpoints and the model go "
            "there; choose a writable output_dir"
        ) from error


def checkpoint_bytes(model_name_or_path: str | Path, checkpoints: bool) -> int | None:
    """About what one save of a local model takes: its weights, and with ``checkpoints`` AdamW's two
    fp32 moments per parameter as well (None where the model is not a local folder of weights)."""
    folder = Path(model_name_or_path)
    if not folder.is_dir():
        return None
    files = list(folder.glob("*.safetensors")) or list(folder.glob("*.bin"))
    weights = sum(file.stat().st_size for file in files)
    if not weights:
        return None
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    parameters = weights // (2 if dtype in ("bfloat16", "float16") else 4)
    return weights + (8 * parameters if checkpoints else 0)


def warn_if_a_save_will_not_fit(output_dir: str | Path, model_name_or_path: str | None, checkpoints: bool) -> None:
    """Say on stdout, before training, when ``output_dir``'s free space is below one save's size."""
    needed = None if model_name_or_path is None else checkpoint_bytes(model_name_or_path, checkpoints)
    free = shutil.disk_usage(output_dir).free
    if needed is not None and free < needed:
        what = "one checkpoint (the weights and AdamW's moments)" if checkpoints else "the model"
        print(f"warning: output_dir {output_dir} has {free / 2**30:.2f} GiB free, and {what} takes about "
              f"{needed / 2**30:.2f} GiB: the save will fail")  # fmt: skip


def save_failure(folder: Path, error: BaseException) -> str:
    """What went wrong saving the checkpoint ``folder``, in words a user can act on: no space left,
    not writable, or the error itself."""
    code = getattr(error, "errno", None)
    try:
        low_on_space = shutil.disk_usage(folder.parent).free < (64 << 20)
    except OSError:
        low_on_space = False
    if code == errno.ENOSPC or low_on_space:
        reason = "no space left on device"
    elif code in (errno.EROFS, errno.EACCES, errno.EPERM):
        reason = "the folder is read-only or not writable"
    else:
        reason = f"{type(error).__name__}: {error}"
    return f"saving checkpoint {folder} failed: {reason}. The partial checkpoint was removed; earlier ones are intact"


def remove_partial_checkpoint(folder: Path) -> None:
    """Delete a checkpoint folder whose save failed, unless it was already complete."""
    if folder.is_dir() and not is_complete(folder):
        shutil.rmtree(folder, ignore_errors=True)
