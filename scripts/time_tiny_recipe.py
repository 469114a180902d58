"""Time the built-in tiny recipe from nothing: build the base, then fine-tune it with GMT.

    python scripts/time_tiny_recipe.py            # writes docs/tiny_recipe.{json,md}, updates README

Runs the same commands the README gives, in a fresh directory, and records wall-clock seconds
and the logged losses. The README section between the tiny-timing markers is replaced with the
markdown table, so the numbers quoted there always come from this script.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- tiny-timing:start -->", "<!-- tiny-timing:end -->"


def timed(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{result.stderr[-3000:]}")
    return time.perf_counter() - started, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/tiny/sft_gmt.yaml")
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as work:
        assets = Path(work) / "gmt-tiny"
        build_seconds, _ = timed([sys.executable, "-m", "gmt.tiny", "--out", str(assets)])
        build_record = json.loads((assets / "build.json").read_text())
        sft_seconds, sft_stdout = timed(
            [
                sys.executable,
                "-m",
                "accelerate.commands.launch",
                "--num_processes",
                "1",
                "--cpu",
                "gmt/sft.py",
                "--config",
                args.recipe,
                "--model_name_or_path",
                str(assets / "base"),
                "--dataset_name",
                str(assets / "data/sft"),
                "--output_dir",
                str(Path(work) / "sft"),
            ]
        )
    losses = [float(x) for x in re.findall(r"'loss': '([0-9.e+-]+)'", sft_stdout)]
    record = {
        "recipe": args.recipe,
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores, {platform.python_version()}",
        "base_parameters": build_record["parameters"],
        "pretrain_steps": build_record["settings"]["pretrain_steps"],
        "pretrain_loss_first_last": [
            round(build_record["pretrain_loss_first"], 3),
            round(build_record["pretrain_loss_last"], 3),
        ],
        "build_seconds": round(build_seconds, 1),
        "sft_seconds": round(sft_seconds, 1),
        "total_seconds": round(build_seconds + sft_seconds, 1),
        "sft_loss_first_last": [losses[0], losses[-1]] if losses else None,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tiny_recipe.json").write_text(json.dumps(record, indent=2) + "\n")
    table = "\n".join(
        [
            "| step | wall time | loss (first → last logged) |",
            "|---|---|---|",
            f"| build tokenizer + pretrain {record['base_parameters'] / 1e6:.2f}M-parameter base "
            f"({record['pretrain_steps']} steps) | {record['build_seconds'] / 60:.1f} min | "
            f"{record['pretrain_loss_first_last'][0]} → {record['pretrain_loss_first_last'][1]} |",
            f"| `{args.recipe}` | {record['sft_seconds'] / 60:.1f} min | "
            + (f"{losses[0]} → {losses[-1]} |" if losses else "– |"),
            f"| **total** | **{record['total_seconds'] / 60:.1f} min** | |",
            "",
            f"Measured by `python scripts/time_tiny_recipe.py` on {record['machine']}.",
        ]
    )
    (args.out / "tiny_recipe.md").write_text(table + "\n")
    readme = REPO / "README.md"
    text = readme.read_text()
    if START in text and END in text:
        head, rest = text.split(START, 1)
        readme.write_text(head + START + "\n" + table + "\n" + END + rest.split(END, 1)[1])
    print(table)


if __name__ == "__main__":
    main()
