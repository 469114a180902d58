"""Checks, before any model loads, that the tokenizer can render conversational data the way the
settings ask: a chat template exists (the tokenizer's or ``chat_template_path``'s),
``assistant_only_loss`` has ``{% generation %}`` markers to find the assistant's tokens by (the
template's own, or those TRL patches into a stock template), and every role in the data is one the
template renders."""

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


def check_chat_template(dataset, training_args, model_args, purpose: str, roles: dict | None = None) -> None:
    """Refuse conversational ``dataset`` rows the model's tokenizer cannot template, an
    ``assistant_only_loss`` TRL cannot honour, and a role the template drops (``roles``: the first
    row of each role, from gmt.rows), naming the setting or the row to change."""
    if not is_conversational_data(dataset):
        return
    chat_template_path = getattr(training_args, "chat_template_path", None)
    template = template_source(chat_template_path)
    tokenizer = None
    if template is None and chat_template_path is not None:
        if not roles:
            return  # a tokenizer to clone the template from: TRL loads and checks it
        tokenizer = load_tokenizer(chat_template_path, model_args, training_args)
        template = tokenizer.chat_template
    if template is None:
        tokenizer = load_tokenizer(model_args.model_name_or_path, model_args, training_args)
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
        if tokenizer is None:
            tokenizer = load_tokenizer(model_args.model_name_or_path, model_args, training_args)
        template = training_template(template, tokenizer)
    if roles:
        if tokenizer is None:
            tokenizer = load_tokenizer(model_args.model_name_or_path, model_args, training_args)
        check_roles_render(template, tokenizer, roles)


def training_template(template: str, tokenizer) -> str:
    """The template ``assistant_only_loss`` trains with: ``template`` if it has ``{% generation %}``
    markers, else TRL's patched copy of it (TRL's SFTTrainer patches the stock templates in
    ``trl/chat_templates/``: Qwen3, Llama-3, Gemma, Phi-3, DeepSeek, ...). One TRL cannot patch is
    refused, naming the setting."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if has_generation_markers(template):
        return template
    original, tokenizer.chat_template = tokenizer.chat_template, template
    try:
        patched = get_training_chat_template(tokenizer)
    except ValueError:
        raise ValueError(
            "assistant_only_loss true needs a chat template that marks the assistant's turns with "
            "{% generation %} ... {% endgeneration %}. This one has none, and it is not one of the stock templates "
            "TRL patches (trl/chat_templates: Qwen3, Llama-3, Gemma, Phi-3, DeepSeek and more). Set "
            "chat_template_path to a template with the markers (recipes/templates/tulu.jinja has them), or "
            "assistant_only_loss false"
        ) from None
    finally:
        tokenizer.chat_template = original
    return patched or template


def load_tokenizer(name: str, model_args, training_args):
    """The tokenizer of ``name`` (a hub id or a local path), loaded as TRL loads it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        name, revision=model_args.model_revision, trust_remote_code=training_args.trust_remote_code
    )


# Put in place of a turn's text to see whether the template renders that turn at all.
_PROBE = "gmt-role-probe-5d1c"


def check_roles_render(template: str, tokenizer, roles: dict) -> None:
    """Render, for each role, the first row it appears in, with that turn's text replaced by a
    probe: a template that raises on the row, or renders the row without the probe (it drops the
    role: TULU's and Llama-2's drop ShareGPT's 'human'/'gpt'), is refused, naming the row."""
    rendered_roles = []
    for role, example in roles.items():
        conversation = [dict(turn) for turn in example.conversation]
        conversation[example.turn]["content"] = _PROBE
        try:
            text = tokenizer.apply_chat_template(conversation, chat_template=template, tokenize=False)
        except Exception as error:  # the template's own raise_exception, or a Jinja error
            raise ValueError(
                f"{example.place}: the chat template fails on this row ({type(error).__name__}: {error})"
            ) from None
        if _PROBE not in text:
            raise ValueError(
                f"{example.place}: the chat template does not render role {role!r} (the turn's text is left out); "
                f"the roles of the data it renders: {rendered_roles or 'none checked before this one'}. Rename "
                "the roles (ShareGPT's 'human' and 'gpt' are 'user' and 'assistant'), or set chat_template_path "
                "to a template that knows them"
            )
        rendered_roles.append(role)
