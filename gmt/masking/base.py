"""The interfaces of the masking core, in one place (docs/design.md says how they fit together).

- ``ParamLayout`` and ``AllReduce``: the trainable parameters in a fixed order, and how ranks sum.
- ``GradientAccess``: where an engine keeps the accumulated gradient Γ; one subclass per engine
  (``gmt.masking.engines``).
- ``MaskSelection``: the mask of one step, applied to Γ one parameter at a time.
- ``MaskStrategy``: how a method chooses its selection; declares its options (``Option``).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from gmt.masking.comm import table_device
from gmt.masking.options import DENSE_PARAMS, Option

AllReduce = Callable[[Tensor], None]  # sums a tensor across ranks, in place


@dataclass(frozen=True)
class ParamLayout:
    """The trainable parameters a strategy selects from, in a fixed order on every rank."""

    names: list[str]
    numels: list[int]  # entries of each full parameter, summed over ranks when sharded
    shapes: list[tuple[int, ...]] | None = None  # full (unsharded) shapes, for per-row rules


def keep_count(numel: int, mask_ratio: float) -> int:
    """Entries kept in a scope of ``numel`` entries: ``n - floor(r * n)`` (r is the fraction dropped)."""
    return numel - int(mask_ratio * numel)


def local_shard(tensor: Tensor) -> Tensor:
    """The local shard of a DTensor (a view), or the tensor itself."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


class GradientAccess:
    """Gradient access for one engine. Subclasses fill ``layout``, ``params`` and ``all_reduce``."""

    layout: ParamLayout
    params: list[Tensor]  # the model's trainable parameters, aligned with ``layout``
    all_reduce: AllReduce | None = None  # None: every rank already holds the whole Γ
    # The optimizer steps ``params`` themselves with ``grads()`` as their gradients (not flat
    # partitions of its own, as DeepSpeed does).
    steps_grads = False

    def grads(self) -> list[Tensor | None]:
        """The local gradient of each parameter, writable in place (None if it got none)."""
        return [param.grad for param in self.params]

    def commit(self) -> None:
        """Write the masked gradients back where the engine reads them (no-op for in-place views)."""

    def optimizer_masks(self, keeps: dict[int, Tensor], fill: bool = True) -> dict[Tensor, Tensor]:
        """Turn keep-masks of parameter indices into masks keyed by the optimizer's tensors.

        ``fill``: what flat optimizer partitions (DeepSpeed) hold where no parameter's mask lands
        (padding): kept for a one-step mask (its gradient is 0), dropped for a fixed one.
        """
        return {self.params[index]: keep for index, keep in keeps.items()}

    def local_offsets(self) -> list[int]:
        """Where each local gradient starts in its flattened full parameter (0 when unsharded)."""
        return [0] * len(self.params)

    def local_numels(self) -> list[int]:
        """Entries of each parameter held on this rank (the length of its local gradient)."""
        return [local_shard(param).numel() for param in self.params]

    def weights(self) -> list[Tensor]:
        """The local entries of each parameter, aligned with ``grads()`` (for scores such as |θ|)."""
        return [local_shard(param.detach()) for param in self.params]

    def install_step_hook(self, before_step: Callable[[], bool]) -> bool:
        """Run ``before_step`` (it masks Γ; True: skip this update) right before the engine's own
        optimizer step, where the engine steps inside ``backward`` (DeepSpeed). Returns whether it
        did; False means the trainer's hooks before clipping mask Γ (the default)."""
        return False


class MaskSelection(ABC):
    """The mask of one step, produced lazily one parameter at a time."""

    # True on the step a fixed mask was (re)chosen: the masker then hands it to the optimizer's
    # sparse state. One-step masks (top-k strategies) leave it False.
    changed: bool = False

    @abstractmethod
    def keep(self, index: int, grad: Tensor) -> Tensor | None:
        """Boolean keep-mask for parameter ``index`` (shaped like ``grad``), or None to keep all."""

    def apply(self, index: int, grad: Tensor, want_keep: bool) -> tuple[Tensor | int, Tensor | None]:
        """Zero the dropped entries of ``grad`` in place.

        Returns the number of kept entries and, when ``want_keep``, the keep-mask (None: all kept).
        """
        keep = self.keep(index, grad)
        if keep is None:
            return grad.numel(), None
        grad.mul_(keep)
        return keep.sum(), keep if want_keep else None

    def apply_all(self, grads: Sequence[Tensor | None], want_keep: bool) -> tuple[Tensor, dict[int, Tensor]]:
        """``apply`` to every gradient (None: a parameter without one).

        Returns the kept entries per parameter (float64, on the gradients' device; 0 for a missing
        gradient) and, when ``want_keep``, the keep-masks of the parameters that have one.
        """
        counts, keeps = _KeptCounts(len(grads)), {}
        for index, grad in enumerate(grads):
            if grad is None:
                continue
            kept, keep = self.apply(index, grad, want_keep)
            counts.add(index, kept)
            if keep is not None:
                keeps[index] = keep
        return counts.merged(grads), keeps

    def nonzero_grad_masks(self, grads: Sequence[Tensor | None]) -> list[int] | None:
        """The parameters whose keep-mask is exactly the nonzero entries of their gradient after
        ``apply`` (the others are kept whole), or None where the selection can't promise that."""
        return None

    def thresholds(self) -> Tensor | None:
        """Per-scope thresholds, for telemetry; None when the strategy has none."""
        return None


class _KeptCounts:
    """Kept entries per parameter over one step: counts known on the host, and device counts
    merged in at the end with one copy (no host sync)."""

    def __init__(self, size: int) -> None:
        self.on_host = [0.0] * size
        self.indices: list[int] = []
        self.tensors: list[Tensor] = []

    def add(self, index: int, kept: Tensor | int) -> None:
        if isinstance(kept, Tensor):
            self.indices.append(index)
            self.tensors.append(kept)
        else:
            self.on_host[index] = float(kept)

    def merged(self, grads: Sequence[Tensor | None]) -> Tensor:
        """One float64 tensor, on the gradients' device."""
        device = table_device(grads)
        merged = torch.tensor(self.on_host, dtype=torch.float64, device=device)
        if self.tensors:
            merged[torch.tensor(self.indices, device=device)] = torch.stack(self.tensors).to(torch.float64)
        return merged


class MaskStrategy(ABC):
    """Base class of every strategy: a name, its declared options, and ``select``.

    A subclass declares ``name``, a one-line ``summary`` (the CLI help of ``mask_strategy``), its
    ``options`` (inherited ones included: see ``declared_options``) and, where it has them, the
    ``frozen_params`` / ``dense_params`` it uses when the user gives none. Every declared option
    becomes an attribute of the same name, checked against its declaration; positional values
    follow the declaration order.

    ``dense_params`` is a regular expression (``re.search`` on parameter names, "" for none):
    matching parameters are never masked, they get every update (biases under gps, say).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()
    default_frozen_params: ClassVar[str] = ""
    default_dense_params: ClassVar[str] = ""
    # Selects inside weight matrices only (a tensor of 3 or more dimensions, such as fused MoE experts
    # [experts, out, in], is a stack of them); vectors (biases, norms) are dense.
    matrices_only: ClassVar[bool] = False
    fixed_masks: ClassVar[bool] = False  # the mask stays fixed for stretches of training (sparse optimizer state)
    mask_seeded: ClassVar[bool] = False  # the mask is drawn from the run's seed (recorded and checked on resume)

    def __init__(self, *values: Any, dense_params: str | None = None, **options: Any) -> None:
        declared = self.declared_options()
        names = [option.name for option in declared]
        if len(values) > len(names):
            raise TypeError(f"mask_strategy {self.name!r} takes at most {len(names)} option values ({names})")
        for name in options:
            if name not in names:
                raise ValueError(
                    f"{name} is not an option of mask_strategy {self.name!r}; its options: {', '.join(names) or 'none'}"
                )
        given = {**dict(zip(names, values)), **options}
        for option in declared:
            value = given.get(option.name, option.default)
            option.check(value)
            setattr(self, option.name, value)
        self.dense_params = self.default_dense_params if dense_params is None else dense_params
        DENSE_PARAMS.check(self.dense_params)

    @classmethod
    def declared_options(cls) -> tuple[Option, ...]:
        """Every option of this strategy, base classes' first, each declared once."""
        declared: dict[str, Option] = {}
        for klass in reversed(cls.__mro__):
            for option in vars(klass).get("options", ()):
                declared[option.name] = option
        return tuple(declared.values())

    @classmethod
    def from_args(cls, args: Any) -> MaskStrategy:
        """Build from parsed arguments (a gmt config): every declared option is read by its name."""
        return cls(**cls.options_from(args))

    @classmethod
    def options_from(cls, args: Any) -> dict[str, Any]:
        """The constructor's keyword arguments from parsed arguments: the declared options and ``dense_params``."""
        return {**{option.name: getattr(args, option.name) for option in cls.declared_options()},
                "dense_params": args.dense_params}  # fmt: skip

    def dense_phase_steps(self, mask_start_step: int) -> int:
        """Optimizer steps at the start of training that update every entry before the mask starts:
        those before ``mask_start_step`` (a strategy with a warm-up of its own adds it)."""
        return mask_start_step

    def first_masked_step(self, mask_start_step: int) -> int:
        """The first optimizer step whose update is masked (steps before it are dense, or a
        selection pass that updates nothing)."""
        return self.dense_phase_steps(mask_start_step)

    @property
    def optimizer_kind(self) -> str:
        """What the optimizer must be: ``any`` (the configured one), ``masked`` (``MaskedAdamW``,
        which leaves dropped entries alone) or ``sparse`` (``SparseMaskedAdamW``, state for kept
        entries only)."""
        return "sparse" if self.fixed_masks else "any"

    def setup(self, access: GradientAccess, total_steps: int = 0) -> None:
        """Called at the start of every training run, with the engine's view of the parameters to
        mask and the run's optimizer steps; (re)sets the strategy's state."""
        self.access = access
        self.layout = access.layout
        self.all_reduce = access.all_reduce
        self.total_steps = total_steps
        pattern = re.compile(self.dense_params) if self.dense_params else None
        self.dense = [bool(pattern and pattern.search(name)) for name in self.layout.names]
        if self.matrices_only:
            shapes = self.layout.shapes or [()] * len(self.layout.names)
            self.dense = [dense or len(shape) < 2 for dense, shape in zip(self.dense, shapes)]

    def target_kept_entries(self) -> int | None:
        """Selectable entries the strategy keeps at a masked step, as its settings ask (after
        ``setup``); None where it keeps them all (the start table reports it; gmt.summary)."""
        return None

    @abstractmethod
    def select(self, grads: Sequence[Tensor | None], step: int) -> MaskSelection | None:
        """Choose the mask for optimizer step ``step`` from the accumulated gradients (None: keep all).

        A strategy that returns a selection must refuse a Γ that holds NaN or inf, on every rank
        together (``gmt.masking.finite.check_finite``, or a search that checks on its way): the
        masker checks Γ itself only when nothing is masked."""

    def fixed_keep_masks(self, local_numels: Sequence[int], device: torch.device) -> dict[int, Tensor] | None:
        """The flat keep-mask of every parameter under the current fixed mask (None: no fixed mask
        now), as the optimizer's sparse state must hold it."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """State that must survive a checkpoint (fixed masks, generators, scores)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 (stateless by default)
        """Restore what ``state_dict`` returned."""
