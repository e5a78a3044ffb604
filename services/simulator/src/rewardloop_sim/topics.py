"""Read-backs from the real Kafka topics: what a run appended, and where event time stands."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition


def _consumer(bootstrap: str) -> Consumer:
    # a throw-away group: read-backs never commit, and never share a group with a service
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"rewardloop-sim-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )


def _partitions(consumer: Consumer, topic: str) -> list[int]:
    return list(consumer.list_topics(topic, timeout=10).topics[topic].partitions)


# what a broker answers while a partition's leadership settles (the error objects of
# get_watermark_offsets do not carry librdkafka's retriable flag, so the codes are named)
_SETTLING = frozenset(
    (
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
    )
)


def _watermarks(consumer: Consumer, topic: str, partition: int, timeout_s: float = 10.0) -> tuple[int, int]:
    """(low, high) of one partition, asked again while the broker answers with a retriable error
    (NOT_LEADER_FOR_PARTITION while a new or moved partition's leadership settles)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
            return low, high
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            settling = isinstance(err, KafkaError) and (err.code() in _SETTLING or err.retriable())
            if not settling or time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def count_since(bootstrap: str, topic: str, since_ms: int) -> int:
    """Records appended to `topic` at or after `since_ms` (broker offsets, not what we sent)."""
    consumer = _consumer(bootstrap)
    try:
        return sum(high - start for _p, start, high in _ranges_since(consumer, topic, since_ms))
    finally:
        consumer.close()


def _ranges_since(consumer: Consumer, topic: str, since_ms: int) -> list[tuple[int, int, int]]:
    """(partition, first offset at or after `since_ms`, high watermark) per partition."""
    wanted = [TopicPartition(topic, p, since_ms) for p in _partitions(consumer, topic)]
    ranges = []
    for tp in consumer.offsets_for_times(wanted, timeout=10):
        low, high = _watermarks(consumer, topic, tp.partition)
        start = tp.offset if tp.offset >= 0 else high  # -1: nothing at or after since_ms
        ranges.append((tp.partition, max(start, low), high))
    return ranges


def _read(
    consumer: Consumer, topic: str, ranges: Iterable[tuple[int, int, int]], timeout_s: float
) -> Iterator[Message]:
    """The records in [start, high) of each (partition, start, high); bounded by `timeout_s`."""
    todo = {p: (start, high) for p, start, high in ranges if high > start}
    if not todo:
        return
    consumer.assign([TopicPartition(topic, p, start) for p, (start, _high) in todo.items()])
    deadline = time.monotonic() + timeout_s
    while todo:
        if time.monotonic() > deadline:
            raise TimeoutError(f"reading {topic} timed out with partitions {sorted(todo)} unfinished")
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error() is not None:
            raise RuntimeError(f"reading {topic}: {msg.error()}")
        p, offset = msg.partition(), msg.offset()
        if p in todo and offset is not None and offset >= todo[p][1] - 1:
            del todo[p]
        yield msg


def _fields(msg: Message) -> dict[str, Any]:
    value = msg.value()
    return {} if value is None else dict(json.loads(value))


def session_revisions_since(
    bootstrap: str, topic: str, since_ms: int, timeout_s: float = 30.0
) -> tuple[int, int]:
    """(sessions closed, amendments) among the session records appended since `since_ms`:
    revision 0 is a session's first close; a higher revision re-publishes an already closed session
    because a late event or a delayed KPI reached it."""
    consumer = _consumer(bootstrap)
    closed = amended = 0
    try:
        for msg in _read(consumer, topic, _ranges_since(consumer, topic, since_ms), timeout_s):
            if _fields(msg).get("revision", 0) == 0:
                closed += 1
            else:
                amended += 1
        return closed, amended
    finally:
        consumer.close()


def newest_event_time_ms(bootstrap: str, topics: Iterable[str], timeout_s: float = 30.0) -> int | None:
    """The largest `event_time_ms` among the last record of each partition of `topics` (None when
    they are empty). The outer controller's clock is the newest event time it has seen, so an event
    older than this is late for it."""
    newest: int | None = None
    consumer = _consumer(bootstrap)
    try:
        for topic in topics:
            lasts = []
            for p in _partitions(consumer, topic):
                low, high = _watermarks(consumer, topic, p)
                if high > low:
                    lasts.append((p, high - 1, high))
            for msg in _read(consumer, topic, lasts, timeout_s):
                t = _fields(msg).get("event_time_ms")
                if isinstance(t, int) and (newest is None or t > newest):
                    newest = t
        return newest
    finally:
        consumer.close()
