"""Runs each molecule scenario (`molecule test -s NAME`) on real Docker containers.

The session fixture makes the Docker engine available (starting dockerd only when none
answers, and stopping only that one afterwards), builds the registry-free test image and
the local wheelhouse, then each scenario runs its full sequence (create, prepare, converge,
idempotence where it applies, verify, destroy). A scenario's verify playbook holds the
assertions; this wrapper fails with the tail of molecule's output when any step fails,
and reports how long each scenario took (tests/output/molecule/times.json and the pytest
summary).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.molecule

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "tests" / "tools"
OUT = ROOT / "tests" / "output" / "molecule"
SCENARIOS = ("default", "preflight_faults", "centralized", "chaos")
# One scenario must finish well under 10 minutes on 2 cores; the limit only stops a hang.
TIMEOUT_S = int(os.environ.get("PD_MOLECULE_TIMEOUT", "900"))
TAIL_LINES = 120


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    # Plain text logs: no colour codes in what the failure message shows.
    env.update({"NO_COLOR": "1", "PY_COLORS": "0", "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"})
    return env


def _tool(script: str, *args: str, env: dict[str, str]) -> str:
    """Runs a tests/tools script; returns its last stdout line (the thing it built)."""
    proc = subprocess.run(
        ["bash", str(TOOLS / script), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"{script} {' '.join(args)} failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = proc.stdout.strip().splitlines()
    return lines[-1] if lines else ""


@pytest.fixture(scope="session")
def molecule_env() -> dict[str, str]:
    env = _env()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "times.json").unlink(missing_ok=True)  # times of this run only
    _tool("dockerd.sh", "start", env=env)
    try:
        started = time.monotonic()
        env["PD_MOL_IMAGE"] = _tool("build-test-image.sh", env=env)
        image_s = time.monotonic() - started
        started = time.monotonic()
        _tool("build-wheelhouse.sh", env=env)
        wheel_s = time.monotonic() - started
        _record("_image", image_s)
        _record("_wheelhouse", wheel_s)
        yield env
    finally:
        _tool("dockerd.sh", "stop", env=env)


def _record(name: str, seconds: float) -> None:
    path = OUT / "times.json"
    times = json.loads(path.read_text()) if path.exists() else {}
    times[name] = round(seconds, 1)
    path.write_text(json.dumps(times, indent=2, sort_keys=True) + "\n")


def _run(argv: list[str], env: dict[str, str], log: Path, timeout: float) -> tuple[int | None, str]:
    """Runs argv in its own process group; returns (rc or None on timeout, output)."""
    with log.open("w") as fh:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # The whole group: molecule, ansible-playbook and its workers.
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc = None
    return rc, log.read_text(errors="replace")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario: str, molecule_env: dict[str, str], record_property) -> None:
    log = OUT / f"{scenario}.log"
    started = time.monotonic()
    rc, output = _run(["molecule", "test", "-s", scenario], molecule_env, log, TIMEOUT_S)
    elapsed = time.monotonic() - started
    _record(scenario, elapsed)
    record_property("duration_s", round(elapsed, 1))
    print(f"molecule {scenario}: {elapsed:.1f} s (rc={rc}, log {log.relative_to(ROOT)})")
    if rc is None:
        # Leave no containers behind when the sequence was cut short.
        _run(["molecule", "destroy", "-s", scenario], molecule_env, OUT / f"{scenario}.destroy.log", 300)
    tail = "\n".join(output.splitlines()[-TAIL_LINES:])
    assert rc is not None, f"molecule test -s {scenario} did not finish in {TIMEOUT_S} s; tail of {log}:\n{tail}"
    assert rc == 0, f"molecule test -s {scenario} failed (rc={rc}); tail of {log}:\n{tail}"
