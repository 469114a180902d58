"""A strategy defined here, in the test file, is usable from the CLI and the trainer with no other edit.

Run as a script, this file registers ``EveryNthStrategy`` and then runs gmt/sft.py's main, as a
user's own launcher would: ``python tests/test_strategy_plugin.py --config ... --mask_strategy
every_nth --keep_every 3``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from typing import ClassVar

import pytest
import torch
from torch import Tensor

from gmt.masking import MaskSelection, MaskStrategy, Option, check_finite

KEEP_EVERY = Option("keep_every", int, 2, "Keep the entries whose flat index is a multiple of this.", low=1)


class EveryNthSelection(MaskSelection):
    def __init__(self, offsets: Sequence[int], keep_every: int) -> None:
        self.offsets, self.keep_every = offsets, keep_every

    def keep(self, index: int, grad: Tensor) -> Tensor:
        positions = torch.arange(grad.numel(), device=grad.device) + self.offsets[index]
        return (positions % self.keep_every == 0).view(grad.shape)


class EveryNthStrategy(MaskStrategy):
    """Keeps every ``keep_every``-th entry of each parameter (by its index in the full parameter)."""

    name = "every_nth"
    summary = "test only: every keep_every-th entry of each parameter"
    options: ClassVar[tuple[Option, ...]] = (KEEP_EVERY,)
    keep_every: int

    def select(self, grads: Sequence[Tensor | None], step: int) -> EveryNthSelection:
        check_finite([grad for grad in grads if grad is not None], self.all_reduce)
        return EveryNthSelection(self.access.local_offsets(), self.keep_every)


def run_plugin(*arguments: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, __file__, *arguments]
    return subprocess.run(command, cwd=os.path.dirname(os.path.dirname(__file__)), env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def test_cli_help_lists_the_plugin_strategy_and_its_option():
    result = run_plugin("--help")
    assert result.returncode == 0, result.stderr[-2000:]
    help_text = " ".join(result.stdout.split())
    assert "'every_nth': test only: every keep_every-th entry of each parameter" in help_text
    assert "--keep_every" in help_text and "every_nth only: Keep the entries" in help_text


def test_the_plugin_option_belongs_to_its_strategy_only(tmp_path):
    result = run_plugin("--config", "recipes/tiny/sft_gmt.yaml", "--output_dir", str(tmp_path), "--keep_every", "3")
    assert result.returncode != 0
    assert "keep_every applies to mask_strategy 'every_nth' only; mask_strategy is 'gmt'" in result.stderr


def test_the_plugin_strategy_trains_from_the_cli(tiny_assets, tmp_path):
    from transformers import AutoModelForCausalLM

    from conftest import logged

    out = tmp_path / "out"
    result = run_plugin(
        "--config", "recipes/tiny/sft_full.yaml", "--model_name_or_path", str(tiny_assets / "base"),
        "--dataset_name", str(tiny_assets / "data/sft"), "--output_dir", str(out), "--max_steps", "1",
        "--logging_steps", "1", "--per_device_train_batch_size", "4", "--max_length", "96", "--report_to", "none",
        "--lr_scheduler_type", "constant", "--warmup_steps", "0", "--mask_strategy", "every_nth", "--keep_every", "3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (fraction,) = logged(result.stdout, "mask/kept_fraction")
    base = dict(AutoModelForCausalLM.from_pretrained(tiny_assets / "base").named_parameters())
    trained = dict(AutoModelForCausalLM.from_pretrained(out).named_parameters())
    kept = moved = total = 0
    for name, start in base.items():
        keep = (torch.arange(start.numel()) % 3 == 0).view(start.shape)
        changed = trained[name] != start
        assert not (changed & ~keep).any(), name  # a dropped entry has no gradient and no moment: unmoved
        kept, moved, total = kept + int(keep.sum()), moved + int(changed.sum()), total + start.numel()
    assert fraction == pytest.approx(kept / total, abs=1e-4)
    # The kept entries trained: one step moves every kept entry whose gradient is non-zero, and
    # only the embedding rows of tokens absent from the batch have an exactly-zero one, so the count
    # is the same on any machine.
    assert moved > 0.5 * kept


if __name__ == "__main__":
    from gmt.masking import register_strategy

    register_strategy(EveryNthStrategy)  # before gmt.config is imported: the CLI is built from the registry

    from gmt.cli import finish
    from gmt.sft import main, make_parser

    finish(main(*make_parser().parse_args_and_config()))
