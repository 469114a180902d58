"""Build the tiny offline base: a BPE tokenizer with a chat template, a small Llama pretrained on
arithmetic on this CPU, and the word-problem SFT data, all saved as ordinary HF files.

    python -m gmt.tiny                 # build into .cache/gmt-tiny (skipped when up to date)
    python -m gmt.tiny --force         # rebuild
    python -m gmt.tiny --out DIR --pretrain_steps 20   # a fast, barely trained copy (tests)

Layout of DIR: ``base/`` (model + tokenizer, load with ``from_pretrained``), ``data/sft/``
(``train.jsonl``, ``test.jsonl`` with ``messages`` and ``answer``), ``data/dpo/`` (the same
problems as preference pairs: ``prompt``, ``chosen``, ``rejected``), ``data/equations/test.jsonl``
(bare equations to complete, ``prompt`` and ``answer``: what pretraining taught, for measuring
forgetting), ``data/sft_twostep/`` (a second SFT task like ``data/sft/``: two-step problems, the
reply shows both equations), ``build.json`` (the settings and layout version it was built with; a different one
triggers a rebuild).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from gmt.tiny.data import equation_probes, preference_records, pretraining_corpus, sft_records, two_step_problem

DEFAULT_DIR = Path(".cache/gmt-tiny")
# What the build writes, beside the settings: a cache of an older layout is rebuilt.
# 2: data/equations/; 3: data/sft_twostep/.
BUILD_VERSION = 3

# Chat format of the tiny model. {% generation %} marks what the assistant says, so TRL's
# assistant_only_loss can train on the replies only.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|assistant|>\n{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}\n"
    "{% else %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]


@dataclass(frozen=True)
class TinySettings:
    """Everything the build depends on; stored in build.json."""

    vocab_size: int = 512
    hidden_size: int = 128
    intermediate_size: int = 352
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 512
    pretrain_steps: int = 1200
    pretrain_batch_size: int = 32  # sequences of pretrain_seq_len tokens
    pretrain_seq_len: int = 64
    pretrain_lr: float = 3e-3
    sft_train_examples: int = 4000
    sft_test_examples: int = 200
    dpo_train_examples: int = 2000
    dpo_test_examples: int = 200
    seed: int = 0


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE that splits every digit on its own (as Llama does), with the chat template."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|bos|>", eos_token="<|end|>", pad_token="<|pad|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def pretrain(model: LlamaForCausalLM, token_ids: list[int], settings: TinySettings) -> list[float]:
    """Next-token pretraining on packed blocks of the corpus; returns the loss per step."""
    generator = torch.Generator().manual_seed(settings.seed)
    data = torch.tensor(token_ids, dtype=torch.long)
    block = settings.pretrain_seq_len
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.pretrain_lr, weight_decay=0.01)
    warmup = max(1, settings.pretrain_steps // 20)

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 10%
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, settings.pretrain_steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    losses = []
    model.train()
    progress = tqdm(range(settings.pretrain_steps), desc="pretraining tiny base", unit="step")
    for _ in progress:
        starts = torch.randint(0, len(data) - block - 1, (settings.pretrain_batch_size,), generator=generator)
        batch = torch.stack([data[s : s + block] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        progress.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses


def build(out_dir: Path, settings: TinySettings) -> dict:
    """Build tokenizer, base model and SFT data into ``out_dir``; returns the build record."""
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    corpus = pretraining_corpus(settings.pretrain_steps * settings.pretrain_batch_size * 4 + 1000, settings.seed)
    train = sft_records(settings.sft_train_examples, seed=settings.seed + 1)
    test = sft_records(settings.sft_test_examples, seed=settings.seed + 2)

    chat_texts = [m["content"] for r in train for m in r["messages"]]
    tokenizer = train_tokenizer(corpus[:20000] + chat_texts, settings.vocab_size)
    token_ids: list[int] = []
    for line in tokenizer(corpus, add_special_tokens=False)["input_ids"]:
        token_ids.extend(line + tokenizer("\n", add_special_tokens=False)["input_ids"])

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.num_hidden_layers,
        num_attention_heads=settings.num_attention_heads,
        num_key_value_heads=settings.num_key_value_heads,
        max_position_embeddings=settings.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    losses = pretrain(model, token_ids, settings)

    base_dir = out_dir / "base"
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    splits = {
        "sft": {"train": train, "test": test},
        "dpo": {
            "train": preference_records(settings.dpo_train_examples, seed=settings.seed + 3),
            "test": preference_records(settings.dpo_test_examples, seed=settings.seed + 4),
        },
        "equations": {"test": equation_probes(settings.sft_test_examples, seed=settings.seed + 5)},
        # The comparison's second task: two-step problems, the same chat format and scorer.
        "sft_twostep": {
            "train": sft_records(settings.sft_train_examples, seed=settings.seed + 6, problem_of=two_step_problem),
            "test": sft_records(settings.sft_test_examples, seed=settings.seed + 7, problem_of=two_step_problem),
        },
    }
    for task, task_splits in splits.items():
        data_dir = out_dir / "data" / task
        data_dir.mkdir(parents=True, exist_ok=True)
        for name, records in task_splits.items():
            with open(data_dir / f"{name}.jsonl", "w") as f:
                f.writelines(json.dumps(record) + "\n" for record in records)

    record = {
        "build_version": BUILD_VERSION,
        "settings": asdict(settings),
        "parameters": model.num_parameters(),
        "pretrain_loss_first": losses[0],
        "pretrain_loss_last": sum(losses[-20:]) / len(losses[-20:]),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out_dir / "build.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def ensure_tiny_assets(out_dir: Path = DEFAULT_DIR, settings: TinySettings | None = None, force: bool = False) -> Path:
    """Build the tiny assets unless ``out_dir`` already holds a build with the same settings."""
    settings = settings or TinySettings()
    stamp = out_dir / "build.json"
    if not force and stamp.exists():
        built = json.loads(stamp.read_text())
        if built.get("settings") == asdict(settings) and built.get("build_version") == BUILD_VERSION:
            return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    build(out_dir, settings)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR, help="where to build (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    defaults = TinySettings()
    for name in ("pretrain_steps", "sft_train_examples", "sft_test_examples", "dpo_train_examples", "seed"):
        parser.add_argument(f"--{name}", type=int, default=getattr(defaults, name))
    args = parser.parse_args(argv)
    settings = TinySettings(
        pretrain_steps=args.pretrain_steps,
        sft_train_examples=args.sft_train_examples,
        sft_test_examples=args.sft_test_examples,
        dpo_train_examples=args.dpo_train_examples,
        seed=args.seed,
    )
    out = ensure_tiny_assets(args.out, settings, force=args.force)
    print(json.dumps(json.loads((out / "build.json").read_text()), indent=2))


if __name__ == "__main__":
    main()
