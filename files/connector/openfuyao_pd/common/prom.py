"""A tiny Prometheus text-format (0.0.4) writer: counters, gauges and histograms with labels.

Each proxy worker is a single asyncio process, so no locking is needed; keeping this in-tree
avoids a runtime dependency on prometheus_client (aiohttp stays the only one). Several workers
add up their values: `Registry.snapshot()` is one worker's values as JSON-ready data, and
`Registry.render(others)` adds the other workers' snapshots to this one's (counters and
histograms of every worker, gauges marked `merge` of the live ones only).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

LabelValues = tuple[str, ...]
Snapshot = dict[str, Any]  # metric name -> [[labels, value...], ...]

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{escape_label(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, doc: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.doc = doc
        self.labelnames = tuple(labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.doc}", f"# TYPE {self.name} {self.kind}"]

    def samples(self, others: Sequence[list[list[Any]]] = ()) -> Iterable[str]:  # pragma: no cover - overridden
        return ()


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, doc: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, doc, labelnames)
        self.values: dict[LabelValues, float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def get(self, *labels: str) -> float:
        return self.values.get(labels, 0.0)

    def total(self) -> float:
        return sum(self.values.values())

    def items(self) -> list[tuple[LabelValues, float]]:
        return list(self.values.items())

    def snapshot(self) -> list[list[Any]]:
        return [[list(labels), value] for labels, value in self.items()]

    def samples(self, others: Sequence[list[list[Any]]] = ()) -> Iterable[str]:
        values = dict(self.items())
        for other in others:
            for labels, value in other:
                key = tuple(labels)
                values[key] = values.get(key, 0.0) + value
        for labels, value in sorted(values.items()):
            yield f"{self.name}{_labels(self.labelnames, labels)} {format_value(value)}"


class Gauge(Counter):
    """A gauge whose samples may also come from a callback evaluated at scrape time."""

    kind = "gauge"

    def __init__(
        self,
        name: str,
        doc: str,
        labelnames: Sequence[str] = (),
        collect: Callable[[], Iterable[tuple[LabelValues, float]]] | None = None,
        merge: bool = False,
    ) -> None:
        super().__init__(name, doc, labelnames)
        self.collect = collect
        self.merge = merge  # True: each worker has its own part and the live workers' parts add up

    def set(self, *labels: str, value: float) -> None:
        self.values[labels] = value

    def items(self) -> list[tuple[LabelValues, float]]:
        return list(self.collect()) if self.collect else list(self.values.items())


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self, name: str, doc: str, labelnames: Sequence[str] = (), buckets: Sequence[float] = DEFAULT_BUCKETS
    ) -> None:
        super().__init__(name, doc, labelnames)
        self.buckets = tuple(sorted(buckets))
        # per label set: [bucket counts..., +Inf count], sum
        self.data: dict[LabelValues, tuple[list[int], list[float]]] = {}

    def observe(self, *labels: str, value: float) -> None:
        entry = self.data.get(labels)
        if entry is None:
            entry = ([0] * (len(self.buckets) + 1), [0.0])
            self.data[labels] = entry
        entry[0][bisect.bisect_left(self.buckets, value)] += 1
        entry[1][0] += value

    def count(self, *labels: str) -> int:
        entry = self.data.get(labels)
        return sum(entry[0]) if entry else 0

    def snapshot(self) -> list[list[Any]]:
        return [[list(labels), counts, total[0]] for labels, (counts, total) in self.data.items()]

    def samples(self, others: Sequence[list[list[Any]]] = ()) -> Iterable[str]:
        data = {labels: (list(counts), [total[0]]) for labels, (counts, total) in self.data.items()}
        for other in others:
            for labels, counts, total in other:
                if len(counts) != len(self.buckets) + 1:
                    continue  # another version's buckets: cannot be added
                entry = data.setdefault(tuple(labels), ([0] * len(counts), [0.0]))
                entry[0][:] = [a + b for a, b in zip(entry[0], counts, strict=True)]
                entry[1][0] += total
        for labels, (counts, total) in sorted(data.items()):
            cumulative = 0
            for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
                cumulative += n
                le = 'le="' + format_value(bound) + '"'
                yield f"{self.name}_bucket{_labels(self.labelnames, labels, le)} {cumulative}"
            yield f"{self.name}_sum{_labels(self.labelnames, labels)} {format_value(total[0])}"
            yield f"{self.name}_count{_labels(self.labelnames, labels)} {cumulative}"


class Registry:
    def __init__(self) -> None:
        self.metrics: list[_Metric] = []

    def register(self, metric: _Metric) -> _Metric:
        self.metrics.append(metric)
        return metric

    def counter(self, name: str, doc: str, labelnames: Sequence[str] = ()) -> Counter:
        metric = Counter(name, doc, labelnames)
        self.register(metric)
        return metric

    def gauge(
        self,
        name: str,
        doc: str,
        labelnames: Sequence[str] = (),
        collect: Callable[[], Iterable[tuple[LabelValues, float]]] | None = None,
        merge: bool = False,
    ) -> Gauge:
        metric = Gauge(name, doc, labelnames, collect, merge)
        self.register(metric)
        return metric

    def histogram(
        self, name: str, doc: str, labelnames: Sequence[str] = (), buckets: Sequence[float] = DEFAULT_BUCKETS
    ) -> Histogram:
        metric = Histogram(name, doc, labelnames, buckets)
        self.register(metric)
        return metric

    def snapshot(self) -> Snapshot:
        """This process's values: counters, histograms and the gauges marked `merge`."""
        out: Snapshot = {}
        for metric in self.metrics:
            if isinstance(metric, Gauge) and not metric.merge:
                continue
            if isinstance(metric, Counter | Histogram):
                out[metric.name] = metric.snapshot()
        return out

    def render(self, others: Sequence[tuple[bool, Snapshot]] = ()) -> str:
        """The text format; `others` are (alive, snapshot) of the other workers, added in."""
        lines: list[str] = []
        for metric in self.metrics:
            lines.extend(metric.header())
            if isinstance(metric, Counter | Histogram) and others:
                live_only = isinstance(metric, Gauge)
                parts = [snap[metric.name] for alive, snap in others
                         if metric.name in snap and (alive or not live_only)]
                if isinstance(metric, Gauge) and not metric.merge:
                    parts = []
                lines.extend(metric.samples(parts))
            else:
                lines.extend(metric.samples())
        return "\n".join(lines) + "\n"


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
