"""Kept for the old path: the tool is `gmt plot` (gmt/tools/plot_mask.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gmt.tools.plot_mask import *  # noqa: E402, F403 (the old script's names, for code that imported them)
from gmt.tools.plot_mask import main  # noqa: E402

if __name__ == "__main__":
    main()
