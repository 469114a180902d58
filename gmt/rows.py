"""A cheap pass over the raw training rows before any model loads: each row holds what TRL will read
from it, and a bad one is named by its place (``file:line`` for JSON lines, ``split row N``
otherwise) with what is wrong. TRL would find most of these only while tokenizing, after the model
load, with an error that names no row (docs/data.md lists them).

The layout (TRL's order: ``input_ids``, then ``prompt``+``completion``, then ``messages``, then the
text field for SFT; ``chosen``/``rejected`` with an optional ``prompt`` for DPO) is taken from the
first row, as TRL takes it from its first example; every later row must fit it. The first row of each
role is kept, so that gmt.chat can render it through the chat template and refuse a role the
template drops.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

# TRL's SFTTrainer reads a row by the first of these it has (its tokenize step), else by the text field.
_SFT_LAYOUTS = (("input_ids",), ("prompt", "completion"), ("messages",), ("conversations",))
_SHAREGPT_KEYS = {"from": "role", "value": "content"}  # TRL's maybe_convert_to_chatml


@dataclass(frozen=True)
class RoleExample:
    """The first row where a role appears: its place, the conversation the chat template renders,
    and the index of that role's first turn in it."""

    place: str
    conversation: list[dict]
    turn: int


@dataclass
class RowChecker:
    """Checks rows one at a time (``check``), raising ``ValueError`` at the first bad one.

    ``purpose`` is "SFT", "DPO" or "GRPO" and ``column_sets`` the columns it accepts (gmt.data's
    layouts); ``assistant_turn_needed`` is ``assistant_only_loss``, under
    which a conversation with no assistant turn has nothing to learn; ``column_map`` is
    ``dataset_column_map`` parsed, applied to each row first; ``text_field`` is SFT's
    ``dataset_text_field``."""

    purpose: str
    column_sets: tuple[tuple[str, ...], ...]
    assistant_turn_needed: bool = False
    column_map: dict[str, str] = field(default_factory=dict)
    text_field: str = "text"
    layout: str | None = None  # fixed by the first row
    first_place: str | None = None
    roles: dict[str, RoleExample] = field(default_factory=dict)
    rows: int = 0

    def check(self, row: dict, place: str) -> None:
        """Refuse ``row`` (found at ``place``) if it does not hold what its layout needs."""
        if self.column_map:
            if self.layout is None and (problem := unmapped_columns(self.column_map, row)):
                raise ValueError(f"{place}: {problem}")
            row = {self.column_map.get(key, key): value for key, value in row.items()}
        if self.layout is None:
            self.layout, self.first_place = self._layout_of(row), place
            if self.layout is None:
                raise ValueError(f"{place}: {missing_columns(self.purpose, self.column_sets, row)}")
            if self.layout == "conversations" and self.assistant_turn_needed:
                raise ValueError(
                    "assistant_only_loss true needs role/content turns in a messages column: TRL refuses it on "
                    "ShareGPT's from/value conversations, which it converts only later (rename the column and keys, "
                    "or set assistant_only_loss false)"
                )
        check_row = {"DPO": self._dpo_problem, "GRPO": self._grpo_problem}.get(self.purpose, self._sft_problem)
        problem = check_row(row, place)
        if problem is not None:
            raise ValueError(f"{place}: {problem}")
        self.rows += 1

    def check_all(self, rows: Iterable[dict], source: str) -> None:
        """``check`` every row of an iterable, named ``<source> row N`` (1-based)."""
        for number, row in enumerate(rows, start=1):
            self.check(row, f"{source} row {number}")

    def _layout_of(self, row: dict) -> str | None:
        """The layout TRL reads ``row`` as, or None where it has none of the accepted columns."""
        if not any(set(columns) <= set(row) for columns in self.column_sets):
            return None
        if self.purpose == "DPO":
            return "prompt+chosen+rejected" if "prompt" in row else "chosen+rejected"
        if self.purpose == "GRPO":  # the prompt and the columns its rewards read
            return "+".join(next(columns for columns in self.column_sets if set(columns) <= set(row)))
        for columns in _SFT_LAYOUTS:
            if columns[0] in row:
                return "+".join(columns)
        return self.text_field

    def _missing(self, row: dict) -> str | None:
        for column in self.layout.split("+"):
            if row.get(column) is None:
                return (
                    f"no {column!r} (the {self.purpose} rows are read as {self.layout}, from the first row, "
                    f"{self.first_place})"
                )
        return None

    def _sft_problem(self, row: dict, place: str) -> str | None:
        missing = self._missing(row)
        if missing is not None:
            return missing
        if self.layout == "input_ids":
            ids = row["input_ids"]
            if not isinstance(ids, list) or not ids or not all(isinstance(i, int) for i in ids):
                return "input_ids must be a non-empty list of token ids"
            return None
        if self.layout == "prompt+completion":
            return self._pair_problem(row, "prompt", "completion", place, learned="completion")
        if self.layout == "messages":
            return self._turns_problem(row["messages"], "messages", place, [], learned=True)
        if self.layout == "conversations":  # ShareGPT's from/value turns, which TRL renames to role/content
            turns = row["conversations"]
            if turns and isinstance(turns, list) and isinstance(turns[0], dict) and "from" not in turns[0]:
                return (
                    "conversations[0] has no 'from': TRL reads a conversations column of ShareGPT's from/value turns "
                    "only (role/content turns go in messages)"
                )
            if isinstance(turns, list):
                turns = [{_SHAREGPT_KEYS.get(key, key): value for key, value in turn.items()}
                         if isinstance(turn, dict) else turn for turn in turns]  # fmt: skip
            return self._turns_problem(turns, "conversations", place, [], learned=True)
        text = row[self.text_field]
        if not isinstance(text, str) or not text.strip():
            return f"{self.text_field} (dataset_text_field) must be a non-empty string, got {_shown(text)}"
        return None

    def _dpo_problem(self, row: dict, place: str) -> str | None:
        missing = self._missing(row)
        if missing is not None:
            return missing
        chosen, rejected = row["chosen"], row["rejected"]
        if isinstance(chosen, str) != isinstance(rejected, str):
            return f"chosen is {_kind(chosen)} but rejected is {_kind(rejected)}: both text or both conversations"
        prompt = row.get("prompt")
        if prompt is None:
            if isinstance(chosen, str):
                return self._texts_problem(row, ("chosen", "rejected"))
            for column in ("chosen", "rejected"):
                problem = self._turns_problem(row[column], column, place, [], learned=True)
                if problem is not None:
                    return problem
            return None
        if isinstance(chosen, str):
            if not isinstance(prompt, str):
                return f"prompt is {_kind(prompt)} but chosen and rejected are text: both text or both conversations"
            return self._texts_problem(row, ("chosen", "rejected"))
        if isinstance(prompt, str):  # HuggingFaceH4/ultrafeedback_binarized: the prompt is inside the conversations
            for column in ("chosen", "rejected"):
                problem = self._turns_problem(row[column], column, place, [], learned=True)
                if problem is not None:
                    return problem
            return None
        for column in ("chosen", "rejected"):
            problem = self._pair_problem(row, "prompt", column, place, learned=column)
            if problem is not None:
                return problem
        return None

    def _grpo_problem(self, row: dict, place: str) -> str | None:
        missing = self._missing(row)
        if missing is not None:
            return missing
        prompt = row["prompt"]
        if isinstance(prompt, str):
            return None if prompt.strip() else "prompt is empty: nothing to generate from"
        return self._turns_problem(prompt, "prompt", place, [], learned=False)

    def _pair_problem(self, row: dict, first: str, second: str, place: str, learned: str) -> str | None:
        """A prompt and what follows it: both text, or both conversations (rendered one after the other)."""
        head, tail = row[first], row[second]
        if isinstance(head, str) != isinstance(tail, str):
            return f"{first} is {_kind(head)} but {second} is {_kind(tail)}: both text or both conversations"
        if isinstance(head, str):
            return self._texts_problem(row, (learned,))
        problem = self._turns_problem(head, first, place, [], learned=False)
        if problem is None:
            problem = self._turns_problem(tail, second, place, head, learned=True)
        return problem

    def _texts_problem(self, row: dict, columns: tuple[str, ...]) -> str | None:
        for column in columns:
            value = row[column]
            if not isinstance(value, str):
                return f"{column} must be text here, got {_kind(value)}"
            if not value.strip():
                return f"{column} is empty: the row has nothing to learn"
        return None

    def _turns_problem(self, turns, column: str, place: str, before: list, learned: bool) -> str | None:
        """A list of role/content turns; ``before`` is the conversation rendered ahead of it, and
        ``learned`` whether the loss is on it (where assistant_only_loss needs an assistant turn)."""
        if not isinstance(turns, list):
            return f"{column} must be a list of turns, got {_kind(turns)}"
        if not turns:
            return f"{column} is an empty list: no turns"
        roles, assistant = self.roles, False
        for index, turn in enumerate(turns):
            if type(turn) is dict and type(role := turn.get("role")) is str and type(turn.get("content")) is str:
                pass  # the common turn, checked in one test (this loop runs for every turn of every row)
            elif problem := _odd_turn_problem(turn, f"{column}[{index}]"):
                return problem
            content = turn.get("content")
            if role not in roles and isinstance(content, str) and content.strip():
                roles[role] = RoleExample(place, [*before, *turns], len(before) + index)  # text to probe
            if learned and role == "assistant" and isinstance(content, str) and not content.strip():
                return f"{column}[{index}] (role 'assistant') is empty: an empty reply teaches nothing"
            assistant = assistant or role == "assistant"
        if learned and self.assistant_turn_needed and not assistant:
            return (
                f"{column} has no 'assistant' turn (roles {sorted({turn['role'] for turn in turns})}), and "
                "assistant_only_loss true learns only from assistant turns: the row has nothing to learn (ShareGPT's "
                "'gpt' is 'assistant')"
            )
        return None


def _odd_turn_problem(turn, name: str) -> str | None:
    """What is wrong with a turn that is not a plain role/text pair (None: a tool call)."""
    if not isinstance(turn, dict):
        return f"{name} must be an object with 'role' and 'content', got {_kind(turn)}"
    role = turn.get("role")
    if not isinstance(role, str):
        hint = " (ShareGPT's from/value turns: TRL converts them in a 'conversations' column)" if "from" in turn else ""
        return f"{name} has no string 'role'{hint}"
    content = turn.get("content")
    if content is None and not turn.get("tool_calls"):
        return f"{name} (role {role!r}) has no content"
    if isinstance(content, list):  # the OpenAI/TRL multimodal layout: a text template renders the list's repr
        return (
            f"{name} (role {role!r}): content is a list of parts ({_kind(content[0]) if content else 'empty'} ...), "
            "the multimodal layout; gmt trains text models, whose chat templates would render the list as its Python "
            "repr. Give content as text (join the parts' text)"
        )
    if content is not None and not isinstance(content, str):
        return f"{name} (role {role!r}): content must be text, got {_kind(content)}"
    return None


def missing_columns(purpose: str, column_sets: tuple[tuple[str, ...], ...], columns) -> str:
    """The refusal of data whose ``columns`` hold none of the ``column_sets`` ``purpose`` accepts."""
    wanted = " or ".join("+".join(required) for required in column_sets)
    return (
        f"{purpose} data set needs the columns {wanted}; it has {sorted(columns)} (check dataset_name, or rename "
        "columns with dataset_column_map)"
    )


def unmapped_columns(column_map: dict[str, str], columns) -> str | None:
    """The refusal of a ``dataset_column_map`` that names columns the data lacks (None if it names none)."""
    missing = sorted(set(column_map) - set(columns))
    if not missing:
        return None
    return f"dataset_column_map names columns the data set lacks: {missing}; it has {sorted(columns)}"


def _kind(value) -> str:
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _shown(value) -> str:
    return repr(value) if value is None or isinstance(value, str) else _kind(value)
