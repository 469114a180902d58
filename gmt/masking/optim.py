"""A masked AdamW step for ``gmt_mode: update``.

Zeroing a gradient entry does not freeze it: AdamW's momentum and weight decay still move it.
``MaskedAdamW`` takes one boolean keep-mask per parameter for the next step; an entry outside its
mask does not change at all in that step (no update, no decay, moments untouched). The step count
used for bias correction stays one per parameter tensor, as in torch's ``SparseAdam`` and TF's
``LazyAdam``: a per-entry count would double the optimizer state.

How: the masked step is torch's own AdamW kernel (fused, foreach or single-tensor, as configured)
over every entry, with the dropped entries' weight and moments copied aside before and written
back after. The kept entries therefore move exactly as plain AdamW moves them, bitwise, and the
cost is that kernel plus one copy aside and two integer operations on the bit patterns (the
putting back), each one ``_foreach`` call over a batch of tensors, not a Python loop of gathers
and scatters. Batches of ``chunk_entries`` stay in cache between the copy and the putting back:
large tensors are stepped a slice at a time, small ones together.

Without masks (or for parameters with no mask) the step is torch's own ``AdamW.step``, so an
unmasked run is bitwise the run a plain ``AdamW`` gives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor
from torch.optim.adamw import adamw

from gmt.masking.base import local_shard

CHUNK_ENTRIES = 1 << 18  # entries stepped per kernel call on the masked path: its copies (6 MiB) stay in cache
# On a GPU each batch costs a handful of kernel launches: batches of 16M entries (192 MiB of copies)
# keep a 1B-parameter step to ~60 of them.
CUDA_CHUNK_ENTRIES = 1 << 24
NONZERO_GRAD = object()  # a mask that is the gradient's nonzero entries (``set_update_masks``)
_MAGNITUDE_BITS = {16: 0x7FFF, 32: 0x7FFFFFFF, 64: 0x7FFFFFFFFFFFFFFF}  # all bits but the sign
_INTEGER_OF = {  # a float dtype's bits as an integer dtype of the same width
    torch.float32: torch.int32,
    torch.bfloat16: torch.int16,
    torch.float16: torch.int16,
    torch.float64: torch.int64,
}


class MaskedAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` that can restrict its next step to masked entries."""

    def __init__(self, params, *args, chunk_entries: int | None = None, **kwargs) -> None:
        """``chunk_entries``: entries per masked batch; None takes ``CHUNK_ENTRIES`` on CPU and
        ``CUDA_CHUNK_ENTRIES`` for parameters on a GPU."""
        super().__init__(params, *args, **kwargs)
        for group in self.param_groups:
            if group.get("amsgrad") or group.get("maximize"):
                raise ValueError("MaskedAdamW supports neither amsgrad nor maximize")
        self._update_masks: dict[Tensor, Tensor] = {}
        self._chunk_setting = chunk_entries
        self.chunk_entries = chunk_entries or CHUNK_ENTRIES
        self._buffers: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}

    def set_update_masks(self, masks: dict[Tensor, Tensor], nonzero_grad: Iterable[Tensor] = ()) -> None:
        """Restrict the next update of each ``param`` to ``masks[param]`` (bool, its shape), and of
        each parameter in ``nonzero_grad`` to the entries whose gradient is not zero.

        ``nonzero_grad`` is for a gradient masked by magnitude (kept: ``|g| >= T > 0``, dropped:
        zeroed): its nonzero entries are the mask, and reading them off the gradient inside the
        step costs less than building and passing a boolean mask per tensor.

        Parameters absent from both get the ordinary update. Each mask is used once, by the next
        step that updates its parameter (DeepSpeed steps its flat partitions one sub-group per
        ``step()`` call); setting new masks drops any unused ones.
        """
        self._update_masks = dict(masks)
        for param in nonzero_grad:
            self._update_masks[param] = NONZERO_GRAD

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):  # type: ignore[override]
        masks = self._update_masks
        if not masks:
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, state_steps = [], [], [], [], []
            has_complex = self._init_group(group, params, grads, exp_avgs, exp_avg_sqs, [], state_steps)
            on_gpu = bool(params) and params[0].device.type == "cuda"
            self.chunk_entries = self._chunk_setting or (CUDA_CHUNK_ENTRIES if on_gpu else CHUNK_ENTRIES)
            plain, masked = [], []
            for index, param in enumerate(params):
                keep = masks.pop(param, None)
                (plain if keep is None else masked).append((index, keep))
            lists = (params, grads, exp_avgs, exp_avg_sqs, state_steps)
            if plain:
                self._adamw(group, has_complex, *([values[i] for i, _ in plain] for values in lists))
            batch: list[tuple[Tensor, ...]] = []
            batch_entries = 0
            for index, keep in masked:
                step_count = state_steps[index]
                flats = [local_shard(values[index]).view(-1) for values in lists[:4]]
                numel = flats[0].numel()
                flat_keep = keep if keep is NONZERO_GRAD else keep.view(-1)
                if numel <= self.chunk_entries:  # whole: the kernel counts its step
                    pieces = [(*flats, step_count, flat_keep)]
                else:  # each slice steps a copy of the count (the kernel adds one to each tensor it gets)
                    chunk = self.chunk_entries
                    pieces = [
                        (
                            *(flat[start : start + chunk] for flat in flats),
                            step_count.clone(),
                            flat_keep if flat_keep is NONZERO_GRAD else flat_keep[start : start + chunk],
                        )
                        for start in range(0, numel, chunk)
                    ]
                for piece in pieces:
                    size = piece[0].numel()
                    if batch and (batch[0][0].dtype != piece[0].dtype or batch_entries + size > self.chunk_entries):
                        # a batch shares one dtype (bit width) and fits the reused buffers
                        self._masked_adamw(group, has_complex, batch)
                        batch, batch_entries = [], 0
                    batch.append(piece)
                    batch_entries += size
                if len(pieces) > 1:
                    step_count.add_(1)  # one step per tensor, however many slices
            if batch:
                self._masked_adamw(group, has_complex, batch)
        return loss

    def _masked_adamw(self, group: dict, has_complex: bool, batch: list[tuple[Tensor, ...]]) -> None:
        """AdamW on a batch of (param, grad, exp_avg, exp_avg_sq, step, keep) flat slices; the dropped
        entries of param and both moments are put back as they were.

        Every copy and fix-up is one ``_foreach`` call over the whole batch: a model has hundreds of
        small tensors, and a few Python-dispatched ops per tensor would cost more than the kernel.
        A batch fits in cache (``chunk_entries``)."""
        sizes = [entry[0].numel() for entry in batch]
        total = sum(sizes)
        changed = [entry[i] for i in (0, 2, 3) for entry in batch]  # params, then exp_avgs, then exp_avg_sqs
        saved = self._buffer("saved", batch[0][0], 3 * total, 3 * self.chunk_entries)
        dropped = self._dropped(batch, total)  # before the kernel: it reads the gradients
        torch._foreach_copy_(list(saved.split(sizes * 3)), changed)
        self._adamw(group, has_complex, *([entry[i] for entry in batch] for i in range(5)))
        # Integer arithmetic on the bit patterns, exact: x - (old - x) * dropped is old where dropped
        # (-1) and x where kept (0); the subtraction may wrap, the addition wraps back.
        bits = _INTEGER_OF[batch[0][0].dtype]
        difference = list(saved.view(bits).split(sizes * 3))
        current = [tensor.view(bits) for tensor in changed]
        torch._foreach_sub_(difference, current)
        torch._foreach_addcmul_(current, difference, dropped.split(sizes) * 3, value=-1)

    def _dropped(self, batch: list[tuple[Tensor, ...]], total: int) -> Tensor:
        """-1 where an entry of the batch is dropped, 0 where kept, as integers of the batch's width."""
        dtype = batch[0][0].dtype
        bits = _INTEGER_OF[dtype]
        if any(entry[5] is NONZERO_GRAD for entry in batch):
            grads = [entry[1] for entry in batch]
            spell_out = not all(entry[5] is NONZERO_GRAD for entry in batch) or grads[0].dtype != dtype
            if spell_out:  # mixed masks, or gradients of another width than the weights
                keeps = [grad != 0 if entry[5] is NONZERO_GRAD else entry[5] for grad, entry in zip(grads, batch)]
                return torch.cat(keeps).to(bits).sub_(1)
            # Dropped iff the gradient's magnitude bits are all zero (+0.0 or -0.0): x - 1 < 0 only
            # for x = 0, and an arithmetic shift spreads that sign over the word.
            dropped = self._buffer("dropped", batch[0][1], total, self.chunk_entries).view(bits)
            width = torch.finfo(dtype).bits
            if len(grads) > 1:
                torch.cat(grads, out=dropped.view(dtype))
                dropped.bitwise_and_(_MAGNITUDE_BITS[width])
            else:  # one slice: read it straight into the buffer
                torch.bitwise_and(grads[0].view(bits), _MAGNITUDE_BITS[width], out=dropped)
            return dropped.sub_(1).bitwise_right_shift_(width - 1)
        keep = torch.cat([entry[5] for entry in batch]) if len(batch) > 1 else batch[0][5]
        return keep.to(bits).sub_(1)

    def _buffer(self, use: str, like: Tensor, entries: int, reserve: int) -> Tensor:
        """A flat buffer of ``entries`` of ``like``'s dtype for ``use``, reused from step to step;
        allocated at ``reserve`` entries at least, so that a larger batch later need not reallocate."""
        key = (use, like.device, like.dtype)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < entries:
            buffer = torch.empty(max(entries, reserve), dtype=like.dtype, device=like.device)
            self._buffers[key] = buffer
        return buffer[:entries]

    def _adamw(self, group: dict, has_complex: bool, params, grads, exp_avgs, exp_avg_sqs, state_steps) -> None:
        """torch's functional AdamW with this group's settings, as ``AdamW.step`` calls it."""
        beta1, beta2 = group["betas"]
        adamw(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            [],
            state_steps,
            amsgrad=False,
            has_complex=has_complex,
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=False,
            foreach=group["foreach"],
            capturable=group["capturable"],
            differentiable=group["differentiable"],
            fused=group["fused"],
            grad_scale=getattr(self, "grad_scale", None),
            found_inf=getattr(self, "found_inf", None),
        )
