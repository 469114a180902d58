"""Ending a rank of a launched run without Python's interpreter finalization.

Why: a process group that something still references (DDP's reducer, a DeepSpeed engine) outlives
``destroy_process_group``, so its gloo worker threads (C++ threads) are still running while the
interpreter finalizes. On Python < 3.14 a thread that asks for the GIL once finalization has begun
(to drop the last reference to a tensor's Python object, say) is ended with ``pthread_exit``; the
unwinding through noexcept C++ frames calls ``std::terminate`` and the rank dies with SIGABRT
("terminate called without an active exception") after a run that succeeded. Leaving with
``os._exit`` once everything Python would have done at exit is done avoids finalization altogether.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn


def exit_without_finalizing(code: int = 0) -> NoReturn:
    """Do what a normal exit does first, then leave the process with ``os._exit(code)``.

    In the interpreter's order: wait for non-daemon threads, run the ``atexit`` handlers (logging's
    flush, experiment trackers' uploads), flush stdout and stderr. Nothing after that needs Python.
    """
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: nothing more can be written to it
            pass
    os._exit(code)
