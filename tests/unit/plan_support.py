"""Helpers for the planner tests: load a shipped inventory the way Ansible does, parse the
seed's shell scripts into env + argv, and normalise `vllm serve` flags for comparison."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
INVENTORIES = ROOT / "inventories"
SEEDS = Path(__file__).resolve().parent / "fixtures" / "plan_seeds"
GROUPS = ("prefill", "decode", "proxy", "mooncake_master", "storage")


def load_inventory(name: str) -> dict[str, Any]:
    """The planner's input for inventories/<name>, with group_vars resolved by Ansible itself."""
    return load_inventory_file(INVENTORIES / name / "cluster.ini")


def load_inventory_file(path: Path) -> dict[str, Any]:
    """The planner's input for any inventory source, parsed by Ansible's own inventory plugins
    (INI strings stay strings, YAML keeps its types), as the pd_plan action hands it over."""
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager

    loader = DataLoader()
    inv = InventoryManager(loader=loader, sources=[str(path)])
    vm = VariableManager(loader=loader, inventory=inv)
    groups = {g: [h.name for h in inv.groups[g].get_hosts()] if g in inv.groups else [] for g in GROUPS}
    hostvars = {}
    for host in inv.get_hosts():
        hv = vm.get_vars(host=host, include_hostvars=False)
        hostvars[host.name] = {
            k: json.loads(json.dumps(v, default=str))
            for k, v in hv.items()
            if k.startswith("pd_") or k in ("ansible_host", "ansible_connection")
        }
    all_hosts = [h.name for h in inv.get_hosts()]
    return {"groups": groups, "hostvars": hostvars, "all_groups": sorted(inv.groups), "all_hosts": all_hosts}


def parse_script(name: str) -> tuple[dict[str, str], list[str]]:
    """(exported env, argv of the launch line) of a seed script."""
    text = (SEEDS / name).read_text()
    joined = text.replace("\\\n", " ")
    env: dict[str, str] = {}
    argv: list[str] = []
    for line in _commands(joined):
        words = shlex.split(line)
        if not words:
            continue
        if words[0] == "export":
            key, _, value = words[1].partition("=")
            env[key] = value
        elif words[0] in ("vllm", "python", "python3"):
            argv = words
    return env, argv


def _commands(text: str) -> list[str]:
    """Split shell text on newlines that are outside quotes (the JSON spans lines)."""
    out, cur, quote = [], [], None
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "\n":
            out.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur))
    return out


def flags(argv: list[str]) -> dict[str, Any]:
    """`--flag value` / `--flag` pairs (underscores in flag names folded to dashes) plus the model.

    The kv-transfer JSON is parsed so it compares as JSON, not as text.
    """
    out: dict[str, Any] = {}
    if argv[:2] == ["vllm", "serve"]:
        out["MODEL"] = argv[2]
        rest = argv[3:]
    else:
        # python3 -m vllm.entrypoints.openai.api_server ... | python3 some_proxy.py ...
        rest = argv[3:] if argv[1] == "-m" else argv[2:]
    i = 0
    while i < len(rest):
        word = rest[i]
        assert word.startswith("--"), f"stray argument {word!r} in {argv}"
        name = "--" + word[2:].replace("_", "-")
        values = []
        while i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            values.append(rest[i + 1])
            i += 1
        i += 1
        if name == "--kv-transfer-config":
            out[name] = json.loads(values[0])
        elif name == "--model":
            out["MODEL"] = values[0]
        else:
            out[name] = values if len(values) > 1 else (values[0] if values else True)
    return out
