"""Resuming from a checkpoint continues the run as if it had not stopped, mask state included."""

import signal
from pathlib import Path

import pytest
import torch
from test_distributed import state

from conftest import ACCELERATE_CPU_ZERO3, deepspeed_launcher, logged, run_sft
from gmt.checkpoints import is_complete, last_complete_checkpoint, resolve_resume_checkpoint
from gmt.sft import main, make_parser
from gmt.trainer import mask_state_name

STRATEGIES = {
    "gmt": ["--mask_strategy", "gmt", "--mask_ratio", "0.5", "--gmt_mode", "update"],
    "random": ["--mask_strategy", "random", "--mask_ratio", "0.5"],
    # warm-up 2, reselection at 4: a checkpoint at 3 holds fixed masks, scores and sparse moments
    "gspf": [
        "--mask_strategy", "gspf", "--gspf_keep_ratio", "0.05", "--gspf_warmup_steps", "2",
        "--gspf_reselect_every", "2",
    ],
    # a checkpoint at 3 in the middle of gps's selection pass (its sums), after grft's (fixed
    # masks and the pretrained values of its penalty)
    "gps": ["--mask_strategy", "gps", "--gps_k", "16", "--selection_steps", "4"],
    "grft": ["--mask_strategy", "grft", "--grft_k", "4", "--selection_steps", "2", "--grft_lambda", "0.1"],
}  # fmt: skip
# The quick suite resumes gspf (fixed masks, scores and sparse moments, per rank) with the optimizer
# offloaded to the CPU and stepped by gmt's AdamW: the layout whose restored state must move from
# where the checkpoint is read to where the gradients are. gmt keeps no state of its own (its dense
# moments are DeepSpeed's checkpoint, as in plain training) and random's mask is a function of the
# seed, the step and the entry index: they, and gspf without offload, are marked slow.
ZERO3_CASES = (
    pytest.param("gmt", False, marks=pytest.mark.slow),
    pytest.param("random", False, marks=pytest.mark.slow),
    pytest.param("gspf", False, marks=pytest.mark.slow),
    ("gspf", True),
)
# The tiny recipe without mask settings: each run names its strategy and that strategy's options.
RECIPE = "recipes/tiny/sft_full.yaml"


# Launched runs: 6 steps, logged every step.
LAUNCHED = ("--max_steps", "6", "--per_device_train_batch_size", "4", "--max_length", "96",
            "--logging_steps", "1", "--report_to", "none", "--disable_tqdm", "true")  # fmt: skip


def sft(tiny_assets: Path, output_dir: Path, *overrides: str):
    """gmt/sft.py's main, in process, on the tiny recipe: 6 steps of 2 accumulated micro-batches."""
    args = [
        "--config", RECIPE,
        "--model_name_or_path", str(tiny_assets / "base"),
        "--dataset_name", str(tiny_assets / "data" / "sft"),
        "--output_dir", str(output_dir),
        "--max_steps", "6",
        "--per_device_train_batch_size", "4",
        "--max_length", "96",
        "--report_to", "none",
        "--disable_tqdm", "true",
        *overrides,
    ]  # fmt: skip
    return main(*make_parser().parse_args_and_config(args=args))


def weights(trainer) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters()}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_resumed_run_ends_bitwise_where_the_uninterrupted_one_does(tiny_assets, tmp_path, strategy):
    # The run that saves at step 3 goes on to step 6 uninterrupted (saving draws no randomness).
    saving = tmp_path / "saving"
    straight = weights(sft(tiny_assets, saving, *STRATEGIES[strategy], "--save_strategy", "steps", "--save_steps", "3"))
    checkpoint = saving / "checkpoint-3"
    assert (checkpoint / mask_state_name(0)).is_file()
    resumed = sft(tiny_assets, saving, *STRATEGIES[strategy], "--resume_from_checkpoint", str(checkpoint))
    assert resumed.state.global_step == 6
    for name, value in weights(resumed).items():
        assert torch.equal(value, straight[name]), name
    if strategy == "gspf":  # the resumed run really did carry the mask: same sparse optimizer state
        state = torch.load(checkpoint / mask_state_name(0), weights_only=True)
        assert state["strategy"] == "gspf" and state["strategy_state"]["kept_indices"] is not None


def test_resume_refuses_a_checkpoint_of_another_strategy(tiny_assets, tmp_path):
    sft(tiny_assets, tmp_path, *STRATEGIES["gspf"], "--save_strategy", "steps", "--save_steps", "3")
    with pytest.raises(ValueError, match="mask_strategy 'gspf'.*this run uses 'gmt'"):
        sft(tiny_assets, tmp_path, *STRATEGIES["gmt"], "--resume_from_checkpoint", str(tmp_path / "checkpoint-3"))


def test_last_complete_checkpoint_skips_one_cut_short(tmp_path, capsys):
    for step in (3, 6, 9):
        (tmp_path / f"checkpoint-{step}").mkdir()
    for step in (3, 6):
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    # checkpoint-9 was being written when the job died: no trainer_state.json
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-6"
    # ... or its trainer_state.json was being written: cut short as well
    (tmp_path / "checkpoint-9" / "trainer_state.json").write_text('{"global_step": 9, "log_hist')
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-6"
    assert resolve_resume_checkpoint("last", tmp_path) == str(tmp_path / "checkpoint-6")
    said = capsys.readouterr().out  # which one it took, which it skipped and why
    assert f"skipping {tmp_path / 'checkpoint-9'}: its save did not finish" in said
    assert f"resume: from {tmp_path / 'checkpoint-6'}" in said
    with pytest.raises(ValueError, match="resume_from_checkpoint .*checkpoint-9.* not saved to the end"):
        resolve_resume_checkpoint(str(tmp_path / "checkpoint-9"), tmp_path)
    with pytest.raises(ValueError, match="no complete checkpoint"):
        resolve_resume_checkpoint("true", tmp_path / "elsewhere")


def test_a_kill_during_a_save_leaves_the_previous_checkpoint_to_resume_from(tiny_assets, tmp_path, monkeypatch):
    base, data = tiny_assets / "base", tiny_assets / "data" / "sft"
    options = (*LAUNCHED, *STRATEGIES["gmt"], "--save_strategy", "steps", "--save_steps", "2")
    straight = run_sft(RECIPE, base, data, tmp_path / "straight", *options)
    assert straight.returncode == 0, straight.stderr[-3000:]
    # SIGKILL in the middle of the step-4 save: model and optimizer written, trainer_state.json not.
    monkeypatch.setenv("GMT_TEST_KILL_AT_SAVE", "4")
    killed = run_sft(RECIPE, base, data, tmp_path / "killed", *options, script="tests/sft_with_faults.py")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert is_complete(tmp_path / "killed" / "checkpoint-2")
    assert (tmp_path / "killed" / "checkpoint-4" / "model.safetensors").is_file()
    assert not is_complete(tmp_path / "killed" / "checkpoint-4")
    monkeypatch.delenv("GMT_TEST_KILL_AT_SAVE")
    resumed = run_sft(RECIPE, base, data, tmp_path / "killed", *options, "--resume_from_checkpoint", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(logged(resumed.stdout, "loss")) == 4  # steps 3 to 6: it went on from checkpoint-2
    straight_weights, resumed_weights = state(tmp_path / "straight"), state(tmp_path / "killed")
    for name, value in resumed_weights.items():
        assert torch.equal(value, straight_weights[name]), name


@pytest.mark.parametrize(("strategy", "offload"), ZERO3_CASES)
def test_zero3_resumed_run_ends_where_the_uninterrupted_one_does(tiny_assets, tmp_path, strategy, offload):
    from test_offload import offload_config

    base, data = tiny_assets / "base", tiny_assets / "data" / "sft"
    options = (*LAUNCHED, *STRATEGIES[strategy], "--gradient_accumulation_steps", "1", "--ddp_backend", "gloo")
    launcher = ACCELERATE_CPU_ZERO3
    if offload:  # parameters and optimizer on the CPU, stepped by gmt's sparse AdamW
        launcher = deepspeed_launcher(tmp_path / "configs", offload_config(3, client_optimizer=True))
    straight = run_sft(RECIPE, base, data, tmp_path / "straight", *options, "--save_strategy", "steps",
                       "--save_steps", "3", launcher=launcher)  # fmt: skip
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert "gmt: 2 processes, DeepSpeed ZeRO-3" in straight.stdout  # the banner says the world size
    checkpoint = tmp_path / "straight" / "checkpoint-3"
    assert all((checkpoint / mask_state_name(rank)).is_file() for rank in (0, 1))
    resumed = run_sft(RECIPE, base, data, tmp_path / "resumed", *options, "--resume_from_checkpoint",
                      str(checkpoint), launcher=launcher)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # The resumed run logs steps 4 to 6, with the losses and kept fractions of the uninterrupted one.
    for key in ("loss", "mask/kept_fraction"):
        expected, got = logged(straight.stdout, key)[3:], logged(resumed.stdout, key)
        assert len(got) == 3 and got == pytest.approx(expected, rel=1e-6), key
    straight_weights, resumed_weights = state(tmp_path / "straight"), state(tmp_path / "resumed")
    start = state(base)
    assert any(not torch.equal(value, start[name]) for name, value in straight_weights.items())
    for name, value in resumed_weights.items():
        assert (value - straight_weights[name]).abs().max() <= 1e-6, name


def test_an_output_dir_that_cannot_be_written_stops_the_run_before_the_model_loads(tiny_assets, tmp_path):
    from conftest import run_sft

    (tmp_path / "a-file").write_text("not a folder")
    result = run_sft("recipes/tiny/sft_gmt.yaml", tmp_path / "no-model", tiny_assets / "data/sft",
                     tmp_path / "a-file" / "run", "--max_steps", "1")  # fmt: skip
    assert result.returncode != 0
    assert f"output_dir {tmp_path / 'a-file' / 'run'} cannot be written" in result.stderr
    assert "no-model" not in result.stderr.replace(str(tmp_path / "a-file" / "run"), "")  # the model never loaded


def test_a_save_that_will_not_fit_is_said_before_training(tiny_assets, tmp_path, capsys):
    from gmt.checkpoints import checkpoint_bytes, warn_if_a_save_will_not_fit

    weights = sum(file.stat().st_size for file in (tiny_assets / "base").glob("*.safetensors"))
    assert checkpoint_bytes(tiny_assets / "base", checkpoints=False) == weights
    assert checkpoint_bytes(tiny_assets / "base", checkpoints=True) == 3 * weights  # fp32: + 2 moments
    warn_if_a_save_will_not_fit(tmp_path, tiny_assets / "base", checkpoints=True)
    assert capsys.readouterr().out == ""  # this disk has room for 3 copies of a tiny model


@pytest.mark.parametrize(
    ("code", "reason"), [(28, "no space left on device"), (30, "read-only or not writable")]  # ENOSPC, EROFS
)
def test_a_failed_save_says_why_and_leaves_no_partial_checkpoint(tmp_path, code, reason):
    from gmt.checkpoints import remove_partial_checkpoint, save_failure

    folder = tmp_path / "checkpoint-4"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"half")
    message = save_failure(folder, OSError(code, "from the file system"))
    assert reason in message and str(folder) in message
    remove_partial_checkpoint(folder)
    assert not folder.exists()


def test_last_skips_a_checkpoint_with_a_damaged_file_and_names_it(tiny_assets, tmp_path, capsys):
    sft(tiny_assets, tmp_path, *STRATEGIES["gmt"], "--save_strategy", "steps", "--save_steps", "3")
    optimizer_file = tmp_path / "checkpoint-6" / "optimizer.pt"
    saved_size = optimizer_file.stat().st_size
    with optimizer_file.open("r+b") as damaged:  # cut short after the save, as a failing disk would
        damaged.truncate(saved_size // 2)
    capsys.readouterr()
    assert resolve_resume_checkpoint("last", tmp_path) == str(tmp_path / "checkpoint-3")
    said = capsys.readouterr().out
    assert f"skipping {tmp_path / 'checkpoint-6'}: {optimizer_file} is {saved_size // 2} bytes, {saved_size}" in said
    with pytest.raises(ValueError, match="optimizer.pt is .* bytes"):
        resolve_resume_checkpoint(str(tmp_path / "checkpoint-6"), tmp_path)


def test_a_checkpoint_without_recorded_settings_is_said_once(tmp_path, capsys):
    # gmt.cli checks before the model loads and train() checks again: one notice, not two.
    from gmt.checkpoints import check_resume_settings
    from gmt.config import GMTSFTConfig

    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    args = GMTSFTConfig(output_dir=str(tmp_path), bf16=False, mask_strategy="gmt")
    check_resume_settings(checkpoint, args)
    check_resume_settings(checkpoint, args)
    assert capsys.readouterr().out.count("written by an older gmt") == 1
