"""The prompt formats of the math and code recipes, one place for training and evaluation.

A recipe sets ``prompt_format`` and gmt/sft.py wraps each row's ``prompt`` column in it before TRL
sees the data; the matching eval suite's tasks (eval/tasks/*_metamath.yaml, *_magicoder.yaml) get
the same text filled in by gmt.evaluation, so a checkpoint is scored in the format it was tuned on.
Both formats are the source papers' own: MetaMath's Alpaca prompt and Magicoder's.
"""

from __future__ import annotations

import json

PROMPT_FORMATS: dict[str, str] = {
    # MetaMath (Yu et al., 2023) trains and evaluates with the Alpaca prompt; its answers end in "The answer is: N".
    "metamath": (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\n{prompt}\n\n### Response:\n"
    ),
    # Magicoder (Wei et al., 2023), src/magicoder/prompt_template.py.
    "magicoder": (
        "You are an exceptionally intelligent coding assistant that consistently delivers accurate and reliable "
        "responses to user instructions.\n\n@@ Instruction\n{prompt}\n\n@@ Response\n"
    ),
}
# An eval task's ``doc_to_text: "__GMT_PROMPT_<NAME>__<text>"`` is <text> (by default the included
# harness task's own doc_to_text) in that format; gmt.evaluation fills it in (prompt_task_yaml).
PLACEHOLDER = "__GMT_PROMPT_{name}__"


def format_prompt(name: str, prompt: str) -> str:
    """``prompt`` in the format ``name``."""
    return PROMPT_FORMATS[name].replace("{prompt}", prompt)


def apply_prompt_format(dataset, name: str):
    """Wrap the ``prompt`` column of prompt/completion rows in the format ``name``."""
    if name not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format must be one of {sorted(PROMPT_FORMATS)}, got {name!r}")
    first = next(iter(dataset))
    if not isinstance(first.get("prompt"), str) or "completion" not in first:
        raise ValueError(
            f"prompt_format {name!r} wraps a text prompt column of prompt/completion rows; this data set has "
            f"{sorted(first)} (map the columns with dataset_column_map, or leave chats to the chat template)"
        )
    return dataset.map(lambda row: {"prompt": format_prompt(name, row["prompt"])}, desc=f"prompt_format {name}")


def task_yaml_spec(task_yaml: str) -> dict:
    """A harness task file's fields, its ``!function module.name`` values kept as their text (the
    harness resolves them itself when it builds the task)."""
    import yaml

    class TaskLoader(yaml.SafeLoader):
        pass

    TaskLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    return yaml.load(task_yaml, Loader=TaskLoader)


def prompt_task_yaml(task_yaml: str, included_doc_to_text) -> str:
    """``task_yaml`` with a ``__GMT_PROMPT_<NAME>__`` doc_to_text put in its format.

    ``included_doc_to_text()`` gives the doc_to_text of the task the YAML includes, for a placeholder
    with nothing after it. The result is a Jinja template, as the harness reads doc_to_text."""
    import re

    doc_to_text = task_yaml_spec(task_yaml).get("doc_to_text")
    if not isinstance(doc_to_text, str):
        return task_yaml
    for name in PROMPT_FORMATS:
        placeholder = PLACEHOLDER.format(name=name.upper())
        if doc_to_text.startswith(placeholder):
            inner = doc_to_text[len(placeholder) :] or included_doc_to_text()
            line = "doc_to_text: " + json.dumps(format_prompt(name, inner))
            return re.sub(r"(?m)^doc_to_text:.*$", lambda _, line=line: line, task_yaml, count=1)
    return task_yaml
