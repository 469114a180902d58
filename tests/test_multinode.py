"""Multi-node, on one host: scripts/launch.slurm's node command, run as two machines (machine_rank
0 and 1, one gloo process each, main address 127.0.0.1, ZeRO-3, c10d rendezvous) trains the tiny
recipe as one process does, so the multi-node launch and its arguments are exercised for real."""

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import yaml
from test_distributed import COMMON, FLIPS_ALLOWED, RECIPE, relative_distance, state

from conftest import REPO, logged


def listening(port: int) -> bool:
    """Whether a socket listens on ``port`` (read from /proc: a probing connect to a free local
    port can connect to itself, and would occupy the port)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                return True
    return False


def wait_for_port(port: int, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None and not listening(port):
        time.sleep(0.2)


def port_outside_the_ephemeral_range() -> int:
    """A port nothing listens on, below the range the kernel hands out to sockets bound to port 0
    (gloo's listeners in the tests running beside this one take those)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    candidates = [port for port in range(max(1024, low - 8000), low) if not listening(port)]
    return random.Random(os.getpid()).choice(candidates)


def node_command(tiny_assets: Path, out: Path, accelerate_config: Path, port: int) -> str:
    """launch.slurm's command for every node (its dry run), for 2 nodes of 1 process each."""
    env = {**os.environ, "SLURM_NNODES": "2", "GPUS_PER_NODE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "GMT_DRY_RUN": "1"}  # fmt: skip
    overrides = ["--model_name_or_path", str(tiny_assets / "base"), "--dataset_name", str(tiny_assets / "data/sft"),
                 "--output_dir", str(out), "--eval_suite", "none", *COMMON, "--gradient_accumulation_steps", "1",
                 "--ddp_backend", "gloo"]  # fmt: skip
    dry_run = subprocess.run(["bash", "scripts/launch.slurm", RECIPE, str(accelerate_config), *overrides], cwd=REPO,
                             env=env, capture_output=True, text=True, check=True)  # fmt: skip
    return dry_run.stdout.strip()


def test_two_machines_on_one_host_match_one_process(tiny_assets, tmp_path, shared_run):
    # The CPU ZeRO-3 config as a 2-machine one (what zero3_multinode.yaml sets for GPUs).
    config = yaml.safe_load((REPO / "recipes/accelerate/cpu_zero3.yaml").read_text())
    config["deepspeed_config"]["deepspeed_multinode_launcher"] = "standard"
    config |= {"num_machines": 2, "rdzv_backend": "c10d", "same_network": False}
    (tmp_path / "accelerate.yaml").write_text(yaml.safe_dump(config))
    port = port_outside_the_ephemeral_range()
    command = node_command(tiny_assets, tmp_path / "two", tmp_path / "accelerate.yaml", port)
    assert "--machine_rank $SLURM_PROCID" in command and "--num_machines 2" in command

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    machines = []
    for rank in (0, 1):  # each machine's output to files: a full pipe would stall the other machine
        logs = (tmp_path / f"machine{rank}.out").open("w"), (tmp_path / f"machine{rank}.err").open("w")
        rank_env = {**env, "SLURM_PROCID": str(rank)}
        machines.append(
            subprocess.Popen(["bash", "-c", command], cwd=REPO, env=rank_env, stdout=logs[0], stderr=logs[1])
        )
        if rank == 0:  # machine 0 hosts the rendezvous (on one host, the first agent up would)
            wait_for_port(port, machines[0])
    for rank, machine in enumerate(machines):
        machine.wait(timeout=600)
        assert machine.returncode == 0, (tmp_path / f"machine{rank}.err").read_text()[-3000:]
    main_stdout = (tmp_path / "machine0.out").read_text()  # machine_rank 0 prints the logs

    one_out, one = shared_run(RECIPE, tiny_assets / "base", tiny_assets / "data/sft", *COMMON, "--gmt_mode", "grad",
                              "--gradient_accumulation_steps", "2")  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    one_losses, two_losses = logged(one.stdout, "loss"), logged(main_stdout, "loss")
    assert len(one_losses) == len(two_losses) == 3
    for a, b in zip(one_losses, two_losses):
        assert abs(a - b) <= 1e-4 * abs(a)
    assert logged(one.stdout, "mask/kept_fraction") == logged(main_stdout, "mask/kept_fraction")
    base, w_one, w_two = state(tiny_assets / "base"), state(one_out), state(tmp_path / "two")
    assert relative_distance(w_two, w_one, base, leave_out=FLIPS_ALLOWED) <= 1e-4
