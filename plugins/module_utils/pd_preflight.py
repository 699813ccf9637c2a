# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""The preflight role's findings: from what each check step saw to the report's checks and problem lines.

The role runs its checks (modules, commands) and keeps, per step, one record of what the step saw (the
registered results and the settings the verdict depends on). Everything the report says is decided here:
each check's status and detail, and each problem line, prefixed with the host. Shared by the
preflight_findings and preflight_module_failure filters (a filter plugin cannot import another one).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from numbers import Number
from typing import Any

# The planner's own choices, so preflight and the plan accept the same values.
from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan_vars import PLATFORMS, RUNTIMES

# The order the role runs its steps in, and so the order of the checks in the report. A step that did not
# run (its record is missing or null) contributes nothing; "failure" (the rescue) is always the last.
STEPS = ("inventory", "topology", "devices", "ping", "product", "hccs", "no_npu", "host", "firewall", "failure")


def _json(value: Any) -> str:
    """As Ansible's to_json writes it (json.dumps defaults), so lines keep quoting values the same way."""
    return json.dumps(value)


def _skipped(result: Mapping[str, Any] | None) -> bool:
    return bool(result) and bool(result.get("skipped", False))


def _truncate(text: str, length: int = 160, end: str = "...", leeway: int = 5) -> str:
    """Jinja's truncate(160): whole words, '...' appended, text up to 5 characters over the length kept."""
    if len(text) <= length + leeway:
        return text
    return text[: length - len(end)].rsplit(" ", 1)[0] + end


def module_failure(result: Mapping[str, Any] | None) -> str:
    """One line for a result that is not the module's own report: the first line of its msg and, when the
    module crashed, the last line of its stderr."""
    result = result or {}
    lines = str(result.get("msg", "the module returned no message")).splitlines()
    line = lines[0] if lines else "the module returned an empty message"
    stderr = str(result.get("module_stderr", "")).strip()
    return line + (f" (module stderr: {stderr.splitlines()[-1]})" if stderr else "")


def _check(name: str, status: str, detail: str, **extra: str) -> dict[str, str]:
    return {"check": name, "status": status, "detail": detail, **extra}


Found = tuple[list[dict[str, Any]], list[str]]


def _inventory(step: Mapping[str, Any]) -> Found:
    """pd_platform, pd_runtime and the port ranges: lines only, no check of their own."""
    platform, runtime, ports = step.get("platform"), step.get("runtime"), step.get("ports") or []
    problems = []
    if platform not in PLATFORMS:
        problems.append(f"pd_platform: {_json(platform)} is not one of {', '.join(PLATFORMS)}; fix the inventory")
    if runtime not in RUNTIMES:
        problems.append(f"pd_runtime: {_json(runtime)} is not one of {', '.join(RUNTIMES)}; fix the inventory")
    no_start = [p for p in ports if not isinstance(p, Mapping) or not isinstance(p.get("start"), Number)]
    if no_start:
        problems.append(f"ports: every item needs an integer start (and end), got {_json(no_start)}")
    out_of_range = ports_out_of_range(ports)
    if out_of_range:
        problems.append(f"ports: {_json(out_of_range)} must lie within 1-65535 with end >= start; fix the inventory/plan")
    return [], problems


def ports_out_of_range(ports: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Ranges with a numeric start that bind() cannot even try: outside 1-65535, or ending before they start."""

    def bad(port: Mapping[str, Any]) -> bool:
        start, end = port["start"], port.get("end", port["start"])
        return not isinstance(end, Number) or start < 1 or end > 65535 or end < start

    return [p for p in ports if isinstance(p, Mapping) and isinstance(p.get("start"), Number) and bad(p)]


def _module_check(name: str, result: Mapping[str, Any], key: str, failed: str, detail: Callable[[], str]) -> Found:
    """A check module's report (``key`` present): its problems; else one line naming the module failure."""
    if key in result:
        problems = list(result.get("problems") or [])
        return [_check(name, "fail" if problems else "pass", detail())], problems
    failure = module_failure(result)
    return [_check(name, "fail", failure)], [f"{failed}: {failure}"]


def _topology(step: Mapping[str, Any]) -> Found:
    result = step.get("result") or {}
    return _module_check("npu topology", result, "chips", "npu: npu_topology failed", lambda: result.get("msg", ""))


def _first_line(text: Any) -> str:
    lines = str(text or "").splitlines()
    return lines[0] if lines else ""


def _devices(step: Mapping[str, Any]) -> Found:
    result = step.get("result") or {}
    return _module_check("npu devices", result, "devices", "npu: hccn_check failed", lambda: _first_line(result.get("msg")))


def _mesh(name: str, step: Mapping[str, Any], not_run: str, failed: str, detail: Callable[[int, list], str]) -> Found:
    """A ping or HCCS-ping pass: skipped (nothing to ping or nothing to ping from), else as the module reports."""
    result = step.get("result") or {}
    targets = list(step.get("targets") or [])
    if not result or _skipped(result):
        return [_check(name, "skip", not_run)], []
    return _module_check(name, result, "devices", failed, lambda: detail(len(result["devices"]), targets))


def _ping(step: Mapping[str, Any]) -> Found:
    return _mesh("ping mesh", step, "no other NPU host in the play and no ping targets", "ping: hccn_check failed",
                 lambda n, targets: f"{n} device(s) x {len(targets)} target(s): {', '.join(map(str, targets))}")


def _hccs(step: Mapping[str, Any]) -> Found:
    return _mesh("hccs mesh", step, "no other A3 host in this P2P group (or no vNIC up)", "hccs mesh: hccn_check failed",
                 lambda n, targets: f"{n} die(s) x {len(targets)} peer vNIC(s) over HCCS")


def _product(step: Mapping[str, Any], host: str) -> Found:
    """A2 and A3 hosts in one P2P group: one line for the group, on its first host; every member notes it."""
    product, group = step.get("product"), step.get("group")
    members: Mapping[str, str] = step.get("members") or {}
    a2 = sorted(h for h, p in members.items() if p == "A2")
    a3 = sorted(h for h, p in members.items() if p == "A3")
    if not (a2 and a3):
        detail = f"{product} in P2P group {_json(group)} with {len(members)} NPU host(s), all {product}"
        return [_check("npu product", "pass", detail)], []
    line = (f"npu: P2P group {_json(group)} mixes A2 hosts ({', '.join(a2)}) and A3 hosts ({', '.join(a3)}); KV cannot "
            "move between the two generations: give them different preflight_p2p_group values (separate deployments) "
            "or use one product")
    first = sorted(members)[0] == host
    return [_check("npu product", "fail", line)], [line] if first else []


def _no_npu(step: Mapping[str, Any]) -> Found:
    return [_check("npu", "skip", f"platform is {step.get('platform')}, not ascend: NPU checks skipped")], []


def _storage(step: Mapping[str, Any]) -> dict[str, str] | None:
    path = step.get("storage_path") or ""
    if not path:
        return None
    probe, again, mount_run = step.get("probe") or {}, step.get("probe_again") or {}, step.get("mount_run") or {}
    mount = again["mount"] if again and not _skipped(again) and "mount" in again else probe.get("mount") or {}
    fstype = step.get("storage_fstype") or ""
    if not mount.get("mounted", False):
        if mount_run.get("changed", False):
            command = " ".join(map(str, step.get("mount_command") or []))
            why = str(mount_run.get("stderr", "") or mount_run.get("msg", "")).strip()
            problem = f"storage: {path} is not a mount point and `{command}` failed: {_truncate(why)}"
        else:
            problem = (f"storage: {path} is not a mount point; mount the shared storage there (e.g. `mount -t nfs "
                       f"SERVER:/export {path}`) or set preflight_storage_mount_command")
    else:
        problem = (f"storage: {path} is {mount.get('fstype')} from {mount.get('source')}, expected {fstype}; mount the "
                   "right filesystem there")
    ok = mount.get("mounted", False) and (not fstype or mount.get("fstype") == fstype)
    detail = f"{path} mounted ({mount.get('fstype', '')} from {mount.get('source', '')})" if ok else problem
    return _check("storage", "pass" if ok else "fail", detail, problem=problem)


def _disk(step: Mapping[str, Any]) -> dict[str, str] | None:
    disk = (step.get("probe") or {}).get("disk") or {}
    if not disk:
        return None
    need = step.get("disk_min_free_gb")
    free, path = disk.get("free_gb", ""), disk.get("path", "")
    ok = disk["free_gb"] >= float(need)
    problem = (f"disk: only {free} GB free at {path}, need {need} GB for images and models; free space or set "
               "preflight_disk_path")
    return _check("disk", "pass" if ok else "fail", f"{free} GB free at {path}", problem=problem)


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return [item for inner in value for item in _flatten(inner)]
    return [value]


def _ports(step: Mapping[str, Any]) -> dict[str, str] | None:
    if not step.get("ports"):
        return None
    ranges = (step.get("probe") or {}).get("ports") or []
    busy = [r for r in ranges if r.get("busy")]
    if busy:
        detail = f"{len(busy)} port range(s) in use"
    else:
        detail = f"{len(ranges)} port range(s) free: {', '.join(str(r.get('start')) for r in ranges)}"
    ports = ", ".join(str(p) for r in busy for p in _flatten(list(r["busy"])))
    purposes = ", ".join(str(r.get("purpose", "")) for r in busy)
    problem = (f"ports: {ports} ({purposes}) already in use; stop what listens there or change the ports in the "
               "inventory/plan")
    return _check("ports", "fail" if busy else "pass", detail, problem=problem)


def _engine(step: Mapping[str, Any]) -> dict[str, str] | None:
    engine = (step.get("probe") or {}).get("engine") or {}
    if not engine:
        return None
    name = engine.get("engine", "")
    detail = f"{name} at {engine.get('path', '')} answers" if engine.get("ok", False) else ""
    if not engine.get("path"):
        problem = f"container runtime: {name} not found; install it or set pd_runtime: host"
    else:
        problem = f"container runtime: {name} does not answer ({engine.get('detail', '')}); start its daemon"
    return _check("container runtime", "pass" if engine.get("ok", False) else "fail", detail, problem=problem)


def _host(step: Mapping[str, Any]) -> Found:
    """Storage, disk, ports and container runtime, from pd_host_probe; a check with nothing to judge is left out.

    These four checks carry their problem line in the report as ``problem`` (the table prints it on a failure).
    """
    checks = [c for c in (_storage(step), _disk(step), _ports(step), _engine(step)) if c]
    return checks, [c["problem"] for c in checks if c["status"] == "fail"]


def _firewall(step: Mapping[str, Any]) -> Found:
    if (step.get("state") or {}).get("rc", 1) != 0:
        detail = "firewalld not running"
    elif step.get("firewall") == "disable":
        detail = "firewalld stopped and disabled"
    else:
        detail = f"firewalld allows {len(step.get('ports') or [])} needed port range(s)"
    return [_check("firewall", "pass", detail)], []


def _failure(step: Mapping[str, Any]) -> Found:
    """A check task that failed (a module crash, an error): one line naming the task."""
    task = step.get("task") or "unknown task"
    failure = module_failure(step.get("result"))
    return [_check(task, "fail", failure)], [f"preflight task {_json(task)} failed: {failure}"]


_JUDGES: dict[str, Callable[[Mapping[str, Any]], Found]] = {
    "inventory": _inventory,
    "topology": _topology,
    "devices": _devices,
    "ping": _ping,
    "hccs": _hccs,
    "no_npu": _no_npu,
    "host": _host,
    "firewall": _firewall,
    "failure": _failure,
}


def findings(steps: Mapping[str, Any], host: str) -> dict[str, list[Any]]:
    """The report entry's ``checks`` and ``problems`` (each line prefixed with ``host``) of one host."""
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        raise ValueError(f"preflight_findings: unknown step(s) {', '.join(unknown)}; the steps are {', '.join(STEPS)}")
    checks: list[dict[str, Any]] = []
    problems: list[str] = []
    for name in STEPS:
        step = steps.get(name)
        if not step:
            continue
        if not isinstance(step, Mapping):
            raise ValueError(f"preflight_findings: step {name} must be a dict, got {type(step).__name__}")
        found = _product(step, host) if name == "product" else _JUDGES[name](step)
        checks += found[0]
        problems += [f"{host}: {line}" for line in found[1]]
    return {"checks": checks, "problems": problems}
