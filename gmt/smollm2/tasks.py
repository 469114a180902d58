"""reasoning-gym tasks as data sets for SmolLM2: SFT rows, DPO pairs, validation and test rows, and a
next-word probe of the base's English for forgetting.

    python -m gmt.smollm2.tasks --task word_sequence_reversal   # into .cache/smollm2/data/word_sequence_reversal

A task's folder ``<task>/`` holds ``train.jsonl``, ``validation.jsonl`` and ``test.jsonl`` (the SFT
layout, the same columns in every split: ``load_dataset`` of the folder casts every split to one
schema) and ``<task>_dpo/`` the preference pairs, ``train.jsonl`` and ``test.jsonl``. Every split is drawn from the
task's generator with a seed of its own (TASK_SEEDS), and a validation or test row whose question is
also a training question is dropped. An SFT row is TRL's conversational prompt-completion layout,
so that TRL trains on the reply only (SmolLM2's ChatML template has no ``{% generation %}`` markers
for assistant_only_loss, nor a TRL patch that adds them):

    prompt      [{"role": "user", "content": question + ANSWER_INSTRUCTION}]
    completion  [{"role": "assistant", "content": the task's reasoning where it has one, then
                  "Final answer: <answer>"}]
    task, answer, entry   the task's name, its answer, and the generator's whole entry as JSON (the
                          verifier, ``score_answer(answer, entry)``, reads it when scoring)

A DPO pair has the same prompt, the correct reply as ``chosen`` and, as ``rejected``, the reply of
another question of the split whose answer the verifier scores wrong for this one.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import json
import random
import re
from pathlib import Path
from typing import Any

from gmt.data import write_jsonl

DEFAULT_DIR = Path(".cache/smollm2/data")
FINAL_ANSWER = "Final answer:"
ANSWER_INSTRUCTION = f"\nGive your final answer on the last line as: {FINAL_ANSWER} <answer>"
# One generator seed per split. reasoning-gym draws row i from seed + i, so the seeds lie far apart:
# seeds 1 and 2 would give the same rows, shifted by one.
TASK_SEEDS = {"train": 1, "validation": 1_000_001, "test": 2_000_001}
DEFAULT_ROWS = {"train": 640, "validation": 200, "test": 200}
# The English text of the next-word probe: the public-domain story reasoning-gym ships (pinned with
# reasoning-gym's version, so every machine writes the same probe).
PROBE_TEXT = "in_the_year_2889.txt"
PROBE_CONTEXT_WORDS = 48
PROBE_ROWS = 200
# Stored in each folder's build.json: an older layout is written again. 2: DPO pairs in <task>_dpo/.
GENERATOR_VERSION = 2


@functools.cache
def task_dataset(name: str):
    """The reasoning-gym data set object of task ``name`` (its ``score_answer`` is the verifier)."""
    import reasoning_gym

    if name not in reasoning_gym.factory.DATASETS:
        close = difflib.get_close_matches(name, reasoning_gym.factory.DATASETS, n=1)
        raise ValueError(f"--task {name!r}: reasoning-gym has no such task" + (f" (did you mean {close[0]!r}?)" if close
                         else f"; it has {sorted(reasoning_gym.factory.DATASETS)}"))  # fmt: skip
    return reasoning_gym.create_dataset(name, size=1, seed=0)


def entries(name: str, rows: int, seed: int) -> list[dict[str, Any]]:
    """``rows`` entries of task ``name`` from its generator at ``seed``, JSON-safe: tuples as lists, and
    values JSON has no type for (a Fraction in some tasks' metadata) as their text."""
    import reasoning_gym

    generated = reasoning_gym.create_dataset(name, size=rows, seed=seed)
    return [json.loads(json.dumps(entry, default=str)) for entry in generated]


def reply(entry: dict[str, Any]) -> str:
    """The assistant's reply: the task's reasoning where it has one, then the final-answer line."""
    reasoning = (entry.get("metadata") or {}).get("answer_cot") or ""
    return (reasoning.strip() + "\n" if reasoning else "") + f"{FINAL_ANSWER} {entry['answer']}"


def sft_row(name: str, entry: dict[str, Any]) -> dict[str, Any]:
    """One SFT row (module docstring)."""
    return {"prompt": [{"role": "user", "content": entry["question"] + ANSWER_INSTRUCTION}],
            "completion": [{"role": "assistant", "content": reply(entry)}],
            "task": name, "answer": str(entry["answer"]), "entry": json.dumps(entry)}  # fmt: skip


def verify(name: str, answer: str | None, entry: dict[str, Any]) -> float:
    """The task's own verifier on ``answer`` (None: no answer, 0)."""
    if answer is None:
        return 0.0
    return float(task_dataset(name).score_answer(answer, entry))


def final_answer(text: str) -> str | None:
    """What follows the last ``Final answer:`` of a reply, to the end of its line (None if absent)."""
    found = re.findall(re.escape(FINAL_ANSWER) + r"[ \t]*([^\n]*)", text)
    return found[-1].strip() if found else None


def majority_baseline(folder: Path) -> float:
    """The share of ``folder``'s test rows that a model always giving the training rows' most common
    answer would solve: the score a gain must clear (letter_counting's is over 40%: most counts are 1)."""
    from collections import Counter

    def answers(split: str) -> list[str]:
        return [json.loads(line)["answer"] for line in (folder / f"{split}.jsonl").open()]

    (most_common, _), = Counter(answers("train")).most_common(1)
    test = answers("test")
    return sum(answer == most_common for answer in test) / len(test)


def preference_pairs(name: str, split: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """A pair per entry whose verifier scores some other entry's answer wrong (module docstring)."""
    generator = random.Random(seed)
    pairs = []
    for index, entry in enumerate(split):
        others = [other for position, other in enumerate(split) if position != index]
        generator.shuffle(others)
        wrong = next((other for other in others[:50] if verify(name, str(other["answer"]), entry) < 1), None)
        if wrong is None:
            continue
        row = sft_row(name, entry)
        pairs.append({"prompt": row["prompt"], "chosen": row["completion"],
                      "rejected": [{"role": "assistant", "content": reply(wrong)}]})  # fmt: skip
    return pairs


def write_task(name: str, out: Path, rows: dict[str, int] | None = None) -> Path:
    """Write task ``name``'s SFT splits and DPO pairs into ``out`` (skipped when already written alike)."""
    task_dataset(name)  # an unknown task is refused by name before anything is written
    rows = {**DEFAULT_ROWS, **(rows or {})}
    record = {"version": GENERATOR_VERSION, "task": name, "rows": rows, "seeds": TASK_SEEDS}
    build = out / "build.json"
    if build.is_file() and json.loads(build.read_text()) == record:
        return out
    splits = {split: entries(name, count, TASK_SEEDS[split]) for split, count in rows.items()}
    seen = {entry["question"] for entry in splits["train"]}
    for split in ("validation", "test"):  # no question of training may be scored
        splits[split] = [entry for entry in splits[split] if entry["question"] not in seen]
        seen |= {entry["question"] for entry in splits[split]}
    for split, split_entries in splits.items():
        write_jsonl([sft_row(name, entry) for entry in split_entries], out / f"{split}.jsonl")
    pairs = out.with_name(out.name + "_dpo")  # beside, not inside: a data folder's files are all its splits
    write_jsonl(preference_pairs(name, splits["train"], TASK_SEEDS["train"]), pairs / "train.jsonl")
    write_jsonl(preference_pairs(name, splits["test"], TASK_SEEDS["test"]), pairs / "test.jsonl")
    build.write_text(json.dumps(record, indent=2))
    return out


def next_word_probe(out: Path, rows: int = PROBE_ROWS, seed: int = 0) -> Path:
    """``out/test.jsonl``: ``rows`` passages of PROBE_TEXT, each ``context`` (PROBE_CONTEXT_WORDS words)
    and the word that follows it as ``target`` (a word of 4+ letters, with its leading space). Scored
    as LAMBADA is: is the target the model's greedy continuation (eval/suites/next_word.yaml)."""
    from reasoning_gym.data import read_data_file

    text = read_data_file(PROBE_TEXT)
    story = text.split("*** START OF", 1)[-1].split("***", 1)[-1].split("*** END OF", 1)[0]  # no Gutenberg licence
    words = " ".join(story.split()).split(" ")
    candidates = [i for i in range(PROBE_CONTEXT_WORDS, len(words)) if re.fullmatch(r"[a-z]{4,}", words[i])]
    chosen = sorted(random.Random(seed).sample(candidates, rows))
    probe = [{"context": " ".join(words[i - PROBE_CONTEXT_WORDS:i]), "target": " " + words[i]} for i in chosen]
    write_jsonl(probe, out / "test.jsonl")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", action="append", required=True, help="a reasoning-gym task (repeatable)")
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR, help="each task goes to OUT/<task>")
    for split, count in DEFAULT_ROWS.items():
        parser.add_argument(f"--{split}_rows", type=int, default=count)
    args = parser.parse_args(argv)
    rows = {split: getattr(args, f"{split}_rows") for split in DEFAULT_ROWS}
    for name in args.task:
        folder = write_task(name, args.out / name, rows)
        print(f"{folder}: " + ", ".join(f"{sum(1 for _ in (folder / f'{s}.jsonl').open())} {s}" for s in rows))


if __name__ == "__main__":
    main()
