"""Time the built-in tiny recipes from nothing: build the base, fine-tune it with GMT (SFT), then
run GMT DPO from that checkpoint.

    python scripts/time_tiny_recipe.py            # writes docs/tiny_recipe.{json,md} and docs/tiny.md's table

Runs the same commands the README gives, in a fresh directory, and records wall-clock seconds
and the logged losses. The section of docs/tiny.md between the tiny-timing markers is replaced
with the markdown table, so the numbers quoted there always come from this script.
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

from readme_section import replace_readme_section

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- tiny-timing:start -->", "<!-- tiny-timing:end -->"
DOC = REPO / "docs" / "tiny.md"


def timed(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{result.stderr[-3000:]}")
    return time.perf_counter() - started, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/tiny/sft_gmt.yaml")
    parser.add_argument("--dpo_recipe", default="recipes/tiny/dpo_gmt.yaml")
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as work:
        assets = Path(work) / "gmt-tiny"
        build_seconds, _ = timed([sys.executable, "-m", "gmt.tiny", "--out", str(assets)])
        build_record = json.loads((assets / "build.json").read_text())
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu"]
        sft_seconds, sft_stdout = timed(
            [*launch, "gmt/sft.py", "--config", args.recipe, "--model_name_or_path", str(assets / "base"),
             "--dataset_name", str(assets / "data/sft"), "--output_dir", str(Path(work) / "sft")]
        )  # fmt: skip
        dpo_seconds, dpo_stdout = timed(
            [*launch, "gmt/dpo.py", "--config", args.dpo_recipe, "--model_name_or_path", str(Path(work) / "sft"),
             "--dataset_name", str(assets / "data/dpo"), "--output_dir", str(Path(work) / "dpo")]
        )  # fmt: skip
    losses = [float(x) for x in re.findall(r"'loss': '([0-9.e+-]+)'", sft_stdout)]
    dpo_losses = [float(x) for x in re.findall(r"'loss': '([0-9.e+-]+)'", dpo_stdout)]
    dpo_margins = [float(x) for x in re.findall(r"'rewards/margins': '([0-9.e+-]+)'", dpo_stdout)]
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
        "dpo_seconds": round(dpo_seconds, 1),
        "total_seconds": round(build_seconds + sft_seconds + dpo_seconds, 1),
        "sft_loss_first_last": [losses[0], losses[-1]] if losses else None,
        "dpo_loss_first_last": [dpo_losses[0], dpo_losses[-1]] if dpo_losses else None,
        "dpo_reward_margin_first_last": [dpo_margins[0], dpo_margins[-1]] if dpo_margins else None,
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
            f"| `{args.dpo_recipe}` (from the SFT checkpoint) | {record['dpo_seconds'] / 60:.1f} min | "
            + (
                f"{dpo_losses[0]} → {dpo_losses[-1]} (reward margin {dpo_margins[0]} → {dpo_margins[-1]}) |"
                if dpo_losses and dpo_margins
                else "– |"
            ),
            f"| **total** | **{record['total_seconds'] / 60:.1f} min** | |",
            "",
            f"Measured by `python scripts/time_tiny_recipe.py` on {record['machine']}.",
        ]
    )
    (args.out / "tiny_recipe.md").write_text(table + "\n")
    replace_readme_section(START, END, table + "\n", DOC)
    print(table)


if __name__ == "__main__":
    main()
