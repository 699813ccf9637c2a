# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""Pure helpers of the pd_host_probe module (PRIVATE to this collection).

They read text and numbers the module gathered (``/proc/mounts``, disk usage, bind()
results, an engine's ``version`` call) and return the plain data the preflight role
consumes. No I/O here: the module does the reading, these functions decide.
"""

from __future__ import annotations

import posixpath

# /proc/mounts escapes space, tab, newline and backslash as octal.
_MOUNT_ESCAPES = (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\"))


def unescape_mount(field: str) -> str:
    for code, char in _MOUNT_ESCAPES:
        field = field.replace(code, char)
    return field


def find_mount(path: str, mounts_text: str, exists: bool) -> dict:
    """The mount of exactly ``path`` in ``/proc/mounts`` text; the last one wins (stacked mounts)."""
    target = posixpath.normpath(path)
    found = None
    for line in mounts_text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and posixpath.normpath(unescape_mount(parts[1])) == target:
            found = {"source": unescape_mount(parts[0]), "fstype": parts[2]}
    return {"path": path, "exists": exists, "mounted": found is not None,
            "source": found["source"] if found else None, "fstype": found["fstype"] if found else None}


def nearest_existing(path: str, exists) -> str:
    """``path`` or its closest existing ancestor: a directory not created yet is judged by its filesystem."""
    probe = path
    while probe and not exists(probe):
        parent = posixpath.dirname(probe)
        if parent == probe:
            break
        probe = parent
    return probe or "/"


def disk_report(path: str, checked_path: str, free_bytes: int, total_bytes: int) -> dict:
    return {"path": path, "checked_path": checked_path, "free_gb": round(free_bytes / 1e9, 1),
            "total_gb": round(total_bytes / 1e9, 1)}


def ranges_to_check(ranges: list) -> list:
    """The port ranges whose every port must be free, ranges without a kind first.

    Ranges of kind ``pool`` (for example Mooncake's transfer-engine RPC range) are picked from at
    random by a library: they must be open in the firewall but need not be entirely free."""
    plain = [r for r in ranges if not r.get("kind")]
    kinded = [r for r in ranges if r.get("kind") and r["kind"] != "pool"]
    return plain + kinded


def ports_of(item: dict) -> range:
    """The ports bind() can try: out-of-range ports are the role's to report, not the probe's."""
    start = int(item["start"])
    end = int(item["end"]) if item.get("end") is not None else start
    return range(max(start, 1), min(end, 65535) + 1)


def range_report(item: dict, busy: dict) -> dict:
    """One checked range; ``busy`` maps each port that could not be bound to the reason."""
    start = int(item["start"])
    end = int(item["end"]) if item.get("end") is not None else start
    out = {"start": start, "end": end, "purpose": item.get("purpose") or "",
           "busy": {str(port): reason for port, reason in sorted(busy.items())}}
    for key in ("owner", "var", "address"):  # the plan's port claim: who holds the range, what sets it
        if item.get(key):
            out[key] = item[key]
    return out


def busy_ports(reports: list) -> list:
    """Every port of the checked ranges that could not be bound, in order, one flat entry each."""
    out = []
    for report in reports:
        for port, reason in report["busy"].items():
            entry = {"port": int(port), "reason": reason, "purpose": report["purpose"]}
            for key in ("owner", "var", "address"):
                if report.get(key):
                    entry[key] = report[key]
            out.append(entry)
    return out


def bind_targets(address: str | None) -> list:
    """Where to bind() to learn whether a service can listen on ``address``: (IPv6?, address).

    One rule for every port check of the collection: bind what the service will bind. With no
    address (the preflight's question "is the port free on this host") that is every IPv4 and
    every IPv6 address, which also finds listeners of other network namespaces sharing the host
    network; with a wildcard (``0.0.0.0``, ``::``) or one address, exactly that."""
    if not address:
        return [(False, "0.0.0.0"), (True, "::")]
    return [(":" in address, address)]


def bind_error_reason(errno_value: int | None, strerror: str | None, ipv6: bool, wildcard: bool = True) -> str | None:
    """Why a bind() failed, or None when the failure means nothing (IPv6 disabled on the host)."""
    if errno_value == 99:  # EADDRNOTAVAIL
        return None if ipv6 and wildcard else "not an address of this host"
    return "in use" if errno_value == 98 else (strerror or f"errno {errno_value}")


def engine_report(engine: str, path: str | None, rc: int | None, stdout: str, stderr: str) -> dict:
    """Whether ``ENGINE version`` answered; ``detail`` carries the last line of its complaint."""
    if not path:
        return {"engine": engine, "path": None, "ok": False, "detail": f"{engine} not found on PATH"}
    lines = (stderr or stdout or "").strip().splitlines()
    ok = rc == 0
    return {"engine": engine, "path": path, "ok": ok, "detail": lines[-1] if lines and not ok else ""}


def bad_params(params: dict) -> str | None:
    """One line naming the first bad option and the fix, or None.

    Port ranges outside 1-65535 or ending before they start are not refused: the preflight role
    reports them itself, and the probe checks the ports of them that bind() can try."""
    for option in ("storage_path", "disk_path"):
        value = params.get(option)
        if value and not posixpath.isabs(value):
            return (f"{option} must be an absolute path, got {value!r}; "
                    f"give the full path, for example /{value.lstrip('./')}")
    return None
