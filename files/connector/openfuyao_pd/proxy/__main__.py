"""`pd-proxy --config FILE` (the plan's proxy dict) plus the seed proxies' drop-in flags.

The process the supervisor starts is the master (master.py): it binds the port and runs the
workers, which serve it; SIGHUP reloads them with no connection refused, SIGTERM stops them
gracefully. The `--worker-*` flags are the master's, to start a worker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from typing import Any

from openfuyao_pd.proxy.admin import TokenFileError, read_token
from openfuyao_pd.proxy.config import PROTOCOLS, ConfigError, ProxyConfig, build_config, load_file


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pd-proxy", description="Prefill/decode disaggregation proxy for vLLM.")
    parser.add_argument("--config", help="JSON or YAML file holding the plan's `proxy` dict")
    parser.add_argument("--host", help="address to listen on (IPv4, IPv6 or ::); overrides the file")
    parser.add_argument("--port", type=int, help="port to listen on; overrides the file")
    parser.add_argument("--protocol", choices=PROTOCOLS, help="KV connector protocol; overrides the file")
    for flag in ("prefiller", "decoder"):
        parser.add_argument(f"--{flag}-hosts", f"--{flag}-host", dest=f"{flag}_hosts", nargs="+", metavar="HOST")
        parser.add_argument(f"--{flag}-ports", f"--{flag}-port", dest=f"{flag}_ports", nargs="+", metavar="PORT")
    parser.add_argument("--admin-token-file", help="file (mode 0600) holding the bearer token of the instance API's "
                        "add/drain/undrain/delete; without it those calls are refused")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    for name in ("fd", "ready-fd", "lifeline-fd", "generation", "slot", "row"):  # set by the master only
        parser.add_argument(f"--worker-{name}", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-state", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def load(args: argparse.Namespace) -> ProxyConfig:
    """The config from the file and the flags (read again at every reload); ConfigError/TokenFileError."""
    data = load_file(args.config) if args.config else {}
    cfg = build_config(data, vars(args))
    if cfg.admin_token_file:
        read_token(cfg.admin_token_file)  # fail now, not at the first rolling restart
    return cfg


async def _serve(cfg: Any, args: argparse.Namespace) -> None:
    """A worker: serve the master's listening socket until SIGTERM or the master is gone, then drain."""
    from openfuyao_pd.proxy import codec, eventloop, master, shared
    from openfuyao_pd.proxy.server import start
    from openfuyao_pd.proxy.server import stop as stop_proxy

    sock = socket.socket(fileno=args.worker_fd)
    generation = args.worker_generation or 0
    state = shared.State(args.worker_state, args.worker_row, generation) if args.worker_state else None
    runner, proxy, port = await start(cfg, sock=sock, generation=generation, shared=state)
    logging.getLogger("openfuyao_pd.proxy").warning(
        '{"event": "listening", "host": "%s", "port": %d, "protocol": "%s", "prefill": %d, "decode": %d, '
        '"loop": "%s", "json": "%s", "pid": %d, "generation": %d, "slot": %d}',
        cfg.listen_host, port, cfg.protocol, len(cfg.prefill), len(cfg.decode), eventloop.name(), codec.BACKEND,
        os.getpid(), generation, args.worker_slot or 0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    if args.worker_lifeline_fd is not None:
        master.configure_worker_lifeline(args.worker_lifeline_fd, stop.set)
    if args.worker_ready_fd is not None:
        os.write(args.worker_ready_fd, b"1")
        os.close(args.worker_ready_fd)
    try:
        await stop.wait()
    finally:
        drained = await stop_proxy(runner, proxy)
        logging.getLogger("openfuyao_pd.proxy").warning(
            '{"event": "worker_stopped", "pid": %d, "generation": %d, "drained": %s}',
            os.getpid(), generation, "true" if drained else "false")


def _worker(cfg: ProxyConfig, args: argparse.Namespace) -> int:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload is the master's business
    from openfuyao_pd.proxy import eventloop

    eventloop.run(_serve(cfg, args))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    try:
        cfg = load(args)
    except (ConfigError, TokenFileError) as exc:
        print(f"pd-proxy: {exc}", file=sys.stderr)
        return 2
    if args.worker_fd is not None:
        return _worker(cfg, args)
    from openfuyao_pd.proxy import master

    try:
        sock = master.bind(cfg.listen_host, cfg.port)
    except OSError as exc:
        print(f"pd-proxy: cannot listen on {cfg.listen_host}:{cfg.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1

    def reload_config() -> tuple[str, int, int, float]:
        fresh = load(args)
        return fresh.listen_host, fresh.port, fresh.options["workers"], fresh.options["drain_timeout"]

    listen = master.Listen(cfg.listen_host, cfg.port, cfg.options["workers"], sock)
    return master.Master(sys.argv[1:] if argv is None else argv, listen, reload_config,
                         cfg.options["drain_timeout"]).run()


if __name__ == "__main__":
    sys.exit(main())
