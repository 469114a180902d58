"""Which checkpoint a resumed run starts from, and whether a checkpoint is whole.

The Trainer writes ``checkpoint-N/trainer_state.json`` last (after the model, the optimizer, the
RNG states and gmt's mask state); once every rank has written its files, gmt adds a manifest
(``gmt_manifest.json``): each file's size and content hash, the run that wrote it and whether it
holds the optimizer. A checkpoint is complete when its manifest is there and every file still
matches it; one without (a kill or a node failure during the save), or whose files changed since,
is skipped with the file named, so the run resumes from the previous complete one. The Trainer's
own ``get_last_checkpoint`` would pick the newest folder, complete or not.

``resume last`` takes only checkpoints of the run that owns ``output_dir`` (``gmt_run.json``,
written by gmt.output_dir): its own, and those of the runs it was resumed from up to the step it
resumed at. A fork (a resume from an older checkpoint) never resumes from the abandoned branch.
docs/reliability.md says what this covers.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import xxhash

from gmt.launch import is_main_launched_process
from gmt.models import local_config, saved_dtype

TRAINER_STATE = "trainer_state.json"
MASK_SETTINGS = "gmt_mask_settings.json"  # the mask settings a checkpoint was trained with
MANIFEST = "gmt_manifest.json"  # written last: the checkpoint is complete, with these files
RUN_FILE = "gmt_run.json"  # in output_dir: the run that owns it (gmt.output_dir)
RESUME_LAST = ("true", "last", "latest")  # resume_from_checkpoint values meaning "the newest complete one"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_HASH_CHUNK = 16 << 20
# How many rows an optimizer step consumes: a resume with other values resumes at another place in the data.
BATCH_SETTINGS = ("per_device_train_batch_size", "gradient_accumulation_steps", "world_size")
# What makes a checkpoint's weights fit a model (config.json); another value is another architecture.
ARCHITECTURE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                     "intermediate_size", "vocab_size", "num_experts", "num_local_experts")  # fmt: skip


def content_hash(path: Path) -> str:
    """The xxh3-128 hash of a file's bytes (several GB/s a core; docs/reliability.md has its cost)."""
    digest = xxhash.xxh3_128()
    with path.open("rb") as file:
        while chunk := file.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _hashes(paths: list[Path]) -> list[str]:
    """``content_hash`` of each path, a few files at a time (the hash releases the GIL)."""
    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1, len(paths)))) as pool:
        return list(pool.map(content_hash, paths))


def checkpoint_step(checkpoint: Path) -> int | None:
    """N of a ``checkpoint-N`` folder (None for another name)."""
    match = _CHECKPOINT.match(Path(checkpoint).name)
    return int(match.group(1)) if match else None


def write_manifest(
    checkpoint: Path, run: dict[str, Any] | None = None, model_only: bool = False, batch: dict[str, int] | None = None
) -> None:
    """Mark ``checkpoint`` complete, last of all its files: the size and content hash of every file
    in it, the run that wrote it (``run``: its id and lineage, gmt.output_dir), whether it holds
    only the model (``save_only_model``: no optimizer, scheduler or RNG state to resume from) and
    the ``batch`` layout that decides which rows its steps consumed (``BATCH_SETTINGS``)."""
    paths = [path for path in sorted(checkpoint.rglob("*")) if path.is_file() and not path.name.startswith(".")
             and path.name != MANIFEST]  # fmt: skip
    files = {str(path.relative_to(checkpoint)): {"bytes": path.stat().st_size, "xxh3_128": digest}
             for path, digest in zip(paths, _hashes(paths), strict=True)}  # fmt: skip
    manifest = {"format": 2, "run_id": (run or {}).get("run_id"), "lineage": (run or {}).get("lineage", []),
                "model_only": model_only, "batch": batch or {}, "files": files}  # fmt: skip
    partial = checkpoint / f".{MANIFEST}.partial"
    partial.write_text(json.dumps(manifest, indent=1) + "\n")
    partial.replace(checkpoint / MANIFEST)  # atomic: there is a whole manifest or none


def read_manifest(checkpoint: Path) -> dict[str, Any] | None:
    """A checkpoint's manifest in the current layout (an older gmt's, sizes only, is converted);
    None where there is none or it is unreadable."""
    try:
        manifest = json.loads((Path(checkpoint) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict):
        return None
    if "files" not in manifest:  # an older gmt's: {name: size}
        return {"run_id": None, "lineage": [], "model_only": False,
                "files": {name: {"bytes": size} for name, size in manifest.items()}}  # fmt: skip
    return manifest


def checkpoint_problem(checkpoint: Path, verify_content: bool = True) -> str | None:
    """Why ``checkpoint`` cannot be resumed from (None: it was saved to the end and is unchanged). A
    checkpoint gmt wrote has a manifest, written last: every file must be there with its size and
    (``verify_content``) its content hash. An older one (or the Trainer's alone) must at least have
    a ``trainer_state.json`` that parses."""
    checkpoint = Path(checkpoint)
    if (checkpoint / MANIFEST).is_file():
        manifest = read_manifest(checkpoint)
        if manifest is None:
            return f"its {MANIFEST} is unreadable"
        files = manifest["files"]
        for name, record in files.items():
            path = checkpoint / name
            if not path.is_file():
                return f"{path} is missing"
            if path.stat().st_size != record["bytes"]:
                return (f"{path} is {path.stat().st_size} bytes, {record['bytes']} when it was saved (damaged or cut "
                        "short)")  # fmt: skip
        hashed = [name for name, record in files.items() if "xxh3_128" in record]
        if verify_content and hashed:
            for name, digest in zip(hashed, _hashes([checkpoint / name for name in hashed]), strict=True):
                if digest != files[name]["xxh3_128"]:
                    return (f"{checkpoint / name} changed since it was saved (its content hash differs from the "
                            "manifest's: damaged, or replaced by another file)")  # fmt: skip
        return None
    if (checkpoint / MASK_SETTINGS).is_file():  # gmt began this save and never marked it complete
        return f"its save did not finish (no {MANIFEST})"
    try:
        json.loads((checkpoint / TRAINER_STATE).read_text())
    except (OSError, ValueError):
        return f"its save did not finish (no readable {TRAINER_STATE})"
    return None


def is_complete(checkpoint: Path, verify_content: bool = True) -> bool:
    """Whether a checkpoint folder was saved to the end (``checkpoint_problem`` finds nothing)."""
    return checkpoint_problem(checkpoint, verify_content) is None


def read_run(output_dir: str | Path) -> dict[str, Any] | None:
    """The run that owns ``output_dir`` (its ``gmt_run.json``: ``run_id`` and ``lineage``), if any."""
    try:
        run = json.loads((Path(output_dir) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return run if isinstance(run, dict) and "run_id" in run else None


def other_run(checkpoint: Path, run: dict[str, Any] | None) -> str | None:
    """Why ``checkpoint`` is not of ``run`` (None: it is, or there is no run to compare with). Of
    the run are its own checkpoints and those of the runs in its lineage ([run id, step resumed at]:
    the runs it was resumed from) up to the step it left each."""
    if run is None:
        return None
    manifest = read_manifest(checkpoint)
    written_by = manifest.get("run_id") if manifest else None
    if written_by == run["run_id"]:
        return None
    step = checkpoint_step(checkpoint)
    for ancestor, resumed_at in run.get("lineage", []):
        if ancestor == written_by and step is not None and step <= resumed_at:
            return None
    if written_by is None:
        return f"it was not written by this output_dir's run {run['run_id']} (no run id: an older gmt, or another tool)"
    return f"it was written by another run ({written_by}; this output_dir's run is {run['run_id']})"


def last_complete_checkpoint(output_dir: str | Path, report: bool = False) -> Path | None:
    """The newest ``checkpoint-N`` folder in ``output_dir`` that was saved to the end and belongs to
    the run that owns the folder, if any; ``report``: say on stdout which one was taken and which
    newer ones were skipped, and why."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    run = read_run(folder)
    numbered = [(step, path) for path in folder.iterdir() if (step := checkpoint_step(path)) is not None]
    skipped = []
    for _, path in sorted(numbered, reverse=True):
        problem = "not a folder" if not path.is_dir() else other_run(path, run) or checkpoint_problem(path)
        if problem is None:
            if report:
                for name, why in skipped:
                    print(f"resume: skipping {name}: {why}")
                print(f"resume: from {path}")
            return path
        skipped.append((path, problem))
    if report:
        for name, why in skipped:
            print(f"resume: skipping {name}: {why}")
    return None


def resolve_resume_checkpoint(value: str | bool | None, output_dir: str | Path) -> str | None:
    """Turn ``resume_from_checkpoint`` into a checkpoint path (or None: start afresh).

    ``true``/``last``/``latest`` pick the newest complete checkpoint of this output_dir's run; a
    path must be a complete checkpoint. A checkpoint saved with ``save_only_model`` cannot be
    resumed exactly (no optimizer, schedule or RNG state) and is refused. Anything else is refused
    with the setting named.
    """
    if value is None or value is False or (isinstance(value, str) and value.lower() in ("", "false", "none")):
        return None
    if value is True or (isinstance(value, str) and value.lower() in RESUME_LAST):
        found = last_complete_checkpoint(output_dir, report=is_main_launched_process())  # once
        if found is None:
            raise ValueError(f"resume_from_checkpoint={value!r}: no complete checkpoint-N folder of this run in "
                             f"{output_dir}")  # fmt: skip
        path = found
    else:
        path = Path(value)
        if not path.is_dir():
            raise ValueError(f"resume_from_checkpoint {value!r} is not a folder")
        problem = checkpoint_problem(path)
        if problem is not None:
            raise ValueError(
                f"resume_from_checkpoint {value!r} was not saved to the end ({problem}): resume from an "
                f"earlier checkpoint, or give resume_from_checkpoint=last to take the newest complete one"
            )
    manifest = read_manifest(path)
    if manifest is not None and manifest.get("model_only"):
        raise ValueError(
            f"resume_from_checkpoint {str(path)!r} was saved with save_only_model: true: it holds the weights but no "
            "optimizer, schedule or RNG state, so the run cannot go on exactly (AdamW and the warm-up would restart). "
            f"Start a new run from its weights (model_name_or_path {path}), or save full checkpoints "
            "(save_only_model: false) to resume"
        )
    return str(path)


def batch_layout(args: Any) -> dict[str, int]:
    """The run's ``BATCH_SETTINGS``, as recorded in its checkpoints' manifests."""
    return {name: int(getattr(args, name)) for name in BATCH_SETTINGS}


def check_resume_layout(checkpoint: str | Path, args: Any, model_name_or_path: str | None) -> None:
    """Before the model loads: refuse a resume with another number of processes (the mask state and
    the optimizer are sharded per process) or onto another architecture (the weights would not
    fit), naming both; say when the batch layout changed (the Trainer then skips another number of
    rows than the checkpoint's steps consumed, without a word)."""
    checkpoint = Path(checkpoint)
    ranks = len(list(checkpoint.glob("gmt_mask_state_rank*.pt")))
    manifest = read_manifest(checkpoint) or {}
    recorded = manifest.get("batch") or {}
    written_by = recorded.get("world_size", ranks or None)
    if written_by and written_by != args.world_size:
        raise ValueError(
            f"resume_from_checkpoint {checkpoint} was written by {written_by} processes, this run has "
            f"{args.world_size}: the optimizer and the mask state are sharded per process and must match. Resume with "
            f"{written_by} processes, or start a new run from its weights (model_name_or_path {checkpoint})"
        )
    ours, theirs = local_config(model_name_or_path), local_config(checkpoint)
    if ours and theirs:
        differ = [key for key in ARCHITECTURE_KEYS if ours.get(key) != theirs.get(key)]
        if differ:
            shown = "; ".join(f"{key} {theirs.get(key)!r} in the checkpoint, {ours.get(key)!r} in the model"
                              for key in differ)  # fmt: skip
            raise ValueError(
                f"resume_from_checkpoint {checkpoint} is of another architecture than model_name_or_path "
                f"{model_name_or_path} ({shown}): resume with the model it was trained from"
            )
    now = batch_layout(args)
    changed = [name for name in BATCH_SETTINGS if name in recorded and recorded[name] != now[name]]
    if changed and is_main_launched_process():
        step = checkpoint_step(checkpoint) or 0
        rows_then = step * _rows_per_step(recorded, now)
        rows_now = step * _rows_per_step(now, now)
        settings = ", ".join(f"{name} {recorded[name]} -> {now[name]}" for name in changed)
        effect = "never trained on" if rows_now > rows_then else "trained on again"
        print(f"resume: {settings} since {checkpoint.name}. Its {step} steps consumed {rows_then} rows; the Trainer "
              f"skips {rows_now} rows of the data order to go on, so {abs(rows_now - rows_then)} rows are {effect} "
              "this epoch", flush=True)  # fmt: skip


def _rows_per_step(layout: dict[str, int], fallback: dict[str, int]) -> int:
    rows = 1
    for name in BATCH_SETTINGS:
        rows *= layout.get(name, fallback[name])
    return rows


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
    if strategy_class(args.mask_strategy).mask_seeded:  # the mask is drawn from the run's seed
        settings["seed"] = args.seed
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


def check_output_dir(output_dir: str | Path, what: str = "checkpoints and the model", create: bool = True) -> None:
    """Refuse an ``output_dir`` that cannot be written (made, or a file put in it), before the
    model loads: ``ValueError`` naming it, why, and ``what`` goes there. ``create`` False (a
    preflight) makes nothing: a folder not there yet is judged by the nearest one above it."""
    path = Path(output_dir)
    if not create and not path.exists():
        above = next(parent for parent in path.absolute().parents if parent.exists())
        if not above.is_dir() or not os.access(above, os.W_OK | os.X_OK):
            why = "not a folder" if not above.is_dir() else "not writable"
            raise ValueError(f"output_dir {path} cannot be made ({above} is {why}): {what} go there; choose a "
                             "writable output_dir")  # fmt: skip
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".gmt-write-check-") as probe:
            probe.write(b"gmt")
            probe.flush()
    except OSError as error:
        raise ValueError(
            f"output_dir {path} cannot be written ({error.strerror or error}): {what} go there; choose a "
            "writable output_dir"
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
    dtype = saved_dtype(local_config(folder) or {})
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


def save_failure(folder: Path, error: BaseException, checkpoint: bool = True) -> str:
    """What went wrong saving the checkpoint (``checkpoint``) or the final model in ``folder``, in
    words a user can act on: no space left, not writable, or the error itself."""
    code = getattr(error, "errno", None)
    try:
        low_on_space = shutil.disk_usage(folder.parent).free < (64 << 20)
    except OSError:
        low_on_space = False
    if code == errno.ENOSPC or low_on_space or "No space left" in str(error):
        reason = "no space left on device"
    elif code in (errno.EROFS, errno.EACCES, errno.EPERM):
        reason = "the folder is read-only or not writable"
    else:
        reason = f"{type(error).__name__}: {error}"
    if not checkpoint:
        return (f"saving the model to {folder} failed: {reason}. Its files there are partial; the run's checkpoints "
                "are intact (resume_from_checkpoint last, then save again)")  # fmt: skip
    return f"saving checkpoint {folder} failed: {reason}. The partial checkpoint was removed; earlier ones are intact"


def remove_partial_checkpoint(folder: Path) -> None:
    """Delete a checkpoint folder whose save failed, unless it was already marked complete (a
    failure after the manifest, a barrier say, never deletes a complete checkpoint)."""
    if folder.is_dir() and not (folder / MANIFEST).is_file():
        shutil.rmtree(folder, ignore_errors=True)
