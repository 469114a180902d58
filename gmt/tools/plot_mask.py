"""Where the mask goes: a heatmap of the kept fraction per layer (rows) over training steps (columns).

    gmt plot outputs/tiny/sft_gmt                 # writes <run>/mask_heatmap.png
    gmt plot outputs/tiny/sft_gmt --out mask.png

Reads the Trainer's log history (``trainer_state.json`` in the run folder, as gmt/sft.py and
gmt/dpo.py write it, or in its newest ``checkpoint-*``) and its ``mask/kept_fraction/<layer>``
entries, one column per logging step. Needs matplotlib (the ``plots`` extra).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gmt.plots import depth, draw_heatmap

PREFIX = "mask/kept_fraction/"


def log_history(run_dir: Path) -> list[dict]:
    """The Trainer's log history of a run folder (or of its newest checkpoint)."""
    candidates = [run_dir / "trainer_state.json"]
    checkpoints = sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    candidates += [c / "trainer_state.json" for c in reversed(checkpoints)]
    for path in candidates:
        if path.is_file():
            return json.loads(path.read_text())["log_history"]
    raise FileNotFoundError(f"no trainer_state.json in {run_dir} or its checkpoints")


def kept_matrix(history: list[dict]) -> tuple[list[str], list[int], list[list[float]]]:
    """Layers (in the model's order), logged steps, and kept fraction [layer][step]."""
    entries = [entry for entry in history if any(key.startswith(PREFIX) for key in entry)]
    if not entries:
        raise ValueError("the log history has no mask/kept_fraction/<layer> entries (was a mask strategy on?)")
    layers = sorted({key[len(PREFIX) :] for entry in entries for key in entry if key.startswith(PREFIX)}, key=depth)
    steps = [int(entry.get("step", index)) for index, entry in enumerate(entries)]
    matrix = [[float(entry.get(PREFIX + layer, float("nan"))) for entry in entries] for layer in layers]
    return layers, steps, matrix


def plot(run_dir: Path, out: Path) -> Path:
    """Draw ``run_dir``'s per-block heatmap from its logs into ``out``."""
    layers, steps, matrix = kept_matrix(log_history(run_dir))
    return draw_heatmap(out, f"kept fraction per layer: {run_dir.name}", "kept fraction", layers, steps, matrix)


def main(argv: list[str] | None = None) -> None:
    """``gmt plot RUN_DIR [--out PNG]``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="default: <run_dir>/mask_heatmap.png")
    args = parser.parse_args(argv)
    print(plot(args.run_dir, args.out or args.run_dir / "mask_heatmap.png"))


if __name__ == "__main__":
    main()
