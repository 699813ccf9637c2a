"""The simulator's /metrics on prometheus_client, the exporter vLLM itself uses.

Each engine has its own CollectorRegistry, so several simulated engines in one process (the
connector tests) keep separate series. Every series carries vLLM's `model_name` and `engine`
labels; a metric that is counted by a further label (reason, transport, ...) declares its
names up front, and, where vLLM does the same, the values it pre-creates at zero.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

# vLLM exports no `<name>_created` series; without this prometheus_client adds one per counter
# and histogram (a process-wide switch: the simulator's process exports nothing else).
prometheus_client.disable_created_metrics()

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)

_Metric = Counter | Gauge | Histogram


class _CountedElsewhere(Collector):
    """A counter whose count another object keeps (read at scrape time)."""

    def __init__(self, name: str, doc: str, labels: Mapping[str, str], fn: Callable[[], float]) -> None:
        self._name, self._doc, self._labels, self._fn = name, doc, labels, fn

    def collect(self):
        family = CounterMetricFamily(self._name, self._doc, labels=list(self._labels))
        family.add_metric(list(self._labels.values()), float(self._fn()))
        yield family


class Registry:
    """Named metrics of one engine; call sites name a metric and its extra labels as a dict."""

    def __init__(self, base_labels: Mapping[str, str]) -> None:
        self._base_names = tuple(base_labels)
        self._base_values = tuple(base_labels.values())
        self._registry = CollectorRegistry(auto_describe=False)
        self._metrics: dict[str, _Metric] = {}
        self._extra: dict[str, tuple[str, ...]] = {}
        self._fns: dict[str, Callable[[], float]] = {}

    def _add(self, cls: type[_Metric], name: str, doc: str, labels: Sequence[str], **kw: object) -> _Metric:
        metric = cls(name, doc, [*self._base_names, *labels], registry=self._registry, **kw)
        self._metrics[name] = metric
        self._extra[name] = tuple(labels)
        return metric

    def counter(self, name: str, doc: str, fn: Callable[[], float] | None = None, *,
                labels: Sequence[str] = (), preset: Sequence[Mapping[str, str]] = ()) -> None:
        """A counter; `fn` makes it read a count kept elsewhere at scrape time. Without extra labels
        its one series is exported from the start (at 0), with them each `preset` label set is."""
        if fn is not None:
            self._fns[name] = fn
            self._registry.register(_CountedElsewhere(name, doc, dict(zip(self._base_names, self._base_values,
                                                                              strict=True)), fn))
            return
        metric = self._add(Counter, name, doc, labels)
        for extra in preset if labels else ({},):
            self._child(metric, name, extra)

    def gauge(self, name: str, doc: str, fn: Callable[[], float] | None = None) -> None:
        metric = self._add(Gauge, name, doc, ())
        child = metric.labels(*self._base_values)
        if fn is not None:
            self._fns[name] = fn
            child.set_function(fn)

    def histogram(self, name: str, doc: str, buckets: tuple[float, ...]) -> None:
        """A histogram; its series appears with the first observation, as the hand-counted one did."""
        self._add(Histogram, name, doc, (), buckets=buckets)

    def _child(self, metric: _Metric, name: str, labels: Mapping[str, str] | None):
        extra = self._extra[name]
        if not labels and not extra:
            return metric.labels(*self._base_values)
        if len(labels or ()) != len(extra) or any(k not in extra for k in labels or ()):
            # A label the metric does not declare would otherwise be dropped without a word.
            raise ValueError(f"metric {name}: labels {sorted(labels or ())} but it declares {list(extra)}")
        return metric.labels(*self._base_values, *(labels[k] for k in extra))

    def inc(self, name: str, amount: float = 1.0, labels: dict[str, str] | None = None) -> None:
        self._child(self._metrics[name], name, labels).inc(amount)

    def set(self, name: str, value: float, labels: dict[str, str] | None = None) -> None:
        self._child(self._metrics[name], name, labels).set(value)

    def observe(self, name: str, value: float, labels: dict[str, str] | None = None) -> None:
        self._child(self._metrics[name], name, labels).observe(value)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        if name in self._fns:
            return float(self._fns[name]())
        sample = self._registry.get_sample_value(name, {**dict(zip(self._base_names, self._base_values, strict=True)),
                                                        **(labels or {})})
        return sample or 0.0

    def render(self) -> str:
        return prometheus_client.generate_latest(self._registry).decode()
