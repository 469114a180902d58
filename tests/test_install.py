"""The package as a user installs it (a wheel, not the clone): every documented command from
another folder, with the suites, task files and recipes the wheel carries."""

import os
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out),
                            str(REPO)], capture_output=True, text=True)  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    return next(out.glob("gmt-*.whl"))


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """A fresh environment with the wheel installed, and this one's dependencies (no network): a
    path entry to this environment's site-packages, which does not run its .pth files (so this
    clone's editable install stays out)."""
    env_dir = tmp_path_factory.mktemp("env")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    (env_dir / site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def test_the_wheel_carries_the_suites_tasks_and_recipes(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "gmt/_eval/suites/tiny.yaml" in names and "gmt/_eval/tasks/gmt_tiny_arith.yaml" in names
    assert "gmt/_recipes/tiny/sft_gmt.yaml" in names and "gmt/_recipes/templates/tulu.jinja" in names
    assert "gmt/mask_memory.json" in names  # gmt check's figures
    assert "gmt/compare/tiny_sweep.json" in names and "gmt/compare/cli.py" in names  # gmt compare's usual rates


def test_an_installed_gmt_scores_and_trains_from_another_folder(installed, tiny_assets, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": ""}

    def gmt(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(installed), "-m", "gmt.command", *arguments], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=900)  # fmt: skip

    where = subprocess.run([str(installed), "-c", "import gmt; print(gmt.__file__)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True)  # fmt: skip
    assert str(REPO) not in where.stdout  # the wheel's copy, not the clone
    test_rows = str(tiny_assets / "data" / "sft" / "test.jsonl")
    scored = gmt("eval", "--suite", "tiny", "--model", str(tiny_assets / "base"), "--limit", "8",
                 "--task_data", test_rows, "--output_dir", str(tmp_path / "scores"))  # fmt: skip
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert (tmp_path / "scores" / "lm_eval_tiny.json").is_file()
    trained = gmt("sft", "--config", "recipes/tiny/sft_gmt.yaml", "--model_name_or_path", str(tiny_assets / "base"),
                  "--dataset_name", str(tiny_assets / "data" / "sft"), "--output_dir", str(tmp_path / "run"),
                  "--max_steps", "2", "--eval_suite", "none", "--report_to", "none")  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (tmp_path / "run" / "model.safetensors").is_file()
    # the comparison plans a recipe the wheel carries, each method's grid centred on its usual rate
    # (docs/compare/sweep.json, which travels as gmt/compare/tiny_sweep.json)
    planned = gmt("compare", "--config", "recipes/tiny/sft_gmt.yaml", "--model", str(tiny_assets / "base"),
                  "--data", str(tiny_assets / "data" / "sft"), "--out", str(tmp_path / "compare"),
                  "--methods", "full", "lora", "--validation_rows", "32", "--plan")  # fmt: skip
    assert planned.returncode == 0, planned.stderr[-3000:]
    from gmt.compare.rates import sweep_grid, usual_multiples

    lora = sweep_grid("lora", 1e-3, None, usual_multiples(REPO / "docs" / "compare" / "sweep.json"), None)
    assert "on recipes/tiny/sft_gmt.yaml" in planned.stdout and lora != sweep_grid("lora", 1e-3, None, {}, None)
    assert f"lora: {', '.join(f'{rate:g}' for rate in lora)} (" in planned.stdout


def test_gmt_names_its_commands_and_suggests_for_a_typo():
    listed = subprocess.run([sys.executable, "-m", "gmt.command", "--help"], cwd=REPO, capture_output=True, text=True)
    assert listed.returncode == 0
    assert all(f"gmt {name}" in listed.stdout for name in ("sft", "dpo", "eval", "delta", "merge", "plot"))
    typo = subprocess.run([sys.executable, "-m", "gmt.command", "evl"], cwd=REPO, capture_output=True, text=True)
    assert typo.returncode == 2 and "unknown command 'evl' (did you mean eval?)" in typo.stderr
