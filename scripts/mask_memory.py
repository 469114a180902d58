"""The memory a mask step adds, per local gradient entry, for each strategy and mode, and what that
comes to per rank for Llama-3-8B on 8 ranks and Llama-3-70B on 64 (ZeRO-3: each rank holds 1/N).

Measured on CPU by recording every tensor the mask step allocates (a dispatch mode that follows
each new storage until its last tensor dies): the peak of the bytes live at once above what was
there before the first masked step, over it and the steps after it (a step's leftovers count in
the next one's peak), and the bytes still held after the last (state kept between steps). gmt and
random are measured again with one tensor holding half the entries: their transients scale with
the largest local tensor (under ZeRO-1/2 one rank may own a whole embedding). Each case
runs at two gradient sizes, so the cost splits into bytes per entry and a fixed part (the
search's chunk buffers). The search runs with the GPU's chunk size; the gradients are bf16
(ZeRO-3's default accumulation dtype, read in place) and fp32.

    python scripts/mask_memory.py     # writes gmt/mask_memory.json and docs/mask_memory.md
"""

from __future__ import annotations

import argparse
import json
import weakref
from pathlib import Path

import torch
from count_syncs import optimizer_for
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from gmt.masking import GradientMasker, LocalGradientAccess, ThresholdSearch, build_strategy
from gmt.masking.search import CUDA_CHUNK_ENTRIES

REPO = Path(__file__).resolve().parents[1]
CASES = {
    "gmt grad": dict(strategy="gmt", mask_ratio=0.8),
    "gmt update": dict(strategy="gmt", mask_ratio=0.8, gmt_mode="update"),
    "gmt tensor-scope grad": dict(strategy="gmt", mask_ratio=0.8, mask_scope="tensor"),
    "random": dict(strategy="random", mask_ratio=0.8),
    "magnitude": dict(strategy="magnitude", mask_ratio=0.8),
    "gps (selection pass: the sums)": dict(strategy="gps", gps_k=16, selection_steps=1),
    "grft (selection pass: the sums)": dict(strategy="grft", grft_k=16, selection_steps=1),
    "gspf (the selecting step)": dict(strategy="gspf", gspf_warmup_steps=2),
}
SIZES = (1 << 25, 1 << 26)  # local entries: both above the GPU chunk (2^24)
STEADY_STEPS = 2  # masked steps measured after the first
# The cases measured again with one tensor holding half the entries (bf16, as ZeRO reduces them).
LARGEST_TENSOR_CASES = ("gmt grad", "random")
LARGEST_ENTRIES = 128256 * 4096  # Llama-3-8B's embedding: the largest tensor a ZeRO-1/2 rank may own
RANKS = {"Llama-3-8B, 8 ranks": (8.03e9, 8), "Llama-3-70B, 64 ranks": (70.6e9, 64)}


class LiveBytes(TorchDispatchMode):
    """The bytes of the storages allocated inside the mode that are still referenced, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._storages: dict[int, list[int]] = {}  # data pointer -> [bytes, tensors alive]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        given = tree_flatten((args, kwargs))[0]
        inputs = {t.untyped_storage().data_ptr() for t in given if isinstance(t, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            pointer = tensor.untyped_storage().data_ptr()
            if pointer in inputs or pointer == 0:
                continue  # in place, or a view of what was there
            entry = self._storages.setdefault(pointer, [tensor.untyped_storage().nbytes(), 0])
            if entry[1] == 0:
                self.live += entry[0]
                self.peak = max(self.peak, self.live)
            entry[1] += 1
            weakref.finalize(tensor, self._release, pointer)
        return out

    def _release(self, pointer: int) -> None:
        entry = self._storages.get(pointer)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self._storages[pointer]


def measure(case: dict, entries: int, dtype: torch.dtype, layout: str = "equal") -> tuple[int, int]:
    """(peak extra bytes of a mask step, bytes still held after the last) over the first masked step
    and ``STEADY_STEPS`` more (a later step may hold what the first built: buffers, kept counts, the
    last thresholds), on ``entries`` gradient entries: 32 equal matrices (``equal``), or one matrix
    of half the entries beside 31 small ones (``one large``: transients that scale with the largest
    local tensor). gps and grft: from their selection pass on; gspf: from the step after its
    warm-up, which scores and selects, through the steps between choices."""
    torch.manual_seed(0)
    if layout == "equal":
        shapes = [(entries // (32 * 1024), 1024)] * 32
    else:
        shapes = [(entries // 2048, 1024)] + [(entries // (62 * 1024), 1024)] * 31
    params = [torch.nn.Parameter(torch.randn(shape, dtype=dtype) * 0.02) for shape in shapes]
    names = [f"model.layers.{i // 4}.w{i % 4}.weight" for i in range(32)]
    settings = dict(case)
    strategy = build_strategy(settings.pop("strategy"), **settings)
    if hasattr(strategy, "search"):
        strategy.search = ThresholdSearch(chunk_entries=CUDA_CHUNK_ENTRIES)
    kind = strategy.optimizer_kind
    optimizer = optimizer_for(strategy, params, lr=1e-4)
    masker = GradientMasker(strategy, LocalGradientAccess(list(zip(names, params))), total_steps=100)
    first = strategy.dense_phase_steps(0) if kind == "sparse" else 0
    tracker = LiveBytes()  # one for every measured step: what a step keeps counts in the next one's peak
    for step in range(first + 1 + STEADY_STEPS):
        for param in params:
            param.grad = torch.randn_like(param)
        if step < first:
            masker.apply(step, optimizer)
            continue
        with tracker:
            masker.apply(step, optimizer)
    return tracker.peak, tracker.live


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # The figures travel with the package (gmt check reads them); the table goes to the docs.
    parser.add_argument("--out", type=Path, default=REPO / "gmt" / "mask_memory.json")
    parser.add_argument("--table", type=Path, default=REPO / "docs" / "mask_memory.md")
    args = parser.parse_args()
    records = []
    runs = [(name, dtype, "equal") for name in CASES for dtype in (torch.bfloat16, torch.float32)]
    runs += [(name, torch.bfloat16, "one large") for name in LARGEST_TENSOR_CASES]
    for name, dtype, layout in runs:
        (small_peak, small_held), (large_peak, large_held) = (measure(CASES[name], n, dtype, layout) for n in SIZES)
        per_entry = (large_peak - small_peak) / (SIZES[1] - SIZES[0])
        held_per_entry = (large_held - small_held) / (SIZES[1] - SIZES[0])
        fixed = small_peak - per_entry * SIZES[0]
        records.append({"case": name if layout == "equal" else f"{name}, one tensor of half the entries",
                        "dtype": str(dtype).removeprefix("torch."), "peak_per_entry": per_entry,
                        "peak_fixed_bytes": fixed, "held_per_entry": held_per_entry})  # fmt: skip
        print(records[-1], flush=True)
    header = " | ".join(f"{label} (GiB/rank)" for label in RANKS)
    lines = [
        "`python scripts/mask_memory.py`",
        "",
        f"Extra memory of the mask step on a rank's gradient partition, the peak over its first masked step and "
        f"{STEADY_STEPS} more (what a step keeps for the next counts; the fixed part is the search's chunk buffers "
        "at the GPU's chunk size), and per rank for ZeRO-3 "
        "(each rank masks 1/N of the entries). Under DeepSpeed, update mode and the fixed masks also "
        "hand the optimizer one boolean per entry of its flat partitions (+1 B/entry, not counted here).",
        "",
        f"| case | gradient dtype | peak, bytes/entry | fixed, MiB | held after, bytes/entry | {header} |",
        "|---|---|---:|---:|---:|" + "---:|" * len(RANKS),
    ]
    for record in records:
        per_rank = " | ".join(
            f"{(record['peak_per_entry'] * params / ranks + max(record['peak_fixed_bytes'], 0)) / 2**30:.2f}"
            for params, ranks in RANKS.values()
        )
        fixed_mib = max(record["peak_fixed_bytes"], 0) / 2**20
        lines.append(f"| {record['case']} | {record['dtype']} | {record['peak_per_entry']:.2f} | {fixed_mib:.0f} | "
                     f"{record['held_per_entry']:.2f} | {per_rank} |")  # fmt: skip
    # Under ZeRO-1/2 a rank may own a whole tensor: the worst case is the largest tensor's transients.
    lines += ["", "Where one rank owns a whole large tensor (ZeRO-1/2 partitions the flat buffer, so a rank can hold "
              "all of an embedding), the one-tensor rows give the cost per entry of that tensor (it holds half the "
              "entries: at most twice the row's figure, which also holds the other tensors' cost), here for "
              f"Llama-3-8B's embedding ({LARGEST_ENTRIES / 1e6:.0f}M entries) on one rank:", "",
              "| case | bytes per entry of the largest tensor | that embedding on one rank (GiB) |",
              "|---|---:|---:|"]  # fmt: skip
    for record in records:
        if "one tensor" in record["case"]:
            per_largest = 2 * record["peak_per_entry"]
            lines.append(f"| {record['case'].split(',')[0]} | {per_largest:.2f} | "
                         f"{(per_largest * LARGEST_ENTRIES + max(record['peak_fixed_bytes'], 0)) / 2**30:.2f} |")
    table = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"sizes": SIZES, "ranks": RANKS, "records": records}, indent=2) + "\n")
    args.table.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
