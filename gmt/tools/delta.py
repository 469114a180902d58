"""Export a fine-tuned model as a sparse delta against its base, or apply one.

    gmt delta export --base .cache/gmt-tiny/base --tuned outputs/tiny/sft_gmt --out d.safetensors
    gmt delta apply --base .cache/gmt-tiny/base --delta d.safetensors --out outputs/rebuilt
    # a run's per-step deltas (step_delta_dir), applied in order: the weights after the last one
    gmt delta apply --base MODEL --delta deltas/step-*.safetensors --out outputs/at-step-N

``apply`` writes an ordinary HF checkpoint (the base's config and tokenizer, the delta's weights);
the round trip reproduces the fine-tuned weights bit for bit.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from gmt.delta import (
    apply_delta,
    changed_fraction,
    compute_delta,
    delta_base_fingerprint,
    load_delta,
    save_delta,
    weights_fingerprint,
)


def state_dict(path: str):
    return {name: t.detach() for name, t in AutoModelForCausalLM.from_pretrained(path).state_dict().items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write the entries --tuned changed relative to --base")
    export.add_argument("--base", required=True)
    export.add_argument("--tuned", required=True)
    export.add_argument("--out", type=Path, required=True)
    apply = commands.add_parser("apply", help="write --base with --delta applied as an HF checkpoint")
    apply.add_argument("--base", required=True)
    apply.add_argument(
        "--delta",
        type=Path,
        nargs="+",
        required=True,
        help="one delta, or a chain of a run's step deltas, applied in the order given",
    )
    apply.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    if args.command == "export":
        base = state_dict(args.base)
        delta = compute_delta(base, state_dict(args.tuned))
        save_delta(delta, args.out, weights_fingerprint(base))
        size, dense_size = args.out.stat().st_size, sum(t.numel() * t.element_size() for t in base.values())
        fraction = changed_fraction(delta, base)
        print(f"{args.out}: {fraction:.2%} of the entries changed, {size / 2**20:.2f} MiB "
              f"(the dense weights: {dense_size / 2**20:.2f} MiB)")  # fmt: skip
        if size >= dense_size / 2:
            print(f"warning: this delta is not sparse ({fraction:.1%} of the entries changed): with gmt_mode "
                  "grad, AdamW's momentum and weight decay move entries outside each step's mask. gmt_mode update, "
                  "or a fixed-mask strategy (gps, grft, gspf), changes only the kept entries")  # fmt: skip
    else:
        model = AutoModelForCausalLM.from_pretrained(args.base)
        weights = model.state_dict()
        for delta in args.delta:  # each checked against the weights it was taken from
            weights = apply_delta(weights, load_delta(delta), delta_base_fingerprint(delta))
        model.load_state_dict(weights)
        model.save_pretrained(args.out)
        AutoTokenizer.from_pretrained(args.base).save_pretrained(args.out)
        applied = str(args.delta[0]) if len(args.delta) == 1 else f"{len(args.delta)} deltas ({args.delta[-1]} last)"
        print(f"{args.out}: base {args.base} with {applied} applied")


if __name__ == "__main__":
    main()
