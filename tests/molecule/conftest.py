"""Prints how long each molecule scenario (and the image/wheelhouse builds) took."""

from __future__ import annotations

import json
from pathlib import Path

TIMES = Path(__file__).resolve().parents[2] / "tests" / "output" / "molecule" / "times.json"


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not TIMES.exists():
        return
    times = json.loads(TIMES.read_text())
    terminalreporter.section("molecule durations")
    for name, seconds in times.items():
        terminalreporter.write_line(f"{name.lstrip('_'):<20} {seconds:>7.1f} s")
