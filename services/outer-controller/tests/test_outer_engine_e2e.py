"""End-to-end checks of the engine's loop against a scripted fake Kafka client (ported from the legacy
controller's tests): invalid records counted and consumed, a failed produce retried, shutdown keeps
open sessions open and their input uncommitted, a revoke checkpoints and drops the shard and a
re-assignment picks it up again. Each runs with the in-memory state store (``OUTER_STATE_STORE=memory``)
and with the Redis one."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from confluent_kafka import KafkaError, TopicPartition
from prometheus_client import CollectorRegistry
from queueing_consumer import QueueingConsumer

from rewardloop_common.kafka import encode_json
from rewardloop_common.testing import RedisServer, make_kpi_event, make_reward_event
from rewardloop_common.weights_store import WeightsStore
from rewardloop_outer.engine import DurableController, make_tuner
from rewardloop_outer.metrics import OuterMetrics
from rewardloop_outer.settings import OuterSettings
from rewardloop_outer.state_store import MemoryStateStore, RedisStateStore, StateStore

R, K, S, L = "recsys.reward.raw", "recsys.kpi.raw", "recsys.sessions", "recsys.sessions.late"
T0 = 1_763_888_400_000
GAP_S = 60
GAP_MS = GAP_S * 1000


class Err:
    def __init__(self, code: int) -> None:
        self._code = code

    def code(self) -> int:
        return self._code


class Msg:
    def __init__(self, topic: str, partition: int, offset: int, value: bytes | None, err: Any = None) -> None:
        self._t, self._p, self._o, self._v, self._e = topic, partition, offset, value, err

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def value(self) -> bytes | None:
        return self._v

    def error(self) -> Any:
        return self._e

    def timestamp(self) -> tuple[int, int]:
        return (1, self._o)


class FakeConsumer:
    """A consumer of ``partitions`` partitions of R and K: :meth:`feed` appends records, :meth:`consume`
    returns whatever is new past each assigned partition's position; rebalances are driven by the test."""

    def __init__(self, partitions: int = 2) -> None:
        self.n = partitions
        self.log: dict[tuple[str, int], list[bytes | None]] = {
            (t, p): [] for t in (R, K) for p in range(partitions)
        }
        self.pos: dict[tuple[str, int], int] = {}
        self.commits: list[dict[tuple[str, int], int]] = []
        self.extra: list[Msg] = []  # error events, delivered once
        self.on_assign: Any = None
        self.on_revoke: Any = None
        self.closed = False

    def feed(self, topic: str, partition: int, value: bytes | None) -> None:
        self.log[(topic, partition)].append(value)

    def subscribe(self, topics: list[str], on_assign: Any = None, on_revoke: Any = None) -> None:
        assert topics == [R, K]
        self.on_assign, self.on_revoke = on_assign, on_revoke
        self.rebalance_assign(range(self.n))

    def rebalance_assign(self, partitions: Any) -> None:
        self.on_assign(self, [TopicPartition(t, p) for p in partitions for t in (R, K)])

    def rebalance_revoke(self, partitions: Any) -> None:
        tps = [TopicPartition(t, p) for p in partitions for t in (R, K)]
        self.on_revoke(self, tps)
        for tp in tps:
            self.pos.pop((tp.topic, tp.partition), None)

    def assign(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            self.pos[(tp.topic, tp.partition)] = max(0, tp.offset)

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool = False) -> tuple[int, int]:
        return 0, len(self.log[(tp.topic, tp.partition)])

    def consume(self, num_messages: int = 1, timeout: float = 0) -> list[Msg]:
        out, self.extra = list(self.extra), []
        for (t, p), off in sorted(self.pos.items()):
            vals = self.log[(t, p)]
            out += [Msg(t, p, o, vals[o]) for o in range(off, len(vals))]
            self.pos[(t, p)] = len(vals)
        return out

    def commit(self, offsets: Any = None, asynchronous: bool = True) -> None:
        self.commits.append({(tp.topic, tp.partition): tp.offset for tp in offsets})

    def pause(self, tps: list[TopicPartition]) -> None:
        pass

    def resume(self, tps: list[TopicPartition]) -> None:
        pass

    def unsubscribe(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class FakeProducer:
    """Delivery reports come from :meth:`poll`/:meth:`flush`; ``fail_next`` failures are reported
    as not delivered (the record never landed)."""

    def __init__(self) -> None:
        self.landed: list[tuple[str, bytes, bytes]] = []
        self.pending: list[tuple[str, bytes, bytes, Any]] = []
        self.fail_next = 0
        self.attempts = 0

    def produce(self, topic: str, key: bytes, value: bytes, on_delivery: Any) -> None:
        self.attempts += 1
        self.pending.append((topic, key, value, on_delivery))

    def poll(self, timeout: float = 0) -> int:
        pending, self.pending = self.pending, []
        for topic, key, value, cb in pending:
            if self.fail_next:
                self.fail_next -= 1
                cb(KafkaError(KafkaError._MSG_TIMED_OUT), None)
            else:
                self.landed.append((topic, key, value))
                cb(None, None)
        return len(pending)

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return 0

    def sessions(self) -> list[dict[str, Any]]:
        return [json.loads(v) for t, _, v in self.landed if t == S]


class FakeBatchProducer(FakeProducer):
    """:class:`FakeProducer` with ``NativeProducer``'s API (``batch_reports``): ``produce`` takes
    ``[(topic, key, value, token)]`` and says how many it took; ``poll`` returns the tokens delivered
    and failed. ``take_next``: the queue takes this many more records, then is full."""

    batch_reports = True

    def __init__(self) -> None:
        super().__init__()
        self.take_next: int | None = None

    def produce(self, records: list[tuple[str, bytes, bytes, int]]) -> tuple[int, str | None]:  # type: ignore[override]
        n = len(records) if self.take_next is None else min(len(records), self.take_next)
        if self.take_next is not None:
            self.take_next -= n
        self.attempts += n
        self.pending.extend(records[:n])
        return n, None if n == len(records) else "queue full"

    def poll(self, timeout: float = 0) -> tuple[list[int], list[tuple[int, str]]]:  # type: ignore[override]
        pending, self.pending = self.pending, []
        delivered, failed = [], []
        for topic, key, value, token in pending:
            if self.fail_next:
                self.fail_next -= 1
                failed.append((token, "Local: Message timed out"))
            else:
                self.landed.append((topic, key, value))
                delivered.append(token)
        return delivered, failed

    def flush(self, timeout: float = 0) -> int:
        return 0  # the reports wait for the next poll, as NativeProducer's do

    def __len__(self) -> int:
        return len(self.pending)


@pytest.fixture(params=["callbacks", "batches"])
def new_producer(request: pytest.FixtureRequest) -> Callable[[], FakeProducer]:
    """confluent-kafka's API (a callback per record) or NativeProducer's (reports in batches)."""
    return FakeProducer if request.param == "callbacks" else FakeBatchProducer


@pytest.fixture(params=["messages", "queues"])
def new_consumer(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """confluent-kafka's API (a Message per record, grouped by the engine) or NativeConsumer's (the
    records put into the engine's RecordQueues, reward events parsed on the way in)."""
    if request.param == "messages":
        return FakeConsumer
    return lambda **kw: QueueingConsumer(FakeConsumer(**kw))


@pytest.fixture(params=["memory", "redis"])
def state_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture()
def rds(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield client
    client.close()


class Harness:
    def __init__(self, kind: str, rds: redis.Redis) -> None:
        self.kind, self.rds = kind, rds
        self.mem = MemoryStateStore()  # shared by every controller of one test, like Redis

    def state(self, s: OuterSettings) -> StateStore:
        return self.mem if self.kind == "memory" else RedisStateStore(self.rds, s.outer_consumer_group)

    def controller(
        self, consumer: FakeConsumer, producer: FakeProducer, **kw: Any
    ) -> tuple[DurableController, OuterMetrics]:
        base: dict[str, Any] = {
            "outer_session_gap_seconds": GAP_S,
            "outer_clock": "event",
            "outer_checkpoint_interval_ms": 0,
            "outer_consumer_group": "e2e",
            "outer_update_batch_sessions": 2,
            "outer_tuner": "correlation",
            "outer_min_sessions": 1,
            "outer_shadow_mode": False,
            "outer_exploration_slice": 0.0,
            "outer_checkpoint_pipeline": False,  # stepped and inspected per step (test_outer_engine)
        }
        s = OuterSettings(**(base | kw))
        m = OuterMetrics(registry=CollectorRegistry())
        tuner = make_tuner(s, WeightsStore(self.rds), m)
        ctl = DurableController(s, consumer, producer, self.state(s), tuner, m, now_ms=lambda: 0)
        return ctl, m


@pytest.fixture()
def harness(state_kind: str, rds: redis.Redis) -> Harness:
    return Harness(state_kind, rds)


def metric(m: OuterMetrics, name: str, labels: dict[str, str] | None = None) -> float:
    return m.registry.get_sample_value(name, labels or {}) or 0.0


def action(eid: str, user: str, t: int, **kw: Any) -> bytes:
    return encode_json(make_reward_event(eid, user, t, **kw))


def test_end_to_end_with_invalid_records_and_a_failed_produce(
    harness: Harness,
    new_producer: Callable[[], FakeProducer],
    new_consumer: Callable[..., Any],
) -> None:
    consumer, producer = new_consumer(), new_producer()
    ctl, m = harness.controller(consumer, producer)
    ctl.subscribe()
    consumer.feed(R, 0, action("e1", "u1", T0, dwell_seconds=30, reward=1.0))
    consumer.feed(R, 0, b"{not json")
    consumer.feed(R, 0, b'{"event_id": "x"}')  # schema violation
    consumer.feed(R, 0, b"\xff\xfe")  # not UTF-8
    consumer.feed(R, 1, action("e2", "u2", T0, dwell_seconds=1, reward=0.5))
    consumer.feed(R, 1, None)  # empty value
    consumer.feed(K, 0, encode_json(make_kpi_event("k1", "u1", "purchase", T0 + 1000, revenue=50.0)))
    bad_kpi = {"event_id": "k", "user_id": "u", "kind": "purchase", "event_time_ms": 1, "received_at_ms": 1}
    consumer.feed(K, 1, json.dumps(bad_kpi).encode())  # a purchase without revenue
    consumer.extra = [Msg(R, 1, 0, None, err=Err(KafkaError._PARTITION_EOF))]  # ignored
    ctl.run_once()
    assert metric(m, "rewardloop_outer_invalid_records_total", {"topic": R}) == 4
    assert metric(m, "rewardloop_outer_invalid_records_total", {"topic": K}) == 1
    assert metric(m, "rewardloop_outer_events_consumed_total", {"topic": R}) == 6
    assert metric(m, "rewardloop_outer_open_sessions") == 2 and producer.landed == []
    # invalid records are consumed: the committed positions move past them
    assert consumer.commits[-1] == {(R, 0): 4, (R, 1): 2, (K, 0): 1, (K, 1): 1}

    # both partitions' clocks pass the gap: u1 and u2 close; the first record produced fails once
    consumer.feed(R, 0, action("e3", "u3", T0 + GAP_MS + 1))
    consumer.feed(R, 1, action("e4", "u4", T0 + GAP_MS + 1))
    producer.fail_next = 1
    ctl.run_once()
    assert len(producer.sessions()) == 1 and metric(m, "rewardloop_outer_session_produce_errors_total") == 1
    ctl.run_once()  # the next checkpoint produces it again
    got = {s["user_id"]: s for s in producer.sessions()}
    assert sorted(got) == ["u1", "u2"] and producer.attempts == 3
    assert got["u1"]["kpi"]["purchases"] == 1 and got["u1"]["kpi"]["event_ids"] == ["k1"]
    assert [st["event_id"] for st in got["u1"]["steps"]] == ["e1"]
    assert all(k == s["user_id"].encode() for t, k, v in producer.landed if t == S for s in [json.loads(v)])
    # 2 sessions = one tuner batch (correlation rule, no shadow): dwell went with revenue -> pushed
    doc = WeightsStore(harness.rds).get("default")
    assert doc.source == "outer-controller" and doc.weights.dwell > 0.5
    assert metric(m, "rewardloop_outer_weight_updates_total") == 1
    assert metric(m, "rewardloop_outer_sessions_closed_total") == 2
    assert metric(m, "rewardloop_outer_open_sessions") == 2  # u3, u4
    ctl.checkpoint()  # the acknowledged records' removal lands: nothing left to resend
    assert all(not sh.outbox for sh in ctl.shards.values())
    ctl.shutdown()
    assert consumer.closed and len(producer.sessions()) == 2  # no duplicate on shutdown


def test_records_a_full_producer_queue_refused_are_produced_after_the_next_landing(
    harness: Harness,
) -> None:
    """NativeProducer's queue takes part of a batch: the rest stay in the outbox, not in flight, and
    the next landing produces them -- each session exactly once, and the outbox empties."""
    consumer, producer = FakeConsumer(partitions=1), FakeBatchProducer()
    ctl, m = harness.controller(consumer, producer)
    ctl.subscribe()
    for i in range(5):
        consumer.feed(R, 0, action(f"e{i}", f"u{i}", T0 + i))
    ctl.run_once()
    consumer.feed(R, 0, action("tick", "tick", T0 + GAP_MS + 10))
    producer.take_next = 2
    ctl.run_once()  # 5 sessions close; the queue takes 2
    assert len(producer.sessions()) == 2 and producer.attempts == 2
    assert len(ctl.shards[0].outbox) == 3 and not ctl.shards[0].in_flight
    producer.take_next = None
    ctl.run_once()
    ctl.run_once()
    assert sorted(s["user_id"] for s in producer.sessions()) == [f"u{i}" for i in range(5)]
    assert producer.attempts == 5 and not ctl.shards[0].outbox and not ctl._tokens
    assert metric(m, "rewardloop_outer_session_produce_errors_total") == 0


def test_shutdown_keeps_open_sessions_open_and_a_restart_continues_them(
    harness: Harness,
    new_producer: Callable[[], FakeProducer],
    new_consumer: Callable[..., Any],
) -> None:
    consumer, producer = new_consumer(partitions=1), new_producer()
    ctl, _ = harness.controller(consumer, producer)
    consumer.feed(R, 0, action("e1", "u1", T0))
    consumer.feed(R, 0, action("e2", "u1", T0 + 1000))
    ctl.subscribe()
    ctl.run_once()
    stop = threading.Event()
    stop.set()
    ctl.run(stop)  # subscribes again (same assignment), returns at once and shuts down
    assert consumer.closed and producer.landed == []  # the open session was not closed early
    assert consumer.commits and all(c[(R, 0)] == 2 for c in consumer.commits)

    # a new process (the same state store): the session continues where it stopped
    consumer2, producer2 = new_consumer(partitions=1), new_producer()
    consumer2.log = consumer.log
    ctl2, m2 = harness.controller(consumer2, producer2)
    ctl2.subscribe()
    assert consumer2.pos[(R, 0)] == 2  # seeks to the stored offsets, no replay
    consumer2.feed(R, 0, action("e3", "u1", T0 + 2000))
    consumer2.feed(R, 0, action("e4", "u2", T0 + 2000 + GAP_MS + 1))
    ctl2.run_once()
    [rec] = producer2.sessions()
    assert rec["user_id"] == "u1" and [s["event_id"] for s in rec["steps"]] == ["e1", "e2", "e3"]
    assert metric(m2, "rewardloop_outer_events_consumed_total", {"topic": R}) == 2


def test_revoke_checkpoints_and_drops_the_shard_and_a_reassignment_restores_it(
    harness: Harness,
    new_producer: Callable[[], FakeProducer],
    new_consumer: Callable[..., Any],
) -> None:
    consumer, producer = new_consumer(partitions=2), new_producer()
    # checkpoints only when asked (after the first loop): the revoke itself must make the state durable
    ctl, m = harness.controller(consumer, producer, outer_checkpoint_interval_ms=3_600_000)
    ctl.subscribe()
    consumer.feed(R, 0, action("e1", "u1", T0))
    consumer.feed(R, 1, action("e2", "u2", T0))
    ctl.run_once()
    consumer.feed(R, 0, action("e1b", "u1", T0 + 500))
    ctl.run_once()
    assert metric(m, "rewardloop_outer_open_sessions") == 2

    consumer.rebalance_revoke([0])
    assert sorted(ctl.shards) == [1]
    ctl.close_due(0)
    assert metric(m, "rewardloop_outer_open_sessions") == 1
    # records of the revoked partition that raced the revoke are not applied
    assert ctl.handle(R, 0, 2, action("e9", "u1", T0 + 5), 0) is False

    consumer.feed(R, 0, action("e3", "u1", T0 + 1000))  # arrives while nobody owns partition 0
    consumer.rebalance_assign([0])
    assert consumer.pos[(R, 0)] == 2  # resumes after what the checkpoint on revoke recorded
    consumer.feed(R, 0, action("e4", "u9", T0 + 1000 + GAP_MS + 1))
    ctl.run_once()
    ctl.checkpoint_and_flush()
    [rec] = producer.sessions()
    assert rec["user_id"] == "u1" and [s["event_id"] for s in rec["steps"]] == ["e1", "e1b", "e3"]


def test_the_memory_store_reads_kpi_priorities_from_redis(rds: redis.Redis) -> None:
    """OUTER_STATE_STORE=memory keeps only the session state local: the business priorities stay
    re-targetable at runtime (what __main__ wires: ``MemoryStateStore(reader=client.get)``)."""
    s = OuterSettings(outer_consumer_group="mem", outer_priorities_refresh_s=0.0)
    m = OuterMetrics(registry=CollectorRegistry())
    ctl = DurableController(
        s, FakeConsumer(), FakeProducer(), MemoryStateStore(reader=rds.get), None, m, now_ms=lambda: 0
    )
    rds.set("rewardloop:kpi-priorities", json.dumps({"priorities": {"revenue": 2.5}, "kappa": 0.6}))
    ctl.run_once()
    assert ctl.ctx.priorities["revenue"] == 2.5 and ctl.ctx.kappa_override == 0.6
    assert MemoryStateStore(kv={"k": b"v"}).get("k") == b"v"


def test_amendments_carry_revision_0s_tuner_field(
    harness: Harness,
    new_producer: Callable[[], FakeProducer],
    new_consumer: Callable[..., Any],
) -> None:
    """Every revision is the complete session: a delayed KPI's amendment (revision 1) carries the
    same ``tuner`` behaviour as revision 0, also after a restart from the stored state."""
    consumer, producer = new_consumer(partitions=1), new_producer()
    ctl, _ = harness.controller(consumer, producer)
    ctl.subscribe()
    consumer.feed(R, 0, action("e1", "u1", T0))
    consumer.feed(R, 0, action("e2", "u9", T0 + GAP_MS + 1))  # closes u1
    ctl.run_once()
    ctl.checkpoint_and_flush()
    # a new owner (the state store is all it has), then the delayed purchase amends u1's session
    consumer2, producer2 = new_consumer(partitions=1), producer
    consumer2.log = consumer.log
    ctl2, _ = harness.controller(consumer2, producer2)
    ctl2.subscribe()
    consumer2.feed(K, 0, encode_json(make_kpi_event("k1", "u1", "purchase", T0 + 2000, revenue=5.0)))
    ctl2.run_once()  # undecided until the clock passes tk + 2 gap + lateness (a newer u1 session may come)
    consumer2.feed(R, 0, action("e3", "u8", T0 + 2000 + 2 * GAP_MS + 300_000 + 1))
    ctl2.run_once()
    ctl2.checkpoint_and_flush()
    revs = {s["revision"]: s for s in producer.sessions() if s["user_id"] == "u1"}
    assert sorted(revs) == [0, 1] and revs[1]["kpi"]["purchases"] == 1
    assert revs[0]["tuner"] is not None and revs[1]["tuner"] == revs[0]["tuner"]


def test_an_amendment_in_the_same_pass_as_revision_0_gets_its_tuner_and_baseline(
    harness: Harness,
    new_producer: Callable[[], FakeProducer],
    new_consumer: Callable[..., Any],
) -> None:
    """One batch closes u1 (a far-future action) and then brings its delayed purchase: revision 0 and
    revision 1 come out of the same close pass and must agree on ``tuner`` and ``baseline``."""
    consumer, producer = new_consumer(partitions=1), new_producer()
    ctl, _ = harness.controller(consumer, producer)
    ctl.subscribe()
    far = T0 + 2000 + 2 * GAP_MS + 300_000 + 1  # past the KPI's decision point: attributed at once
    consumer.feed(R, 0, action("e1", "u1", T0))  # merge order = Kafka timestamps (= offsets here)
    consumer.feed(K, 0, encode_json(make_kpi_event("k0", "nobody", "purchase", T0, revenue=1.0)))
    consumer.feed(R, 0, action("e2", "u9", far))
    consumer.feed(K, 0, encode_json(make_kpi_event("k1", "u1", "purchase", T0 + 2000, revenue=5.0)))
    ctl.run_once()
    revs = {s["revision"]: s for s in producer.sessions() if s["user_id"] == "u1"}
    assert sorted(revs) == [0, 1] and revs[1]["kpi"]["purchases"] == 1
    assert revs[0]["tuner"] is not None and revs[1]["tuner"] == revs[0]["tuner"]
    assert revs[1]["baseline"] == revs[0]["baseline"]
