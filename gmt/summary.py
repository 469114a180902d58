"""What a run says about its mask: a short table before the first step (the strategy and its
options, and how many entries are trainable, masked, dense and frozen, with what each pattern
matched) and a line after the last (the mean kept fraction and the entries the saved model changed).
Printed on the main process; the numbers also go to the Trainer's logs, so every ``report_to``
backend records them."""

from __future__ import annotations

import re
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from gmt.delta import changed_entries as changed_in
from gmt.masking import MaskStrategy, effective_frozen_params


def full_numel(param: torch.Tensor) -> int:
    """Entries of a parameter, whole (ZeRO-3 keeps an empty placeholder and the count in ``ds_numel``)."""
    return int(getattr(param, "ds_numel", param.numel()))


@dataclass(frozen=True)
class MaskSummary:
    """The entry counts of a run's start."""

    trainable: int
    masked: int
    dense: int
    frozen: int
    kept_target: int | None  # selectable entries a masked step keeps, as asked (None: all of them)
    pattern_matches: dict[str, tuple[str, int, int]]  # setting -> (pattern, tensors, entries)
    sparse_optimizer: bool  # SparseMaskedAdamW: state for the kept entries only, once the mask is chosen

    @property
    def optimizer_state_bytes(self) -> int:
        """The optimizer state in all: AdamW's two fp32 moments per trainable entry; for a fixed mask,
        16 bytes (an int64 index and two moments) per kept or dense entry once the mask is chosen
        (docs/strategies.md, "Sparse optimizer state")."""
        if self.sparse_optimizer and self.kept_target is not None:
            return 16 * (self.kept_target + self.dense)
        return 8 * self.trainable

    @property
    def optimizer_state(self) -> str:
        """The optimizer state, in words, as the start table says it."""
        size = f"about {self.optimizer_state_bytes / 2**20:,.1f} MiB in all"
        if self.sparse_optimizer and self.kept_target is not None:
            return f"an index and 2 fp32 moments per kept entry, {size} once the mask is chosen (SparseMaskedAdamW)"
        return f"2 fp32 moments per trainable entry, {size} (AdamW)"

    def logs(self) -> dict[str, float]:
        """The numbers for the Trainer's logs."""
        return {"gmt/entries_trainable": self.trainable, "gmt/entries_masked": self.masked,
                "gmt/entries_dense": self.dense, "gmt/entries_frozen": self.frozen}  # fmt: skip


def mask_summary(strategy: MaskStrategy, model: torch.nn.Module, frozen_by_pattern: list[str], args) -> MaskSummary:
    """The counts of a run whose ``strategy`` is set up (``strategy.layout``, ``strategy.dense``);
    ``frozen_by_pattern`` are the parameters ``frozen_params`` froze."""
    numels = {name: full_numel(param) for name, param in model.named_parameters()}
    layout = strategy.layout
    trainable = sum(layout.numels)
    dense = sum(numel for numel, is_dense in zip(layout.numels, strategy.dense, strict=True) if is_dense)
    if strategy.name == "full":  # nothing is selected: every entry is trained at every step
        dense = trainable
    matches = {}
    if strategy.name != "full":
        frozen_pattern = effective_frozen_params(args)
        if frozen_pattern:
            matches["frozen_params"] = (frozen_pattern, len(frozen_by_pattern),
                                        sum(numels[name] for name in frozen_by_pattern))  # fmt: skip
        dense_pattern = strategy.dense_params
        if dense_pattern:
            named = zip(layout.names, layout.numels, strict=True)
            hits = [numel for name, numel in named if re.search(dense_pattern, name)]
            matches["dense_params"] = (dense_pattern, len(hits), sum(hits))
    return MaskSummary(trainable, trainable - dense, dense, sum(numels.values()) - trainable,
                       strategy.target_kept_entries(), matches, strategy.optimizer_kind == "sparse")  # fmt: skip


def format_summary(strategy: MaskStrategy, summary: MaskSummary, args) -> str:
    """The table printed before the first step, with a warning line for a pattern that matches nothing."""
    options = ", ".join(f"{option.name} {getattr(args, option.name)!r}" for option in strategy.declared_options())
    start = f", masking from step {strategy.first_masked_step(args.mask_start_step)}" if strategy.name != "full" else ""
    lines = [f"gmt: mask_strategy {strategy.name!r}" + (f" ({options})" if options else "") + start, "",
             "| entries | count | share of the model |", "|---|---:|---:|"]  # fmt: skip
    total = summary.trainable + summary.frozen
    rows = [("trainable", summary.trainable), ("  masked (selectable)", summary.masked)]
    if summary.kept_target is not None:
        rows.append(("    kept at a masked step (as asked)", summary.kept_target))
    rows += [("  dense (always trained)", summary.dense), ("frozen", summary.frozen)]
    lines += [f"| {label} | {count:,} | {count / total:.1%} |" for label, count in rows]
    lines.append("")
    for setting, (pattern, tensors, entries) in summary.pattern_matches.items():
        lines.append(f"{setting} {pattern!r} matched {tensors} tensors, {entries:,} entries")
        if tensors == 0 and getattr(args, setting, None) is not None:  # a strategy's own default never warns
            lines.append(f"warning: {setting} {pattern!r} matches no trainable parameter name (check the regex)")
    lines.append(f"optimizer state: {summary.optimizer_state}")
    return "\n".join(lines)


def changed_entries(base: str | Path, tuned: str | Path) -> tuple[int, int] | None:
    """Entries of the saved model ``tuned`` that differ from ``base`` (both safetensors
    checkpoints: a local folder, or a hub id already in the local cache), compared one tensor at a
    time; with the entries compared. None where either has no safetensors weights."""
    from safetensors import safe_open

    base_files, tuned_files = _safetensors(base), _safetensors(tuned)
    if not base_files or not tuned_files:
        return None
    changed = compared = 0
    with ExitStack() as files:
        base_of = {}  # tensor name -> the open base file that holds it
        for file in base_files:
            handle = files.enter_context(safe_open(str(file), "pt"))
            base_of.update(dict.fromkeys(handle.keys(), handle))
        for file in tuned_files:
            handle = files.enter_context(safe_open(str(file), "pt"))
            for key in handle.keys():  # noqa: SIM118 (safe_open has no iteration)
                if key not in base_of:
                    continue
                tuned_tensor, base_tensor = handle.get_tensor(key), base_of[key].get_tensor(key)
                if base_tensor.shape != tuned_tensor.shape:
                    continue
                changed += int(changed_in(base_tensor.to(tuned_tensor.dtype), tuned_tensor).sum())
                compared += tuned_tensor.numel()
    return (changed, compared) if compared else None


def _safetensors(name: str | Path) -> list[Path]:
    path = Path(name)
    if not path.is_dir():
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(str(name), allow_patterns=["*.safetensors"], local_files_only=True))
        except Exception:  # not a hub id, or not in the local cache: nothing to compare with
            return []
    return sorted(path.glob("*.safetensors"))


def optimizer_state_bytes(optimizer) -> int:
    """Bytes of the tensors in this rank's optimizer state. ``optimizer`` may be wrapped (accelerate's
    ``AcceleratedOptimizer``, DeepSpeed's ZeRO optimizer): the innermost ``.optimizer`` holds the state."""
    from gmt.masking.sparse_optim import state_bytes

    while getattr(optimizer, "optimizer", None) is not None and optimizer.optimizer is not optimizer:
        optimizer = optimizer.optimizer
    return state_bytes(getattr(optimizer, "state", {}))

