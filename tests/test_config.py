"""Bad mask settings are refused before training, with a message naming the setting."""

import pytest

from gmt.config import GMTSFTConfig
from gmt.sft import make_parser

BASE = {"output_dir": "unused", "bf16": False}


@pytest.mark.parametrize(
    ("override", "setting"),
    [
        ({"mask_ratio": 1.0}, "mask_ratio"),
        ({"mask_ratio": -0.1}, "mask_ratio"),
        ({"mask_ratio": "0.5"}, "mask_ratio"),
        ({"mask_ratio": True}, "mask_ratio"),
        ({"mask_strategy": "lottery"}, "mask_strategy"),
        ({"mask_scope": "row"}, "mask_scope"),
        ({"gmt_mode": "weights"}, "gmt_mode"),
        ({"mask_start_step": -1}, "mask_start_step"),
        ({"gmt_mode": "update", "optim": "sgd"}, "optim"),
        ({"mask_strategy": "gmt", "random_fixed": True}, "random_fixed"),
        # options of one strategy given to another
        ({"mask_strategy": "gmt", "gps_k": 8}, "gps_k"),
        ({"mask_strategy": "gps", "mask_ratio": 0.5}, "mask_ratio"),
        ({"mask_strategy": "gspf", "grft_lambda": 0.1}, "grft_lambda"),
        ({"mask_strategy": "grft", "gmt_mode": "update"}, "gmt_mode"),
        # ... even at the value that is the other strategy's default: set is set
        ({"mask_strategy": "gps", "mask_ratio": 0.2}, "mask_ratio"),
        ({"mask_strategy": "full", "gmt_mode": "grad"}, "gmt_mode"),
        ({"mask_strategy": "gmt", "gspf_warmup_steps": 100}, "gspf_warmup_steps"),
        # ranges and types of the fixed-mask options
        ({"mask_strategy": "gps", "gps_k": 0}, "gps_k"),
        ({"mask_strategy": "gps", "selection_steps": 0}, "selection_steps"),
        ({"mask_strategy": "grft", "grft_axis": "diagonal"}, "grft_axis"),
        ({"mask_strategy": "grft", "grft_lambda": -1.0}, "grft_lambda"),
        ({"mask_strategy": "grft", "grft_lambda": float("nan")}, "grft_lambda"),
        ({"mask_strategy": "gspf", "gspf_keep_ratio": 0.0}, "gspf_keep_ratio"),
        ({"mask_strategy": "gspf", "gspf_keep_ratio": 1.5}, "gspf_keep_ratio"),
        ({"mask_strategy": "gspf", "gspf_alpha": 2.0}, "gspf_alpha"),
        ({"mask_strategy": "gspf", "gspf_reselect_every": -1}, "gspf_reselect_every"),
        ({"mask_strategy": "gspf", "optim": "sgd"}, "optim"),
        ({"frozen_params": "(unclosed"}, "frozen_params"),
        # a dense-phase rate needs a dense phase
        ({"mask_strategy": "gmt", "dense_phase_learning_rate": 1e-3}, "dense_phase_learning_rate"),
        ({"mask_strategy": "full", "mask_start_step": 5, "dense_phase_learning_rate": 1e-3},
         "dense_phase_learning_rate"),
        ({"mask_strategy": "gspf", "gspf_warmup_steps": 0, "dense_phase_learning_rate": 1e-3},
         "dense_phase_learning_rate"),
        ({"mask_strategy": "gspf", "dense_phase_learning_rate": 0.0}, "dense_phase_learning_rate"),
    ],
)
def test_config_refuses_bad_settings(override, setting):
    with pytest.raises(ValueError, match=setting):
        GMTSFTConfig(**BASE, **override)


def test_good_settings_are_kept():
    config = GMTSFTConfig(**BASE, mask_ratio=0.5, mask_scope="layer", gmt_mode="update", mask_start_step=3)
    assert (config.mask_ratio, config.mask_scope, config.gmt_mode, config.mask_start_step) == (
        0.5,
        "layer",
        "update",
        3,
    )


def test_fixed_strategy_settings_are_kept():
    config = GMTSFTConfig(**BASE, mask_strategy="gspf", gspf_keep_ratio=0.01, gspf_reselect_every=50, dense_params="")
    assert (config.gspf_keep_ratio, config.gspf_reselect_every, config.dense_params) == (0.01, 50, "")


def write_yaml(tmp_path, text: str):
    path = tmp_path / "recipe.yaml"
    path.write_text("output_dir: unused\nbf16: false\n" + text)
    return str(path)


def test_cli_overrides_the_yaml(tmp_path):
    config = write_yaml(tmp_path, "mask_ratio: 0.3\nmask_scope: tensor\n")
    _, training_args, _ = make_parser().parse_args_and_config(["--config", config, "--mask_ratio", "0.6"])
    assert training_args.mask_ratio == 0.6
    assert training_args.mask_scope == "tensor"


@pytest.mark.parametrize(
    ("yaml_text", "cli", "setting"),
    [
        ("mask_ratio: 1.0\n", [], "mask_ratio"),
        ("", ["--mask_ratio", "-0.1"], "mask_ratio"),
        ("", ["--mask_ratio", "half"], "mask_ratio"),
        ("mask_ratio: half\n", [], "mask_ratio"),
        ("mask_strategy: lottery\n", [], "mask_strategy"),
        ("", ["--mask_scope", "row"], "mask_scope"),
    ],
)
def test_cli_refuses_bad_settings(tmp_path, capsys, yaml_text, cli, setting):
    config = write_yaml(tmp_path, yaml_text)
    with pytest.raises((ValueError, SystemExit)) as error:
        make_parser().parse_args_and_config(["--config", config, *cli])
    message = str(error.value) + capsys.readouterr().err
    assert setting in message


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"mask_start_step": 10, "max_steps": 3}, "masks from optimizer step 10 on"),
     ({"mask_strategy": "gps", "selection_steps": 3, "max_steps": 3}, "masks from optimizer step 3 on"),
     ({"mask_strategy": "gspf", "gspf_warmup_steps": 5, "max_steps": 5}, "masks from optimizer step 5 on"),
     ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps must be at least 1"),
     ({"per_device_train_batch_size": 0}, "per_device_train_batch_size must be at least 1")],  # fmt: skip
)
def test_settings_that_contradict_each_other_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        GMTSFTConfig(**{**BASE, **settings})


def test_a_run_whose_epochs_end_before_the_mask_starts_is_refused_at_its_start(tiny_assets, tmp_path):
    from test_sft_trainer import train

    # 256 rows in batches of 4: 64 optimizer steps in the epoch, all before mask_start_step 100.
    with pytest.raises(ValueError, match="the run has 64 steps"):
        train(tiny_assets, tmp_path, max_steps=-1, num_train_epochs=1, mask_ratio=0.5, mask_start_step=100)
