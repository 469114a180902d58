"""Bytes per weight sync in GRPO: what a trainer hands its generator when it sends only the entries
each optimizer step changed (gmt.step_delta: an int32 index and a value each), against the dense
weights, for full training, gmt in both modes, random at the same density and a fixed mask.

Each method runs GRPO on a tiny model (gmt.tiny, pretrained briefly: built once into
.cache/gmt-tiny-sync) for a few steps with ``step_delta_every 1``, in
fp32 and with bf16 weights (fp32 masters, saved and synced in bf16: a change below bf16's spacing
is no change); the reward is the completion's length, so that every group has an advantage to
follow from the first step. The figures are means over the run's steps.

    python scripts/sync_bytes.py     # docs/benchmarks/sync_bytes.{json,md,png}
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# method -> its mask settings (gmt's ratios drop that share: 0.97 keeps 3%, as RL recipes do)
METHODS = {
    "full": dict(mask_strategy="full"),
    "gmt grad 0.8": dict(mask_strategy="gmt", mask_ratio=0.8),
    "gmt update 0.8": dict(mask_strategy="gmt", mask_ratio=0.8, gmt_mode="update"),
    "gmt update 0.97": dict(mask_strategy="gmt", mask_ratio=0.97, gmt_mode="update"),
    "random update 0.97": dict(mask_strategy="random", mask_ratio=0.97, gmt_mode="update"),
    "gspf 3%": dict(mask_strategy="gspf", gspf_keep_ratio=0.03, gspf_warmup_steps=0),
}
PRECISIONS = ("fp32", "bf16 weights")


def length_reward(completions, **_) -> list[float]:
    """The completion's length in characters: rewards that differ within every group."""
    from gmt.rewards import completion_text

    return [float(len(completion_text(completion))) for completion in completions]


def run(method: str, precision: str, assets: Path, steps: int, workdir: Path) -> dict:
    """One GRPO run; the mean per-step delta figures it logged."""
    from datasets import Dataset

    from gmt import GMTGRPOConfig, GMTGRPOTrainer

    rows = [json.loads(line) for line in (assets / "data/dpo/train.jsonl").read_text().splitlines()[:64]]
    prompts = Dataset.from_list([{"prompt": row["prompt"]} for row in rows])
    bf16 = precision == "bf16 weights"
    args = GMTGRPOConfig(output_dir=str(workdir / "out"), max_steps=steps, per_device_train_batch_size=8,
                         num_generations=4, max_completion_length=16, learning_rate=1e-4, bf16=bf16, use_cpu=True,
                         report_to="none", logging_steps=1, save_strategy="no", save_plots=False, seed=0,
                         step_delta_every=1, model_init_kwargs={"dtype": "bfloat16" if bf16 else "float32"},
                         disable_tqdm=True, **METHODS[method])  # fmt: skip
    trainer = GMTGRPOTrainer(model=str(assets / "base"), reward_funcs=length_reward, args=args, train_dataset=prompts)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "delta/changed_fraction" in entry]
    keys = ("delta/changed_fraction", "delta/bytes", "delta/bytes_vs_dense")
    result = {key.removeprefix("delta/"): sum(entry[key] for entry in logged) / len(logged) for key in keys}
    result["kept_fraction"] = sum(entry.get("mask/kept_fraction", 1.0) for entry in logged) / len(logged)
    result["dense_bytes"] = trainer._step_deltas.dense_bytes
    return result


def markdown(records: list[dict], command: str) -> str:
    lines = [f"`{command}`", "",
             "Per GRPO optimizer step on the tiny model, the entries the step changed in the saved dtype, and the "
             "bytes of a sync of only those (an int32 index and a value each) against the dense weights.", "",
             "| method | weights | kept by the mask | changed a step | bytes a sync vs dense |",
             "|---|---|---:|---:|---:|"]  # fmt: skip
    for record in records:
        lines.append(f"| {record['method']} | {record['precision']} | {record['kept_fraction']:.1%} | "
                     f"{record['changed_fraction']:.2%} | {record['bytes_vs_dense']:.3f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(record["method"] for record in records))
    figure, axis = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / len(PRECISIONS)
    for offset, precision in enumerate(PRECISIONS):
        values = [next((r["bytes_vs_dense"] for r in records if r["method"] == m and r["precision"] == precision), 0)
                  for m in methods]  # fmt: skip
        axis.bar([i + offset * width for i in range(len(methods))], values, width, label=precision)
    axis.axhline(1.0, color="gray", linestyle="--", linewidth=1)
    axis.set_xticks([i + width * (len(PRECISIONS) - 1) / 2 for i in range(len(methods))], methods, fontsize=8)
    axis.set_ylabel("bytes a sync / dense weights")
    axis.set_title("GRPO weight sync of the changed entries only (tiny model)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    from readme_section import write_benchmark

    from gmt.tiny import TinySettings, ensure_tiny_assets

    # A briefly pretrained base is enough: what a step changes depends on the mask and the optimizer.
    SYNC_ASSETS = TinySettings(pretrain_steps=20, sft_train_examples=64, sft_test_examples=16,
                               dpo_train_examples=64, dpo_test_examples=16)  # fmt: skip

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", type=Path, default=REPO / "docs/benchmarks/sync_bytes.json")
    parser.add_argument("--assets", type=Path, default=REPO / ".cache/gmt-tiny-sync",
                        help="where the tiny model and its prompts are built (once)")
    args = parser.parse_args()
    assets = ensure_tiny_assets(args.assets, SYNC_ASSETS)
    records = []
    for method in METHODS:
        for precision in PRECISIONS:
            with tempfile.TemporaryDirectory() as workdir:
                records.append({"method": method, "precision": precision,
                                **run(method, precision, assets, args.steps, Path(workdir))})  # fmt: skip
            print(records[-1], flush=True)
    command = "python scripts/sync_bytes.py" + (f" --steps {args.steps}" if args.steps != 6 else "")
    write_benchmark(args.out, {"command": command, "steps": args.steps, "records": records},
                    markdown(records, command), "sync-bytes", REPO / "docs/benchmarks.md")  # fmt: skip
    plot(records, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
