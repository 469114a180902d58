"""Score a checkpoint with one of gmt's lm-evaluation-harness suites.

    python eval/run.py --suite tiny --model outputs/tiny/sft_gmt            # offline, CPU
    python eval/run.py --suite math --model PATH --device cuda --dtype bfloat16 --batch_size auto
    HF_ALLOW_CODE_EVAL=1 python eval/run.py --suite code --model PATH --allow_code_execution

Writes lm-eval's JSON (``lm_eval_<suite>.json``) and a markdown table (``eval_<suite>.md``) to
``--output_dir`` (default: ``<model>/eval``). Suites are defined in ``eval/suites/*.yaml``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gmt.evaluation import SUITES, evaluate_checkpoint  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", required=True, choices=SUITES)
    parser.add_argument("--model", required=True, help="checkpoint folder or hub id")
    parser.add_argument("--limit", type=int, default=None, help="first N examples of each task")
    parser.add_argument("--output_dir", default=None)
    parser.add_argument("--batch_size", default="8", help="an integer, or 'auto' on GPU")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--tiny_data", default=None, help="tiny suite: the held-out jsonl (default: the cache's)")
    parser.add_argument("--allow_code_execution", action="store_true", help="code suite: run model-written code")
    args = parser.parse_args()
    batch_size = int(args.batch_size) if args.batch_size.isdigit() else args.batch_size
    output_dir = args.output_dir or str(Path(args.model) / "eval") if Path(args.model).exists() else args.output_dir
    summary = evaluate_checkpoint(
        args.model, args.suite, limit=args.limit, output_dir=output_dir, batch_size=batch_size, device=args.device,
        dtype=args.dtype, tiny_data=args.tiny_data, allow_code_execution=args.allow_code_execution,
    )  # fmt: skip
    print(f"{args.suite}: score {summary['score']}")
    for task, metrics in summary["scores"].items():
        print(f"  {task}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
