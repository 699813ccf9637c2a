"""Proxy configuration: the plan's `proxy` dict, optionally overridden by the seed proxies' flags.

Every validation problem raises ConfigError with one line naming the key and the fix.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openfuyao_pd.proxy import options as options_table

PROTOCOLS = ("mooncake_v1", "nixl", "mooncake", "centralized", "mooncake_layerwise")
ROUTING = options_table.ROUTING
ROLES = ("prefill", "decode")

# The option table lives in options.py (pure data, shared with the planner).
OPTION_DEFAULTS: dict[str, Any] = dict(options_table.DEFAULTS)

# Keys the plan's proxy section (plugins/module_utils/pd_plan.py, _proxy_section) and roles/proxy
# write. Anything else is refused: a typo such as `prefil` would otherwise start a proxy with no prefill.
TOP_KEYS = ("host", "address", "bind", "port", "protocol", "model", "prefill", "decode", "options",
            "admin_token_file")
BACKEND_KEYS = ("name", "role", "host", "address", "port", "engine_id", "kv_port", "tensor_parallel_size",
                "data_parallel_size", "bootstrap_host", "bootstrap_port", "dp_rank", "options")
BACKEND_OPTION_KEYS = ("bootstrap_port", "bootstrap_host", "engine_id", "dp_rank")
WILDCARDS = ("0.0.0.0", "::", "")
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


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
    admin_token_file: str = ""  # bearer token of the mutating instance API (docs/proxy.md, "Admin API")
    advertise_host: str = ""  # the address engines reach the proxy at (layerwise decodes post to /v1/metaserver)


def load_file(path: str) -> dict[str, Any]:
    """Read a JSON (or, when PyYAML is importable, YAML) file holding the plan's proxy dict."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}; pass an existing file to --config") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}); give the plan's proxy dict "
                          "as JSON or YAML") from None
    if "\x00" in text:
        raise ConfigError(f"config file {path} holds NUL bytes: it is not a JSON or YAML text file")
    try:
        data = json.loads(text)
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply to be a proxy config") from None
    except json.JSONDecodeError as json_exc:
        data = _load_yaml(path, text, json_exc)
    if isinstance(data, dict) and "proxy" in data and "prefill" not in data:
        data = data["proxy"]  # a whole plan was given: take its proxy section
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping (the plan's proxy dict), got {type(data).__name__}")
    return data


def _load_yaml(path: str, text: str, json_exc: json.JSONDecodeError) -> Any:
    try:
        import yaml
    except ImportError:
        raise ConfigError(
            f"config file {path} is not valid JSON (line {json_exc.lineno}: {json_exc.msg}) and PyYAML is not installed"
        ) from json_exc
    try:
        return yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply to be a proxy config") from None
    except (yaml.YAMLError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or ["parse error"])[0]
        raise ConfigError(f"config file {path} is neither valid JSON nor YAML: {first}") from None


def _int(value: Any, where: str, low: int = 0, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"{where} must be an integer, got {value!r:.60}")
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{where} must be an integer, got {value!r:.60}") from None
    if number < low or (high is not None and number > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ConfigError(f"{where} must be {bound}, got {number}")
    return number


def _refuse_unknown(data: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    for key in data:
        if isinstance(key, str) and key.startswith("_"):
            continue  # comments such as the role's `_comment: ansible_managed`
        if key not in known:
            hint = options_table.did_you_mean(str(key), known)
            raise ConfigError(f"unknown key {key!r:.60} in {where}{hint}")


def check_address(value: Any, where: str, allow_wildcard: bool = False) -> str:
    """An IPv4/IPv6 address or a host name (brackets around IPv6 allowed); never a URL or host:port."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where} needs an address (IPv4, IPv6 or host name), got {value!r:.60}")
    text = value.strip()
    if "://" in text or "/" in text:
        raise ConfigError(f"{where} is {text!r:.60}, a URL or path: give only the host (e.g. 10.0.0.1), and the port "
                          "in `port`")
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        ip = ipaddress.ip_address(bare.split("%", 1)[0])  # fe80::1%eth0: zone ids are allowed
    except ValueError:
        ip = None
    if ip is not None:
        if ip.is_unspecified and not allow_wildcard:
            raise ConfigError(f"{where} is the wildcard {text}: give the address of the backend")
        return bare
    if ":" in bare:
        raise ConfigError(f"{where} is {text!r:.60}: not an IP address; give the port in `port`, not after a colon")
    labels = bare.rstrip(".").split(".")
    if len(bare) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ConfigError(f"{where} is {text!r:.60}: not an IPv4/IPv6 address or a valid host name")
    return bare


def parse_backend(entry: Any, role: str, index: int, where: str) -> BackendSpec:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}[{index}] must be a mapping with address and port")
    _refuse_unknown(entry, BACKEND_KEYS, f"{where}[{index}]")
    address = check_address(entry.get("address") or entry.get("host"), f"{where}[{index}].address")
    port = _int(entry.get("port"), f"{where}[{index}].port", 1, 65535)
    name = entry.get("name")
    if name is None:
        name = f"{role}-{index}"
    if not isinstance(name, str | int) or isinstance(name, bool) or not re.fullmatch(r"[\w.:-]{1,128}", str(name)):
        raise ConfigError(f"{where}[{index}].name must be 1-128 letters, digits or ._:- characters, got {name!r:.60}")
    options = entry.get("options") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"{where}[{index}].options must be a mapping")
    _refuse_unknown(options, BACKEND_OPTION_KEYS, f"{where}[{index}].options")
    options = dict(options)
    # Bootstrap details for upstream MooncakeConnector may also sit at the entry's top level.
    for key in BACKEND_OPTION_KEYS:
        if key in entry and key not in options:
            options[key] = entry[key]
    if options.get("bootstrap_port") is not None:
        options["bootstrap_port"] = _int(options["bootstrap_port"], f"{where}[{index}].bootstrap_port", 1, 65535)
    if options.get("dp_rank") is not None:
        options["dp_rank"] = _int(options["dp_rank"], f"{where}[{index}].dp_rank", 0, 65535)
    if options.get("bootstrap_host") is not None:
        options["bootstrap_host"] = check_address(options["bootstrap_host"], f"{where}[{index}].bootstrap_host")
    if options.get("engine_id") is not None and not isinstance(options["engine_id"], str | int):
        raise ConfigError(f"{where}[{index}].engine_id must be a string or an integer")
    host = entry.get("host", "")
    return BackendSpec(name=str(name), role=role, address=address, port=port,
                       host=host if isinstance(host, str) else "", options=options)


def normalize_buckets(value: Any) -> list[tuple[int, int]]:
    try:
        return options_table.check(options_table.BY_NAME["priority_buckets"], value)
    except options_table.OptionError as exc:
        raise ConfigError(str(exc)) from None


def normalize_options(raw: Any) -> dict[str, Any]:
    try:
        return options_table.validate(raw)
    except options_table.OptionError as exc:
        raise ConfigError(str(exc)) from None


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


def _listen_host(flags: dict[str, Any], data: dict[str, Any]) -> str:
    """--host, else `bind`, else the plan's `address`, else loopback: a wildcard only when written out."""
    for where, value in (("--host", flags.get("host")), ("bind", data.get("bind")), ("address", data.get("address"))):
        if value is not None and value != "":
            return check_address(value, where, allow_wildcard=True)
    return "127.0.0.1"  # like the seed proxies' default; 0.0.0.0 must be asked for


def _no_shared_endpoints(backends: dict[str, list[BackendSpec]]) -> None:
    seen: dict[tuple[str, int], str] = {}
    for role in ROLES:
        for b in backends[role]:
            key = (b.address.lower(), b.port)
            if key in seen:
                other = seen[key]
                raise ConfigError(f"{b.role} backend {b.name} and {other} are the same endpoint "
                                  f"{b.address}:{b.port}; an engine serves one role: remove one of them")
            seen[key] = f"{b.role} backend {b.name}"


def build_config(data: dict[str, Any], flags: dict[str, Any] | None = None) -> ProxyConfig:
    """Merge the file dict with CLI flags (flags win) and validate."""
    flags = flags or {}
    if not isinstance(data, dict):
        raise ConfigError("the proxy config must be a mapping (the plan's proxy dict)")
    _refuse_unknown(data, TOP_KEYS, "the proxy config")
    data = dict(data)
    for role, flag in (("prefill", "prefiller"), ("decode", "decoder")):
        entries = _flag_backends(flags.get(f"{flag}_hosts"), flags.get(f"{flag}_ports"), role, flag)
        if entries is not None:
            data[role] = entries
    protocol = flags.get("protocol") or data.get("protocol") or "mooncake_v1"
    if not isinstance(protocol, str) or protocol not in PROTOCOLS:
        hint = options_table.did_you_mean(str(protocol), PROTOCOLS)
        raise ConfigError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r:.60}{hint}")
    options = normalize_options(data.get("options"))
    if protocol == "mooncake_layerwise" and options["workers"] > 1:
        # The decode posts back to /v1/metaserver, and that state lives in the worker that took
        # the request: another worker behind the same port would not know it.
        raise ConfigError(f"options.workers must be 1 with protocol mooncake_layerwise (its metaserver "
                          f"state is per process), got {options['workers']}")
    listen_host = _listen_host(flags, data)
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
    _no_shared_endpoints(backends)
    model = data.get("model") or ""
    if not isinstance(model, str):
        raise ConfigError(f"model must be the served model name (a string), got {model!r:.60}")
    token_file = flags.get("admin_token_file") or data.get("admin_token_file") or ""
    if not isinstance(token_file, str):
        raise ConfigError(f"admin_token_file must be a file path, got {token_file!r:.60}")
    return ProxyConfig(listen_host=listen_host, port=port, protocol=protocol, model=model,
                       prefill=backends["prefill"], decode=backends["decode"], options=options,
                       admin_token_file=token_file,
                       advertise_host=str(data.get("address") or "").strip("[]"))
