"""What a GPU enforces on the mask path, checked on CPU, for every strategy, scope and mode, on one
process and on the sharded code paths (one training run per case, shared by the tests):

- nothing raises under ``torch.use_deterministic_algorithms(True)`` on CUDA (``full_determinism:
  true``): every op between the masking and the end of the optimizer step is recorded (a dispatch
  mode) and checked against the ops torch's ``use_deterministic_algorithms`` documents as raising
  on a CUDA tensor;
- every tensor the masking core makes names its device, and every tensor a collective sees is on
  the collective's device (NCCL refuses a CPU tensor; here the CPU is every device, so a tensor
  made without ``device=`` is what would land on the wrong one: docs/design.md, "Devices").
"""

import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import TrainerCallback

import gmt.masking
from gmt.masking import ThresholdSearch
from gmt.masking.comm import RankSum, backend_device, table_device
from gmt.trainer import GMTSFTTrainer

MASKING_CORE = Path(gmt.masking.__file__).parent
# Functions that make a tensor from nothing: on a CUDA run, without ``device=`` they make a CPU one.
FACTORIES = {
    torch.tensor, torch.as_tensor, torch.zeros, torch.ones, torch.empty, torch.full, torch.arange,
    torch.linspace, torch.eye, torch.rand, torch.randn, torch.randint, torch.randperm,
}  # fmt: skip


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


class DevicelessTensors(TorchFunctionMode):
    """Records where the masking core makes a tensor without naming its device, and marks it."""

    def __init__(self) -> None:
        super().__init__()
        self.found: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in FACTORIES and kwargs.get("device") is None:
            caller = sys._getframe(1)
            if Path(caller.f_code.co_filename).is_relative_to(MASKING_CORE):
                self.found.add(f"{Path(caller.f_code.co_filename).name}:{caller.f_lineno} {func.__name__}")
                out._made_without_device = True
        return out


class OneRankSum:
    """A collective of one rank (the sum is the tensor itself) on ``device``, as ``RankSum`` is;
    it records every tensor NCCL would refuse: one on another device or made without a device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.refused: list[str] = []

    def __call__(self, tensor: torch.Tensor) -> None:
        if tensor.device != self.device or getattr(tensor, "_made_without_device", False):
            self.refused.append(f"{tuple(tensor.shape)} {tensor.dtype} on {tensor.device}")


class RecordingTrainer(GMTSFTTrainer):
    """Records the ops from the start of the mask step (the clipping hook) to the end of the
    optimizer step, and the masking core's deviceless tensors over the whole run. ``sharded``: the
    access sums its counts with an all-reduce (``OneRankSum``), so the code paths of the sharded
    engines run."""

    sharded = False

    def __init__(self, *args, **kwargs) -> None:
        self.recorder = RaisingOps()
        self.recording = False
        super().__init__(*args, **kwargs)
        self.add_callback(StopRecording(self))

    def _gradient_access(self):
        access = super()._gradient_access()
        if self.sharded:
            access.all_reduce = OneRankSum(table_device(access.params))
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
    "full": dict(mask_strategy="full"),
    "gmt-global-grad": dict(mask_strategy="gmt", mask_ratio=0.5),
    "gmt-tensor-update": dict(mask_strategy="gmt", mask_ratio=0.5, mask_scope="tensor", gmt_mode="update"),
    "gmt-layer-grad": dict(mask_strategy="gmt", mask_ratio=0.5, mask_scope="layer"),
    "random": dict(mask_strategy="random", mask_ratio=0.5),
    "magnitude-update": dict(mask_strategy="magnitude", mask_ratio=0.5, gmt_mode="update"),
    "gps": dict(mask_strategy="gps", gps_k=3, selection_steps=1),
    "grft": dict(mask_strategy="grft", grft_k=3, selection_steps=1),
    "gspf": dict(mask_strategy="gspf", gspf_warmup_steps=1, gspf_reselect_every=1),
}
LAYOUTS = {"one-process": False, "sharded": True}


RUNS: dict[tuple[str, str], RecordingTrainer] = {}


def recorded(assets: Path, case: str, layout: str, run_dir: Path) -> RecordingTrainer:
    """One training run of ``case`` (3 steps of the tiny model) under every recorder, shared by
    the tests of this file."""
    from test_sft_trainer import train

    if (case, layout) in RUNS:
        return RUNS[case, layout]

    trainer_cls = type("Recording", (RecordingTrainer,), {"sharded": LAYOUTS[layout]})
    deviceless = DevicelessTensors()
    with deviceless:
        trainer = train(assets, run_dir, trainer_cls=trainer_cls, max_steps=3, **CASES[case])
    trainer.deviceless = deviceless.found
    RUNS[case, layout] = trainer
    return trainer


@pytest.fixture(params=[(case, layout) for case in sorted(CASES) for layout in LAYOUTS], ids="-".join)
def run(request, tiny_assets, tmp_path_factory) -> RecordingTrainer:
    case, layout = request.param
    return recorded(tiny_assets, case, layout, tmp_path_factory.mktemp(f"{case}-{layout}"))


def test_the_mask_path_runs_under_deterministic_algorithms(run):
    assert run.recorder.found == set()


def test_every_tensor_of_the_masking_core_names_its_device(run):
    assert run.deviceless == set()


def test_collectives_see_only_tensors_on_their_device(run):
    collective = run._masker.access.all_reduce
    assert collective is None or collective.refused == []


def test_a_rank_holding_no_tensor_builds_its_tables_on_the_collectives_device():
    # With entries, the tables go where they are (nothing moves a gradient); with none, on the
    # collective's device (meta here: any device other than the CPU), with the same shapes.
    collective = OneRankSum(torch.device("meta"))
    assert table_device([], collective) == torch.device("meta")
    assert table_device([None, None], collective) == torch.device("meta")
    assert table_device([None, torch.zeros(0)], collective) == torch.device("cpu")
    assert table_device([], None) == torch.device("cpu")


def test_the_communication_device_is_the_one_the_backend_sums_on():
    cuda = torch.device("cuda", 3)
    assert backend_device("nccl", cuda) == cuda  # the current GPU, wherever the gradients are
    assert backend_device("gloo", cuda) == torch.device("cpu")
    assert backend_device("nccl", None) is None
    assert backend_device("cpu:gloo,cuda:nccl", cuda) is None  # takes either: nothing to move


def test_rank_sum_over_a_real_gloo_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        rank_sum = RankSum()
        counts = torch.arange(4, dtype=torch.int64, device="cpu")
        rank_sum(counts)
        assert rank_sum.device == torch.device("cpu") and counts.tolist() == [0, 1, 2, 3]
    finally:
        dist.destroy_process_group()
