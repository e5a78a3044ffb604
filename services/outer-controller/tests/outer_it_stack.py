"""Kafka + Redis for the outer-controller integration tests, started like the native stack."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

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
    their own, on a clean slate; stopped with deploy/local/stop.sh. Fails (never skips) when the
    stack cannot start, e.g. Kafka jars missing: run deploy/local/install.sh."""
    env = {**os.environ, **IT_ENV}
    stop = [str(REPO / "deploy/local/stop.sh")]
    subprocess.run(["bash", *stop], env=env, check=False, timeout=120)
    shutil.rmtree(Path(IT_ENV["RUN_DIR"]) / "kafka-data", ignore_errors=True)
    shutil.rmtree(Path(IT_ENV["RUN_DIR"]) / "redis", ignore_errors=True)
    started = subprocess.run(
        ["bash", str(REPO / "deploy/local/start.sh")], env=env, timeout=300, capture_output=True, text=True
    )
    try:
        if started.returncode != 0:
            pytest.fail(
                "could not start Kafka+Redis for the integration tests (deploy/local/start.sh, "
                f"RUN_DIR={IT_ENV['RUN_DIR']}):\n{started.stdout[-2000:]}\n{started.stderr[-3000:]}",
                pytrace=False,
            )
        yield KafkaStack(
            bootstrap=f"127.0.0.1:{IT_ENV['KAFKA_PORT']}",
            redis_url=f"redis://127.0.0.1:{IT_ENV['REDIS_PORT']}/0",
            env=env,
        )
    finally:
        subprocess.run(["bash", *stop], env=env, check=False, timeout=180)
