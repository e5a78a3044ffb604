"""``NativeConsumer`` against a real Kafka (the ``kafka_stack`` fixture): the parts of confluent-kafka's
``Consumer`` API the engine relies on -- the rebalance callbacks with ``TopicPartition``s and the
offsets they assign, the queues, cached watermarks, commits, pause/resume, an exception in a callback,
``close`` -- checked directly (the kill -9 and scale-out tests exercise them only through the
sessions they produce)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from outer_it_stack import KafkaStack

from rewardloop_common.admin import create_topics
from rewardloop_common.kafka import encode_json
from rewardloop_common.testing import make_reward_event
from rewardloop_outer_native import NativeConsumer, RecordQueue

pytestmark = pytest.mark.integration

Queues = dict[tuple[str, int], RecordQueue]


def new_topic(stack: KafkaStack) -> str:
    topic = f"it.nc.{uuid.uuid4().hex[:8]}"
    assert create_topics(stack.bootstrap, [topic], partitions=2, wait_s=30) == 0
    return topic


def produce(stack: KafkaStack, topic: str, values: list[tuple[int, bytes]]) -> None:
    p = Producer({"bootstrap.servers": stack.bootstrap})
    for partition, value in values:
        p.produce(topic, value=value, partition=partition)
    assert p.flush(30) == 0


def consumer(stack: KafkaStack, group: str) -> NativeConsumer:
    return NativeConsumer(
        {
            "bootstrap.servers": stack.bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "range",
        }
    )


def consume_until(
    c: NativeConsumer, queues: Queues, topic: str, done: Callable[[], bool], seconds: float = 30
) -> int:
    got = 0
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        n, _touched, errors = c.consume_into(queues, 1000, 0.1, topic)
        assert not errors, errors
        got += n
    return got


def drain(q: RecordQueue | None) -> list[Any]:
    out = []
    while q:
        out.append(q.popleft())
    return out


def action(i: int) -> bytes:
    return encode_json(make_reward_event(f"e{i}", f"u{i}"))


def test_assignment_offsets_queues_watermarks_and_commits(kafka_stack: KafkaStack) -> None:
    topic, group = new_topic(kafka_stack), f"nc-{uuid.uuid4().hex[:6]}"
    p0 = [action(i) for i in range(5)] + [b"{not json"]
    p1 = [action(10 + i) for i in range(3)]
    produce(kafka_stack, topic, [(0, v) for v in p0] + [(1, v) for v in p1])
    c = consumer(kafka_stack, group)
    assigned: list[list[tuple[str, int, int]]] = []
    revoked: list[list[int]] = []

    def on_assign(cons: Any, tps: list[TopicPartition]) -> None:
        assert cons is c and all(isinstance(tp, TopicPartition) for tp in tps)
        assigned.append(sorted((tp.topic, tp.partition, tp.offset) for tp in tps))
        for tp in tps:
            if tp.partition == 0:
                tp.offset = 2  # as the engine does with the offsets stored in Redis
        cons.assign(tps)

    def on_revoke(_cons: Any, tps: list[TopicPartition]) -> None:
        revoked.append(sorted(tp.partition for tp in tps))

    c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
    queues: Queues = {}
    want = len(p0) - 2 + len(p1)
    assert consume_until(c, queues, topic, lambda: sum(len(q) for q in queues.values()) >= want) == want
    assert assigned == [[(topic, 0, -1001), (topic, 1, -1001)]]  # no committed offsets yet
    recs0, recs1 = drain(queues.get((topic, 0))), drain(queues.get((topic, 1)))
    assert [(r.topic(), r.partition(), r.offset()) for r in recs0] == [(topic, 0, o) for o in range(2, 6)]
    assert [r.value() for r in recs0] == p0[2:]  # parsed reward events and the one the parser declined
    assert [r.value() for r in recs1] == p1
    assert all(r.timestamp()[0] == 1 and r.timestamp()[1] > 0 and r.error() is None for r in recs0 + recs1)
    assert c.get_watermark_offsets(TopicPartition(topic, 0), cached=True) == (0, 6)
    assert c.get_watermark_offsets(TopicPartition(topic, 1), cached=False) == (0, 3)

    c.commit(offsets=[TopicPartition(topic, 0, 4), TopicPartition(topic, 1, 3)], asynchronous=False)
    check = Consumer({"bootstrap.servers": kafka_stack.bootstrap, "group.id": group})
    try:  # read with confluent-kafka's client, which asks the coordinator without joining
        got = check.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
        assert [(tp.partition, tp.offset) for tp in got] == [(0, 4), (1, 3)]
    finally:
        check.close()
    c.close()
    assert revoked == [[0, 1]]  # the revocation ran inside close
    c.close()  # a second close is a no-op


def test_a_callbacks_exception_is_raised_from_the_poll_and_the_partitions_are_still_assigned(
    kafka_stack: KafkaStack,
) -> None:
    topic = new_topic(kafka_stack)
    produce(kafka_stack, topic, [(0, action(1)), (1, action(2))])
    c = consumer(kafka_stack, f"nc-{uuid.uuid4().hex[:6]}")

    def on_assign(_cons: Any, _tps: list[TopicPartition]) -> None:
        raise RuntimeError("boom in on_assign")

    c.subscribe([topic], on_assign=on_assign)
    queues: Queues = {}
    with pytest.raises(RuntimeError, match="boom in on_assign"):
        consume_until(c, queues, topic, lambda: False, seconds=30)
    # the callback did not assign: the assignment was made as confluent-kafka makes it then
    assert consume_until(c, queues, topic, lambda: sum(len(q) for q in queues.values()) >= 2) == 2
    c.close()


def test_pause_holds_a_partition_back_until_resume(kafka_stack: KafkaStack) -> None:
    topic = new_topic(kafka_stack)
    c = consumer(kafka_stack, f"nc-{uuid.uuid4().hex[:6]}")
    c.subscribe([topic])
    queues: Queues = {}
    produce(kafka_stack, topic, [(0, action(1)), (1, action(2))])
    assert consume_until(c, queues, topic, lambda: sum(len(q) for q in queues.values()) >= 2) == 2
    c.pause([TopicPartition(topic, 0)])
    produce(kafka_stack, topic, [(0, action(3)), (1, action(4))])
    consume_until(c, queues, topic, lambda: len(queues[topic, 1]) >= 2)
    time.sleep(1.0)  # the paused partition's record would have come with the other one's
    consume_until(c, queues, topic, lambda: False, seconds=1.0)
    assert (len(queues[topic, 0]), len(queues[topic, 1])) == (1, 2)
    c.resume([TopicPartition(topic, 0)])
    consume_until(c, queues, topic, lambda: len(queues[topic, 0]) >= 2)
    assert [r.offset() for r in drain(queues[topic, 0])] == [0, 1]
    c.close()


def test_unsubscribe_and_subscribe_again_as_the_fenced_engine_does(kafka_stack: KafkaStack) -> None:
    """``DurableController._fenced``: unsubscribe, subscribe again at once, go on consuming. The
    revocation and the new assignment run their callbacks in later ``consume_into`` calls, on this
    thread; records polled before the revocation are not handed over after it."""
    topic = new_topic(kafka_stack)
    produce(kafka_stack, topic, [(0, action(1)), (1, action(2))])
    c = consumer(kafka_stack, f"nc-{uuid.uuid4().hex[:6]}")
    events: list[tuple[str, list[int]]] = []

    def on_assign(cons: Any, tps: list[TopicPartition]) -> None:
        events.append(("assign", sorted(tp.partition for tp in tps)))
        cons.assign(tps)

    def on_revoke(_cons: Any, tps: list[TopicPartition]) -> None:
        events.append(("revoke", sorted(tp.partition for tp in tps)))

    c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
    queues: Queues = {}
    assert consume_until(c, queues, topic, lambda: sum(len(q) for q in queues.values()) >= 2) == 2
    c.unsubscribe()
    c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
    queues.clear()
    # nothing committed: the group starts over from the earliest offsets
    assert consume_until(c, queues, topic, lambda: sum(len(q) for q in queues.values()) >= 2) == 2
    assert events == [("assign", [0, 1]), ("revoke", [0, 1]), ("assign", [0, 1])]
    assert sorted((p, [r.offset() for r in drain(q)]) for (_, p), q in queues.items()) == [(0, [0]), (1, [0])]
    c.close()
