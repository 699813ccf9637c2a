"""Architecture counts of the collection (issue: the plan as a contract, logic in Python).

Prints one line per figure so a before/after comparison is a diff of two runs:
    .venv/bin/python tests/tools/arch_counts.py
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
# A Jinja accumulator, the start of a list-building block: `set x = [...]` or `namespace(x=[...])`.
_LIST_BUILD = re.compile(r"set\s+\w+\s*=\s*\[|namespace\([^)]*=\s*\[")
_WORD = re.compile(r"[a-z0-9]+")


def _yaml_files() -> Iterator[Path]:
    for top in ("roles", "playbooks"):
        yield from sorted((ROOT / top).rglob("*.yml"))


def list_building_blocks() -> list[str]:
    """file:line of every Jinja list accumulator in roles/ and playbooks/."""
    hits = []
    for path in _yaml_files():
        for no, line in enumerate(path.read_text().splitlines(), 1):
            if _LIST_BUILD.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{no}")
    return hits


def from_json_uses() -> int:
    """Occurrences of the from_json filter in the YAML of roles/ and playbooks/."""
    return sum(len(re.findall(r"\bfrom_json\b", p.read_text())) for p in _yaml_files())


def _role_of(path: Path) -> str | None:
    rel = path.relative_to(ROOT).parts
    return rel[1] if rel[0] == "roles" else None


def _walk(node: object) -> Iterator[dict]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _entry_points(role: str) -> set[str]:
    spec = ROOT / "roles" / role / "meta" / "argument_specs.yml"
    if not spec.exists():
        return set()
    return set((yaml.safe_load(spec.read_text()) or {}).get("argument_specs", {}))


def _is_internal(role: str) -> bool:
    """An internal role (`_`-prefixed, such as `_service`): shared machinery other roles are meant to call."""
    return role.startswith("_")


def tasks_from_uses() -> tuple[list[str], list[str]]:
    """(tasks_from from one role into another, tasks_from into an entry point without an argument spec).

    A call into an internal role's entry point that has an argument spec is the intended pattern
    (prometheus.prometheus's `_common`): its inputs are public, documented variables, not another
    role's private files and facts, so it is not counted as a cross-role call. Such a call into an
    entry point without a spec still counts in the second figure.
    """
    cross, unspecced = [], []
    for path in _yaml_files():
        try:
            doc = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            continue
        for task in _walk(doc):
            for key in ("ansible.builtin.include_role", "ansible.builtin.import_role", "include_role", "import_role"):
                inc = task.get(key)
                if not isinstance(inc, dict) or "tasks_from" not in inc:
                    continue
                target = str(inc["name"]).split(".")[-1]
                entry = Path(str(inc["tasks_from"])).stem
                where = f"{path.relative_to(ROOT)} -> {target}/{entry}"
                owner = _role_of(path)
                internal_api = _is_internal(target) and entry in _entry_points(target)
                if owner is not None and owner != target and not internal_api:
                    cross.append(where)
                if entry not in _entry_points(target):
                    unspecced.append(where)
    return cross, unspecced


def placeholder_descriptions() -> list[str]:
    """Argument-spec options whose description only repeats the option's own name."""
    hits = []
    for spec in sorted((ROOT / "roles").glob("*/meta/argument_specs.yml")):
        doc = yaml.safe_load(spec.read_text()) or {}
        for entry, body in (doc.get("argument_specs") or {}).items():
            for name, opt in (body.get("options") or {}).items():
                text = opt.get("description", "")
                text = " ".join(text) if isinstance(text, list) else str(text)
                words = set(_WORD.findall(text.lower()))
                if not words or words <= set(name.lower().split("_")):
                    hits.append(f"{spec.parent.parent.name}:{entry}:{name}")
    return hits


def longest_functions(limit: int = 3) -> list[tuple[int, str]]:
    """The longest functions of the planner (plugins/module_utils/pd_plan*.py), in lines."""
    found = []
    for path in sorted((ROOT / "plugins" / "module_utils").glob("pd_plan*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                found.append((node.end_lineno - node.lineno + 1, f"{path.name}:{node.name}"))
    return sorted(found, reverse=True)[:limit]


def main() -> int:
    blocks = list_building_blocks()
    cross, unspecced = tasks_from_uses()
    placeholders = placeholder_descriptions()
    print(f"jinja list-building blocks: {len(blocks)}")
    for hit in blocks:
        print(f"  {hit}")
    print(f"from_json in roles/ and playbooks/ YAML: {from_json_uses()}")
    print(f"tasks_from from one role into another role: {len(cross)}")
    for hit in cross:
        print(f"  {hit}")
    print(f"tasks_from into an entry point without an argument spec: {len(unspecced)}")
    for hit in unspecced:
        print(f"  {hit}")
    print(f"placeholder argument-spec descriptions: {len(placeholders)}")
    for hit in placeholders:
        print(f"  {hit}")
    for lines, name in longest_functions():
        print(f"planner function {name}: {lines} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
