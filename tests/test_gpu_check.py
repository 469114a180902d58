"""scripts/gpu_check.py, the device check, in its CPU mode (layouts scaled down 32x per dimension):
the same code a GPU run takes, with the CPU as the device, so that the check a short GPU slot runs
cannot rot."""

import json
import os
import sys

import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import gpu_check  # noqa: E402


def test_the_device_check_passes_on_cpu_and_writes_after_every_check(tmp_path):
    out = tmp_path / "check.json"
    launch_settings = {name: os.environ.get(name) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    result = gpu_check.main(["--device", "cpu", "--scale", "32", "--out", str(out)])
    # it runs in the tests' own process: no process group or rank left behind for the next test's launches
    assert {name: os.environ.get(name) for name in launch_settings} == launch_settings
    assert not torch.distributed.is_initialized()
    failed = {name: check for name, check in result["checks"].items() if check["passed"] is not True}
    assert failed == {} and result["passed"]
    names = set(result["checks"])
    assert {f"selection {scope} {dtype}" for scope in gpu_check.SCOPES for dtype in ("float32", "bfloat16")} <= names
    assert {f"strategy {label}" for label in gpu_check.STRATEGY_SETTINGS} <= names
    assert {"sharded path (world-size-1 group)", "update mode through the masker", "DeepSpeed ZeRO-3 step",
            "model step, gmt against plain"} <= names  # fmt: skip
    checks = json.loads(out.read_text())["checks"]
    assert checks["optimizer fused (a tensor above 2^24 entries)"]["largest_tensor_entries"] > 2**24
    for label in gpu_check.STRATEGY_SETTINGS:  # each strategy moved what it asks to keep (ties at T kept too)
        moved, asked = checks[f"strategy {label}"]["moved_selectable"], checks[f"strategy {label}"]["asked"]
        assert asked <= moved <= asked + 2, label
    deepspeed = checks["DeepSpeed ZeRO-3 step"]
    assert deepspeed["hooked"] and abs(deepspeed["changed_fraction"] - deepspeed["kept_fraction"]) < 1e-3
    assert "| strategy gps | pass |" in out.with_suffix(".md").read_text()


def test_a_check_that_raises_is_recorded_and_the_budget_skips_the_rest(tmp_path):
    out = tmp_path / "check.json"
    report = gpu_check.Report(out, "cpu", 32, budget_s=3600)
    report.run("raises", lambda: 1 / 0)
    assert json.loads(out.read_text())["checks"]["raises"]["error"].startswith("ZeroDivisionError")
    report.run("after it", lambda: {"passed": True})  # the next check still runs, and is written at once
    written = json.loads(out.read_text())
    assert written["checks"]["after it"]["passed"] is True and written["passed"] is False
    report.budget_s = 0  # spent: a check not started is recorded as skipped, not failed
    report.run("late", lambda: {"passed": False})
    assert json.loads(out.read_text())["checks"]["late"]["passed"] is None
