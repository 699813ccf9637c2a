"""Turns the results directory of tests/gpu/run_h200.sh into one JSON document
(bench/results/h200-pd.json): the site.yml recaps, greedy equality per connector, the decode's
KV-transfer counters, the `vllm bench serve` numbers per target and the proxy's stage timings.

  python3 tests/gpu/summarize.py RESULTS_DIR OUT.json
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
BENCH_KEYS = ("completed", "failed", "duration", "request_throughput", "output_throughput", "total_token_throughput",
              "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms", "p99_tpot_ms",
              "mean_itl_ms", "p99_itl_ms", "mean_e2el_ms", "p99_e2el_ms")
KV_KEYS = ("vllm:nixl_xfer_time_seconds_count", "vllm:nixl_bytes_transferred_sum", "vllm:nixl_num_failed_transfers_total",
           "vllm:external_prefix_cache_hits_total", 'vllm:prompt_tokens_by_source_total{source="external_kv_transfer"}')


def recap(path: Path) -> dict[str, int] | None:
    if not path.exists():
        return None
    text = path.read_text(errors="replace")
    found = RECAP.findall(text[text.rfind("PLAY RECAP"):])
    if not found:
        return None
    _, ok, changed, unreachable, failed = found[-1]
    return {"ok": int(ok), "changed": int(changed), "unreachable": int(unreachable), "failed": int(failed)}


def kv(path: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        name, _, value = line.rpartition(" ")
        bare = re.sub(r"\{.*\}", "", name)
        label = re.search(r'source="([^"]+)"', name)
        key = f'{bare}{{source="{label.group(1)}"}}' if label else bare
        if key in KV_KEYS:
            out[key] = float(value)
    return out


def stages(path: Path) -> dict[str, float]:
    """Mean seconds per proxy stage (pd_proxy_stage_seconds), and the proxy's own share of TTFT."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    if not path.exists():
        return {}
    for line in path.read_text().splitlines():
        m = re.match(r'pd_proxy_stage_seconds_(sum|count)\{stage="(\w+)"\} (\S+)', line)
        if m:
            (sums if m.group(1) == "sum" else counts)[m.group(2)] = float(m.group(3))
    means = {k: 1000 * sums[k] / counts[k] for k in sums if counts.get(k)}
    out = {f"mean_{k}_ms": round(v, 3) for k, v in means.items()}
    if {"ttft", "prefill", "handoff"} <= means.keys():
        out["mean_proxy_own_ms"] = round(means["ttft"] - means["prefill"] - means["handoff"], 3)
        out["requests"] = int(counts["ttft"])
    return out


def main() -> int:
    res, dest = Path(sys.argv[1]), Path(sys.argv[2])
    doc = {
        "what": "openfuyao.pd on one NVIDIA H200, air-gapped: site.yml 1P1D (same GPU, 0.15 memory each) + pd-proxy",
        "reproduce": "tests/gpu/run_h200.sh WHEELHOUSE RESULTS_DIR (docs/gpu.md: wheelhouse.yml, pack_parts.sh, "
                     "the device calls); python3 tests/gpu/summarize.py RESULTS_DIR bench/results/h200-pd.json",
        "host": (res / "steps.log").read_text().splitlines()[0].split("] ", 1)[-1] if (res / "steps.log").exists() else "",
        "recaps": {n: recap(res / f"{n}.log") for n in ("site1", "site2", "benchyml", "status", "teardown-nixl",
                                                        "site-mooncake", "site2-mooncake", "teardown-mooncake")},
        "greedy": {},
        "kv": {"nixl": kv(res / "kv-after-nixl.txt"), "mooncake": kv(res / "kv-after-mooncake.txt")},
        "bench": {},
        "bench_load": "vllm bench serve --dataset-name random --random-input-len 256 --random-output-len 64 "
                      "--ignore-eos --seed 0 (/v1/completions, streaming); direct/proxy-*: --num-prompts 200 "
                      "--request-rate 20; sat-*: --num-prompts 400 --request-rate inf --max-concurrency 64",
        "proxy_stages_nixl": stages(res / "proxy-metrics-nixl.txt"),
    }
    for conn in ("nixl", "mooncake"):
        g = res / f"greedy-{conn}.json"
        if g.exists():
            d = json.loads(g.read_text())
            doc["greedy"][conn] = {"prompts": d["prompts"], "equal": d["equal"], "max_tokens": d["max_tokens"]}
    for name in ("direct", "proxy-nixl", "proxy-mooncake", "sat-direct", "sat-proxy-nixl", "sat-proxy-mooncake"):
        b = res / f"bench-{name}.json"
        if b.exists():
            d = json.loads(b.read_text())
            doc["bench"][name] = {k: round(d[k], 3) if isinstance(d[k], float) else d[k] for k in BENCH_KEYS if k in d}
    dest.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
