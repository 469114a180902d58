"""The pictures a run leaves in its output_dir without being asked (``save_plots``, on by default):
``loss.png`` (training loss, and evaluation loss where there is one, over optimizer steps) and
``mask_heatmap.png`` (where the mask goes, over the logging steps).

The heatmap shows what varies under the run's scope: with ``global`` scope, each block's kept
fraction (one top-k over everything, so blocks differ); with ``layer`` scope each block keeps its
share by construction, so each tensor's kept fraction within its block; with ``tensor`` scope every
tensor keeps its share, so each tensor's threshold T (log10 |Γ|), which is what differs. Fixed-mask
strategies show each tensor's kept fraction. The numbers drawn come from ``loss_curves`` and
``heatmap``, which the tests read.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from gmt.masking.scopes import layer_groups

HISTORY_FILE = "gmt_mask_history.json"


def depth(layer: str) -> tuple:
    """Sort key putting layers in network order: embeddings, blocks by number, the rest, the head
    (trainer_state.json stores log keys sorted alphabetically, which puts lm_head first and
    layers.10 before layers.2)."""
    block = re.search(r"^(.*)\.(\d+)$", layer)
    if "embed" in layer:
        return (0, layer, 0)
    if block:
        return (1, block.group(1), int(block.group(2)))
    if "head" in layer or layer.endswith("output"):
        return (3, layer, 0)
    return (2, layer, 0)


def loss_curves(log_history: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """{"loss": (steps, values), "eval_loss": ...} from the Trainer's log history."""
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for key in ("loss", "eval_loss"):
        points = [(int(entry["step"]), float(entry[key])) for entry in log_history if key in entry and "step" in entry]
        if points:
            curves[key] = ([step for step, _ in points], [value for _, value in points])
    return curves


def heatmap(history: dict) -> tuple[str, list[str], list[int], list[list[float]]]:
    """What the mask heatmap draws: (what the colour is, row names, steps, value[row][step])."""
    scope = history.get("scope")
    steps = history["steps"]
    if scope == "tensor" and history["thresholds"] and any(row is not None for row in history["thresholds"]):
        names = history["groups"]
        values = [[math.log10(row[index]) if row is not None and row[index] > 0 else float("nan")
                   for row in history["thresholds"]] for index in range(len(names))]  # fmt: skip
        return "threshold T per tensor (log10 |Γ|)", names, steps, values
    names = history["tensors"]
    if scope == "global":  # each block's entries kept, over its entries
        block_of, blocks = layer_groups(names)
        values = []
        for block in range(len(blocks)):
            members = [index for index, owner in enumerate(block_of) if owner == block]
            entries = sum(history["numels"][index] for index in members)
            values.append([sum(row[index] * history["numels"][index] for index in members) / entries
                           for row in history["kept"]])  # fmt: skip
        order = sorted(range(len(blocks)), key=lambda index: depth(blocks[index]))
        return "kept fraction per block", [blocks[i] for i in order], steps, [values[i] for i in order]
    order = sorted(range(len(names)), key=lambda index: _tensor_order(names[index]))
    values = [[row[index] for row in history["kept"]] for index in order]
    return "kept fraction per tensor", [names[index] for index in order], steps, values


def _tensor_order(name: str) -> tuple:
    """Tensors in the model's order: by their block (``layers.2`` before ``layers.10``), then name."""
    block = re.match(r"^(.*?\.\d+)\.", name)
    return (depth(block.group(1) if block else name), name)


def write_run_plots(output_dir: str | Path, log_history: list[dict], history: dict | None) -> list[Path]:
    """Write ``loss.png`` and (for a masked run) ``mask_heatmap.png`` into ``output_dir``, and the
    per-tensor history beside them; returns the pictures written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(output_dir)
    written = []
    curves = loss_curves(log_history)
    if curves:
        figure, axis = plt.subplots(figsize=(6, 3.5))
        for key, (steps, values) in curves.items():
            axis.plot(steps, values, marker="." if len(steps) < 50 else None, label=key)
        axis.set_xlabel("optimizer step")
        axis.set_ylabel("loss")
        axis.set_title(f"loss: {out.name}")
        axis.legend()
        figure.tight_layout()
        figure.savefig(out / "loss.png", dpi=110)
        plt.close(figure)
        written.append(out / "loss.png")
    if history is not None and history["steps"] and history["strategy"] != "full":
        (out / HISTORY_FILE).write_text(json.dumps(history))
        what, rows, steps, values = heatmap(history)
        written.append(draw_heatmap(out / "mask_heatmap.png", f"{what}: {out.name}", what.split(" per ")[0], rows,
                                    steps, values))  # fmt: skip
    return written


def draw_heatmap(out: Path, title: str, label: str, rows: list[str], steps: list[int], values) -> Path:
    """Draw ``values[row][step]`` as a heatmap PNG at ``out`` (rows named, steps as columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(max(6, len(steps) * 0.15 + 3), max(3, len(rows) * 0.12 + 1.5)))
    image = axis.imshow(values, aspect="auto", interpolation="nearest", cmap="viridis")
    axis.set_yticks(range(len(rows)), rows, fontsize=5 if len(rows) > 40 else 8)
    ticks = list(range(0, len(steps), max(1, len(steps) // 10)))
    axis.set_xticks(ticks, [steps[i] for i in ticks])
    axis.set_xlabel("optimizer step")
    axis.set_title(title)
    figure.colorbar(image, ax=axis, label=label)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out
