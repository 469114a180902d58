"""Kept for the old path: the report is `python -m gmt.compare.report` (gmt/compare/report.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gmt.compare.report import main  # noqa: E402

if __name__ == "__main__":
    main()
