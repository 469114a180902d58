"""The files the commands read besides the code: eval suites and task files, recipes.

In a clone they are ``eval/`` and ``recipes/``; an installed wheel carries them inside the package
(``gmt/_eval``, ``gmt/_recipes``: links in the clone, copies in the wheel), so that every documented
command works from any folder.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
EVAL_DIR = PACKAGE / "_eval"  # suites/*.yaml, tasks/*.yaml
RECIPES_DIR = PACKAGE / "_recipes"
MASK_MEMORY = PACKAGE / "mask_memory.json"  # the mask step's measured memory (scripts/mask_memory.py)


def recipe_path(path: str | Path) -> Path:
    """``path`` as given where it exists; else a ``recipes/...`` path found among the recipes the
    package carries (``gmt sft --config recipes/tiny/sft_gmt.yaml`` from outside a clone)."""
    given = Path(path)
    if given.exists() or given.is_absolute():
        return given
    parts = given.parts
    if parts and parts[0] == "recipes" and (RECIPES_DIR.joinpath(*parts[1:])).is_file():
        return RECIPES_DIR.joinpath(*parts[1:])
    return given
