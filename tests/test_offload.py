"""DeepSpeed optimizer offload (docs/design.md, "Where each engine is hooked"): the mask lands in
the engine's own buffers, clipping sees the masked gradient's norm, and the layouts gmt cannot
serve are refused before any model loads (gmt/parallel.py).

The offload runs are real: 2 gloo processes with ``offload_optimizer: cpu`` (ZeRO-3 with
``offload_param: cpu`` as well), one optimizer step at mask_ratio 0.9, against one process
accumulating the same global batch.
"""

import json

import pytest
import torch
from accelerate.parallelism_config import ParallelismConfig
from transformers import AutoModelForCausalLM
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from conftest import deepspeed_launcher, run_sft
from gmt.config import GMTSFTConfig
from gmt.masking import strategy_class
from gmt.parallel import check_parallel_layout

RECIPE = "recipes/tiny/sft_gmt.yaml"
ONE_STEP = ("--max_steps", "1", "--logging_steps", "1", "--per_device_train_batch_size", "4",
            "--lr_scheduler_type", "constant", "--warmup_steps", "0", "--optim", "adamw_torch",
            "--save_strategy", "no")  # fmt: skip
GMT_RUN = (RECIPE, "--mask_ratio", "0.9")
KEPT = 0.1

# On a GPU, DeepSpeed's public ZeRO-3 getter returns a GPU copy of the CPU-offloaded fp32 gradient
# (on a CPU machine the "copy" is the tensor itself). This makes it copy here as well, in every
# process of the run, so that a mask written into what the getter returned would be lost here too.
COPYING_GETTER = """
import importlib.abc
import importlib.machinery
import sys

STAGE3 = "deepspeed.runtime.zero.stage3"


class CopyingGetter(importlib.abc.MetaPathFinder):
    # Patches DeepSpeed when it is imported (importing it here would print to the stdout of every
    # python process, py-cpuinfo's JSON subprocess included).
    def find_spec(self, name, path, target=None):
        if name != STAGE3:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            get = module.DeepSpeedZeroOptimizer_Stage3.get_local_fp32_grad_for_param
            module.DeepSpeedZeroOptimizer_Stage3.get_local_fp32_grad_for_param = lambda self, p: get(self, p).clone()

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, CopyingGetter())
"""


def offload_config(stage: int, client_optimizer: bool = False) -> dict:
    zero = {"stage": stage, "offload_optimizer": {"device": "cpu"}}
    if stage == 3:
        zero |= {"offload_param": {"device": "cpu"}, "stage3_gather_16bit_weights_on_model_save": True}
    config = {"zero_optimization": zero, "train_micro_batch_size_per_gpu": "auto",
              "gradient_accumulation_steps": "auto", "gradient_clipping": "auto"}  # fmt: skip
    if client_optimizer:  # the Trainer's (gmt's) AdamW steps the CPU partitions instead of DeepSpeedCPUAdam
        config["zero_force_ds_cpu_optimizer"] = False
    return config


def weights(path) -> dict[str, torch.Tensor]:
    return {n: p.detach().float() for n, p in AutoModelForCausalLM.from_pretrained(path).named_parameters()}


def changed_fraction(tiny_assets, out) -> float:
    base, trained = weights(tiny_assets / "base"), weights(out)
    changed = sum(int((trained[n] != base[n]).sum()) for n in base)
    return changed / sum(p.numel() for p in base.values())


def logged_grad_norm(out) -> float:
    (entry,) = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "grad_norm" in e]
    return entry["grad_norm"]


def offload_run(tiny_assets, tmp_path, ds_config, recipe, *overrides, env=None):
    out = tmp_path / "run"
    result = run_sft(recipe, tiny_assets / "base", tiny_assets / "data/sft", out, *ONE_STEP, *overrides,
                     "--gradient_accumulation_steps", "1", "--ddp_backend", "gloo",
                     launcher=deepspeed_launcher(tmp_path / "configs", ds_config), env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.parametrize("stage", [3, 2])
def test_offload_masks_the_engines_buffers_and_clips_by_the_masked_norm(tiny_assets, tmp_path, shared_run, stage):
    one_out, one = shared_run(RECIPE, tiny_assets / "base", tiny_assets / "data/sft", *ONE_STEP, *GMT_RUN[1:],
                              "--gradient_accumulation_steps", "2")  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(COPYING_GETTER)
    env = {"PYTHONPATH": str(tmp_path / "site")}
    out = offload_run(tiny_assets, tmp_path, offload_config(stage), *GMT_RUN, env=env)  # DeepSpeedCPUAdam, grad mode

    # The norm DeepSpeed clips by and logs is the masked gradient's, as on one process: it recorded
    # the unmasked one while offloading (2e-3 larger here, and with that the update is scaled).
    assert logged_grad_norm(out) == pytest.approx(logged_grad_norm(one_out), rel=1e-5)
    # The mask landed: Adam moves every kept entry and nothing else (weight_decay 0). Before the
    # fix, with the getter's copy, every entry moved.
    assert 0.95 * KEPT <= changed_fraction(tiny_assets, out) <= KEPT + 1e-4


@pytest.mark.parametrize(
    "settings",
    [
        (*GMT_RUN, "--gmt_mode", "update"),
        pytest.param(
            (
                "recipes/tiny/sft_full.yaml",
                "--mask_strategy",
                "gps",
                "--gps_k",
                "4",
                "--selection_steps",
                "1",
                "--max_steps",
                "2",
            ),
            marks=pytest.mark.slow,
        ),
    ],  # fmt: skip
    ids=["update", "gps"],
)
def test_offload_with_gmts_adamw_on_the_cpu_partitions(tiny_assets, tmp_path, settings):
    out = offload_run(tiny_assets, tmp_path, offload_config(3, client_optimizer=True), *settings)
    base, trained = weights(tiny_assets / "base"), weights(out)
    if "gps" in settings:  # one selection step (nothing moves), one masked step: at most 4 inputs per output row
        moved_per_row = [int((trained[n] != base[n]).sum(-1).max()) for n in base if base[n].dim() == 2]
        assert max(moved_per_row) <= 4 and sum(moved_per_row) > 0
    else:  # update mode: dropped entries hold still, kept ones move
        assert 0.95 * KEPT <= changed_fraction(tiny_assets, out) <= KEPT + 1e-4


@pytest.fixture
def config_of():
    """Training arguments built in this process (a DeepSpeed config registers itself with
    transformers: unregistered afterwards, so no later model load in this process sees ZeRO-3)."""

    def build(**settings) -> GMTSFTConfig:
        return GMTSFTConfig(output_dir="unused", bf16=False, **settings)

    yield build
    unset_hf_deepspeed_config()


def check(config: GMTSFTConfig) -> None:
    check_parallel_layout(strategy_class(config.mask_strategy).from_args(config), config)


OFFLOAD = {"offload_optimizer": {"device": "cpu"}}
GMT = dict(mask_strategy="gmt", mask_ratio=0.2)
REFUSED = {
    "update-with-DeepSpeedCPUAdam": (dict(stage=3, **OFFLOAD), {}, dict(GMT, gmt_mode="update"),
                                     '"zero_force_ds_cpu_optimizer": false'),
    "gps-with-DeepSpeedCPUAdam": (dict(stage=2, **OFFLOAD), {}, dict(mask_strategy="gps"),
                                  '"zero_force_ds_cpu_optimizer": false'),
    "nvme": (dict(stage=3, offload_optimizer={"device": "nvme", "nvme_path": "/tmp"}), {}, GMT, "'nvme'"),
    "mics": (dict(stage=3, mics_shard_size=2), {}, GMT, "MiCS (zero_optimization.mics_shard_size 2)"),
    "sequence-parallel": (dict(stage=3), {"sequence_parallel_size": 2}, GMT, "sequence_parallel_size 2"),
    "autotp": (dict(stage=2), {"tensor_parallel": {"autotp_size": 2}}, GMT, "tensor_parallel.autotp_size 2"),
    "scheduler": (dict(stage=3), {"scheduler": {"type": "WarmupLR"}},
                  dict(GMT, mask_start_step=1, dense_phase_learning_rate=1e-4), "remove the 'scheduler' block"),
    "optimizer": (dict(stage=3), {"optimizer": {"type": "AdamW"}}, dict(GMT, gmt_mode="update"),
                  "remove the 'optimizer' block"),
    "stage-0": (dict(stage=0), {}, GMT, "needs ZeRO stage 1, 2 or 3"),
    "zero1-bf16-fp32-accumulation": (dict(stage=1), {"bf16": {"enabled": True}, "data_types": {"grad_accum_dtype":
                                     "fp32"}}, GMT, "steps that layout with its BF16_Optimizer"),
    "zero3-partial-offload": (dict(stage=3, offload_optimizer={"device": "cpu", "ratio": 0.3}), {}, GMT,
                              "offload_optimizer.ratio 0.3"),
    "zero3-parameters-on-nvme": (dict(stage=3, offload_param={"device": "nvme", "nvme_path": "/tmp"}), {}, GMT,
                                 "offload_param.device 'nvme'"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_layouts_gmt_cannot_serve_are_refused_by_name(config_of, case):
    zero, top, settings, message = REFUSED[case]
    ds = {"zero_optimization": zero, "train_micro_batch_size_per_gpu": "auto", **top}
    config = config_of(deepspeed=ds, **settings)
    with pytest.raises((ValueError, NotImplementedError)) as refusal:
        check(config)
    assert message in str(refusal.value)


def test_fixed_mask_checkpoints_under_fsdp_are_refused_by_name(config_of, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # as accelerate launch with an FSDP config sets it
    with pytest.raises(NotImplementedError, match="'gps' under FSDP2 cannot save checkpoints yet"):
        check(config_of(mask_strategy="gps", save_strategy="steps"))
    check(config_of(mask_strategy="gps", save_strategy="no"))  # no checkpoint: runs
    check(config_of(**GMT, save_strategy="steps"))  # a top-k mask keeps no sparse state: runs


@pytest.mark.parametrize("size", ["dp_replicate_size", "tp_size", "cp_size", "sp_size"])
def test_parallelism_layouts_that_split_a_shard_are_refused(config_of, size):
    sizes = {"dp_shard_size": 2, size: 2}
    with pytest.raises(NotImplementedError, match=f"parallelism_config {size}=2"):
        check(config_of(parallelism_config=ParallelismConfig(**sizes), **GMT))


@pytest.mark.parametrize(
    ("zero", "top", "settings"),
    [
        (dict(stage=3, **OFFLOAD), {}, GMT),  # grad mode runs with DeepSpeedCPUAdam
        (dict(stage=3, **OFFLOAD), {"zero_force_ds_cpu_optimizer": False}, dict(GMT, gmt_mode="update")),
        (dict(stage=2, mics_shard_size=2), {"sequence_parallel_size": 2}, dict(mask_strategy="full")),
        # ZeRO-1 with bf16 accumulating in bf16, or offloaded: DeepSpeed keeps its ZeRO optimizer there
        (dict(stage=1), {"bf16": {"enabled": True}}, GMT),
        (dict(stage=1, **OFFLOAD), {"bf16": {"enabled": True}, "data_types": {"grad_accum_dtype": "fp32"}}, GMT),
        (dict(stage=3, offload_optimizer={"device": "cpu", "ratio": 1.0}), {}, GMT),
    ],  # fmt: skip
)
def test_layouts_gmt_serves_pass(config_of, zero, top, settings):
    ds = {"zero_optimization": zero, "train_micro_batch_size_per_gpu": "auto", **top}
    check(config_of(deepspeed=ds, **settings))


def test_the_refusal_comes_before_the_model_loads(tiny_assets, tmp_path):
    # The model path does not exist: the run must stop at the layout, not at the load.
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 3, **OFFLOAD},
                                                  "train_micro_batch_size_per_gpu": "auto"}))  # fmt: skip
    result = run_sft(RECIPE, tmp_path / "no-model", tiny_assets / "data/sft", tmp_path / "run", "--gmt_mode",
                     "update", "--deepspeed", str(tmp_path / "ds.json"), "--use_cpu", "true")  # fmt: skip
    assert result.returncode != 0
    assert '"zero_force_ds_cpu_optimizer": false' in result.stderr
    assert "no-model" not in result.stderr  # nothing tried to load it
