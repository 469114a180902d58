"""Local stand-ins for the hub data sets the GPU recipes train on: a few dozen generated rows with
exactly the real data set's columns, types, nesting, file layout and split names, so that
``load_dataset(<folder>)`` returns what ``load_dataset(<hub name>)`` returns, only shorter.

The rows are arithmetic word problems and tiny coding tasks; their content is not the point, their
shape is. Each builder says which hub files it copies the layout of.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path

from gmt.data import write_jsonl

NAMES = ["Ana", "Ben", "Carla", "Dev", "Eva", "Farid", "Gita", "Hugo"]
ITEMS = ["apples", "books", "coins", "cards", "shells", "pencils"]


def arithmetic_problem(rng: random.Random) -> tuple[str, str, int]:
    """A word problem, its worked solution and the answer."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(2, 40), rng.randint(2, 40)
    question = f"{name} has {a} {item} and finds {b} more. How many {item} does {name} have now?"
    return question, f"{name} has {a} + {b} = {a + b} {item}.", a + b


def metamathqa_rows(count: int, rng: random.Random) -> list[dict]:
    """meta-math/MetaMathQA: ``type`` (the augmentation), ``query``, ``original_question``,
    ``response`` ending in "The answer is: N", all strings."""
    types = ["GSM_Rephrased", "GSM_AnsAug", "GSM_SV", "GSM_FOBAR", "MATH_AnsAug", "MATH_Rephrased"]
    rows = []
    for _ in range(count):
        question, solution, answer = arithmetic_problem(rng)
        rows.append(
            {"type": rng.choice(types), "query": question, "original_question": question,
             "response": f"{solution}\nThe answer is: {answer}"}
        )  # fmt: skip
    return rows


def magicoder_rows(count: int, rng: random.Random) -> list[dict]:
    """ise-uiuc/Magicoder-Evol-Instruct-110K: ``instruction`` and ``response`` (markdown with code)."""
    rows = []
    for _ in range(count):
        a = rng.randint(2, 9)
        name = rng.choice(["scale", "times", "multiply_by"]) + f"_{a}"
        rows.append(
            {
                "instruction": f"Write a Python function `{name}(x)` that returns x multiplied by {a}.",
                "response": f"Here is the function:\n\n```python\ndef {name}(x):\n    return x * {a}\n```\n\n"
                f"It multiplies its argument by {a}.",
            }
        )
    return rows


def tulu_rows(count: int, rng: random.Random) -> list[dict]:
    """allenai/tulu-v2-sft-mixture: ``dataset`` (the source), ``id``, ``messages`` (a list of
    ``{"role", "content"}``; some conversations open with a system turn, some have several rounds)."""
    sources = ["flan_v2", "cot", "oasst1", "sharegpt", "gpt4_alpaca", "code_alpaca", "lima", "wizardlm"]
    rows = []
    for index in range(count):
        source = rng.choice(sources)
        messages = []
        if index % 5 == 0:
            messages.append({"role": "system", "content": "You are a helpful assistant."})
        for _ in range(1 + index % 2):
            question, solution, answer = arithmetic_problem(rng)
            messages += [{"role": "user", "content": question},
                         {"role": "assistant", "content": f"{solution} So the answer is {answer}."}]  # fmt: skip
        rows.append({"dataset": source, "id": f"{source}_{index}", "messages": messages})
    return rows


def ultrafeedback_rows(count: int, rng: random.Random) -> list[dict]:
    """HuggingFaceH4/ultrafeedback_binarized: a string ``prompt``, its sha256 ``prompt_id``,
    ``chosen`` and ``rejected`` as full conversations that begin with that prompt as the user turn
    (``{"content", "role"}``), ``messages`` (the chosen conversation again) and float scores."""
    rows = []
    for _ in range(count):
        question, solution, answer = arithmetic_problem(rng)
        user = {"content": question, "role": "user"}
        chosen = [user, {"content": f"{solution} The answer is {answer}.", "role": "assistant"}]
        rejected = [user, {"content": f"The answer is {answer + rng.randint(1, 9)}.", "role": "assistant"}]
        rows.append(
            {"prompt": question, "prompt_id": hashlib.sha256(question.encode()).hexdigest(), "chosen": chosen,
             "rejected": rejected, "messages": chosen, "score_chosen": float(rng.randint(7, 10)),
             "score_rejected": float(rng.randint(1, 6))}
        )  # fmt: skip
    return rows


def _write_json_array(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1) + "\n")



def write_parquet(rows: list[dict], path: Path) -> None:
    from datasets import Dataset

    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_list(rows).to_parquet(str(path))


def _splits_card(splits: list[str]) -> str:
    """A dataset card whose ``configs`` map split names to files, as the hub repository's does."""
    lines = ["---", "configs:", "- config_name: default", "  data_files:"]
    for split in splits:
        lines += [f"  - split: {split}", f"    path: data/{split}-*"]
    return "\n".join(lines + ["---", "", "Stand-in rows in the layout of the hub data set (gmt.standins).", ""])


def build_metamathqa(out_dir: Path, rng: random.Random, rows: int) -> None:
    """One JSON array file at the root, as the hub repository's MetaMathQA-395K.json: split ``train``."""
    _write_json_array(metamathqa_rows(rows, rng), out_dir / "MetaMathQA-395K.json")


def build_magicoder(out_dir: Path, rng: random.Random, rows: int) -> None:
    """One JSON-lines file, as the hub repository's data-evol_instruct-decontaminated.jsonl: ``train``."""
    write_jsonl(magicoder_rows(rows, rng), out_dir / "data-evol_instruct-decontaminated.jsonl")


def build_tulu(out_dir: Path, rng: random.Random, rows: int) -> None:
    """Parquet shards under data/, as the hub repository's: split ``train``."""
    write_parquet(tulu_rows(rows, rng), out_dir / "data" / "train-00000-of-00001.parquet")


ULTRAFEEDBACK_SPLITS = ["train_prefs", "test_prefs", "train_sft", "test_sft", "train_gen", "test_gen"]


def build_ultrafeedback(out_dir: Path, rng: random.Random, rows: int) -> None:
    """Parquet per split under data/ with a card naming the six splits, as the hub repository's."""
    for split in ULTRAFEEDBACK_SPLITS:
        write_parquet(ultrafeedback_rows(rows if split.startswith("train") else rows // 4, rng),
                       out_dir / "data" / f"{split}-00000-of-00001.parquet")  # fmt: skip
    (out_dir / "README.md").write_text(_splits_card(ULTRAFEEDBACK_SPLITS))


# hub name -> the builder of its stand-in
LAYOUTS: dict[str, Callable[[Path, random.Random, int], None]] = {
    "meta-math/MetaMathQA": build_metamathqa,
    "ise-uiuc/Magicoder-Evol-Instruct-110K": build_magicoder,
    "allenai/tulu-v2-sft-mixture": build_tulu,
    "HuggingFaceH4/ultrafeedback_binarized": build_ultrafeedback,
}


def build_layout(hub_name: str, out_dir: Path, rows: int = 48, seed: int = 0) -> Path:
    """Write the stand-in of ``hub_name`` into ``out_dir``; load it with ``load_dataset(out_dir)``."""
    if hub_name not in LAYOUTS:
        raise ValueError(f"no stand-in for the data set {hub_name!r}; known: {sorted(LAYOUTS)}")
    LAYOUTS[hub_name](out_dir, random.Random(seed), rows)
    return out_dir


def sample_texts(seed: int = 0) -> list[str]:
    """Text in every layout's style, for training the stand-in tokenizers."""
    rng = random.Random(seed)
    texts = []
    for row in metamathqa_rows(64, rng) + magicoder_rows(32, rng):
        texts += [str(value) for value in row.values()]
    for row in tulu_rows(32, rng):
        texts += [message["content"] for message in row["messages"]]
    texts += ["<|system|>\n<|user|>\n<|assistant|>\n", "### Instruction:\n### Response:\n@@ Instruction\n@@ Response\n"]
    return texts
