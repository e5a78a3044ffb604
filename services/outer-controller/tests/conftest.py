from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from rewardloop_common.testing import RedisServer
from rewardloop_common.weights_store import WeightsStore


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture()
def store(redis_server: RedisServer) -> Iterator[WeightsStore]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield WeightsStore(client)
    client.close()


# real Kafka + Redis for the integration tests (a uniquely named module: conftest names collide)
from outer_it_stack import kafka_stack  # noqa: E402, F401
