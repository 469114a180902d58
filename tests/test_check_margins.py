"""scripts/check_margins.py's verdicts, on planted runs (no training): a limit is safe only when
every run passes it and the mean lies 3 standard deviations of the spread away from it."""

import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))


def planted(outcome: str, values: list[float], key: str) -> list[dict]:
    return [{"outcome": outcome, "seed": seed, "threads": 1, "seconds": 1.0, "values": {key: value}}
            for seed, value in enumerate(values)]  # fmt: skip


def test_a_limit_inside_the_spread_or_too_near_the_mean_is_not_safe():
    from check_margins import markdown, summarize

    far = planted("grft_pull", [0.15, 0.16, 0.17, 0.18], "drift_ratio")  # limit: < 0.8
    near = planted("gspf_moved", [0.95, 1.0, 0.91, 1.0], "moved_over_kept")  # limit: > 0.9, 1.5 std away
    failing = planted("sft_loss_drop", [0.5, -0.1, 0.7], "drop") + [
        {"outcome": "sft_loss_drop", "seed": 9, "threads": 1, "seconds": 1.0, "error": "crashed"}
    ]
    for run in failing[:3]:
        run["values"]["finite"] = 1.0
    rows = {(row["outcome"], row["assertion"]): row for row in summarize(far + near + failing)}
    assert rows[("grft_pull", "drift_ratio < 0.8")]["safe"]
    assert rows[("grft_pull", "drift_ratio < 0.8")]["worst_margin"] == 0.8 - 0.18
    assert not rows[("gspf_moved", "moved_over_kept > 0.9")]["safe"]
    drop = rows[("sft_loss_drop", "drop > 0")]
    assert not drop["safe"] and drop["min"] == -0.1 and drop["crashed"] == 1
    table = markdown(list(rows.values()), [0, 1, 2, 3], [1], "a machine")
    assert "| tests/test_fixed_strategies.py::test_grft_pull_keeps_weights_nearer_the_pretrained_ones |" in table
    assert table.count("**no**") == 3  # gspf, and both of sft_loss_drop's bounds (a run crashed)
