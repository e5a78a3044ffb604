from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from rewardloop_common.testing import FakeAsyncProducer, RedisServer
from rewardloop_gateway.app import create_app
from rewardloop_gateway.settings import GatewaySettings

TOKEN = "test-token"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture()
def settings(redis_server: RedisServer) -> GatewaySettings:
    redis.Redis.from_url(redis_server.url).flushall()
    return GatewaySettings(
        redis_url=redis_server.url,
        gateway_admin_token=TOKEN,
        kafka_bootstrap_servers="127.0.0.1:1",
        gateway_kafka_delivery_timeout_seconds=0.2,
    )


@pytest.fixture()
def producer() -> FakeAsyncProducer:
    return FakeAsyncProducer()


@pytest.fixture()
def client(settings: GatewaySettings, producer: FakeAsyncProducer) -> Iterator[TestClient]:
    app = create_app(settings, producer=producer)
    with TestClient(app) as c:
        yield c
    assert producer.started and producer.closed


@pytest.fixture()
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}
