from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from rewardloop_common.events import SessionRecord
from rewardloop_common.kafka import encode_json
from rewardloop_common.testing import make_kpi_event, make_reward_event
from rewardloop_common.weights_store import WeightsStore
from rewardloop_outer.controller import OuterController
from rewardloop_outer.metrics import OuterMetrics
from rewardloop_outer.pipeline import SessionPipeline
from rewardloop_outer.settings import OuterSettings

R, K, S = "recsys.reward.raw", "recsys.kpi.raw", "recsys.sessions"
T0 = 1_763_888_400_000
GAP_MS = 2_000


def metric(m: OuterMetrics, name: str, labels: dict[str, str] | None = None) -> float:
    return m.registry.get_sample_value(name, labels or {}) or 0.0


@pytest.fixture()
def pipeline() -> SessionPipeline:
    return SessionPipeline(R, K, GAP_MS, 0.5, OuterMetrics(registry=CollectorRegistry()))


def test_records_to_session_record(pipeline: SessionPipeline) -> None:
    a1 = make_reward_event("e1", "u1", T0, clicked=True, dwell_seconds=12.5, reward=2.0, weights_version=3)
    a2 = make_reward_event("e2", "u1", T0 + 500, position=1, reward=1.0, weights_version=4)
    k1 = make_kpi_event("k1", "u1", "purchase", T0 + 900, revenue=19.99)
    k2 = make_kpi_event("k2", "u1", "return_visit", T0 + 950)
    pipeline.handle(R, 0, 5, encode_json(a2), T0)
    pipeline.handle(R, 0, 6, encode_json(a1), T0)
    pipeline.handle(K, 0, 1, encode_json(k1), T0)
    pipeline.handle(K, 0, 2, encode_json(k2), T0)
    assert pipeline.close_due(T0 + 2_500) == []
    [rec] = pipeline.close_due(T0 + 2_501)
    out = json.loads(rec.to_json_bytes())
    assert out["session_key"] == f"u1:{T0}" and out["n_steps"] == 2 and out["gamma"] == 0.5
    assert [s["event_id"] for s in out["steps"]] == ["e1", "e2"]
    assert [s["return"] for s in out["steps"]] == [2.5, 1.0]
    assert out["discounted_return"] == 2.5
    assert out["kpi"] == {
        "revenue": 19.99,
        "purchases": 1,
        "return_visits": 1,
        "subscriptions": 0,
        "event_ids": ["k1", "k2"],
    }
    assert out["business_reward"] == pytest.approx(min(5.0, 3.0439 + 0.5), abs=1e-3)
    assert out["weights_versions"] == [3, 4] and out["closed_at_ms"] == T0 + 2_501
    assert SessionRecord.model_validate(out) == rec
    m = pipeline.metrics
    assert metric(m, "rewardloop_outer_sessions_closed_total") == 1
    assert metric(m, "rewardloop_outer_events_consumed_total", {"topic": R}) == 2
    assert metric(m, "rewardloop_outer_business_reward_count") == 1


def test_invalid_records_are_counted_not_raised(pipeline: SessionPipeline) -> None:
    assert pipeline.handle(R, 0, 0, b"{not json", T0) is None
    assert pipeline.handle(R, 0, 1, b'{"event_id": "x"}', T0) is None
    assert pipeline.handle(K, 0, 0, None, T0) is None
    bad_kpi = json.dumps(
        {"event_id": "k", "user_id": "u", "kind": "purchase", "event_time_ms": 1, "received_at_ms": 1}
    ).encode()
    assert pipeline.handle(K, 0, 1, bad_kpi, T0) is None
    assert pipeline.handle(R, 0, 2, b"\xff\xfe", T0) is None
    m = pipeline.metrics
    assert metric(m, "rewardloop_outer_invalid_records_total", {"topic": R}) == 3
    assert metric(m, "rewardloop_outer_invalid_records_total", {"topic": K}) == 2
    # invalid records are consumed: the commit position moves past them
    assert pipeline.safe_offsets() == {(R, 0): 3, (K, 0): 2}


def test_unattributed_kpi_metric(pipeline: SessionPipeline) -> None:
    pipeline.handle(K, 0, 0, encode_json(make_kpi_event("k1", "nobody")), T0)
    assert metric(pipeline.metrics, "rewardloop_outer_kpi_unattributed_total") == 1


def test_safe_offsets_hold_open_and_unsent_sessions(pipeline: SessionPipeline) -> None:
    pipeline.handle(R, 0, 10, encode_json(make_reward_event("e1", "u1", T0)), T0)
    pipeline.handle(R, 0, 11, encode_json(make_reward_event("e2", "u2", T0 + 1_000)), T0)
    pipeline.handle(R, 1, 4, encode_json(make_reward_event("e3", "u3", T0)), T0)
    assert pipeline.safe_offsets() == {(R, 0): 10, (R, 1): 4}
    recs = pipeline.close_due(T0 + 2_001)  # u1 and u3 close, u2 still open
    assert {r.user_id for r in recs} == {"u1", "u3"}
    assert pipeline.safe_offsets() == {(R, 0): 10, (R, 1): 4}  # records not delivered yet
    for r in recs:
        pipeline.mark_delivered(r.session_key)
    assert pipeline.safe_offsets() == {(R, 0): 11, (R, 1): 5}
    pipeline.forget_partitions({(R, 0)})
    assert pipeline.safe_offsets() == {(R, 1): 5} and pipeline.window.open_count == 0


# --------------------------------------------------------------------------- controller, fake Kafka


class FakeError:
    def __init__(self, code: int) -> None:
        self._code = code

    def code(self) -> int:
        return self._code


class FakeMessage:
    def __init__(
        self, topic: str, partition: int, offset: int, value: bytes | None, error: Any = None
    ) -> None:
        self._t, self._p, self._o, self._v, self._e = topic, partition, offset, value, error

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


class FakeConsumer:
    def __init__(self) -> None:
        self.batches: list[list[FakeMessage]] = []
        self.commits: list[dict[tuple[str, int], int]] = []
        self.subscribed: list[str] = []
        self.closed = False
        self.on_revoke: Any = None

    def subscribe(self, topics: list[str], on_assign: Any = None, on_revoke: Any = None) -> None:
        self.subscribed, self.on_revoke = topics, on_revoke

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        return self.batches.pop(0) if self.batches else []

    def commit(self, offsets: Any = None, asynchronous: bool = True) -> None:
        self.commits.append({(tp.topic, tp.partition): tp.offset for tp in offsets})

    def close(self) -> None:
        self.closed = True


class FakeProducer:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes, bytes]] = []
        self.pending: list[tuple[Any, str]] = []
        self.fail_next = 0

    def produce(self, topic: str, key: bytes, value: bytes, on_delivery: Any) -> None:
        self.pending.append((on_delivery, topic))
        self.records.append((topic, key, value))

    def poll(self, timeout: float = 0) -> int:
        pending, self.pending = self.pending, []
        for cb, _ in pending:
            if self.fail_next:
                self.fail_next -= 1
                self.records.pop()  # pretend it never landed
                cb("broker down", None)
            else:
                cb(None, None)
        return len(pending)

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return 0


class Clock:
    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


def make_controller(
    store: WeightsStore, batch_sessions: int = 2
) -> tuple[OuterController, FakeConsumer, FakeProducer, Clock]:
    settings = OuterSettings(
        outer_session_gap_seconds=2.0, outer_update_batch_sessions=batch_sessions, outer_gamma=0.99
    )
    consumer, producer, clock = FakeConsumer(), FakeProducer(), Clock(T0)
    ctl = OuterController(
        settings,
        consumer,
        producer,
        store,
        OuterMetrics(registry=CollectorRegistry()),
        now_ms=clock,
        commit_interval_s=0.0,
    )
    return ctl, consumer, producer, clock


def test_controller_end_to_end_without_kafka(store: WeightsStore) -> None:
    ctl, consumer, producer, clock = make_controller(store, batch_sessions=2)
    ctl.subscribe()
    assert consumer.subscribed == [R, K]
    consumer.batches = [
        [
            FakeMessage(
                R, 0, 0, encode_json(make_reward_event("e1", "u1", T0, dwell_seconds=30, reward=1.0))
            ),
            FakeMessage(R, 1, 0, encode_json(make_reward_event("e2", "u2", T0, dwell_seconds=1, reward=0.5))),
            FakeMessage(K, 0, 0, encode_json(make_kpi_event("k1", "u1", revenue=50.0))),
            FakeMessage(R, 1, 1, b"garbage"),
            FakeMessage(R, 2, 0, None, error=FakeError(-191)),  # partition EOF: ignored
        ]
    ]
    ctl.run_once()
    assert producer.records == [] and consumer.commits[-1] == {(R, 0): 0, (R, 1): 0, (K, 0): 0}

    clock.t = T0 + 2_001
    producer.fail_next = 1  # the first session record fails once and is retried
    ctl.run_once()
    assert len(producer.records) == 1
    assert consumer.commits[-1] == {(R, 1): 2}  # u2 delivered; u1's record (partition 0) still unsent
    ctl.run_once()
    assert len(producer.records) == 2
    assert consumer.commits[-1] == {(R, 0): 1, (K, 0): 1}

    by_user = {json.loads(v)["user_id"]: (t, k, json.loads(v)) for t, k, v in producer.records}
    topic, key, rec = by_user["u1"]
    assert topic == S and key == b"u1" and rec["kpi"]["purchases"] == 1
    # 2 sessions closed = one batch: dwell correlates with revenue -> w_dwell goes up
    doc = store.get("default")
    assert doc.source == "outer-controller" and doc.weights.dwell > 0.5
    m = ctl.metrics
    assert metric(m, "rewardloop_outer_weight_updates_total") == 1
    assert metric(m, "rewardloop_outer_weights_version", {"segment": "default"}) == doc.version
    assert metric(m, "rewardloop_outer_invalid_records_total", {"topic": R}) == 1
    assert metric(m, "rewardloop_outer_session_produce_errors_total") == 1
    assert metric(m, "rewardloop_outer_open_sessions") == 0

    ctl.shutdown()
    assert consumer.closed


def test_controller_shutdown_keeps_open_sessions_uncommitted(store: WeightsStore) -> None:
    ctl, consumer, producer, clock = make_controller(store)
    consumer.batches = [[FakeMessage(R, 0, 7, encode_json(make_reward_event("e1", "u1", T0)))]]
    stop = threading.Event()
    ctl.run_once()
    stop.set()
    ctl.run(stop)  # returns at once and shuts down
    assert producer.records == []  # the open session was not closed early
    assert all(c.get((R, 0)) == 7 for c in consumer.commits)  # the commit never passed it
    assert consumer.closed


def test_controller_revoke_drops_sessions(store: WeightsStore) -> None:
    ctl, consumer, _, _ = make_controller(store)
    ctl.subscribe()
    consumer.batches = [[FakeMessage(R, 0, 3, encode_json(make_reward_event("e1", "u1", T0)))]]
    ctl.run_once()
    assert ctl.pipeline.window.open_count == 1

    class TP:
        topic, partition = R, 0

    consumer.on_revoke(consumer, [TP()])
    assert ctl.pipeline.window.open_count == 0
