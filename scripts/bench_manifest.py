"""What gmt's checkpoint manifest costs (an xxh3-128 hash of every file), against the save it marks.

    python scripts/bench_manifest.py          # SmolLM2-135M-Instruct (python -m gmt.smollm2 first)
    python scripts/bench_manifest.py --model .cache/gmt-tiny/base --no-docs

A checkpoint as the Trainer writes it (the model's safetensors, AdamW's state after one step, the
scheduler) is saved to a temporary folder, then marked complete (``write_manifest``: the hashes)
and verified (``checkpoint_problem``: what ``resume last`` reads), each ``--rounds`` times; the
figures are medians, and the ratios are to the save in the same round. The files are fresh in the
page cache, as they are right after a save; a resume from a cold disk reads them at disk speed.

Writes ``docs/benchmarks/manifest.json`` and the table between the ``manifest:start`` /
``manifest:end`` markers of ``docs/reliability.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from machine import describe_machine  # noqa: E402
from readme_section import write_benchmark  # noqa: E402

from gmt.checkpoints import checkpoint_problem, write_manifest  # noqa: E402

DEFAULT_MODEL = ".cache/smollm2/SmolLM2-135M-Instruct"  # python -m gmt.smollm2 writes it


def save_checkpoint(model, optimizer, scheduler, folder: Path) -> None:
    """The files of a Trainer checkpoint: model (safetensors), optimizer, scheduler."""
    model.save_pretrained(folder)
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    torch.save(scheduler.state_dict(), folder / "scheduler.pt")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "docs/benchmarks/manifest.json")
    parser.add_argument("--no-docs", action="store_true", help="print only; leave the JSON and docs alone")
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    for parameter in model.parameters():  # one step, so that AdamW holds its two moments
        parameter.grad = torch.randn_like(parameter) * 1e-3
    optimizer.step()
    seconds: dict[str, list[float]] = {"save": [], "manifest": [], "verify": []}
    size = 0
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = Path(folder) / "checkpoint-1"
            steps = {"save": lambda at: save_checkpoint(model, optimizer, scheduler, at),
                     "manifest": write_manifest, "verify": checkpoint_problem}  # fmt: skip
            for name, work in steps.items():
                started = time.perf_counter()
                work(checkpoint)
                seconds[name].append(time.perf_counter() - started)
            size = sum(path.stat().st_size for path in checkpoint.iterdir())
    median = {name: statistics.median(values) for name, values in seconds.items()}
    result = {
        "model": args.model,
        "checkpoint_bytes": size,
        "rounds": args.rounds,
        "median_seconds": median,
        "manifest_over_save": median["manifest"] / median["save"],
        "verify_over_save": median["verify"] / median["save"],
        "hash_gb_per_second": size / median["manifest"] / 1e9,
        "machine": describe_machine("cpu"),
        "command": " ".join(["python scripts/bench_manifest.py", *([] if args.model == DEFAULT_MODEL else
                                                                  ["--model", args.model])]),
    }
    table = (
        f"Checkpoint of `{Path(args.model).name}`: {size / 2**20:.0f} MiB (model, AdamW state, scheduler), "
        f"median of {args.rounds} rounds on {result['machine']}.\n\n"
        "| step | seconds | over the save |\n|---|---:|---:|\n"
        f"| save (safetensors + torch.save) | {median['save']:.2f} | 1 |\n"
        f"| manifest (hash every file) | {median['manifest']:.2f} | {result['manifest_over_save']:.2f} |\n"
        f"| verify (`resume last`) | {median['verify']:.2f} | {result['verify_over_save']:.2f} |\n\n"
        f"Hashing runs at {result['hash_gb_per_second']:.1f} GB/s here. Command: `{result['command']}`.\n"
    )
    if args.no_docs:
        print(table)
        return
    write_benchmark(args.out, result, table, "manifest", REPO / "docs/reliability.md")


if __name__ == "__main__":
    main()
