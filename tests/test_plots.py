"""The pictures a run leaves without being asked: a loss curve and a mask heatmap that shows what
varies under the run's scope (their numbers are read here, and the PNGs decoded)."""

import json

import pytest

from gmt.plots import HISTORY_FILE, heatmap, loss_curves
from gmt.sft import main, make_parser


def train(tiny_assets, out, *overrides):
    args = ["--config", "recipes/tiny/sft_gmt.yaml", "--model_name_or_path", str(tiny_assets / "base"),
            "--dataset_name", str(tiny_assets / "data" / "sft"), "--output_dir", str(out), "--max_steps", "4",
            "--logging_steps", "1", "--per_device_train_batch_size", "4", "--max_length", "96", "--report_to", "none",
            "--eval_suite", "none", "--disable_tqdm", "true", "--mask_strategy", "gmt", "--mask_ratio", "0.5",
            *overrides]  # fmt: skip
    return main(*make_parser().parse_args_and_config(args))


@pytest.mark.parametrize("scope", ["global", "layer", "tensor"])
def test_a_run_draws_its_loss_and_where_its_mask_went(tiny_assets, tmp_path, scope):
    from matplotlib.image import imread

    trainer = train(tiny_assets, tmp_path, "--mask_scope", scope)
    history = json.loads((tmp_path / HISTORY_FILE).read_text())
    steps, losses = loss_curves(trainer.state.log_history)["loss"]
    assert steps == [1, 2, 3, 4] and len(losses) == 4
    what, rows, logged, values = heatmap(history)
    assert logged == [1, 2, 3, 4]
    if scope == "global":  # one top-k over everything: the blocks' fractions differ
        assert what == "kept fraction per block" and len({round(row[0], 4) for row in values}) > 1
    elif scope == "layer":  # every block keeps half by construction: the tensors within a block differ
        assert what == "kept fraction per tensor"
        blocks = [int(name.split(".layers.")[1].split(".")[0]) for name in rows if ".layers." in name]
        assert blocks == sorted(blocks)  # in the model's order
        block = [row[0] for name, row in zip(rows, values) if ".layers.0." in name and name.endswith("weight")]
        assert len(block) > 2 and max(block) - min(block) > 0.05
    else:  # every tensor keeps half: its threshold is what differs
        assert what.startswith("threshold T per tensor") and len({round(row[0], 3) for row in values}) > 1
    for picture in ("loss.png", "mask_heatmap.png"):
        pixels = imread(tmp_path / picture)
        assert pixels.shape[0] > 100 and pixels.std() > 0.05  # drawn, not blank


def test_save_plots_false_leaves_no_pictures(tiny_assets, tmp_path):
    train(tiny_assets, tmp_path, "--save_plots", "false")
    assert not (tmp_path / "loss.png").exists() and not (tmp_path / "mask_heatmap.png").exists()
