"""The memory a mask step adds, per local gradient entry, for each strategy and mode, and what that
comes to per rank for Llama-3-8B on 8 ranks and Llama-3-70B on 64 (ZeRO-3: each rank holds 1/N).

Measured on CPU by recording every tensor the mask step allocates (a dispatch mode that follows
each new storage until its last tensor dies, and the optimizer's state tensors it frees): the peak
of the bytes live at once above what was there before the first masked step, over it and the
steps after it (a step's leftovers count in the next one's peak; the optimizer steps between them,
unmeasured), and the bytes still held after the last (state kept between steps). Each case runs
on two engines: plain tensors (one process, DDP, FSDP2: the optimizer steps the gradients' own
tensors) and a one-process DeepSpeed ZeRO-3 engine (gloo), whose optimizer steps flat partitions,
so update mode and the fixed masks build one boolean per entry of them. gmt and random are
measured again with one tensor holding half the entries: their transients scale with the largest
local tensor (under ZeRO-1/2 one rank may own a whole embedding). Each case runs at two gradient
sizes, so the cost splits into bytes per entry and a fixed part (the search's chunk buffers). The
search runs with the GPU's chunk size; the gradients are bf16 (ZeRO-3's default accumulation
dtype, read in place) and fp32.

    python scripts/mask_memory.py     # writes gmt/mask_memory.json and docs/mask_memory.md
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import weakref
from pathlib import Path

import torch
from count_syncs import optimizer_for
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from gmt.check import MASK_MEMORY_ENGINES, mask_memory_case
from gmt.masking import GradientMasker, LocalGradientAccess, MaskedStep, ThresholdSearch, build_strategy, selection
from gmt.masking.search import CUDA_CHUNK_ENTRIES

REPO = Path(__file__).resolve().parents[1]
# The strategies' settings; each is named by gmt.check.mask_memory_case, as gmt check looks it up.
CASES = [
    dict(strategy="gmt", mask_ratio=0.8),
    dict(strategy="gmt", mask_ratio=0.8, gmt_mode="update"),
    dict(strategy="gmt", mask_ratio=0.8, mask_scope="tensor"),
    dict(strategy="random", mask_ratio=0.8),
    dict(strategy="magnitude", mask_ratio=0.8),
    dict(strategy="gps", gps_k=16, selection_steps=1),
    dict(strategy="grft", grft_k=16, selection_steps=1),
    # the choice after a 2-step warm-up, then the steps after it (the sparse moments replace the dense ones)
    dict(strategy="gspf", gspf_warmup_steps=2, gspf_keep_ratio=0.05),
    # ... and reselecting every 2 steps: scores and the next choice's sums are held between choices
    dict(strategy="gspf", gspf_warmup_steps=2, gspf_keep_ratio=0.05, gspf_reselect_every=2),
]
SIZES = (1 << 25, 1 << 26)  # local entries: both above the GPU chunk (2^24)
# gps's sharded row search (DeepSpeed) works on chunks of 2^27 full entries, 2^24 per rank on 8 ranks:
# measured at 2^24 here, so that its keys count in the fixed part, as they do per rank, and not per entry.
selection.ROW_SEARCH_CHUNK = CUDA_CHUNK_ENTRIES
STEADY_STEPS = 2  # masked steps measured after the first
# The cases measured again with one tensor holding half the entries (bf16, as ZeRO reduces them).
LARGEST_TENSOR_CASES = ("gmt grad", "random")
LARGEST_ENTRIES = 128256 * 4096  # Llama-3-8B's embedding: the largest tensor a ZeRO-1/2 rank may own
RANKS = {"Llama-3-8B, 8 ranks": (8.03e9, 8), "Llama-3-70B, 64 ranks": (70.6e9, 64)}


class LiveBytes(TorchDispatchMode):
    """The bytes of the storages allocated inside the mode that are still referenced, and their peak,
    less the adopted storages (there before) that died meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._storages: dict[int, list[int]] = {}  # data pointer -> [bytes, tensors alive]

    def adopt(self, tensors) -> None:
        """Follow tensors allocated before (the optimizer's state): their release counts as memory
        given back, as when a fixed mask's sparse moments replace the dense ones."""
        for tensor in tensors:
            pointer = tensor.untyped_storage().data_ptr()
            if pointer == 0 or pointer in self._storages:
                continue
            self._storages[pointer] = [tensor.untyped_storage().nbytes(), 1]
            weakref.finalize(tensor, self._release, pointer)

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
            entry = self._storages.get(pointer)
            if entry is None:
                entry = self._storages[pointer] = [tensor.untyped_storage().nbytes(), 0]
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


def optimizer_state(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The tensors of the optimizer's per-parameter state."""
    return [value for state in optimizer.state.values() for value in state.values() if isinstance(value, torch.Tensor)]


def shapes_of(entries: int, layout: str) -> list[tuple[int, int]]:
    """32 equal matrices (``equal``), or one of half the entries beside 31 small ones (``one large``)."""
    if layout == "equal":
        return [(entries // (32 * 1024), 1024)] * 32
    return [(entries // 2048, 1024)] + [(entries // (62 * 1024), 1024)] * 31


def built_strategy(case: dict):
    """The strategy of ``case``, its search at the GPU's chunk size."""
    settings = dict(case)
    strategy = build_strategy(settings.pop("strategy"), **settings)
    if hasattr(strategy, "search"):
        strategy.search = ThresholdSearch(chunk_entries=CUDA_CHUNK_ENTRIES)
    return strategy


def name_of(index: int) -> str:
    return f"model.layers.{index // 4}.w{index % 4}.weight"


def measured_steps(strategy) -> range:
    """The steps measured: the first masked one and ``STEADY_STEPS`` more (gps and grft: from their
    selection pass on; gspf: from the choice after its warm-up)."""
    first = strategy.dense_phase_steps(0) if strategy.optimizer_kind == "sparse" else 0
    return range(first, first + 1 + STEADY_STEPS)


def measure(case: dict, entries: int, dtype: torch.dtype, layout: str = "equal") -> tuple[int, int]:
    """(peak extra bytes of a mask step, bytes still held after the last) on ``entries`` gradient
    entries in ``layout``, the optimizer stepping plain tensors."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape, dtype=dtype) * 0.02) for shape in shapes_of(entries, layout)]
    strategy = built_strategy(case)
    optimizer = optimizer_for(strategy, params, lr=1e-4)
    masker = GradientMasker(strategy, LocalGradientAccess([(name_of(i), p) for i, p in enumerate(params)]),
                            total_steps=100)  # fmt: skip
    steps = measured_steps(strategy)
    tracker = LiveBytes()  # one for every measured step: what a step keeps counts in the next one's peak
    for step in range(steps.stop):
        for param in params:
            param.grad = torch.randn_like(param)
        if step in steps:
            tracker.adopt(optimizer_state(optimizer))
            with tracker:
                masker.apply(step, optimizer)
        else:
            masker.apply(step, optimizer)
        optimizer.step()
    return tracker.peak, tracker.live


class Blocks(torch.nn.Module):
    """Matrices whose loss is their sum weighted by fresh normals: each step a new random gradient."""

    def __init__(self, shapes: list[tuple[int, int]], dtype: torch.dtype) -> None:
        super().__init__()
        self.weights = torch.nn.ParameterList(torch.nn.Parameter(torch.randn(s, dtype=dtype) * 0.02) for s in shapes)

    def forward(self, step: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(step)
        return sum((w * torch.randn(w.shape, generator=generator, dtype=w.dtype)).sum() for w in self.weights)


def init_process_group() -> None:
    """A world-size-1 gloo group for the DeepSpeed engine."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1"})  # fmt: skip
    store = Path(tempfile.mkdtemp(prefix="gmt-mask-memory-")) / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)


def measure_deepspeed(case: dict, entries: int, dtype: torch.dtype) -> tuple[int, int]:
    """As ``measure``, under a one-process DeepSpeed ZeRO-3 engine through gmt's step hook (bf16:
    the engine's bf16 mode, whose gradient partitions are bf16)."""
    import deepspeed

    from gmt.masking.engines import DeepSpeedZero3Access
    from gmt.masking.prepare import unwrap_optimizer

    init_process_group()
    torch.manual_seed(0)
    model = Blocks(shapes_of(entries, "equal"), torch.float32)
    strategy = built_strategy(case)
    optimizer = optimizer_for(strategy, model.parameters(), lr=1e-4)
    config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": 3}, "bf16": {"enabled": dtype == torch.bfloat16},
              "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False}  # fmt: skip
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    access = DeepSpeedZero3Access(engine.optimizer, [(name_of(i), p) for i, p in enumerate(engine.module.weights)])
    masker = GradientMasker(strategy, access, total_steps=100)
    base_optimizer = unwrap_optimizer(engine.optimizer)
    masked_step = MaskedStep(masker, base_optimizer, 0, engine_hooked=True, engine_skips=True)
    steps, tracker, current = measured_steps(strategy), LiveBytes(), [0]

    def mask() -> bool:
        if current[0] not in steps:
            return masked_step.mask(current[0])
        tracker.adopt(optimizer_state(base_optimizer))
        with tracker:
            return masked_step.mask(current[0])

    if not access.install_step_hook(mask):
        raise RuntimeError("gmt's step hook did not install on this DeepSpeed version")
    for step in range(steps.stop):
        current[0] = step
        engine.backward(engine(step))
        engine.step()
    peak, held = tracker.peak, tracker.live
    engine.destroy()
    return peak, held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # The figures travel with the package (gmt check reads them); the table goes to the docs.
    parser.add_argument("--out", type=Path, default=REPO / "gmt" / "mask_memory.json")
    parser.add_argument("--table", type=Path, default=REPO / "docs" / "mask_memory.md")
    args = parser.parse_args()
    named = {mask_memory_case(built_strategy(case)): case for case in CASES}
    runs = [(name, dtype, "equal", engine) for engine in MASK_MEMORY_ENGINES for name in named
            for dtype in (torch.bfloat16, torch.float32)]  # fmt: skip
    runs += [(name, torch.bfloat16, "one large", "torch") for name in LARGEST_TENSOR_CASES]
    # Each record is appended to a progress file as it is measured: a run cut short goes on from there.
    progress = args.out.with_suffix(".partial.jsonl")
    records = [json.loads(line) for line in progress.open()] if progress.is_file() else []
    done = {(r["case"], r["dtype"], r["layout"], r["engine"]) for r in records}
    for name, dtype, layout, engine in runs:
        if (name, str(dtype).removeprefix("torch."), layout, engine) in done:
            continue
        if engine == "deepspeed":  # each engine in a process of its own: DeepSpeed does not free one it made
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                results = [pool.apply(measure_deepspeed, (named[name], n, dtype)) for n in SIZES]
        else:
            results = [measure(named[name], n, dtype, layout) for n in SIZES]
        (small_peak, small_held), (large_peak, large_held) = results
        per_entry = (large_peak - small_peak) / (SIZES[1] - SIZES[0])
        held_per_entry = (large_held - small_held) / (SIZES[1] - SIZES[0])
        fixed = small_peak - per_entry * SIZES[0]
        records.append(
            {
                "case": name,
                "engine": engine,
                "layout": layout,
                "dtype": str(dtype).removeprefix("torch."),
                "peak_per_entry": per_entry,
                "peak_fixed_bytes": fixed,
                "held_per_entry": held_per_entry,
            }
        )
        with progress.open("a") as file:
            file.write(json.dumps(records[-1]) + "\n")
        print(records[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"sizes": SIZES, "ranks": RANKS, "records": records}, indent=2) + "\n")
    progress.unlink()
    table = markdown(records)
    args.table.write_text(table)
    print(table)


def markdown(records: list[dict]) -> str:
    """docs/mask_memory.md: the per-entry table per engine, then the largest-tensor worst case."""
    header = " | ".join(f"{label} (GiB/rank)" for label in RANKS)
    lines = [
        "`python scripts/mask_memory.py`",
        "",
        f"Extra memory of the mask step on a rank's gradient partition: the peak over its first masked step and "
        f"{STEADY_STEPS} more, the optimizer stepping between them (what a step keeps for the next counts; optimizer "
        "state it frees counts as given back; the fixed part is the search's chunk buffers at the GPU's chunk size), "
        'and per rank for ZeRO-3 (each rank masks 1/N of the entries). "held after" is what stays between '
        "steps (negative: less than before the first masked step, as when sparse moments replace dense ones). "
        "gspf keeps 5% here.",
        "",
    ]
    titles = {"torch": "Plain tensors (one process, DDP, FSDP2): the optimizer steps the gradients' own tensors.",
              "deepspeed": "DeepSpeed ZeRO-3 (one process, gloo): the optimizer steps flat fp32 partitions, so "
                           "update mode and the fixed masks also build one boolean per entry of them."}  # fmt: skip
    for engine in MASK_MEMORY_ENGINES:
        lines += [titles[engine], "",
                  f"| case | gradient dtype | peak, bytes/entry | fixed, MiB | held after, bytes/entry | {header} |",
                  "|---|---|---:|---:|---:|" + "---:|" * len(RANKS)]  # fmt: skip
        for record in records:
            if record["engine"] != engine or record["layout"] != "equal":
                continue
            per_rank = " | ".join(
                f"{(record['peak_per_entry'] * params / ranks + max(record['peak_fixed_bytes'], 0)) / 2**30:.2f}"
                for params, ranks in RANKS.values()
            )
            fixed_mib = max(record["peak_fixed_bytes"], 0) / 2**20
            lines.append(f"| {record['case']} | {record['dtype']} | {record['peak_per_entry']:.2f} | {fixed_mib:.0f} | "
                         f"{record['held_per_entry']:.2f} | {per_rank} |")  # fmt: skip
        lines.append("")
    # Under ZeRO-1/2 a rank may own a whole tensor: the worst case is the largest tensor's transients.
    lines += ["Where one rank owns a whole large tensor (ZeRO-1/2 partitions the flat buffer, so a rank can hold "
              "all of an embedding), the one-tensor rows (plain tensors, bf16) give the cost per entry of that tensor "
              "(it holds half the entries: at most twice the row's figure, which also holds the other tensors' cost), "
              f"here for Llama-3-8B's embedding ({LARGEST_ENTRIES / 1e6:.0f}M entries) on one rank:", "",
              "| case | bytes per entry of the largest tensor | that embedding on one rank (GiB) |",
              "|---|---:|---:|"]  # fmt: skip
    for record in records:
        if record["layout"] == "one large":
            per_largest = 2 * record["peak_per_entry"]
            lines.append(
                f"| {record['case']} | {per_largest:.2f} | "
                f"{(per_largest * LARGEST_ENTRIES + max(record['peak_fixed_bytes'], 0)) / 2**30:.2f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
