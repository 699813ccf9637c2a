"""bench.yml on the embedded default (real vLLM CPU 1P1D + proxy): table, plot, comparison.

A private deployment of inventories/local (temporary directories, free ports), then
`vllm bench serve` through the proxy with the seed's defaults shrunk to the tiny model's
--max-model-len, the result fetched to the controller, summarised and plotted.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_day2_support import ROOT, Deployment, free_base, private_dirs

VLLM_PYTHON = Path("/opt/openfuyao-pd/vllm/bin/python")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="needs the vLLM CPU venv at /opt/openfuyao-pd/vllm"),
    pytest.mark.skipif(shutil.which("supervisord") is None, reason="needs supervisord (make system-deps)"),
]


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    work = tmp_path_factory.mktemp("day2-bench")
    used: set[int] = set()
    prefill, decode, proxy = free_base(1, used), free_base(1, used), free_base(1, used)
    extra = {
        **private_dirs(work, venv=False),
        "pd_data_dir": str(work / "data"),
        "pd_prefill_http_port_base": prefill,
        "pd_decode_http_port_base": decode,
        "pd_proxy_port": proxy,
    }
    for key in ("vllm_pd_conf_dir", "vllm_pd_log_dir", "vllm_pd_state_dir", "vllm_pd_run_dir", "pd_data_dir"):
        Path(extra[key]).mkdir(parents=True, exist_ok=True)
    dep = Deployment(ROOT / "inventories" / "local" / "cluster.ini", work, extra, proxy)
    dep.write_vars()
    try:
        dep.play("site.yml", timeout=1800)
        yield dep
    finally:
        dep.shutdown()


def test_bench_prints_the_table_writes_the_plot_and_compares(local: Deployment) -> None:
    out_dir = local.workdir / "results"
    proc = local.play("bench.yml", "-e", f"bench_output_dir={out_dir}", timeout=900)
    # the seed's 4096 + 100 do not fit the tiny model's 512 tokens: shrunk, and said so
    assert "do not fit --max-model-len" in proc.stdout
    results = sorted(out_dir.glob("bench-*.json"))
    assert len(results) == 1
    result = json.loads(results[0].read_text())
    assert result["completed"] == 10 and result["failed"] == 0
    assert result["num_prompts"] == 10 and result["request_rate"] == 1.0
    for metric in ("ttft", "tpot", "itl"):
        for p in (50, 90, 99):
            assert result[f"p{p}_{metric}_ms"] > 0
    assert result["request_goodput"] is not None
    for label in ("TTFT p50 (ms)", "TTFT p99 (ms)", "TPOT p90 (ms)", "ITL p99 (ms)",
                  "request throughput (req/s)", "output throughput (tok/s)", "goodput (req/s)"):
        assert label in proc.stdout
    png = results[0].with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (local.workdir / "bench-first.txt").write_text(proc.stdout)

    proc = local.play("bench.yml", "-e", f"bench_output_dir={out_dir}", "-e", f"bench_previous={results[0]}",
                      "-e", "bench_num_prompts=5", timeout=900)
    assert len(sorted(out_dir.glob("bench-*.json"))) == 2
    header = next(line for line in proc.stdout.splitlines() if line.strip().startswith("metric"))
    assert "previous" in header and "change" in header
    row = next(line for line in proc.stdout.splitlines() if line.strip().startswith("successful requests"))
    assert row.split()[2:4] == ["5", "10"]


def test_bench_without_a_proxy_says_so(local: Deployment) -> None:
    proc = local.play("bench.yml", "-e", "pd_proxy_port=1", check=False, timeout=300)
    assert proc.returncode != 0
    assert "proxy at http://127.0.0.1:1 does not answer /health" in proc.stdout
