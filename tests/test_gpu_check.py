"""The CPU half of scripts/gpu_check.py, on its layouts scaled down 32x per dimension: the same
code a GPU run takes, with the CPU as the device (the selection against itself, the optimizers,
the sync counter in place of CUDA's sync debug mode)."""

import json
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import gpu_check  # noqa: E402


def test_gpu_check_passes_on_cpu(tmp_path):
    result = gpu_check.main(["--device", "cpu", "--scale", "32", "--out", str(tmp_path / "check.json")])
    failed = [name for name, check in result["checks"].items() if not check["passed"]]
    assert failed == [] and result["passed"]
    assert len(result["checks"]) == 6 + 2 + 3  # selections (2 layouts x 3 scopes), optimizers, syncs
    written = json.loads((tmp_path / "check.json").read_text())
    assert written["checks"]["syncs tensor"]["7b_tensors"] <= written["checks"]["syncs tensor"]["16_tensors"] + 2
