"""The comparison (``gmt compare``): every method at its own validation-best learning rate on a
recipe, then seeds on the test data, with tables, plots and the papers' claims judged.

One module per concern: ``methods`` (what is compared), ``rates`` (the rate ladder and grids),
``recipe`` (the recipe and its held-out rows), ``runs`` (one run: command, execution, record),
``slurm`` (runs as a job array), ``tables``, ``plots``, ``claims`` (the rules), ``report`` (several
tasks' report and README's summary), and ``cli`` (the phases, in order).
"""
