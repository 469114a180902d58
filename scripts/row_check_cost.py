"""What the raw-row check (gmt/rows.py) costs next to loading the data, on a 100k-row file.

    python scripts/row_check_cost.py     # writes docs/benchmarks/row_check.{json,md} and docs/data.md

The rows are chats like the tiny recipe's (a user question, an assistant reply, ~300 bytes). Each
figure is the best of ``--repeats`` runs; the ratios are taken within one run of this script.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DOC = REPO / "docs" / "data.md"


def write_rows(path: Path, rows: int, seed: int = 0) -> None:
    """``rows`` chat rows of ~300 bytes, one JSON object a line."""
    rng = random.Random(seed)
    with path.open("w") as file:
        for _ in range(rows):
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            question = f"There are {a} marbles in a box and {b} on the table. How many marbles are there in all?"
            reply = f"{a} + {b} = {a + b}. The answer is {a + b}."
            turns = [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
            file.write(json.dumps({"messages": turns, "answer": a + b}) + "\n")


def best_of(repeats: int, run) -> float:
    """The shortest of ``repeats`` timings of ``run()``, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


TOKENIZED_ROWS = 5_000


def tokenizing_seconds(rows) -> float:
    """Seconds TRL's SFT preparation spends per ``TOKENIZED_ROWS`` chats, at its core: one
    ``apply_chat_template`` with the assistant mask per row, as under ``assistant_only_loss``."""
    from transformers import AutoTokenizer

    from gmt.standins import model_standin

    tokenizer = AutoTokenizer.from_pretrained(model_standin("meta-llama/Meta-Llama-3-8B"))
    template = (REPO / "recipes" / "templates" / "tulu.jinja").read_text()
    chats = rows.select(range(TOKENIZED_ROWS))["messages"]
    start = time.perf_counter()
    for chat in chats:
        tokenizer.apply_chat_template(
            chat, chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
    return time.perf_counter() - start


def main() -> None:
    from datasets import load_dataset
    from readme_section import write_benchmark

    from gmt.data import SFT_DATA, check_dataset_rows, check_json_lines
    from gmt.rows import RowChecker

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "row_check.json")
    args = parser.parse_args()

    def checker() -> RowChecker:
        return RowChecker(SFT_DATA.purpose, SFT_DATA.columns_for(None), assistant_turn_needed=True)

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "train.jsonl"
        write_rows(path, args.rows)
        cache = Path(folder) / "cache"

        def load_fresh() -> None:  # what every run pays once: the json builder into an empty cache
            load_dataset("json", data_files=str(path), cache_dir=str(cache / str(time.perf_counter_ns())))

        loaded = load_dataset("json", data_files=str(path), cache_dir=str(cache / "kept"))["train"]
        seconds = {
            f"TRL's templating and tokenizing (Llama-3 stand-in, TULU template; {TOKENIZED_ROWS:,} rows, scaled)": (
                tokenizing_seconds(loaded) * args.rows / TOKENIZED_ROWS
            ),
            "load_dataset (json builder, empty cache)": best_of(args.repeats, load_fresh),
            "JSON and UTF-8 only (check_json_lines)": best_of(args.repeats, lambda: check_json_lines(path)),
            "the full row check, by file and line": best_of(args.repeats, lambda: check_json_lines(path, checker())),
            "the full row check of a loaded split, by row (hub, parquet)": best_of(
                args.repeats, lambda: check_dataset_rows(loaded, checker(), "train")
            ),
        }
        size = path.stat().st_size
    load = seconds["load_dataset (json builder, empty cache)"]
    ready = load + next(value for name, value in seconds.items() if name.startswith("TRL's"))
    lines = [
        "`python scripts/row_check_cost.py`",
        "",
        f"{args.rows:,} chat rows ({size / 2**20:.0f} MiB of JSON lines), best of {args.repeats}, on the main process:",
        "",
        "| pass | seconds | next to load_dataset | next to load_dataset + tokenizing |",
        "|---|---:|---:|---:|",
    ]
    for name, value in seconds.items():
        lines.append(f"| {name} | {value:.2f} | {value / load:.2f}x | {value / ready:.3f}x |")
    result = {"rows": args.rows, "bytes": size, "repeats": args.repeats, "seconds": seconds}
    write_benchmark(args.out, result, "\n".join(lines) + "\n", "row-check", DOC)


if __name__ == "__main__":
    main()
