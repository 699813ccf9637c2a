# Copyright: openFuyao PD maintainers
# Apache License 2.0 (see LICENSE)
"""Per-role engine environment defaults of vllm-ascend's PD guides, per Ascend generation.

The planner puts these under an instance's environment before pd_hccl_env and pd_env, so every
value here is a default the inventory can override (pd_[<role>_]env / pd_[<role>_]hccl_env), and
``pd_ascend_env_profile: none`` leaves them all out (the seed inventory does: the openFuyao
documents it reproduces set none of them).

Sources (vllm-ascend HEAD 182b75ea84, 2026-08-22):
- GUIDE: docs/source/tutorials/features/pd_disaggregation_mooncake_multi_node.md, "Prefiller/Decoder
  Deployment", both "Layerwise" and "Non-layerwise" scripts: every node exports OMP_PROC_BIND=false,
  OMP_NUM_THREADS=10, PYTORCH_NPU_ALLOC_CONF=expandable_segments:True, TASK_QUEUE_ENABLE=1,
  HCCL_OP_EXPANSION_MODE="AIV", VLLM_USE_V1=1; HCCL_BUFFSIZE=256 on the prefillers and 600 on the
  decoders. The guide is written on A3 servers and sets no generation-specific variable, so
  these apply on A2 and A3 alike.
- KV_POOL: docs/source/user_guide/feature_guide/kv_pool.md, "Step 2.3.1" run_prefill.sh/run_decode.sh
  and "5.1. Environment Variables Description": A2 (and A3 over RoCE) exports
  HCCL_INTRA_ROCE_ENABLE=1 ("Required by direct transmission scheme on 800 I/T A2 series") and runs
  ``echo 200000 > /proc/sys/vm/nr_hugepages``; A3 over HCCS exports ACL_OP_INIT_MODE=1 and
  ASCEND_ENABLE_USE_FABRIC_MEM=1 ("Recommended. Enables unified memory address direct
  transmission scheme").
"""

from __future__ import annotations

PROFILES = ("guide", "none")
GENERATIONS = ("A2", "A3")

GUIDE_COMMON = {
    "OMP_PROC_BIND": "false",
    "OMP_NUM_THREADS": "10",
    "PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True",
    "TASK_QUEUE_ENABLE": "1",
    "HCCL_OP_EXPANSION_MODE": "AIV",
    "VLLM_USE_V1": "1",
}
GUIDE_BUFFSIZE = {"prefill": "256", "decode": "600"}
KV_POOL_ENV = {
    "A2": {"HCCL_INTRA_ROCE_ENABLE": "1"},
    "A3": {"ACL_OP_INIT_MODE": "1", "ASCEND_ENABLE_USE_FABRIC_MEM": "1"},
}
KV_POOL_HUGEPAGES = {"A2": 200000, "A3": None}  # vm.nr_hugepages; the A3 HCCS branch sets none


def generation(var_value, facts_product, devices_per_host):
    """A2 or A3: pd_ascend_generation, else npu_topology's product, else 16 devices a host means A3."""
    if var_value is not None:
        return str(var_value)
    if facts_product in GENERATIONS:
        return facts_product
    return "A3" if devices_per_host == 16 else "A2"


def problems(profile, profile_var, gen, gen_var):
    out = []
    if profile not in PROFILES:
        out.append(f"{profile_var}={profile!r} is not one of {', '.join(PROFILES)}")
    if gen not in GENERATIONS:
        out.append(f"{gen_var}={gen!r} is not one of {', '.join(GENERATIONS)} (Atlas 800I/T A2 or A3)")
    return out


def role_defaults(connector, role, gen, profile="guide"):
    """The environment defaults of one engine instance (empty under profile none)."""
    if profile != "guide":
        return {}
    env = dict(GUIDE_COMMON)
    env["HCCL_BUFFSIZE"] = GUIDE_BUFFSIZE[role]
    if connector == "ascend_store":
        env.update(KV_POOL_ENV.get(gen, {}))
    return env


def hugepages(connector, gen, profile="guide"):
    """vm.nr_hugepages the KV-pool guide sets on the host, or None."""
    if profile != "guide" or connector != "ascend_store":
        return None
    return KV_POOL_HUGEPAGES.get(gen)
