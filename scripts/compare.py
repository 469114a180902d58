"""Kept for the old path: the comparison is `gmt compare` (gmt/compare/)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gmt.compare.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
