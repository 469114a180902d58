"""``python -m gmt.smollm2``: the converted checkpoint, the default tasks' data and the next-word probe."""

from gmt.smollm2.build import main

main()
