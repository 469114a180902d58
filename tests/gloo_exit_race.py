"""A 2-rank gloo run that ends the way the abort at exit happens: the group is destroyed while
something still holds it (as DDP's reducer and DeepSpeed's engine do) and an all-reduce is still in
flight with no Python reference to its tensor. Run with torchrun; argv[1] is a folder for markers.

Without gmt.shutdown.exit_without_finalizing, most runs of this script end with a rank killed by
SIGABRT ("terminate called without an active exception")."""

import atexit
import sys
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist

from gmt.shutdown import exit_without_finalizing

markers = Path(sys.argv[1])
dist.init_process_group("gloo")
rank = dist.get_rank()
held_group = dist.group.WORLD
atexit.register(lambda: (markers / f"atexit-{rank}").write_text("ran"))


def late_work() -> None:
    time.sleep(0.3)
    (markers / f"thread-{rank}").write_text("ran")


# A non-daemon thread still working at exit: the interpreter would wait for it, so must the exit.
threading.Thread(target=late_work).start()
if rank == 1:
    time.sleep(0.5)  # rank 0 reaches the exit with its all-reduce still waiting for rank 1
dist.all_reduce(torch.ones(1000), async_op=True)
dist.destroy_process_group()
print(f"rank {rank} reached the end")  # left in the buffer: the exit must flush it
exit_without_finalizing(0)
