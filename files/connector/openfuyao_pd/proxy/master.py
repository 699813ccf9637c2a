"""The pd-proxy master process: it owns the listening socket and runs the workers that serve it.

The supervisor (systemd, supervisord, a container runtime) starts and signals only the master:
- SIGHUP reloads without refusing a connection: new workers start in fresh interpreters (the
  config file and the code are read again from disk) on the same listening socket, the master
  waits until each says it is ready, then asks the old ones to stop. An old worker closes its
  copy of the listener at once, so new connections go to the new generation only; the requests
  it has in progress, streams included, run to their end within the drain_timeout option
  (server.stop). A reload whose new workers do not come up leaves the old ones serving.
- SIGTERM / SIGINT stop gracefully the same way, without successors.
- A worker that dies is started again; a crash loop stops the master (exit 1), so the
  supervisor's own restart policy takes over.

The socket is bound here, once, and inherited by every generation of workers, so a
connection waiting in a listener's accept queue during a hand-over is never lost (closing the
last descriptor of a listening socket would reset them). Every worker of every slot accepts from
the one socket, each only while it holds no more client connections than the least loaded
accepting worker plus one (accept.py): SO_REUSEPORT's hash spread 64 kept-alive connections
over 8 sockets as unevenly as 2 to 17, and the worker with 17 set the tail.

Workers learn of a dead master through a pipe (end of file) and stop gracefully, so a master
killed with SIGKILL does not leave workers behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

LOG = logging.getLogger("openfuyao_pd.proxy")
READY_TIMEOUT = 60.0  # a worker that is not listening by then is a failed start
CRASH_WINDOW, CRASH_BURST = 60.0, 5  # more unexpected worker deaths than this within the window: give up
STOP_MARGIN = 10.0  # beyond the drain timeout, a stopping worker is killed


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    generation: int
    slot: int
    ready_fd: int      # read end: the worker writes one byte once it listens
    lifeline_fd: int   # write end: the worker stops when it reads end of file
    row: int           # its own row of the shared state (shared.py)
    ready: bool = False
    stopping_since: float | None = None


@dataclass
class Listen:
    host: str
    port: int
    workers: int
    sock: socket.socket


def bind(host: str, port: int) -> socket.socket:
    """The listening socket on (host, port) (port 0: any free one) that every worker accepts from."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # SO_REUSEPORT: a reload that moves to another address binds its socket while the old
        # one still serves; a reload on the same address keeps the socket.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # :: serves IPv4 too
        sock.bind((host, port))
        sock.listen(1024)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


def _event(name: str, **fields: object) -> None:
    LOG.warning(json.dumps({"event": name, **fields}))


class Master:
    """The master's state; `run()` is its loop (signals arrive through a wakeup pipe)."""

    def __init__(self, argv: Sequence[str], listen: Listen, load: Callable[[], tuple[str, int, int, float]],
                 drain_timeout: float) -> None:
        self.argv = list(argv)
        self.listen = listen
        self.load = load  # re-reads the config: (host, port, workers, drain_timeout); raises on a bad file
        self.drain_timeout = drain_timeout
        self.generation = 0
        self.workers: dict[int, Worker] = {}
        self.crashes: list[float] = []
        self.signals: list[int] = []
        self.exit_code = 0
        self.gone: list[tuple[Worker, int]] = []  # workers that exited while a reload waited
        from openfuyao_pd.proxy import shared

        self.state = shared.State.create()  # in-flight counts, instance changes, metrics of all workers

    # ------------------------------------------------------------------------------ workers
    def spawn(self, slot: int, generation: int) -> Worker:
        ready_r, ready_w = os.pipe()
        life_r, life_w = os.pipe()
        sock = self.listen.sock
        row = self.state.claim_row(-1)
        argv = [sys.executable, "-m", "openfuyao_pd.proxy", *self.argv,
                "--worker-fd", str(sock.fileno()), "--worker-ready-fd", str(ready_w),
                "--worker-lifeline-fd", str(life_r), "--worker-generation", str(generation),
                "--worker-slot", str(slot), "--worker-row", str(row), "--worker-state", str(self.state.dir)]
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # the tree this package was imported from
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        try:
            proc = subprocess.Popen(argv, env=env, pass_fds=(sock.fileno(), ready_w, life_r))
        except OSError:
            self.state.free_row(row)
            raise
        finally:
            os.close(ready_w)
            os.close(life_r)
        self.state.set_row_pid(row, proc.pid)
        os.set_blocking(ready_r, False)
        worker = Worker(proc, generation, slot, ready_r, life_w, row)
        self.workers[proc.pid] = worker
        return worker

    def _check_ready(self, worker: Worker) -> None:
        if worker.ready:
            return
        with contextlib.suppress(BlockingIOError, OSError):
            if os.read(worker.ready_fd, 1):
                worker.ready = True

    def _close_fds(self, worker: Worker) -> None:
        for fd in (worker.ready_fd, worker.lifeline_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def retire(self, worker: Worker) -> None:
        """Ask a worker to stop gracefully (it closes its listener and drains)."""
        if worker.stopping_since is None:
            worker.stopping_since = time.monotonic()
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(signal.SIGTERM)

    def reap(self) -> list[tuple[Worker, int]]:
        """Collect exited workers: (worker, exit status)."""
        gone: list[tuple[Worker, int]] = []
        for pid, worker in list(self.workers.items()):
            code = worker.proc.poll()
            if code is not None:
                del self.workers[pid]
                self._check_ready(worker)
                self._close_fds(worker)
                self.state.free_row(worker.row)  # its requests are over, finished or not
                gone.append((worker, code))
        now = time.monotonic()
        for worker in self.workers.values():  # past the drain timeout and a margin: no longer waited for
            if worker.stopping_since is not None and now - worker.stopping_since > self.drain_timeout + STOP_MARGIN:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.kill()
        return gone

    def current(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.generation == self.generation and w.stopping_since is None]

    # ------------------------------------------------------------------------------ waiting
    def wait(self, timeout: float) -> None:
        """Sleep until a signal, a worker's ready byte or `timeout`."""
        fds = [self._wake_r] + [w.ready_fd for w in self.workers.values() if not w.ready]
        with contextlib.suppress(InterruptedError):
            readable, _, _ = select.select(fds, [], [], timeout)
            if self._wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 512)
        for worker in self.workers.values():
            self._check_ready(worker)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signals.append(signum)

    def start_generation(self, generation: int) -> tuple[bool, str]:
        """Start one worker per slot for `generation`; (True, "") once all listen, else (False, why)
        with the new workers stopped again."""
        fresh = [self.spawn(slot, generation) for slot in range(self.listen.workers)]
        deadline = time.monotonic() + READY_TIMEOUT
        why = ""
        while not all(w.ready for w in fresh):
            if any(s in (signal.SIGTERM, signal.SIGINT) for s in self.signals):
                why = "stopped while starting"
                break
            gone = self.reap()
            self.gone.extend((w, code) for w, code in gone if w not in fresh)  # for the main loop
            failed = [(w, code) for w, code in gone if w in fresh]
            if failed:
                worker, code = failed[0]
                why = f"a worker of generation {generation} exited with status {code} before listening"
                break
            if time.monotonic() > deadline:
                why = f"a worker of generation {generation} was not listening after {READY_TIMEOUT:g} s"
                break
            self.wait(0.5)
        if not why:
            return True, ""
        for worker in fresh:
            if worker.proc.poll() is None:
                worker.proc.kill()
        for worker in fresh:
            with contextlib.suppress(Exception):
                worker.proc.wait(5)
        self.reap()
        return False, why

    # ------------------------------------------------------------------------------ reload / stop
    def reload(self) -> None:
        try:
            host, port, workers, drain = self.load()
        except Exception as exc:  # a bad file must not take down the workers that serve
            _event("reload_failed", generation=self.generation, reason=str(exc)[:300])
            return
        old_listen = self.listen
        if (host, port) != (old_listen.host, old_listen.port):
            try:
                sock = bind(host, port or old_listen.port)
            except OSError as exc:
                _event("reload_failed", generation=self.generation,
                       reason=f"cannot listen on {host}:{port} with {workers} worker(s): {exc.strerror or exc}")
                return
            self.listen = Listen(host, port, workers, sock)
        elif workers != old_listen.workers:
            self.listen = Listen(host, port, workers, old_listen.sock)
        generation = self.generation + 1
        ok, why = self.start_generation(generation)
        if not ok:
            if self.listen.sock is not old_listen.sock:
                self.listen.sock.close()
            self.listen = old_listen
            _event("reload_failed", generation=self.generation, reason=why)
            return
        old = [w for w in self.workers.values() if w.generation != generation]
        self.generation = generation
        self.drain_timeout = drain
        for worker in old:
            self.retire(worker)
        # The old address's socket: closed now, so the kernel stops queueing connections on it
        # while its old workers drain.
        if old_listen.sock is not self.listen.sock:
            old_listen.sock.close()
        _event("reloaded", generation=generation, workers=[w.proc.pid for w in self.current()],
               retiring=[w.proc.pid for w in old])

    def run(self) -> int:
        self._wake_r, wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)
        try:
            ok, why = self.start_generation(0)
            if not ok:
                if why == "stopped while starting":
                    return 0
                print(f"pd-proxy: {why} (its error is above)", file=sys.stderr)
                return 1
            _event("master_ready", pid=os.getpid(), generation=0, workers=[w.proc.pid for w in self.current()])
            return self._loop()
        finally:
            for worker in list(self.workers.values()):  # only on an error of the master's own
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.kill()
            self.state.remove()

    def _loop(self) -> int:
        stopping = False
        while True:
            pending, self.signals = self.signals, []
            if not stopping and any(s in (signal.SIGTERM, signal.SIGINT) for s in pending):
                stopping = True
                _event("stopping", pid=os.getpid(), generation=self.generation)
                for worker in list(self.workers.values()):
                    self.retire(worker)
            elif not stopping and signal.SIGHUP in pending:
                _event("reload", generation=self.generation + 1)
                self.reload()
                continue  # signals that came during the reload are handled next
            gone, self.gone = [*self.gone, *self.reap()], []
            for worker, code in gone:
                if stopping or worker.stopping_since is not None:
                    continue
                _event("worker_died", pid=worker.proc.pid, generation=worker.generation, status=code)
                now = time.monotonic()
                self.crashes = [t for t in self.crashes if now - t < CRASH_WINDOW] + [now]
                if len(self.crashes) > CRASH_BURST:
                    _event("crash_loop", deaths=len(self.crashes), window_s=CRASH_WINDOW)
                    for other in list(self.workers.values()):
                        self.retire(other)
                    stopping = True
                    self.exit_code = 1
                    continue
                self.spawn(worker.slot, self.generation)
            if stopping and not self.workers:
                return self.exit_code
            self.wait(1.0)


def configure_worker_lifeline(fd: int, on_eof: Callable[[], None]) -> None:
    """In a worker: call `on_eof` when the master's end of the lifeline pipe closes (the master is gone)."""
    import asyncio

    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)

    def readable() -> None:
        try:
            data = os.read(fd, 64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            on_eof()

    loop.add_reader(fd, readable)
