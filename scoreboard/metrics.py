"""Every Prometheus collector of the service, on one registry."""

from __future__ import annotations

import os
from typing import Any

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
        self.score_updates = Counter(
            "scoreboard_score_updates_total",
            "Increment attempts by outcome",
            ["outcome"],
            registry=r,
        )
        self.auth_failures = Counter(
            "scoreboard_auth_failures_total",
            "User JWT and action token failures by reason",
            ["reason"],
            registry=r,
        )
        self.cache_requests = Counter(
            "scoreboard_cache_requests_total",
            "Top-board reads served from the process cache (hit) or Redis (miss)",
            ["result"],
            registry=r,
        )
        self.stream_clients = Gauge(
            "scoreboard_stream_clients",
            "Connected live clients",
            ["transport"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.http_duration = Histogram(
            "scoreboard_http_request_duration_seconds",
            "HTTP request latency",
            ["route", "method", "status"],
            registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
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
        self._timers: dict[tuple[str, str, int], Any] = {}
        # Children created up front: every label value shows from the first scrape.
        self.outcome = {o: self.score_updates.labels(outcome=o) for o in OUTCOMES}
        self.cache_hit = self.cache_requests.labels(result="hit")
        self.cache_miss = self.cache_requests.labels(result="miss")
        self.clients_sse = self.stream_clients.labels(transport="sse")
        self.clients_ws = self.stream_clients.labels(transport="ws")

    def request_timer(self, route: str, method: str, status: int) -> Any:
        """The duration histogram's child for these labels (looked up once, then cached)."""
        key = (route, method, status)
        child = self._timers.get(key)
        if child is None:
            child = self._timers[key] = self.http_duration.labels(route, method, str(status))
        return child

    def exposition(self) -> bytes:
        """The text format for /metrics: this process's, or every worker's summed."""
        return generate_latest(self._exposed)
