"""Every shipped recipe parses with gmt's own parser, every accelerate config loads, and the SLURM
launcher builds the per-node command from SLURM's variables."""

import importlib
import os
import subprocess
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig

from conftest import REPO
from gmt.config import SCRIPTS
from gmt.standins.recipes import script_for

TRAINING_RECIPES = sorted(p for p in (REPO / "recipes").glob("*/*.yaml") if p.parent.name != "accelerate")
ACCELERATE_CONFIGS = sorted((REPO / "recipes/accelerate").glob("*.yaml"))
# The offline recipes (the tiny model, SmolLM2 converted from its package) run for real in their own
# tests (tests/test_smollm2.py); the GPU recipes run on stand-ins.
OFFLINE = ("tiny", "smollm2-135m")
GPU_RECIPES = [recipe for recipe in TRAINING_RECIPES if recipe.parent.name not in OFFLINE]


@pytest.mark.parametrize("recipe", TRAINING_RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_parses(recipe):
    # bf16 is forced off: this machine has no GPU; every other key must be a known setting.
    parser = importlib.import_module(SCRIPTS[script_for(recipe)].module).make_parser()
    script_args, training_args, model_args = parser.parse_args_and_config(["--config", str(recipe), "--bf16", "false"])
    assert model_args.model_name_or_path and script_args.dataset_name
    assert training_args.mask_strategy in ("gmt", "full")
    assert training_args.output_dir.startswith("outputs/")
    first_lines = recipe.read_text().splitlines()[:4]
    assert any(f" {script_for(recipe)} " in line for line in first_lines), "a recipe starts with its command"


@pytest.mark.parametrize("recipe", GPU_RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_logging_backends_come_with_the_gpu_extra(recipe):
    # The Trainer refuses a report_to backend that is not installed, before training.
    import tomllib
    import yaml
    from transformers.integrations import get_available_reporting_integrations

    report_to = yaml.safe_load(recipe.read_text()).get("report_to", "none")
    backends = [report_to] if isinstance(report_to, str) else list(report_to)
    gpu_extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    for backend in set(backends) - {"none"}:
        assert any(requirement.startswith(backend) for requirement in gpu_extra), backend
        assert backend in get_available_reporting_integrations(), backend  # installed by the test extra too


@pytest.mark.parametrize("config", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_config_loads(config):
    cluster = ClusterConfig.from_yaml_file(str(config))
    assert cluster.num_processes >= 2
    if cluster.distributed_type == "DEEPSPEED":
        assert cluster.deepspeed_config["zero_stage"] in (2, 3)
        assert "optimizer" not in cluster.deepspeed_config  # gmt_mode update needs the Trainer's AdamW


def test_slurm_launcher_builds_the_node_command():
    env = {**os.environ, "GMT_DRY_RUN": "1", "SLURM_NNODES": "4", "MASTER_ADDR": "node-a", "GPUS_PER_NODE": "8"}
    result = subprocess.run(
        ["bash", "scripts/launch.slurm", "recipes/llama3-8b/sft_math_gmt.yaml", "--mask_ratio", "0.4"],
        cwd=REPO, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    command = result.stdout.split()
    assert command[:4] == ["accelerate", "launch", "--config_file", "recipes/accelerate/zero3_multinode.yaml"]
    expected = {"--num_machines": "4", "--num_processes": "32", "--machine_rank": "$SLURM_PROCID",
                "--main_process_ip": "node-a", "--main_process_port": "29500"}  # fmt: skip
    for flag, value in expected.items():
        assert command[command.index(flag) + 1] == value
    assert command[-5:] == ["gmt/sft.py", "--config", "recipes/llama3-8b/sft_math_gmt.yaml", "--mask_ratio", "0.4"]
    assert Path(REPO / command[command.index("--config_file") + 1]).exists()


def test_slurm_launcher_passes_every_override_through_unchanged(tmp_path):
    # Each node runs the command in its own shell (srun ... bash -c): run it the same way, with an
    # activation file that stands in for accelerate and prints the arguments it gets.
    activate = tmp_path / "my env" / "activate"
    activate.parent.mkdir()
    activate.write_text('accelerate() { echo ACTIVATED; printf "%s\\n" "$@"; }\n')
    overrides = ["--frozen_params", "embed_tokens|lm_head", "--run_name", "a b's \"quoted\" run", "--seed", "$HOME"]
    env = {**os.environ, "GMT_DRY_RUN": "1", "SLURM_NNODES": "2", "MASTER_ADDR": "node-a"}
    env["GMT_ACTIVATE"] = str(activate)
    recipe = "recipes/llama3-8b/sft_math_gmt.yaml"
    printed = subprocess.run(["bash", "scripts/launch.slurm", recipe, *overrides], cwd=REPO, env=env,
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    node = subprocess.run(["bash", "-c", printed], cwd=REPO, env={**env, "SLURM_PROCID": "1"}, capture_output=True,
                          text=True, check=True).stdout.splitlines()  # fmt: skip
    assert node[0] == "ACTIVATED"
    assert node[node.index("--machine_rank") + 1] == "1"  # expanded on the node, not by the launcher
    assert node[-3 - len(overrides) :] == ["gmt/sft.py", "--config", recipe, *overrides]


def test_readme_commands_score_the_folders_the_recipes_write():
    import re

    import yaml

    written = {yaml.safe_load(recipe.read_text())["output_dir"] for recipe in TRAINING_RECIPES}
    docs = [REPO / "README.md", *(REPO / "docs").glob("*.md")]
    scored = {path for doc in docs for path in re.findall(r"--model (outputs/\S+)", doc.read_text())}
    assert scored and scored <= written, sorted(scored - written)
