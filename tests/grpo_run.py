"""A GRPO run of the tiny model with gmt, for tests/test_grpo.py to launch under several processes:
``grpo_run.py BASE TRAIN_JSONL OUT [--ddp_backend gloo]``. Writes ``OUT/result.json`` on the main
process: the share of entries the run moved, the kept fraction it logged, and the world size."""

import json
import sys
from pathlib import Path

from datasets import Dataset
from grpo_rewards import longer_is_better  # rewards that differ within a group (tests/ is this script's folder)

from gmt import GMTGRPOConfig, GMTGRPOTrainer
from gmt.cli import finish


def main() -> None:
    base, train, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    rows = [json.loads(line) for line in train.read_text().splitlines()[:8]]
    prompts = Dataset.from_list([{"prompt": row["messages"][:1]} for row in rows])
    args = GMTGRPOConfig(output_dir=str(out), max_steps=1, per_device_train_batch_size=4, num_generations=4,
                         max_completion_length=8, learning_rate=1e-3, bf16=False, use_cpu=True, report_to="none",
                         logging_steps=1, save_strategy="no", save_plots=False, seed=0, mask_strategy="gmt",
                         mask_ratio=0.8, ddp_backend="gloo" if "--ddp_backend" in sys.argv else None)  # fmt: skip
    trainer = GMTGRPOTrainer(model=base, reward_funcs=longer_is_better, args=args, train_dataset=prompts)
    trainer.train()
    trainer.save_model(str(out))  # gathered from the ZeRO-3 shards
    if trainer.accelerator.is_main_process:
        from safetensors.torch import load_file

        before = load_file(str(Path(base) / "model.safetensors"))  # ZeRO-3 has partitioned the live weights
        after = load_file(str(out / "model.safetensors"))
        moved = sum(int((after[name] != before[name]).sum()) for name in after if name in before)
        total = sum(after[name].numel() for name in after if name in before)
        kept = next(entry["mask/kept_fraction"] for entry in trainer.state.log_history if "mask/kept_fraction" in entry)
        (out / "result.json").write_text(json.dumps({"moved": moved / total, "kept": kept,
                                                     "world_size": trainer.args.world_size}))  # fmt: skip
    finish(trainer)  # as gmt sft ends a launched run: every rank waits, then leaves without finalization


if __name__ == "__main__":
    main()
