"""Write a script's results into README.md (or another doc) between its two markers, so no figure
is typed by hand."""

from __future__ import annotations

from pathlib import Path

from gmt.sections import replace_section

README = Path(__file__).resolve().parents[1] / "README.md"


def replace_readme_section(start: str, end: str, body: str, path: Path = README) -> None:
    """Replace what stands between ``start`` and ``end`` in ``path`` (README.md) with ``body``;
    no-op without markers."""
    replace_section(start, end, body, path)


def write_benchmark(out: Path, result: dict, table: str, section: str | None, doc: Path) -> None:
    """Write a benchmark's JSON (``out``) and markdown table (``out`` as .md), print the table, and
    put it into ``doc`` between the ``<!-- section:start/end -->`` markers (None: leave ``doc``)."""
    import json

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(table)
    print(table)
    if section:
        replace_readme_section(f"<!-- {section}:start -->", f"<!-- {section}:end -->", table, doc)
