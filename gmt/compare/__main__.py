"""``python -m gmt.compare`` = ``gmt compare``."""

from gmt.compare.cli import main

if __name__ == "__main__":
    main()
