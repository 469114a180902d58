"""Count the host synchronisations of one mask step, per strategy, scope and mode, at a small and a
large number of tensors.

On CUDA a device-to-host read (``.item()``, ``.tolist()``, ``.cpu()``, ``bool(t)``) waits for every
queued kernel, and so do ops whose output size depends on the data (``nonzero``, a boolean index,
``masked_select``, ``bincount``, ``unique``, ``repeat_interleave`` without ``output_size``) and a
tensor made on the device from host data (``torch.tensor(list, device=...)``: a copy from pageable
memory). The
counter records those ops on CPU, where they do not wait but run the same code path: the counts
are what a CUDA run would sync. A mask step whose count grows with the number of tensors costs a
round trip per tensor on a GPU (a 7B Llama has 291, a 70B one 723).

    python scripts/count_syncs.py     # writes docs/benchmarks/syncs.{json,md} and docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import math
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import gmt.masking.search as search_module
from gmt.masking import GradientMasker, LocalGradientAccess, ThresholdSearch, build_strategy, masking_optimizer

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"
HOST_READS = {torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.item}
HOST_DATA_TO_DEVICE = {torch.tensor, torch.as_tensor}
DATA_SIZED = {"nonzero", "masked_select", "bincount", "unique", "_unique", "_unique2", "unique_consecutive",
              "unique_dim"}  # fmt: skip

# Every strategy's per-step path (fixed masks: a step between selections), each scope, each mode.
CASES = {
    "gmt global grad": dict(strategy="gmt", mask_ratio=0.5),
    "gmt global update": dict(strategy="gmt", mask_ratio=0.5, gmt_mode="update"),
    "gmt layer grad": dict(strategy="gmt", mask_ratio=0.5, mask_scope="layer"),
    "gmt layer update": dict(strategy="gmt", mask_ratio=0.5, mask_scope="layer", gmt_mode="update"),
    "gmt tensor grad": dict(strategy="gmt", mask_ratio=0.5, mask_scope="tensor"),
    "gmt tensor update": dict(strategy="gmt", mask_ratio=0.5, mask_scope="tensor", gmt_mode="update"),
    "random global grad": dict(strategy="random", mask_ratio=0.5),
    "random tensor grad": dict(strategy="random", mask_ratio=0.5, mask_scope="tensor"),
    "magnitude layer grad": dict(strategy="magnitude", mask_ratio=0.5, mask_scope="layer"),
    "gps": dict(strategy="gps", gps_k=4, selection_steps=1),
    "grft": dict(strategy="grft", grft_k=4, selection_steps=1),
    "gspf": dict(strategy="gspf", gspf_warmup_steps=1, gspf_reselect_every=0),
}
TENSOR_COUNTS = (12, 300)
TOTAL_ENTRIES = 1 << 19
# The search as on a GPU: the radix select in the band (kthvalue is for a CPU process only), and
# chunks several times smaller than the gradient, as 2^24-entry chunks are against a 7B model's.
CHUNK_ENTRIES = 1 << 17


class SyncCounter(TorchFunctionMode):
    """Counts the ops that would wait for the GPU, by kind (the dispatch-level ones through
    ``_DataSized``, entered with it)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}
        self._dispatch = _DataSized(self.counts)

    def __enter__(self):
        self._dispatch.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        self._dispatch.__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = None
        if func in HOST_READS:
            name = func.__name__
        elif func is torch.Tensor.to and _to_host(args, kwargs):
            name = "to(cpu)"
        elif func in HOST_DATA_TO_DEVICE and _from_host_data(args, kwargs):
            name = "host data to device"
        if name:
            self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _from_host_data(args, kwargs) -> bool:
    """``torch.tensor(list, device=D)``: on a GPU a copy from pageable host memory, which waits for
    the queue before it (the CPU run names its device the same way, so the call is counted here)."""
    data = args[0] if args else kwargs.get("data")
    return not isinstance(data, torch.Tensor) and kwargs.get("device") is not None


def _to_host(args, kwargs) -> bool:
    device = kwargs.get("device", next((a for a in args[1:] if isinstance(a, (str, torch.device))), None))
    return device is not None and torch.device(device).type == "cpu"


class _DataSized(TorchDispatchMode):
    def __init__(self, counts: dict[str, int]) -> None:
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        kind = None
        if name == "_local_scalar_dense":
            kind = "scalar read"
        elif name in DATA_SIZED:
            kind = name
        elif name == "repeat_interleave" and kwargs.get("output_size") is None:
            kind = name
        elif name in ("index", "index_put", "index_put_") and any(
            isinstance(index, torch.Tensor) and index.dtype == torch.bool for index in _indices(args)
        ):
            kind = "boolean index"
        if kind:
            self.counts[kind] = self.counts.get(kind, 0) + 1
        return func(*args, **kwargs)


def _indices(args):
    return args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()


class Blocks(torch.nn.Module):
    """``tensors`` parameters in blocks of 4 (three matrices and a vector), named like a decoder's
    layers so the layer scope finds them; about ``TOTAL_ENTRIES`` entries whatever their number."""

    def __init__(self, tensors: int) -> None:
        width = round(math.sqrt(TOTAL_ENTRIES / (0.75 * tensors)))
        super().__init__()
        self.layers = torch.nn.ModuleList()
        for _ in range(tensors // 4):
            block = torch.nn.Module()
            block.q = torch.nn.Linear(width, width, bias=False)
            block.k = torch.nn.Linear(width, width, bias=False)
            block.v = torch.nn.Linear(width, width, bias=False)
            block.norm = torch.nn.LayerNorm(width, bias=False)
            self.layers.append(block)


def count_mask_step(case: dict, tensors: int, sharded: bool = False, seed: int = 0) -> dict[str, int]:
    """The sync ops of one mask step (strategies with a selection: a step after it) on ``tensors``
    random gradients; ``sharded``: the counts are summed by a (one-rank) all-reduce, as under ZeRO."""
    torch.manual_seed(seed)
    model = Blocks(tensors)
    settings = dict(case)
    strategy = build_strategy(settings.pop("strategy"), **settings)
    access = LocalGradientAccess(model.named_parameters())
    if sharded:
        access.all_reduce = lambda tensor: None
    optimizer = optimizer_for(strategy, model.parameters())
    if hasattr(strategy, "search"):
        strategy.search = ThresholdSearch(chunk_entries=CHUNK_ENTRIES, small_entries=1 << 10)
    masker = GradientMasker(strategy, access, total_steps=10)
    counter = SyncCounter()
    for step in range(3):  # fixed masks: select at step 0 (and gspf's warm-up); step 2 is a plain masked step
        for param in model.parameters():
            param.grad = torch.randn_like(param)
        if step == 2:
            with counter, gpu_band_select():
                masker.apply(step, optimizer)
        else:
            masker.apply(step, optimizer)
        optimizer.step()
    return counter.counts


def optimizer_for(strategy, params, lr: float = 1e-3) -> torch.optim.Optimizer:
    """The AdamW the strategy needs (``gmt.masking.masking_optimizer``), as the trainer builds it."""
    optimizer_cls, settings = masking_optimizer(strategy.optimizer_kind, torch.optim.AdamW, {"lr": lr}) or (
        torch.optim.AdamW, {"lr": lr})  # fmt: skip
    return optimizer_cls(params, **settings)


@contextmanager
def gpu_band_select():
    """The band's selection as on a GPU (``KTHVALUE_DEVICES`` names the CPU)."""
    saved = search_module.KTHVALUE_DEVICES
    search_module.KTHVALUE_DEVICES = frozenset()
    try:
        yield
    finally:
        search_module.KTHVALUE_DEVICES = saved


def main() -> None:
    from readme_section import write_benchmark

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "syncs.json")
    args = parser.parse_args()
    records = []
    for name, case in CASES.items():
        for sharded in (False, True):
            counts = {n: count_mask_step(case, n, sharded) for n in TENSOR_COUNTS}
            records.append({"case": name, "sharded": sharded, "counts": {str(n): c for n, c in counts.items()}})
    small, large = TENSOR_COUNTS
    lines = [
        "`python scripts/count_syncs.py`",
        "",
        f"Host synchronisations of one mask step (ops that wait for the GPU on CUDA), at {small} and "
        f"{large} tensors of {TOTAL_ENTRIES} entries in all, the search in chunks of {CHUNK_ENTRIES} "
        'entries and selecting in the band as on a GPU; "sharded": the path of ZeRO and FSDP2, whose '
        "counts are all-reduced.",
        "",
        f"| case | layout | syncs at {small} tensors | syncs at {large} tensors | which |",
        "|---|---|---:|---:|---|",
    ]
    for record in records:
        at_small, at_large = record["counts"][str(small)], record["counts"][str(large)]
        which = ", ".join(f"{kind} {count}" for kind, count in sorted(at_large.items())) or "-"
        layout = "sharded" if record["sharded"] else "one process"
        lines.append(f"| {record['case']} | {layout} | {sum(at_small.values())} | {sum(at_large.values())} | {which} |")
    write_benchmark(args.out, {"tensor_counts": TENSOR_COUNTS, "records": records}, "\n".join(lines) + "\n",
                    "syncs", DOC)  # fmt: skip


if __name__ == "__main__":
    main()
