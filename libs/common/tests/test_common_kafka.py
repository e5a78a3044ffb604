from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from rewardloop_common.events import KpiEvent
from rewardloop_common.kafka import (
    AsyncProducer,
    DeliveryError,
    consumer_config,
    decode_json,
    encode_json,
    produce_and_wait,
    producer_config,
)


class FakeMsg:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self._t, self._p, self._o = topic, partition, offset

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o


class FakeProducer:
    """Queues delivery callbacks and serves them from poll(), like librdkafka."""

    def __init__(self, fail: bool = False, never: bool = False) -> None:
        self.fail, self.never = fail, never
        self.pending: list[tuple[Any, FakeMsg]] = []
        self.produced: list[tuple[str, bytes | None, bytes]] = []
        self.lock = threading.Lock()

    def produce(self, topic: str, value: bytes, key: bytes | None = None, on_delivery: Any = None) -> None:
        with self.lock:
            self.produced.append((topic, key, value))
            if not self.never:
                self.pending.append((on_delivery, FakeMsg(topic, 1, len(self.produced) - 1)))

    def poll(self, timeout: float = 0) -> int:
        with self.lock:
            pending, self.pending = self.pending, []
        for cb, msg in pending:
            cb("boom" if self.fail else None, msg)
        if not pending:
            threading.Event().wait(min(timeout, 0.01))
        return len(pending)

    def flush(self, timeout: float = 0) -> int:
        self.poll(0)
        return 0

    def list_topics(self, timeout: float = 0) -> Any:
        class MD:
            brokers = {1: "b"}

        return MD()


def test_configs_have_durability_defaults() -> None:
    p = producer_config("h:1", client_id="c", **{"linger.ms": 5})
    assert p["acks"] == "all" and p["enable.idempotence"] is True and p["compression.type"] == "lz4"
    assert p["linger.ms"] == 5 and p["client.id"] == "c"
    c = consumer_config("h:1", "g")
    assert c["enable.auto.commit"] is False and c["group.id"] == "g"


def test_json_round_trip() -> None:
    ev = KpiEvent(event_id="k", user_id="u", kind="return_visit", event_time_ms=1, received_at_ms=2)
    assert decode_json(encode_json(ev))["kind"] == "return_visit"
    assert encode_json({"a": 1}) == b'{"a":1}'
    for bad in (b"{", b"", None, b"NaN"):
        with pytest.raises(ValueError):
            decode_json(bad)
    with pytest.raises(ValueError):
        encode_json({"x": float("nan")})


def test_produce_and_wait() -> None:
    fp = FakeProducer()
    d = produce_and_wait(fp, "t", "u-1", {"a": 1}, timeout=1)  # type: ignore[arg-type]
    assert (d.topic, d.partition) == ("t", 1) and fp.produced == [("t", b"u-1", b'{"a":1}')]
    with pytest.raises(DeliveryError, match="boom"):
        produce_and_wait(FakeProducer(fail=True), "t", "k", b"x", timeout=1)  # type: ignore[arg-type]
    with pytest.raises(DeliveryError, match="no delivery report"):
        produce_and_wait(FakeProducer(never=True), "t", "k", b"x", timeout=0.1)  # type: ignore[arg-type]


def test_async_producer_awaits_delivery() -> None:
    async def scenario() -> None:
        ap = AsyncProducer(FakeProducer())  # type: ignore[arg-type]
        ap.start()
        assert ap.is_alive() and await ap.healthy()
        results = await asyncio.gather(*(ap.produce("t", f"u{i}", {"i": i}) for i in range(20)))
        assert sorted(r.offset for r in results) == list(range(20))
        await ap.close()
        assert not ap.is_alive()
        with pytest.raises(DeliveryError, match="not running"):
            await ap.produce("t", "u", b"x")

        slow = AsyncProducer(FakeProducer(never=True))  # type: ignore[arg-type]
        slow.start()
        with pytest.raises(DeliveryError, match="no delivery report"):
            await slow.produce("t", "u", b"x", timeout=0.05)
        await slow.close()

    asyncio.run(scenario())
