"""The simulator's read-backs against the real broker: where event time stands on the input topics
(so a second `make run` does not send only late events), and closed sessions told from amendments."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from confluent_kafka import Producer

from rewardloop_common.admin import create_topics
from rewardloop_sim.run import SimSettings, start_of_event_clock
from rewardloop_sim.topics import newest_event_time_ms, session_revisions_since

from .conftest import Stack

pytestmark = pytest.mark.e2e

GAP_MS = 1_800_000


def _topics(stack: Stack, *suffixes: str) -> list[str]:
    names = [f"sim-clock-{uuid.uuid4().hex[:8]}-{s}" for s in suffixes]
    assert create_topics(stack.kafka, names, partitions=3, wait_s=10) == 0
    return names


def _produce(stack: Stack, topic: str, records: list[tuple[int, dict[str, object]]]) -> None:
    producer = Producer({"bootstrap.servers": stack.kafka})
    for partition, value in records:
        producer.produce(topic, json.dumps(value).encode(), partition=partition)
    assert producer.flush(10) == 0


def test_event_clock_starts_after_the_newest_event_on_the_input_topics(stack: Stack) -> None:
    raw, kpi = _topics(stack, "raw", "kpi")
    settings = SimSettings(
        kafka_bootstrap_servers=stack.kafka, kafka_topic_reward_raw=raw, kafka_topic_kpi_raw=kpi
    )
    now_ms = int(time.time() * 1000)
    assert newest_event_time_ms(stack.kafka, [raw, kpi]) is None
    assert start_of_event_clock(settings, GAP_MS, now_ms) == now_ms  # a fresh stack: now

    ahead = now_ms + 4 * 3_600_000  # what a 60 s run at speedup 240 leaves behind
    # only each partition's last record is read: partition 0's first (newer) one is not the answer;
    # partition 2 stays empty
    _produce(
        stack,
        raw,
        [(0, {"event_time_ms": ahead + 5}), (0, {"event_time_ms": ahead}), (1, {"event_time_ms": ahead - 9})],
    )
    _produce(stack, kpi, [(1, {"event_time_ms": ahead + 60_000})])
    assert newest_event_time_ms(stack.kafka, [raw]) == ahead
    assert newest_event_time_ms(stack.kafka, [raw, kpi]) == ahead + 60_000
    assert start_of_event_clock(settings, GAP_MS, now_ms) == ahead + 60_000 + GAP_MS
    # a stack whose newest event is more than a gap in the past starts at now
    later = ahead + 60_000 + GAP_MS + 1
    assert start_of_event_clock(settings, GAP_MS, later) == later


def test_session_records_are_told_apart_by_revision(stack: Stack) -> None:
    (sessions,) = _topics(stack, "sessions")
    since_ms = int(time.time() * 1000) - 1_000
    records = [(p % 3, {"session_key": f"u-{p}:1", "revision": r}) for p, r in enumerate([0, 0, 1, 0, 2, 0])]
    _produce(stack, sessions, [*records, (2, {"session_key": "u-old:1"})])  # no revision field: 0
    assert session_revisions_since(stack.kafka, sessions, since_ms) == (5, 2)
    assert session_revisions_since(stack.kafka, sessions, int(time.time() * 1000) + 60_000) == (0, 0)
