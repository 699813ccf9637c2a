# Copyright: openFuyao PD maintainers
# Apache License 2.0 (see LICENSE)
"""Plain-text tables for the human side of module and planner results (ad hoc runs print them).

The collection's one column aligner. Standard library only and free of Ansible imports, so the
controller-side helpers that run from the collection's tree (the command line
files/connector/openfuyao_pd/benchreport.py, molecule/chaos/chaos.py) load this very file by its
path instead of keeping copies: module_utils cannot import from files/connector (a package
installed on hosts without the collection), while both of those run where the collection is.
Plugins (the day-2 status table, the bench report) import it as usual.
"""

from __future__ import annotations

from collections.abc import Sequence


def align_columns(rows: Sequence[Sequence[object]], rule: bool = False, sep: str = "  ",
                  rule_sep: str | None = None) -> list[str]:
    """One line per row, every column padded to its widest cell (first row = header).

    Columns are joined with `sep`. With `rule`, a line of dashes as wide as each column follows
    the header, its columns joined with `rule_sep` (default `sep`), e.g. sep=" | ", rule_sep="-+-"."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(r[c]) for r in cells) for c in range(len(cells[0]))]
    lines = [sep.join(cell.ljust(widths[c]) for c, cell in enumerate(r)).rstrip() for r in cells]
    if rule:
        lines.insert(1, (sep if rule_sep is None else rule_sep).join("-" * w for w in widths))
    return lines
