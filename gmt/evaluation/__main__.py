"""``python -m gmt.evaluation``: the ``gmt-eval`` command."""

from gmt.evaluation.harness import main

main()
