"""Nothing lost, nothing mixed: checkpoint rotation, one run per output_dir, checkpoints checked by
content, and the late errors of the second fault campaign (docs/reliability.md), each reproduced
with real processes, signals and files."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, run_sft
from gmt.checkpoints import (
    MANIFEST,
    RUN_FILE,
    check_resume_layout,
    check_resume_settings,
    checkpoint_problem,
    is_complete,
    last_complete_checkpoint,
    mask_settings,
    resolve_resume_checkpoint,
    write_manifest,
)
from gmt.config import GMTSFTConfig
from gmt.output_dir import LOCK_FILE, claim_output_dir, lock_output_dir, record_run, release_output_dir

RECIPE = "recipes/tiny/sft_full.yaml"
# 6 steps of the tiny model, a checkpoint every 2 steps, at most one kept.
SHORT = ("--max_steps", "6", "--per_device_train_batch_size", "4", "--max_length", "96", "--logging_steps", "1",
         "--report_to", "none", "--disable_tqdm", "true", "--mask_strategy", "gmt", "--mask_ratio", "0.5",
         "--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "1")  # fmt: skip


def fake_checkpoint(folder, step: int, run: dict | None, **manifest) -> None:
    """A checkpoint-N folder of a few small files, marked complete by ``run``."""
    checkpoint = folder / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(bytes(range(64)) * 4)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    write_manifest(checkpoint, run, **manifest)


# Data lost


def test_a_kill_during_rotation_leaves_the_new_checkpoint_complete(tiny_assets, tmp_path):
    # save_total_limit 1: the step-4 save deletes checkpoint-2, and is killed as it does.
    out = tmp_path / "run"
    killed = run_sft(RECIPE, tiny_assets / "base", tiny_assets / "data/sft", out, *SHORT,
                     script="tests/sft_with_faults.py", env={"GMT_TEST_KILL_AT_ROTATION": "4"})  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    # Rotation comes after the new checkpoint is marked complete: there is always one to resume from.
    assert is_complete(out / "checkpoint-4")
    assert resolve_resume_checkpoint("last", out) == str(out / "checkpoint-4")
    # A fresh run in that folder would mix with its checkpoints: refused before the model loads ...
    fresh = run_sft(RECIPE, tmp_path / "no-model", tiny_assets / "data/sft", out, *SHORT)
    assert fresh.returncode != 0
    assert f"output_dir {out} holds another run's files (checkpoint-" in fresh.stderr
    assert "no-model" not in fresh.stderr.replace(str(out), "")
    # ... unless told to overwrite: the old checkpoints go first, and the new run's are its own.
    old_run = json.loads((out / RUN_FILE).read_text())["run_id"]
    fresh = run_sft(RECIPE, tiny_assets / "base", tiny_assets / "data/sft", out, *SHORT, "--max_steps", "2",
                    "--overwrite_output_dir", "true")  # fmt: skip
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert sorted(path.name for path in out.glob("checkpoint-*")) == ["checkpoint-2"]
    new_run = json.loads((out / RUN_FILE).read_text())["run_id"]
    assert new_run != old_run
    assert json.loads((out / "checkpoint-2" / MANIFEST).read_text())["run_id"] == new_run


def test_two_runs_started_on_one_output_dir_one_is_refused(tiny_assets, tmp_path):
    out = tmp_path / "shared"
    command = [sys.executable, "gmt/sft.py", "--config", RECIPE, "--model_name_or_path", str(tiny_assets / "base"),
               "--dataset_name", str(tiny_assets / "data/sft"), "--output_dir", str(out), "--eval_suite", "none",
               *SHORT]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    second = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = [(process.wait(timeout=900), *process.communicate()) for process in (first, second)]
    codes = sorted(code for code, _, _ in results)
    assert codes[0] == 0 and codes[1] != 0, [stderr[-2000:] for _, _, stderr in results]
    refused = next(stderr for code, _, stderr in results if code != 0)
    assert f"output_dir {out} is in use by another gmt run (pid " in refused
    # The run that went on kept everything it said it saved.
    assert (out / "model.safetensors").is_file()
    assert is_complete(out / "checkpoint-6")


def test_the_lock_of_a_dead_run_locks_nothing(tmp_path):
    holder = subprocess.run([sys.executable, "-c", "import sys; from gmt.output_dir import lock_output_dir; "
                             f"lock_output_dir({str(tmp_path)!r}); sys.exit(0)"], cwd=REPO)  # fmt: skip
    assert holder.returncode == 0 and (tmp_path / LOCK_FILE).is_file()  # left behind by the process that ended
    lock_output_dir(tmp_path)  # taken: the kernel let it go with the process
    release_output_dir(tmp_path)


def test_gmt_eval_refuses_an_unwritable_output_dir_before_scoring(tiny_assets, tmp_path):
    from gmt.evaluation.harness import parse, plan

    (tmp_path / "a-file").write_text("not a folder")
    args = parse(["--suite", "tiny", "--model", str(tiny_assets / "base"), "--output_dir", str(tmp_path / "a-file/x")])
    with pytest.raises(ValueError, match="cannot be written .*: the results go there"):
        plan(args)


# Silently wrong


def test_a_fork_never_resumes_from_the_abandoned_branch(tmp_path):
    first = claim_output_dir(tmp_path, None, overwrite=False)
    record_run(tmp_path, first)  # at its first save
    for step in (2, 4, 6):
        fake_checkpoint(tmp_path, step, first)
    # Resumed from checkpoint-2: a new run whose lineage holds the first run up to step 2.
    second = claim_output_dir(tmp_path, str(tmp_path / "checkpoint-2"), overwrite=False)
    assert second["lineage"] == [[first["run_id"], 2]]
    record_run(tmp_path, second)
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-2"  # not the old 4 or 6
    fake_checkpoint(tmp_path, 3, second)
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-3"
    release_output_dir(tmp_path)


def test_a_checkpoint_of_another_run_is_skipped_by_name(tmp_path, capsys):
    ours = claim_output_dir(tmp_path, None, overwrite=False)
    record_run(tmp_path, ours)
    fake_checkpoint(tmp_path, 5, ours)
    fake_checkpoint(tmp_path, 20, {"run_id": "someone-else", "lineage": []})  # copied in by hand
    assert resolve_resume_checkpoint("last", tmp_path) == str(tmp_path / "checkpoint-5")
    said = capsys.readouterr().out
    assert f"skipping {tmp_path / 'checkpoint-20'}: it was written by another run (someone-else" in said
    release_output_dir(tmp_path)


def test_a_same_size_swap_is_found_by_its_content(tmp_path):
    fake_checkpoint(tmp_path, 10, None)
    weights = tmp_path / "checkpoint-10" / "model.safetensors"
    assert checkpoint_problem(tmp_path / "checkpoint-10") is None
    damaged = bytearray(weights.read_bytes())
    damaged[8:16] = b"\xff" * 8  # 8 bytes of inf/NaN patterns, same size
    weights.write_bytes(bytes(damaged))
    assert checkpoint_problem(tmp_path / "checkpoint-10", verify_content=False) is None  # sizes alone miss it
    assert f"{weights} changed since it was saved" in checkpoint_problem(tmp_path / "checkpoint-10")
    state = tmp_path / "checkpoint-10" / "trainer_state.json"  # same-size garbage, found the same way
    state.write_text("x" * state.stat().st_size)
    with pytest.raises(ValueError, match="trainer_state.json changed since it was saved|model.safetensors changed"):
        resolve_resume_checkpoint(str(tmp_path / "checkpoint-10"), tmp_path)


def test_a_model_only_checkpoint_is_refused_for_an_exact_resume(tmp_path):
    fake_checkpoint(tmp_path, 10, None, model_only=True)
    with pytest.raises(ValueError, match="save_only_model: true: it holds the weights but no optimizer"):
        resolve_resume_checkpoint("last", tmp_path)


def test_random_masks_record_their_seed_and_a_resume_with_another_is_refused(tmp_path):
    args = GMTSFTConfig(output_dir=str(tmp_path), bf16=False, mask_strategy="random", mask_ratio=0.5,
                        random_fixed=True, seed=3)  # fmt: skip
    assert mask_settings(args)["seed"] == 3
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "gmt_mask_settings.json").write_text(json.dumps(mask_settings(args)))
    args.seed = 4
    with pytest.raises(ValueError, match="seed: 3 in the checkpoint, 4 now"):
        check_resume_settings(tmp_path / "checkpoint-4", args)
    gmt_args = GMTSFTConfig(output_dir=str(tmp_path), bf16=False, mask_strategy="gmt", mask_ratio=0.5)
    assert "seed" not in mask_settings(gmt_args)  # gmt's mask is Γ's, not the seed's
    assert "max_nonfinite_steps" not in mask_settings(gmt_args)  # raised to retry after a stop: not a mask setting


def test_dense_params_with_a_nan_gradient_stop_the_step():
    from gmt.masking import GradientMasker, LocalGradientAccess, NonFiniteGradientError, build_strategy

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    model(torch.randn(8, 16)).square().mean().backward()
    model[2].bias.grad[1] = float("nan")  # dense: never searched
    strategy = build_strategy("gmt", mask_ratio=0.5, dense_params=r"2\.bias")
    masker = GradientMasker(strategy, LocalGradientAccess(model.named_parameters()))
    with pytest.raises(NonFiniteGradientError, match="^1 gradient entries"):
        masker.apply(step=0)


def test_the_nonfinite_stop_counts_entries():
    from gmt.masking import NonFiniteGradientError, ThresholdSearch

    grads = [torch.randn(300_000)]
    grads[0][:131_072] = float("nan")
    with pytest.raises(NonFiniteGradientError, match="^131072 gradient entries"):
        ThresholdSearch(small_entries=1000)(grads, [0], [1000])  # the bracket search, which counts per chunk


def test_resume_with_other_processes_or_another_architecture_is_refused_before_loading(tiny_assets, tmp_path, capsys):
    args = GMTSFTConfig(output_dir=str(tmp_path), bf16=False, gradient_accumulation_steps=4)
    checkpoint = tmp_path / "checkpoint-10"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text((tiny_assets / "base" / "config.json").read_text())
    write_manifest(checkpoint, None, batch={"per_device_train_batch_size": 8, "gradient_accumulation_steps": 2,
                                            "world_size": 2})  # fmt: skip
    with pytest.raises(ValueError, match="written by 2 processes, this run has 1"):
        check_resume_layout(checkpoint, args, str(tiny_assets / "base"))
    write_manifest(checkpoint, None, batch={"per_device_train_batch_size": 8, "gradient_accumulation_steps": 2,
                                            "world_size": 1})  # fmt: skip
    check_resume_layout(checkpoint, args, str(tiny_assets / "base"))
    assert "gradient_accumulation_steps 2 -> 4 since checkpoint-10. Its 10 steps consumed 160 rows" in (
        capsys.readouterr().out
    )
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "hidden_size": config["hidden_size"] * 2}))
    with pytest.raises(ValueError, match="another architecture .*hidden_size"):
        check_resume_layout(checkpoint, args, str(tiny_assets / "base"))


def test_a_delta_applied_to_another_base_is_refused(tmp_path):
    from gmt.delta import (
        apply_delta,
        compute_delta,
        delta_base_fingerprint,
        load_delta,
        save_delta,
        weights_fingerprint,
    )

    base = {"w": torch.randn(8, 4), "b": torch.randn(4)}
    tuned = {name: tensor.clone() for name, tensor in base.items()}
    tuned["w"][0, 0] += 1
    save_delta(compute_delta(base, tuned), tmp_path / "d.safetensors", weights_fingerprint(base))
    delta, fingerprint = load_delta(tmp_path / "d.safetensors"), delta_base_fingerprint(tmp_path / "d.safetensors")
    assert torch.equal(apply_delta(base, delta, fingerprint)["w"], tuned["w"])
    other = {"w": torch.randn(8, 4), "b": base["b"]}  # the same names and shapes
    with pytest.raises(ValueError, match="not the one the delta was computed against"):
        apply_delta(other, delta, fingerprint)


# Late or unclear


def test_a_recipe_with_a_key_twice_or_a_fractional_count_is_refused(tmp_path):
    from gmt.sft import make_parser

    (tmp_path / "twice.yaml").write_text("max_steps: 3\nlearning_rate: 1.0e-4\nmax_steps: 5\n")
    with pytest.raises(ValueError, match="'max_steps' is given twice \\(lines 1 and 3\\)"):
        make_parser().parse_args_and_config(args=["--config", str(tmp_path / "twice.yaml"), "--output_dir", "x"])
    (tmp_path / "fraction.yaml").write_text("gradient_accumulation_steps: 2.7\n")
    with pytest.raises(ValueError, match="gradient_accumulation_steps in the --config file must be a whole number"):
        make_parser().parse_args_and_config(args=["--config", str(tmp_path / "fraction.yaml"), "--output_dir", "x"])


@pytest.mark.parametrize(
    ("line", "refusal"),
    [
        ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "content": "c"}]}',
         "the key 'content' is given twice"),
        ('{"messages": [{"role": "user", "content": "a\\ud800"}, {"role": "assistant", "content": "b"}]}',
         "lone UTF-16 surrogate"),
        ('{"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}, '
         '{"role": "assistant", "content": "b"}]}', "content is a list of parts"),
        ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": " "}]}',
         "messages\\[1\\] \\(role 'assistant'\\) is empty"),
    ],
)  # fmt: skip
def test_rows_python_reads_but_training_would_mangle_are_refused(tmp_path, line, refusal):
    from gmt.data import check_json_lines
    from gmt.rows import RowChecker

    path = tmp_path / "train.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}]}\n'
                    + line + "\n", encoding="utf-8")  # fmt: skip
    checker = RowChecker("SFT", (("messages",),))
    with pytest.raises(ValueError, match=f"{path}:2: .*{refusal}"):
        check_json_lines(path, checker)


def test_a_byte_order_mark_is_read_as_datasets_reads_it(tmp_path):
    from gmt.data import check_json_lines
    from gmt.rows import RowChecker

    path = tmp_path / "train.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "one"}\n{"text": "two"}\n')
    checker = RowChecker("SFT", (("text",),))
    check_json_lines(path, checker)
    assert checker.rows == 2


def test_a_rank_that_is_not_a_number_is_named(monkeypatch):
    from gmt.launch import launched_rank

    monkeypatch.setenv("RANK", "abc")
    with pytest.raises(ValueError, match="RANK='abc' in the environment is not a process rank"):
        launched_rank()


def test_gmt_eval_refuses_a_checkpoint_that_was_not_saved_to_the_end(tiny_assets, tmp_path):
    from gmt.evaluation.harness import parse, plan

    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    for file in (tiny_assets / "base").iterdir():
        (checkpoint / file.name).write_bytes(file.read_bytes())
    (checkpoint / "gmt_mask_settings.json").write_text("{}")  # gmt began the save, never marked it complete
    with pytest.raises(ValueError, match="checkpoint that was not saved to the end"):
        plan(parse(["--suite", "tiny", "--model", str(checkpoint)]))


@pytest.mark.slow  # 2-process ZeRO-3 (gloo, CPU): about a minute
def test_a_peer_killed_at_the_end_of_a_save_leaves_the_previous_checkpoint(tiny_assets, tmp_path):
    from conftest import ACCELERATE_CPU_ZERO3

    # Rank 1 dies once its part of the step-4 save is written; rank 0 then fails at the barrier.
    out = tmp_path / "run"
    result = run_sft(RECIPE, tiny_assets / "base", tiny_assets / "data/sft", out, *SHORT,
                     "--gradient_accumulation_steps", "1", "--ddp_backend", "gloo", launcher=ACCELERATE_CPU_ZERO3,
                     script="tests/sft_with_faults.py", env={"GMT_TEST_KILL_RANK_AFTER_SAVE": "1:4"})  # fmt: skip
    assert result.returncode != 0
    # checkpoint-4 never became complete; the rotation that would have removed checkpoint-2 never ran.
    assert not (out / "checkpoint-4").exists() or not is_complete(out / "checkpoint-4")
    assert resolve_resume_checkpoint("last", out) == str(out / "checkpoint-2")


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB file system (tmpfs), where the machine lets the tests mount one."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


@pytest.mark.parametrize("save", ["checkpoint", "model"])
def test_a_full_disk_is_said_and_leaves_nothing_partial(tiny_assets, small_disk, save):
    # The tiny model's weights (3.4 MB in fp32) do not fit: safetensors fails writing them.
    out = small_disk / "run"
    saving = ("--save_strategy", "steps", "--save_steps", "1") if save == "checkpoint" else ("--save_strategy", "no")
    result = run_sft(RECIPE, tiny_assets / "base", tiny_assets / "data/sft", out, *SHORT[:-6], "--max_steps", "2",
                     *saving)  # fmt: skip
    assert result.returncode != 0
    if save == "checkpoint":
        assert f"saving checkpoint {out / 'checkpoint-1'} failed: no space left on device" in result.stderr
        assert not (out / "checkpoint-1").exists()
    else:
        assert f"saving the model to {out} failed: no space left on device" in result.stderr
