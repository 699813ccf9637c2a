"""Write docs/plan.md's variables tables from the planner's variable table (pd_plan_vars.VAR_SPECS).

Each table sits between two markers in docs/plan.md; everything else there is hand-written.
    .venv/bin/python tests/tools/vars_doc.py           # rewrite the tables in docs/plan.md
    .venv/bin/python tests/tools/vars_doc.py --check   # exit 1 when docs/plan.md disagrees
(make docs runs the first; tests/unit/test_plan_vars_doc.py the second, so the two never drift.)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "plan.md"
# The collection through the link `make setup` creates (as tests/conftest.py does).
if str(ROOT / ".ansible" / "collections") not in sys.path:
    sys.path.insert(0, str(ROOT / ".ansible" / "collections"))

from ansible_collections.openfuyao.pd.plugins.module_utils import pd_plan_vars as pv  # noqa: E402

# Section -> the table's header row; the role table names variables without their pd_ prefix.
HEADERS = {
    "host": ("variable", "type", "default", "meaning"),
    "role": ("name", "type", "default", "meaning"),
    "ucm": ("variable", "type", "default", "rendered into"),
    "ha": ("variable", "type", "default", "meaning"),
}
BEGIN = "<!-- BEGIN generated pd-vars {} (tests/tools/vars_doc.py from pd_plan_vars.VAR_SPECS: edit the table there) -->"
END = "<!-- END generated pd-vars {} -->"


def type_text(spec: pv.VarSpec) -> str:
    """The type column: the type with its bounds or choices."""
    if spec.type == "enum":
        return " \\| ".join(f"`{c}`" for c in spec.choices)
    if spec.type == "port":
        return "port (1..65535)"
    if spec.type == "int":
        low = 1 if spec.minimum is None else spec.minimum
        return f"int (>= {low})" if spec.maximum is None else f"int ({low}..{spec.maximum})"
    return spec.type


def _row(cells: tuple[str, ...]) -> str:
    # A bare | ends a cell even inside backticks (GitHub's tables): escape the ones not yet escaped.
    return "| " + " | ".join(re.sub(r"(?<!\\)\|", r"\\|", c) for c in cells) + " |"


def _dir_rows() -> list[str]:
    """The roles' directories other than pd_data_dir (DIR_VARS): read into hosts.<h>.dirs."""
    dirs = [d for d in pv.DIR_VARS.values() if not d.var.startswith("pd_")]
    return [_row((", ".join(f"`{d.var}`" for d in dirs), "path", ", ".join(f"`{d.default}`" for d in dirs),
                  "the roles' directories, read by the planner into `hosts.<h>.dirs` (conf, log, state, run; "
                  "`pd_data_dir` is `data`); the roles read the plan "
                  "([plan-schema.md](plan-schema.md#schema-2-what-it-adds-and-what-reads-it))"))]


def table(section: str) -> str:
    header = HEADERS[section]
    lines = [_row(header), _row(tuple("---" for _ in header))]
    for spec in (s for s in pv.VAR_SPECS if s.section == section):
        name = f"`{spec.name}`" if section == "role" else f"`{spec.var}`"
        lines.append(_row((name, type_text(spec), spec.shown_default(), spec.doc)))
        if spec.name == "data_dir":
            lines += _dir_rows()
    return "\n".join(lines)


def render(text: str) -> str:
    """text with every marked table replaced by the one the spec gives."""
    for section in HEADERS:
        begin, end = BEGIN.format(section), END.format(section)
        pattern = re.compile(re.escape(begin) + r"\n.*?" + re.escape(end), re.S)
        if not pattern.search(text):
            raise SystemExit(f"{DOC}: the markers of the {section} table are missing ({begin})")
        text = pattern.sub(lambda _m, b=begin, e=end, s=section: f"{b}\n{table(s)}\n{e}", text)
    return text


def main(argv: list[str]) -> int:
    current = DOC.read_text(encoding="utf-8")
    wanted = render(current)
    if "--check" in argv:
        if wanted != current:
            print(f"{DOC} disagrees with pd_plan_vars.VAR_SPECS: run .venv/bin/python tests/tools/vars_doc.py")
            return 1
        return 0
    if wanted != current:
        DOC.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
