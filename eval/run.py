"""Score a checkpoint with one of gmt's lm-evaluation-harness suites: the ``gmt-eval`` command
(``gmt.evaluation.main``) from a checkout, installed or not.

    python eval/run.py --suite tiny --model outputs/tiny/sft_gmt            # offline, CPU
    python eval/run.py --suite math --model PATH --device cuda --dtype bfloat16 --batch_size auto
    HF_ALLOW_CODE_EVAL=1 python eval/run.py --suite code --model PATH --allow_code_execution
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gmt.evaluation import main  # noqa: E402

if __name__ == "__main__":
    main()
