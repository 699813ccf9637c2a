"""Simulator configuration: the engine's vLLM-like settings plus the simulation knobs."""

from __future__ import annotations

import json
import os
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openfuyao_pd.sim.model import TINY_LLAMA_KV_BYTES_PER_TOKEN

# kv_connector name -> the PD protocol the simulator speaks (see docs/simulator.md).
CONNECTOR_PROTOCOLS = {
    "MooncakeConnectorV1": "mooncake_v1",
    "MooncakeConnector": "mooncake",
    "MooncakeLayerwiseConnector": "mooncake_layerwise",
    "NixlConnector": "nixl",
    "UCMConnector": "centralized",
    "ExampleConnector": "centralized",
    "SharedStorageConnector": "centralized",
}
PROTOCOLS = ("mooncake_v1", "nixl", "mooncake", "centralized", "mooncake_layerwise", "none")
KV_ROLES = ("kv_producer", "kv_consumer", "kv_both")


class ConfigError(ValueError):
    """A bad simulator setting; the message names the setting and the fix."""


@dataclass
class SimConfig:
    """Everything one simulated engine needs. Times are in milliseconds."""

    model: str = "tiny-llama"
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    advertise_host: str | None = None  # what peers use to reach us (VLLM_HOST_IP, else host)
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    max_model_len: int = 4096
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    block_size: int = 16
    scheduling_policy: str = "fcfs"  # fcfs | priority
    enable_prefix_caching: bool = True
    seed: int = 0
    kv_transfer_config: dict[str, Any] | None = None
    api_key: str | None = None  # like vLLM's --api-key: /v1/* needs "Authorization: Bearer KEY"
    # simulation
    protocol: str | None = None  # derived from kv_transfer_config unless given
    kv_role: str | None = None
    engine_id: str | None = None
    kv_port: int | None = None  # side channel (mooncake_v1 kv_port, nixl side channel)
    bootstrap_port: int | None = None  # upstream mooncake bootstrap server (producers)
    shared_storage_path: str | None = None  # centralized protocol
    kv_pool_path: str | None = None  # AscendStoreConnector: a directory stands for the Mooncake store
    mooncake_config_path: str | None = None  # AscendStoreConnector: mooncake.json (default $MOONCAKE_CONFIG_PATH)
    kv_pool_master: str | None = None  # its master_server_address: the pool is the real Mooncake store
    kv_pool: bool = False  # a MultiConnector with AscendStoreConnector (set from kv_transfer_config)
    prefill_ms_per_token: float = 0.0
    decode_step_ms: float = 0.0
    decode_step_growth: float = 0.05  # step time x (1 + growth * (running - 1))
    kv_capacity_blocks: int = 4096
    kv_bytes_per_token: int = TINY_LLAMA_KV_BYTES_PER_TOKEN
    kv_hold_timeout_s: float = 480.0  # VLLM_MOONCAKE_ABORT_REQUEST_TIMEOUT / nixl lease
    kv_transfer_timeout_s: float = 30.0  # VLLM_MOONCAKE_CONNECTOR_TIMEOUT
    mooncake: str = "auto"  # off | auto | on
    eos_rate: float = 0.0  # chance per generated position of an EOS (deterministic)
    faults: list[str] = field(default_factory=list)
    in_process: bool = True  # "die" closes the server instead of exiting the process

    def __post_init__(self) -> None:
        self.resolve()

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model

    @property
    def model_tag(self) -> str:
        """Stands for the weights: KV content depends on it (and on nothing per-request)."""
        return f"{self.model}|{self.seed}"

    def resolve(self) -> None:
        """Fill protocol/role/ids/paths from kv_transfer_config and the environment; validate."""
        ktc = self.kv_transfer_config or {}
        if not isinstance(ktc, dict):
            raise ConfigError("--kv-transfer-config must be a JSON object")
        if ktc.get("kv_connector") == "MultiConnector":
            ktc = self._multi(ktc)
        connector = ktc.get("kv_connector")
        if self.protocol is None:
            if connector is None:
                self.protocol = "none"
            elif connector in CONNECTOR_PROTOCOLS:
                self.protocol = CONNECTOR_PROTOCOLS[connector]
            else:
                raise ConfigError(
                    f"--kv-transfer-config kv_connector {connector!r} is not simulated; "
                    f"use one of {', '.join(sorted(CONNECTOR_PROTOCOLS))}")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"protocol {self.protocol!r} unknown; use one of {', '.join(PROTOCOLS)}")
        if self.kv_role is None:
            self.kv_role = ktc.get("kv_role", "kv_both")
        if self.kv_role not in KV_ROLES:
            raise ConfigError(f"kv_role {self.kv_role!r} unknown; use one of {', '.join(KV_ROLES)}")
        if self.engine_id is None:
            self.engine_id = str(ktc.get("engine_id") or uuid.uuid4())
        if self.kv_port is None and ktc.get("kv_port") not in (None, ""):
            self.kv_port = int(ktc["kv_port"])
        if self.kv_port is None and self.protocol == "nixl" and os.environ.get("VLLM_NIXL_SIDE_CHANNEL_PORT"):
            self.kv_port = int(os.environ["VLLM_NIXL_SIDE_CHANNEL_PORT"])
        if self.protocol == "mooncake" and self.bootstrap_port is None and self.is_producer:
            self.bootstrap_port = int(os.environ.get("VLLM_MOONCAKE_BOOTSTRAP_PORT", "8998"))
        if self.protocol == "centralized" and self.shared_storage_path is None:
            self.shared_storage_path = shared_storage_from_config(ktc)
        if self.protocol == "centralized" and not self.shared_storage_path:
            raise ConfigError(
                "centralized KV (UCMConnector/ExampleConnector) needs a shared directory: set "
                "kv_connector_extra_config.shared_storage_path or UCM storage_backends")
        if self.advertise_host is None:
            self.advertise_host = os.environ.get("VLLM_HOST_IP") or _reachable_host(self.host)
        if self.scheduling_policy not in ("fcfs", "priority"):
            raise ConfigError(f"--scheduling-policy {self.scheduling_policy!r} unknown; use fcfs or priority")
        if self.mooncake not in ("off", "auto", "on"):
            raise ConfigError(f"--sim-mooncake {self.mooncake!r} unknown; use off, auto or on")
        for name in ("block_size", "max_num_seqs", "kv_capacity_blocks", "max_model_len"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")

    def _multi(self, ktc: dict[str, Any]) -> dict[str, Any]:
        """vllm-ascend's KV pool PD setup: MultiConnector[MooncakeConnectorV1, AscendStoreConnector]
        (kv_pool.md Step 2.3.1). P2P moves KV as mooncake_v1; the pool is a second, prefix-keyed source."""
        children = (ktc.get("kv_connector_extra_config") or {}).get("connectors") or []
        names = [c.get("kv_connector") for c in children if isinstance(c, dict)]
        p2p = next((c for c in children if isinstance(c, dict) and c.get("kv_connector") in CONNECTOR_PROTOCOLS), None)
        if "AscendStoreConnector" in names:
            self.kv_pool = True
            config_path = self.mooncake_config_path or os.environ.get("MOONCAKE_CONFIG_PATH")
            if not self.kv_pool_path and config_path:
                from openfuyao_pd.sim.kvpool import PoolError, master_address

                try:
                    self.kv_pool_master = master_address(config_path)
                except PoolError as exc:
                    raise ConfigError(str(exc)) from exc
            if not self.kv_pool_path and not self.kv_pool_master:
                raise ConfigError("AscendStoreConnector needs its store: set MOONCAKE_CONFIG_PATH (mooncake.json with "
                                  "master_server_address) or pass --sim-kv-pool DIR (a shared directory stands for it)")
        if p2p is None:
            raise ConfigError(f"MultiConnector children {names} have no simulated P2P connector; "
                              f"use one of {', '.join(sorted(CONNECTOR_PROTOCOLS))} beside AscendStoreConnector")
        merged = dict(p2p)
        merged.setdefault("engine_id", ktc.get("engine_id"))
        merged.setdefault("kv_role", ktc.get("kv_role"))
        return merged

    @property
    def is_producer(self) -> bool:
        return self.kv_role in ("kv_producer", "kv_both")

    @property
    def is_consumer(self) -> bool:
        return self.kv_role in ("kv_consumer", "kv_both")


def _reachable_host(bind_host: str) -> str:
    """The address peers should use: the bind address, or for a wildcard bind this host's
    primary address (what vLLM's get_ip() finds; in a container, the container's IP)."""
    if bind_host not in ("", "0.0.0.0", "::"):
        return bind_host
    family = socket.AF_INET6 if bind_host == "::" else socket.AF_INET
    probe = ("2001:4860:4860::8888", 80) if family == socket.AF_INET6 else ("8.8.8.8", 80)
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect(probe)  # UDP connect sends nothing; it only picks the outgoing interface
            return str(sock.getsockname()[0])
    except OSError:
        pass
    try:
        address = socket.gethostbyname(socket.gethostname())
        if not address.startswith("127."):
            return address
    except OSError:
        pass
    return "::1" if family == socket.AF_INET6 else "127.0.0.1"


def shared_storage_from_config(ktc: dict[str, Any]) -> str | None:
    """The shared KV directory of ExampleConnector (shared_storage_path) or UCM (storage_backends)."""
    extra = ktc.get("kv_connector_extra_config") or {}
    if extra.get("shared_storage_path"):
        return str(extra["shared_storage_path"])
    ucm: Any = extra
    if extra.get("UCM_CONFIG_FILE"):
        try:
            import yaml  # only UCM configs need it
        except ImportError as exc:
            raise ConfigError(f"reading UCM_CONFIG_FILE {extra['UCM_CONFIG_FILE']} needs PyYAML "
                              "(pip install pyyaml), or set kv_connector_extra_config.shared_storage_path") from exc
        try:
            ucm = yaml.safe_load(Path(extra["UCM_CONFIG_FILE"]).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read UCM_CONFIG_FILE {extra['UCM_CONFIG_FILE']}: {exc}") from exc
    for connector in (ucm.get("ucm_connectors") or []) if isinstance(ucm, dict) else []:
        backends = (connector.get("ucm_connector_config") or {}).get("storage_backends")
        if backends:
            return str(backends).split(":")[0]
    if isinstance(ucm, dict) and ucm.get("storage_backends"):
        return str(ucm["storage_backends"]).split(":")[0]
    return None


def parse_kv_transfer_config(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--kv-transfer-config is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigError("--kv-transfer-config must be a JSON object")
    return value
