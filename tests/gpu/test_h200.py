"""The GPU run (tests/gpu/run_h200.sh) as a test, for a CUDA host: site.yml twice (the second
changes nothing), greedy equality through NIXL and Mooncake against a plain instance, KV moved,
bench through the proxy, status and teardown. Skipped where no NVIDIA GPU is present, and
where PD_GPU_WHEELHOUSE (playbooks/wheelhouse.yml's output for inventories/cuda-local plus the
ansible-core and resolvelib wheels) is not given. Deploys to this host as root (/etc, /var/lib).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _gpu_missing() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return "no NVIDIA GPU here (nvidia-smi not found): the GPU run needs a CUDA host, see docs/gpu.md"
    probe = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    if probe.returncode != 0 or "GPU" not in probe.stdout:
        return f"nvidia-smi lists no GPU: {probe.stdout.strip() or probe.stderr.strip()}"
    if not os.environ.get("PD_GPU_WHEELHOUSE"):
        return "PD_GPU_WHEELHOUSE is not set: build it with playbooks/wheelhouse.yml (docs/gpu.md)"
    if os.geteuid() != 0:
        return "the GPU run deploys to this host's /etc and /var/lib: run it as root"
    return None


pytestmark = pytest.mark.skipif(_gpu_missing() is not None, reason=_gpu_missing() or "")


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    # PD_GPU_RESULTS keeps the results (logs, bench JSON) for a later look.
    res = Path(os.environ["PD_GPU_RESULTS"]) if os.environ.get("PD_GPU_RESULTS") else tmp_path_factory.mktemp("h200")
    run = subprocess.run(["bash", str(HERE / "run_h200.sh"), os.environ["PD_GPU_WHEELHOUSE"], str(res)],
                         capture_output=True, text=True, timeout=3600, check=False)
    assert (res / "DONE").exists(), run.stdout[-4000:] + run.stderr[-2000:]
    out = res / "summary.json"
    subprocess.run(["python3", str(HERE / "summarize.py"), str(res), str(out)], capture_output=True, check=True)
    return json.loads(out.read_text())


def test_site_converges_then_changes_nothing(summary):
    for run in ("site1", "site-mooncake"):
        assert summary["recaps"][run]["failed"] == 0, summary["recaps"]
    for run in ("site2", "site2-mooncake"):
        assert summary["recaps"][run]["changed"] == 0, (run, summary["recaps"][run])
        assert summary["recaps"][run]["failed"] == 0, (run, summary["recaps"][run])


@pytest.mark.parametrize("connector", ["nixl", "mooncake"])
def test_greedy_equal_to_a_plain_instance(summary, connector):
    g = summary["greedy"][connector]
    assert g["equal"] == g["prompts"] > 0


def test_kv_moved(summary):
    assert summary["kv"]["nixl"]["vllm:nixl_xfer_time_seconds_count"] > 0
    assert summary["kv"]["nixl"]["vllm:nixl_num_failed_transfers_total"] == 0
    key = 'vllm:prompt_tokens_by_source_total{source="external_kv_transfer"}'
    assert summary["kv"]["nixl"][key] > 0 and summary["kv"]["mooncake"][key] > 0


def test_bench_completed_everywhere(summary):
    for target in ("direct", "proxy-nixl", "proxy-mooncake", "sat-direct", "sat-proxy-nixl", "sat-proxy-mooncake"):
        assert summary["bench"][target]["failed"] == 0 and summary["bench"][target]["completed"] > 0
