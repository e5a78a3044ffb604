"""Kafka + Redis for the outer-controller integration tests, started like the native stack."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rewardloop_common.testing import LocalStackError, local_stack

# ------------------------------------------------------------------- real Kafka + Redis (integration)

REPO = Path(__file__).resolve().parents[3]
IT_ENV = {
    "RUN_DIR": str(REPO / ".run" / "outer-it"),
    "KAFKA_PORT": "29292",
    "KAFKA_CONTROLLER_PORT": "29293",
    "REDIS_PORT": "26579",
    "STACK_COMPONENTS": "redis kafka",
    "START_TIMEOUT": "120",
}


@dataclass(frozen=True)
class KafkaStack:
    bootstrap: str
    redis_url: str
    env: dict[str, str]


@pytest.fixture(scope="session")
def kafka_stack() -> Iterator[KafkaStack]:
    """Kafka + Redis started with deploy/local/start.sh (STACK_COMPONENTS="redis kafka") on ports of
    their own, on a clean slate; stopped afterwards. Fails (never skips) when the stack cannot
    start, e.g. Kafka jars missing: run deploy/local/install.sh."""
    try:
        with local_stack(REPO, IT_ENV) as env:
            yield KafkaStack(
                bootstrap=f"127.0.0.1:{IT_ENV['KAFKA_PORT']}",
                redis_url=f"redis://127.0.0.1:{IT_ENV['REDIS_PORT']}/0",
                env=env,
            )
    except LocalStackError as exc:
        pytest.fail(f"could not start Kafka+Redis for the integration tests: {exc}", pytrace=False)
