"""Zero-downtime day-2 on a private inventories/local-sim deployment (2P2D simulators + proxy).

One deployment for the module; under a steady client load of its own (non-streamed and
streamed requests at once, the streams long enough to be in flight at every hand-over) it runs
rolling_restart.yml, upgrade.yml and a proxy configuration change through site.yml. The proxy
takes each of them by a reload (same master, new worker generation), so no request fails and
no stream is cut; the figures are printed for the record.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from test_day2_support import Deployment, local_sim_deployment, roll_order

pytestmark = pytest.mark.skipif(shutil.which("supervisord") is None, reason="needs supervisord (make system-deps)")

ENGINES = ("prefill-0", "prefill-1", "decode-0", "decode-1")


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    # 10 ms per decode step: a 48-token stream lasts about half a second, so at 6 streams/s a
    # few are always in flight while a proxy generation hands over to the next.
    dep = local_sim_deployment(tmp_path_factory.mktemp("day2-zero"), 2,
                               pd_decode_extra_args=["--sim-decode-step-ms", "10"])
    try:
        dep.play("site.yml", timeout=1200)
        dep.wait_routable(set(ENGINES))
        yield dep
    finally:
        dep.shutdown()


def under_load(dep: Deployment, phase: str, playbook: str, *args: str) -> tuple[str, dict[str, Any]]:
    """Run the playbook while a non-streamed and a streamed load run; print and return the figures."""
    with ExitStack() as stack:
        plain = stack.enter_context(dep.load(f"{phase}-plain", rate=6.0))
        streams = stack.enter_context(dep.load(f"{phase}-stream", rate=6.0, stream=True, max_tokens=48))
        proc = dep.play(playbook, *args)
    figures = {"requests_sent": plain.get("sent", 0) + streams.get("sent", 0),
               "requests_failed": plain.get("failed", 0) + streams.get("failed", 0),
               "streams_sent": streams.get("sent", 0), "streams_cut": streams.get("failed", 0),
               "errors": {**plain.get("errors", {}), **streams.get("errors", {})}}
    print(f"ZERO-DOWNTIME {phase}: {figures['requests_sent']} requests sent, {figures['requests_failed']} failed; "
          f"{figures['streams_sent']} streams, {figures['streams_cut']} cut")
    assert "error" not in plain and "error" not in streams, (plain, streams)
    return proc.stdout, figures


def test_rolling_restart_upgrade_and_proxy_config_change_drop_nothing(sim: Deployment) -> None:
    totals = {"requests_sent": 0, "requests_failed": 0, "streams_sent": 0, "streams_cut": 0}

    def check(phase: str, figures: dict[str, Any], generation: int, master: int | None) -> int:
        for key in totals:
            totals[key] += figures[key]
        assert figures["requests_failed"] == 0 and figures["streams_cut"] == 0, (phase, figures)
        assert figures["streams_sent"] >= 10, (phase, figures)  # the load really ran through it
        now = sim.health()
        # A reload, not a restart: the supervised master keeps its pid, one more worker generation.
        assert now["generation"] == generation + 1, (phase, now)
        assert sim.pids()["proxy"] == master, phase
        return now["generation"]

    generation, master = sim.health()["generation"], sim.pids()["proxy"]
    before = sim.pids()

    out, figures = under_load(sim, "rolling_restart", "rolling_restart.yml")
    assert roll_order(out) == ["decode-0", "decode-1", "prefill-0", "prefill-1", "openfuyao-pd-proxy"]
    assert all(sim.pids()[n] != before[n] for n in ENGINES)  # every engine rolled too
    generation = check("rolling_restart", figures, generation, master)

    out, figures = under_load(sim, "upgrade", "upgrade.yml")
    assert roll_order(out) == ["decode-0", "decode-1", "prefill-0", "prefill-1", "openfuyao-pd-proxy"]
    generation = check("upgrade", figures, generation, master)

    # A proxy option changes: site.yml renders the new proxy.json and reloads the proxy only.
    engines = {n: sim.pids()[n] for n in ENGINES}
    sim.extra["pd_proxy_health_interval"] = 2
    sim.write_vars()
    out, figures = under_load(sim, "proxy_config", "site.yml")
    assert "Reload the running proxy onto its new configuration" in out
    conf = json.loads((sim.workdir / "etc" / "proxy.json").read_text())
    assert conf["options"]["health_interval"] == 2
    check("proxy_config", figures, generation, master)
    assert {n: sim.pids()[n] for n in ENGINES} == engines  # no engine restarted for a proxy change

    print(f"ZERO-DOWNTIME total: {totals['requests_sent']} requests sent, {totals['requests_failed']} failed; "
          f"{totals['streams_sent']} streams, {totals['streams_cut']} cut")
