"""Optimizer-step time of plain SFT against gmt (global scope, both modes), in alternating processes.

    python scripts/bench_step.py                  # tiny recipe + ~100M random Llama on 1 process,
                                                  # tiny recipe under 2-process ZeRO-3 (CPU, gloo)
    python scripts/bench_step.py --runs tiny/single --rounds 1 --steps 4 --no-docs    # a quick look
    python scripts/bench_step.py --runs 1b/single --device cuda    # GPU: 1B random Llama, bf16,
                                                  # flash-attn, activation checkpointing
    python scripts/bench_step.py --runs smollm2/single --out docs/benchmarks/step_smollm2.json \
        --section step-smollm2                    # the real model (python -m gmt.smollm2), every strategy

Needs the tiny assets (``python -m gmt.tiny``; the bigger models reuse its tokenizer and data).

Every measurement is the real trainer (``GMTSFTTrainer``, built as ``gmt/sft.py`` builds it, from
``recipes/tiny/sft_full.yaml``, the tiny recipe without mask settings, with overrides) in a fresh
process, with a callback that times each optimizer step from ``on_step_begin`` to ``on_step_end``:
the accumulated micro-batches' forward and backward, the mask, clipping and the optimizer update
(under DeepSpeed the update runs inside the last backward, and is inside the window too). The
first ``--warmup_steps`` steps are dropped. The methods run in turn, in a rotated order each round,
so slow drifts of a shared machine fall on all of them; the figure per method is the median over
every round's steps.

Writes ``docs/benchmarks/step.json`` and the table between the ``step:start`` / ``step:end``
markers of ``docs/benchmarks.md`` (``step-gpu:...`` for a CUDA device).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gmt.compare.methods import METHODS as COMPARED  # noqa: E402
from gmt.compare.methods import fixed_mask_budgets, gspf_warmup  # noqa: E402

DOC = REPO / "docs" / "benchmarks.md"
TINY = REPO / ".cache" / "gmt-tiny"
METHODS = {
    "full": ["--mask_strategy", "full"],
    "gmt-grad": ["--mask_strategy", "gmt", "--mask_ratio", "0.5", "--gmt_mode", "grad"],
    "gmt-update": ["--mask_strategy", "gmt", "--mask_ratio", "0.5", "--gmt_mode", "update"],
}
# Every strategy, for the real model, as the comparison runs each (gmt.compare.methods.METHODS; gps's and
# grft's budgets from the model, methods_of); gspf's warm-up, fitted to the timed run, falls in the
# dropped warm-up steps.
EVERY_STRATEGY = {
    **METHODS,
    "random": list(COMPARED["random-0.5"]),
    "magnitude": ["--mask_strategy", "magnitude", "--mask_ratio", "0.5"],
    "gps": list(COMPARED["gps"]),
    "grft": list(COMPARED["grft"]),
    "gspf": list(COMPARED["gspf"]),
}
SMOLLM2 = REPO / ".cache" / "smollm2"
# Random-initialized Llamas on the tiny tokenizer (a 463-token vocabulary: the blocks hold nearly
# every entry). Batch: micro-batch x accumulation (the tiny recipe's 16 x 2), sequences of about 50 tokens.
MODELS = {
    "tiny": {"size": None, "batch": (16, 2), "steps": 30},
    "100m": {
        "size": {
            "hidden_size": 768,
            "intermediate_size": 2048,
            "num_hidden_layers": 14,
            "num_attention_heads": 12,
            "num_key_value_heads": 12,
            "head_dim": 64,
        },
        "batch": (16, 2),
        "steps": 6,
    },
    # SmolLM2-135M-Instruct on its recipe's rows (up to 192 tokens; its recipe's batch).
    "smollm2": {"size": None, "batch": (4, 2), "steps": 6, "recipe": "recipes/smollm2-135m/sft_full.yaml",
                "data": SMOLLM2 / "data" / "word_sequence_reversal", "methods": EVERY_STRATEGY},
    "1b": {
        "size": {
            "hidden_size": 2048,
            "intermediate_size": 5504,
            "num_hidden_layers": 20,
            "num_attention_heads": 16,
            "num_key_value_heads": 16,
            "head_dim": 128,
        },
        "batch": (8, 2),
        "steps": 10,
    },
}
ENGINES = {
    "single": [sys.executable],
    "zero3": [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "recipes/accelerate/cpu_zero3.yaml"],
}
DEFAULT_RUNS = ("tiny/single", "100m/single", "tiny/zero3")


def methods_of(model: str, steps: int | None = None) -> dict[str, list[str]]:
    """The methods timed on ``model``: gmt's modes and full, or every strategy (the real model, with
    gps's and grft's budgets for it and gspf's warm-up fitted to a run of ``steps``)."""
    methods = MODELS[model].get("methods", METHODS)
    if methods is not EVERY_STRATEGY:
        return methods
    budgets = fixed_mask_budgets(str(model_path(model)))
    return {name: [*gspf_warmup(tuple(overrides), steps), *budgets.get(name, ())]
            for name, overrides in methods.items()}


def model_path(model: str) -> Path:
    """The model's directory: the tiny base or the real model itself, or a random-initialized Llama saved once."""
    if model == "smollm2":
        from gmt.smollm2 import ensure_smollm2_assets

        return ensure_smollm2_assets(SMOLLM2 / "SmolLM2-135M-Instruct", SMOLLM2 / "data")[0]
    if MODELS[model]["size"] is None:
        return TINY / "base"
    path = REPO / ".cache" / "gmt-bench" / f"llama-{model}"
    if not (path / "config.json").is_file():
        from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

        config = AutoConfig.from_pretrained(TINY / "base")
        for key, value in MODELS[model]["size"].items():
            setattr(config, key, value)
        llama = LlamaForCausalLM(config)  # random initialization: what we time needs no training
        llama.save_pretrained(path)
        AutoTokenizer.from_pretrained(TINY / "base").save_pretrained(path)
        print(f"built {path} ({sum(p.numel() for p in llama.parameters()) / 1e6:.0f}M parameters)", flush=True)
    return path


def worker(args: argparse.Namespace, overrides: list[str]) -> None:
    """One trainer run (inside a launched process): time every optimizer step, write rank 0's times."""
    import torch
    from transformers import TrainerCallback

    from gmt.cli import build_trainer
    from gmt.masking import GradientMasker
    from gmt.sft import make_parser
    from gmt.trainer import GMTSFTTrainer

    script_args, training_args, model_args = make_parser().parse_args_and_config(
        args=["--config", args.worker_recipe, *overrides]
    )
    trainer = build_trainer(GMTSFTTrainer, script_args, training_args, model_args)
    cuda = torch.cuda.is_available()

    def clock() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    class StepTimer(TrainerCallback):
        """Times each optimizer step, and the optimizer's own step inside it (between the
        Trainer's pre- and post-optimizer callbacks; a no-op under DeepSpeed, which steps inside
        the backward)."""

        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.optimizer_seconds: list[float] = []

        def on_step_begin(self, *unused, **kwargs) -> None:
            self.started = clock()

        def on_pre_optimizer_step(self, *unused, **kwargs) -> None:
            self.optimizer_started = clock()

        def on_optimizer_step(self, *unused, **kwargs) -> None:
            self.optimizer_seconds.append(clock() - self.optimizer_started)

        def on_step_end(self, *unused, **kwargs) -> None:
            self.seconds.append(clock() - self.started)

    # The mask step itself, timed where it runs (the Trainer's grad-norm hook, or inside DeepSpeed's step).
    mask_seconds: list[float] = []
    apply = GradientMasker.apply

    def timed_apply(masker, *apply_args, **apply_kwargs):
        started = clock()
        apply(masker, *apply_args, **apply_kwargs)
        mask_seconds.append(clock() - started)

    GradientMasker.apply = timed_apply

    timer = StepTimer()
    trainer.add_callback(timer)
    trainer.train()
    if trainer.accelerator.is_main_process:
        parameters = sum(p.numel() for p in trainer.model.parameters())
        peak = torch.cuda.max_memory_allocated() if cuda else None
        record = {
            "seconds": timer.seconds,
            "optimizer_seconds": timer.optimizer_seconds,
            "mask_seconds": mask_seconds,
            "parameters": parameters,
            "peak_gpu_bytes": peak,
        }
        Path(args.worker_out).write_text(json.dumps(record))
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


def measure(run: str, method: str, args: argparse.Namespace, out_dir: Path) -> dict:
    """Launch one worker process for ``method`` on ``run`` (``model/engine``) and read its step times."""
    model, engine = run.split("/")
    micro_batch, accumulation = MODELS[model]["batch"]
    if engine == "zero3":  # 2 ranks x 1 micro-batch = the same examples per step as 1 process x 2
        micro_batch, accumulation = micro_batch, 1
    out = out_dir / f"{model}-{engine}-{method}.json"
    overrides = [
        "--model_name_or_path",
        str(model_path(model)),
        "--dataset_name",
        str(MODELS[model].get("data", TINY / "data" / "sft")),
        "--output_dir",
        str(out_dir / "trainer"),
        "--overwrite_output_dir",  # every method trains in the same scratch folder, one after the other
        "true",
        "--max_steps",
        str(args.warmup_steps + timed_steps(model, args)),
        "--per_device_train_batch_size",
        str(micro_batch),
        "--gradient_accumulation_steps",
        str(accumulation),
        "--logging_steps",
        "1000",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        *methods_of(model, args.warmup_steps + timed_steps(model, args))[method],
    ]
    if engine == "zero3":
        overrides += ["--ddp_backend", "gloo"]
    if args.device == "cuda":
        overrides += [
            "--bf16",
            "true",
            "--attn_implementation",
            "flash_attention_2",
            "--activation_checkpointing",
            "true",
            "--dataloader_pin_memory",
            "true",
        ]
    recipe = MODELS[model].get("recipe", "recipes/tiny/sft_full.yaml")
    command = [*ENGINES[engine], str(Path(__file__).resolve()), "--worker_out", str(out), "--worker_recipe", recipe,
               "--", *overrides]  # fmt: skip
    environment = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    if engine == "zero3" and args.device == "cpu":
        environment["OMP_NUM_THREADS"] = "1"  # 2 ranks on the cores: one thread each, not 2 x all
    result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{run} {method} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    record = json.loads(out.read_text())
    for key in ("seconds", "optimizer_seconds", "mask_seconds"):
        record[key] = record[key][args.warmup_steps :]
    return record


# Issue 7's target for the gmt step overhead, by device.
TARGET_OVERHEAD = {"cpu": 0.03, "cuda": 0.01}


def timed_steps(model: str, args: argparse.Namespace) -> int:
    """Timed steps per process: ``--steps``, or the model's default (more for the cheap tiny steps,
    whose medians the machine's noise moves most)."""
    return args.steps or MODELS[model]["steps"]


def batch_words(model: str, engine: str) -> str:
    micro_batch, accumulation = MODELS[model]["batch"]
    if engine == "zero3":
        return f"2 ranks x {micro_batch}"
    return f"{micro_batch} x {accumulation}"


def markdown(results: dict, args: argparse.Namespace, machine: str, command: str, steps: dict[str, int]) -> str:
    lines = [
        f"Machine: {machine}. Median optimizer-step time over {args.rounds} rounds x the steps column "
        f"(after {args.warmup_steps} warm-up steps per process); gmt at mask ratio 0.5, global scope.",
        "",
        f"Command: `{command}`",
        "",
        "Step times are medians over separate processes (they differ by a few percent from process to",
        "process); the timed overhead is measured inside the steps: the mask step plus the method's",
        "optimizer step beyond plain AdamW's, over the full SFT step (under DeepSpeed the optimizer runs",
        "inside the backward, so only the mask step is timed).",
        "",
        "| model | engine | parameters | batch | steps | full SFT step | gmt grad step | gmt update step | mask step "
        "| grad: timed overhead | update: timed overhead | grad / full | update / full |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run, by_method in results.items():
        model, engine = run.split("/")
        full, grad, update = (by_method[m] for m in ("full", "gmt-grad", "gmt-update"))
        lines.append(
            f"| {model} | {engine} | {full['parameters'] / 1e6:.1f}M | {batch_words(model, engine)} "
            f"| {steps[run]} "
            f"| {full['median_seconds']:.3f} s "
            f"| {grad['median_seconds']:.3f} s | {update['median_seconds']:.3f} s "
            f"| {1000 * grad['median_mask_seconds']:.1f} ms "
            f"| {100 * grad['timed_overhead_vs_full']:+.2f}% | {100 * update['timed_overhead_vs_full']:+.2f}% "
            f"| {100 * grad['overhead_vs_full']:+.1f}% | {100 * update['overhead_vs_full']:+.1f}% |"
        )
    lines.append("")
    for run, by_method in results.items():
        model = run.split("/")[0]
        target = TARGET_OVERHEAD[args.device]
        verdicts = [
            f"{mode} mode {'met' if by_method[method]['timed_overhead_vs_full'] <= target else 'NOT met'} "
            f"({100 * by_method[method]['timed_overhead_vs_full']:+.2f}%)"
            for mode, method in (("grad", "gmt-grad"), ("update", "gmt-update"))
        ]
        lines.append(
            f"Target for {model} on {run.split('/')[1]}: timed overhead within {100 * target:.0f}% "
            f"of the full SFT step: {', '.join(verdicts)}."
        )
        lines.append("")
    for run, by_method in results.items():
        if set(by_method) <= set(METHODS):
            continue
        lines += [f"Every strategy on {run} (gmt, random and magnitude at ratio 0.5; gps and grft at an eighth of "
                  "the hidden size; gspf keeping 5%), each step's time as a ratio of full SFT's in the same run:", "",
                  "| method | step (median) | × full's step | mask step | timed overhead |",
                  "|---|---:|---:|---:|---:|"]  # fmt: skip
        full = by_method["full"]["median_seconds"]
        for method, this in by_method.items():
            overhead = 100 * this["timed_overhead_vs_full"]
            lines.append(f"| {method} | {this['median_seconds']:.2f} s | {this['median_seconds'] / full:.3f} "
                         f"| {1000 * this['median_mask_seconds']:.0f} ms | {overhead:+.1f}% |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=",".join(DEFAULT_RUNS), help="comma-separated model/engine pairs")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per process (default: per model)")
    parser.add_argument("--warmup_steps", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "step.json")
    parser.add_argument("--no-docs", dest="docs", action="store_false", help="don't write docs/benchmarks.md")
    parser.add_argument("--worker_out", help=argparse.SUPPRESS)
    parser.add_argument("--worker_recipe", help=argparse.SUPPRESS)
    parser.add_argument("--section", default=None,
                        help="the markers of docs/benchmarks.md the table goes between (default: step, or step-gpu)")
    parser.add_argument("--render", action="store_true", help="rewrite the tables from --out's JSON, no timing")
    args, overrides = parser.parse_known_args()
    if args.render:
        from readme_section import write_benchmark

        result = json.loads(args.out.read_text())
        args.device, args.rounds = result["device"], result["rounds"]
        args.warmup_steps = result.get("warmup_steps", args.warmup_steps)
        steps = result["steps"]
        if isinstance(steps, int):  # one figure for every run (older results)
            steps = {run: steps for run in result["runs"]}
        command = result.get("command", "python scripts/bench_step.py")
        table = markdown(result["runs"], args, result["machine"], command, steps)
        section = (args.section or ("step" if args.device == "cpu" else "step-gpu")) if args.docs else None
        write_benchmark(args.out, result, table, section, DOC)
        return
    if args.worker_out:
        worker(args, [o for o in overrides if o != "--"])
        return

    from machine import describe_machine

    machine = describe_machine(args.device)
    runs = args.runs.split(",")
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for run in runs:
            methods = methods_of(run.split("/")[0])
            seconds: dict[str, list[float]] = {method: [] for method in methods}
            optimizer_seconds: dict[str, list[float]] = {method: [] for method in methods}
            mask_seconds: dict[str, list[float]] = {method: [] for method in methods}
            records: dict[str, dict] = {}
            order = list(methods)
            for round_index in range(args.rounds):
                rotated = order[round_index % len(order) :] + order[: round_index % len(order)]
                for method in rotated:
                    record = measure(run, method, args, Path(scratch))
                    seconds[method] += record["seconds"]
                    optimizer_seconds[method] += record["optimizer_seconds"]
                    mask_seconds[method] += record["mask_seconds"]
                    records[method] = record
                    print(
                        f"{run} round {round_index + 1}: {method} median "
                        f"{statistics.median(record['seconds']):.4f} s/step",
                        flush=True,
                    )
            results[run] = {
                method: {
                    "median_seconds": statistics.median(seconds[method]),
                    "step_seconds": seconds[method],
                    "median_mask_seconds": statistics.median(mask_seconds[method] or [0.0]),
                    "median_optimizer_seconds": statistics.median(optimizer_seconds[method] or [0.0]),
                    "parameters": records[method]["parameters"],
                    "peak_gpu_bytes": records[method]["peak_gpu_bytes"],
                }
                for method in methods
            }
            full = results[run]["full"]
            for method in methods:
                this = results[run][method]
                this["overhead_vs_full"] = this["median_seconds"] / full["median_seconds"] - 1
                # What the method adds, timed inside its own steps: the mask step, and its optimizer
                # step beyond plain AdamW's. Free of the step-to-step noise of separate processes.
                optimizer_extra = this["median_optimizer_seconds"] - full["median_optimizer_seconds"]
                added = this["median_mask_seconds"] + optimizer_extra
                this["timed_overhead_vs_full"] = added / full["median_seconds"]
    steps = {run: timed_steps(run.split("/")[0], args) for run in runs}
    command = " ".join(["python scripts/bench_step.py", *sys.argv[1:]])
    result = {
        "machine": machine,
        "device": args.device,
        "command": command,
        "rounds": args.rounds,
        "warmup_steps": args.warmup_steps,
        "steps": steps,
        "runs": results,
    }
    from readme_section import write_benchmark

    section = (args.section or ("step" if args.device == "cpu" else "step-gpu")) if args.docs else None
    write_benchmark(args.out, result, markdown(results, args, machine, command, steps), section, DOC)


if __name__ == "__main__":
    main()
