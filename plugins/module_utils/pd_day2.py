# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""The day-2 playbooks' controller-side logic (status, rolling restart, upgrade, scale) (PRIVATE).

  status(doc)    {plan, probes, proxy}: the status table of every instance, the proxy's view and
                 the problems found (filter openfuyao.pd.day2_status)
  batches(doc)   {plan, roles, max_unavailable, min_available, only}: the rolling order in
                 batches, or why not (filter openfuyao.pd.day2_batches)
  diff(doc)      {plan, live, would_change}: what scaling changes (filter openfuyao.pd.day2_diff)

Pure functions over the plan and what the hosts and the proxy answered; each host's side is the
openfuyao.pd.pd_service_probe module, whose result is one of the `probes` here. A refusal the
operator can act on (a roll below capacity, a renaming scale) is the `error` of the result; input
that is not a plan raises Day2InputError with one line (the filters turn it into the task's error).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ansible_collections.openfuyao.pd.plugins.module_utils.text_table import align_columns

ROLES = ("prefill", "decode")
# Service states that are not a problem by themselves: STARTING is a (re)start within supervisord's
# startsecs or the restart delay (its /health, checked apart, says whether it serves yet).
UP_STATES = ("RUNNING", "ACTIVE", "STARTING", "ACTIVATING")


# ----------------------------------------------------------------------------- controller side


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return align_columns([header, *rows])


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _ports(inst: dict[str, Any]) -> str:
    parts = []
    for p in inst.get("ports") or []:
        span = str(p["start"]) if p["start"] == p["end"] else f"{p['start']}-{p['end']}"
        parts.append(f"{p.get('purpose', '?')}:{span}")
    return ",".join(parts) or str(inst.get("http_port", "-"))


def status(doc: dict[str, Any]) -> dict[str, Any]:
    """Combine the plan, the hosts' probes and the proxy's view into one table and a problem list."""
    plan = doc["plan"]
    probes = doc.get("probes") or {}
    proxy = doc.get("proxy") or {}
    live = {b.get("name"): b for b in (proxy.get("instances") or []) if isinstance(b, Mapping)}
    by_url = {b.get("url"): b for b in live.values()}
    served = plan.get("model", {}).get("served_name")
    problems: list[str] = []
    rows = []
    versions: dict[str, set[str]] = {}
    for inst in plan.get("instances", []):
        host_probe = probes.get(inst["host"]) or {}
        p = next((x for x in host_probe.get("instances", []) if x.get("name") == inst["name"]), None)
        url = _url(inst)
        backend = live.get(inst["name"]) or by_url.get(url)
        pkgs = host_probe.get("packages") or {}
        stack = ",".join(f"{k}={v}" for k, v in sorted(pkgs.items()) if k != "openfuyao-pd-connector")
        for k, v in pkgs.items():
            versions.setdefault(k, set()).add(v)
        restarts, last_exit = "-", "-"
        if p is None:
            health, state, uptime, models, version = "unprobed", "?", "-", [], None
            problems.append(f"{inst['name']} on {inst['host']}: host not probed (unreachable or not in this run)")
        else:
            health, state, uptime = p.get("health", "?"), p.get("state") or "?", p.get("uptime") or "-"
            models, version = p.get("models") or [], p.get("version")
            restarts = str(p["restarts"]) if p.get("restarts") is not None else "-"
            last_exit = p.get("last_exit") or "-"
            if state not in UP_STATES:
                problems.append(_service_problem(inst, p))
            if p.get("kv_stuck"):
                problems.append(f"{inst['name']} on {inst['host']}: KV cache stuck at {p.get('kv_usage')} with no "
                                f"request (KV watchdog); drain and restart it: playbooks/rolling_restart.yml "
                                f"-e '{{\"day2_only_instances\": [\"{inst['name']}\"]}}'")
            if health != "ok":
                problems.append(f"{inst['name']} on {inst['host']}: /health {health} at {inst['health_url']}")
            elif served and served not in models:
                problems.append(f"{inst['name']} on {inst['host']}: serves {models or 'no model'}, "
                                f"the plan says {served}")
        if backend is None:
            view = "absent"
            problems.append(f"{inst['name']}: the proxy does not route to it; "
                            f"run playbooks/scale.yml to join it")
        else:
            flags = [f for f in ("ejected", "draining") if backend.get(f)]
            if not backend.get("healthy", True):
                flags.append("unhealthy")
            if p is not None and p.get("kv_stuck"):
                flags.append("kv-stuck")
            view = ",".join(flags) or "healthy"
            view += f" inflight={backend.get('inflight_requests', 0)}"
            if flags:
                problems.append(f"{inst['name']}: proxy marks it {','.join(flags)}")
        rows.append([inst["host"], inst["name"], inst["role"],
                     ",".join(str(d) for d in inst.get("devices") or []) or "-",
                     _ports(inst), state, restarts, _short_exit(last_exit), health, ",".join(models) or "-",
                     version or "-", stack or "-", uptime, view])
    planned = {i["name"] for i in plan.get("instances", [])}
    planned_urls = {_url(i) for i in plan.get("instances", [])}
    for name, b in sorted(live.items()):
        if name not in planned and b.get("url") not in planned_urls:
            problems.append(f"proxy routes to {name} ({b.get('url')}) which the plan does not have; "
                            f"run playbooks/scale.yml to remove it")
    for pkg, vs in sorted(versions.items()):
        if len(vs) > 1:
            problems.append(f"package {pkg} differs between hosts ({', '.join(sorted(vs))}); "
                            f"run playbooks/upgrade.yml to align")
    px = plan.get("proxy") or {}
    p_health = proxy.get("health") or {}
    proxy_line = (f"proxy {px.get('host')} {_endpoint(px.get('address', '?'), px.get('port', 0))} "
                  f"protocol={px.get('protocol')} status={p_health.get('status', proxy.get('error') or '?')} "
                  f"service={proxy.get('state') or '?'} uptime={proxy.get('uptime') or '-'}"
                  f" restarts={proxy.get('restarts') if proxy.get('restarts') is not None else '-'}"
                  f" last_exit={_short_exit(proxy.get('last_exit') or '-')}")
    if proxy.get("state") and proxy["state"] not in UP_STATES:
        problems.append(_service_problem({"name": "proxy", "host": px.get("host")}, proxy))
    if proxy.get("error"):
        problems.append(f"proxy on {px.get('host')}: {proxy['error']}")
    elif p_health.get("status") not in ("ok", None):
        problems.append(f"proxy on {px.get('host')}: {p_health.get('status')} ({p_health.get('reason', '')})")
    header = ["HOST", "INSTANCE", "ROLE", "DEVICES", "PORTS", "SERVICE", "RESTARTS", "LAST EXIT", "HEALTH", "MODEL",
              "VERSION", "STACK", "UPTIME", "PROXY VIEW"]
    lines = [*_table(header, rows), "", proxy_line, ""]
    if problems:
        lines += [f"PROBLEMS ({len(problems)}):", *(f"  - {p}" for p in problems)]
    else:
        lines.append("PROBLEMS: none")
    return {"table": "\n".join(lines), "lines": lines, "problems": problems, "rows": rows}


def _short_exit(last_exit: str) -> str:
    """'terminated by SIGKILL at 2026-12-02 01:20:00' -> 'SIGKILL@01:20:00' (the table column)."""
    m = re.match(r"(?:terminated by |killed by signal )?(.*?)(?: at \S+ (\S+))?$", last_exit)
    if not m or last_exit == "-":
        return last_exit
    return f"{m.group(1)}@{m.group(2)}" if m.group(2) else m.group(1)


def _service_problem(inst: dict[str, Any], p: dict[str, Any]) -> str:
    """One line for a service that does not run; a crash loop (FATAL / failed) says so."""
    state = p.get("state") or "?"
    detail = f" ({p['detail']})" if p.get("detail") else ""
    where = f"{inst['name']} on {inst['host']}: service is {state}{detail}"
    history = ""
    if p.get("restarts"):
        history = f" after {p['restarts']} restart(s)"
    if p.get("last_exit"):
        history += f", last exit: {p['last_exit']}"
    if state in ("FATAL", "FAILED"):
        return (f"{where}: crash loop, the supervisor gave up{history}; fix the cause (see its log), "
                f"then run playbooks/site.yml")
    return f"{where}{history}; start it with playbooks/site.yml or see its log"


def batches(doc: dict[str, Any]) -> dict[str, Any]:
    """Rolling order: every role in turn, in batches that keep `min_available` instances serving."""
    plan = doc["plan"]
    only = set(doc.get("only") or [])
    out: list[dict[str, Any]] = []
    errors: list[str] = []
    for role in doc.get("roles") or ["decode", "prefill"]:
        if role not in ROLES:
            continue
        members = [i for i in plan.get("instances", []) if i["role"] == role]
        todo = [i for i in members if not only or i["name"] in only]
        if not todo:
            continue
        minimum = int((doc.get("min_available") or {}).get(role, 1))
        step = min(int(doc.get("max_unavailable") or 1), len(members) - minimum)
        if step < 1:
            errors.append(f"role {role} has {len(members)} instance(s) and day2_min_available_{role}={minimum}: "
                          f"restarting one would leave fewer serving; add a {role} instance "
                          f"(playbooks/scale.yml) or lower day2_min_available_{role}")
            continue
        for k in range(0, len(todo), step):
            chunk = todo[k:k + step]
            out.append({"role": role, "instances": [
                {key: i[key] for key in ("name", "host", "role", "health_url", "address", "http_port")}
                for i in chunk]})
    unknown = sorted(only - {i["name"] for i in plan.get("instances", [])})
    if unknown:
        errors.append(f"day2_only_instances names {', '.join(unknown)} that the plan does not have")
    return {"batches": out, "error": "\n".join(errors) or None}


def _url(inst: dict[str, Any]) -> str:
    return "http://" + _endpoint(inst["address"], inst["http_port"])


def restart_reasons(kept: list[dict[str, Any]], added: list[dict[str, Any]],
                    would_change: dict[str, list[str]] | list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """({name: why it restarts}, {name: why it is left alone}) for the kept instances.

    scale.yml runs the deploy role only on hosts that gain an instance, and the role restarts
    exactly the instances whose rendered files change; `would_change` is that role's answer in
    check mode ({instance name: files that would change}, or scale.yml's "name:file" list).
    """
    gaining = {i["host"] for i in added}
    if not isinstance(would_change, Mapping):  # scale.yml's "name:file" entries
        by_name: dict[str, list[str]] = {}
        for entry in would_change:
            name, _sep, what = str(entry).partition(":")
            by_name.setdefault(name, []).append(what)
        would_change = by_name
    restarts, keeps = {}, {}
    for i in kept:
        files = sorted(would_change.get(i["name"]) or [])
        if files and i["host"] in gaining:
            restarts[i["name"]] = "its " + ", ".join(files) + " change"
        elif files:
            keeps[i["name"]] = ("its host gains no instance, so it is not redeployed, though its "
                                + ", ".join(files) + " differ from the plan (rolling_restart.yml after site.yml applies them)")
        else:
            keeps[i["name"]] = "its files are unchanged"
    return restarts, keeps


def diff(doc: dict[str, Any]) -> dict[str, Any]:
    """Plan vs the proxy's live backends, matched by role and endpoint (address:port)."""
    plan = doc["plan"]
    live = [b for b in (doc.get("live") or []) if isinstance(b, Mapping)]
    live_by_key = {(b.get("role"), b.get("url")): b for b in live}
    wanted = {(i["role"], _url(i)): i for i in plan.get("instances", [])}
    added = [i for k, i in wanted.items() if k not in live_by_key]
    removed = [b for k, b in live_by_key.items() if k not in wanted]
    kept = [i for k, i in wanted.items() if k in live_by_key]
    renamed = []
    for i in kept:
        old = live_by_key[(i["role"], _url(i))]["name"]
        if old != i["name"]:
            renamed.append(f"{old} -> {i['name']}")
    restarts, keeps = restart_reasons(kept, added, doc.get("would_change") or {})
    lines = [f"+ {i['name']:<12} {i['role']:<8} {i['host']} {_url(i)}  starts (new)" for i in added]
    lines += [f"- {b['name']:<12} {b.get('role', '?'):<8} {b.get('url')}  drained, then stopped" for b in removed]
    lines += [f"~ {i['name']:<12} {i['role']:<8} {i['host']} {_url(i)}  restarts: {restarts[i['name']]}"
              for i in kept if i["name"] in restarts]
    lines += [f"= {i['name']:<12} {i['role']:<8} {i['host']} {_url(i)}  untouched: {keeps[i['name']]}"
              for i in kept if i["name"] in keeps]
    errors = []
    if renamed:
        errors.append("the new plan renames running instances (" + ", ".join(renamed) + "): instance names "
                      "are numbered over the groups, so add hosts at the end of [prefill]/[decode] and remove "
                      "them from the end; to reorder, redeploy with playbooks/site.yml")
    for role in ROLES:
        if not any(i["role"] == role for i in plan.get("instances", [])):
            errors.append(f"the new plan has no {role} instance; keep at least one in [{role}]")
    return {"added": added, "removed": removed, "kept": [i["name"] for i in kept], "restarts": sorted(restarts),
            "lines": lines or ["(no change)"], "changed": bool(added or removed or restarts),
            "error": "\n".join(errors) or None}


class Day2InputError(ValueError):
    """The input is not what the day-2 playbooks pass (a plan this collection wrote, ...); one line."""


COMMANDS = {"status": status, "batches": batches, "diff": diff}


def run(command: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    """COMMANDS[command](doc); input that is not a plan raises Day2InputError naming the filter and the fix."""
    if not isinstance(doc.get("plan"), Mapping):
        raise Day2InputError(f"openfuyao.pd.day2_{command}: its input must be pd_plan (a mapping, as "
                             f"playbooks/plan.yml computes it), got {type(doc.get('plan')).__name__}")
    try:
        return COMMANDS[command](doc)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise Day2InputError(f"openfuyao.pd.day2_{command}: bad input ({type(exc).__name__}: {exc}); "
                             "pass pd_plan as playbooks/plan.yml computes it and the arguments the "
                             "day-2 playbooks pass") from None
