"""The proxy's metrics: plain per-worker values on the request path, Prometheus text at scrape time.

The request path only adds to dicts (`Counter.inc`, `Histogram.observe`): each proxy worker is
a single asyncio process, so no lock is needed and no `prometheus_client` object is touched per
request. A scrape turns the values into `prometheus_client` metric families
(`_Families.collect`), written by `prometheus_client`'s own exposition (`generate_latest`).

Several workers add up their values: `Registry.snapshot()` is one worker's values as JSON-ready
data, and `Registry.render(others)` adds the other workers' snapshots to this one's (counters and
histograms of every worker, gauges marked `merge` of the live ones only).
"""

from __future__ import annotations

import asyncio
import bisect
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from openfuyao_pd.proxy.routing import Backend

LabelValues = tuple[str, ...]
Snapshot = dict[str, Any]  # metric name -> [[labels, value...], ...]
Parts = Sequence[list[list[Any]]]  # the other workers' snapshots of one metric

# The text format generate_latest writes by default (0.0.4), as /metrics always announced it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)


class Counter:
    kind = "counter"

    def __init__(self, name: str, doc: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.doc = doc
        self.labelnames = tuple(labelnames)
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

    def summed(self, others: Parts = ()) -> list[tuple[LabelValues, float]]:
        """This worker's values plus the others', sorted by labels."""
        values = dict(self.items())
        for other in others:
            for labels, value in other:
                key = tuple(labels)
                values[key] = values.get(key, 0.0) + value
        return sorted(values.items())

    def family(self, others: Parts = ()) -> Metric:
        name = self.name[:-6] if self.name.endswith("_total") else self.name
        fam = CounterMetricFamily(name, self.doc, labels=self.labelnames)
        for labels, value in self.summed(others):
            fam.add_metric(labels, value)
        return fam


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

    def family(self, others: Parts = ()) -> Metric:
        fam = GaugeMetricFamily(self.name, self.doc, labels=self.labelnames)
        for labels, value in self.summed(others):
            fam.add_metric(labels, value)
        return fam


class Histogram:
    kind = "histogram"

    def __init__(
        self, name: str, doc: str, labelnames: Sequence[str] = (), buckets: Sequence[float] = DEFAULT_BUCKETS
    ) -> None:
        self.name = name
        self.doc = doc
        self.labelnames = tuple(labelnames)
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

    def family(self, others: Parts = ()) -> Metric:
        data = {labels: (list(counts), [total[0]]) for labels, (counts, total) in self.data.items()}
        for other in others:
            for labels, counts, total in other:
                if len(counts) != len(self.buckets) + 1:
                    continue  # another version's buckets: cannot be added
                entry = data.setdefault(tuple(labels), ([0] * len(counts), [0.0]))
                entry[0][:] = [a + b for a, b in zip(entry[0], counts, strict=True)]
                entry[1][0] += total
        fam = HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)
        bounds = [floatToGoString(b) for b in (*self.buckets, math.inf)]
        for labels, (counts, total) in sorted(data.items()):
            cumulative, buckets = 0, []
            for bound, n in zip(bounds, counts, strict=True):
                cumulative += n
                buckets.append((bound, cumulative))
            fam.add_metric(labels, buckets, total[0])
        return fam


Metricish = Counter | Histogram


class _Families(Collector):
    """prometheus_client's view of a Registry: its metric families, built at each scrape."""

    def __init__(self, owner: Registry) -> None:
        self.owner = owner
        self.others: Sequence[tuple[bool, Snapshot]] = ()

    def collect(self) -> Iterator[Metric]:
        others = self.others
        for metric in self.owner.metrics:
            parts: list[list[list[Any]]] = []
            if others and not (isinstance(metric, Gauge) and not metric.merge):
                live_only = isinstance(metric, Gauge)
                parts = [snap[metric.name] for alive, snap in others
                         if metric.name in snap and (alive or not live_only)]
            yield metric.family(parts)


class Registry:
    def __init__(self) -> None:
        self.metrics: list[Metricish] = []
        self._families = _Families(self)
        self._exposition = CollectorRegistry(auto_describe=False)
        self._exposition.register(self._families)

    def register(self, metric: Metricish) -> Metricish:
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
            out[metric.name] = metric.snapshot()
        return out

    def render(self, others: Sequence[tuple[bool, Snapshot]] = ()) -> str:
        """The text format; `others` are (alive, snapshot) of the other workers, added in."""
        self._families.others = others
        try:
            return generate_latest(self._exposition).decode()
        finally:
            self._families.others = ()


class ProxyMetrics:
    """Proxy part (server.Proxy): the proxy's metrics and /metrics (summed over workers when several)."""

    shared: Any
    backends: dict[str, Backend]
    refresh_all: Any  # server.Proxy's

    def _setup_metrics(self) -> None:
        reg = self.registry = Registry()
        self.m_requests = reg.counter("pd_proxy_requests_total", "Client requests by endpoint, route and outcome.",
                                      ("endpoint", "route", "outcome"))
        self.m_decisions = reg.counter("pd_proxy_route_decisions_total",
                                       "Routing decisions (local prefill on decode vs disaggregated) and why.",
                                       ("decision", "reason"))
        self.m_stage = reg.histogram("pd_proxy_stage_seconds",
                                     "Latency per stage: prefill, handoff (prefill done to first decode byte), "
                                     "ttft (first byte to the client), e2e.", ("stage",))
        self.m_retries = reg.counter("pd_proxy_retries_total", "Retries on a fresh P/D pair, by failed stage.",
                                     ("stage",))
        self.m_fallbacks = reg.counter("pd_proxy_fallbacks_total", "Falls back to local prefill on decode.",
                                       ("reason",))
        self.m_missing = reg.counter("pd_proxy_missing_kv_params_total",
                                     "Prefill responses without kv_transfer_params (decode recomputes).", ("backend",))
        self.m_backend_errors = reg.counter("pd_proxy_backend_errors_total", "Backend failures by stage.",
                                            ("backend", "stage"))
        self.m_ejections = reg.counter("pd_proxy_backend_ejections_total", "Backends ejected after failures.",
                                       ("backend",))
        self.m_disconnects = reg.counter("pd_proxy_client_disconnects_total", "Clients gone before the end.")
        self.m_stream_errors = reg.counter("pd_proxy_stream_errors_total",
                                           "Streams ended with an error event after the first byte.", ("backend",))
        reg.gauge("pd_proxy_backend_inflight_requests", "In-flight requests per backend.", ("backend", "role"),
                  collect=lambda: [((b.name, b.role), b.inflight_requests) for b in self._refreshed()])
        reg.gauge("pd_proxy_backend_inflight_tokens", "In-flight estimated tokens per backend.", ("backend", "role"),
                  collect=lambda: [((b.name, b.role), b.inflight_tokens) for b in self._refreshed()])
        reg.gauge("pd_proxy_backend_healthy", "1 when the backend is routable (healthy, not ejected/draining).",
                  ("backend", "role"),
                  collect=lambda: [((b.name, b.role), 1 if b.available and b.healthy else 0)
                                   for b in self.backends.values()])

    def _refreshed(self) -> list[Backend]:
        self.refresh_all()
        return list(self.backends.values())

    async def handle_metrics(self, _request: web.Request) -> web.Response:
        others: list[tuple[bool, dict[str, Any]]] = []
        if self.shared is not None:  # the sum over every worker: ask the others for fresh values
            epoch = self.shared.bump_epoch()
            deadline = time.monotonic() + 1.0
            while self.shared.pending_epoch(epoch) and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            others = self.shared.snapshots(os.getpid())
        return web.Response(body=self.registry.render(others).encode(), headers={"Content-Type": CONTENT_TYPE})
