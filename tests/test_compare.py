"""gmt compare and its report: one smoke comparison (a sweep, final runs, table, plots) checked
from every side, resuming, the choice of rates on validation rows only, the claims' rules on known
numbers; gmt plot draws the mask heatmap of one of its runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


# The smoke comparison (22 launched processes) is marked slow; the quick suite keeps the logic tests
# below that need no runs (rate grids, resume refusals, the report's rules on known numbers).
@pytest.fixture(scope="module")
def smoke(tiny_assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    command = [sys.executable, "-m", "gmt.compare", "--smoke", "--model", str(tiny_assets / "base"),
               "--data", str(tiny_assets / "data/sft"), "--out", str(out), "--jobs", "2"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_compare_smoke_writes_table_and_plot(smoke):
    rows = json.loads((smoke / "compare.json").read_text())["rows"]
    assert [row["method"] for row in rows] == ["full", "gmt-grad-0.5", "lora"]
    kept = {row["method"]: row["kept_fraction"] for row in rows}
    assert kept["full"] == 1.0 and kept["gmt-grad-0.5"] == pytest.approx(0.5, abs=0.01) and kept["lora"] is None
    table = (smoke / "compare.md").read_text()
    full_rate = rows[0]["learning_rate"]
    assert all(f"| {row['method']} | {row['learning_rate']:g} ({row['learning_rate'] / full_rate:.3g}×) | 1 |" in table
               for row in rows)  # fmt: skip
    for name in ("compare.png", "sweep.png", "curve.png"):
        assert (smoke / name).stat().st_size > 10_000
    # eval_suite ran after training, beside each checkpoint (LoRA's: its adapter on the base); so did
    # the forgetting check.
    assert (smoke / "runs/final/lora/seed0/adapter_config.json").is_file()
    assert (smoke / "runs/final/lora/seed0/eval/lm_eval_tiny.json").is_file()
    base = json.loads((smoke / "compare.json").read_text())["base_equations"]
    assert f"pretraining equations (base {100 * base:.1f}%)" in table
    assert all(0 <= row["equations"] <= 1 for row in rows)
    assert (smoke / "runs/final/full/seed0/eval/lm_eval_tiny_equations.json").is_file()


@pytest.mark.slow
def test_compare_measures_optimizer_state_and_learning_curves(smoke, tiny_assets):
    from transformers import AutoModelForCausalLM

    rows = {row["method"]: row for row in json.loads((smoke / "compare.json").read_text())["rows"]}
    entries = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_assets / "base").parameters())
    # AdamW's two fp32 moments per entry, plus a step count per tensor; gmt's masked AdamW keeps them
    # dense; LoRA keeps them for its adapters only.
    assert 8 * entries <= rows["full"]["optimizer_state_bytes"] < 8 * entries + 4096
    assert rows["gmt-grad-0.5"]["optimizer_state_bytes"] == rows["full"]["optimizer_state_bytes"]
    assert rows["lora"]["optimizer_state_bytes"] < 0.2 * rows["full"]["optimizer_state_bytes"]
    # LoRA's merged adapter changes every entry of the linear layers it wraps, and nothing else (a
    # count the model's layout fixes, whatever the rounding).
    assert 0.5 < rows["lora"]["updated_fraction"] < rows["full"]["updated_fraction"]
    for row in rows.values():  # seed 0's checkpoints at each quarter, then the final model
        steps = [point["step"] for point in row["curve"]]
        assert steps == sorted(steps) and len(steps) >= 2 and steps[-1] == 5
        assert row["curve"][-1]["score"] == row["score_mean"]
        assert not list((smoke / "runs/final" / row["method"] / "seed0").glob("checkpoint-*"))  # scored, removed
    assert "| full | " in (smoke / "curve.md").read_text()


@pytest.mark.slow
def test_compare_report_judges_each_claim_from_the_tables(smoke, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- compare:start -->\nOLD-TABLE\n<!-- compare:end -->\nend\n")
    command = [sys.executable, "-m", "gmt.compare.report", "--tasks", f"smoke={smoke}", "--out",
               str(tmp_path / "report.md"), "--readme", str(readme)]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("end\n") and "OLD-TABLE" not in text
    rows = {row["method"]: row for row in json.loads((smoke / "compare.json").read_text())["rows"]}
    # the largest budget's row is the best mean score (a tie: the smaller optimizer state); a claim
    # about methods the smoke did not run says so
    best = max(rows, key=lambda method: (rows[method]["score_mean"], -rows[method]["optimizer_state_bytes"]))
    share = rows[best]["optimizer_state_bytes"] / rows["full"]["optimizer_state_bytes"]
    recommended = text.split("### What we recommend")[1].split("###")[0]
    assert [line for line in recommended.splitlines() if line.startswith("| ")][-1].startswith(
        f"| {share:.3g} | {best} |")
    assert "not run (random-0.5)" in text and "not run (gps)" in text
    assert "[report.md](report.md)" in text  # the README's summary links the tables
    report = (tmp_path / "report.md").read_text()
    assert recommended in report and f"| full | {rows['full']['learning_rate']:g} (1× full's) |" in report
    assert "| full | " in report.split("#### smoke")[1]  # the task's own tables


@pytest.mark.slow
def test_compare_chooses_each_rate_on_validation_rows_only(smoke, tiny_assets):
    train = (tiny_assets / "data/sft/train.jsonl").read_text().splitlines()
    held_out = (smoke / "data/validation.jsonl").read_text().splitlines()
    kept = (smoke / "data/train.jsonl").read_text().splitlines()
    assert len(held_out) == 16 and len(kept) == len(train) - 16 and not set(held_out) & set(kept)
    sweeps = json.loads((smoke / "sweep.json").read_text())["sweeps"]
    finals = json.loads((smoke / "compare.json").read_text())["runs"]
    for method, records in sweeps.items():
        assert sorted(r["learning_rate"] for r in records) == [1e-3, 3e-3]
        assert {r["scored_on"] for r in records} == {"validation.jsonl"}
        best = max(records, key=lambda r: (r["score"], -r["learning_rate"]))["learning_rate"]
        (final,) = [r for r in finals if r["method"] == method]
        assert final["learning_rate"] == best and final["scored_on"] == "test.jsonl"
    assert "| full |" in (smoke / "sweep.md").read_text()


def test_second_task_sweep_starts_at_each_methods_rate_on_the_first():
    from gmt.compare.cli import TINY
    from gmt.compare.rates import sweep_grid

    wide = TINY["lr_factors"]
    first_task = {"gps": [{"learning_rate": 0.03, "score": 0.16}, {"learning_rate": 0.09, "score": 0.04}],
                  "full": [{"learning_rate": 1e-3, "score": 0.3}, {"learning_rate": 3e-3, "score": 0.3}]}  # fmt: skip
    assert sweep_grid("gps", 1e-3, wide, {}, first_task) == [0.01, 0.03, 0.1]
    assert sweep_grid("full", 1e-3, wide, {}, first_task) == [3e-4, 1e-3, 3e-3]  # a tie: the lower rate
    # a method the first task did not sweep, or no first task: the grid of --lr_factors
    assert sweep_grid("lora", 1e-3, wide, {}, first_task) == sweep_grid("lora", 1e-3, wide, {}, None)
    assert sweep_grid("lora", 1e-3, wide, {}, None) == [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]


def test_a_recipes_grid_starts_at_its_rate_times_each_methods_usual_multiple():
    from gmt.compare.rates import sweep_grid, usual_multiples

    multiples = usual_multiples()  # what won each sweep on the tiny word problems (docs/compare/sweep.json)
    assert multiples["full"] == 1 and multiples["gps"] == 10 and round(multiples["lora"], 2) == 3.33
    # an 8B recipe's rate 2e-5: full around it, gps a decade up, lora half a decade up; one step either side
    assert sweep_grid("full", 2e-5, None, multiples, None) == [6e-6, 2e-5, 6e-5]
    assert sweep_grid("gps", 2e-5, None, multiples, None) == [6e-5, 2e-4, 6e-4]
    assert sweep_grid("lora", 2e-5, None, multiples, None) == [2e-5, 6e-5, 2e-4]
    assert sweep_grid("my-method", 2e-5, None, multiples, None) == [6e-6, 2e-5, 6e-5]  # unknown: 1x


def test_sweep_steps_default_to_a_third_of_the_recipe():
    from gmt.compare.rates import sweep_steps_for
    from gmt.compare.recipe import read_recipe

    tiny = read_recipe("recipes/tiny/sft_full.yaml")
    # 3600 rows after 400 are held out, 16 x 2 per step, 8 epochs: 904 steps (the tiny comparison's final runs)
    assert tiny.steps(3600, 1) == 904 and sweep_steps_for(904) == 300
    math = read_recipe("recipes/llama3-8b/sft_math_gmt.yaml")
    per_step = math.settings["per_device_train_batch_size"] * math.settings["gradient_accumulation_steps"] * 8
    assert per_step == 128 and math.steps(395_000, 8) == -(-395_000 // 128) * math.settings["num_train_epochs"]
    assert math.script == "gmt/sft.py" and read_recipe("recipes/llama2-7b/dpo_ultrafeedback_gmt.yaml").script == (
        "gmt/dpo.py")


def test_compare_refuses_to_resume_runs_of_another_length_or_settings(tmp_path):
    from gmt.compare.runs import Run, cached

    def run(steps: int, *overrides: str) -> Run:
        return Run("sweep", "full", 0, 1e-3, steps, str(tmp_path), train=["gmt/sft.py", *overrides])

    (tmp_path / "result.json").write_text(json.dumps({"max_steps": 300, "score": 0.1}))  # a run of an older gmt
    assert cached(run(300))["score"] == 0.1
    with pytest.raises(SystemExit, match="ran 300 steps, this comparison asks 600 steps"):
        cached(run(600))
    (tmp_path / "result.json").write_text(json.dumps({"max_steps": 300, "score": 0.1, "command": ["gmt/sft.py",
                                                      "--gps_k", "16"]}))  # fmt: skip
    assert cached(run(300, "--gps_k", "16"))["score"] == 0.1
    # the folder flag says how to treat the output folder, not how to train: a run made without it is the same run
    assert cached(run(300, "--overwrite_output_dir", "true", "--gps_k", "16"))["score"] == 0.1
    # the script as a module (gmt compare from an installed package) or the package's file is the same script
    module = Run("sweep", "full", 0, 1e-3, 300, str(tmp_path), train=["-m", "gmt.sft", "--gps_k", "16"])
    installed = Run("sweep", "full", 0, 1e-3, 300, str(tmp_path), train=["/site/gmt/sft.py", "--gps_k", "16"])
    assert cached(module)["score"] == cached(installed)["score"] == 0.1
    with pytest.raises(SystemExit, match="was trained with other settings"):
        cached(run(300, "--gps_k", "4"))


@pytest.mark.parametrize("setting, refusal", [("--sweep_around", "no such file"),
                                              ("--base_learning_rate", "must be above 0, got 0")])
def test_compare_refuses_a_bad_grid_setting_before_any_run(tiny_assets, tmp_path, setting, refusal):
    value = str(tmp_path / "no.json") if setting == "--sweep_around" else "0"
    command = [sys.executable, "-m", "gmt.compare", "--smoke", "--model", str(tiny_assets / "base"),
               "--data", str(tiny_assets / "data/sft"), "--out", str(tmp_path / "out"), setting, value]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and f"{setting} " in result.stderr and refusal in result.stderr
    assert not (tmp_path / "out").exists()  # nothing prepared, nothing trained


def test_compare_report_rules_on_known_numbers():
    from gmt.compare.claims import claims, recommendations, versus

    def row(method, score, std, kept=1.0, state=100, rate=1e-3):
        return {"method": method, "score_mean": score, "score_std": std, "kept_fraction": kept,
                "updated_fraction": kept, "optimizer_state_bytes": state, "learning_rate": rate}  # fmt: skip

    full = row("full", 0.42, 0.01)
    assert versus(row("a", 0.45, 0.02), full).startswith("holds")
    assert versus(row("a", 0.41, 0.03), full).startswith("within noise")  # 1 point below, std 3
    assert versus(row("a", 0.30, 0.01), full).startswith("does not hold")
    assert versus(row("a", 0.425, 0.02), full).startswith("holds, within noise")  # 0.5 points above, std 2
    rows = {"full": full, "gmt-grad-0.2": row("gmt-grad-0.2", 0.43, 0.02),
            "gmt-grad-0.5": row("gmt-grad-0.5", 0.42, 0.02), "gmt-grad-0.8": row("gmt-grad-0.8", 0.415, 0.02),
            "random-0.2": row("random-0.2", 0.44, 0.01),
            "random-0.5": row("random-0.5", 0.30, 0.01), "random-0.8": row("random-0.8", 0.40, 0.01),
            "gps": row("gps", 0.40, 0.01, kept=0.1, state=20, rate=3e-2),
            "grft": row("grft", 0.30, 0.01, kept=0.08, state=15, rate=1e-2),
            "lora": row("lora", 0.35, 0.01, state=9, rate=1e-2)}  # fmt: skip
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in claims({"t": rows}).splitlines()[2:]]
    table = dict(cells)
    assert table["GMT ≥ full SFT (gmt's best ratio)"].startswith("gmt-grad-0.2: holds")
    assert table["gradient-chosen ≥ random at ratio 0.2"].startswith("within noise")
    assert table["gradient-chosen ≥ random at ratio 0.5"].startswith("holds")
    assert table["GMT insensitive to the mask ratio"].startswith("holds")  # spread 1.5 points, std 2
    assert not any("update mode" in claim for claim in table)  # no update-mode pair ran
    rows |= {"gmt-update-0.97": row("gmt-update-0.97", 0.40, 0.01, kept=0.03),
             "random-update-0.97": row("random-update-0.97", 0.36, 0.02, kept=0.03)}  # fmt: skip
    table = dict([cell.strip() for cell in line.strip("|").split("|")] for line in claims({"t": rows}).splitlines()[2:])
    assert table["gradient-chosen ≥ random at ratio 0.97, update mode"].startswith("holds: 40.0 vs 36.0%")
    del rows["gmt-update-0.97"], rows["random-update-0.97"]
    assert table["gps near full fine-tuning with ≤ 10% of the entries"].startswith("holds")  # 95% of full's
    assert table["grft near full fine-tuning with ≤ 10% of the entries"].startswith("does not hold (below 90%")
    rows["gps"]["kept_fraction"] = 0.108  # a score near full's, but more than the claim's budget
    table = dict([cell.strip() for cell in line.strip("|").split("|")] for line in claims({"t": rows}).splitlines()[2:])
    assert table["gps near full fine-tuning with ≤ 10% of the entries"].startswith(
        "does not hold (trains more than 10%)")
    assert table["gspf near full fine-tuning with ≤ 10% of the entries"] == "not run (gspf)"
    # by optimizer state: lora (0.09 of full's), then gps (0.2) outscores it, grft (0.15) does not
    # outscore lora, and among the dense ones random-0.2 scores best
    # scope: 0.5 points above global with std 2 does not replace the default; 3 points with std 2 would
    rows |= {"gmt-grad-0.5-tensor": row("gmt-grad-0.5-tensor", 0.425, 0.01),
             "gmt-grad-0.5-layer": row("gmt-grad-0.5-layer", 0.41, 0.01)}  # fmt: skip
    scope_claim = "mask scope at ratio 0.5 (default: global)"

    def scope_cell() -> str:
        return dict([cell.strip() for cell in line.strip("|").split("|")]
                    for line in claims({"t": rows}).splitlines()[2:])[scope_claim]  # fmt: skip

    assert scope_cell().startswith("global is not beaten beyond noise (global 42.0 ± 2.0%, tensor 42.5")
    rows["gmt-grad-0.5-layer"] = row("gmt-grad-0.5-layer", 0.45, 0.01)
    assert scope_cell().startswith("layer beats global beyond noise")
    rows["gmt-grad-0.5-layer"] = row("gmt-grad-0.5-layer", 0.41, 0.01)
    layer = rows.pop("gmt-grad-0.5-layer")  # a task that ran the tensor scope only is judged on it
    assert scope_cell() == "global is not beaten beyond noise (global 42.0 ± 2.0%, tensor 42.5 ± 1.0%)"
    rows["gmt-grad-0.5-layer"] = layer
    budgets = recommendations({"t": rows}).splitlines()[2:]
    assert budgets == ["| 0.09 | lora | 35.0% | 10× |", "| 0.2 | gps | 40.0% | 30× |",
                       "| 1 | random-0.2 | 44.0% | 1× |"]  # fmt: skip


@pytest.mark.slow
def test_compare_resumes_without_rerunning(smoke, tiny_assets):
    results = sorted(smoke.glob("runs/*/*/*/result.json"))
    stamps = [path.stat().st_mtime_ns for path in results]
    command = [sys.executable, "-m", "gmt.compare", "--smoke", "--model", str(tiny_assets / "base"),
               "--data", str(tiny_assets / "data/sft"), "--out", str(smoke)]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [path.stat().st_mtime_ns for path in results] == stamps and len(results) == 9


def test_plot_mask_draws_the_heatmap_of_a_run(tiny_assets, tmp_path):
    from test_sft_trainer import train

    from gmt.tools.plot_mask import kept_matrix, log_history

    run = tmp_path / "run"
    train(tiny_assets, tmp_path, mask_strategy="gmt", mask_ratio=0.5).save_state()  # 3 steps, logged each
    layers, steps, matrix = kept_matrix(log_history(run))
    assert layers[0] == "model.embed_tokens" and layers[-1] == "lm_head" and "model.layers.3" in layers
    assert steps == [1, 2, 3] and all(0 <= value <= 1 for row in matrix for value in row)
    assert 0 < min(min(row) for row in matrix) < max(max(row) for row in matrix) <= 1  # the layers differ
    out = tmp_path / "heatmap.png"
    result = subprocess.run([sys.executable, "-m", "gmt.command", "plot", str(run), "--out", str(out)], cwd=REPO,
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5_000


def test_a_slurm_array_task_writes_the_result_a_local_run_writes(tiny_assets, tmp_path):
    # --submit slurm writes the runs to do as a job array; its per-task command, run here as SLURM
    # would run array task 0, trains, scores and records the run exactly as the local tool does.
    setup = [sys.executable, "-m", "gmt.compare", "--model", str(tiny_assets / "base"), "--data",
             str(tiny_assets / "data/sft"), "--methods", "full", "--lr_factors", "1", "--max_extensions", "0",
             "--phase", "sweep", "--sweep_steps", "3", "--validation_rows", "16", "--select_by", "eval_loss",
             "--launcher", "python"]  # one process a run (on a cluster: scripts/launch.slurm, the default)  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}

    def compare(out: Path, *extra: str) -> subprocess.CompletedProcess:
        result = subprocess.run([*setup, "--out", str(out), *extra], cwd=REPO, env=env, capture_output=True,
                                text=True, timeout=600)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    submitted = compare(tmp_path / "cluster", "--submit", "slurm", "--slurm_args", "--nodes 1 --time 1:00:00")
    array = tmp_path / "cluster/slurm/sweep.sbatch"
    assert f"sbatch {array}" in submitted.stdout and not list((tmp_path / "cluster").rglob("result.json"))
    script = array.read_text()
    assert "#SBATCH --array=0-0" in script and "#SBATCH --nodes=1" in script and "#SBATCH --time=1:00:00" in script
    task = subprocess.run(["bash", str(array)], env={**env, "SLURM_ARRAY_TASK_ID": "0"}, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert task.returncode == 0, task.stderr[-3000:]
    compare(tmp_path / "local")
    run = Path("runs/sweep/full/lr0.001/result.json")
    on_cluster, here = (json.loads((tmp_path / side / run).read_text()) for side in ("cluster", "local"))
    for record in (on_cluster, here):
        del record["seconds"]
        record["command"] = [word.replace(str(tmp_path), "") for word in record["command"]]
        record["command"] = [word.replace("/cluster/", "/").replace("/local/", "/") for word in record["command"]]
    assert on_cluster == here and here["scored_on"] == "validation.jsonl" and here["metric"] == "eval_loss"
    # the same command again collects the finished run and writes the sweep's tables
    compare(tmp_path / "cluster", "--submit", "slurm")
    sweep = json.loads((tmp_path / "cluster/sweep.json").read_text())["sweeps"]
    assert [record["learning_rate"] for record in sweep["full"]] == [1e-3]


@pytest.mark.slow  # 6 runs of 2 ranks each; the tiny smoke above covers the same tool in one process
def test_the_comparison_runs_a_gpu_recipe_on_its_standins_under_two_process_zero3(standin_cache, tmp_path):
    import yaml

    from gmt.standins import data_standin, model_standin
    from gmt.standins.eval_data import build_eval_data, suite_reads

    shipped = yaml.safe_load((REPO / "recipes/llama3-8b/sft_math_gmt.yaml").read_text())
    recipe = {**shipped, "model_name_or_path": str(model_standin(shipped["model_name_or_path"], standin_cache)),
              "dataset_name": str(data_standin(shipped["dataset_name"], standin_cache)),
              "attn_implementation": "sdpa", "use_cpu": True, "ddp_backend": "gloo", "report_to": "none",
              "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2}  # fmt: skip
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    eval_data = build_eval_data(suite_reads("math"), tmp_path / "eval-data")
    launcher = "accelerate launch --config_file recipes/accelerate/cpu_zero3.yaml"
    command = [sys.executable, "-m", "gmt.compare", "--config", str(tmp_path / "recipe.yaml"), "--out",
               str(tmp_path / "out"), "--methods", "full", "gmt-grad-0.5", "--lr_factors", "1", "3",
               "--max_extensions", "0", "--seeds", "0", "--sweep_steps", "2", "--max_steps", "2",
               "--validation_rows", "8", "--eval_suite", "math", "--eval_args",
               f"--data_dir {eval_data} --gen_kwargs max_gen_toks=8", "--eval_limit", "2",
               "--launcher", launcher]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    sweeps = json.loads((tmp_path / "out/sweep.json").read_text())["sweeps"]
    for records in sweeps.values():  # the recipe's rate and 3x, chosen by the loss on the held-out rows
        assert [r["learning_rate"] for r in records] == [2e-5, 6e-5]
        assert {r["metric"] for r in records} == {"eval_loss"} and all(r["score"] < 0 for r in records)
        assert all("accelerate.commands.launch" in r["command"] and "gmt.sft" in r["command"] for r in records)
    rows = {row["method"]: row for row in json.loads((tmp_path / "out/compare.json").read_text())["rows"]}
    assert rows["gmt-grad-0.5"]["kept_fraction"] == pytest.approx(0.5, abs=0.01)
    assert rows["full"]["kept_fraction"] == 1
    # each of 2 ranks holds half of AdamW's moments under ZeRO-3
    trainable = sum(p.numel() for p in __import__("transformers").AutoModelForCausalLM.from_pretrained(
        recipe["model_name_or_path"]).parameters())  # fmt: skip
    assert 8 * trainable / 2 <= rows["full"]["optimizer_state_bytes"] <= 8 * trainable / 2 * 1.01
    report = (tmp_path / "out/recommendation.md").read_text()
    assert f"{launcher} -m gmt.sft --config {tmp_path / 'recipe.yaml'} --learning_rate" in report


def test_a_run_through_launch_slurm_is_one_accelerate_launch_per_node(tmp_path):
    from gmt.compare.runs import training_command

    recipe = tmp_path / "recipe.yaml"
    overrides = ["--learning_rate", "6e-05", "--frozen_params", "embed_tokens|lm_head"]
    command, env = training_command("scripts/launch.slurm recipes/accelerate/zero3_multinode.yaml", "gmt/dpo.py",
                                    recipe, overrides)  # fmt: skip
    assert command[:4] == ["bash", "scripts/launch.slurm", str(recipe), "recipes/accelerate/zero3_multinode.yaml"]
    dry_run = {**os.environ, **env, "GMT_DRY_RUN": "1", "SLURM_NNODES": "2", "GPUS_PER_NODE": "8",
               "MASTER_ADDR": "node0"}  # fmt: skip
    node = subprocess.run(command, cwd=REPO, env=dry_run, capture_output=True, text=True, check=True).stdout
    assert "--num_machines 2 --num_processes 16" in node
    assert node.strip().endswith(f"gmt/dpo.py --config {recipe} --learning_rate 6e-05 --frozen_params "
                                 "embed_tokens\\|lm_head")  # quoted for the node's shell


def test_validation_rows_come_from_the_recipes_data_or_a_named_set(standin_cache, tmp_path):
    # A hub layout (MetaMathQA's, one JSON file) is held out row by row in its raw columns, so the
    # recipe's column map and prompt format still apply; --validation_data names a set instead.
    from gmt.compare.recipe import Recipe, hold_out
    from gmt.standins import data_standin

    data = data_standin("meta-math/MetaMathQA", standin_cache)
    recipe = Recipe(Path("recipes/llama3-8b/sft_math_gmt.yaml"), {"dataset_name": str(data)})

    def rows(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text().splitlines()]

    held = hold_out(recipe, tmp_path / "held", 8, None)
    train, validation = rows(held / "train.jsonl"), rows(held / "validation.jsonl")
    assert len(validation) == 8 and len(train) + 8 == 48 and {"query", "response"} <= set(train[0])
    assert not {row["query"] for row in validation} & {row["query"] for row in train}
    named = hold_out(recipe, tmp_path / "named", 8, str(held / "validation.jsonl"))
    assert rows(named / "validation.jsonl") == validation and len(rows(named / "train.jsonl")) == 48


def test_a_failed_run_is_recorded_reported_and_tried_again(tmp_path):
    """A run that fails leaves failed.json (no result.json, so the next invocation tries it again);
    its method's sweep goes on without it, and a method whose every rate failed is left out."""
    from gmt.compare.cli import Plan, Runner, sweep_all
    from gmt.compare.rates import best_rate
    from gmt.compare.runs import Run, execute
    from gmt.compare.tables import sweep_markdown

    fail = "import sys; print('no such model', file=sys.stderr); sys.exit(3)"
    failing = Run("sweep", "bad", 0, 1e-3, 5, str(tmp_path / "bad"), train=[sys.executable, "-c", fail])
    failing.save()
    record = execute(failing)
    assert "exit status 3" in record["failed"] and "no such model" in record["failed"]
    assert (tmp_path / "bad/failed.json").is_file() and not (tmp_path / "bad/result.json").exists()

    class Scripted(Runner):  # the records a round of runs gives: one method's runs all fail, one fails once
        def records(self, runs, progress=None):
            return [{"method": run.method, "seed": 0, "learning_rate": run.learning_rate, "seconds": 1.0,
                     **({"failed": "exit status 1"} if run.method == "bad" or run.learning_rate == 3e-3
                        else {"score": run.learning_rate * 100})} for run in runs]  # fmt: skip

    class Args:
        max_extensions = 0

    plan = Plan(Args(), Path("recipe.yaml"), "gmt/sft.py", {})
    plan.run = lambda phase, method, seed, rate, sweeps: Run(phase, method, seed, rate, 5, "", [])

    class Progress:
        total = 0

        def update(self):
            pass

    sweeps = sweep_all(["full", "bad"], {"full": [1e-3, 3e-3], "bad": [1e-3]}, plan, Scripted(1, False), Progress())
    assert best_rate(sweeps["full"]) == 1e-3 and best_rate(sweeps["bad"]) is None
    table = sweep_markdown(sweeps, "sweep")
    assert "| full | **10.0** | failed | 0.001 |" in table and "| bad | failed | - | every run failed |" in table


def test_fixed_mask_budgets_come_from_the_model(tiny_assets, tmp_path):
    from gmt.compare.methods import fixed_mask_budgets, method_table

    assert fixed_mask_budgets(str(tiny_assets / "base")) == {"gps": ("--gps_k", "16"), "grft": ("--grft_k", "16")}
    methods = method_table(["gps=--gps_k 4"], str(tiny_assets / "base"))
    assert methods["gps"] == ("--mask_strategy", "gps", "--gps_k", "16", "--gps_k", "4")  # the user's flag wins
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 576}))  # SmolLM2's
    assert fixed_mask_budgets(str(tmp_path)) == {"gps": ("--gps_k", "72"), "grft": ("--grft_k", "72")}
    with pytest.raises(SystemExit, match="--method 'gps=--gps_k K'"):
        fixed_mask_budgets(str(tmp_path / "no-model"))


def test_gspf_warm_up_fits_the_run():
    from gmt.compare.methods import METHODS, gspf_warmup

    gspf = METHODS["gspf"]
    assert gspf_warmup(gspf, 300) == gspf  # the tiny comparison's 25 of 300, as it ran
    shortened = gspf_warmup(gspf, 6)  # a smoke's sweep run: gmt-sft refuses a warm-up as long as the run
    assert shortened[shortened.index("--gspf_warmup_steps") + 1] == "1"
    assert gspf_warmup(METHODS["full"], 6) == METHODS["full"]


def test_plan_offline_names_the_data_it_cannot_read(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model_name_or_path: .cache/gmt-tiny/base\ndataset_name: no-such-org/no-such-data\n"
                      "learning_rate: 1.0e-4\neval_suite: tiny\n")  # fmt: skip
    command = [sys.executable, "-m", "gmt.compare", "--config", str(recipe), "--out", str(tmp_path / "out"),
               "--methods", "full", "--plan"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "the comparison cannot read no-such-org/no-such-data" in result.stderr
    assert "--data LOCAL_COPY" in result.stderr


def test_the_report_names_what_it_ran_on_and_can_leave_the_readme_alone(tmp_path):
    """The committed tiny comparison's report, titled as the toy it is, leaves the README alone by
    default (README's summary is the real model's)."""
    readme_before = (REPO / "README.md").read_text()
    out = tmp_path / "report.md"
    command = [sys.executable, "-m", "gmt.compare.report", "--out", str(out), "--title", "a toy"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert out.read_text().startswith("# The methods compared on a toy\n")
    assert "#### word problems" in out.read_text() and (REPO / "README.md").read_text() == readme_before


def test_a_run_with_step_deltas_reports_its_sync_size_and_rewards():
    from gmt.compare.runs import step_delta_and_rewards
    from gmt.compare.tables import aggregate, markdown

    history = [{"step": 1, "reward": 0.25, "delta/changed_fraction": 0.03, "delta/bytes_vs_dense": 0.06},
               {"step": 2, "reward": 0.5, "delta/changed_fraction": 0.01, "delta/bytes_vs_dense": 0.02},
               {"step": 2, "train_runtime": 9.0}]  # fmt: skip
    found = step_delta_and_rewards(history)
    assert found["step_delta"] == pytest.approx({"changed_fraction": 0.02, "bytes_vs_dense": 0.04})
    assert found["rewards"] == [{"step": 1, "reward": 0.25}, {"step": 2, "reward": 0.5}]
    assert step_delta_and_rewards([{"step": 1, "loss": 2.0}]) == {}  # an SFT run: nothing more
    run = {"learning_rate": 1e-5, "score": 0.5, "kept_fraction": 0.03, "updated_fraction": 0.1, "seconds": 60.0}
    records = [{**run, "method": "full", "seed": 0},
               {**run, "method": "gmt-update-0.97", "seed": 0, **found}]  # fmt: skip
    methods = {"full": ("--mask_strategy", "full"), "gmt-update-0.97": ("--mask_strategy", "gmt")}
    table = markdown(aggregate(records, list(methods), methods), "# final")
    assert "| sync a step (× dense) |" in table
    assert table.splitlines()[-1].endswith("| 0.100 | 0.040 | 1.0 min |")  # entries changed, then the sync
    assert table.splitlines()[-2].endswith("| 0.100 | - | 1.0 min |")  # full took no step deltas
    assert "sync a step" not in markdown(aggregate(records[:1], ["full"], methods), "# final")


def test_grpo_rewards_are_drawn_per_run(tmp_path):
    from PIL import Image

    from gmt.compare.plots import plot_rewards

    rewards = [{"step": step, "reward": 0.1 * step} for step in (1, 2, 3)]
    records = [{"method": method, "seed": seed, "score": 0.5, "rewards": rewards}
               for method in ("full", "gmt-update-0.97") for seed in (0, 1)]  # fmt: skip
    plot_rewards(records, tmp_path / "rewards.png")
    with Image.open(tmp_path / "rewards.png") as image:
        assert image.size == (840, 540)  # 7 x 4.5 inches at 120 dpi
        colours = {colour for _, colour in image.convert("RGB").getcolors(1 << 20)}
    assert (31, 119, 180) in colours and (255, 127, 14) in colours  # C0 and C1: one line colour per method


def test_the_default_methods_follow_the_recipes_script():
    from gmt.compare.methods import METHODS, RL_METHODS, default_methods, method_table

    methods = method_table(["mine=--mask_strategy gmt --mask_ratio 0.9"])
    sft = default_methods("gmt/sft.py", methods)
    assert not set(RL_METHODS) & set(sft) and "mine" in sft and len(sft) == len(METHODS) - len(RL_METHODS) + 1
    assert default_methods("gmt/grpo.py", methods) == ["full", "gmt-update-0.97", "random-update-0.97", "gspf", "mine"]
    random_update = ("--mask_strategy", "random", "--mask_ratio", "0.97", "--gmt_mode", "update")
    assert METHODS["random-update-0.97"] == random_update


def test_a_tasks_report_section_shows_the_curves_its_comparison_made(tmp_path):
    from gmt.compare.report import task_section

    for name in ("compare.md", "sweep.md"):
        (tmp_path / name).write_text(f"| {name} |\n")
    section = task_section("grpo", tmp_path, tmp_path / "report.md")  # no --curve, not GRPO
    assert "| compare.md |" in section and "| sweep.md |" in section
    assert "curve.png" not in section and "rewards.png" not in section
    (tmp_path / "rewards.png").write_bytes(b"")
    (tmp_path / "curve.md").write_text("| curve |\n")
    section = task_section("grpo", tmp_path, tmp_path / "report.md")
    assert "| curve |" in section and "](./curve.png)" in section and "](./rewards.png)" in section
