"""Thin helpers over confluent-kafka: configs, JSON encoding, and "produce and await delivery".

* :func:`make_producer` -- acks=all, enable.idempotence=true, linger.ms=10, compression.type=lz4.
* :func:`make_consumer` -- manual commits (enable.auto.commit=false), earliest offset reset.
* :func:`produce_and_wait` -- blocking produce that returns only once the broker acknowledged.
* :class:`AsyncProducer` -- asyncio-friendly producer: ``await producer.produce(...)`` resolves when the
  delivery report arrives (a background thread serves ``poll()``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from pydantic import BaseModel

PRODUCER_DEFAULTS: Mapping[str, Any] = {
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 10,
    "compression.type": "lz4",
}

CONSUMER_DEFAULTS: Mapping[str, Any] = {
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
    # range keeps partition N of every subscribed topic on the same member: a user's actions and
    # KPI events (both keyed by user_id) are then consumed by the same controller instance.
    "partition.assignment.strategy": "range",
}


class DeliveryError(Exception):
    """The broker did not acknowledge a produced record (error report, full queue, or timeout)."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where an acknowledged record landed."""

    topic: str
    partition: int
    offset: int


# --------------------------------------------------------------------------------------------- JSON


def encode_json(value: Any) -> bytes:
    """Encode a pydantic model (by alias) or a JSON-compatible value as compact UTF-8 JSON."""
    if isinstance(value, BaseModel):
        return value.model_dump_json(by_alias=True).encode("utf-8")
    return json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode("utf-8")


def decode_json(data: bytes | str | None) -> Any:
    """Decode a UTF-8 JSON value; raises ``ValueError`` on empty, non-UTF-8 or invalid JSON."""
    if data is None:
        raise ValueError("empty record value")
    if isinstance(data, bytes):
        data = data.decode("utf-8")
    return json.loads(data, parse_constant=_reject_constant)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite JSON number {name} is not allowed")


def encode_key(key: str | bytes | None) -> bytes | None:
    if key is None or isinstance(key, bytes):
        return key
    return key.encode("utf-8")


# ------------------------------------------------------------------------------------------ configs


def producer_config(bootstrap_servers: str, client_id: str | None = None, **overrides: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        "logger": logging.getLogger("rdkafka.producer"),
        **PRODUCER_DEFAULTS,
    }
    if client_id:
        conf["client.id"] = client_id
    conf.update(overrides)
    return conf


def consumer_config(
    bootstrap_servers: str, group_id: str, client_id: str | None = None, **overrides: Any
) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        "group.id": group_id,
        "logger": logging.getLogger("rdkafka.consumer"),
        **CONSUMER_DEFAULTS,
    }
    if client_id:
        conf["client.id"] = client_id
    conf.update(overrides)
    return conf


def make_producer(bootstrap_servers: str, client_id: str | None = None, **overrides: Any) -> Producer:
    """A producer with the project's durability defaults (``PRODUCER_DEFAULTS``); keys use dots."""
    return Producer(producer_config(bootstrap_servers, client_id, **overrides))


def make_consumer(
    bootstrap_servers: str,
    group_id: str,
    topics: list[str] | None = None,
    client_id: str | None = None,
    **overrides: Any,
) -> Consumer:
    """A consumer with manual commits; subscribes to ``topics`` when given."""
    consumer = Consumer(consumer_config(bootstrap_servers, group_id, client_id, **overrides))
    if topics:
        consumer.subscribe(topics)
    return consumer


def broker_reachable(client: Producer | Consumer | Any, timeout: float = 2.0) -> bool:
    """True when the cluster answered a metadata request within ``timeout`` seconds."""
    try:
        md = client.list_topics(timeout=timeout)
    except KafkaException:
        return False
    return bool(md.brokers)


# ------------------------------------------------------------------------------------ produce (sync)


def _delivery_from(err: KafkaError | None, msg: Message) -> Delivery:
    if err is not None:
        raise DeliveryError(f"delivery failed: {err}")
    return Delivery(topic=msg.topic() or "", partition=msg.partition() or 0, offset=msg.offset() or 0)


def produce_and_wait(
    producer: Producer,
    topic: str,
    key: str | bytes | None,
    value: Any,
    timeout: float = 10.0,
) -> Delivery:
    """Produce one record and block until the broker acknowledged it (or raise :class:`DeliveryError`).

    ``value`` may be bytes, a pydantic model or any JSON-compatible value.
    """
    box: dict[str, Any] = {}

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        box["err"], box["msg"] = err, msg

    payload = value if isinstance(value, bytes) else encode_json(value)
    try:
        producer.produce(topic, value=payload, key=encode_key(key), on_delivery=on_delivery)
    except (BufferError, KafkaException) as exc:
        raise DeliveryError(f"produce failed: {exc}") from exc
    deadline = time.monotonic() + timeout
    while "msg" not in box:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeliveryError(f"no delivery report within {timeout:.1f}s")
        producer.poll(min(0.05, remaining))
    return _delivery_from(box["err"], box["msg"])


# ----------------------------------------------------------------------------------- produce (async)


@runtime_checkable
class AsyncEventProducer(Protocol):
    """What the gateway needs from a producer (the test seam: inject a fake implementing this)."""

    def start(self) -> None: ...

    async def produce(self, topic: str, key: str, value: bytes, timeout: float = 5.0) -> Delivery: ...

    async def healthy(self) -> bool: ...

    async def close(self, flush_timeout: float = 5.0) -> None: ...


class AsyncProducer:
    """asyncio wrapper: ``await produce(...)`` returns once the broker acknowledged the record.

    A daemon thread calls ``producer.poll()`` so delivery callbacks run; each callback resolves its
    future on the owning event loop with ``call_soon_threadsafe``.
    """

    def __init__(self, producer: Producer, *, poll_interval: float = 0.1) -> None:
        self._producer = producer
        self._poll_interval = poll_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_servers(
        cls, bootstrap_servers: str, client_id: str | None = None, **overrides: Any
    ) -> AsyncProducer:
        return cls(make_producer(bootstrap_servers, client_id, **overrides))

    @property
    def producer(self) -> Producer:
        return self._producer

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="kafka-producer-poll", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(self._poll_interval)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    async def healthy(self, timeout: float = 2.0) -> bool:
        if not self.is_alive():
            return False
        return await asyncio.to_thread(broker_reachable, self._producer, timeout)

    async def produce(
        self, topic: str, key: str | bytes | None, value: Any, timeout: float = 5.0
    ) -> Delivery:
        if not self.is_alive():
            raise DeliveryError("producer is not running")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Delivery] = loop.create_future()

        def resolve(err: KafkaError | None, topic_: str, partition: int, offset: int) -> None:
            if fut.done():
                return
            if err is not None:
                fut.set_exception(DeliveryError(f"delivery failed: {err}"))
            else:
                fut.set_result(Delivery(topic_, partition, offset))

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            try:
                loop.call_soon_threadsafe(
                    resolve, err, msg.topic() or "", msg.partition() or 0, msg.offset() or 0
                )
            except RuntimeError:  # the loop is gone (shutdown); nobody is waiting any more
                pass

        payload = value if isinstance(value, bytes) else encode_json(value)
        try:
            self._producer.produce(topic, value=payload, key=encode_key(key), on_delivery=on_delivery)
        except (BufferError, KafkaException) as exc:
            raise DeliveryError(f"produce failed: {exc}") from exc
        try:
            return await asyncio.wait_for(fut, timeout if math.isfinite(timeout) else None)
        except TimeoutError as exc:
            raise DeliveryError(f"no delivery report within {timeout:.1f}s") from exc

    async def close(self, flush_timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 2.0)
        await asyncio.to_thread(self._producer.flush, flush_timeout)
