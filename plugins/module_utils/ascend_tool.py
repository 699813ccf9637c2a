# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""Run Ascend driver tools (``hccn_tool``, ``npu-smi``) the careful way (PRIVATE).

* argv lists, never a shell string;
* ``LC_ALL=C`` so messages are the English ones the parsers expect;
* one call at a time per tool and host: concurrent ``hccn_tool`` calls make the driver
  answer ``hccn_tool is busy, please try again.``; an advisory lock file per tool (keyed
  by its real path) serialises this collection's own calls (e.g. an ad hoc run beside a
  playbook), and a busy answer from somebody else's call is retried with exponential backoff;
* bounded: every call has a timeout (a hung driver call is killed, with its process
  group), and the busy retries of one module run share one time budget, so a device
  that is busy forever costs seconds, not minutes;
* bytes in, text out: output is decoded as UTF-8 with undecodable bytes replaced, so
  binary junk can never reach the module's JSON result as an invalid string.

``module.run_command`` has no timeout, which is why this uses :mod:`subprocess` itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import signal
import subprocess
import tempfile
import time

from ansible_collections.openfuyao.pd.plugins.module_utils.hccn_parse import excerpt

LOCK_PREFIX = "openfuyao-pd-ascend-tool-"
HCCN_TOOL_FALLBACK = "/usr/local/Ascend/driver/tools/hccn_tool"
NPU_SMI_FALLBACK = "/usr/local/sbin/npu-smi"
C_LOCALE = {"LC_ALL": "C", "LANG": "C"}
# Beyond this much output the tool is not answering a query, it is spewing: stop reading there.
MAX_OUTPUT_BYTES = 4 * 1024 * 1024
_LOCK_POLL_S = 0.05


def backoff_sleep(seconds: float) -> None:
    """The pause between busy retries (its own name, so tests replace it without touching subprocess)."""
    time.sleep(seconds)


def decode(data: bytes | None) -> str:
    """Tool output as text: UTF-8, undecodable bytes as U+FFFD (always valid in a JSON result)."""
    return (data or b"")[:MAX_OUTPUT_BYTES].decode("utf-8", errors="replace")


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class ToolResult:
    """One finished (or killed) call: rc/stdout/stderr, busy answers before it, why it did not finish."""

    def __init__(self, argv: list[str], rc: int, stdout: str, stderr: str, busy_retries: int,
                 timed_out: bool = False, error: str | None = None, busy_waited: float = 0.0,
                 lock_wait: float | None = None) -> None:
        self.argv = argv
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr
        self.busy_retries = busy_retries
        self.busy_waited = busy_waited
        self.timed_out = timed_out
        self.error = error  # the tool could not be started (OSError text)
        self.lock_wait = lock_wait  # set when the call never ran: seconds waited for the lock in vain

    @property
    def command(self) -> str:
        return " ".join([os.path.basename(self.argv[0]), *self.argv[1:]])

    @property
    def crashed(self) -> bool:
        """Killed by a signal (segfault, abort, OOM kill), not a normal exit."""
        return self.rc < 0 and not self.timed_out and self.error is None and self.lock_wait is None

    def is_busy(self, marker: str) -> bool:
        return marker.lower() in (self.stdout + self.stderr).lower()

    def broken(self, timeout: float) -> str | None:
        """Why the call gave no usable answer at all (timeout, no start, crash), else None."""
        if self.lock_wait is not None:
            return (f"`{self.command}` did not run: another call of this collection held the tool's lock for "
                    f"{self.lock_wait:g} s (a hung hccn_tool/npu-smi, see `ps -ef`, or a parallel run); run again")
        if self.error is not None:
            return f"`{self.command}` could not be started: {self.error}; check the tool's path and permissions"
        if self.timed_out:
            return (f"`{self.command}` gave no answer within {timeout:g} s and was killed; the driver or device "
                    "hangs (check `dmesg` and /var/log/hccn_tool/, reset the device or reboot)")
        if self.crashed:
            return (f"`{self.command}` crashed ({signal_name(-self.rc)}), output: "
                    f"{excerpt(self.stderr or self.stdout)}; check `dmesg` and the driver installation")
        return None


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
    """Serialised, locale-pinned, time-bounded, busy-retrying runner.

    ``timeout``: seconds one call may take; waiting for the lock may take twice that more.
    ``busy_budget``: seconds all busy retries of this runner may sleep in total; once it is
    spent, :attr:`budget_spent` is true and busy answers are no longer retried.
    """

    def __init__(self, module, busy_marker: str | None = None, retries: int = 5, delay: float = 0.5,
                 lock_dir: str | None = None, timeout: float = 15.0, busy_budget: float = 20.0) -> None:
        self.module = module
        self.busy_marker = busy_marker
        self.retries = retries
        self.delay = delay
        self.timeout = timeout
        self.busy_budget = busy_budget
        self.busy_spent = 0.0
        self.lock_dir = lock_dir or tempfile.gettempdir()
        self.calls: list[str] = []

    def lock_path(self, tool: str) -> str:
        key = hashlib.sha256(os.path.realpath(tool).encode("utf-8", "surrogateescape")).hexdigest()[:16]
        return os.path.join(self.lock_dir, f"{LOCK_PREFIX}{key}.lock")

    @property
    def budget_spent(self) -> bool:
        return self.busy_spent >= self.busy_budget

    def run(self, argv: list[str]) -> ToolResult:
        busy, waited = 0, 0.0
        while True:
            locked = self._run_locked(argv)
            if locked is None:
                return ToolResult(argv, -1, "", "", busy, error=None, busy_waited=waited, lock_wait=2 * self.timeout)
            rc, out, err, timed_out, error = locked
            result = ToolResult(argv, rc, decode(out), decode(err), busy, timed_out, error, waited)
            if (not self.busy_marker or timed_out or error or not result.is_busy(self.busy_marker)
                    or busy >= self.retries or self.budget_spent):
                return result
            # Exponential backoff: 0.5, 1, 2, 4 ... seconds, capped, and never beyond what the budget has left.
            pause = min(self.delay * (2 ** busy), 8.0, self.busy_budget - self.busy_spent)
            backoff_sleep(pause)
            self.busy_spent += pause
            waited += pause
            busy += 1

    def _run_locked(self, argv: list[str]) -> tuple[int, bytes, bytes, bool, str | None] | None:
        """The call's outcome, or None when the lock could not be had in time (the call never ran)."""
        self.calls.append(" ".join(argv))
        try:
            fd = os.open(self.lock_path(argv[0]), os.O_CREAT | os.O_WRONLY, 0o600)
        except OSError:
            fd = -1  # an unwritable temp dir must not stop a read-only check
        try:
            # A call of ours holds the lock at most its own timeout; twice that means a stuck process.
            if fd >= 0 and not self._lock(fd, time.monotonic() + 2 * self.timeout):
                return None
            return self._spawn(argv, self.timeout)
        finally:
            if fd >= 0:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    @staticmethod
    def _lock(fd: int, deadline: float) -> bool:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(_LOCK_POLL_S)

    @staticmethod
    def _spawn(argv: list[str], timeout: float) -> tuple[int, bytes, bytes, bool, str | None]:
        try:
            # Own session, so a timeout kills whatever the tool started too (wrapper scripts, helpers).
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env={**os.environ, **C_LOCALE}, start_new_session=True)
        except (OSError, ValueError) as exc:  # ValueError: a NUL byte in an argument
            return -1, b"", b"", False, getattr(exc, "strerror", None) or str(exc)
        try:
            out, err = proc.communicate(timeout=timeout)
            return proc.returncode, out, err, False, None
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):  # already gone
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            return -9, out, err, True, None
