"""gmt/sft.py, but the trainer's ``train()`` runs twice: under DeepSpeed each call builds an engine
of its own. Launched like gmt/sft.py, for test_step_seam; prints each run's logged kept fractions
as ``run <i> kept fractions: [...]`` on the main process.
"""

from __future__ import annotations

from gmt.cli import build_trainer, finish
from gmt.sft import make_parser
from gmt.trainer import GMTSFTTrainer

if __name__ == "__main__":
    script_args, training_args, model_args = make_parser().parse_args_and_config()
    trainer = build_trainer(GMTSFTTrainer, script_args, training_args, model_args)
    for run in (1, 2):
        trainer.train()
        logs = trainer.state.log_history
        fractions = [entry["mask/kept_fraction"] for entry in logs if "mask/kept_fraction" in entry]
        trainer.accelerator.print(f"run {run} kept fractions: {fractions}")
    finish(trainer)
