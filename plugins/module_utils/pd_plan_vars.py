# Copyright: openFuyao PD maintainers
# Apache License 2.0 (see LICENSE)
"""Inventory variables the layout planner understands, their defaults and the typo check.

Kept apart from the planner so the documentation (docs/plan.md) and the typo warning read
from one list.
"""

from __future__ import annotations

import difflib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

PLATFORMS = ("ascend", "cuda", "cpu")
CONNECTORS = ("mooncake", "mooncake_layerwise", "ascend_store", "ucm", "shared_storage", "nixl")
RUNTIMES = ("host", "container")
ROLES = ("prefill", "decode")
# Connectors where P and D talk to each other directly (engine ids, side-channel ports,
# matching tp layouts); the others go through shared storage and may mix platforms.
P2P_CONNECTORS = ("mooncake", "mooncake_layerwise", "ascend_store", "nixl")
BUILTIN_MODELS = ("tiny-llama",)

# Which connector runs on which platform; anything else is rejected at plan time.
SUPPORTED = {
    "ascend": ("mooncake", "mooncake_layerwise", "ascend_store", "ucm", "shared_storage"),
    "cuda": ("mooncake", "nixl", "ucm", "shared_storage"),
    "cpu": ("shared_storage",),
}
DEFAULT_CONNECTOR = {"ascend": "mooncake", "cuda": "nixl", "cpu": "shared_storage"}
VISIBLE_DEVICES_ENV = {"ascend": "ASCEND_RT_VISIBLE_DEVICES", "cuda": "CUDA_VISIBLE_DEVICES", "cpu": None}

# Settings that may differ between the prefill and the decode instances: each is looked up
# as pd_<role>_<name> first, then pd_<name>, then the default. A host in both groups can
# only tell its two roles apart through the pd_<role>_ form.
ROLE_VARS = (
    "tp",
    "dp",
    "instances_per_host",
    "devices",
    "max_model_len",
    "max_num_batched_tokens",
    "max_num_seqs",
    "gpu_memory_utilization",
    "extra_args",
    "http_port_base",
    "kv_port_base",
    "dp_rpc_port_base",
    "dp_address",
    "env",
    "hccl_env",
    "enable_prefix_caching",
    "enforce_eager",
    "engine_ids",
    "seed",
)

# Host-level (or group-level) settings.
HOST_VARS = (
    "platform",
    "connector",
    "runtime",
    "model",
    "served_model_name",
    "data_dir",
    "address",
    "bind_host",
    "dtype",
    "block_size",
    "trust_remote_code",
    "batch_integration",
    "devices_per_host",
    "nic_name",
    "kv_shared_path",
    "kv_connector_module_path",
    "kv_buffer_device",
    "kv_extra_config",
    "adxl_base_port",
    "adxl_ports_per_device",
    "mooncake_version",
    "python",
    "cpu_kvcache_space",
    "python_hash_seed",
    "ucm_config_file",
    "ucm_connector_name",
    "ucm_store_pipeline",
    "ucm_storage_backends",
    "ucm_cache_buffer_capacity_gb",
    "ucm_posix_capacity_gb",
    "ucm_io_direct",
    "ucm_enable_event_sync",
    "ucm_use_layerwise",
    "ucm_connector_config",
    "ucm_extra",
    "ucm_kv_role",
    "ucm_module_path",
    "proxy_port",
    "proxy_bind_host",
    # Proxy high availability (pd_plan_ha): the virtual IP in front of several [proxy] hosts.
    "proxy_vip",
    "proxy_vip_prefix",
    "proxy_vip_interface",
    "proxy_vrrp_router_id",
    "proxy_vrrp_unicast",
    "mooncake_master_port",
    "mooncake_master_metrics_port",
    "mooncake_master_lease_ttl",
    "mooncake_global_segment_size",
    "kv_load_failure_policy",
    "ascend_env_profile",
    "ascend_generation",
)


@dataclass(frozen=True)
class DirVar:
    """A directory the roles use on a host: the inventory variable that sets it (the role's own
    variable, so one setting moves both), its type, its default and what lives there."""

    var: str
    type: str
    default: str
    doc: str


# The plan's hosts[HOST].dirs, key by key: the planner reads each variable on each host (else the
# default) and the roles read the plan, so the layout of a host's files is decided once.
DIR_VARS = {
    "conf": DirVar(
        "vllm_pd_conf_dir", "path", "/etc/openfuyao-pd",
        "configuration: supervisord.conf, instances/NAME/ (run.sh, env, kv_transfer.json), proxy.json, "
        "keepalived.conf and the admin tokens",
    ),
    "log": DirVar("vllm_pd_log_dir", "path", "/var/log/openfuyao-pd", "every service's log (NAME.log, proxy.log)"),
    "state": DirVar(
        "vllm_pd_state_dir", "path", "/var/lib/openfuyao-pd",
        "programs and installs the roles keep: bin/ (watchdog, VIP check), the supervisor venv, the wheelhouse",
    ),
    "run": DirVar("vllm_pd_run_dir", "path", "/run/openfuyao-pd", "pid files of the services that write one (keepalived)"),
    "data": DirVar(
        "pd_data_dir", "path", "/var/lib/openfuyao-pd",
        "data the instances read or share: models/ (the built-in model), kv/ (shared_storage), ucm/",
    ),
}
# Role variables the planner reads beside the pd_* ones (the action plugin passes them through).
DIR_VAR_NAMES = tuple(d.var for d in DIR_VARS.values() if not d.var.startswith("pd_"))

# Proxy knobs: pd_proxy_<name> lands in plan.proxy.options[<name>] when set; unset ones take
# the proxy's own defaults. Names, types and bounds come from the proxy's own table
# (files/connector/openfuyao_pd/proxy/options.py), so the planner refuses exactly what the
# proxy would refuse, before any host is touched.
PROXY_OPTIONS_FILE = Path(__file__).resolve().parents[2] / "files/connector/openfuyao_pd/proxy/options.py"
_PROXY_TABLE: list = []


def proxy_options_table():
    """The proxy's options module (OPTIONS, BY_NAME, check, OptionError), or None when the
    collection lacks files/connector (a partial copy, e.g. ansible-test's sanity tree)."""
    if not _PROXY_TABLE:
        module = None
        if PROXY_OPTIONS_FILE.is_file():
            name = "openfuyao_pd_proxy_options"
            spec = importlib.util.spec_from_file_location(name, PROXY_OPTIONS_FILE)
            module = importlib.util.module_from_spec(spec)
            # dataclasses resolve the module's annotations through sys.modules.
            sys.modules[name] = module
            spec.loader.exec_module(module)
        _PROXY_TABLE.append(module)
    return _PROXY_TABLE[0]


def proxy_option_names():
    table = proxy_options_table()
    return tuple(o.name for o in table.OPTIONS) if table else ()


def known_names():
    return frozenset(
        ["pd_" + n for n in HOST_VARS]
        + ["pd_" + n for n in ROLE_VARS]
        + [f"pd_{r}_{n}" for r in ROLES for n in ROLE_VARS]
        + ["pd_proxy_" + n for n in proxy_option_names()]
        # Read by the playbooks, not the planner (site.yml: pd_become, pd_plan_file, pd_allow_partial).
        + ["pd_plan_output", "pd_plan", "pd_plan_file", "pd_allow_partial", "pd_become"]
    )


def typo_warnings(host: str, names) -> list:
    """One warning per pd_* variable that is unknown but close to a known name."""
    out = []
    known = known_names()
    for name in sorted(n for n in names if isinstance(n, str) and n.startswith("pd_")):
        if name in known:
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
        if close:
            out.append(f"host {host}: unknown variable {name} ignored; did you mean {close[0]}?")
        else:
            out.append(
                f"host {host}: unknown variable {name} ignored (see docs/plan.md for the pd_* variables)"
            )
    return out
