"""Nothing on the mask path raises under ``torch.use_deterministic_algorithms(True)`` on CUDA
(``full_determinism: true``), for every strategy, scope and mode, on one process and on the
sharded code paths.

There is no GPU here, and on a CPU those ops do not raise; so every op between the masking and the
end of the optimizer step is recorded (a dispatch mode) and checked against the ops torch's
``use_deterministic_algorithms`` documents as raising on a CUDA tensor.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import TrainerCallback

from gmt.masking import ThresholdSearch
from gmt.trainer import GMTSFTTrainer


def raises_on_cuda(func, args, kwargs, out) -> str | None:
    """Why ``func`` would raise under deterministic algorithms on a CUDA tensor (None: it would not),
    after the list in torch.use_deterministic_algorithms' documentation (forward ops)."""
    name = func.overloadpacket.__name__.rstrip("_")
    if name == "cumsum" and isinstance(out, torch.Tensor) and (out.dtype.is_floating_point or out.dtype.is_complex):
        return f"cumsum of a {out.dtype} tensor"
    if name == "bincount" and (kwargs.get("weights") is not None or (len(args) > 1 and args[1] is not None)):
        return "bincount with weights"
    if name == "scatter_reduce" and "prod" in (kwargs.get("reduce"), *args[3:4]):
        return "scatter_reduce with reduce='prod'"
    if name == "median" and isinstance(out, tuple):
        return "median with indices"
    if name in {"histc", "put", "max_unpool1d", "max_unpool2d", "max_unpool3d"}:
        return name
    return None


class RaisingOps(TorchDispatchMode):
    """Records every op that would raise under deterministic algorithms on CUDA."""

    def __init__(self) -> None:
        super().__init__()
        self.found: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        reason = raises_on_cuda(func, args, kwargs, out)
        if reason:
            self.found.add(reason)
        return out


class RecordingTrainer(GMTSFTTrainer):
    """Records the ops from the start of the mask step (the clipping hook) to the end of the
    optimizer step. ``sharded``: the access sums its counts with an all-reduce (of one rank: the sum
    is the tensor itself), so the code paths of the sharded engines run."""

    sharded = False

    def __init__(self, *args, **kwargs) -> None:
        self.recorder = RaisingOps()
        self.recording = False
        super().__init__(*args, **kwargs)
        self.add_callback(StopRecording(self))

    def _gradient_access(self):
        access = super()._gradient_access()
        if self.sharded:
            access.all_reduce = lambda tensor: None
        return access

    def _bind(self) -> None:
        super()._bind()
        if hasattr(self.strategy, "search"):  # the sampled bracket, as on a large model, not the small path
            self.strategy.search = ThresholdSearch(sample_entries=256, chunk_entries=4096, small_entries=16)

    def _start(self) -> None:
        if not self.recording:
            self.recorder.__enter__()
            self.recording = True

    def _clip_grad_norm(self, model):
        self._start()
        return super()._clip_grad_norm(model)

    def _get_grad_norm(self, model, grad_norm=None):
        self._start()
        return super()._get_grad_norm(model, grad_norm=grad_norm)


class StopRecording(TrainerCallback):
    def __init__(self, trainer: RecordingTrainer) -> None:
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.trainer.recording:
            self.trainer.recorder.__exit__(None, None, None)
            self.trainer.recording = False


CASES = {
    "gmt-global-grad": dict(mask_strategy="gmt", mask_ratio=0.5),
    "gmt-tensor-update": dict(mask_strategy="gmt", mask_ratio=0.5, mask_scope="tensor", gmt_mode="update"),
    "gmt-layer-grad": dict(mask_strategy="gmt", mask_ratio=0.5, mask_scope="layer"),
    "random": dict(mask_strategy="random", mask_ratio=0.5),
    "magnitude-update": dict(mask_strategy="magnitude", mask_ratio=0.5, gmt_mode="update"),
    "gps": dict(mask_strategy="gps", gps_k=3, selection_steps=1),
    "grft": dict(mask_strategy="grft", grft_k=3, selection_steps=1),
    "gspf": dict(mask_strategy="gspf", gspf_warmup_steps=1, gspf_reselect_every=1),
}


@pytest.mark.parametrize("sharded", [False, True], ids=["one-process", "sharded"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_the_mask_path_runs_under_deterministic_algorithms(tiny_assets, tmp_path, case, sharded):
    from test_sft_trainer import train

    trainer_cls = type("Recording", (RecordingTrainer,), {"sharded": sharded})
    trainer = train(tiny_assets, tmp_path, trainer_cls=trainer_cls, max_steps=3, **CASES[case])
    assert trainer.recorder.found == set()
