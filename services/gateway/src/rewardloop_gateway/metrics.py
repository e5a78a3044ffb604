"""Prometheus metrics of the gateway (one registry per app, so tests can build many apps)."""

from __future__ import annotations

import platform
import time
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__

UNMATCHED_ROUTE = "<unmatched>"


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.http_requests = Counter(
            "rewardloop_gateway_http_requests_total",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "rewardloop_gateway_http_request_duration_seconds",
            "HTTP request duration by route template.",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.kpi_events = Counter(
            "rewardloop_gateway_kpi_events_total",
            "KPI events acknowledged by Kafka, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.weights_pushes = Counter(
            "rewardloop_gateway_weights_pushes_total",
            "Weights documents written through PUT /v1/weights.",
            registry=self.registry,
        )
        self.build_info = Gauge(
            "rewardloop_gateway_build_info",
            "Build information (always 1).",
            ["version", "python"],
            registry=self.registry,
        )
        self.build_info.labels(version=__version__, python=platform.python_version()).set(1)
        for kind in ("purchase", "return_visit", "subscription"):
            self.kpi_events.labels(kind=kind)


class MetricsMiddleware:
    """Pure ASGI middleware: counts and times every HTTP request by its route *template*."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route: Any = scope.get("route")
            label = getattr(route, "path", None) or UNMATCHED_ROUTE
            self.metrics.http_requests.labels(route=label, method=scope["method"], status=str(status)).inc()
            self.metrics.http_duration.labels(route=label).observe(time.perf_counter() - start)
