from __future__ import annotations

import asyncio
import json
import time

import pytest
import redis
import redis.asyncio as aredis
from pydantic import ValidationError

from rewardloop_common.testing import RedisServer
from rewardloop_common.weights import Weights
from rewardloop_common.weights_store import (
    UPDATES_CHANNEL,
    VERSION_KEY,
    AsyncWeightsStore,
    InvalidWeightsDocument,
    WeightsStore,
)

W1 = Weights(click=2.0, dwell=0.25, skip=-1.0, relevance=0.5)


def test_get_falls_back_to_builtin(redis_client: redis.Redis) -> None:
    store = WeightsStore(redis_client)
    doc = store.get("default")
    assert doc.version == 0 and doc.source == "builtin-default"
    assert store.get_stored("default") is None


def test_push_is_atomic_and_versioned(redis_client: redis.Redis) -> None:
    store = WeightsStore(redis_client)
    pubsub = redis_client.pubsub()
    pubsub.subscribe(UPDATES_CHANNEL)
    assert pubsub.get_message(timeout=1)["type"] == "subscribe"  # type: ignore[index]

    d1 = store.push("default", W1, source="test", reason="first", now_ms=123)
    d2 = store.push("premium", {"click": 1, "dwell": 1, "skip": 0, "relevance": 1}, source="test")
    assert (d1.version, d2.version) == (1, 2)
    assert int(redis_client.get(VERSION_KEY)) == 2  # type: ignore[arg-type]
    raw = json.loads(redis_client.get("rewardloop:weights:default"))  # type: ignore[arg-type]
    assert raw == {
        "version": 1,
        "segment": "default",
        "weights": {"click": 2.0, "dwell": 0.25, "skip": -1.0, "relevance": 0.5},
        "updated_at_ms": 123,
        "source": "test",
        "reason": "first",
    }
    assert store.get("default") == d1
    msgs = [pubsub.get_message(timeout=1) for _ in range(2)]
    assert [json.loads(m["data"]) for m in msgs if m] == [  # type: ignore[index]
        {"segment": "default", "version": 1},
        {"segment": "premium", "version": 2},
    ]
    pubsub.close()


def test_history_newest_first_and_capped(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    store = WeightsStore(redis_client, history_cap=5)
    for i in range(8):
        store.push("default", W1, source="test", reason=f"r{i}")
    hist = store.history("default", 100)
    assert [d.reason for d in hist] == ["r7", "r6", "r5", "r4", "r3"]
    assert hist[0] == store.get("default")
    assert store.history("default", 2)[1].reason == "r6"
    assert store.history("nobody", 10) == []


def test_invalid_push_writes_nothing(redis_client: redis.Redis) -> None:
    store = WeightsStore(redis_client)
    with pytest.raises(ValidationError, match="skip"):
        store.push("default", {"click": 1, "dwell": 1, "skip": 1, "relevance": 1}, source="t")
    with pytest.raises(ValidationError):
        store.push("bad segment", W1, source="t")
    assert redis_client.keys("*") == []


def test_corrupt_document_raises(redis_client: redis.Redis) -> None:
    redis_client.set("rewardloop:weights:default", '{"version": 1, "weights": {"click": 99}}')
    with pytest.raises(InvalidWeightsDocument):
        WeightsStore(redis_client).get("default")


def test_effective_falls_back_to_default_segment(redis_client: redis.Redis) -> None:
    store = WeightsStore(redis_client)
    assert store.get_effective("premium").source == "builtin-default"
    store.push("default", W1, source="t")
    eff = store.get_effective("premium")
    assert eff.segment == "default" and eff.weights == W1


def test_init_segment_is_idempotent(redis_client: redis.Redis) -> None:
    store = WeightsStore(redis_client)
    created, doc = store.init_segment()
    assert created and doc.version == 1 and doc.weights.click == 1.0
    created2, doc2 = store.init_segment()
    assert not created2 and doc2 == doc
    assert store.segments() == ["default"]


def test_async_store(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    async def scenario() -> None:
        client = aredis.Redis.from_url(redis_server.url)
        store = AsyncWeightsStore(client)
        assert (await store.get()).version == 0
        doc = await store.push("default", W1, source="async", reason="x", now_ms=int(time.time() * 1000))
        assert doc.version == 1 and (await store.get()).weights == W1
        assert [d.version for d in await store.history()] == [1]
        assert await store.ping()
        await client.aclose()

    asyncio.run(scenario())
    assert WeightsStore(redis_client).get().source == "async"
