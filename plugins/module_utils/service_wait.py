# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""The health gate of the service_wait module, as functions (PRIVATE).

The waiting rule is one pure function, :func:`wait_services`, that takes its probes (an HTTP
check, an alive check, a log reader, a clock and a sleep) as arguments, so unit tests drive it
with fakes and no time passes. :func:`last_start` picks the log lines of the latest start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

# Written into a service's log by its launch script before each start (the log is appended).
MARK = "--- openfuyao.pd: starting "


def last_start(lines: Iterable[str], count: int) -> list[str]:
    """The last `count` lines since the last start marker (all of them when there is none)."""
    recent = [line.rstrip("\n") for line in lines]
    starts = [i for i, line in enumerate(recent) if line.startswith(MARK)]
    if starts:
        recent = recent[starts[-1]:]
    return recent[-count:] if count > 0 else []


def wait_services(
    services: list[dict[str, Any]],
    timeout: float,
    tail_lines: int,
    grace: float,
    *,
    http_ok: Callable[[str], bool],
    alive: Callable[[list[str]], bool],
    read_tail: Callable[[str, int], list[str]],
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    poll: float = 2.0,
) -> dict[str, Any]:
    """Poll every service until all answer their URLs, one exits, or the deadline passes.

    Returns ``{ok: True, ready}`` or ``{ok: False, failed, why, ready, log, tail}``; ``ready`` maps
    each service that answered to the seconds it took.
    """
    start = clock()
    deadline = start + float(timeout)
    ready: dict[str, float] = {}
    while True:
        for svc in services:
            name = svc["name"]
            if name in ready:
                continue
            if all(http_ok(u) for u in svc["urls"]):
                ready[name] = round(clock() - start, 1)
                continue
            if clock() - start > grace and not alive(list(svc.get("alive_cmd") or [])):
                return {"ok": False, "failed": name, "why": "exited before serving", "ready": ready,
                        "log": svc["log"], "tail": read_tail(svc["log"], tail_lines)}
        if len(ready) == len(services):
            return {"ok": True, "ready": ready}
        if clock() > deadline:
            late = next(s for s in services if s["name"] not in ready)
            return {"ok": False, "failed": late["name"],
                    "why": f"not serving {' and '.join(late['urls'])} after {timeout}s",
                    "ready": ready, "log": late["log"], "tail": read_tail(late["log"], tail_lines)}
        sleep(poll)
