"""Time the mask step's threshold search against the obvious alternatives, in one run.

    python scripts/bench_select.py                        # 10M, 100M, 500M entries, CPU
    python scripts/bench_select.py --sizes 1e6 --repeats 3 --no-docs   # a quick look
    python scripts/bench_select.py --device cuda          # on a GPU

For each size, gradients shaped like a Llama's (embedding, head and blocks of attention and MLP
matrices plus norms, each tensor on its own scale) are timed with:

- ``gmt``: the project's mask step, as the trainer runs it: ``GradientMasker.apply`` with the
  ``gmt`` strategy (global scope, ``gmt_mode: grad``): threshold search, zeroing the dropped
  entries in place, the kept-count telemetry. The gradients are restored before every repeat.
- ``abs``: one plain pass ``g.abs()`` over every tensor (allocating its output, as written): the
  floor the issue sets. ``abs_into_buffer`` is the same pass into a preallocated buffer (no page
  faults): the floor of a pass that reuses memory, which the mask step does.
- ``kthvalue`` and ``topk``: ``torch.kthvalue`` / ``torch.topk(sorted=False)`` on the
  concatenated ``|g|``, prepared outside the timer (so the alternatives are timed without the
  concatenation they need: the comparison favours them). Neither applies a mask.

Each method gets one warm-up call, then the median of ``--repeats`` timed calls (``--slow_repeats``
for kthvalue and topk). The gmt threshold is checked against kthvalue's value (``exact``).
Sizes whose working set does not fit in the available memory are skipped and say so.

Writes ``docs/benchmarks/select.json`` (one record per size and method, in seconds) and the table
between the ``select:start`` / ``select:end`` markers of ``docs/benchmarks.md`` (``select-gpu:...``
for a CUDA device).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from machine import describe_machine, synchronize
from readme_section import write_benchmark
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gmt.masking import GradientMasker, LocalGradientAccess, build_strategy  # noqa: E402

DOC = REPO / "docs" / "benchmarks.md"
METHODS = ("gmt", "abs", "abs_into_buffer", "kthvalue", "topk")
SLOW = ("kthvalue", "topk")


def llama_like_shapes(total: int) -> list[tuple[int, ...]]:
    """Parameter shapes of a Llama-like model with about ``total`` entries: embedding and head (a
    fifth of the entries, at most a 32k vocabulary), then blocks (q, k, v, o, gate, up, down, two
    norms) until the total is reached."""
    hidden = 256 if total <= 2_000_000 else 512 if total <= 20_000_000 else 1024 if total <= 200_000_000 else 2048
    intermediate = hidden * 8 // 3
    vocab = min(32_000, total // (10 * hidden))
    shapes: list[tuple[int, ...]] = [(vocab, hidden)]
    block = [(hidden, hidden)] * 4 + [(intermediate, hidden)] * 2 + [(hidden, intermediate)] + [(hidden,)] * 2
    per_block = sum(_numel(shape) for shape in block)
    while sum(_numel(s) for s in shapes) + per_block + vocab * hidden <= total:
        shapes.extend(block)
    shapes += [(hidden,), (vocab, hidden)]
    return shapes


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def gradient_like(shapes: list[tuple[int, ...]], device: str, seed: int = 0) -> list[torch.Tensor]:
    """Gaussian entries, each tensor on its own log-normal scale, with heavy tails mixed in."""
    generator = torch.Generator(device=device).manual_seed(seed)
    scales = torch.empty(len(shapes)).log_normal_(mean=-9.0, std=1.5, generator=torch.Generator().manual_seed(seed))
    grads = []
    for shape, scale in zip(shapes, scales.tolist(), strict=True):
        grad = torch.randn(shape, generator=generator, device=device).mul_(scale)
        grad.view(-1)[::97].mul_(30.0)  # a sparse tail of large entries
        grads.append(grad)
    return grads


def median_seconds(function, repeats: int, device: str, before=None) -> float:
    """One warm-up call, then the median of ``repeats`` timed calls (``before`` runs untimed)."""
    times = []
    for attempt in range(repeats + 1):
        if before is not None:
            before()
        synchronize(device)
        start = time.perf_counter()
        function()
        synchronize(device)
        if attempt:  # the first call is the warm-up
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def bytes_needed(numel: int) -> int:
    # gradients + their saved copy + the concatenated |g| + topk's values and int64 indices at r=0.5
    return numel * (4 + 4 + 4 + 2 + 4)


def available_bytes(device: str) -> int:
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info()
        return free
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def bench_size(total: int, mask_ratio: float, repeats: int, slow_repeats: int, device: str) -> list[dict]:
    """Time every method on one gradient size; returns one record per method."""
    shapes = llama_like_shapes(total)
    grads = gradient_like(shapes, device)
    numel = sum(g.numel() for g in grads)
    saved = [g.clone() for g in grads]
    # Parameters whose storage is never touched (torch.empty): only their .grad matters here.
    params = [nn.Parameter(torch.empty(shape, device=device)) for shape in shapes]
    for param, grad in zip(params, grads, strict=True):
        param.grad = grad
    access = LocalGradientAccess((f"model.layers.{i}.weight", p) for i, p in enumerate(params))
    masker = GradientMasker(build_strategy("gmt", mask_ratio=mask_ratio), access)

    def restore() -> None:
        for grad, original in zip(grads, saved, strict=True):
            grad.copy_(original)

    def abs_into_buffers() -> None:
        for grad, buffer in zip(grads, saved, strict=True):  # the saved copies serve as buffers
            torch.abs(grad, out=buffer)

    seconds = {
        "gmt": median_seconds(lambda: masker.apply(0), repeats, device, before=restore),
        "abs": median_seconds(lambda: [g.abs() for g in grads], repeats, device),
    }
    restore()
    threshold = float(masker.strategy.select(grads, 0).thresholds()[0])
    seconds["abs_into_buffer"] = median_seconds(abs_into_buffers, repeats, device)
    saved.clear()  # free the copies before the concatenated |g| is built
    magnitudes = torch.cat([g.abs().reshape(-1) for g in grads])
    keep = masker.strategy.keep_counts[0]
    reference = float(magnitudes.kthvalue(numel - keep + 1).values)
    seconds["kthvalue"] = median_seconds(lambda: magnitudes.kthvalue(numel - keep + 1), slow_repeats, device)
    seconds["topk"] = median_seconds(lambda: magnitudes.topk(keep, sorted=False), slow_repeats, device)
    fallbacks = masker.strategy.search.fallback_groups
    return [
        {
            "entries": numel,
            "tensors": len(shapes),
            "method": method,
            "seconds": seconds[method],
            "ratio_to_abs": seconds[method] / seconds["abs"],
            **({"exact": threshold == reference, "bracket_misses": fallbacks} if method == "gmt" else {}),
        }
        for method in METHODS
    ]


# Issue 7's targets, at about 100M entries.
TARGET_SIZES = (5e7, 2e8)
TARGET_ABS_RATIO = 2.5
TARGET_KTHVALUE_SPEEDUP = 8.0


def markdown(records: list[dict], skipped: list[str], args: argparse.Namespace, machine: str) -> str:
    lines = [
        f"Machine: {machine}. Mask ratio {args.mask_ratio}, global scope, median of {args.repeats} "
        f"({args.slow_repeats} for kthvalue and topk) after a warm-up.",
        "",
        "Command: `python scripts/bench_select.py" + (f" --device {args.device}" if args.device != "cpu" else "") + "`",
        "",
        "| entries | gmt mask step | g.abs() | abs into buffer | kthvalue | topk | gmt / abs "
        "| kthvalue / gmt | exact |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for entries in sorted({r["entries"] for r in records}):
        by = {r["method"]: r for r in records if r["entries"] == entries}
        gmt = by["gmt"]
        lines.append(
            f"| {entries / 1e6:.0f}M | {gmt['seconds']:.3f} s | {by['abs']['seconds']:.3f} s | "
            f"{by['abs_into_buffer']['seconds']:.3f} s | {by['kthvalue']['seconds']:.3f} s | "
            f"{by['topk']['seconds']:.3f} s | {gmt['ratio_to_abs']:.2f}x | "
            f"{by['kthvalue']['seconds'] / gmt['seconds']:.1f}x | {'yes' if gmt['exact'] else 'NO'} |"
        )
    for note in skipped:
        lines.append(f"\n{note}")
    for entries in sorted({r["entries"] for r in records}):
        if TARGET_SIZES[0] <= entries <= TARGET_SIZES[1]:
            by = {r["method"]: r for r in records if r["entries"] == entries}
            ratio, speedup = by["gmt"]["ratio_to_abs"], by["kthvalue"]["seconds"] / by["gmt"]["seconds"]
            lines.append(
                f"\nTargets at {entries / 1e6:.0f}M entries: the gmt mask step within "
                f"{TARGET_ABS_RATIO}x one g.abs() pass: {verdict(ratio <= TARGET_ABS_RATIO)} ({ratio:.2f}x); "
                f"at least {TARGET_KTHVALUE_SPEEDUP:.0f}x faster than kthvalue: "
                f"{verdict(speedup >= TARGET_KTHVALUE_SPEEDUP)} ({speedup:.1f}x)."
            )
    return "\n".join(lines) + "\n"


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1e7,1e8,5e8", help="comma-separated entry counts")
    parser.add_argument("--mask_ratio", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--slow_repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "select.json")
    parser.add_argument("--no-docs", dest="docs", action="store_false", help="don't write docs/benchmarks.md")
    parser.add_argument("--render", action="store_true", help="rewrite the tables from --out's JSON, no timing")
    args = parser.parse_args()
    if args.render:
        result = json.loads(args.out.read_text())
        args.device, args.mask_ratio = result["device"], result["mask_ratio"]
        args.repeats = result.get("repeats", args.repeats)
        args.slow_repeats = result.get("slow_repeats", args.slow_repeats)
        table = markdown(result["records"], result.get("skipped", []), args, result["machine"])
        section = ("select" if args.device == "cpu" else "select-gpu") if args.docs else None
        write_benchmark(args.out, result, table, section, DOC)
        return

    machine = describe_machine(args.device)
    records, skipped = [], []
    for size in (int(float(s)) for s in args.sizes.split(",")):
        if bytes_needed(size) > 0.8 * available_bytes(args.device):
            skipped.append(f"{size / 1e6:.0f}M entries skipped: needs about {bytes_needed(size) / 2**30:.1f} GiB.")
            print(skipped[-1], flush=True)
            continue
        print(f"{size / 1e6:.0f}M entries ...", flush=True)
        size_records = bench_size(size, args.mask_ratio, args.repeats, args.slow_repeats, args.device)
        for record in size_records:
            print(f"  {record['method']:16s} {record['seconds']:.4f} s  {record['ratio_to_abs']:.2f}x abs", flush=True)
        records += size_records
    result = {
        "machine": machine,
        "device": args.device,
        "mask_ratio": args.mask_ratio,
        "repeats": args.repeats,
        "slow_repeats": args.slow_repeats,
        "skipped": skipped,
        "records": records,
    }
    section = ("select" if args.device == "cpu" else "select-gpu") if args.docs else None
    write_benchmark(args.out, result, markdown(records, skipped, args, machine), section, DOC)


if __name__ == "__main__":
    main()
