"""The tiny suite measures learning: a short fine-tune of a base that knows some arithmetic scores
above that base, and the harness's numbers are the ones gmt writes."""

import json
from dataclasses import replace

from outcomes import OUTCOMES, SCORED_ASSETS, TEST_SEED, check

from gmt.tiny import ensure_tiny_assets


def test_tiny_suite_scores_the_fine_tune_above_its_base(tmp_path_factory):
    # Why the limit holds on other machines: see SCORED_BOUNDS in tests/outcomes.py and the spread
    # over seeds and thread counts in docs/margins/margins.md.
    outcome = OUTCOMES["scored_fine_tune"]
    assets = ensure_tiny_assets(tmp_path_factory.mktemp("gmt-tiny-scored"), replace(SCORED_ASSETS, seed=TEST_SEED))
    work = tmp_path_factory.mktemp("scored")
    values = outcome.measure(assets, work, TEST_SEED)
    check(values, outcome.bounds)
    written = json.loads((work / "eval-tuned" / "lm_eval_tiny.json").read_text())
    assert written["results"]["gmt_tiny_arith"]["exact_match,answer"] == values["tuned"]
    assert "| gmt_tiny_arith | exact_match,answer |" in (work / "eval-tuned" / "eval_tiny.md").read_text()
