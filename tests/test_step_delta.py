"""Per-step sparse deltas (gmt.step_delta): what a step changed, in the saved dtype, and a chain of
deltas that rebuilds the weights exactly; the settings' refusals."""

import pytest
import torch
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from gmt.config import GMTSFTConfig
from gmt.delta import apply_delta, delta_base_fingerprint, load_delta
from gmt.masking import strategy_class
from gmt.parallel import check_parallel_layout
from gmt.step_delta import StepDeltas, delta_file, saved_weights


def test_a_step_that_moves_below_bf16_spacing_changes_nothing_in_the_saved_weights(tmp_path):
    # fp32 masters of weights loaded (and saved) in bf16, as gmt.precision keeps them
    layer = torch.nn.Linear(64, 32, bias=False)
    layer.weight.data = layer.weight.data.to(torch.bfloat16).float()  # values bf16 holds exactly
    start = {name: t.clone() for name, t in layer.state_dict().items()}
    deltas = StepDeltas(lambda: saved_weights(layer, {"weight": torch.bfloat16}), tmp_path)
    with torch.no_grad():
        layer.weight[:4] += 1e-6 * layer.weight[:4].abs()  # far below bf16's spacing: rounds away
        layer.weight[4:8] += 0.5  # a visible change: 4 rows of 64
    changed, size = deltas.take(1)
    assert changed == 4 * 64 and size == changed * (4 + 2)  # an int32 index and a bf16 value each
    with torch.no_grad():
        layer.weight[8] -= 0.25
    assert deltas.take(2) == (64, 64 * 6)  # only what changed since the last delta
    logs = deltas.pop_logs()
    assert logs["delta/changed_fraction"] == pytest.approx((256 + 64) / 2 / (64 * 32))
    assert logs["delta/bytes_vs_dense"] == pytest.approx((256 + 64) / 2 * 6 / (64 * 32 * 2))
    assert deltas.pop_logs() == {}
    # the chain, applied in order from the start (in bf16), gives the saved weights bit for bit
    weights = {name: t.to(torch.bfloat16) for name, t in start.items()}
    for step in (1, 2):
        path = delta_file(tmp_path, step)
        weights = apply_delta(weights, load_delta(path), delta_base_fingerprint(path))
    assert torch.equal(weights["weight"], layer.weight.detach().to(torch.bfloat16))
    # and a delta applied out of order is refused: its fingerprint names other weights
    with pytest.raises(ValueError, match="not the one the delta was computed against"):
        apply_delta({n: t.to(torch.bfloat16) for n, t in start.items()}, load_delta(delta_file(tmp_path, 2)),
                    delta_base_fingerprint(delta_file(tmp_path, 2)))  # fmt: skip


def test_step_delta_settings_that_cannot_be_honoured_are_refused():
    with pytest.raises(ValueError, match="step_delta_dir is set but step_delta_every is 0"):
        GMTSFTConfig(output_dir="unused", bf16=False, step_delta_dir="deltas")
    with pytest.raises(ValueError, match="step_delta_every must be 0"):
        GMTSFTConfig(output_dir="unused", bf16=False, step_delta_every=-1)


@pytest.mark.parametrize("layout", ["zero3", "fsdp"])
def test_step_deltas_of_sharded_parameters_are_refused_before_the_model_loads(layout, monkeypatch):
    settings = dict(output_dir="unused", bf16=False, step_delta_every=1, mask_strategy="gmt", mask_ratio=0.2)
    if layout == "fsdp":
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    else:
        settings["deepspeed"] = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": "auto"}
    try:
        config = GMTSFTConfig(**settings)
        with pytest.raises(NotImplementedError, match="step_delta_every under"):
            check_parallel_layout(strategy_class("gmt").from_args(config), config)
    finally:
        unset_hf_deepspeed_config()
