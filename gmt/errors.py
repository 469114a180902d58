"""How a refusal reaches the user: one line on the main process and exit status 2, as argparse
gives, not a traceback per rank. ``GMT_TRACEBACK=1`` shows the traceback as well."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from gmt.launch import is_main_launched_process

# What gmt raises to refuse a setting or an input (an unexpected failure is anything else).
REFUSALS = (ValueError, FileNotFoundError, NotImplementedError)


def show_tracebacks() -> bool:
    """Whether refusals keep their traceback (``GMT_TRACEBACK=1``)."""
    return os.environ.get("GMT_TRACEBACK") == "1"


def exit_refused(command: str, error: BaseException) -> NoReturn:
    """Say ``error`` in one line (``gmt <command>: error: ...``) on the main process, and exit 2."""
    if is_main_launched_process():
        print(f"gmt {command}: error: {error}", file=sys.stderr, flush=True)
    sys.exit(2)
