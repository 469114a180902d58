"""What the launcher (torchrun, accelerate launch, a SLURM script) tells this process about itself."""

from __future__ import annotations

import os


def launched_rank() -> int:
    """This process's global rank (``RANK``; 0 when not launched), refused by name when it is not an integer."""
    value = os.environ.get("RANK", "0")
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"RANK={value!r} in the environment is not a process rank (a whole number, set by torchrun or accelerate "
            "launch); unset it for one process, or start the run with the launcher"
        ) from None


def is_main_launched_process() -> bool:
    """Whether this is the run's main process (rank 0), before any process group exists."""
    return launched_rank() == 0
