"""gmt/sft.py with faults injected, for the reliability tests (launched like gmt/sft.py).

Environment:
    GMT_TEST_NAN_STEPS: comma-separated optimizer steps (0-based) whose loss is made NaN, so that
        the whole accumulated gradient of those steps is NaN, on every engine.
    GMT_TEST_KILL_AT_SAVE: the step whose checkpoint save is cut short by SIGKILL, after the model
        and optimizer files are written and before ``trainer_state.json`` (a preemption mid-save).
    GMT_TEST_KILL_AT_ROTATION: the step whose save is cut short by SIGKILL as ``save_total_limit``
        starts deleting an older checkpoint (a preemption during the rotation).
    GMT_TEST_KILL_RANK_AFTER_SAVE: ``rank:step``: that rank is killed (SIGKILL) once it has written
        its part of that step's checkpoint, before the others mark it complete.
"""

from __future__ import annotations

import os
import shutil
import signal

from gmt.cli import finish, train_and_save
from gmt.sft import make_parser
from gmt.trainer import GMTSFTTrainer

NAN_STEPS = {int(step) for step in os.environ.get("GMT_TEST_NAN_STEPS", "").split(",") if step}
KILL_AT_SAVE = int(os.environ.get("GMT_TEST_KILL_AT_SAVE", "-1"))
KILL_AT_ROTATION = int(os.environ.get("GMT_TEST_KILL_AT_ROTATION", "-1"))
KILL_RANK, KILL_RANK_AT = (int(part) for part in os.environ.get("GMT_TEST_KILL_RANK_AFTER_SAVE", "-1:-1").split(":"))


class FaultyTrainer(GMTSFTTrainer):
    """``GMTSFTTrainer`` with the faults the environment asks for."""

    def compute_loss(self, model, inputs, *args, **kwargs):
        result = super().compute_loss(model, inputs, *args, **kwargs)
        if self.state.global_step not in NAN_STEPS:
            return result
        if isinstance(result, tuple):
            return (result[0] * float("nan"), *result[1:])
        return result * float("nan")

    current_step = -1  # the step being saved (for the rotation kill)

    def _save_checkpoint(self, model, trial) -> None:
        FaultyTrainer.current_step = self.state.global_step
        super()._save_checkpoint(model, trial)

    def _save_rng_state(self, output_dir) -> None:
        if self.state.global_step == KILL_AT_SAVE:
            os.kill(os.getpid(), signal.SIGKILL)
        super()._save_rng_state(output_dir)
        if self.state.global_step == KILL_RANK_AT and self.args.process_index == KILL_RANK:
            os.kill(os.getpid(), signal.SIGKILL)  # its files are written; the Trainer's state is rank 0's


def _rmtree_killed_at_rotation(path, *args, _rmtree=shutil.rmtree, **kwargs):
    if FaultyTrainer.current_step == KILL_AT_ROTATION and os.path.basename(str(path)).startswith("checkpoint-"):
        os.kill(os.getpid(), signal.SIGKILL)
    return _rmtree(path, *args, **kwargs)


if KILL_AT_ROTATION >= 0:
    shutil.rmtree = _rmtree_killed_at_rotation


if __name__ == "__main__":
    script_args, training_args, model_args = make_parser().parse_args_and_config()
    finish(train_and_save(FaultyTrainer, script_args, training_args, model_args))
