"""Optimizer-state bytes and peak process memory of each method, side by side, on one model.

    python scripts/bench_memory.py                      # ~100M-parameter random Llama, CPU
    python scripts/bench_memory.py --hidden 256 --layers 2 --vocab 4096   # a quick look

Needs the ``peft`` and ``plots`` extras: ``pip install -e ".[peft,plots]"``.

Every method runs in its own process (peak RSS only grows, so processes can't share), on the
same random-initialized Llama and the same random token batches, with the masking core the
trainers use (strategy_class, freeze_parameters, masking_optimizer, GradientMasker; LoRA through
PEFT with AdamW): a few optimizer steps of forward, backward, mask and update, fp32, batch 2.
Recorded per method:

- ``optimizer_state_bytes``: every tensor in the optimizer's state after the last step (moments,
  kept-entry indices, step counts), and its ratio to full AdamW's;
- ``strategy_bytes``: what the strategy itself holds then (fixed-mask indices, gspf's score
  buffers, grft's pretrained values);
- ``peak_rss_bytes`` of the process and ``training_rss_bytes`` = peak minus the RSS right after the
  model was built (what training added: gradients, optimizer state, activations, buffers).

Writes ``docs/memory.json``, ``docs/memory.md``, ``docs/memory.png`` and the table in
``docs/strategies.md`` between the ``memory:start`` / ``memory:end`` markers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from readme_section import replace_readme_section

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- memory:start -->", "<!-- memory:end -->"
DOC = Path(__file__).resolve().parents[1] / "docs" / "strategies.md"  # where the table is discussed
METHODS = ("full", "gmt", "gps", "grft", "gspf", "lora")
# The settings each method runs with (steps include gps/grft's selection pass and gspf's warm-up).
SETTINGS = {
    "full": {"mask_strategy": "full"},
    "gmt": {"mask_strategy": "gmt", "mask_ratio": 0.8},
    "gps": {"mask_strategy": "gps", "gps_k": 4, "selection_steps": 1},
    "grft": {"mask_strategy": "grft", "grft_k": 8, "grft_lambda": 1e-4, "selection_steps": 1},
    "gspf": {"mask_strategy": "gspf", "gspf_keep_ratio": 0.003, "gspf_warmup_steps": 1},
    "lora": {"lora_r": 8},
}


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def tensor_bytes(value) -> int:
    """Bytes of the tensors in a (nested) container."""
    import torch

    if torch.is_tensor(value):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def build_model(args):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate or int(args.hidden * 8 / 3 // 64 * 64),
        num_hidden_layers=args.layers,
        num_attention_heads=max(1, args.hidden // 64),
        num_key_value_heads=max(1, args.hidden // 64),
        max_position_embeddings=args.seq_len,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def run_method(method: str, args) -> dict:
    """One method in this process: build, train ``args.steps`` steps, measure."""
    import torch

    from gmt.masking import GradientMasker, LocalGradientAccess, freeze_parameters, masking_optimizer, strategy_class
    from gmt.masking.sparse_optim import optimizer_state_bytes

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = build_model(args)
    parameters = sum(p.numel() for p in model.parameters())
    settings = dict(SETTINGS[method])
    masker, strategy = None, None
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        model = get_peft_model(model, LoraConfig(r=settings["lora_r"], lora_alpha=16, target_modules=targets))
    else:  # the trainer's own setup: the strategy from its settings, its default frozen parameters
        cls = strategy_class(settings["mask_strategy"])
        strategy = cls(**{k: v for k, v in settings.items() if k != "mask_strategy"})
        freeze_parameters(model.named_parameters(), cls.default_frozen_params)
    after_build = rss_bytes()

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer_cls, optimizer_kwargs = torch.optim.AdamW, {"lr": 1e-4, "weight_decay": 0.0}
    if strategy is not None:  # the optimizer the trainer would pick for this strategy
        optimizer_cls, optimizer_kwargs = (
            masking_optimizer(strategy.optimizer_kind, optimizer_cls, optimizer_kwargs, strategy.name)
            or (optimizer_cls, optimizer_kwargs)
        )
        masker = GradientMasker(strategy, LocalGradientAccess(model.named_parameters()), total_steps=args.steps)
    optimizer = optimizer_cls(trainable, **optimizer_kwargs)

    generator = torch.Generator().manual_seed(1)
    started = time.perf_counter()
    for step in range(args.steps):
        batch = torch.randint(0, args.vocab, (args.batch_size, args.seq_len), generator=generator)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        if masker is not None:
            masker.apply(step, optimizer)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - started
    peak = peak_rss_bytes()
    strategy_state = masker.strategy.state_dict() if masker is not None else {}
    kept = masker.pop_logs().get("mask/kept_fraction") if masker is not None else None
    return {
        "method": method,
        "settings": settings,
        "parameters": parameters,
        "trainable_parameters": sum(p.numel() for p in trainable),
        "last_kept_fraction": kept,
        "optimizer_state_bytes": optimizer_state_bytes(optimizer),
        "strategy_bytes": tensor_bytes(strategy_state),
        "peak_rss_bytes": peak,
        "training_rss_bytes": peak - after_build,
        "steps": args.steps,
        "seconds": seconds,
    }


def markdown(records: list[dict], header: dict) -> str:
    full = next(r for r in records if r["method"] == "full")
    gib = 2**30
    lines = [
        f"Model: random Llama, {full['parameters'] / 1e6:.0f}M parameters, fp32, batch {header['batch_size']} x "
        f"{header['seq_len']} tokens, {header['steps']} steps per method, each in its own process. "
        f"Machine: {header['machine']}.",
        "",
        "| method | settings | optimizer state | vs full AdamW | strategy buffers | training RSS | peak RSS |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items() if k != "mask_strategy") or "-"
        ratio = r["optimizer_state_bytes"] / full["optimizer_state_bytes"]
        lines.append(
            f"| {r['method']} | {settings} | {r['optimizer_state_bytes'] / 2**20:.1f} MiB | {ratio:.2%} | "
            f"{r['strategy_bytes'] / 2**20:.1f} MiB | {r['training_rss_bytes'] / gib:.2f} GiB | "
            f"{r['peak_rss_bytes'] / gib:.2f} GiB |"
        )
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [r["method"] for r in records]
    state = [r["optimizer_state_bytes"] / 2**20 for r in records]
    training = [r["training_rss_bytes"] / 2**20 for r in records]
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].bar(methods, state, color="tab:blue")
    axes[0].set_ylabel("MiB")
    axes[0].set_title("optimizer state after the last step")
    axes[1].bar(methods, training, color="tab:orange")
    axes[1].set_title("process memory added by training (peak RSS)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--intermediate", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--seq_len", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    parser.add_argument("--no_readme", action="store_true", help="don't rewrite the table in docs/strategies.md")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print("RESULT " + json.dumps(run_method(args.worker, args)))
        return

    from tqdm import tqdm

    passthrough = [f"--{k}={getattr(args, k)}" for k in ("hidden", "layers", "intermediate", "vocab", "seq_len",
                                                         "batch_size", "steps")]  # fmt: skip
    records = []
    for method in tqdm(args.methods, desc="methods", unit="method"):
        result = subprocess.run(
            [sys.executable, __file__, "--worker", method, *passthrough],
            cwd=REPO,
            capture_output=True,
            text=True,
            # A fixed mmap threshold: glibc otherwise raises it after the first large free and keeps
            # later freed buffers in the heap, which made peak RSS vary by 0.3 GiB between runs.
            env={**os.environ, "PYTHONPATH": str(REPO), "MALLOC_MMAP_THRESHOLD_": "131072"},
        )
        lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
        if result.returncode != 0 or not lines:
            sys.exit(f"{method} failed:\n{result.stderr[-3000:]}")
        records.append(json.loads(lines[-1][len("RESULT ") :]))

    header = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {__import__('torch').__version__}",
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "steps": args.steps,
    }
    command = "python scripts/bench_memory.py " + " ".join(sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory.json").write_text(json.dumps({**header, "command": command.strip(), "results": records},
                                                     indent=2) + "\n")  # fmt: skip
    table = markdown(records, header) if "full" in args.methods else ""
    (args.out / "memory.md").write_text(f"`{command.strip()}`\n\n{table}")
    if table:
        plot(records, args.out / "memory.png")
        if not args.no_readme:
            replace_readme_section(START, END, f"`{command.strip()}`\n\n{table}", DOC)
    print(table)


if __name__ == "__main__":
    main()
