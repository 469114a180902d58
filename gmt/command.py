"""The ``gmt`` command: one entry point with subcommands, as ``trl`` and ``llamafactory-cli`` have.

    gmt sft --config recipes/tiny/sft_gmt.yaml [--setting value ...]     # = gmt-sft, python gmt/sft.py
    gmt dpo --config recipes/tiny/dpo_gmt.yaml
    gmt grpo --config recipes/tiny/grpo_gmt.yaml
    gmt eval --suite tiny --model outputs/tiny/sft_gmt                     # = gmt-eval
    gmt check --config recipes/tiny/sft_gmt.yaml                           # the preflight, no weights loaded
    gmt compare --config recipes/smollm2-135m/sft_gmt.yaml --plan          # the comparison (docs/comparison.md)
    gmt delta export|apply ...    gmt merge --adapter RUN --out DIR    gmt plot RUN

Under several processes launch the scripts as before (``accelerate launch gmt/sft.py ...``).
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module with a main or cli, its function, what it does)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "sft": ("gmt.sft", "cli", "supervised fine-tuning with gradient masking (TRL's SFTTrainer)"),
    "dpo": ("gmt.dpo", "cli", "preference optimization with gradient masking (TRL's DPOTrainer)"),
    "grpo": ("gmt.grpo", "cli", "online RL with verifier rewards and gradient masking (TRL's GRPOTrainer)"),
    "eval": ("gmt.evaluation", "main", "score a checkpoint with an lm-eval suite (eval/suites)"),
    "check": ("gmt.check", "main", "preflight a recipe: what the run would be, and every refusal, loading no weights"),
    "compare": ("gmt.compare.cli", "main", "every method at its validation-best learning rate on a recipe, then seeds"),
    "delta": ("gmt.tools.delta", "main", "export a fine-tune as a sparse delta against its base, or apply one"),
    "merge": ("gmt.tools.merge", "main", "merge a LoRA run's adapter into its base"),
    "plot": ("gmt.tools.plot_mask", "main", "draw a run's mask heatmap (kept fraction per layer over steps)"),
}


def usage() -> str:
    """The text ``gmt`` and ``gmt --help`` print."""
    width = max(map(len, COMMANDS))
    lines = [f"  gmt {name:<{width}}  {what}" for name, (_, _, what) in COMMANDS.items()]
    return "usage: gmt COMMAND [arguments]   (gmt COMMAND --help for its settings)\n\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run ``gmt COMMAND ...``: the subcommand's own entry point, with the rest of the arguments."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if argv else 2)
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        print(f"gmt: unknown command {name!r}{hint}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    module, function, _ = COMMANDS[name]
    sys.argv = [f"gmt {name}", *rest]  # the entry points read sys.argv, and name themselves after it
    getattr(importlib.import_module(module), function)()


if __name__ == "__main__":
    main()
