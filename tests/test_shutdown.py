"""A launched rank exits cleanly after its gloo group was destroyed while still referenced."""

import subprocess
import sys

from conftest import REPO, torchrun_two_cpu

# Without the fix about 5 in 6 runs of the script abort (measured), so 3 clean runs in a row
# would happen by chance less than 1% of the time.
RUNS = 3


def test_gloo_rank_exit_does_not_abort(tmp_path):
    for run in range(RUNS):
        markers = tmp_path / f"run{run}"
        markers.mkdir()
        result = subprocess.run(
            [sys.executable, *torchrun_two_cpu(), "tests/gloo_exit_race.py", str(markers)],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        for rank in (0, 1):
            assert f"rank {rank} reached the end" in result.stdout  # stdout flushed before os._exit
            assert (markers / f"atexit-{rank}").read_text() == "ran"  # atexit handlers still run
            assert (markers / f"thread-{rank}").read_text() == "ran"  # non-daemon threads joined first
