"""State the worker processes of one master share (master.py): in-flight counts, instance API
changes and metrics.

One directory per master (under /dev/shm when it exists), removed when the master exits:
- `state`: a memory-mapped table of 64-bit cells.
  - In-flight requests and tokens per backend: one row per worker process, one column per
    backend name. A worker writes only its own row and reads the column sums, so there is a
    single writer per cell and no lock on the request path. The master gives each worker a row
    of its own (a reloading slot's old and new workers never share one) and zeroes the row of a
    worker that exited, so a killed worker's requests do not stay counted.
  - Per row: the worker's pid (0 = free), the instance-change version it has applied, the
    metrics epoch it has published and its open client connections while it accepts (-1 when
    it does not, e.g. a worker still starting or already draining): accept.py balances on it.
  - A column is claimed for a backend name once, under a lock, and keeps that name.
- `instances-<generation>.json`: the instance API's changes (added specs, draining and deleted
  names) on top of the config file, with their version in `state`. A worker that takes a change
  writes it, bumps the version and waits until every live worker has applied it, so a `drain`
  that returns means that no worker routes to the instance any more. Each reload starts from
  the config file alone (a new generation, a new file), as a restart did.
- `metrics/<pid>.json`: each worker's metric values, published when a scrape asks (the metrics
  epoch) and when the worker exits. `/metrics` adds them up: counters and histograms of workers
  that have exited stay in the sums (no reset at a reload), their gauges do not.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import mmap
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MAGIC = 0x70645F70726F7879  # "pd_proxy"
MAX_ROWS = 136  # 64 slots, twice over during a reload, and a margin
MAX_COLS = 256  # backend names in one master's lifetime
NAME_BYTES = 128
# Header cells
H_MAGIC, H_VERSION, H_ROWS, H_EPOCH = 0, 1, 2, 3
HEADER = 8
# Per-row cells: pid, applied version, published metrics epoch, open client connections (-1: not accepting)
ROW_PID, ROW_VERSION, ROW_EPOCH, ROW_CONNS = 0, 1, 2, 3
ROW_CELLS = 4
ROWS_AT = HEADER
MATRIX_AT = ROWS_AT + MAX_ROWS * ROW_CELLS
CELLS = MATRIX_AT + MAX_ROWS * MAX_COLS * 2
NAMES_AT = CELLS * 8
SIZE = NAMES_AT + MAX_COLS * NAME_BYTES


def base_dir() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


class State:
    """The mapped `state` file of one master's directory."""

    def __init__(self, directory: str | Path, row: int | None = None, generation: int = 0) -> None:
        self.dir = Path(directory)
        self.row = row
        self.changes_path = self.dir / f"instances-{generation}.json"
        self.fd = os.open(self.dir / "state", os.O_RDWR)
        self.map = mmap.mmap(self.fd, SIZE)
        self.cells = memoryview(self.map).cast("q")
        if self.cells[H_MAGIC] != MAGIC:
            raise ValueError(f"{self.dir / 'state'} is not a pd-proxy state file")

    @classmethod
    def create(cls) -> State:
        remove_stale(base_dir() or tempfile.gettempdir())
        directory = tempfile.mkdtemp(prefix="pd-proxy-", dir=base_dir())
        (Path(directory) / "metrics").mkdir()
        (Path(directory) / "master.pid").write_text(str(os.getpid()))
        # A shared flock held by this open file until the master exits (the fd is never closed;
        # workers forked from it share it): a master in another pid namespace sharing this
        # /dev/shm (a container with --ipc=host) sees our pid as dead, but not this lock as free.
        fcntl.flock(os.open(Path(directory) / "master.pid", os.O_RDONLY), fcntl.LOCK_SH)
        with open(Path(directory) / "state", "wb") as out:
            out.truncate(SIZE)
        state = cls.__new__(cls)
        state.dir, state.row = Path(directory), None
        state.changes_path = state.dir / "instances-0.json"
        state.fd = os.open(state.dir / "state", os.O_RDWR)
        state.map = mmap.mmap(state.fd, SIZE)
        state.cells = memoryview(state.map).cast("q")
        state.cells[H_MAGIC] = MAGIC
        return state

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.cells.release()
            self.map.close()
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """A lock between processes (POSIX record lock: per process, so each worker's own fd works)."""
        fcntl.lockf(self.fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)

    # ------------------------------------------------------------------------------ rows (master)
    def claim_row(self, pid: int) -> int:
        for row in range(MAX_ROWS):
            if self.cells[ROWS_AT + row * ROW_CELLS + ROW_PID] == 0:
                self.free_row(row)
                # Not accepting until its worker says so: a starting worker's 0 would hold the others back.
                self.cells[ROWS_AT + row * ROW_CELLS + ROW_CONNS] = -1
                self.cells[ROWS_AT + row * ROW_CELLS + ROW_PID] = pid
                self.cells[H_ROWS] = max(self.cells[H_ROWS], row + 1)
                return row
        raise RuntimeError("no free worker row in the shared state")

    def set_row_pid(self, row: int, pid: int) -> None:
        self.cells[ROWS_AT + row * ROW_CELLS + ROW_PID] = pid

    def free_row(self, row: int) -> None:
        """Zero a row: its worker is gone, and so are its requests."""
        at = MATRIX_AT + row * MAX_COLS * 2
        self.cells[at:at + MAX_COLS * 2] = memoryview(bytes(MAX_COLS * 2 * 8)).cast("q")
        base = ROWS_AT + row * ROW_CELLS
        for i in range(ROW_CELLS):
            self.cells[base + i] = 0

    def live_rows(self) -> list[tuple[int, int]]:
        """(row, pid) of the rows in use."""
        out = []
        for row in range(self.cells[H_ROWS]):
            pid = self.cells[ROWS_AT + row * ROW_CELLS + ROW_PID]
            if pid:
                out.append((row, pid))
        return out

    # ------------------------------------------------------------------------------ accepting
    def set_connections(self, count: int) -> None:
        """This worker's open client connections (-1: it does not accept)."""
        if self.row is not None:
            self.cells[ROWS_AT + self.row * ROW_CELLS + ROW_CONNS] = count

    def fewest_connections(self) -> int | None:
        """The least open client connections of a worker that accepts; None when none does."""
        least: int | None = None
        for row in range(self.cells[H_ROWS]):
            base = ROWS_AT + row * ROW_CELLS
            count = self.cells[base + ROW_CONNS]
            if self.cells[base + ROW_PID] and count >= 0 and (least is None or count < least):
                least = count
        return least

    # ------------------------------------------------------------------------------ columns
    def column(self, name: str) -> int:
        """The column of a backend name, claimed on first use; -1 when the table is full."""
        raw = name.encode()[:NAME_BYTES - 1]
        with self.locked():
            for col in range(MAX_COLS):
                at = NAMES_AT + col * NAME_BYTES
                entry = self.map[at:at + NAME_BYTES].rstrip(b"\0")
                if entry == raw:
                    return col
                if not entry:
                    self.map[at:at + len(raw)] = raw
                    return col
        return -1

    # ------------------------------------------------------------------------------ in-flight counts
    def add(self, col: int, requests: int, tokens: int) -> None:
        """Change this worker's own cells of a column (single writer: no lock)."""
        at = MATRIX_AT + (self.row * MAX_COLS + col) * 2  # type: ignore[operator]
        cells = self.cells
        cells[at] += requests
        cells[at + 1] += tokens

    def totals(self, col: int) -> tuple[int, int]:
        """(requests, tokens) in flight on a column, over every worker."""
        cells = self.cells
        req = tok = 0
        at = MATRIX_AT + col * 2
        stride = MAX_COLS * 2
        for _ in range(cells[H_ROWS]):
            req += cells[at]
            tok += cells[at + 1]
            at += stride
        return req, tok

    # ------------------------------------------------------------------------------ versions / epochs
    @property
    def version(self) -> int:
        return self.cells[H_VERSION]

    def ack_version(self, version: int) -> None:
        self.cells[ROWS_AT + self.row * ROW_CELLS + ROW_VERSION] = version  # type: ignore[operator]

    def pending_version(self, version: int) -> list[int]:
        """Pids of live workers that have not applied `version` yet."""
        return [pid for row, pid in self.live_rows()
                if self.cells[ROWS_AT + row * ROW_CELLS + ROW_VERSION] < version and _alive(pid)]

    @property
    def epoch(self) -> int:
        return self.cells[H_EPOCH]

    def bump_epoch(self) -> int:
        with self.locked():
            self.cells[H_EPOCH] += 1
            return self.cells[H_EPOCH]

    def ack_epoch(self, epoch: int) -> None:
        self.cells[ROWS_AT + self.row * ROW_CELLS + ROW_EPOCH] = epoch  # type: ignore[operator]

    def pending_epoch(self, epoch: int) -> list[int]:
        return [pid for row, pid in self.live_rows()
                if row != self.row and self.cells[ROWS_AT + row * ROW_CELLS + ROW_EPOCH] < epoch and _alive(pid)]

    # ------------------------------------------------------------------------------ instance changes
    def read_changes(self) -> dict[str, Any]:
        try:
            data = json.loads(self.changes_path.read_text())
        except (OSError, ValueError):
            data = {}
        return {"added": list(data.get("added", [])), "draining": list(data.get("draining", [])),
                "deleted": list(data.get("deleted", []))}

    def change(self, kind: str, name: str, spec: dict[str, Any] | None = None) -> int:
        """Record one instance API change (add, drain, undrain, delete); return the new version."""
        with self.locked():
            data = self.read_changes()
            added = list(data["added"])
            draining, deleted = set(data["draining"]), set(data["deleted"])
            if kind in ("add", "delete"):
                added = [a for a in added if a.get("name") != name]
                draining.discard(name)
            if kind == "add":
                added.append(spec or {"name": name})
                deleted.discard(name)
            elif kind == "delete":
                deleted.add(name)
            elif kind == "drain":
                draining.add(name)
            elif kind == "undrain":
                draining.discard(name)
            draining, deleted = sorted(draining), sorted(deleted)
            _write_atomic(self.changes_path,
                          json.dumps({"added": added, "draining": draining, "deleted": deleted}).encode())
            self.cells[H_VERSION] += 1
            return self.cells[H_VERSION]

    # ------------------------------------------------------------------------------ metrics
    def publish(self, pid: int, snapshot: dict[str, Any]) -> None:
        _write_atomic(self.dir / "metrics" / f"{pid}.json", json.dumps(snapshot).encode())

    def snapshots(self, skip_pid: int) -> list[tuple[bool, dict[str, Any]]]:
        """(alive, snapshot) of every other worker that published."""
        live = {pid for _, pid in self.live_rows()}
        out = []
        for path in sorted((self.dir / "metrics").glob("*.json")):
            try:
                pid = int(path.stem)
            except ValueError:
                continue
            if pid == skip_pid:
                continue
            with contextlib.suppress(OSError, ValueError):
                out.append((pid in live and _alive(pid), json.loads(path.read_text())))
        return out


def remove_stale(parent: str) -> None:
    """Remove the directories of masters that are gone (killed with SIGKILL, so they could not)."""
    for directory in Path(parent).glob("pd-proxy-*"):
        with contextlib.suppress(OSError, ValueError):
            owner = directory / "master.pid"
            if (directory.stat().st_uid == os.getuid() and not _alive(int(owner.read_text()))
                    and not _owner_holds(owner)):
                shutil.rmtree(directory, ignore_errors=True)


def _owner_holds(path: Path) -> bool:
    """Whether a live master (or one of its workers) still holds the directory's flock."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _alive(pid: int) -> bool:
    if pid <= 0:  # a row claimed for a worker that is being started
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
