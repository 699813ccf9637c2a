# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""Summarise a `vllm bench serve` result file, compare it with a previous run, plot it (PRIVATE).

`vllm bench serve --save-result [--save-detailed]` writes one JSON object per run. This turns it
into the table operators look at first (TTFT/TPOT/ITL p50/p90/p99, throughput, goodput),
optionally side by side with a previous result, and a PNG plot. Used on the controller by the
action plugin openfuyao.pd.bench_report (playbooks/bench.yml) and by the command line
`python -m openfuyao_pd.benchreport` (files/connector/openfuyao_pd/benchreport.py).

Percentiles are read from the keys vLLM writes (`p90_ttft_ms`, `median_ttft_ms`); when a
percentile was not requested at run time but the detailed per-request lists are in the
file (`--save-detailed`), it is computed from them, so an old result can still be compared.
A file that cannot be used raises BenchReportError with one line saying which file and why.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ansible_collections.openfuyao.pd.plugins.module_utils.text_table import align_columns

PERCENTILES: tuple[int, ...] = (50, 90, 99)
# (key in vLLM's result, label in the table)
LATENCY_METRICS: tuple[tuple[str, str], ...] = (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2EL"))
THROUGHPUT_METRICS: tuple[tuple[str, str], ...] = (
    ("request_throughput", "request throughput (req/s)"),
    ("output_throughput", "output throughput (tok/s)"),
    ("total_token_throughput", "total throughput (tok/s)"),
    ("request_goodput", "goodput (req/s)"),
)
# Metrics where a larger number is better (drives the sign shown in the comparison).
HIGHER_IS_BETTER = {key for key, _label in THROUGHPUT_METRICS}


class BenchReportError(Exception):
    """A result file cannot be used; the message is the one line shown to the user."""


@dataclass
class Summary:
    """What the table shows for one run."""

    source: str
    completed: int
    failed: int
    duration_s: float
    num_prompts: int | None
    # "ttft" -> {50: ms, 90: ms, 99: ms}; a missing percentile is None
    latency_ms: dict[str, dict[int, float | None]] = field(default_factory=dict)
    throughput: dict[str, float | None] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "completed": self.completed,
            "failed": self.failed,
            "duration_s": self.duration_s,
            "num_prompts": self.num_prompts,
            "latency_ms": {m: {f"p{p}": v for p, v in ps.items()} for m, ps in self.latency_ms.items()},
            "throughput": dict(self.throughput),
        }


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Linear-interpolated percentile (numpy's default method); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return float(ordered[low])
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def _per_request_values(result: dict[str, Any], metric: str) -> list[float] | None:
    """Per-request samples in seconds for a metric when `--save-detailed` stored them."""
    ttfts = result.get("ttfts")
    itls = result.get("itls")
    if metric == "ttft" and isinstance(ttfts, list):
        return [float(t) for t in ttfts if isinstance(t, (int, float)) and t > 0]
    if metric == "itl" and isinstance(itls, list):
        return [float(x) for per_req in itls if isinstance(per_req, list) for x in per_req]
    if metric == "e2el" and isinstance(result.get("latencies"), list):
        return [float(x) for x in result["latencies"] if isinstance(x, (int, float)) and x > 0]
    if metric == "tpot" and isinstance(ttfts, list) and isinstance(result.get("latencies"), list):
        out_lens = result.get("output_lens") or []
        samples = []
        for ttft, lat, n_out in zip(ttfts, result["latencies"], out_lens, strict=False):
            # vLLM's definition: time after the first token over the tokens after the first.
            if isinstance(n_out, int) and n_out > 1 and lat > 0:
                samples.append((lat - ttft) / (n_out - 1))
        return samples
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def latency_percentile(result: dict[str, Any], metric: str, pct: int) -> float | None:
    """A latency percentile in ms: vLLM's own key first, else computed from the samples."""
    for key in (f"p{pct}_{metric}_ms", f"median_{metric}_ms" if pct == 50 else None):
        if key and _number(result.get(key)) is not None:
            return _number(result[key])
    samples = _per_request_values(result, metric)
    if samples:
        value = percentile(samples, pct)
        return None if value is None else value * 1000.0
    return None


def summarize(result: dict[str, Any], source: str = "") -> Summary:
    """The table's numbers for one result object (pure)."""
    if not isinstance(result, dict) or "completed" not in result or "duration" not in result:
        raise BenchReportError(
            f"{source or 'result'}: not a `vllm bench serve` result (no 'completed'/'duration'); "
            "pass the file written by --save-result"
        )
    latency = {
        metric: {p: latency_percentile(result, metric, p) for p in PERCENTILES}
        for metric, _label in LATENCY_METRICS
    }
    # Drop metrics the run did not record at all (e.g. e2el without --percentile-metrics).
    latency = {m: ps for m, ps in latency.items() if any(v is not None for v in ps.values())}
    throughput = {key: _number(result.get(key)) for key, _label in THROUGHPUT_METRICS}
    prompts = result.get("num_prompts")
    return Summary(
        source=source,
        completed=int(result.get("completed") or 0),
        failed=int(result.get("failed") or 0),
        duration_s=float(result.get("duration") or 0.0),
        num_prompts=prompts if isinstance(prompts, int) else None,
        latency_ms=latency,
        throughput=throughput,
    )


def load_result(path: str | Path) -> dict[str, Any]:
    """Read a result file; vLLM's --append-result writes one JSON per line: take the last."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BenchReportError(f"{p}: no such file; run playbooks/bench.yml first or fix the path") from None
    except OSError as exc:
        raise BenchReportError(f"{p}: cannot read ({exc.strerror})") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise BenchReportError(f"{p}: empty file; the benchmark did not save a result")
    try:
        data = json.loads(lines[-1]) if len(lines) > 1 else json.loads(text)
    except json.JSONDecodeError as exc:
        raise BenchReportError(f"{p}: not JSON ({exc.msg} at line {exc.lineno}); pass a --save-result file") from None
    return data


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _delta(key: str, now: float | None, before: float | None) -> str:
    """Relative change, marked better/worse for the metric's direction."""
    if now is None or before is None:
        return "n/a"
    if before == 0:
        return "=" if now == 0 else "new"
    change = (now - before) / before * 100.0
    if abs(change) < 0.05:
        return "="
    better = change > 0 if key in HIGHER_IS_BETTER else change < 0
    return f"{change:+.1f}% ({'better' if better else 'worse'})"


def rows(current: Summary, previous: Summary | None = None) -> list[list[str]]:
    """Table rows: metric, value, then previous and delta when comparing."""
    out: list[list[str]] = []

    def add(key: str, label: str, now: float | None, before: float | None, digits: int = 2) -> None:
        row = [label, _fmt(now, digits)]
        if previous is not None:
            row += [_fmt(before, digits), _delta(key, now, before)]
        out.append(row)

    add("completed", "successful requests", current.completed, previous.completed if previous else None, 0)
    add("failed", "failed requests", current.failed, previous.failed if previous else None, 0)
    add("duration", "duration (s)", current.duration_s, previous.duration_s if previous else None)
    for metric, label in LATENCY_METRICS:
        if metric not in current.latency_ms:
            continue
        for p in PERCENTILES:
            before = previous.latency_ms.get(metric, {}).get(p) if previous else None
            add(metric, f"{label} p{p} (ms)", current.latency_ms[metric][p], before)
    for key, label in THROUGHPUT_METRICS:
        before = previous.throughput.get(key) if previous else None
        now = current.throughput.get(key)
        if key == "request_goodput" and now is None:
            label += " [no --goodput SLO set]"
        add(key, label, now, before)
    return out


def format_table(current: Summary, previous: Summary | None = None) -> str:
    """Plain-text table aligned in columns (what the playbook prints)."""
    header = ["metric", "this run"] + (["previous", "change"] if previous is not None else [])
    return "\n".join(align_columns([header, *rows(current, previous)], rule=True))


class PlotUnavailable(Exception):
    """matplotlib is not importable where the report runs."""


def plot(current: Summary, path: str | Path, previous: Summary | None = None,
         result: dict[str, Any] | None = None) -> Path:
    """Bar chart of the latency percentiles (vs the previous run) plus per-request TTFT if stored."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on servers
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable(
            f"no plot: matplotlib is not installed for {sys.executable} "
            f"(pip install matplotlib there); the table above is complete"
        ) from None
    metrics = [m for m, _label in LATENCY_METRICS if m in current.latency_ms]
    labels = dict(LATENCY_METRICS)
    ttfts = [t * 1000.0 for t in (result or {}).get("ttfts") or [] if isinstance(t, (int, float))]
    ncols = len(metrics) + (1 if ttfts else 0)
    fig, axes = plt.subplots(1, max(ncols, 1), figsize=(4 * max(ncols, 1), 3.6), squeeze=False)
    runs = [("this run", current)] + ([("previous", previous)] if previous is not None else [])
    width = 0.8 / len(runs)
    for ax, metric in zip(axes[0], metrics, strict=False):
        for i, (name, summ) in enumerate(runs):
            values = [summ.latency_ms.get(metric, {}).get(p) or 0.0 for p in PERCENTILES]
            xs = [j + i * width for j in range(len(PERCENTILES))]
            ax.bar(xs, values, width=width, label=name)
        ax.set_xticks([j + width * (len(runs) - 1) / 2 for j in range(len(PERCENTILES))])
        ax.set_xticklabels([f"p{p}" for p in PERCENTILES])
        ax.set_title(f"{labels[metric]} (ms)")
        ax.legend(fontsize="small")
    if ttfts:
        ax = axes[0][len(metrics)]
        ax.plot(range(1, len(ttfts) + 1), ttfts, marker="o")
        ax.set_title("TTFT per request (ms)")
        ax.set_xlabel("request")
    fig.suptitle(
        f"vllm bench serve: {current.completed} ok, {current.failed} failed, "
        f"{_fmt(current.throughput.get('output_throughput'))} tok/s out"
    )
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def report(result: str | Path, previous: str | Path | None = None, plot_path: str | Path | None = None,
           check_mode: bool = False) -> dict[str, Any]:
    """The summary of `result` (and `previous`), its table and what became of the plot.

    Keys: current, previous (summaries as dicts; previous None without one), table (text), plot (one
    line: where it was written, why not, or, in check mode, where it would be; None without
    `plot_path`) and plot_written (bool). Raises BenchReportError for a file that cannot be used."""
    raw = load_result(result)
    current = summarize(raw, str(result))
    before = summarize(load_result(previous), str(previous)) if previous else None
    table = format_table(current, before)
    plot_msg, written = None, False
    if plot_path and check_mode:
        plot_msg = f"check mode: the plot would be written to {plot_path}"
    elif plot_path:
        try:
            plot_msg = f"plot written to {plot(current, plot_path, before, raw)}"
            written = True
        except PlotUnavailable as exc:
            plot_msg = str(exc)
        except OSError as exc:
            plot_msg = f"no plot: cannot write {plot_path} ({exc.strerror})"
    return {"current": current.as_dict(), "previous": before.as_dict() if before else None,
            "table": table, "plot": plot_msg, "plot_written": written}
