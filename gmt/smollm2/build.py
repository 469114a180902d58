"""Everything the SmolLM2 recipes read, built once into ``.cache/smollm2`` (each part skipped when done).

    python -m gmt.smollm2                       # the checkpoint, the recipes' task's data, the next-word probe
    python -m gmt.smollm2 --task gcd            # another reasoning-gym task's data as well
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gmt.smollm2.convert import DEFAULT_DIR as MODEL_DIR
from gmt.smollm2.convert import convert
from gmt.smollm2.tasks import DEFAULT_DIR as DATA_DIR
from gmt.smollm2.tasks import next_word_probe, write_task

# The recipes' task: the base solves none of its rows, no answer repeats (letter_counting, tried
# first, is 44% "1": always answering 1 scores what its SFT run scored), and a 135M SFT run learns
# it in minutes on a CPU (docs/smollm2.md has the measurements that chose it).
DEFAULT_TASKS = ("word_sequence_reversal",)


def ensure_smollm2_assets(model_dir: Path = MODEL_DIR, data_dir: Path = DATA_DIR,
                          tasks: tuple[str, ...] = DEFAULT_TASKS) -> tuple[Path, Path]:  # fmt: skip
    """The converted checkpoint's folder and the data folder, building what is missing."""
    model_dir, data_dir = Path(model_dir), Path(data_dir)
    convert(model_dir)
    for task in tasks:
        write_task(task, data_dir / task)
    if not (data_dir / "next_word" / "test.jsonl").is_file():
        next_word_probe(data_dir / "next_word")
    return model_dir, data_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", action="append", default=[], help="another reasoning-gym task (repeatable)")
    args = parser.parse_args(argv)
    model_dir, data_dir = ensure_smollm2_assets(tasks=(*DEFAULT_TASKS, *args.task))
    print(f"model: {model_dir}\ndata: {data_dir}")


if __name__ == "__main__":
    main()
