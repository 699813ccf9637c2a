"""``pd-engine-sim``: run a simulated vLLM engine with vLLM's command line.

Both ``pd-engine-sim serve MODEL [flags]`` (like ``vllm serve``) and
``pd-engine-sim --model MODEL [flags]`` (like ``python -m vllm.entrypoints.openai.api_server``)
work. vLLM flags the simulator does not model are accepted and ignored (logged at debug).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from openfuyao_pd.sim.config import ConfigError, SimConfig, parse_kv_transfer_config
from openfuyao_pd.sim.faults import FAULT_HELP, FaultError, parse_faults

LOG = logging.getLogger("pd-engine-sim")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pd-engine-sim", allow_abbrev=False,
        description="A vLLM-like prefill/decode engine simulator (no accelerator needed).")
    parser.add_argument("--model", default=None, help="model name or path (or give it after 'serve')")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", nargs="+", default=None)
    parser.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    parser.add_argument("--data-parallel-size", "-dp", type=int, default=1)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--kv-transfer-config", default=None, help="vLLM KVTransferConfig as JSON")
    parser.add_argument("--scheduling-policy", default="fcfs", choices=("fcfs", "priority"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--api-key", default=None, help="require this bearer token on /v1 (or VLLM_API_KEY)")
    parser.add_argument("--enable-prefix-caching", dest="prefix_caching", action="store_true", default=True)
    parser.add_argument("--no-enable-prefix-caching", dest="prefix_caching", action="store_false")
    sim = parser.add_argument_group("simulation")
    sim.add_argument("--sim-seed", type=int, default=None, help="generation/KV seed (default: --seed)")
    sim.add_argument("--sim-prefill-ms-per-token", type=float, default=0.0)
    sim.add_argument("--sim-decode-step-ms", type=float, default=0.0)
    sim.add_argument("--sim-decode-step-growth", type=float, default=0.05,
                     help="decode step time grows by this fraction per extra running sequence")
    sim.add_argument("--sim-max-seqs", type=int, default=None, help="max running sequences (default --max-num-seqs)")
    sim.add_argument("--sim-kv-capacity-blocks", type=int, default=4096)
    sim.add_argument("--sim-kv-bytes-per-token", type=int, default=None,
                     help="KV bytes per token (default: from MODEL/config.json when MODEL is a directory, "
                          "else the tiny llama's 2 layers x k,v x 4 heads x 64 x bf16 = 2048)")
    sim.add_argument("--sim-kv-hold-timeout", type=float, default=None,
                     help="seconds a prefill holds unclaimed KV (default VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT or 480)")
    sim.add_argument("--sim-kv-transfer-timeout", type=float, default=None,
                     help="seconds a decode waits for KV (default VLLM_MOONCAKE_CONNECTOR_TIMEOUT or 30)")
    sim.add_argument("--sim-eos-rate", type=float, default=0.0, help="chance of EOS per generated position")
    sim.add_argument("--sim-fault", action="append", default=[], help=FAULT_HELP)
    sim.add_argument("--sim-mooncake", default="auto", choices=("off", "auto", "on"))
    sim.add_argument("--sim-kv-pool", default=None,
                     help="directory standing for AscendStoreConnector's Mooncake store (MultiConnector with it)")
    sim.add_argument("--sim-advertise-host", default=None, help="address peers use (default VLLM_HOST_IP or --host)")
    sim.add_argument("--sim-bootstrap-port", type=int, default=None,
                     help="upstream mooncake bootstrap port (default VLLM_MOONCAKE_BOOTSTRAP_PORT or 8998)")
    sim.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return parser


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if argv and argv[0] == "serve":
        argv = argv[1:]
        if argv and not argv[0].startswith("-"):
            argv = ["--model", argv[0], *argv[1:]]
    args, unknown = build_parser().parse_known_args(argv)
    return args, unknown


def config_from_args(args: argparse.Namespace) -> SimConfig:
    import os

    if not args.model:
        raise ConfigError("no model: use 'pd-engine-sim serve MODEL ...' or '--model MODEL'")
    parse_faults(args.sim_fault)  # fail early on a bad spec
    seed = args.seed if args.sim_seed is None else args.sim_seed
    extra: dict = {}
    bytes_per_token = args.sim_kv_bytes_per_token
    if bytes_per_token is None:
        bytes_per_token = _bytes_from_model_dir(args.model)
    if bytes_per_token is not None:
        extra["kv_bytes_per_token"] = bytes_per_token
    hold = args.sim_kv_hold_timeout
    if hold is None:
        hold = float(os.environ.get("VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT", "480"))
    transfer = args.sim_kv_transfer_timeout
    if transfer is None:
        transfer = float(os.environ.get("VLLM_MOONCAKE_CONNECTOR_TIMEOUT", "30"))
    return SimConfig(
        model=args.model,
        served_model_name=args.served_model_name[0] if args.served_model_name else None,
        host=args.host, port=args.port, advertise_host=args.sim_advertise_host,
        tensor_parallel_size=args.tensor_parallel_size, data_parallel_size=args.data_parallel_size,
        max_model_len=args.max_model_len, max_num_batched_tokens=args.max_num_batched_tokens,
        max_num_seqs=args.sim_max_seqs or args.max_num_seqs, block_size=args.block_size,
        scheduling_policy=args.scheduling_policy, enable_prefix_caching=args.prefix_caching, seed=seed,
        kv_transfer_config=parse_kv_transfer_config(args.kv_transfer_config),
        api_key=args.api_key or os.environ.get("VLLM_API_KEY") or None,
        bootstrap_port=args.sim_bootstrap_port,
        prefill_ms_per_token=args.sim_prefill_ms_per_token, decode_step_ms=args.sim_decode_step_ms,
        decode_step_growth=args.sim_decode_step_growth, kv_capacity_blocks=args.sim_kv_capacity_blocks,
        kv_hold_timeout_s=hold, kv_transfer_timeout_s=transfer, mooncake=args.sim_mooncake, kv_pool_path=args.sim_kv_pool,
        eos_rate=args.sim_eos_rate, faults=list(args.sim_fault), in_process=False, **extra)


def _bytes_from_model_dir(model_path: str) -> int | None:
    """KV size per token from MODEL/config.json when MODEL is a model directory."""
    import json
    from pathlib import Path

    from openfuyao_pd.sim.model import kv_bytes_per_token_from_hf_config

    config_file = Path(model_path) / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return None
    value = kv_bytes_per_token_from_hf_config(config) if isinstance(config, dict) else None
    if value is not None:
        LOG.info("KV size %d bytes/token from %s", value, config_file)
    return value


async def _serve(config: SimConfig) -> None:
    from openfuyao_pd.sim.server import SimRunner

    runner = await SimRunner(config).start()
    engine = runner.engine
    LOG.info("pd-engine-sim %s (%s, %s) listening on %s:%s ports=%s mooncake=%s", config.model_name,
             config.protocol, config.kv_role, config.host, runner.port, engine.ports,
             engine.mooncake.segment if engine.mooncake else f"off ({engine.mooncake_reason})")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.stop()


def main(argv: list[str] | None = None) -> int:
    args, unknown = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if unknown:
        LOG.debug("ignoring vLLM flags the simulator does not model: %s", " ".join(unknown))
    try:
        config = config_from_args(args)
    except (ConfigError, FaultError, ValueError) as exc:
        print(f"pd-engine-sim: error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(config))
    except OSError as exc:
        print(f"pd-engine-sim: error: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    except (RuntimeError, ConfigError) as exc:
        print(f"pd-engine-sim: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
