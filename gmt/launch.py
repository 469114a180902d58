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


def processes_asked_of_accelerate(parent_pid: int | None = None) -> int | None:
    """How many processes the ``accelerate launch`` that started this one was asked for (its
    ``--num_processes``, else its ``--config_file``'s), or None when the parent is not accelerate
    launch or does not say. Read from the parent's command line: accelerate's plain launcher, which
    it falls back to without ``--multi_gpu`` and fewer than 2 GPUs, passes the number on to nobody."""
    path = f"/proc/{os.getppid() if parent_pid is None else parent_pid}/cmdline"
    try:
        with open(path, "rb") as file:
            words = [word.decode(errors="replace") for word in file.read().split(b"\0") if word]
    except OSError:  # not Linux, or the parent is gone
        return None
    def launches(index: int) -> bool:  # `accelerate launch ...` or `python -m accelerate.commands.launch ...`
        word = words[index]
        return word == "accelerate.commands.launch" or (
            word == "launch" and index > 0 and os.path.basename(words[index - 1]) == "accelerate")

    start = next((index + 1 for index in range(len(words)) if launches(index)), None)
    if start is None:
        return None
    from accelerate.commands.launch import launch_command_parser

    try:
        asked, _ = launch_command_parser().parse_known_args(words[start:])
    except SystemExit:  # a command line accelerate itself took, that its parser reads otherwise here
        return None
    if asked.num_processes is not None:
        return int(asked.num_processes)
    if asked.config_file:
        import yaml

        try:
            with open(asked.config_file) as file:
                processes = (yaml.safe_load(file) or {}).get("num_processes")
        except OSError:
            return None
        return int(processes) if isinstance(processes, int) else None
    return None
