# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""Run Ascend driver tools (``hccn_tool``, ``npu-smi``) the careful way (PRIVATE).

* argv lists, never a shell string;
* ``LC_ALL=C`` so messages are the English ones the parsers expect;
* one call at a time per host: concurrent ``hccn_tool`` calls make the driver answer
  ``hccn_tool is busy, please try again.``; an advisory lock file serialises this
  collection's own calls (e.g. an ad hoc run beside a playbook), and a busy answer from
  somebody else's call is retried with exponential backoff.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time

LOCK_NAME = "openfuyao-pd-ascend-tool.lock"
HCCN_TOOL_FALLBACK = "/usr/local/Ascend/driver/tools/hccn_tool"
NPU_SMI_FALLBACK = "/usr/local/sbin/npu-smi"
C_LOCALE = {"LC_ALL": "C", "LANG": "C"}


class ToolResult:
    """rc/stdout/stderr of one finished call plus how many busy answers preceded it."""

    def __init__(self, argv: list[str], rc: int, stdout: str, stderr: str, busy_retries: int) -> None:
        self.argv = argv
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr
        self.busy_retries = busy_retries

    @property
    def command(self) -> str:
        return " ".join([os.path.basename(self.argv[0]), *self.argv[1:]])

    def is_busy(self, marker: str) -> bool:
        return marker.lower() in (self.stdout + self.stderr).lower()


def resolve_tool(module, option: str | None, name: str, fallback: str) -> str:
    """Path of the tool: the option if given, else PATH, else the driver's install path.

    Fails the module with one actionable line when none exists.
    """
    if option:
        if os.path.isfile(option) and os.access(option, os.X_OK):
            return option
        module.fail_json(msg=f"{name} not found or not executable at {option}; fix the path or install the Ascend driver")
    found = module.get_bin_path(name)
    if found:
        return found
    if os.path.isfile(fallback) and os.access(fallback, os.X_OK):
        return fallback
    module.fail_json(msg=f"{name} not found on PATH nor at {fallback}; install the Ascend driver or pass its path in "
                     "the option of the same name")
    return ""  # unreachable, fail_json exits


class ToolRunner:
    """Serialised, locale-pinned, busy-retrying runner around ``module.run_command``."""

    def __init__(self, module, busy_marker: str | None = None, retries: int = 5, delay: float = 0.5,
                 lock_dir: str | None = None) -> None:
        self.module = module
        self.busy_marker = busy_marker
        self.retries = retries
        self.delay = delay
        self.lock_path = os.path.join(lock_dir or tempfile.gettempdir(), LOCK_NAME)
        self.calls: list[str] = []

    def run(self, argv: list[str]) -> ToolResult:
        busy = 0
        while True:
            rc, out, err = self._run_locked(argv)
            result = ToolResult(argv, rc, out or "", err or "", busy)
            if not self.busy_marker or not result.is_busy(self.busy_marker) or busy >= self.retries:
                return result
            # Exponential backoff: 0.5, 1, 2, 4 ... seconds, capped so a busy host cannot stall a play.
            time.sleep(min(self.delay * (2 ** busy), 8.0))
            busy += 1

    def _run_locked(self, argv: list[str]) -> tuple[int, str, str]:
        self.calls.append(" ".join(argv))
        try:
            fd = os.open(self.lock_path, os.O_CREAT | os.O_WRONLY, 0o600)
        except OSError:
            fd = -1  # an unwritable temp dir must not stop a read-only check
        try:
            if fd >= 0:
                fcntl.flock(fd, fcntl.LOCK_EX)
            return self.module.run_command(argv, environ_update=dict(C_LOCALE), check_rc=False)
        finally:
            if fd >= 0:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
