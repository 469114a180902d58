"""Scoring with a reasoning-gym task's own verifier, for the harness task ``gmt_reasoning_gym``
(eval/tasks/gmt_reasoning_gym.yaml names ``process_results`` here)."""

from __future__ import annotations

import json
from typing import Any

from gmt.smollm2.tasks import final_answer, verify


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """``solved``: whether the task's ``score_answer`` gives the reply's final-answer line full marks;
    ``reward``: that score itself (reasoning-gym gives partial credit, e.g. ``len(answer) /
    len(reply)`` for a reply that contains the answer: 0.5 for "10" where the answer is "1");
    ``answered``: whether the reply has a final-answer line at all (0 for the other two without one)."""
    answer = final_answer(results[0])
    reward = verify(doc["task"], answer, json.loads(doc["entry"]))
    return {"solved": float(reward >= 1.0), "reward": reward, "answered": float(answer is not None)}
