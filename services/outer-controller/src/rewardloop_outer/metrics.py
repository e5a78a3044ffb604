"""Prometheus metrics of the outer controller (own registry; served on OUTER_METRICS_PORT)."""

from __future__ import annotations

import platform

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from . import __version__


class OuterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        if registry is None:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        self.events_consumed = Counter(
            "rewardloop_outer_events_consumed_total", "Records consumed, by topic.", ["topic"], registry=r
        )
        self.invalid_records = Counter(
            "rewardloop_outer_invalid_records_total",
            "Records that were not valid JSON or failed schema validation, by topic.",
            ["topic"],
            registry=r,
        )
        self.duplicates = Counter(
            "rewardloop_outer_duplicate_events_total", "Events ignored as duplicates (event_id).", registry=r
        )
        self.sessions_closed = Counter(
            "rewardloop_outer_sessions_closed_total", "Sessions closed and emitted.", registry=r
        )
        self.open_sessions = Gauge("rewardloop_outer_open_sessions", "Currently open sessions.", registry=r)
        self.kpi_unattributed = Counter(
            "rewardloop_outer_kpi_unattributed_total",
            "KPI events for users without an open session.",
            registry=r,
        )
        self.business_reward = Histogram(
            "rewardloop_outer_business_reward",
            "Business reward per closed session.",
            buckets=(-5, -2, -1, 0, 0.5, 1, 1.5, 2, 3, 4, 5),
            registry=r,
        )
        self.weight_updates = Counter(
            "rewardloop_outer_weight_updates_total", "Weights documents pushed by the outer rule.", registry=r
        )
        self.weights_version = Gauge(
            "rewardloop_outer_weights_version",
            "Version of the last weights document the controller wrote or read, by segment.",
            ["segment"],
            registry=r,
        )
        self.session_produce_errors = Counter(
            "rewardloop_outer_session_produce_errors_total",
            "Session records whose delivery failed (they are retried).",
            registry=r,
        )
        self.build_info = Gauge(
            "rewardloop_outer_build_info", "Build information (always 1).", ["version", "python"], registry=r
        )
        self.build_info.labels(version=__version__, python=platform.python_version()).set(1)
