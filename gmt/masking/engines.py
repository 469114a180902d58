"""Engine adapters: where the accumulated gradient Γ of a step lives, and how ranks talk.

One small interface per engine. The masker asks an adapter for the parameter layout, the local
(writable) gradient of each parameter, and a sum-across-ranks for the small threshold histograms.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn

from gmt.masking.strategies import ParamLayout
from gmt.masking.threshold import AllReduce


class GradientAccess:
    """Gradient access for one engine. Subclasses fill ``layout``, ``params`` and ``all_reduce``."""

    layout: ParamLayout
    params: list[Tensor]  # what the optimizer updates, aligned with ``layout``
    all_reduce: AllReduce | None = None  # None: every rank already holds the whole Γ

    def grads(self) -> list[Tensor | None]:
        """The local gradient of each parameter, writable in place (None if it got none)."""
        return [param.grad for param in self.params]


class LocalGradientAccess(GradientAccess):
    """Single process and DDP: after the step's last backward every rank holds the whole,
    already averaged Γ in ``param.grad``, so no collective is needed."""

    def __init__(self, named_parameters: Iterable[tuple[str, nn.Parameter]]) -> None:
        trainable = [(name, param) for name, param in named_parameters if param.requires_grad]
        self.params = [param for _, param in trainable]
        self.layout = ParamLayout(
            names=[_strip_wrapper_prefix(name) for name, _ in trainable],
            numels=[param.numel() for param in self.params],
        )


def _strip_wrapper_prefix(name: str) -> str:
    # DDP and torch.compile wrap the model; report names as the user's model spells them.
    for prefix in ("module.", "_orig_mod."):
        while name.startswith(prefix):
            name = name[len(prefix) :]
    return name
