"""Kept for the old path: the tool is `gmt delta` (gmt/tools/delta.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gmt.tools.delta import *  # noqa: E402, F403 (the old script's names, for code that imported them)
from gmt.tools.delta import main  # noqa: E402

if __name__ == "__main__":
    main()
