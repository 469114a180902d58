"""One run at a time in an output_dir, and only its own checkpoints in it.

- The run's main process holds a lock on ``output_dir/.gmt.lock`` (``flock``) until it exits. The
  kernel drops the lock when the process ends, however it ends, so the lock file a killed run leaves
  behind locks nothing; a second run started on the same folder is refused while the first lives.
- ``gmt_run.json`` names the run that owns the folder, from its first save on: a fresh run gets a
  new id; a resumed run gets a new id too, with the runs it continues in its lineage ([run id,
  step resumed at]). Each
  checkpoint's manifest records both, and ``resume last`` takes only checkpoints of that lineage
  (gmt.checkpoints), so a fork from an older checkpoint never resumes from the abandoned branch.
- A fresh run in a folder that holds another run's checkpoints or record is refused, before the
  model loads, unless ``overwrite_output_dir`` is set; then those are removed first.

docs/reliability.md says what this covers and what it does not.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from gmt.checkpoints import RUN_FILE, checkpoint_step, read_manifest

LOCK_FILE = ".gmt.lock"
_HELD: dict[str, tuple[int, dict[str, Any]]] = {}  # output_dir -> (lock descriptor, the run) of this process


def lock_output_dir(output_dir: str | Path) -> None:
    """Take ``output_dir``'s lock for this process (kept until it exits), or refuse naming the run
    that holds it. Taking it again in the same process is a no-op."""
    key = str(Path(output_dir).resolve())
    if key in _HELD:
        return
    path = Path(output_dir) / LOCK_FILE
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(descriptor, 4096, 0).decode(errors="replace").strip() or "another process"
        os.close(descriptor)
        raise ValueError(
            f"output_dir {output_dir} is in use by another gmt run ({holder}): two runs in one folder would overwrite "
            "each other's checkpoints and model. Wait for it to end, or choose another output_dir"
        ) from None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
              .encode(), 0)  # fmt: skip
    _HELD[key] = (descriptor, {})


def release_output_dir(output_dir: str | Path) -> None:
    """Give up this process's lock on ``output_dir`` (a process that exits gives it up anyway)."""
    held = _HELD.pop(str(Path(output_dir).resolve()), None)
    if held is not None:
        os.close(held[0])


def previous_run_traces(output_dir: Path) -> list[Path]:
    """What an earlier run left in ``output_dir`` that a new run would mix with: checkpoint-N
    folders and the run record."""
    if not output_dir.is_dir():
        return []
    return sorted(path for path in output_dir.iterdir() if checkpoint_step(path) is not None or path.name == RUN_FILE)


def traces_a_fresh_run_may_remove(folder: Path, overwrite: bool) -> list[Path]:
    """The earlier run's files a fresh run in ``folder`` would remove (``overwrite``), or the refusal
    of a fresh run there without ``overwrite``."""
    traces = previous_run_traces(folder)
    if traces and not overwrite:
        names = ", ".join(path.name for path in traces[:4]) + (", ..." if len(traces) > 4 else "")
        raise ValueError(
            f"output_dir {folder} holds another run's files ({names}); a new run there would mix its checkpoints "
            "with them (and resume_from_checkpoint last could take theirs). Resume that run "
            "(resume_from_checkpoint last), choose another output_dir, or set overwrite_output_dir true to "
            "remove them first"
        )
    return traces


def claim_output_dir(output_dir: str | Path, resume_checkpoint: str | None, overwrite: bool) -> dict[str, Any]:
    """Make ``output_dir`` this run's (the main process calls it, before the model loads): take the
    lock, refuse a fresh run where another run left checkpoints (unless ``overwrite``: they are
    removed), and write the run record. Returns the record ({"run_id", "lineage"})."""
    folder = Path(output_dir)
    lock_output_dir(folder)
    if resume_checkpoint is None:
        traces = traces_a_fresh_run_may_remove(folder, overwrite)
        for path in traces:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        if traces:
            print(f"overwrite_output_dir: removed {len(traces)} earlier run file(s) from {folder}", flush=True)
        lineage: list = []
    else:
        lineage = continued_lineage(Path(resume_checkpoint))
    run = {"run_id": uuid.uuid4().hex[:16], "lineage": lineage}
    descriptor, _ = _HELD[str(folder.resolve())]
    _HELD[str(folder.resolve())] = (descriptor, run)
    return run


def record_run(output_dir: str | Path, run: dict[str, Any]) -> None:
    """Write ``run`` as the owner of ``output_dir`` (``gmt_run.json``), at its first save: a run
    refused or stopped before it saved anything leaves nothing that would block the next one."""
    path = Path(output_dir) / RUN_FILE
    text = json.dumps(run, indent=1) + "\n"
    if path.is_file() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{RUN_FILE}.partial")
    partial.write_text(text)
    partial.replace(path)


def continued_lineage(checkpoint: Path) -> list:
    """The lineage of a run resumed from ``checkpoint``: the checkpoint's own run's, and that run up
    to the checkpoint's step."""
    manifest = read_manifest(checkpoint) or {}
    step = checkpoint_step(checkpoint)
    return [*manifest.get("lineage", []), [manifest.get("run_id"), step if step is not None else 0]]


def current_run(output_dir: str | Path) -> dict[str, Any] | None:
    """The run this process claimed ``output_dir`` for (None: it has not)."""
    held = _HELD.get(str(Path(output_dir).resolve()))
    return held[1] if held and held[1] else None
