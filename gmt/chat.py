"""Checks, before any model loads, that the tokenizer can render conversational data the way the
settings ask: a chat template exists (the tokenizer's or ``chat_template_path``'s), and
``assistant_only_loss`` has ``{% generation %}`` markers to find the assistant's tokens by."""

from __future__ import annotations

import os
from pathlib import Path


def is_conversational_data(dataset) -> bool:
    """Whether the rows are chats (``messages``, or prompt/completion/chosen as message lists)."""
    from trl.data_utils import is_conversational

    return is_conversational(next(iter(dataset)))


def template_source(chat_template_path: str | None) -> str | None:
    """The template text of a ``chat_template_path`` that names a Jinja file (None for none, or for a
    tokenizer to copy the template from, which TRL clones); a missing Jinja file is refused."""
    if chat_template_path is None:
        return None
    if chat_template_path.endswith((".jinja", ".j2")):
        if not os.path.isfile(chat_template_path):
            raise ValueError(
                f"chat_template_path {chat_template_path!r}: no such file (a relative path is taken from the "
                f"directory you launch in, {os.getcwd()})"
            )
        return Path(chat_template_path).read_text()
    return None


def check_chat_template(dataset, training_args, model_args, purpose: str) -> None:
    """Refuse conversational ``dataset`` rows the model's tokenizer cannot template, and an
    ``assistant_only_loss`` TRL cannot honour, naming the setting to change."""
    if not is_conversational_data(dataset):
        return
    chat_template_path = getattr(training_args, "chat_template_path", None)
    template = template_source(chat_template_path)
    if template is None and chat_template_path is not None:
        return  # a tokenizer to clone the template from: TRL loads and checks it
    if template is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(
            model_args.model_name_or_path,
            revision=model_args.model_revision,
            trust_remote_code=training_args.trust_remote_code,
        )
        template = tokenizer.chat_template
        if isinstance(template, dict):
            template = template.get("default")
        if not template:
            raise ValueError(
                f"the {purpose} data set is conversational, but the tokenizer of model_name_or_path "
                f"{model_args.model_name_or_path!r} has no chat template (base checkpoints ship none): set "
                "chat_template_path to a Jinja template (recipes/templates/tulu.jinja is TULU v2's format), or use "
                "prompt/completion text columns"
            )
    if getattr(training_args, "assistant_only_loss", False):
        from trl.chat_template_utils import has_generation_markers

        if not has_generation_markers(template):
            raise ValueError(
                "assistant_only_loss true needs a chat template that marks the assistant's turns with "
                "{% generation %} ... {% endgeneration %}; this one has none. Set chat_template_path to a template "
                "with the markers (recipes/templates/tulu.jinja has them), or assistant_only_loss false"
            )
