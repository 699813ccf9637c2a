# Copyright: openFuyao PD maintainers
# Apache License 2.0 (see LICENSE)
"""Inventory variables the layout planner understands: one typed table (VAR_SPECS) of name,
scope, type, default, bounds and meaning, and the typo check.

Kept apart from the planner so the planner's reads (pd_plan._Ctx.get/raw), the typo warning
and the documentation (docs/plan.md, written by tests/tools/vars_doc.py) come from one table.
"""

from __future__ import annotations

import difflib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan_ascend_env import GENERATIONS, PROFILES
from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan_checks import DTYPES
from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan_connectors import FAILURE_POLICIES

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

# The types a spec names. The planner's accessor (pd_plan._Ctx.get) checks and coerces int, port,
# bool, dict and args; the others it returns as read and the stage that uses them checks them
# (their messages need the context of that stage: the platform, the other hosts, the instance).
TYPES = ("int", "port", "bool", "float", "str", "word", "path", "module", "address", "enum",
         "list", "dict", "args", "version", "size", "any")
SCOPES = ("host", "role")
# Sections of docs/plan.md's variables tables (tests/tools/vars_doc.py writes them).
SECTIONS = ("host", "role", "ucm", "ha")


@dataclass(frozen=True)
class VarSpec:
    """One inventory variable the planner reads.

    scope "role": looked up as pd_<role>_<name> first, then pd_<name>, then the default; a host in
    both groups can only tell its two roles apart through the pd_<role>_ form. scope "host":
    pd_<name>, then the default. default None means unset; where the default depends on other
    settings (the platform, the connector) the stage passes it and default_doc says so.
    """

    name: str
    scope: str
    type: str
    doc: str
    default: object = None
    default_doc: str = ""
    choices: tuple = ()
    minimum: int | None = None
    maximum: int | None = None
    section: str = "host"
    # An enum's error line ends with it: "host H: VAR='x' is not one of a, b<hint>".
    hint: str = ""

    @property
    def var(self) -> str:
        return "pd_" + self.name

    def shown_default(self) -> str:
        """The docs' default column: default_doc, else the default in backticks, else unset."""
        if self.default_doc:
            return self.default_doc
        if self.default is None:
            return "unset"
        value = self.default
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return f"`{text}`"


def _host(name, type_, doc, default=None, **kw) -> VarSpec:
    return VarSpec(name, "host", type_, doc, default, **kw)


def _role(name, type_, doc, default=None, **kw) -> VarSpec:
    return VarSpec(name, "role", type_, doc, default, section="role", **kw)


def _ucm(name, type_, doc, default=None, **kw) -> VarSpec:
    return VarSpec(name, "host", type_, doc, default, section="ucm", **kw)


def _ha(name, type_, doc, default=None, **kw) -> VarSpec:
    return VarSpec(name, "host", type_, doc, default, section="ha", **kw)


# Every pd_* variable the planner reads, in the order of docs/plan.md's tables.
VAR_SPECS = (
    _host("platform", "enum", "the accelerator family of the host's instances", "cpu", choices=PLATFORMS,
          hint=": fix the value in the inventory"),
    _host(
        "connector", "enum",
        "`mooncake` (P2P; vllm-ascend `MooncakeConnectorV1` on ascend, upstream `MooncakeConnector` on cuda), "
        "`mooncake_layerwise` (ascend: vllm-ascend `MooncakeLayerwiseConnector`, decode first, the prefill pushes "
        "KV layer by layer; proxy protocol `mooncake_layerwise`), `ascend_store` (ascend: vllm-ascend's KV pool, "
        "`MultiConnector` of `MooncakeConnectorV1` and `AscendStoreConnector` on a Mooncake store; needs a "
        "`[mooncake_master]` host; proxy protocol `mooncake_v1`), `nixl` (cuda), `ucm` (centralized, "
        "`UCMConnector`), `shared_storage` (vLLM `ExampleConnector`). One per deployment.",
        default_doc="ascend `mooncake`, cuda `nixl`, cpu `shared_storage`", choices=CONNECTORS,
        hint=": fix the value in the inventory",
    ),
    _host("runtime", "enum", "where the instances run (read by the vllm_pd role)", "host", choices=RUNTIMES),
    _host(
        "model", "str",
        "model directory on the hosts, or `builtin:tiny-llama` → `{{ pd_data_dir }}/models/tiny-llama`, served as `tiny-llama`",
        default_doc="— (required)",
    ),
    _host("served_model_name", "str", "adds `--served-model-name` when set", default_doc="model path (vLLM's default)"),
    _host("data_dir", "path", "base of builtin models, the default KV directory and UCM config", "/var/lib/openfuyao-pd"),
    _host(
        "address", "address", "address the proxy and peers use",
        default_doc="`ansible_host`, else the inventory name (`127.0.0.1` for local connections / `localhost`)",
    ),
    _host("bind_host", "address", "`--host` of every instance", default_doc="unset (no `--host`)"),
    _host("dtype", "enum", "`--dtype`; must be equal on all instances", default_doc="cpu `bfloat16`, else unset",
          choices=DTYPES),
    _host("block_size", "int", "`--block-size`; must be equal on all instances", default_doc="ucm `128`, else unset",
          minimum=1),
    _host("trust_remote_code", "bool", "`--trust-remote-code`", True),
    _host(
        "batch_integration", "bool",
        "openFuyao batch integration: `BATCH_BY_REQUEST_LENGTH=true` and `--scheduling-policy priority` on prefill "
        "instances, `scheduling_policy: priority` in the plan, proxy option `batch_priority: true`",
        False,
    ),
    _host("devices_per_host", "int", "devices a host has when no npu_topology facts exist",
          default_doc="ascend/cuda `8` (A3: set 16), cpu `0`", minimum=0),
    _host("nic_name", "word", "ascend: sets `GLOO_SOCKET_IFNAME`, `TP_SOCKET_IFNAME`, `HCCL_SOCKET_IFNAME`"),
    _host("kv_shared_path", "path", "shared_storage: `shared_storage_path` (absolute, equal on all hosts)",
          default_doc="`{{ pd_data_dir }}/kv`"),
    _host(
        "kv_connector_module_path", "module",
        "adds `kv_connector_module_path` (the seed's `vllm_ascend.distributed.mooncake_connector`; newer "
        "vllm-ascend registers the connector itself)",
    ),
    _host("kv_buffer_device", "word", "`kv_buffer_device`", default_doc="ascend mooncake `npu`"),
    _host("kv_extra_config", "dict",
          "merged into `kv_connector_extra_config` (e.g. `{use_ascend_direct: true}` for vllm-ascend 0.11)",
          default_doc="`{}`"),
    _host("adxl_base_port", "port", "Ascend Direct base port (`ASCEND_BASE_PORT`)", 20000),
    _host("adxl_ports_per_device", "int",
          "ports a device may pick from; set it only for a Mooncake build whose `kPortRange` differs",
          default_doc="from `pd_mooncake_version`: `100` from 0.3.9, `1000` before", minimum=1),
    _host(
        "mooncake_version", "version",
        "ascend Mooncake hosts: sizes the Ascend Direct port pools (`MAJOR.MINOR.PATCH[.postN/rcN]`, quote it in YAML)",
        default_doc="the mooncake role's `mooncake_version` when the inventory sets it, else `0.3.13.post1` "
        "(what that role installs)",
    ),
    _host("python", "word", "cpu: interpreter in argv", "python3"),
    _host("cpu_kvcache_space", "int", "cpu: `VLLM_CPU_KVCACHE_SPACE` (GiB)", "1", minimum=1),
    _host(
        "python_hash_seed", "int",
        "ucm, ascend_store: `PYTHONHASHSEED` on every instance; must be one value over the cluster",
        default_doc="ucm `123456`, ascend_store `0` (vllm-ascend kv_pool.md)", minimum=0, maximum=4294967295,
    ),
    _host(
        "mooncake_global_segment_size", "size",
        "ascend_store: `global_segment_size` of each instance's `mooncake.json` "
        "(`{{ pd_data_dir }}/mooncake/<instance>.json`, `MOONCAKE_CONFIG_PATH`); whole GB",
        default_doc="`1GB`",
    ),
    _host(
        "mooncake_master_lease_ttl", "int",
        "ascend_store, on the `mooncake_master` host: `--default_kv_lease_ttl` (ms); checked in the timeout budget",
        default_doc="derived: the next second above every `ASCEND_CONNECT_TIMEOUT`/`ASCEND_TRANSFER_TIMEOUT`, "
        "at least the guide's 11000 ms",
    ),
    _host(
        "ascend_env_profile", "enum",
        "ascend Mooncake family: `guide` adds vllm-ascend's per-role PD env defaults (below), `none` leaves them "
        "out (the seed inventory)",
        "guide", choices=PROFILES,
    ),
    _host(
        "ascend_generation", "enum", "picks the KV-pool guide's generation env and hugepages",
        default_doc="npu_topology's product, else `A3` when `pd_devices_per_host` is 16, else `A2`",
        choices=GENERATIONS, hint=" (Atlas 800I/T A2 or A3)",
    ),
    _host("proxy_port", "port", "proxy port (read on the proxy host)", 9090),
    _host("proxy_bind_host", "address", "proxy listen address; `0.0.0.0` (every interface) only when set so",
          default_doc="the proxy host's `address`"),
    _host("mooncake_master_port", "port", "`mooncake_master` group only: the master's RPC port", 50088),
    _host("mooncake_master_metrics_port", "port", "`mooncake_master` group only: the master's metrics port", 9003),
    _role("tp", "int", "tensor parallel size of each instance; devices per instance = tp x dp", 1, minimum=1),
    _role("dp", "int", "data parallel size of each instance; devices per instance = tp x dp", 1, minimum=1),
    _role("instances_per_host", "int", "instances of that role on the host",
          default_doc="`1` (or the number of `devices` lists)", minimum=1),
    _role(
        "devices", "list",
        "explicit logic ids, one list per instance: `[[0, 1], [2, 3]]`. Two instances may name the same device "
        "only when each sets `gpu_memory_utilization` and their fractions sum to at most 1 (1P1D on one GPU, "
        "`inventories/cuda-local`)",
        default_doc="auto",
    ),
    _role("http_port_base", "port", "instance *k* of the role on a host gets `base + k` (the seed: 8107 / 8207)",
          default_doc="prefill `8100`, decode `8200`"),
    _role("kv_port_base", "port",
          "first instance's `kv_port`; the next starts after the previous one's side-channel range",
          default_doc="auto (see Ports)"),
    _role("dp_rpc_port_base", "port", "`--data-parallel-rpc-port` (`base + k`)",
          default_doc="prefill `9100`, decode `9200`"),
    _role("dp_address", "address", "`--data-parallel-address`", "localhost"),
    _role("max_model_len", "int", "`--max-model-len`", minimum=1),
    _role("max_num_batched_tokens", "int", "`--max-num-batched-tokens`", minimum=1),
    _role("max_num_seqs", "int", "`--max-num-seqs`", minimum=1),
    _role("seed", "int", "`--seed`", minimum=0),
    _role("gpu_memory_utilization", "float", "`--gpu-memory-utilization`, in (0, 1]"),
    _role("enforce_eager", "bool", "`--enforce-eager`", default_doc="cpu `true`, else `false`"),
    _role("enable_prefix_caching", "bool",
          "`true` → `--enable-prefix-caching`, `false` → `--no-enable-prefix-caching` (the seed's decode)"),
    _role(
        "extra_args", "args",
        "appended to argv (list, or a string split like a shell); must start with a flag, and may not set a flag "
        "the plan writes (see below)",
        default_doc="`[]`",
    ),
    _role(
        "env", "dict",
        "extra environment (values may reference `$VAR` of the launch environment, e.g. "
        "`LD_LIBRARY_PATH: /x:$LD_LIBRARY_PATH`; the vllm_pd role expands them like the seed's `export`); keys are "
        "shell names, values single strings/numbers without control characters, and no key the plan sets (see below)",
        default_doc="`{}`",
    ),
    _role("hccl_env", "dict", "HCCL environment (ascend only), merged over the defaults",
          default_doc="ascend mooncake: `HCCL_EXEC_TIMEOUT=204`, `HCCL_CONNECT_TIMEOUT=120`, `HCCL_IF_IP=<address>`"),
    _role("engine_ids", "list", "explicit engine ids, one per instance of the role on the host", default_doc="auto"),
    _role(
        "kv_load_failure_policy", "enum",
        "`kv_load_failure_policy` on the top-level kv-transfer-config",
        default_doc="unset (vLLM's default `fail`)", choices=FAILURE_POLICIES,
        hint=" (what vLLM does when loading KV fails)",
    ),
    _ucm("ucm_config_file", "path", "`UCM_CONFIG_FILE`; the plan's `files` holds its content",
         default_doc="`{{ pd_data_dir }}/ucm/ucm_config.yaml`"),
    _ucm("ucm_connector_name", "word", "`ucm_connectors[0].ucm_connector_name`", "UcmPipelineStore"),
    _ucm("ucm_store_pipeline", "str", "`store_pipeline`", "Cache|Posix"),
    _ucm("ucm_storage_backends", "path",
         "`storage_backends` (required: the shared directory every P/D host mounts)",
         default_doc="`pd_kv_shared_path`"),
    _ucm("ucm_cache_buffer_capacity_gb", "int", "`cache_buffer_capacity_gb`", 32, minimum=1),
    _ucm("ucm_io_direct", "bool", "`io_direct`"),
    _ucm("ucm_posix_capacity_gb", "int",
         "`posix_capacity_gb`, **first instance only** (UCM: only one instance may run the GC)", minimum=1),
    _ucm("ucm_connector_config", "dict", "merged into `ucm_connector_config`", default_doc="`{}`"),
    _ucm("ucm_enable_event_sync", "bool", "top-level `enable_event_sync`", True),
    _ucm("ucm_use_layerwise", "bool", "top-level `use_layerwise`", False),
    _ucm("ucm_extra", "dict", "merged into the top level", default_doc="`{}`"),
    _ucm("ucm_kv_role", "enum", "`kv_role` of every instance; or `kv_producer`/`kv_consumer` by role",
         "kv_both", default_doc="`kv_both` (the seed)", choices=("kv_both", "kv_producer", "kv_consumer")),
    _ucm("ucm_module_path", "module", "`kv_connector_module_path`", "ucm.integration.vllm.ucm_connector"),
    # Proxy high availability (pd_plan_ha, docs/proxy-ha.md): the virtual IP in front of several [proxy] hosts.
    _ha("proxy_vip", "address", "keepalived virtual IP in front of the `[proxy]` hosts; one value for group proxy"),
    _ha("proxy_vip_prefix", "int", "prefix length of `pd_proxy_vip`; one value for group proxy", default_doc="`32` (`128` for IPv6)",
        minimum=1, maximum=128),
    _ha("proxy_vip_interface", "word", "network interface of the proxy host that carries the virtual IP; may differ from host to host",
        default_doc="`pd_nic_name`"),
    _ha("proxy_vrrp_router_id", "int", "VRRP virtual router id, unique on the network segment; one value for group proxy", 51,
        minimum=1, maximum=255),
    _ha("proxy_vrrp_unicast", "bool", "VRRP unicast between the proxy hosts; `false`: multicast; one value for group proxy", True),
)
SPECS = {s.name: s for s in VAR_SPECS}


def spec_names(spec: VarSpec) -> tuple:
    """Every inventory name that sets spec: pd_<name>, and for a role variable pd_<role>_<name> too."""
    if spec.scope == "role":
        return (spec.var, *(f"pd_{r}_{spec.name}" for r in ROLES))
    return (spec.var,)


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
        [name for spec in VAR_SPECS for name in spec_names(spec)]
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
