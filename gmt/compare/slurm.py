"""The runs still to do as a SLURM job array (``gmt compare --submit slurm``)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from gmt.compare.runs import Run


def write_array(pending: list[Run], args, phase: str) -> Path:
    """A SLURM job array of the pending runs (one per array task), and how to submit it."""
    folder = args.out / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{phase}.sbatch"
    options = shlex.split(args.slurm_args or "")
    lines = ["#!/bin/bash", f"#SBATCH --job-name=gmt-compare-{phase}", f"#SBATCH --array=0-{len(pending) - 1}",
             f"#SBATCH --output={folder.resolve()}/%x-%A_%a.out"]  # fmt: skip
    lines += [f"#SBATCH {option}" for option in _sbatch_options(options)]
    activate = f". {shlex.quote(args.activate)} && " if args.activate else ""
    python = "python" if args.activate else shlex.quote(sys.executable)  # this one, on a shared file system
    runs = " ".join(shlex.quote(str(Path(run.run_dir).resolve())) for run in pending)
    lines += ["set -euo pipefail", f"cd {shlex.quote(str(Path.cwd()))}", f"runs=({runs})",
              "# one run: train it (its launcher in run.json), score it, write result.json",
              f'{activate}{python} -m gmt.compare --task "${{runs[$SLURM_ARRAY_TASK_ID]}}"', ""]  # fmt: skip
    path.write_text("\n".join(lines))
    return path


def _sbatch_options(words: list[str]) -> list[str]:
    """``--nodes 2 --time 4:00:00`` as ``--nodes=2``, ``--time=4:00:00`` (one #SBATCH line each)."""
    options, index = [], 0
    while index < len(words):
        word = words[index]
        if "=" not in word and index + 1 < len(words) and not words[index + 1].startswith("-"):
            options.append(f"{word}={words[index + 1]}")
            index += 2
        else:
            options.append(word)
            index += 1
    return options
