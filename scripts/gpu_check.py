"""The device check: what the CPU tests cannot show, in one short GPU slot (about 5 minutes on one H100).

    python scripts/gpu_check.py                 # on a GPU: docs/benchmarks/gpu_check.{json,md}
    python scripts/gpu_check.py --device cpu --scale 32 --out /tmp/check.json    # the same checks on CPU

It needs torch and transformers only, and this checkout as it is (no install step: it puts the
repository on the path itself); DeepSpeed's check runs where DeepSpeed imports. Every number is
drawn on the device (no host generator, no host-to-device copy of the data). Each check rewrites
the JSON and the table when it ends, so a run cut short still returns what it did; a check that
raises is recorded as failed with its error and the next one runs; a check not started within
``--budget_s`` is recorded as skipped. Exit status 0 when every check that ran passed.

The checks (docs/benchmarks.md, "The device check", says what each figure means):

- selection: gmt's thresholds and masks on the device equal the CPU's, in every scope, with fp32
  and bf16 gradients, on Llama-2-7B's 291 tensor shapes (each dimension divided by ``--scale``);
- sharded path: the same mask through a world-size-1 process group (NCCL on a GPU, gloo on CPU),
  the histograms summed by ``RankSum`` as under ZeRO and FSDP;
- update mode: ``gmt_mode update`` through the masker and ``MaskedAdamW`` against the CPU;
- strategies: one masked step of every strategy, each keeping what it asks for, against the CPU;
- optimizers: ``MaskedAdamW`` fused and foreach and ``SparseMaskedAdamW``, with a tensor above
  2^24 entries, against the CPU: dropped entries bitwise unchanged, kept ones within an absolute
  tolerance of the update's size (rounding differs between kernels);
- syncs: the host waits of one mask step, against the number of pass chunks the search cuts the
  gradient into (the bound is per chunk, not a fixed count);
- model: a forward and backward of a random-init Llama-family model, gmt against plain training:
  step time and peak memory;
- DeepSpeed: one ZeRO-3 step on one device with gmt's step hook, where DeepSpeed imports.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # a bare checkout on a GPU node: no install step

import torch  # noqa: E402

from gmt.masking import (  # noqa: E402
    GradientMasker,
    LocalGradientAccess,
    MaskedAdamW,
    SparseMaskedAdamW,
    build_strategy,
)
from gmt.masking.comm import RankSum  # noqa: E402
from gmt.masking.search import CHUNK_ENTRIES, CUDA_CHUNK_ENTRIES, _chunks  # noqa: E402

SCOPES = ("global", "layer", "tensor")
STRATEGY_SETTINGS = {  # every strategy's step, at settings that mask something on the scaled layouts
    "gmt grad": ("gmt", {"mask_ratio": 0.8, "gmt_mode": "grad"}),
    "gmt update": ("gmt", {"mask_ratio": 0.8, "gmt_mode": "update"}),
    "random": ("random", {"mask_ratio": 0.8, "seed": 3}),
    "magnitude": ("magnitude", {"mask_ratio": 0.8}),
    "gps": ("gps", {"gps_k": 4, "selection_steps": 1}),
    "grft": ("grft", {"grft_k": 4, "selection_steps": 1}),
    "gspf": ("gspf", {"gspf_keep_ratio": 0.05, "gspf_warmup_steps": 0}),
}
LEARNING_RATE = 1e-3
# What init_process_group sets for DeepSpeed, and main() puts back as it found it.
PROCESS_GROUP_ENVIRONMENT = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR")
# Kept entries may differ from the CPU's by rounding: this share of the update's size. A wrong
# index or a skipped entry differs by the whole update, ~1000 times more.
UPDATE_TOLERANCE = 1e-3
# Entries whose key lies within rounding of T may fall either side on another device's kernels:
# masks may differ in at most this share of the entries (and 16 more), where rounding enters.
ROUNDING_DISAGREEMENT = 1e-5


class Report:
    """The checks' results, rewritten to ``out`` (JSON) and beside it (markdown) after every check."""

    def __init__(self, out: Path, device: str, scale: int, budget_s: float) -> None:
        self.out, self.started, self.budget_s = out, time.perf_counter(), budget_s
        self.result: dict = {"device": device, "device_name": device_name(device), "scale": scale,
                             "torch": torch.__version__, "checks": {}, "passed": True}  # fmt: skip
        self.write()

    def run(self, name: str, check: Callable[[], dict]) -> dict | None:
        """Run ``check`` (a dict with ``passed`` and its figures) unless the budget is spent."""
        elapsed = time.perf_counter() - self.started
        if elapsed > self.budget_s:
            record = {"passed": None, "skipped": f"the budget of {self.budget_s:.0f} s was spent"}
        else:
            began = time.perf_counter()
            try:
                record = check()
            except Exception as error:  # recorded; the next check still runs
                record = {"passed": False, "error": f"{type(error).__name__}: {error}",
                          "traceback": traceback.format_exc()[-3000:]}  # fmt: skip
            record["seconds"] = round(time.perf_counter() - began, 3)
        self.result["checks"][name] = record
        self.result["passed"] = all(r["passed"] is not False for r in self.result["checks"].values())
        print(f"{name:<44} {verdict(record):<8} {summary(record)}", flush=True)
        self.write()
        return record

    def write(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        for path, text in ((self.out, json.dumps(self.result, indent=2) + "\n"),
                           (self.out.with_suffix(".md"), markdown(self.result))):  # fmt: skip
            partial = path.with_name(path.name + ".partial")
            partial.write_text(text)
            os.replace(partial, path)  # a reader never sees half a file


def verdict(record: dict) -> str:
    return {True: "pass", False: "FAIL", None: "skipped"}[record["passed"]]


def summary(record: dict) -> str:
    """A check's figures in one line (its error where it raised)."""
    if "error" in record:
        return record["error"][:200]
    hidden = ("passed", "seconds", "traceback")
    return ", ".join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                     for key, value in record.items() if key not in hidden)[:300]  # fmt: skip


def markdown(result: dict) -> str:
    """The results as a table."""
    lines = [f"Device check on {result['device_name']} (torch {result['torch']}, layouts scaled by "
             f"1/{result['scale']}): {'every check that ran passed' if result['passed'] else 'a check FAILED'}.", "",
             "| check | result | figures | seconds |", "|---|---|---|---:|"]  # fmt: skip
    for name, record in result["checks"].items():
        lines.append(f"| {name} | {verdict(record)} | {summary(record).replace('|', '/')} | "
                     f"{record.get('seconds', 0):.1f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    import platform

    return f"CPU ({platform.machine()}, {os.cpu_count()} cores)"


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


# ---- layouts and data, made on the device ----


def llama_7b_shapes(scale: int) -> dict[str, tuple[int, ...]]:
    """Llama-2-7B's parameter shapes (transformers' config on the meta device, 291 tensors), each
    dimension divided by ``scale``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = max(1, 32 // scale)
    config = LlamaConfig(hidden_size=4096 // scale, intermediate_size=11008 // scale, vocab_size=32000 // scale,
                         num_hidden_layers=32, num_attention_heads=heads, num_key_value_heads=heads)  # fmt: skip
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return {name: tuple(param.shape) for name, param in model.named_parameters()}


def entries(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(math.prod(shape) for shape in shapes.values())


class Params(torch.nn.Module):
    """Parameters of the given shapes under their own names, drawn on ``device`` from ``seed``."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], device: str, seed: int,
                 dtype: torch.dtype = torch.float32) -> None:  # fmt: skip
        super().__init__()
        self.names = list(shapes)
        generator = torch.Generator(device=device).manual_seed(seed)
        for index, shape in enumerate(shapes.values()):
            weight = torch.randn(shape, generator=generator, device=device, dtype=dtype).mul_(0.02)
            self.register_parameter(f"p{index}", torch.nn.Parameter(weight))

    def named(self) -> list[tuple[str, torch.nn.Parameter]]:
        return list(zip(self.names, self.parameters(), strict=True))

    def draw_grads(self, seed: int) -> None:
        generator = torch.Generator(device=self.device).manual_seed(seed)
        for param in self.parameters():
            param.grad = torch.randn(param.shape, generator=generator, device=param.device, dtype=param.dtype)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def copy_to(self, device: str) -> Params:
        """The same weights and gradients on ``device``."""
        twin = Params.__new__(Params)
        torch.nn.Module.__init__(twin)
        twin.names = list(self.names)
        for index, param in enumerate(self.parameters()):
            copy = torch.nn.Parameter(param.detach().to(device))
            copy.grad = None if param.grad is None else param.grad.to(device)
            twin.register_parameter(f"p{index}", copy)
        return twin


class Stepper:
    """A strategy's masker and the optimizer it steers (if any) over ``params``."""

    def __init__(self, params: Params, strategy_name: str, settings: dict, access=None) -> None:
        self.params = params
        self.masker = GradientMasker(build_strategy(strategy_name, **settings),
                                     access or LocalGradientAccess(params.named()))  # fmt: skip
        # the optimizer the strategy steers, else AdamW; no weight decay, so that an entry moves
        # only where it was kept (at a first step a zero gradient has no moment)
        optimizer_cls = {"masked": MaskedAdamW, "sparse": SparseMaskedAdamW}.get(self.masker.strategy.optimizer_kind,
                                                                                torch.optim.AdamW)  # fmt: skip
        self.optimizer = optimizer_cls(params.parameters(), lr=LEARNING_RATE, weight_decay=0.0)

    def step(self, step: int) -> None:
        self.masker.apply(step, self.optimizer)
        self.optimizer.step()


def step_both(on_device: Params, on_cpu: Params, strategy_name: str, settings: dict,
              before: list[torch.Tensor]) -> GradientMasker:  # fmt: skip
    """The same strategy on the device and on the CPU, step by step on the same gradients (drawn on
    the device, copied), up to its first masked step (gps and grft: after a selection pass, which
    updates nothing); returns the device's masker. ``before``: the device's weights, taken again
    before the last step."""
    device, cpu = Stepper(on_device, strategy_name, settings), Stepper(on_cpu, strategy_name, settings)
    last = device.masker.strategy.first_masked_step(0)
    for step in range(last + 1):
        if step == last:
            for kept, param in zip(before, on_device.parameters(), strict=True):
                kept.copy_(param.detach())
        if step:
            on_device.draw_grads(100 + step)
            for mine, theirs in zip(on_device.parameters(), on_cpu.parameters(), strict=True):
                theirs.grad = mine.grad.to("cpu")
        device.step(step)
        cpu.step(step)
    return device.masker


def disagreement(first: Params, second: Params) -> tuple[int, int]:
    """Entries whose kept/dropped state differs (a zero gradient is dropped), and all entries."""
    pairs = zip(first.parameters(), second.parameters(), strict=True)
    differ = sum(int(((a.grad != 0).cpu() != (b.grad != 0).cpu()).sum()) for a, b in pairs)
    return differ, sum(p.numel() for p in first.parameters())


def rounding_allowance(total: int) -> int:
    return int(ROUNDING_DISAGREEMENT * total) + 16


# ---- the checks ----


def check_selection(shapes, device: str, scope: str, dtype: torch.dtype) -> dict:
    """gmt (grad mode) on the device against the same gradients on the CPU: thresholds and masks equal."""
    on_device = Params(shapes, device, 0, dtype)
    on_device.draw_grads(1)
    on_cpu = on_device.copy_to("cpu")
    settings = {"mask_ratio": 0.8, "mask_scope": scope, "gmt_mode": "grad"}
    device_masker, cpu_masker = Stepper(on_device, "gmt", settings).masker, Stepper(on_cpu, "gmt", settings).masker
    device_masker.apply(0)
    cpu_masker.apply(0)
    same_thresholds = torch.equal(device_masker._last_thresholds.cpu(), cpu_masker._last_thresholds.cpu())
    differ, total = disagreement(on_device, on_cpu)
    same_values = all(torch.equal(a.grad.cpu(), b.grad) for a, b in zip(on_device.parameters(), on_cpu.parameters()))
    return {"passed": bool(same_thresholds and differ == 0 and same_values), "entries": total,
            "same_thresholds": same_thresholds, "mask_entries_differing": differ}  # fmt: skip


def check_sharded_path(shapes, device: str) -> dict:
    """The search through a world-size-1 process group (``RankSum``: the sharded engines' path)
    against the local path: the same thresholds and mask."""
    import torch.distributed as dist

    local = Params(shapes, device, 0)
    local.draw_grads(1)
    sharded = local.copy_to(device)
    access = LocalGradientAccess(sharded.named())
    access.all_reduce = RankSum(None, torch.device(device))
    settings = {"mask_ratio": 0.8, "mask_scope": "global", "gmt_mode": "grad"}
    local_masker = Stepper(local, "gmt", settings).masker
    sharded_masker = Stepper(sharded, "gmt", settings, access).masker
    local_masker.apply(0)
    sharded_masker.apply(0)
    same_thresholds = torch.equal(local_masker._last_thresholds.cpu(), sharded_masker._last_thresholds.cpu())
    differ, total = disagreement(local, sharded)
    return {"passed": bool(same_thresholds and differ == 0), "backend": dist.get_backend(), "entries": total,
            "same_thresholds": same_thresholds, "mask_entries_differing": differ}  # fmt: skip


def check_update_mode(shapes, device: str) -> dict:
    """gmt_mode update through the masker and MaskedAdamW, the device against the CPU: dropped
    entries unchanged, kept ones within the rounding of the update, masks apart only by rounding."""
    on_device = Params(shapes, device, 0)
    on_device.draw_grads(1)
    on_cpu = on_device.copy_to("cpu")
    before = [param.detach().clone() for param in on_device.parameters()]
    settings = {"mask_ratio": 0.8, "mask_scope": "global", "gmt_mode": "update"}
    step_both(on_device, on_cpu, "gmt", settings, before)
    moved = [(param.detach() != start) for param, start in zip(on_device.parameters(), before)]
    moved_cpu = [(param.detach() != start.cpu()) for param, start in zip(on_cpu.parameters(), before)]
    differ = sum(int((a.cpu() != b).sum()) for a, b in zip(moved, moved_cpu))
    total = sum(m.numel() for m in moved)
    both = [(a.cpu() & b) for a, b in zip(moved, moved_cpu)]
    error = max(float((p.detach().cpu() - q.detach())[k].abs().max()) if k.any() else 0.0
                for p, q, k in zip(on_device.parameters(), on_cpu.parameters(), both))  # fmt: skip
    tolerance = UPDATE_TOLERANCE * LEARNING_RATE
    kept = sum(int(m.sum()) for m in moved) / total
    return {"passed": bool(differ <= rounding_allowance(total) and error <= tolerance), "entries": total,
            "kept_fraction": kept, "moved_entries_differing": differ, "kept_max_abs_difference": error,
            "tolerance": tolerance}  # fmt: skip


def check_strategy(shapes, device: str, label: str) -> dict:
    """Masked steps of a strategy up to its first masked one: the entries its step moves are as many
    as it asks to keep (and its dense ones), on the device as on the CPU."""
    name, settings = STRATEGY_SETTINGS[label]
    on_device = Params(shapes, device, 0)
    on_device.draw_grads(1)
    on_cpu = on_device.copy_to("cpu")
    before = [param.detach().clone() for param in on_device.parameters()]
    masker = step_both(on_device, on_cpu, name, settings, before)
    moved = [(p.detach() != b) for p, b in zip(on_device.parameters(), before)]
    moved_cpu = [(p.detach() != b.cpu()) for p, b in zip(on_cpu.parameters(), before)]
    dense = masker.strategy.dense
    kept = sum(int(m.sum()) for m, is_dense in zip(moved, dense) if not is_dense)
    asked = masker.strategy.target_kept_entries()
    total = sum(m.numel() for m in moved)
    differ = sum(int((a.cpu() != b).sum()) for a, b in zip(moved, moved_cpu))
    as_asked = asked is None or abs(kept - asked) <= rounding_allowance(total)
    return {"passed": bool(as_asked and differ <= rounding_allowance(total)), "moved_selectable": kept,
            "asked": asked, "entries": total, "moved_entries_differing": differ}  # fmt: skip


def check_resume_onto_cpu(shapes, device: str, label: str) -> dict:
    """A fixed mask chosen on the device, its state saved and restored into a run whose gradients are
    on the CPU (CPU optimizer offload): the next step masks there, with the same mask."""
    name, settings = STRATEGY_SETTINGS[label]
    on_device = Params(shapes, device, 0)
    on_device.draw_grads(1)
    on_cpu = on_device.copy_to("cpu")
    chooser = Stepper(on_device, name, settings)
    last = chooser.masker.strategy.first_masked_step(0)
    for step in range(last + 1):
        chooser.step(step)
    state = chooser.masker.state_dict()  # on the device, as a checkpoint saved there is read back

    def masks(stepper: Stepper) -> list[torch.Tensor]:
        numels = stepper.masker.access.local_numels()
        return [m.cpu() for m in stepper.masker.strategy.fixed_keep_masks(numels, stepper.params.device).values()]

    resumed = Stepper(on_cpu, name, settings)
    resumed.masker.load_state_dict(state)
    resumed.optimizer.set_fixed_masks(resumed.masker.access.optimizer_masks(
        resumed.masker.strategy.fixed_keep_masks(resumed.masker.access.local_numels(), torch.device("cpu"))))
    on_device.draw_grads(7)
    for mine, theirs in zip(on_device.parameters(), on_cpu.parameters(), strict=True):
        theirs.grad = mine.grad.to("cpu")
    resumed.step(last + 1)  # the first step after the resume, on the CPU's gradients
    devices = sorted({str(t.device) for t in resumed.masker.strategy.kept_indices if t is not None})
    same = all(torch.equal(a, b) for a, b in zip(masks(chooser), masks(resumed), strict=True))
    return {"passed": bool(same and devices == ["cpu"]), "state_devices_after_resume": devices, "same_mask": same}


def check_optimizer(device: str, kind: str, large_rows: int, columns: int) -> dict:
    """``MaskedAdamW`` (``fused`` or ``foreach``) or ``SparseMaskedAdamW`` on the device against the
    CPU's single-tensor step, on one tensor above 2^24 entries and a few small ones."""
    shapes = {"model.embed_tokens.weight": (large_rows, columns),
              **{f"model.layers.{i}.w.weight": (columns, 64) for i in range(4)}}  # fmt: skip
    on_device = Params(shapes, device, 0)
    on_device.draw_grads(1)
    on_cpu = on_device.copy_to("cpu")
    before = [param.detach().clone() for param in on_device.parameters()]
    generator = torch.Generator(device=device).manual_seed(2)
    keeps_device = [torch.rand(p.shape, generator=generator, device=device) < 0.2 for p in on_device.parameters()]
    for params, keeps, settings in ((on_device, keeps_device, _kernel(kind)),
                                    (on_cpu, [k.cpu() for k in keeps_device], {"foreach": False})):  # fmt: skip
        if kind == "sparse":
            optimizer = SparseMaskedAdamW(params.parameters(), lr=LEARNING_RATE, weight_decay=0.1)
            optimizer.set_fixed_masks({p: k.view(-1) for p, k in zip(params.parameters(), keeps)})
        else:
            optimizer = MaskedAdamW(params.parameters(), lr=LEARNING_RATE, weight_decay=0.1, **settings)
            optimizer.set_update_masks(dict(zip(params.parameters(), keeps)))
        optimizer.step()
    still = all(torch.equal(p.detach()[~k], b[~k]) for p, b, k in zip(on_device.parameters(), before, keeps_device))
    error = max(float((p.detach().cpu() - q.detach())[k.cpu()].abs().max())
                for p, q, k in zip(on_device.parameters(), on_cpu.parameters(), keeps_device))  # fmt: skip
    tolerance = UPDATE_TOLERANCE * LEARNING_RATE
    return {"passed": bool(still and error <= tolerance), "largest_tensor_entries": large_rows * columns,
            "dropped_unchanged": still, "kept_max_abs_difference": error, "tolerance": tolerance}  # fmt: skip


def _kernel(kind: str) -> dict:
    return {"fused": {"fused": True}, "foreach": {"foreach": True}, "sparse": {}}[kind]


def check_syncs(shapes, device: str, scope: str) -> dict:
    """The host waits of one mask step (after a warm-up step), against the pass chunks: CUDA's sync
    debug mode on a GPU, the op counter of scripts/count_syncs.py on the CPU."""
    params = Params(shapes, device, 0)
    strategy = build_strategy("gmt", mask_ratio=0.8, mask_scope=scope)
    masker = GradientMasker(strategy, LocalGradientAccess(params.named()))
    params.draw_grads(1)
    masker.apply(0)
    params.draw_grads(2)
    chunk = CUDA_CHUNK_ENTRIES if device.startswith("cuda") else CHUNK_ENTRIES
    # the pass chunks as the search cuts them (its own _chunks, on shapes alone: meta tensors)
    chunks = sum(1 for _ in _chunks([torch.empty(math.prod(s), device="meta") for s in shapes.values()], chunk))
    if device.startswith("cuda"):
        synchronize(device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                masker.apply(1)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = sum("synchroniz" in str(warning.message) for warning in caught)
    else:
        sys.path.insert(0, str(REPO / "scripts"))
        from count_syncs import SyncCounter, gpu_band_select

        counter = SyncCounter()
        with counter, gpu_band_select():  # the band's selection as a GPU takes it
            masker.apply(1)
        syncs = counter.total
    bound = 16 + 2 * chunks  # a few per step, and per chunk at most a nonzero and a table copy
    return {"passed": syncs <= bound, "syncs": syncs, "chunks": chunks, "bound": bound}


def check_model(device: str, scale: int, steps: int = 3) -> dict:
    """A random-init Llama-family model's forward and backward, then AdamW: plain against gmt (grad
    mode, global scope): the median step time and the peak memory of each. Passes when gmt's steps
    kept what they ask (20%) on a real model's gradients."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cuda = device.startswith("cuda")
    hidden = max(64, 2048 // scale)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 11 // 4, vocab_size=max(256, 32000 // scale),
                         num_hidden_layers=max(2, 16 // scale), num_attention_heads=max(2, 16 // scale),
                         num_key_value_heads=max(1, 4 // scale), max_position_embeddings=4096)  # fmt: skip
    batch, length = (8, 1024) if cuda else (2, 64)
    figures, kept = {}, None
    for label in ("plain", "gmt"):
        torch.manual_seed(0)
        with torch.device(device):  # initialised where it runs: no host copy of the weights
            model = LlamaForCausalLM(config)
        parameters = sum(p.numel() for p in model.parameters())
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=cuda or None)
        masker = None
        if label == "gmt":
            access = LocalGradientAccess(model.named_parameters())
            masker = GradientMasker(build_strategy("gmt", mask_ratio=0.8), access)
        generator = torch.Generator(device=device).manual_seed(1)
        tokens = torch.randint(0, config.vocab_size, (batch, length), generator=generator, device=device)
        times = []
        if cuda:
            torch.cuda.reset_peak_memory_stats(torch.device(device))
        for step in range(steps + 1):  # the first is a warm-up
            synchronize(device)
            began = time.perf_counter()
            with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda):
                loss = model(input_ids=tokens, labels=tokens).loss
            loss.backward()
            if masker is not None:
                masker.apply(step)
            optimizer.step()
            optimizer.zero_grad(set_to_none=False)
            synchronize(device)
            if step:
                times.append(time.perf_counter() - began)
        figures[label] = (sorted(times)[len(times) // 2],
                          torch.cuda.max_memory_allocated(torch.device(device)) if cuda else None)  # fmt: skip
        if masker is not None:
            kept = masker.pop_logs()["mask/kept_fraction"]
        del model, optimizer, masker
        if cuda:
            torch.cuda.empty_cache()
    (plain_s, plain_peak), (gmt_s, gmt_peak) = figures["plain"], figures["gmt"]
    record = {"parameters": parameters, "tokens": batch * length, "gmt_kept_fraction": kept,
              "plain_step_s": plain_s, "gmt_step_s": gmt_s, "step_time_ratio": gmt_s / plain_s}  # fmt: skip
    if plain_peak is not None:
        record |= {"plain_peak_gib": plain_peak / 2**30, "gmt_peak_gib": gmt_peak / 2**30,
                   "peak_memory_ratio": gmt_peak / plain_peak}  # fmt: skip
    record["passed"] = 0.2 <= kept <= 0.201  # entries tied at T are kept too
    return record


def check_deepspeed_zero3(device: str, scale: int) -> dict:
    """One ZeRO-3 step of a small Llama on one device with gmt's step hook: the step masks, and the
    entries that change are the kept ones (no weight decay, first step: a dropped entry has no moment)."""
    try:
        import deepspeed
    except Exception as error:  # not installed, or it cannot build its ops here
        return {"passed": None, "skipped": f"DeepSpeed does not import ({type(error).__name__}: {str(error)[:200]})"}
    from transformers import LlamaConfig, LlamaForCausalLM

    from gmt.masking import MaskedStep
    from gmt.masking.engines import DeepSpeedZero3Access
    from gmt.masking.prepare import unwrap_optimizer

    cuda = device.startswith("cuda")
    hidden = max(64, 1024 // scale)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 2, vocab_size=max(256, 8192 // scale),
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    ds_config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
                 "zero_optimization": {"stage": 3}, "bf16": {"enabled": cuda}, "gradient_clipping": 0.0,
                 "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False}  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    access = DeepSpeedZero3Access(engine.optimizer, engine.module.named_parameters())
    masker = GradientMasker(build_strategy("gmt", mask_ratio=0.8), access)
    step = MaskedStep(masker, unwrap_optimizer(engine.optimizer), 0, engine_hooked=True, engine_skips=True)
    hooked = access.install_step_hook(lambda: step.mask(0))
    generator = torch.Generator(device=engine.device).manual_seed(1)
    tokens = torch.randint(0, config.vocab_size, (2, 32), generator=generator, device=engine.device)
    loss = engine(input_ids=tokens, labels=tokens).loss
    engine.backward(loss)
    engine.step()
    kept = masker.pop_logs().get("mask/kept_fraction")
    changed = total = 0
    for name, param in engine.module.named_parameters():
        with deepspeed.zero.GatheredParameters([param]):
            after = param.detach().float().cpu()
        changed += int((after != before[name].float()).sum())
        total += after.numel()
    changed_fraction = changed / total
    passed = bool(hooked and kept is not None and 0.9 * kept <= changed_fraction <= kept + 1e-3)
    return {"passed": passed, "hooked": hooked, "kept_fraction": kept, "changed_fraction": changed_fraction}


def init_process_group(device: str) -> None:
    """A world-size-1 process group (NCCL on a GPU, gloo on the CPU), for the sharded and DeepSpeed checks."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1"})  # DeepSpeed reads them; main() restores them  # fmt: skip
    store = Path(tempfile.mkdtemp(prefix="gmt-device-check-")) / "store"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", init_method=f"file://{store}",
                            rank=0, world_size=1)  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--scale", type=int, default=None,
                        help="divide every dimension of the layouts by this (default 2 on a GPU, 32 on the CPU)")
    parser.add_argument("--budget_s", type=float, default=270.0,
                        help="start no check after this many seconds (default: 4.5 minutes, inside a 5-minute slot)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "gpu_check.json")
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no GPU here (torch.cuda.is_available() is False); --device cpu runs the "
                 "same checks on the CPU")  # fmt: skip
    scale = args.scale or (2 if cuda else 32)
    report = Report(args.out, args.device, scale, args.budget_s)
    environment = {name: os.environ.get(name) for name in PROCESS_GROUP_ENVIRONMENT}
    try:
        selection = llama_7b_shapes(scale)  # 1.7B entries at scale 2
        small = llama_7b_shapes(scale * 4)  # 1/16 of it (105M entries at scale 2), where the CPU's side takes the time
        for dtype in (torch.float32, torch.bfloat16):
            for scope in SCOPES:
                report.run(f"selection {scope} {str(dtype).split('.')[-1]}",
                           lambda scope=scope, dtype=dtype: check_selection(small, args.device, scope, dtype))
        report.run("sharded path (world-size-1 group)", lambda: (init_process_group(args.device),
                                                                   check_sharded_path(small, args.device))[1])
        report.run("update mode through the masker", lambda: check_update_mode(small, args.device))
        for label in STRATEGY_SETTINGS:
            report.run(f"strategy {label}", lambda label=label: check_strategy(small, args.device, label))
        for label in ("gps", "grft", "gspf"):
            report.run(f"resume of {label} onto CPU gradients (offload)",
                       lambda label=label: check_resume_onto_cpu(small, args.device, label))
        rows, columns = ((1 << 24) // 4096 + 64, 4096) if cuda else ((1 << 24) // 4096 + 1, 4096)
        for kind in ("fused", "foreach", "sparse"):
            report.run(f"optimizer {kind} (a tensor above 2^24 entries)",
                       lambda kind=kind: check_optimizer(args.device, kind, rows, columns))
        for scope in SCOPES:
            report.run(f"syncs {scope}", lambda scope=scope: check_syncs(selection, args.device, scope))
        report.run("model step, gmt against plain", lambda: check_model(args.device, 1 if cuda else scale))
        report.run("DeepSpeed ZeRO-3 step", lambda: (init_process_group(args.device),
                                                     check_deepspeed_zero3(args.device, 1 if cuda else scale))[1])
    finally:  # leave the calling process as it was (the tests run this in theirs)
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        for name, value in environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    print(f"{'every check that ran passed' if report.result['passed'] else 'a check FAILED'}: {args.out}")
    return report.result


if __name__ == "__main__":
    raise SystemExit(0 if main()["passed"] else 1)
