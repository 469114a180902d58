"""Settings as declarations: each setting is an ``Option`` declared once, where it belongs.

A strategy declares its own options (``MaskStrategy.options``); the settings every strategy
shares are ``COMMON_OPTIONS`` here. The trainer configs' fields, their CLI help, the range checks
and the "this option belongs to strategy X" check are all derived from these declarations
(``gmt.config``), so a setting has one name, one default, one range and one help text.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from numbers import Real
from typing import Any

_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


@dataclass(frozen=True)
class Option:
    """One setting: its name (the config field and ``--flag``), type, default, range and help.

    ``low``/``high`` bound a number (closed unless ``low_open``/``high_open``); ``choices`` lists a
    string's values; ``regex``: the string must be a regular expression (None allowed: "unset");
    ``decides_mask``: false for a setting of how the run is resumed or reported, which a checkpoint
    does not record and a resumed run may change.
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    regex: bool = False
    decides_mask: bool = True

    def __post_init__(self) -> None:
        if self.type not in _KINDS:
            raise TypeError(f"option {self.name}: type must be one of {list(_KINDS)}, got {self.type}")

    def interval(self) -> str:
        """The allowed range in interval notation, e.g. ``[0, 1)``."""
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        left = "(" if self.low_open or self.low is None else "["
        right = ")" if self.high_open or self.high is None else "]"
        return f"{left}{low}, {high}{right}"

    def describe(self) -> str:
        """What a valid value is, in words (for error messages)."""
        if self.choices is not None:
            return f"one of {list(self.choices)}"
        if self.regex:
            return "a regular expression"
        if self.type is int and self.high is None and self.low is not None and not self.low_open:
            return f"an integer >= {self.low:g}"
        if self.type in (int, float) and (self.low is not None or self.high is not None):
            return f"{_KINDS[self.type]} in {self.interval()}"
        return _KINDS[self.type]

    def check(self, value: Any) -> None:
        """Raise ``ValueError`` naming this setting unless ``value`` is valid."""
        if value is None and (self.regex or self.default is None):
            return
        if self.type is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{self.name} must be true or false, got {value!r}")
            return
        if self.type is str:
            if not isinstance(value, str):
                raise ValueError(f"{self.name} must be {self.describe()}, got {value!r} ({type(value).__name__})")
            if self.choices is not None and value not in self.choices:
                raise ValueError(f"{self.name} must be one of {list(self.choices)}, got {value!r}")
            if self.regex:
                try:
                    re.compile(value)
                except re.error as error:
                    raise ValueError(f"{self.name} must be a regular expression, got {value!r}: {error}") from None
            return
        integral = self.type is int
        wrong_type = isinstance(value, bool) or not isinstance(value, int if integral else Real)
        if wrong_type or (not integral and not math.isfinite(value)):
            kind = "an integer" if integral else "a finite number"
            raise ValueError(f"{self.name} must be {kind} in {self.interval()}, got {value!r} ({type(value).__name__})")
        below = self.low is not None and (value < self.low or (self.low_open and value == self.low))
        above = self.high is not None and (value > self.high or (self.high_open and value == self.high))
        if below or above:
            raise ValueError(f"{self.name} must be {self.describe()}, got {value!r}")


MASK_START_STEP = Option(
    "mask_start_step", int, 0, "Optimizer steps of full updates before masking starts (0: mask from the first step).",
    low=0,
)  # fmt: skip
MAX_NONFINITE_STEPS = Option(
    "max_nonfinite_steps",
    int,
    3,
    "Optimizer steps in a row whose accumulated gradient holds NaN or inf that are skipped (no update, mask state "
    "unchanged; counted in the logs as nonfinite_skipped_steps); one more stops the run with "
    "NonFiniteGradientError. 0: stop at the first.",
    low=0,
    decides_mask=False,  # how a run reacts to a bad step: the natural retry after a stop raises it
)
FROZEN_PARAMS = Option(
    "frozen_params",
    str,
    None,
    "Regular expression (searched in parameter names) of parameters never trained, e.g. 'embed_tokens|lm_head'. "
    "Unset: the strategy's default; '' freezes nothing.",
    regex=True,
)
DENSE_PARAMS = Option(
    "dense_params",
    str,
    None,
    "Regular expression of parameters trained fully, never masked, e.g. 'lm_head'. Unset: the strategy's "
    "default; '' makes every parameter selectable.",
    regex=True,
)

DENSE_PHASE_LEARNING_RATE = Option(
    "dense_phase_learning_rate",
    float,
    None,
    "Peak learning rate of the optimizer steps that update every entry before the mask starts (mask_start_step; "
    "gspf's warm-up), on the same schedule as learning_rate, which the masked steps keep. Unset: learning_rate. "
    "A method that trains few entries often wants a rate that full updates cannot take.",
    low=0,
    low_open=True,
)

RESUME_MASK_CHANGES = Option(
    "resume_mask_changes",
    str,
    "",
    "Mask settings that may differ from the checkpoint's when resuming, comma-separated (e.g. 'mask_ratio'): "
    "the resumed steps use the new values. Any other mask setting that differs is refused, naming both values.",
    decides_mask=False,
)

LOG_MASK_BLOCKS = Option(
    "log_mask_blocks",
    bool,
    False,
    "Print the kept fraction of every block (mask/kept_fraction/<block>) in the console log lines too. The report_to "
    "backends and the trainer state always get them; the console gets the overall mask/kept_fraction.",
    decides_mask=False,
)

# The settings of every strategy (mask_strategy itself is declared by the registry, whose names it takes).
COMMON_OPTIONS: tuple[Option, ...] = (MASK_START_STEP, MAX_NONFINITE_STEPS, FROZEN_PARAMS, DENSE_PARAMS,
                                      DENSE_PHASE_LEARNING_RATE, RESUME_MASK_CHANGES, LOG_MASK_BLOCKS)  # fmt: skip
