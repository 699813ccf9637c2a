"""docs/plan.md's variables tables are the ones tests/tools/vars_doc.py writes from pd_plan_vars.VAR_SPECS."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ansible_collections.openfuyao.pd.plugins.module_utils import pd_plan_vars as pv

ROOT = Path(__file__).resolve().parents[2]


def _vars_doc():
    spec = importlib.util.spec_from_file_location("vars_doc", ROOT / "tests" / "tools" / "vars_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_plan_md_tables_equal_the_spec() -> None:
    tool = _vars_doc()
    text = tool.DOC.read_text(encoding="utf-8")
    assert tool.render(text) == text, "docs/plan.md disagrees with VAR_SPECS: run make docs"
    assert tool.main(["--check"]) == 0


def test_every_spec_has_its_row_once() -> None:
    text = "\n".join(_vars_doc().table(section) for section in pv.SECTIONS)
    for s in pv.VAR_SPECS:
        cell = f"| `{s.name}` |" if s.scope == "role" else f"| `{s.var}` |"
        assert sum(line.startswith(cell) for line in text.splitlines()) == 1, cell


def test_a_changed_spec_shows_in_the_check(monkeypatch) -> None:
    tool = _vars_doc()
    text = tool.DOC.read_text(encoding="utf-8")
    changed = pv.VarSpec("tp", "role", "int", "another meaning", 2, minimum=1, section="role")
    monkeypatch.setattr(tool.pv, "VAR_SPECS", tuple(changed if s.name == "tp" else s for s in pv.VAR_SPECS))
    assert tool.render(text) != text


def test_the_data_dir_default_is_the_dir_table_one() -> None:
    assert pv.SPECS["data_dir"].default == pv.DIR_VARS["data"].default
