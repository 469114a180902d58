"""What the launcher (torchrun, accelerate launch, a SLURM script) tells this process about itself."""

from __future__ import annotations

import os
from pathlib import Path


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


def accelerate_config_processes(config_file: str | Path) -> int:
    """The processes an accelerate config launches in all (its ``num_processes``: the total over its
    machines, as ``accelerate launch`` reads it; 1 when it sets none)."""
    import yaml

    config = yaml.safe_load(Path(config_file).read_text()) or {}
    return int(config.get("num_processes") or 1)


def accelerate_launch_processes(arguments: list[str]) -> int | None:
    """The processes ``accelerate launch ARGUMENTS`` asks for: its ``--num_processes``, else its
    ``--config_file``'s (read with accelerate's own parser, so every spelling it takes is read alike);
    None when neither says."""
    from accelerate.commands.launch import launch_command_parser

    try:
        asked, _ = launch_command_parser().parse_known_args(arguments)
    except SystemExit:  # a command line accelerate took that its parser reads otherwise here
        return None
    if asked.num_processes is not None:
        return int(asked.num_processes)
    if asked.config_file:
        try:
            return accelerate_config_processes(asked.config_file)
        except (OSError, ValueError, TypeError):
            return None
    return None


def processes_asked_of_accelerate() -> int | None:
    """How many processes the ``accelerate launch`` that started this one was asked for, or None when
    the parent is not accelerate launch or does not say. Read from the parent's command line:
    accelerate's plain launcher, which it falls back to without ``--multi_gpu`` and fewer than 2 GPUs,
    passes the number on to nobody."""
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as file:
            words = [word.decode(errors="replace") for word in file.read().split(b"\0") if word]
    except OSError:  # not Linux, or the parent is gone
        return None

    def launches(index: int) -> bool:  # `accelerate launch ...` or `python -m accelerate.commands.launch ...`
        word = words[index]
        return word == "accelerate.commands.launch" or (
            word == "launch" and index > 0 and os.path.basename(words[index - 1]) == "accelerate")

    start = next((index + 1 for index in range(len(words)) if launches(index)), None)
    return None if start is None else accelerate_launch_processes(words[start:])
