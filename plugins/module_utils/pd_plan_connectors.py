# Copyright: openFuyao PD maintainers
# Apache License 2.0 (see LICENSE)
"""The vllm-ascend Mooncake family beyond MooncakeConnectorV1: layerwise P2P and the KV pool.

Pure functions the planner (pd_plan.py) calls; they take plain values and return plain values
or problem lines, so the planner's flow stays the one place that decides.

Sources (vllm-ascend, HEAD 182b75ea84, 2026-08-22):
- MooncakeLayerwiseConnector: docs/source/tutorials/features/pd_disaggregation_mooncake_multi_node.md,
  "Layerwise" (same kv-transfer fields as MooncakeConnectorV1, only the class differs) and
  "Example Proxy for Deployment" (decode first; load_balance_proxy_layerwise_server_example.py).
  The layerwise decode is pushed into, so it listens on its kv_port block too
  (mooncake_layerwise_connector.py: side_channel_port = kv_port + dp_rank * tp on both sides).
- AscendStoreConnector: docs/source/user_guide/feature_guide/kv_pool.md, "Step 2.3.1" (PD with
  MultiConnector = MooncakeConnectorV1 for P->D plus AscendStoreConnector as the prefix pool),
  "kv_connector_extra_config" (lookup_rpc_port: "Each Instance Requires a Unique Port
  Configuration"), "Environment Variable Configuration" (PYTHONHASHSEED equal on all nodes),
  "Step 2.2.1" (mooncake.json) and "Step 2.2.2" (mooncake_master flags; default_kv_lease_ttl
  "Keep it larger than ASCEND_CONNECT_TIMEOUT and ASCEND_TRANSFER_TIMEOUT").
  lookup_rpc_port is no TCP port: pool_scheduler.py get_zmq_rpc_path_lookup builds
  ``ipc://{VLLM_RPC_BASE_PATH}/lookup_rpc_port_{n}_dp_rank{r}``, so two instances of one
  machine with the same number share a socket file.
"""

from __future__ import annotations

import copy
import json
import math
import re

MOONCAKE_FAMILY = ("mooncake", "mooncake_layerwise", "ascend_store")
FAILURE_POLICIES = ("recompute", "fail")
DEFAULT_HASH_SEED = {"ascend_store": "0", "ucm": "123456"}  # kv_pool.md exports 0; UCM keeps its seed
HASH_SEED_CONNECTORS = tuple(DEFAULT_HASH_SEED)
DEFAULT_LEASE_TTL_MS = 11000  # kv_pool.md Step 2.2.2
DEFAULT_SEGMENT = "1GB"
_SEGMENT_RE = re.compile(r"[1-9][0-9]*GB\Z")


def is_mooncake(connector):
    """Connectors that run vllm-ascend's Mooncake P2P path (ports, ADXL pools, HCCL, budget)."""
    return connector in MOONCAKE_FAMILY


def proxy_protocol(connector, platforms):
    """The proxy protocol of a Mooncake-family connector (None for the others)."""
    if connector == "mooncake_layerwise":
        return "mooncake_layerwise"  # decode first, the prefill is sent from /v1/metaserver
    if connector == "ascend_store":
        return "mooncake_v1"  # kv_pool.md Step 2.3.2 runs the P-first load_balance_proxy_server_example.py
    if connector == "mooncake":
        return "mooncake_v1" if platforms == ["ascend"] else "mooncake"
    return None


def decode_binds_kv(connector):
    """The layerwise prefill pushes into the decode: both sides listen on their kv_port block."""
    return connector == "mooncake_layerwise"


def kv_transfer_config(connector, v1_cfg, lookup_rpc_port=None, failure_policy=None):
    """The kv-transfer-config of a family member, from the MooncakeConnectorV1 one the planner built."""
    cfg = copy.deepcopy(v1_cfg)
    if connector == "mooncake_layerwise":
        cfg["kv_connector"] = "MooncakeLayerwiseConnector"
    elif connector == "ascend_store":
        store = {
            "kv_connector": "AscendStoreConnector",
            "kv_role": cfg["kv_role"],
            # vllm-ascend's guide writes the number as a string; the scheduler formats it into a path.
            "kv_connector_extra_config": {"backend": "mooncake", "lookup_rpc_port": str(lookup_rpc_port)},
        }
        cfg = {
            "kv_connector": "MultiConnector",
            "kv_role": v1_cfg["kv_role"],
            "engine_id": v1_cfg["engine_id"],
            "kv_connector_extra_config": {"connectors": [cfg, store]},
        }
    if failure_policy is not None:
        # "configure kv_load_failure_policy on the MultiConnector top-level" (kv_pool.md).
        cfg["kv_load_failure_policy"] = failure_policy
    return cfg


def lookup_rpc_ports(instances):
    """One lookup_rpc_port per instance, unique over the plan (0, 1, ... in plan order, as the
    guide's prefill 0 / decode 1), so no two instances of a machine share the IPC socket."""
    return {inst["name"]: n for n, inst in enumerate(instances)}


def hash_seed_problem(seeds, var="pd_python_hash_seed"):
    """seeds: {host: seed text}. The KV pool (and UCM) find blocks by prefix hash: one seed everywhere."""
    if len(set(seeds.values())) <= 1:
        return None
    per = ", ".join(f"{h}: {s}" for h, s in sorted(seeds.items()))
    return (
        f"{var} differs between hosts ({per}): the KV pool finds blocks by hash, so PYTHONHASHSEED must be "
        f"equal on every node; set one {var} in group_vars/all.yml"
    )


def segment_problem(value, var):
    if isinstance(value, str) and _SEGMENT_RE.match(value):
        return None
    return f"{var}={value!r} must be a whole number of GB such as 1GB (Mooncake needs it aligned to 1GB)"


def mooncake_json(master_address, master_port, segment):
    """The MOONCAKE_CONFIG_PATH file of kv_pool.md Step 2.2.1 (Ascend: P2PHANDSHAKE, protocol ascend)."""
    host = f"[{master_address}]" if ":" in master_address else master_address
    doc = {
        "metadata_server": "P2PHANDSHAKE",
        "protocol": "ascend",
        "device_name": "",
        "master_server_address": f"{host}:{master_port}",
        "global_segment_size": segment,
    }
    return json.dumps(doc, indent=2) + "\n"


def lease_ttl_floor_ms(pulls):
    """Smallest lease TTL the guide's rule allows: above every ASCEND_CONNECT_TIMEOUT and
    ASCEND_TRANSFER_TIMEOUT an instance runs with (pulls: [(connect_ms, transfer_ms)])."""
    return max((max(c, t) for c, t in pulls), default=0)


def default_lease_ttl_ms(pulls):
    """The planned default: the guide's 11000 ms, raised to the next second above the floor."""
    floor = lease_ttl_floor_ms(pulls)
    return max(DEFAULT_LEASE_TTL_MS, (math.floor(floor / 1000) + 1) * 1000)


def master_args(lease_ttl_ms, address, metrics_port):
    """mooncake_master flags of kv_pool.md Step 2.2.2 (the port comes from the plan's master.port),
    listening on the master host's address, not on every interface (its default 0.0.0.0)."""
    return [
        f"--rpc_address={address}",
        f"--metrics_host={address}",
        f"--metrics_port={metrics_port}",
        "--eviction_high_watermark_ratio=0.9",
        "--eviction_ratio=0.1",
        f"--default_kv_lease_ttl={lease_ttl_ms}",
    ]
