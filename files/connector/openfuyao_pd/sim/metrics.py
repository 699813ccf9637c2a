"""A tiny Prometheus text-format registry (counters, gauges, histograms with labels)."""

from __future__ import annotations

import bisect
from collections.abc import Callable

from openfuyao_pd.common.prom import escape_label, format_value

Labels = tuple[tuple[str, str], ...]

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)


def _fmt_labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels)
    return "{" + inner + "}"


class Registry:
    def __init__(self, base_labels: dict[str, str]) -> None:
        self._base: Labels = tuple(base_labels.items())
        self._meta: dict[str, tuple[str, str]] = {}
        self._values: dict[str, dict[Labels, float]] = {}
        self._hist: dict[str, tuple[tuple[float, ...], dict[Labels, list[float]]]] = {}
        self._gauge_fns: dict[str, Callable[[], float]] = {}

    def _labels(self, labels: dict[str, str] | None) -> Labels:
        if not labels:  # the common case on the hot path
            return self._base
        return self._base + tuple(sorted(labels.items()))

    def counter(self, name: str, doc: str, fn: Callable[[], float] | None = None) -> None:
        self._meta[name] = ("counter", doc)
        self._values.setdefault(name, {})
        if fn is not None:
            self._gauge_fns[name] = fn

    def gauge(self, name: str, doc: str, fn: Callable[[], float] | None = None) -> None:
        self._meta[name] = ("gauge", doc)
        self._values.setdefault(name, {})
        if fn is not None:
            self._gauge_fns[name] = fn

    def histogram(self, name: str, doc: str, buckets: tuple[float, ...]) -> None:
        self._meta[name] = ("histogram", doc)
        self._hist[name] = (buckets, {})

    def inc(self, name: str, amount: float = 1.0, labels: dict[str, str] | None = None) -> None:
        series = self._values[name]
        key = self._labels(labels)
        series[key] = series.get(key, 0.0) + amount

    def set(self, name: str, value: float, labels: dict[str, str] | None = None) -> None:
        self._values[name][self._labels(labels)] = value

    def observe(self, name: str, value: float, labels: dict[str, str] | None = None) -> None:
        buckets, series = self._hist[name]
        key = self._labels(labels)
        counts = series.setdefault(key, [0.0] * (len(buckets) + 2))  # buckets..., +Inf, sum
        counts[bisect.bisect_left(buckets, value)] += 1
        counts[-1] += value

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        if name in self._gauge_fns:
            return float(self._gauge_fns[name]())
        return self._values[name].get(self._labels(labels), 0.0)

    def render(self) -> str:
        lines: list[str] = []
        for name, (kind, doc) in self._meta.items():
            lines.append(f"# HELP {name} {doc}")
            lines.append(f"# TYPE {name} {kind}")
            if kind == "histogram":
                buckets, series = self._hist[name]
                for key, counts in series.items():
                    running = 0.0
                    for bound, count in zip(buckets, counts[:len(buckets)], strict=True):
                        running += count
                        lines.append(f"{name}_bucket{_fmt_labels((*key, ('le', repr(bound))))} {format_value(running)}")
                    running += counts[len(buckets)]
                    lines.append(f"{name}_bucket{_fmt_labels((*key, ('le', '+Inf')))} {format_value(running)}")
                    lines.append(f"{name}_count{_fmt_labels(key)} {format_value(running)}")
                    lines.append(f"{name}_sum{_fmt_labels(key)} {format_value(counts[-1])}")
                continue
            if name in self._gauge_fns:
                lines.append(f"{name}{_fmt_labels(self._base)} {format_value(self._gauge_fns[name]())}")
                continue
            series = self._values[name]
            if not series and kind == "counter" and not name.endswith("_by_source_total"):
                lines.append(f"{name}{_fmt_labels(self._base)} 0")
            for key, value in series.items():
                lines.append(f"{name}{_fmt_labels(key)} {format_value(value)}")
        return "\n".join(lines) + "\n"
