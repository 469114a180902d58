"""Results written into a document (README.md, a doc) between two markers, so that no figure is typed
by hand: the comparison's report and the benchmarks use it."""

from __future__ import annotations

from pathlib import Path


def replace_section(start: str, end: str, body: str, path: Path) -> None:
    """Replace what stands between the markers ``start`` and ``end`` in ``path`` with ``body``; no-op
    without markers."""
    text = path.read_text()
    if start not in text or end not in text:
        return
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    path.write_text(f"{before}{start}\n{body}{end}{after}")
