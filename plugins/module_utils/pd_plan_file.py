# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""A reviewed plan file (-e pd_plan_file=FILE): load it, check it against schema 2 and the
inventory's hosts, and say where it differs from the plan the inventory gives now.

Used by the pd_plan action (option plan_file). Every problem is one line that names the file,
the field and the fix; PlanFileError carries it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

SCHEMA_VERSION = 2
REWRITE = "write it again with playbooks/plan.yml on this inventory"
# What a plan of an earlier schema lacks, for the message that refuses it.
ADDED_SINCE = {2: "hosts' dirs and services, typed port claims and the instance and proxy URLs"}

# Top-level sections of a schema-2 plan and the JSON types each may have.
SECTIONS: dict[str, tuple[type | None, ...]] = {
    "schema_version": (int,),
    "platforms": (list,),
    "connector": (str,),
    "model": (dict,),
    "instances": (list,),
    "proxy": (dict,),
    "proxies": (list,),
    "endpoint": (dict,),
    "proxy_vip": (dict, None),
    "hosts": (dict,),
    "mooncake": (dict,),
    "storage": (dict, None),
    "timeouts": (list, None),
    "warnings": (list,),
}
# Fields of each instance and of the proxy section that the roles read.
INSTANCE_FIELDS: dict[str, tuple[type | None, ...]] = {
    "name": (str,),
    "host": (str,),
    "role": (str,),
    "http_port": (int,),
    "argv": (list,),
    "env": (dict,),
    "ports": (list,),
}
PROXY_FIELDS: dict[str, tuple[type | None, ...]] = {
    "host": (str,),
    "port": (int,),
    "prefill": (list,),
    "decode": (list,),
}
# Fields of each host's section that the roles read (schema 2: dirs and services).
HOST_FIELDS: dict[str, tuple[type | None, ...]] = {
    "address": (str,),
    "ports": (list,),
    "dirs": (dict,),
    "services": (list,),
}
# How many differences the warning spells out before it counts the rest.
DIFF_SHOWN = 8


class PlanFileError(Exception):
    """A plan file that cannot be applied; str() is the one line to show."""


# bool before int: True is an int to isinstance.
_JSON_TYPES = ((type(None), "null"), (bool, "a boolean"), (int, "an integer"), (float, "a number"),
               (str, "a string"), (list, "an array"), (dict, "an object"))


def json_type(value: Any) -> str:
    """The JSON name of a value's type, as the message says it."""
    return next((name for kind, name in _JSON_TYPES if isinstance(value, kind)), type(value).__name__)


def _wanted(types: tuple[type | None, ...]) -> str:
    return " or ".join(json_type(t() if t is not None else None) for t in types)


def _type_ok(value: Any, types: tuple[type | None, ...]) -> bool:
    for t in types:
        if t is None and value is None:
            return True
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if t is not None and t is not int and isinstance(value, t):
            return True
    return False


def _fields(where: str, doc: Mapping, spec: Mapping[str, tuple[type | None, ...]]) -> list[str]:
    problems = []
    missing = [k for k in spec if k not in doc]
    if missing:
        problems.append(f"{where}{'field' if where else 'section'}{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(missing)} {'are' if len(missing) > 1 else 'is'} missing")
    for key, types in spec.items():
        if key in doc and not _type_ok(doc[key], types):
            problems.append(f"{where}{key} must be {_wanted(types)}, it is {json_type(doc[key])}")
    return problems


def _not_a_plan(path: str, details: Iterable[str]) -> PlanFileError:
    return PlanFileError(
        f"pd_plan_file={path} is not a plan (schema_version {SCHEMA_VERSION}) of this inventory: "
        f"{'; '.join(details)}; {REWRITE}"
    )


def schema_problems(plan: Any) -> list[str]:
    """What keeps ``plan`` from being a schema-2 plan, one phrase each ([] when it is one)."""
    if not isinstance(plan, dict):
        return [f"it holds {json_type(plan)}, not an object"]
    version = plan.get("schema_version")
    if "schema_version" in plan and version != SCHEMA_VERSION:
        return [f"schema_version is {json.dumps(version)}, this collection reads {SCHEMA_VERSION}"]
    problems = _fields("", plan, SECTIONS)
    if isinstance(plan.get("instances"), list):
        for i, inst in enumerate(plan["instances"]):
            if not isinstance(inst, dict):
                problems.append(f"instances[{i}] must be an object, it is {json_type(inst)}")
                continue
            problems += _fields(f"instances[{i}].", inst, INSTANCE_FIELDS)
    if isinstance(plan.get("proxy"), dict):
        problems += _fields("proxy.", plan["proxy"], PROXY_FIELDS)
    if isinstance(plan.get("hosts"), dict):
        for host, view in plan["hosts"].items():
            if not isinstance(view, dict):
                problems.append(f"hosts.{host} must be an object, it is {json_type(view)}")
                continue
            problems += _fields(f"hosts.{host}.", view, HOST_FIELDS)
    return problems


def _named_hosts(plan: Any) -> list[str]:
    """Every host a plan of any shape places something on (hosts, instances, proxy), sorted."""
    if not isinstance(plan, dict):
        return []
    hosts = list(plan["hosts"]) if isinstance(plan.get("hosts"), dict) else []
    if isinstance(plan.get("instances"), list):
        hosts += [i["host"] for i in plan["instances"] if isinstance(i, dict) and isinstance(i.get("host"), str)]
    if isinstance(plan.get("proxy"), dict) and isinstance(plan["proxy"].get("host"), str):
        hosts.append(plan["proxy"]["host"])
    return sorted(set(hosts))


def load_plan_file(path: str, shown: str | None = None) -> dict:
    """The plan in ``path``, parsed; PlanFileError (one line) when it cannot be read or is no JSON.

    ``shown`` is how the message names the file (what the operator typed), ``path`` by default.
    """
    shown = path if shown is None else shown
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise PlanFileError(
            f"pd_plan_file={shown} does not exist: give the path of the JSON that playbooks/plan.yml wrote "
            "(pd_plan_output, default ./pd_plan.json)"
        ) from None
    except IsADirectoryError:
        raise PlanFileError(
            f"pd_plan_file={shown} is a directory: give the path of the JSON that playbooks/plan.yml wrote"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PlanFileError(f"pd_plan_file={shown} cannot be read ({why}): check the path and its permissions") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        where = f"line {exc.lineno} column {exc.colno}: {exc.msg}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise PlanFileError(f"pd_plan_file={shown} is not JSON ({where}); {REWRITE}") from None


def check_plan(plan: Any, inventory_hosts: Iterable[str], shown: str) -> dict:
    """``plan`` when it is a schema-2 plan whose hosts are all in the inventory, else PlanFileError."""
    old = plan.get("schema_version") if isinstance(plan, dict) else None
    if isinstance(old, int) and not isinstance(old, bool) and 0 < old < SCHEMA_VERSION:
        added = "; ".join(ADDED_SINCE[v] for v in range(old + 1, SCHEMA_VERSION + 1))
        raise PlanFileError(
            f"pd_plan_file={shown} is a schema {old} plan, this collection reads schema {SCHEMA_VERSION} "
            f"(it adds {added}): re-run playbooks/plan.yml on this inventory and review the new file"
        )
    known = set(inventory_hosts)
    # A host of another inventory is named as such, before what its section lacks.
    foreign = [h for h in _named_hosts(plan) if h not in known]
    if foreign:
        raise _not_a_plan(shown, [f"hosts {', '.join(foreign)} are not in it"])
    problems = schema_problems(plan)
    if problems:
        raise _not_a_plan(shown, problems)
    if foreign:
        raise _not_a_plan(shown, [f"hosts {', '.join(foreign)} are not in it"])
    return plan


def _shown(value: Any, width: int = 60) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= width else text[: width - 3] + "..."


def _by_name(items: list) -> dict | None:
    """A list of objects with unique names, keyed by name (instances, backends); else None."""
    if not all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in items):
        return None
    keyed = {i["name"]: i for i in items}
    return keyed if len(keyed) == len(items) else None


def diff_plans(reviewed: Any, current: Any, path: str = "") -> list[str]:
    """Where ``reviewed`` (the file) differs from ``current`` (the inventory's plan), one phrase each."""
    if isinstance(reviewed, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(reviewed) | set(current), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in current:
                out.append(f"{sub} only in the file")
            elif key not in reviewed:
                out.append(f"{sub} only in the inventory's plan")
            else:
                out += diff_plans(reviewed[key], current[key], sub)
        return out
    if isinstance(reviewed, list) and isinstance(current, list):
        named_r, named_c = _by_name(reviewed), _by_name(current)
        if named_r is not None and named_c is not None and (reviewed or current):
            out = []
            for name in sorted(set(named_r) | set(named_c)):
                sub = f"{path}[{name}]"
                if name not in named_c:
                    out.append(f"{sub} only in the file")
                elif name not in named_r:
                    out.append(f"{sub} only in the inventory's plan")
                else:
                    out += diff_plans(named_r[name], named_c[name], sub)
            return out
        if len(reviewed) == len(current):
            out = []
            for i, item in enumerate(reviewed):
                out += diff_plans(item, current[i], f"{path}[{i}]")
            return out
    if reviewed == current and type(reviewed) is type(current):
        return []
    return [f"{path}: file {_shown(reviewed)}, inventory {_shown(current)}"]


def diff_warning(shown: str, differences: list[str]) -> str | None:
    """The one warning line about the differences, None when there are none."""
    if not differences:
        return None
    listed = "; ".join(differences[:DIFF_SHOWN])
    more = f"; and {len(differences) - DIFF_SHOWN} more" if len(differences) > DIFF_SHOWN else ""
    n = len(differences)
    return (
        f"pd_plan_file={shown} differs from the plan of the current inventory in {n} place{'s' if n > 1 else ''}: "
        f"{listed}{more}. The file is applied as reviewed; to apply the inventory instead, review and "
        "write it again with playbooks/plan.yml, or run without pd_plan_file"
    )
