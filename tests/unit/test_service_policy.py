"""The collection's one restart policy reaches every service through roles/_service's `run`.

_service's defaults read the documented inventory variables (vllm_pd_restart*, vllm_pd_start_*,
vllm_pd_supervisor_*) once, with `| default(...)` fallbacks; no calling role maps them again.
Those fallbacks and vllm_pd's defaults must agree, or a service would run under another policy
than the documented one whenever the inventory leaves a knob unset.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CALLERS = ["roles/proxy/tasks/service.yml", "roles/mooncake/tasks/master.yml", "roles/vllm_pd/tasks/service.yml"]
# _service input -> the documented inventory variable (vllm_pd's default) it comes from.
POLICY = {
    "service_restart": "vllm_pd_restart",
    "service_restart_delay": "vllm_pd_restart_delay",
    "service_restart_burst": "vllm_pd_restart_burst",
    "service_restart_window": "vllm_pd_restart_window",
    "service_start_seconds": "vllm_pd_start_seconds",
    "service_start_retries": "vllm_pd_start_retries",
    "service_start_at_boot": "vllm_pd_start_at_boot",
    "service_boot_hook_dir": "vllm_pd_boot_hook_dir",
    "service_supervisor_source": "vllm_pd_supervisor_source",
    "service_supervisor_package": "vllm_pd_supervisor_package",
    "service_supervisor_link_dir": "vllm_pd_supervisor_link_dir",
    "service_python": "vllm_pd_python",
}
_MAPPED = re.compile(r"^\{\{ (\w+) \| default\((.+)\) \}\}$")


def _defaults(role: str) -> dict:
    return yaml.safe_load((ROOT / "roles" / role / "defaults/main.yml").read_text())


def _run_vars(path: str) -> dict:
    tasks = yaml.safe_load((ROOT / path).read_text())
    calls = [t for t in tasks if (t.get("ansible.builtin.include_role") or {}).get("tasks_from") == "run.yml"]
    assert len(calls) == 1, path
    return calls[0]["vars"]


@pytest.mark.parametrize("service_var", sorted(POLICY))
def test_service_reads_the_inventory_variable_with_vllm_pds_default(service_var: str) -> None:
    inventory_var = POLICY[service_var]
    mapped = _MAPPED.match(_defaults("_service")[service_var])
    assert mapped, f"roles/_service/defaults: {service_var} is not `{{{{ {inventory_var} | default(...) }}}}`"
    assert mapped.group(1) == inventory_var
    fallback = yaml.safe_load(mapped.group(2).replace("'", '"'))
    assert fallback == _defaults("vllm_pd")[inventory_var]


@pytest.mark.parametrize("path", CALLERS)
def test_no_caller_maps_the_policy_again(path: str) -> None:
    assert not set(_run_vars(path)) & set(POLICY), path
