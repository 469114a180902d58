"""Shared fixtures: a fast build of the tiny assets (barely pretrained: the mechanics, not quality)."""

import os
import re
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (README's test command runs the files side by side) the workers share the
# cores: each worker's torch, and what it launches, takes its share rather than every core.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    os.environ.setdefault("OMP_NUM_THREADS", _threads)
    os.environ.setdefault("MKL_NUM_THREADS", _threads)
warnings.filterwarnings("ignore", category=FutureWarning)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory) -> Path:
    from outcomes import FAST_ASSETS

    from gmt.tiny import ensure_tiny_assets

    return ensure_tiny_assets(tmp_path_factory.mktemp("gmt-tiny"), FAST_ASSETS)


# Training arguments of the in-process trainer tests: CPU, tiny, logged every step, and a constant
# learning rate without warm-up so that the first step already moves the weights.
TINY_TRAINING_ARGS = dict(
    bf16=False,
    activation_checkpointing=False,
    per_device_train_batch_size=4,
    learning_rate=1e-3,
    lr_scheduler_type="constant",
    max_length=96,
    report_to="none",
    save_strategy="no",
    logging_steps=1,
    seed=7,
    dataloader_num_workers=0,
    dataloader_pin_memory=False,
)


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# How tests launch gmt/sft.py: plain python, or one of these module launchers. The 2-process ones
# rendezvous on a port of this test process's own, not accelerate's default 29500, so that test
# processes side by side do not meet on one port.
ACCELERATE = ("-m", "accelerate.commands.launch", "--main_process_port", str(free_port()))
ACCELERATE_ONE_CPU = (*ACCELERATE, "--num_processes", "1", "--cpu")
ACCELERATE_CPU_ZERO3 = (*ACCELERATE, "--config_file", "recipes/accelerate/cpu_zero3.yaml")
ACCELERATE_CPU_ZERO2 = (*ACCELERATE, "--config_file", "recipes/accelerate/cpu_zero2.yaml")


def deepspeed_launcher(folder: Path, ds_config: dict) -> tuple[str, ...]:
    """``accelerate launch`` of 2 gloo CPU processes under the DeepSpeed config ``ds_config``
    (written to ``folder``, with an accelerate config that points at it)."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ds.json").write_text(json.dumps(ds_config))
    (folder / "accelerate.yaml").write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: DEEPSPEED\ndeepspeed_config:\n"
        f"  deepspeed_config_file: {folder / 'ds.json'}\n  zero3_init_flag: false\nmachine_rank: 0\n"
        "num_machines: 1\nnum_processes: 2\nrdzv_backend: static\nsame_network: true\nuse_cpu: true\n"
    )
    return (*ACCELERATE, "--config_file", str(folder / "accelerate.yaml"))


def torchrun_two_cpu() -> tuple[str, ...]:
    """torchrun with 2 processes on a free port (accelerate's own multi-CPU launcher expects mpirun;
    torchrun is what it runs for multi-GPU DDP)."""
    return ("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()))


def run_sft(
    recipe: str,
    model: Path,
    data: Path,
    output_dir: Path,
    *overrides: str,
    launcher: tuple[str, ...] = (),
    script: str = "gmt/sft.py",
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``script`` (gmt/sft.py or gmt/dpo.py) on ``recipe`` with model, data and output overridden
    (and no evaluation after training unless ``overrides`` set ``--eval_suite``); ``env`` adds
    environment variables."""
    command = [sys.executable, *launcher, script, "--config", recipe]
    command += ["--model_name_or_path", str(model), "--dataset_name", str(data), "--output_dir", str(output_dir)]
    if "--eval_suite" not in overrides:
        command += ["--eval_suite", "none"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([*command, *overrides], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory):
    """``run_sft`` run once a session for each set of arguments, as ``(output_dir, result)``: the
    one-process references that several engines' runs are compared with are trained once."""
    runs: dict[tuple, tuple[Path, subprocess.CompletedProcess]] = {}

    def run(recipe: str, model: Path, data: Path, *overrides: str) -> tuple[Path, subprocess.CompletedProcess]:
        key = (recipe, str(model), str(data), overrides)
        if key not in runs:
            out = tmp_path_factory.mktemp("shared-run")
            runs[key] = (out, run_sft(recipe, model, data, out, *overrides))
        return runs[key]

    return run


def first_log(trainer, key: str = "mask/kept_fraction") -> dict:
    """The first entry of a trainer's log history that holds ``key`` (the start-of-run summary
    comes before the first step's)."""
    return next(log for log in trainer.state.log_history if key in log)


def logged(stdout: str, key: str) -> list[float]:
    """Values of ``key`` in the Trainer's printed log dicts."""
    return [float(value) for value in re.findall(rf"'{re.escape(key)}': '?([^',}}]+)", stdout)]


@pytest.fixture(scope="session")
def standin_cache(tmp_path_factory) -> Path:
    """Where the session builds the stand-ins of the real setups (gmt.standins), once."""
    return tmp_path_factory.mktemp("gmt-standins")
