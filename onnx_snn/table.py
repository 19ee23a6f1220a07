"""One table printer for the command line and the tools: plain aligned text or Markdown."""
from __future__ import annotations

from typing import Iterable, List, Optional, Sequence


def format_table(headers: Sequence, rows: Iterable[Sequence], markdown: bool = False,
                 right: Optional[Sequence[bool]] = None, total_row: bool = False) -> str:
    """``headers`` and ``rows`` (cells of any type, shown with ``str``) as one string, no
    trailing newline.

    Plain text (default): columns two spaces apart, the first left-aligned and the others
    right-aligned, a dashed line under the header::

        method    T=1    T=2
        ------  -----  -----
        datta   88.28  91.41
        max      7.81   7.81

    ``markdown=True``: a GitHub table, ``| method | T=1 |`` rows under a ``|---|---|`` line
    (``|`` inside a cell is escaped, a line break becomes a space).

    ``right``: which columns are right-aligned (default: all but the first); ``total_row``:
    a dashed line before the last row too (a totals row). Every row must have as many cells
    as there are headers (ValueError otherwise).
    """
    head = [str(h) for h in headers]
    body: List[List[str]] = [[str(c) for c in r] for r in rows]
    for i, r in enumerate(body):
        if len(r) != len(head):
            raise ValueError(f"table row {i} has {len(r)} cells for {len(head)} headers: {r}")
    if markdown:
        def line(cells):
            return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"
        return "\n".join([line(head), "|" + "---|" * len(head)] + [line(r) for r in body])
    cells = [head] + body
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    right = list(right) if right is not None else [j > 0 for j in range(len(head))]
    lines = ["  ".join(c.rjust(w) if rj else c.ljust(w) for c, w, rj in zip(r, widths, right)).rstrip()
             for r in cells]
    rule = "  ".join("-" * w for w in widths)
    lines.insert(1, rule)
    if total_row and len(body) > 1:
        lines.insert(len(lines) - 1, rule)
    return "\n".join(lines)
