"""A fake consumer seen through the native consumer's API (``consume_into``), so that the engine tests
run the native consumer's path too: its partition queues (``RecordQueue``), the reward events parsed
when consumed, :func:`ingest_queue`, and the records the native path declines left at a queue's head."""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError

from rewardloop_outer_native import RecordQueue


class QueueingConsumer:
    """Wraps a test's fake confluent-kafka consumer: :meth:`consume_into` puts what its ``consume``
    returns into the engine's queues, as ``NativeConsumer`` does with librdkafka's records; every other
    call (subscribe, assign, commit, the fake's own helpers) goes to the wrapped one."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "inner":
            object.__setattr__(self, name, value)
        else:
            setattr(self.inner, name, value)

    def consume_into(
        self, queues: dict[tuple[str, int], RecordQueue], n: int, timeout: float, action_topic: str
    ) -> tuple[int, list[tuple[str, int]], list[str]]:
        touched: list[tuple[str, int]] = []
        errors: list[str] = []
        count = 0
        for m in self.inner.consume(num_messages=n, timeout=timeout):
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    errors.append(str(err))
                continue
            count += 1
            key = (m.topic(), m.partition())
            if key not in queues:
                queues[key] = RecordQueue(*key)
            queues[key].append(m.offset(), m.timestamp(), m.value(), m.topic() == action_topic)
            if key not in touched:
                touched.append(key)
        return count, touched, errors
