"""Evaluation: the suites resolve to installed lm-eval tasks, the tiny suite scores a fine-tune
above its base, compare.py writes its table and plot, plot_mask.py draws the mask heatmap."""

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from conftest import REPO
from gmt.cli import check_eval_settings
from gmt.config import GMTScriptArguments
from gmt.evaluation import SUITES, evaluate_checkpoint, load_suite, resolve_tasks, task_manager

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def manager(tiny_assets):
    return task_manager(tiny_assets / "data/sft/test.jsonl")


@pytest.mark.parametrize("name", SUITES)
def test_suites_resolve_to_installed_tasks(manager, name):
    suite = load_suite(name)
    tasks = resolve_tasks(suite, manager)  # task lookup only, no data download
    assert tasks == [task for task, _ in suite.tasks] and tasks
    assert suite.executes_code == (name == "code")


def test_a_task_the_harness_lacks_is_named(manager):
    suite = load_suite("general")
    broken = replace(suite, tasks=(*suite.tasks, ("tydiqa", 1)))
    with pytest.raises(ValueError, match="tydiqa"):
        resolve_tasks(broken, manager)


def test_code_suite_needs_the_explicit_opt_in(tiny_assets):
    with pytest.raises(PermissionError, match="allow_code_execution"):
        evaluate_checkpoint(tiny_assets / "base", "code")
    with pytest.raises(ValueError, match="eval_suite 'code'"):
        check_eval_settings(GMTScriptArguments(dataset_name="x", eval_suite="code"))
    with pytest.raises(ValueError, match="eval_limit"):
        check_eval_settings(GMTScriptArguments(dataset_name="x", eval_limit=5))


@pytest.fixture(scope="module")
def scored_assets(tmp_path_factory):
    """A base that knows some arithmetic (600 pretraining steps) and a short SFT of it."""
    from test_sft_trainer import train

    from gmt.tiny import TinySettings, ensure_tiny_assets

    settings = TinySettings(pretrain_steps=600, sft_train_examples=2000, sft_test_examples=64,
                            dpo_train_examples=16, dpo_test_examples=16)  # fmt: skip
    assets = ensure_tiny_assets(tmp_path_factory.mktemp("gmt-tiny-scored"), settings)
    out = tmp_path_factory.mktemp("tuned")
    trainer = train(assets, out, mask_strategy="gmt", mask_ratio=0.2, max_steps=400, per_device_train_batch_size=16,
                    logging_steps=50)  # fmt: skip
    trainer.save_model(str(out / "model"))
    return assets, out / "model"


def test_tiny_suite_scores_the_fine_tune_above_its_base(scored_assets, tmp_path):
    assets, tuned = scored_assets
    data = assets / "data/sft/test.jsonl"
    base = evaluate_checkpoint(assets / "base", "tiny", tiny_data=data, output_dir=tmp_path / "base")
    after = evaluate_checkpoint(tuned, "tiny", tiny_data=data, output_dir=tmp_path / "tuned")
    assert after["score"] > base["score"]
    assert after["score"] > 0.05
    written = json.loads((tmp_path / "tuned" / "lm_eval_tiny.json").read_text())
    assert written["results"]["gmt_tiny_arith"]["exact_match,answer"] == after["score"]
    assert "| gmt_tiny_arith | exact_match,answer |" in (tmp_path / "tuned" / "eval_tiny.md").read_text()


@pytest.fixture(scope="module")
def smoke(tiny_assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    command = [sys.executable, "scripts/compare.py", "--smoke", "--model", str(tiny_assets / "base"),
               "--data", str(tiny_assets / "data/sft"), "--out", str(out)]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_compare_smoke_writes_table_and_plot(smoke):
    table = (smoke / "compare.md").read_text()
    assert "| full | 1 |" in table and "| gmt-grad-0.5 | 1 |" in table
    rows = json.loads((smoke / "compare.json").read_text())["rows"]
    assert [row["method"] for row in rows] == ["full", "gmt-grad-0.5"]
    kept = {row["method"]: row["kept_fraction"] for row in rows}
    assert kept["full"] == 1.0 and kept["gmt-grad-0.5"] == pytest.approx(0.5, abs=0.01)
    assert (smoke / "compare.png").stat().st_size > 10_000
    # eval_suite ran after training, beside each checkpoint.
    assert (smoke / "runs/full/seed0/eval/lm_eval_tiny.json").is_file()


def test_compare_resumes_without_rerunning(smoke, tiny_assets):
    results = sorted(smoke.glob("runs/*/seed0/result.json"))
    stamps = [path.stat().st_mtime_ns for path in results]
    command = [sys.executable, "scripts/compare.py", "--smoke", "--model", str(tiny_assets / "base"),
               "--data", str(tiny_assets / "data/sft"), "--out", str(smoke)]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [path.stat().st_mtime_ns for path in results] == stamps and len(results) == 2


def test_plot_mask_draws_the_heatmap_of_a_run(smoke, tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    from plot_mask import kept_matrix, log_history

    run = smoke / "runs/gmt-grad-0.5/seed0"
    layers, steps, matrix = kept_matrix(log_history(run))
    assert layers[0] == "model.embed_tokens" and layers[-1] == "lm_head" and "model.layers.3" in layers
    assert all(0 <= value <= 1 for row in matrix for value in row) and len(steps) == len(matrix[0])
    out = tmp_path / "heatmap.png"
    result = subprocess.run([sys.executable, "scripts/plot_mask.py", str(run), "--out", str(out)], cwd=REPO,
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5_000
