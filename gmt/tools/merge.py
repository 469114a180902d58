"""Merge a LoRA run's output (``use_peft true``) into its base as an ordinary checkpoint.

    gmt merge --adapter outputs/tiny/sft_lora --out outputs/tiny/sft_lora_merged

The base is the one the adapter records (``base_model_name_or_path``) unless ``--base`` names
another copy of it (a local path on a machine without the hub). The merged folder loads with
``from_pretrained``, runs under ``gmt-eval --backend vllm`` and goes into ``export_delta.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gmt.adapter import save_merged


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", required=True, help="a PEFT run's output folder (holds adapter_config.json)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the merged checkpoint")
    parser.add_argument("--base", default=None, help="the base model (default: the one the adapter records)")
    args = parser.parse_args(argv)
    out = save_merged(args.adapter, args.out, args.base)
    print(f"merged {args.adapter} into its base: {out}")
    return out


if __name__ == "__main__":
    main()
