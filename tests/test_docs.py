"""The docs match the code: every path and module the README and docs/ name exists, and the code
map in docs/design.md names every module of gmt/."""

import importlib
import importlib.util
import re
from pathlib import Path

import pytest

from conftest import REPO

DOCS = [REPO / "README.md", REPO / "eval/README.md", *sorted((REPO / "docs").rglob("*.md"))]
# A repository path: gmt/..., scripts/..., recipes/..., tests/..., docs/... (a URL's path is not one).
PATH = re.compile(r"(?<![\w/.:-])((?:gmt|scripts|recipes|tests|docs|\.ci)/[\w./-]*[\w/])")
MODULE = re.compile(r"(?<![\w/.-])(gmt(?:\.[a-z_][a-z0-9_]*)+)")
# Files a committed script writes where it runs (not here): the path, and the script that writes it.
WRITTEN_ELSEWHERE = {"docs/benchmarks/gpu_check.json": "scripts/gpu_check.py"}  # on a CUDA machine


def named(pattern: re.Pattern) -> list[tuple[str, str]]:
    """(document, name) for each match of ``pattern`` in the docs."""
    return [(doc.relative_to(REPO).as_posix(), match) for doc in DOCS for match in pattern.findall(doc.read_text())]


def test_every_path_the_docs_name_exists():
    paths = named(PATH)
    assert len(paths) > 50  # the pattern finds them
    missing = [(doc, path) for doc, path in paths if not (REPO / path).exists() and path not in WRITTEN_ELSEWHERE]
    assert not missing, missing
    for path, script in WRITTEN_ELSEWHERE.items():  # the script's default output is that path
        assert '"' + '" / "'.join(Path(path).parts) + '"' in (REPO / script).read_text(), (path, script)


LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_in_the_docs_resolves():
    broken = []
    for doc in DOCS:
        text = doc.read_text()
        anchors = {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}
        for target in LINK.findall(text):
            if target.startswith(("http://", "https://")):
                continue
            path, _, fragment = target.partition("#")
            if path and not (doc.parent / path).exists():
                broken.append((doc.relative_to(REPO).as_posix(), target))
            elif not path and fragment not in anchors:
                broken.append((doc.relative_to(REPO).as_posix(), target))
    assert not broken, broken


def resolves(dotted: str) -> bool:
    """Whether ``dotted`` is a module of gmt, or an attribute of one (``gmt.masking.base.keep_count``)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        try:
            if importlib.util.find_spec(module) is None:
                continue
        except ModuleNotFoundError:  # a parent is a module, not a package
            continue
        value = importlib.import_module(module)
        for attribute in parts[cut:]:
            if not hasattr(value, attribute):
                return False
            value = getattr(value, attribute)
        return True
    return False


def test_every_module_the_docs_name_exists():
    modules = named(MODULE)
    assert len(modules) > 20
    missing = [(doc, module) for doc, module in modules if not resolves(module.rstrip("."))]
    assert not missing, missing


def code_map() -> set[str]:
    """The paths (relative to gmt/) in the first column of docs/design.md's code map; a bare file
    name takes the folder of the row's first path (``masking/keys.py``, ``search.py``)."""
    text = (REPO / "docs/design.md").read_text()
    section = text[text.index("## Code map") :]
    section = section[: section.index("\n## ", 1)]
    listed = set()
    for row in re.findall(r"^\| (`.+?) \|", section, flags=re.MULTILINE):
        names = re.findall(r"`([^`]+)`", row)
        folder = names[0].rsplit("/", 1)[0] + "/" if "/" in names[0].rstrip("/") else ""
        listed |= {name if "/" in name else folder + name for name in names}
    return listed


def test_the_code_map_names_every_module_of_gmt():
    listed = code_map()
    assert not [path for path in listed if not (REPO / "gmt" / path).exists()]
    folders = [path for path in listed if path.endswith("/")]
    modules = [path.relative_to(REPO / "gmt").as_posix() for path in (REPO / "gmt").rglob("*.py")]
    unlisted = [module for module in modules if module not in listed and Path(module).name not in ("__init__.py",
                "__main__.py") and not any(module.startswith(folder) for folder in folders)]  # fmt: skip
    assert not unlisted, f"docs/design.md's code map does not name {unlisted}"


def test_the_vllm_backend_names_the_extra_that_installs_it(monkeypatch):
    from gmt.evaluation import EvalArguments
    from gmt.evaluation.harness import check_settings
    from gmt.evaluation.suites import load_suite

    find_spec = importlib.util.find_spec  # a machine with vllm installed: as one without it
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else find_spec(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"pip install -e '\.\[vllm\]'") as refused:
        check_settings(EvalArguments(suite="tiny", model="m", backend="vllm"), load_suite("tiny"))
    extra = re.search(r"\.\[(\w+)\]", str(refused.value)).group(1)
    import tomllib  # Python 3.11+, like the project's other pyproject checks

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(requirement.startswith(("vllm", "lm_eval[vllm]")) for requirement in extras[extra])


def test_the_readme_is_a_front_door():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 300
    head = "\n".join(lines[:120])
    # the two commands first, then a real-model launch on one node and under SLURM, and DPO
    assert lines[4].startswith("bash scripts/setup_cpu.sh") and "gmt/sft.py --config recipes/smollm2-135m/" in lines[4]
    assert lines[6] == "bash scripts/setup_cpu.sh && . .venv/bin/activate && pytest -q -n auto"
    assert "accelerate launch --config_file recipes/accelerate/zero3.yaml gmt/sft.py" in head
    assert "sbatch --nodes" in head and "gmt/dpo.py --config recipes/llama2-7b/" in head
    assert "pytest -q -n auto" in (REPO / ".ci/run").read_text()  # CI runs the README's test command


def test_the_patterns_find_what_they_check():
    text = "See `gmt/masking/threshold.py` (https://github.com/x/gmt/blob/main) and gmt.masking.thresholds."
    assert PATH.findall(text) == ["gmt/masking/threshold.py"]
    assert MODULE.findall(text) == ["gmt.masking.thresholds"]
    assert not resolves("gmt.masking.thresholds") and not resolves("gmt.masking.base.keep_counts")
    assert resolves("gmt.masking.base.keep_count") and resolves("gmt.tiny")
