"""Proxy configuration: the plan's `proxy` dict, optionally overridden by the seed proxies' flags.

Every validation problem raises ConfigError with one line naming the key and the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROTOCOLS = ("mooncake_v1", "nixl", "mooncake", "centralized")
ROUTING = ("least_load", "prefix_affinity", "round_robin")
ROLES = ("prefill", "decode")

# option -> (type, default). Durations are seconds.
OPTION_DEFAULTS: dict[str, Any] = {
    "routing": "least_load",
    "local_prefill_max_tokens": 0,      # 0 = off
    "prefill_queue_threshold": 0,       # 0 = off
    "decode_busy_threshold": 0,         # 0 = no guard (in-flight requests on the chosen decode)
    "batch_priority": False,
    "priority_buckets": [[512, 0], [2048, 1], [8192, 2]],
    "chars_per_token": 4.0,
    "block_tokens": 64,                 # prefix-affinity block size, in estimated tokens
    "prefix_cache_blocks": 100000,      # remembered blocks per backend
    "affinity_max_imbalance_tokens": 8192,
    "default_max_tokens": 128,          # decode-load estimate when the client sets no max_tokens
    "connect_timeout": 5.0,
    "prefill_timeout": 600.0,           # read timeout for the prefill response
    "decode_timeout": 600.0,            # read timeout between decode chunks (and to the first one)
    "max_retries": 2,                   # fresh P/D pairs tried before the first byte reaches the client
    "fallback_local_prefill": True,     # a failed prefill falls back to local prefill on decode
    "health_interval": 5.0,
    "health_timeout": 2.0,
    "health_failures": 2,               # consecutive failures before ejection
    "health_successes": 1,              # consecutive successes before re-admission
    "drain_timeout": 30.0,
    "bootstrap_port": 8998,             # upstream MooncakeConnector default bootstrap port
}


class ConfigError(ValueError):
    """A configuration problem, reported as one line."""


@dataclass
class BackendSpec:
    name: str
    role: str
    address: str
    port: int
    host: str = ""
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProxyConfig:
    listen_host: str
    port: int
    protocol: str
    model: str
    prefill: list[BackendSpec]
    decode: list[BackendSpec]
    options: dict[str, Any]


def load_file(path: str) -> dict[str, Any]:
    """Read a JSON (or, when PyYAML is importable, YAML) file holding the plan's proxy dict."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}; pass an existing file to --config") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as json_exc:
        try:
            import yaml
        except ImportError:
            raise ConfigError(
                f"config file {path} is not valid JSON (line {json_exc.lineno}: {json_exc.msg}) and PyYAML is not installed"
            ) from json_exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is neither valid JSON nor YAML: {exc}".splitlines()[0]) from exc
    if isinstance(data, dict) and "proxy" in data and "prefill" not in data:
        data = data["proxy"]  # a whole plan was given: take its proxy section
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping (the plan's proxy dict)")
    return data


def _int(value: Any, where: str, low: int = 0, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{where} must be an integer, got {value!r}") from None
    if number < low or (high is not None and number > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ConfigError(f"{where} must be {bound}, got {number}")
    return number


def parse_backend(entry: Any, role: str, index: int, where: str) -> BackendSpec:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}[{index}] must be a mapping with address and port")
    address = entry.get("address") or entry.get("host")
    if not address or not isinstance(address, str):
        raise ConfigError(f"{where}[{index}] needs an address (IPv4, IPv6 or host name)")
    port = _int(entry.get("port"), f"{where}[{index}].port", 1, 65535)
    name = str(entry.get("name") or f"{role}-{index}")
    options = entry.get("options") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"{where}[{index}].options must be a mapping")
    # Bootstrap details for upstream MooncakeConnector may also sit at the entry's top level.
    for key in ("bootstrap_port", "bootstrap_host", "engine_id", "dp_rank"):
        if key in entry and key not in options:
            options[key] = entry[key]
    return BackendSpec(name=name, role=role, address=address.strip("[]"), port=port,
                       host=str(entry.get("host", "")), options=dict(options))


def normalize_buckets(value: Any) -> list[tuple[int, int]]:
    where = "options.priority_buckets"
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where} must be a non-empty list of [max_tokens, priority] pairs")
    out: list[tuple[int, int]] = []
    for i, item in enumerate(value):
        if isinstance(item, dict):
            pair = (item.get("max_tokens"), item.get("priority"))
        elif isinstance(item, list | tuple) and len(item) == 2:
            pair = (item[0], item[1])
        else:
            raise ConfigError(f"{where}[{i}] must be [max_tokens, priority] or {{max_tokens, priority}}")
        out.append((_int(pair[0], f"{where}[{i}].max_tokens", 1), _int(pair[1], f"{where}[{i}].priority", -(2**31))))
    if [b[0] for b in out] != sorted({b[0] for b in out}):
        raise ConfigError(f"{where} max_tokens must be strictly increasing")
    return out


def normalize_options(raw: Any) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("options must be a mapping")
    unknown = sorted(set(raw) - set(OPTION_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown proxy option(s) {', '.join(unknown)}; known: {', '.join(sorted(OPTION_DEFAULTS))}")
    opts = dict(OPTION_DEFAULTS)
    opts.update({k: v for k, v in raw.items() if v is not None})
    if opts["routing"] not in ROUTING:
        raise ConfigError(f"options.routing must be one of {', '.join(ROUTING)}, got {opts['routing']!r}")
    for key in ("local_prefill_max_tokens", "prefill_queue_threshold", "decode_busy_threshold", "block_tokens",
                "prefix_cache_blocks", "affinity_max_imbalance_tokens", "default_max_tokens", "max_retries",
                "health_failures", "health_successes", "bootstrap_port"):
        opts[key] = _int(opts[key], f"options.{key}", 0)
    for key in ("chars_per_token", "connect_timeout", "prefill_timeout", "decode_timeout", "health_interval",
                "health_timeout", "drain_timeout"):
        value = opts[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"options.{key} must be a positive number of seconds/ratio, got {value!r}")
        opts[key] = float(value)
    for key in ("batch_priority", "fallback_local_prefill"):
        if not isinstance(opts[key], bool):
            raise ConfigError(f"options.{key} must be true or false, got {opts[key]!r}")
    if opts["block_tokens"] < 1 or opts["health_failures"] < 1 or opts["health_successes"] < 1:
        raise ConfigError("options.block_tokens, health_failures and health_successes must be >= 1")
    opts["priority_buckets"] = normalize_buckets(opts["priority_buckets"])
    return opts


def _flag_backends(hosts: list[str] | None, ports: list[str] | None, role: str, flag: str) -> list[dict[str, Any]] | None:
    if not hosts and not ports:
        return None
    hosts = hosts or ["localhost"]
    ports = ports or []
    if not ports:
        raise ConfigError(f"--{flag}-ports is required when --{flag}-hosts is given")
    if len(hosts) == 1 and len(ports) > 1:
        hosts = hosts * len(ports)  # one host, several ports (one API server per DP rank)
    if len(ports) == 1 and len(hosts) > 1:
        ports = ports * len(hosts)
    if len(hosts) != len(ports):
        raise ConfigError(f"--{flag}-hosts has {len(hosts)} entries but --{flag}-ports has {len(ports)}; give one port per host")
    return [{"name": f"{role}-{i}", "address": h, "port": p} for i, (h, p) in enumerate(zip(hosts, ports, strict=True))]


def build_config(data: dict[str, Any], flags: dict[str, Any] | None = None) -> ProxyConfig:
    """Merge the file dict with CLI flags (flags win) and validate."""
    flags = flags or {}
    data = dict(data)
    for role, flag in (("prefill", "prefiller"), ("decode", "decoder")):
        entries = _flag_backends(flags.get(f"{flag}_hosts"), flags.get(f"{flag}_ports"), role, flag)
        if entries is not None:
            data[role] = entries
    protocol = flags.get("protocol") or data.get("protocol") or "mooncake_v1"
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    options = normalize_options(data.get("options"))
    listen_host = flags.get("host") or data.get("bind") or data.get("address") or "0.0.0.0"
    port = _int(flags.get("port") if flags.get("port") is not None else data.get("port", 8000), "port", 0, 65535)
    backends: dict[str, list[BackendSpec]] = {}
    for role in ROLES:
        raw = data.get(role) or []
        if not isinstance(raw, list):
            raise ConfigError(f"{role} must be a list of backends")
        backends[role] = [parse_backend(e, role, i, role) for i, e in enumerate(raw)]
    if not backends["decode"]:
        raise ConfigError("no decode backend: set proxy.decode in the plan or pass --decoder-hosts/--decoder-ports")
    names = [b.name for role in ROLES for b in backends[role]]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"backend name(s) {', '.join(duplicates)} used more than once; names must be unique")
    return ProxyConfig(listen_host=str(listen_host).strip("[]"), port=port, protocol=protocol,
                       model=str(data.get("model") or ""), prefill=backends["prefill"],
                       decode=backends["decode"], options=options)
