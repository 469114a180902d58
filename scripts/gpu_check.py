"""The GPU check: what the CPU tests cannot show, measured on the first GPU gmt gets.

Needs only torch, transformers and this repository (a bare GPU image often lacks TRL and
DeepSpeed). On random gradients of a 7B-shaped layout (Llama-2-7B's 291 tensors, from
transformers' config on the meta device) and of a 1B-entry one, for each scope:

- the selection on the device against the CPU: the same thresholds and the same mask, exactly;
- ``MaskedAdamW`` and ``SparseMaskedAdamW`` against the CPU: dropped (or unselected) entries
  bitwise unchanged on both, kept entries within 1e-6 of the CPU's step;
- the host syncs of a mask step: ``torch.cuda.set_sync_debug_mode`` warnings on CUDA, the op
  counter of ``scripts/count_syncs.py`` elsewhere; no more for the 7B layout's 291 tensors than
  for its entries in 16;
- the mask step's time against one ``g.abs()`` pass and against a fused AdamW step, and the
  mask step's peak extra memory.

It prints one table with pass/fail and writes JSON:

    python scripts/gpu_check.py                       # on a CUDA machine: docs/benchmarks/gpu_check.json
    python scripts/gpu_check.py --device cpu --scale 32   # its CPU half (the tests run it)
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import torch

from gmt.masking import GradientMasker, LocalGradientAccess, MaskedAdamW, SparseMaskedAdamW, build_strategy

REPO = Path(__file__).resolve().parents[1]
SCOPES = ("global", "layer", "tensor")


def llama_7b_shapes(scale: int = 1) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of Llama-2-7B (transformers' LlamaConfig defaults), each dimension divided
    by ``scale`` (``--scale``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = max(1, 32 // scale)
    config = LlamaConfig(hidden_size=4096 // scale, intermediate_size=11008 // scale, vocab_size=32000 // scale,
                         num_hidden_layers=32, num_attention_heads=heads, num_key_value_heads=heads)  # fmt: skip
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return {name: tuple(param.shape) for name, param in model.named_parameters()}


def billion_shapes(scale: int = 1) -> dict[str, tuple[int, ...]]:
    """About 1B entries in 16 large matrices (each dimension divided by ``scale``)."""
    return {f"model.layers.{i}.proj.weight": (16384 // scale, 4096 // scale) for i in range(16)}


class Params(torch.nn.Module):
    def __init__(self, shapes: dict[str, tuple[int, ...]], device: str, seed: int) -> None:
        super().__init__()
        generator = torch.Generator(device="cpu").manual_seed(seed)
        self.names = list(shapes)
        for index, shape in enumerate(shapes.values()):
            weight = torch.randn(shape, generator=generator) * 0.02
            self.register_parameter(f"p{index}", torch.nn.Parameter(weight.to(device)))

    def layout(self) -> list[tuple[str, torch.nn.Parameter]]:
        """The parameters under the layout's own names (the scopes read them)."""
        return list(zip(self.names, self.parameters(), strict=True))


def random_grads(params: Params, seed: int) -> None:
    generator = torch.Generator(device="cpu").manual_seed(seed)
    for param in params.parameters():
        param.grad = torch.randn(param.shape, generator=generator).to(param.device)


def masked_step(shapes, device: str, scope: str, mode: str = "grad", seed: int = 0):
    """Mask one step of random gradients; the masked gradients, the thresholds and the masker."""
    params = Params(shapes, device, seed)
    strategy = build_strategy("gmt", mask_ratio=0.8, mask_scope=scope, gmt_mode=mode)
    masker = GradientMasker(strategy, LocalGradientAccess(params.layout()))
    optimizer = MaskedAdamW(params.parameters(), lr=1e-3) if mode == "update" else None
    random_grads(params, seed + 1)
    masker.apply(0, optimizer)
    return params, masker, optimizer


def check_selection(shapes, device: str, scope: str) -> dict:
    """The device's mask equals the CPU's exactly (thresholds and every masked gradient)."""
    on_device, device_masker, _ = masked_step(shapes, device, scope)
    on_cpu, cpu_masker, _ = masked_step(shapes, "cpu", scope)
    same_thresholds = torch.equal(device_masker._last_thresholds.cpu(), cpu_masker._last_thresholds.cpu())
    same_masks = all(torch.equal(a.grad.cpu(), b.grad) for a, b in zip(on_device.parameters(), on_cpu.parameters()))
    passed = bool(same_thresholds and same_masks)
    return {"passed": passed, "same_thresholds": same_thresholds, "same_masks": same_masks}


def check_optimizers(device: str, seed: int = 0) -> dict:
    """MaskedAdamW (update mode) and SparseMaskedAdamW (a fixed mask) on the device against the CPU."""
    shapes = {f"model.layers.{i}.w.weight": (256, 256) for i in range(8)}
    results = {}
    for kind in ("masked", "sparse"):
        after = {}
        for where in (device, "cpu"):
            params = Params(shapes, where, seed)
            before = [param.detach().clone() for param in params.parameters()]
            random_grads(params, seed + 1)
            keeps = {param: (torch.rand(param.shape, generator=torch.Generator().manual_seed(i)) < 0.2).to(where)
                     for i, param in enumerate(params.parameters())}  # fmt: skip
            if kind == "masked":
                optimizer = MaskedAdamW(params.parameters(), lr=1e-3, weight_decay=0.1)
                optimizer.set_update_masks(keeps)
            else:
                optimizer = SparseMaskedAdamW(params.parameters(), lr=1e-3, weight_decay=0.1)
                optimizer.set_fixed_masks({param: keep.view(-1) for param, keep in keeps.items()})
            optimizer.step()
            after[where] = [(b.cpu(), p.detach().cpu(), keeps[p].cpu()) for b, p in zip(before, params.parameters())]
        still = all(torch.equal(p[~k], b[~k]) for b, p, k in after[device] + after["cpu"])
        kept_error = max(float(((p1 - p2)[k].abs() / p2[k].abs().clamp(min=1e-12)).max())
                         for (_, p1, k), (_, p2, _) in zip(after[device], after["cpu"]))  # fmt: skip
        results[kind] = {"passed": bool(still and kept_error <= 1e-6), "dropped_unchanged": still,
                         "kept_max_relative_difference": kept_error}  # fmt: skip
    return results


def count_syncs(shapes, device: str, scope: str) -> int:
    """The host syncs of one mask step on ``device``."""
    params = Params(shapes, device, 0)
    strategy = build_strategy("gmt", mask_ratio=0.8, mask_scope=scope)
    masker = GradientMasker(strategy, LocalGradientAccess(params.layout()))
    random_grads(params, 1)
    masker.apply(0)  # warm-up: buffers, first-call work
    random_grads(params, 2)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                masker.apply(1)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(warning.message) for warning in caught)
    import sys

    sys.path.insert(0, str(REPO / "scripts"))
    from count_syncs import SyncCounter, gpu_band_select

    counter = SyncCounter()
    with counter, gpu_band_select():
        masker.apply(1)
    return counter.total


def timings(shapes, device: str, repeats: int = 3) -> dict:
    """The mask step (global scope) against one |g| pass and a fused AdamW step, and its peak memory."""

    def clock(work) -> float:
        work()
        best = math.inf
        for _ in range(repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            work()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        return best

    params = Params(shapes, device, 0)
    strategy = build_strategy("gmt", mask_ratio=0.8)
    masker = GradientMasker(strategy, LocalGradientAccess(params.layout()))
    random_grads(params, 1)
    grads = [param.grad.clone() for param in params.parameters()]

    def mask() -> None:
        for param, grad in zip(params.parameters(), grads):
            param.grad.copy_(grad)
        masker.apply(0)

    def copy_only() -> None:
        for param, grad in zip(params.parameters(), grads):
            param.grad.copy_(grad)

    fused = device.startswith("cuda")
    adamw = torch.optim.AdamW(params.parameters(), lr=1e-6, fused=fused or None)
    abs_pass = clock(lambda: [param.grad.abs() for param in params.parameters()])
    mask_step = clock(mask) - clock(copy_only)
    adamw_step = clock(adamw.step)
    peak = None
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        mask()
        peak = torch.cuda.max_memory_allocated() - base
    per_entry = None if peak is None else peak / sum(math.prod(shape) for shape in shapes.values())
    return {"mask_s": mask_step, "abs_pass_s": abs_pass, "adamw_step_s": adamw_step,
            "mask_over_abs": mask_step / abs_pass, "mask_over_adamw": mask_step / adamw_step,
            "peak_extra_bytes": peak, "peak_extra_bytes_per_entry": per_entry}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--scale", type=int, default=1, help="divide every dimension of the layouts by this")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "gpu_check.json")
    args = parser.parse_args(argv)
    layouts = {"7b": llama_7b_shapes(args.scale), "1b": billion_shapes(args.scale)}
    rows: list[tuple[str, bool, str]] = []
    result: dict = {"device": args.device, "scale": args.scale, "checks": {}}
    for layout, shapes in layouts.items():
        for scope in SCOPES:
            check = check_selection(shapes, args.device, scope)
            result["checks"][f"selection {layout} {scope}"] = check
            rows.append((f"selection {layout} {scope}: same T, same mask as the CPU", check["passed"], ""))
    for kind, check in check_optimizers(args.device).items():
        result["checks"][f"optimizer {kind}"] = check
        detail = f"kept entries within {check['kept_max_relative_difference']:.1e} of the CPU"
        rows.append((f"{kind} AdamW: dropped entries bitwise still, kept ones as on the CPU", check["passed"], detail))
    # The 7B layout's entries in 16 tensors: the same pass chunks, 18x fewer tensors.
    entries, columns = sum(math.prod(shape) for shape in layouts["7b"].values()), 4096 // args.scale
    merged = {f"model.layers.{i}.proj.weight": (entries // (16 * columns), columns) for i in range(16)}
    for scope in SCOPES:
        few, many = count_syncs(merged, args.device, scope), count_syncs(layouts["7b"], args.device, scope)
        passed = many <= few + 2
        result["checks"][f"syncs {scope}"] = {"passed": passed, "16_tensors": few, "7b_tensors": many}
        rows.append((f"host syncs, {scope} scope: 16 tensors {few}, the 7B layout's 291 {many}", passed, ""))
    timing = timings(layouts["7b"], args.device)
    result["timing_7b"] = timing
    rows.append((f"mask step {timing['mask_over_abs']:.2f}x one |g| pass, {timing['mask_over_adamw']:.2f}x AdamW",
                 True, "" if timing["peak_extra_bytes_per_entry"] is None
                 else f"peak +{timing['peak_extra_bytes_per_entry']:.2f} B/entry"))  # fmt: skip
    result["passed"] = all(passed for _, passed, _ in rows)
    width = max(len(name) for name, _, _ in rows)
    for name, passed, detail in rows:
        print(f"{name:<{width}}  {'pass' if passed else 'FAIL'}  {detail}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    raise SystemExit(0 if main()["passed"] else 1)
