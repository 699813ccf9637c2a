"""Chaos run of the molecule `chaos` scenario: faults under load, recovery measured.

Runs on the controller against the scenario's containers (docker CLI) and the proxies' virtual
IP. For each fault in turn a bounded load runs throughout (non-streamed and streamed completion
requests through the VIP, openfuyao_pd.loadgen); the fault is injected; the run waits until the
deployment is at full capacity again with no operator action (the service is a new process,
every proxy routes to every instance, the VIP answers); then the load stops and its outcome is
recorded. Prints the table, writes it (text and JSON) and exits 1 when a target is missed:
non-streamed failures <= 1 % overall, recovery <= 60 s per fault, a stream cut by an engine
fault ends with an error event, and no request hangs (ends by its timeout). The clients retry a
connection that could not be opened (the VIP's short move), as the OpenAI client does by
default; the table counts those retries.

    python chaos.py --vip 172.31.212.100 --port 9090 --proxy pd-mol-chaos-px1=172.31.212.21 ... \\
        --fault 'SIGKILL decode-0=kill:pd-mol-chaos-d1:openfuyao-pd-decode-0' --out DIR
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from openfuyao_pd import loadgen

SUPERVISOR_CONF = "/etc/openfuyao-pd/supervisord.conf"
MAX_FAILED_PCT = 1.0
MAX_RECOVERY_S = 60.0


@dataclass(frozen=True)
class Fault:
    label: str
    kind: str          # kill | kill-vip-proxy | restart | restart-vip-proxy
    container: str = ""
    service: str = ""


@dataclass
class Row:
    fault: str
    sent: int = 0
    failed: int = 0
    stream_sent: int = 0
    stream_failed: int = 0
    recovery_s: float | None = None
    note: str = ""
    stream_errors: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    connect_retries: int = 0
    vip_before: str = ""
    vip_after: str = ""


def parse_fault(text: str) -> Fault:
    """`LABEL=kill:CONTAINER:SERVICE`, `LABEL=kill-vip-proxy`, `LABEL=restart:CONTAINER`."""
    label, _, spec = text.partition("=")
    parts = spec.split(":")
    if parts[0] == "kill" and len(parts) == 3:
        return Fault(label, "kill", parts[1], parts[2])
    if parts[0] == "kill-vip-proxy" and len(parts) == 1:
        return Fault(label, "kill-vip-proxy", service="openfuyao-pd-proxy")
    if parts[0] == "restart" and len(parts) == 2:
        return Fault(label, "restart", parts[1])
    if parts[0] == "restart-vip-proxy" and len(parts) == 1:
        return Fault(label, "restart-vip-proxy")
    raise SystemExit(f"--fault {text!r}: use LABEL=kill:CONTAINER:SERVICE, LABEL=kill-vip-proxy, LABEL=restart:CONTAINER"
                     " or LABEL=restart-vip-proxy")


def docker(*argv: str, timeout: float = 60) -> str:
    out = subprocess.run(["docker", *argv], capture_output=True, text=True, timeout=timeout, check=False)
    return out.stdout.strip() if out.returncode == 0 else ""


def service_pid(container: str, service: str) -> str:
    """The service's pid in the container ("*": the supervisord's own, after a reboot)."""
    which = [] if service == "*" else [service]
    pid = docker("exec", container, "supervisorctl", "-c", SUPERVISOR_CONF, "pid", *which, timeout=15)
    return pid if pid.isdigit() and pid != "0" else ""


def vip_holder(proxies: dict[str, str], vip: str) -> str:
    for name in proxies:
        if f" {vip}/" in docker("exec", name, "ip", "-o", "-4", "addr", "show", "dev", "eth0", timeout=15):
            return name
    return ""


def get_json(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return json.loads(resp.read()) if resp.status == 200 else None
    except (OSError, ValueError):
        return None


def full_capacity(proxies: dict[str, str], port: int, vip: str, instances: int) -> bool:
    """Every proxy routes to every instance (healthy, not ejected, not draining) and the VIP serves."""
    for address in proxies.values():
        view = get_json(f"http://{address}:{port}/v1/instances")
        if view is None:
            return False
        ready = [i for i in view.get("instances", []) if i.get("healthy") and not i.get("ejected") and not i.get("draining")]
        if len(ready) < instances:
            return False
    return get_json(f"http://{vip}:{port}/health") is not None


def inject(fault: Fault, proxies: dict[str, str], vip: str) -> tuple[str, str, str]:
    """Inject the fault; (container, service, pid before) to tell when it came back."""
    if fault.kind in ("restart", "restart-vip-proxy"):
        # A whole host reboots; for the VIP's holder the other proxy must take the VIP over.
        container = fault.container or vip_holder(proxies, vip)
        if not container:
            raise SystemExit(f"{fault.label}: no proxy host holds the VIP {vip}")
        pid = service_pid(container, "*")
        docker("restart", "-t", "0", container, timeout=120)
        return container, "*", pid
    container = fault.container or vip_holder(proxies, vip)
    pid = service_pid(container, fault.service)
    if not pid:
        raise SystemExit(f"{fault.label}: {fault.service} does not run on {container}")
    docker("exec", container, "kill", "-9", pid, timeout=15)
    return container, fault.service, pid


async def wait_recovered(fault: Fault, where: tuple[str, str, str], args, started: float) -> float | None:
    container, service, old_pid = where
    while time.monotonic() - started < args.fault_timeout:
        pid = await asyncio.to_thread(service_pid, container, service)
        back = bool(pid) and pid != old_pid
        if back and service == "*":
            # After a reboot: every program of the host runs again.
            status = await asyncio.to_thread(docker, "exec", container, "supervisorctl", "-c", SUPERVISOR_CONF, "status")
            back = bool(status) and all(" RUNNING " in line for line in status.splitlines())
        if back and await asyncio.to_thread(full_capacity, args.proxies, args.port, args.vip, args.instances):
            return time.monotonic() - started
        await asyncio.sleep(0.5)
    return None


async def one_fault(fault: Fault, args, out: Path) -> Row:
    stop = out / f"stop-{fault.label.replace(' ', '_')}"
    stop.unlink(missing_ok=True)
    url = f"http://{args.vip}:{args.port}"
    bound = args.fault_timeout + 2 * args.settle + 10
    plain = asyncio.create_task(loadgen.run(url, args.model, int(args.rate * bound), args.rate, bound, args.timeout,
                                            max_tokens=8, stop_file=stop, connect_retries=args.connect_retries))
    streamed = asyncio.create_task(loadgen.run(url, args.model, int(args.stream_rate * bound), args.stream_rate, bound,
                                               args.timeout, max_tokens=args.stream_tokens, stream=True, stop_file=stop,
                                               connect_retries=args.connect_retries))
    await asyncio.sleep(args.settle)
    before = await asyncio.to_thread(vip_holder, args.proxies, args.vip)
    started = time.monotonic()
    where = await asyncio.to_thread(inject, fault, args.proxies, args.vip)
    recovery = await wait_recovered(fault, where, args, started)
    await asyncio.sleep(args.settle)
    stop.touch()
    a, b = await plain, await streamed
    after = await asyncio.to_thread(vip_holder, args.proxies, args.vip)
    note = f"on {where[0]}; VIP {before or '-'} -> {after or '-'}"
    ad, bd = a.as_dict(), b.as_dict()
    return Row(fault.label, a.sent, a.failed, b.sent, b.failed,
               None if recovery is None else round(recovery, 1), note, bd["errors"], ad["errors"],
               ad["connect_retries"] + bd["connect_retries"], before, after)


# The collection's one column aligner (plugins/module_utils/text_table.py), loaded by its path:
# this runs on the controller from the collection's tree, with no collection on sys.path.
_TEXT_TABLE = Path(__file__).resolve().parents[2] / "plugins" / "module_utils" / "text_table.py"


def _align_columns(rows: list) -> list[str]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("openfuyao_pd_text_table", _TEXT_TABLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.align_columns(rows, rule=True, sep=" | ", rule_sep="-+-")


def render(rows: list[Row]) -> list[str]:
    head = ("fault", "sent", "failed", "streams", "streams failed", "connect retries", "recovery s", "where")
    body = [(r.fault, str(r.sent), str(r.failed), str(r.stream_sent), str(r.stream_failed), str(r.connect_retries),
             "-" if r.recovery_s is None else f"{r.recovery_s:.1f}", r.note) for r in rows]
    sent, failed = sum(r.sent for r in rows), sum(r.failed for r in rows)
    ss, sf = sum(r.stream_sent for r in rows), sum(r.stream_failed for r in rows)
    pct = 100.0 * failed / sent if sent else 0.0
    body.append(("total", str(sent), f"{failed} ({pct:.2f} %)", str(ss), str(sf),
                 str(sum(r.connect_retries for r in rows)), "", ""))
    return _align_columns([head, *body])


def problems(rows: list[Row], faults: list[Fault]) -> list[str]:
    out = []
    sent, failed = sum(r.sent for r in rows), sum(r.failed for r in rows)
    if not sent or 100.0 * failed / sent > MAX_FAILED_PCT:
        out.append(f"non-streamed failures {failed}/{sent} exceed {MAX_FAILED_PCT} %")
    for r, f in zip(rows, faults, strict=True):
        if r.recovery_s is None or r.recovery_s > MAX_RECOVERY_S:
            out.append(f"{r.fault}: no full capacity within {MAX_RECOVERY_S:g} s (recovery {r.recovery_s})")
        hung = {e: n for e, n in {**r.errors, **r.stream_errors}.items() if e.startswith("timeout")}
        if hung:
            out.append(f"{r.fault}: requests hung until their timeout: {hung}")
        if f.kind == "restart-vip-proxy" and (not r.vip_after or r.vip_after == r.vip_before):
            out.append(f"{r.fault}: the VIP did not move to the other proxy ({r.vip_before or '-'} -> {r.vip_after or '-'})")
        if f.kind not in ("kill-vip-proxy", "restart-vip-proxy"):
            # An engine fault: the proxy lives and must end a cut stream with an error event.
            silent = {e: n for e, n in r.stream_errors.items() if not e.startswith("stream error event")}
            if silent:
                out.append(f"{r.fault}: streams cut without an error event: {silent}")
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vip", required=True)
    p.add_argument("--port", type=int, default=9090)
    p.add_argument("--proxy", action="append", default=[], help="CONTAINER=ADDRESS of each proxy")
    p.add_argument("--fault", action="append", default=[], type=parse_fault)
    p.add_argument("--instances", type=int, required=True, help="instances every proxy must route to")
    p.add_argument("--model", default="tiny-llama")
    p.add_argument("--rate", type=float, default=4.0, help="non-streamed requests per second")
    p.add_argument("--stream-rate", type=float, default=2.0, help="streamed requests per second")
    p.add_argument("--stream-tokens", type=int, default=48)
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout (a hang ends here)")
    p.add_argument("--connect-retries", type=int, default=3,
                   help="a client retries a connection that could not be opened (nothing was sent), as the OpenAI client does")
    p.add_argument("--settle", type=float, default=3.0, help="load before the fault and after recovery, s")
    p.add_argument("--fault-timeout", type=float, default=90.0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    args.proxies = dict(x.split("=", 1) for x in args.proxy)
    return args


async def main_async(args) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + 60
    while not full_capacity(args.proxies, args.port, args.vip, args.instances):
        if time.monotonic() > deadline:
            print("chaos: the deployment is not at full capacity before the first fault", file=sys.stderr)
            return 1
        await asyncio.sleep(1)
    rows = []
    for fault in args.fault:
        rows.append(await one_fault(fault, args, args.out))
        print(f"chaos: {fault.label}: {rows[-1]}", flush=True)
    table = render(rows)
    bad = problems(rows, args.fault)
    (args.out / "chaos.txt").write_text("\n".join(table) + "\n")
    (args.out / "chaos.json").write_text(json.dumps({"rows": [r.__dict__ for r in rows], "problems": bad}, indent=2) + "\n")
    print("\n".join(table))
    for line in bad:
        print(f"chaos: target missed: {line}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main_async(parse_args(sys.argv[1:]))))
