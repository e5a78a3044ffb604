"""Start a real native stack (Kafka, Redis, the Rust scorer, gateway, outer-controller) for the e2e tests.

It runs beside any `make run` stack: its own RUN_DIR and ports. The outer loop is configured for a
test-sized world: sessions close after a few seconds of inactivity and weights update every 10 sessions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rewardloop_common.testing import local_stack

REPO = Path(__file__).resolve().parents[2]

E2E_ENV = {
    "RUN_DIR": str(REPO / ".run" / "e2e"),
    "KAFKA_PORT": "19092",
    "KAFKA_CONTROLLER_PORT": "19093",
    "REDIS_PORT": "16379",
    "INNER_REWARD_GRPC_ADDR": "127.0.0.1:15051",
    "INNER_REWARD_METRICS_ADDR": "127.0.0.1:19464",
    "GATEWAY_PORT": "18000",
    "OUTER_METRICS_PORT": "19102",
    # the e2e stack stays lean (2 cores); the ops test runs the trainer
    "WITH_TRAINER": "0",
    "OUTER_SESSION_GAP_SECONDS": "4",
    "OUTER_UPDATE_BATCH_SESSIONS": "10",
    # issue #4 guards, sized for a 30-session test world: the correlation rule (30 sessions carry no
    # exploration data for the DRL-PUT tuner), a push allowed after 10 sessions, shadow mode off
    "OUTER_TUNER": "correlation",
    "OUTER_MIN_SESSIONS": "10",
    "OUTER_SHADOW_MODE": "false",
    "GATEWAY_ADMIN_TOKEN": "e2e-admin-token",
    "REWARDLOOP_ENV": "local",
    "INNER_REWARD_WEIGHTS_POLL_SECONDS": "5",
}


@dataclass(frozen=True)
class Stack:
    grpc_addr: str
    gateway_url: str
    kafka: str
    redis_url: str
    admin_token: str
    inner_metrics_url: str
    outer_metrics_url: str
    gap_s: float
    batch_sessions: int


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    # a clean slate each run: topics, Redis data and the consumer group are the test's own
    with local_stack(REPO, E2E_ENV, wipe=("kafka-data", "redis", "spool")) as env:
        yield Stack(
            grpc_addr=env["INNER_REWARD_GRPC_ADDR"],
            gateway_url=f"http://127.0.0.1:{env['GATEWAY_PORT']}",
            kafka=f"127.0.0.1:{env['KAFKA_PORT']}",
            redis_url=f"redis://127.0.0.1:{env['REDIS_PORT']}/0",
            admin_token=env["GATEWAY_ADMIN_TOKEN"],
            inner_metrics_url=f"http://{env['INNER_REWARD_METRICS_ADDR']}/metrics",
            outer_metrics_url=f"http://127.0.0.1:{env['OUTER_METRICS_PORT']}/metrics",
            gap_s=float(env["OUTER_SESSION_GAP_SECONDS"]),
            batch_sessions=int(env["OUTER_UPDATE_BATCH_SESSIONS"]),
        )
