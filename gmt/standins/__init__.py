"""Stand-ins for the real setups the GPU recipes name: random-init models of the real families with
their tokenizer settings and chat templates (``models``), local rows in the exact layout of the
real hub data sets (``layouts``), and a runner that trains a recipe on them for 2 steps and checks
the result (``recipes``)::

    python -m gmt.standins recipes/llama3-8b/sft_math_gmt.yaml          # CPU or one GPU
    python -m gmt.standins recipes/*/*_gmt.yaml --launcher \\
        '-m accelerate.commands.launch --config_file recipes/accelerate/zero3.yaml --num_processes 2'
"""

from gmt.standins.recipes import StandinRun, check_output, data_standin, model_standin, standin_run

__all__ = ["StandinRun", "check_output", "data_standin", "model_standin", "standin_run"]
