"""Locust scenario: the gateway over HTTP (KPI events in, weights out).

Each user posts single KPI events (POST /v1/kpi-events, 202 only once Kafka acknowledged them),
now and then a batch (POST /v1/kpi-events:batch), and reads the weights the scorer uses
(GET /v1/weights, GET /v1/weights/history). With ``--p99-budget-ms`` the run exits non-zero when the
overall P99 exceeds the budget or any request failed (loadtests/budget.py, shared with scorer_grpc.py).

    .venv/bin/locust -f loadtests/gateway_http.py --headless -u 20 -r 20 -t 30s \\
        --host http://127.0.0.1:8000 --p99-budget-ms 50

The events are well-formed but synthetic (user ids ``locust-u-*``): against a stack with an
outer-controller they show up as unattributed KPIs (no open session), which is harmless.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from typing import Any

import budget  # loadtests/budget.py: the shared --p99-budget-ms gate
from locust import FastHttpUser, between, events, task

budget.install("gateway_http")

_ids = itertools.count()
_run = f"{os.getpid()}-{int(time.time())}"


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    parser.add_argument("--kpi-batch-size", type=int, default=50, help="events per batch call (≤ 1000)")
    parser.add_argument(
        "--segments", default="default", help="comma-separated weights segments to read (default: default)"
    )


def _kpi_event() -> dict[str, Any]:
    n = next(_ids)
    user = random.randrange(10_000)
    kind = random.choices(("purchase", "return_visit", "subscription"), weights=(6, 3, 1))[0]
    event: dict[str, Any] = {
        "event_id": f"locust-kpi-{_run}-{n}",
        "user_id": f"locust-u-{user}",
        "session_id": f"locust-s-{user}",
        "kind": kind,
        "event_time_ms": int(time.time() * 1000),
        "item_id": f"i-{random.randrange(100_000)}",
    }
    if kind == "purchase":
        event["revenue"] = round(random.uniform(1, 200), 2)
    return event


class GatewayUser(FastHttpUser):
    """A serving/commerce backend reporting business events and polling weights."""

    wait_time = between(0.001, 0.01)
    host = "http://127.0.0.1:8000"

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.batch_size = max(1, min(1000, opts.kpi_batch_size)) if opts else 50
        raw = opts.segments if opts else "default"
        self.segments = [s for s in raw.split(",") if s] or ["default"]

    @task(10)
    def post_kpi_event(self) -> None:
        with self.client.post(
            "/v1/kpi-events", json=_kpi_event(), name="POST /v1/kpi-events", catch_response=True
        ) as r:
            if r.status_code != 202:
                r.failure(f"status {r.status_code}: {r.text[:200]}")

    @task(1)
    def post_kpi_batch(self) -> None:
        body = {"events": [_kpi_event() for _ in range(self.batch_size)]}
        with self.client.post(
            "/v1/kpi-events:batch",
            json=body,
            name=f"POST /v1/kpi-events:batch[{self.batch_size}]",
            catch_response=True,
        ) as r:
            if r.status_code != 202:
                r.failure(f"status {r.status_code}: {r.text[:200]}")

    @task(10)
    def get_weights(self) -> None:
        segment = random.choice(self.segments)
        with self.client.get(
            "/v1/weights", params={"segment": segment}, name="GET /v1/weights", catch_response=True
        ) as r:
            if r.status_code != 200:
                r.failure(f"status {r.status_code}: {r.text[:200]}")
            elif "weights" not in (r.json() or {}):
                r.failure("no weights in the response")

    @task(1)
    def get_weights_history(self) -> None:
        self.client.get(
            "/v1/weights/history",
            params={"segment": random.choice(self.segments), "limit": 5},
            name="GET /v1/weights/history",
        )
