"""`pd-proxy --config FILE` (the plan's proxy dict) plus the seed proxies' drop-in flags."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any

from openfuyao_pd.proxy.admin import TokenFileError, read_token
from openfuyao_pd.proxy.config import PROTOCOLS, ConfigError, build_config, load_file


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
    return parser.parse_args(argv)


async def _serve(cfg: Any) -> None:
    from openfuyao_pd.proxy import codec, eventloop
    from openfuyao_pd.proxy.server import start

    runner, proxy, port = await start(cfg)
    logging.getLogger("openfuyao_pd.proxy").warning(
        '{"event": "listening", "host": "%s", "port": %d, "protocol": "%s", "prefill": %d, "decode": %d, '
        '"loop": "%s", "json": "%s"}',
        cfg.listen_host, port, cfg.protocol, len(cfg.prefill), len(cfg.decode), eventloop.name(), codec.BACKEND)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
    del proxy


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    try:
        data = load_file(args.config) if args.config else {}
        cfg = build_config(data, vars(args))
        if cfg.admin_token_file:
            read_token(cfg.admin_token_file)  # fail now, not at the first rolling restart
    except (ConfigError, TokenFileError) as exc:
        print(f"pd-proxy: {exc}", file=sys.stderr)
        return 2
    try:
        from openfuyao_pd.proxy import eventloop

        eventloop.run(_serve(cfg))
    except OSError as exc:
        print(f"pd-proxy: cannot listen on {cfg.listen_host}:{cfg.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
