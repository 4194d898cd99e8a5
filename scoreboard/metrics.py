"""Every Prometheus collector of the service, on one registry."""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Generic, Protocol, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# Set by the supervisor for its HTTP workers (SCOREBOARD_WORKERS > 1): each process
# writes its values there and /metrics, whichever worker answers, shows the sums.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

OUTCOMES = (
    "ok",
    "unauthorized",
    "bad_request",
    "forbidden",
    "invalid_action_token",
    "invalid_delta",
    "replay",
    "rate_limited",
    "payload_too_large",
    "unsupported_media_type",
    "error",
)


DURATION_LABELS = ("route", "method", "status")
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class CounterChild(Protocol):
    """One series of a counter."""

    def inc(self, amount: float = 1) -> None: ...


class Timer(Protocol):
    """One series of the request-duration histogram."""

    def observe(self, amount: float) -> None: ...


class _Count:
    """One series of a `LocalCounter`."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class _Durations:
    """One series of `RequestDurations`: a count per bucket and the sum."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        # Bucket i counts what is <= bound i (the exposition makes them cumulative).
        self.counts[bisect_left(DURATION_BUCKETS, amount)] += 1
        self.sum += amount


S = TypeVar("S")
F = TypeVar("F", bound=Metric)


class _LocalFamily(Collector, Generic[S, F]):
    """A labelled family of a process that shares its metrics with no other.

    The hot paths count every request on the event loop's thread. prometheus-client's
    values take a lock on each change (the histogram twice); with the lookups around
    them that was about 8 % of a cached top read's throughput. Here a series is plain
    Python numbers and the library still renders the family (a custom collector).
    Workers that share values through PROMETHEUS_MULTIPROC_DIR keep the library's
    classes, whose values live in those files.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._series: dict[tuple[str, ...], S] = {}

    def _new(self) -> S:
        raise NotImplementedError

    def labels(self, *values: str, **by_name: str) -> S:
        """The series of these label values, given in order or by name."""
        if by_name:
            values = tuple(by_name[n] for n in self.labelnames)
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}")
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = self._new()
        return series

    def _family(self) -> F:
        raise NotImplementedError

    def _add(self, family: F, values: tuple[str, ...], series: S) -> None:
        raise NotImplementedError

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for values, series in list(self._series.items()):
            self._add(family, values, series)
        yield family


class LocalCounter(_LocalFamily[_Count, CounterMetricFamily]):
    """A labelled counter whose series are plain numbers (see `_LocalFamily`)."""

    def _new(self) -> _Count:
        return _Count()

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: CounterMetricFamily, values: tuple[str, ...], series: _Count) -> None:
        family.add_metric(values, series.value)


class RequestDurations(_LocalFamily[_Durations, HistogramMetricFamily]):
    """The request-duration histogram with plain-number buckets (see `_LocalFamily`)."""

    _BOUNDS = [floatToGoString(b) for b in DURATION_BUCKETS] + ["+Inf"]  # type: ignore[no-untyped-call]

    def _new(self) -> _Durations:
        return _Durations()

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(
        self, family: HistogramMetricFamily, values: tuple[str, ...], series: _Durations
    ) -> None:
        counts, total = series.counts[:], series.sum  # one moment, if another thread scrapes
        buckets, running = [], 0
        for bound, count in zip(self._BOUNDS, counts, strict=True):
            running += count
            buckets.append((bound, float(running)))
        family.add_metric(values, buckets, total)


class Metrics:
    """The contract's metrics (section 7), plus the process collector."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._exposed = self.registry
        if os.environ.get(MULTIPROC_ENV):
            self._exposed = CollectorRegistry()
            multiprocess.MultiProcessCollector(self._exposed)  # type: ignore[no-untyped-call]
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        # One process alone: the hot paths' families are plain numbers (`_LocalFamily`).
        local = self._exposed is r

        def counter(name: str, documentation: str, label: str) -> Counter | LocalCounter:
            if local:
                family = LocalCounter(name, documentation, (label,))
                r.register(family)
                return family
            return Counter(name, documentation, [label], registry=r)

        self.score_updates = counter(
            "scoreboard_score_updates_total", "Increment attempts by outcome", "outcome"
        )
        self.auth_failures = counter(
            "scoreboard_auth_failures_total",
            "User JWT and action token failures by reason",
            "reason",
        )
        self.cache_requests = counter(
            "scoreboard_cache_requests_total",
            "Top-board reads served from the process cache (hit) or Redis (miss)",
            "result",
        )
        self.stream_clients = Gauge(
            "scoreboard_stream_clients",
            "Connected live clients",
            ["transport"],
            registry=r,
            multiprocess_mode="livesum",
        )
        duration = ("scoreboard_http_request_duration_seconds", "HTTP request latency")
        self.http_duration: Histogram | RequestDurations
        if local:
            self.http_duration = RequestDurations(*duration, DURATION_LABELS)
            r.register(self.http_duration)
        else:
            self.http_duration = Histogram(
                *duration, DURATION_LABELS, registry=r, buckets=DURATION_BUCKETS
            )
        self.sink_events = Counter(
            "scoreboard_sink_events_total",
            "Events written to the database by the sink",
            registry=r,
        )
        self.sink_lag = Gauge(
            "scoreboard_sink_lag_events",
            "Stream entries not yet committed to the database",
            registry=r,
            # live: a replaced sink process's last value must not linger as the max.
            multiprocess_mode="livemax",
        )
        # Children created up front: every label value shows from the first scrape.
        self.outcome: dict[str, CounterChild] = {
            o: self.score_updates.labels(outcome=o) for o in OUTCOMES
        }
        self.cache_hit: CounterChild = self.cache_requests.labels(result="hit")
        self.cache_miss: CounterChild = self.cache_requests.labels(result="miss")
        self.clients_sse = self.stream_clients.labels(transport="sse")
        self.clients_ws = self.stream_clients.labels(transport="ws")

    def request_timer(self, route: str, method: str, status: int) -> Timer:
        """The duration histogram's series for these labels (the middleware keeps it)."""
        return self.http_duration.labels(route, method, str(status))

    def exposition(self) -> bytes:
        """The text format for /metrics: this process's, or every worker's summed."""
        return generate_latest(self._exposed)
