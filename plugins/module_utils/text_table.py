# Copyright: openFuyao PD maintainers
# Apache License 2.0 (see LICENSE)
"""Plain-text tables for the human side of module and planner results (ad hoc runs print them)."""

from __future__ import annotations


def align_columns(rows: list[tuple]) -> list[str]:
    """One line per row, every column padded to its widest cell (first row = header)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(r[c]) for r in cells) for c in range(len(cells[0]))]
    return ["  ".join(cell.ljust(widths[c]) for c, cell in enumerate(r)).rstrip() for r in cells]
