"""Random-init stand-ins for the real checkpoints the GPU recipes name: the real architecture class,
scaled down (hidden 128, 2 layers), and a small tokenizer trained here that has the real family's
tokenizer class, special tokens, BOS/EOS rules and chat template (none, for the base checkpoints).

What each stand-in copies from its checkpoint is written beside it in ``FAMILIES``; what it cannot
copy (the vocabulary, the weights) does not change how data is laid out, templated or masked.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

REPO = Path(__file__).resolve().parents[2]
TULU_TEMPLATE = REPO / "recipes" / "templates" / "tulu.jinja"

# Llama-2 and Mistral (SentencePiece BPE): <unk>, <s>, </s> first, then the 256 byte-fallback pieces.
SENTENCEPIECE_SPECIALS = ["<unk>", "<s>", "</s>"]
BYTE_PIECES = [f"<0x{value:02X}>" for value in range(256)]
# Llama-3 (tiktoken BPE): its pre-tokenizer split, and the special tokens after the regular vocabulary.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)
LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
]


# Qwen3 (byte-level BPE, no BOS): the ChatML and tool/thinking special tokens after the vocabulary.
QWEN3_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<tool_response>",
                  "</tool_response>", "<think>", "</think>"]  # fmt: skip


def sentencepiece_tokenizer(texts: list[str], vocab_size: int):
    """A Llama-2 / Mistral style tokenizer: transformers' ``LlamaTokenizer`` (metaspace pieces, byte
    fallback, BOS added, EOS not, no pad token), with merges trained on ``texts`` (to
    ``vocab_size // 2`` pieces, then the 256 byte pieces on top)."""
    from transformers import LlamaTokenizer

    trained = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    trained.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    trained.train_from_iterator(
        texts,
        trainers.BpeTrainer(vocab_size=vocab_size // 2, special_tokens=SENTENCEPIECE_SPECIALS, show_progress=False),
    )
    model = json.loads(trained.to_str())["model"]
    vocab = {token: index for index, token in enumerate(SENTENCEPIECE_SPECIALS + BYTE_PIECES)}
    for token, _ in sorted(model["vocab"].items(), key=lambda item: item[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(merge) if isinstance(merge, list) else tuple(merge.split(" ")) for merge in model["merges"]]
    return LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False, legacy=False)


def llama3_tokenizer(texts: list[str], vocab_size: int):
    """A Llama-3 style tokenizer: byte-level BPE behind the tiktoken split, ``<|begin_of_text|>``
    prepended by the post-processor, ``<|end_of_text|>`` as EOS (the base model's), no pad token."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        ),
    )
    tokenizer.add_special_tokens(LLAMA3_SPECIALS)  # after the regular vocabulary, as in Llama-3
    bos = "<|begin_of_text|>"
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=bos, eos_token="<|end_of_text|>")


def llama3_instruct_tokenizer(texts: list[str], vocab_size: int):
    """Meta-Llama-3-8B-Instruct's: the Llama-3 tokenizer with ``<|eot_id|>`` as EOS."""
    tokenizer = llama3_tokenizer(texts, vocab_size)
    tokenizer.eos_token = "<|eot_id|>"
    return tokenizer


def qwen3_tokenizer(texts: list[str], vocab_size: int):
    """A Qwen3 style tokenizer: transformers' ``Qwen2Tokenizer`` (byte-level BPE behind Qwen's split,
    no BOS), ``<|im_end|>`` as EOS and ``<|endoftext|>`` as pad (Qwen3-8B's, a chat checkpoint)."""
    from transformers import AddedToken, Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trained.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        ),
    )
    model = json.loads(trained.to_str())["model"]
    merges = [tuple(merge) if isinstance(merge, list) else tuple(merge.split(" ")) for merge in model["merges"]]
    vocab = dict(model["vocab"])
    for token in QWEN3_SPECIALS:  # after the regular vocabulary, <|endoftext|> first, as in Qwen3
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.add_tokens([AddedToken(token, special=True, normalized=False) for token in QWEN3_SPECIALS],
                         special_tokens=True)  # fmt: skip
    return tokenizer


def trl_stock_template(name: str) -> Callable[[], str]:
    """TRL's copy of a hub checkpoint's own chat template (``trl/chat_templates/<name>.jinja``),
    unmodified: the one TRL's ``get_training_chat_template`` recognises and patches."""

    def read() -> str:
        import trl

        return (Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja").read_text(encoding="utf-8")

    return read


@dataclass(frozen=True)
class Family:
    """How to build one checkpoint's stand-in."""

    description: str
    config: Callable[[object], object]  # tokenizer -> the transformers config
    tokenizer: Callable[[list[str], int], object]
    dtype: torch.dtype  # the dtype the real checkpoint is stored in
    chat_template: Path | Callable[[], str] | None = None  # a file, or what reads one


def _scaled(config_name: str, tokenizer, **family):
    """The family's transformers config at the stand-in's size: hidden 128, 2 layers, 4 heads, an
    untied head, the tokenizer's BOS/EOS and no pad token (none of the base checkpoints has one)."""
    import transformers

    return getattr(transformers, config_name)(
        vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=2, num_attention_heads=4, rms_norm_eps=1e-5,
        tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None, **family,
    )  # fmt: skip


def _llama2_config(tokenizer):  # Llama-2-7B: multi-head attention, rope theta 1e4, 4096 positions
    return _scaled("LlamaConfig", tokenizer, intermediate_size=344, num_key_value_heads=4,
                   max_position_embeddings=4096, rope_theta=10000.0)  # fmt: skip


def _llama3_config(tokenizer):  # Llama-3-8B: grouped-query attention (4:1), rope theta 5e5, 8192 positions
    return _scaled("LlamaConfig", tokenizer, intermediate_size=448, num_key_value_heads=1,
                   max_position_embeddings=8192, rope_theta=500000.0)  # fmt: skip


def _qwen3_config(tokenizer):  # Qwen3-8B: GQA (4:1), its own head_dim, rope theta 1e6, 40960 positions
    return _scaled("Qwen3Config", tokenizer, intermediate_size=448, num_key_value_heads=1, head_dim=32,
                   max_position_embeddings=40960, rope_theta=1000000.0)  # fmt: skip


def _mistral_config(tokenizer):  # Mistral-7B-v0.1: GQA (4:1), 4096-token sliding window, 32k positions
    return _scaled("MistralConfig", tokenizer, intermediate_size=448, num_key_value_heads=1,
                   max_position_embeddings=32768, sliding_window=4096, rope_theta=10000.0)  # fmt: skip


FAMILIES: dict[str, Family] = {
    "llama2": Family("Llama-2-7B base: LlamaTokenizer, <s> added, no chat template", _llama2_config,
                     sentencepiece_tokenizer, torch.float16),
    "llama2-tulu": Family("Llama-2-7B after the TULU SFT recipe: its tokenizer plus recipes/templates/tulu.jinja",
                          _llama2_config, sentencepiece_tokenizer, torch.bfloat16, TULU_TEMPLATE),
    "llama3": Family("Meta-Llama-3-8B base: tiktoken BPE, <|begin_of_text|> added, no chat template",
                     _llama3_config, llama3_tokenizer, torch.bfloat16),
    "mistral": Family("Mistral-7B-v0.1 base: LlamaTokenizer, <s> added, no chat template", _mistral_config,
                      sentencepiece_tokenizer, torch.bfloat16),
    "llama3-instruct": Family("Meta-Llama-3-8B-Instruct: the Llama-3 tokenizer, <|eot_id|> as EOS, its stock chat "
                              "template (no generation markers)", _llama3_config, llama3_instruct_tokenizer,
                              torch.bfloat16, trl_stock_template("llama3")),
    "qwen3": Family("Qwen3-8B: Qwen2Tokenizer, no BOS, <|im_end|> as EOS, its stock chat template (no generation "
                    "markers)", _qwen3_config, qwen3_tokenizer, torch.bfloat16, trl_stock_template("qwen3")),
}  # fmt: skip


def build_model(family: str, out_dir: Path, texts: list[str], vocab_size: int = 384, seed: int = 0) -> Path:
    """Save the stand-in of ``family`` (model, tokenizer, chat template) to ``out_dir`` as a HF checkpoint.

    The vocabulary is small on purpose: the input embedding stays near a tenth of the weights (a
    real 7B model's is about 2%), so the rows a batch never touches (zero gradient) do not fill the
    default 20% drop by themselves."""
    from transformers import AutoModelForCausalLM

    spec = FAMILIES[family]
    tokenizer = spec.tokenizer(texts, vocab_size)
    if isinstance(spec.chat_template, Path):
        tokenizer.chat_template = spec.chat_template.read_text()
    elif spec.chat_template is not None:
        tokenizer.chat_template = spec.chat_template()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(spec.config(tokenizer)).to(spec.dtype)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
