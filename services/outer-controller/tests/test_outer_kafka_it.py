"""Against a real Kafka + Redis (started by the ``kafka_stack`` fixture): the durable controller,
run as ``rewardloop-outer`` processes, survives ``kill -9`` mid-stream and scales out to two members
of one consumer group (with rebalances mid-stream), producing exactly the sessions of one
uninterrupted process (which produces with confluent-kafka, the others with the default
``NativeProducer``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from outer_it_stack import REPO, KafkaStack
from outer_streams import final_sessions, stream_items, tick_event

from rewardloop_common.admin import create_topics

pytestmark = pytest.mark.integration

GAP_S = 60
USERS = 300
PARTITIONS = 3


@dataclass(frozen=True)
class Topics:
    reward: str
    kpi: str

    def out(self, name: str) -> tuple[str, str]:
        return f"{self.reward}.{name}.sessions", f"{self.reward}.{name}.late"


class Controller:
    """One ``rewardloop-outer`` process."""

    def __init__(
        self, stack: KafkaStack, topics: Topics, name: str, group: str, log_dir: Path, tag: str = ""
    ) -> None:
        sessions, late = topics.out(name)
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap,
            "REDIS_URL": stack.redis_url,
            "KAFKA_TOPIC_REWARD_RAW": topics.reward,
            "KAFKA_TOPIC_KPI_RAW": topics.kpi,
            "KAFKA_TOPIC_SESSIONS": sessions,
            "OUTER_LATE_TOPIC": late,
            "OUTER_CONSUMER_GROUP": group,
            "OUTER_CLOCK": "event",
            "OUTER_SESSION_GAP_SECONDS": str(GAP_S),
            "OUTER_ALLOWED_LATENESS_SECONDS": "300",
            "OUTER_ATTRIBUTION_WINDOW_SECONDS": "3600",
            "OUTER_METRICS_PORT": "0",
            "OUTER_CHECKPOINT_INTERVAL_MS": "50",
            "OUTER_KAFKA_SESSION_TIMEOUT_MS": "6000",
            "OUTER_MIN_SESSIONS": "1000000",
            "OUTER_SHADOW_MODE": "true",
            "LOG_FORMAT": "json",
        }
        self.log_path = log_dir / f"{name}{tag}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Controller:
        with open(self.log_path, "ab") as f:
            self.proc = subprocess.Popen(
                [str(REPO / ".venv/bin/rewardloop-outer")], env=self.env, stdout=f, stderr=subprocess.STDOUT
            )
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                assert self.proc.wait(timeout=60) == 0, f"exit code != 0; see {self.log_path}"
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise


def produce(stack: KafkaStack, items: list[tuple[str, str, bytes]]) -> None:
    p = Producer({"bootstrap.servers": stack.bootstrap, "linger.ms": 5, "enable.idempotence": True})
    for topic, user, value in items:
        p.produce(topic, key=user.encode(), value=value)
        p.poll(0)
    assert p.flush(30) == 0


def produce_ticks(stack: KafkaStack, topics: Topics) -> None:
    p = Producer({"bootstrap.servers": stack.bootstrap})
    for part in range(PARTITIONS):
        p.produce(
            topics.reward, key=f"tick-{part}".encode(), value=tick_event(part, GAP_S * 1000), partition=part
        )
    assert p.flush(30) == 0


def high_watermarks(stack: KafkaStack, topics: list[str]) -> dict[tuple[str, int], int]:
    c = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": f"wm-{uuid.uuid4().hex[:6]}"})
    try:
        return {
            (t, p): c.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]
            for t in topics
            for p in range(PARTITIONS)
        }
    finally:
        c.close()


def wait_done(stack: KafkaStack, topics: Topics, group: str, timeout_s: float = 120) -> None:
    """Until every shard's checkpoint covers the input's end and its outbox is empty."""
    rds = redis.Redis.from_url(stack.redis_url)
    want = high_watermarks(stack, [topics.reward, topics.kpi])
    deadline = time.monotonic() + timeout_s
    state: Any = None
    while time.monotonic() < deadline:
        state = []
        for p in range(PARTITIONS):
            raw = rds.get(f"rewardloop:outer:{group}:p{p}:meta")
            offsets = json.loads(raw)["offsets"] if raw else {}
            state.append((offsets, rds.hlen(f"rewardloop:outer:{group}:p{p}:outbox")))
        done = all(
            state[p][0].get(t, 0) == want[(t, p)] and state[p][1] == 0
            for t in (topics.reward, topics.kpi)
            for p in range(PARTITIONS)
        )
        if done:
            return
        time.sleep(0.2)
    raise AssertionError(f"group {group} did not finish in {timeout_s}s: {state} vs {want}")


def read_topic(stack: KafkaStack, topic: str, timeout_s: float = 30) -> list[bytes]:
    ends = high_watermarks(stack, [topic])
    c = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": f"rd-{uuid.uuid4().hex[:6]}"})
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    pos = {p: 0 for p in range(PARTITIONS)}
    out: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while any(pos[p] < ends[(topic, p)] for p in pos) and time.monotonic() < deadline:
            for m in c.consume(1000, 0.5):
                if m.error() is None:
                    out.append(m.value())
                    pos[m.partition()] = m.offset() + 1
    finally:
        c.close()
    assert all(pos[p] >= ends[(topic, p)] for p in pos), f"{topic}: read {pos} of {ends}"
    return out


def diff(got: dict[str, dict[str, Any]], want: dict[str, dict[str, Any]]) -> list[str]:
    """Readable differences (session key, field, got, want), at most 10."""
    out = [f"missing {k}" for k in want.keys() - got.keys()] + [
        f"extra {k}" for k in got.keys() - want.keys()
    ]
    for k in sorted(got.keys() & want.keys()):
        for f in sorted(set(got[k]) | set(want[k])):
            if got[k].get(f) != want[k].get(f):
                out.append(f"{k}.{f}: got {str(got[k].get(f))[:300]} want {str(want[k].get(f))[:300]}")
    # the reward fields differ in cascade (the EMA baseline) once one session differs: show the cause
    out.sort(key=lambda x: any(f in x for f in (".advantage", ".baseline", ".steps", ".blended")))
    return out[:10]


def late_ids(records: list[bytes]) -> set[str]:
    return {json.loads(v)["event_id"] for v in records}


@dataclass(frozen=True)
class World:
    stack: KafkaStack
    topics: Topics
    items: list[tuple[str, str, bytes]]
    want: dict[str, dict[str, Any]]
    want_late: set[str]
    log_dir: Path


@pytest.fixture(scope="module")
def world(kafka_stack: KafkaStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Fresh input topics and the reference: ONE uninterrupted controller over the whole stream."""
    run = uuid.uuid4().hex[:8]
    topics = Topics(f"it.{run}.reward", f"it.{run}.kpi")
    names = [topics.reward, topics.kpi]
    for n in ("ref", "kill", "scale"):
        names += list(topics.out(n))
    assert create_topics(kafka_stack.bootstrap, names, partitions=PARTITIONS, wait_s=30) == 0
    r, k = topics.reward, topics.kpi
    items = stream_items(2026, USERS, GAP_S * 1000, r, k)
    log_dir = tmp_path_factory.mktemp("outer-it")
    # the whole input first: every run (reference, killed, scaled out) then replays the same backlog;
    # a shard merges its two partitions by record timestamp, so all of them apply the same order
    produce(kafka_stack, items)
    produce_ticks(kafka_stack, topics)
    ref = Controller(kafka_stack, topics, "ref", f"ref-{run}", log_dir)
    # the reference consumes and produces with confluent-kafka, the runs compared with it with the
    # default NativeConsumer and NativeProducer (librdkafka from Rust): the two clients of each kind are
    # compared on the same stream too (rebalances, kill -9 and restarts included)
    ref.env["OUTER_NATIVE_PRODUCER"] = "false"
    ref.env["OUTER_NATIVE_CONSUMER"] = "false"
    ref.start()
    try:
        wait_done(kafka_stack, topics, f"ref-{run}")
    finally:
        ref.stop()
    sessions, late = topics.out("ref")
    want = final_sessions(read_topic(kafka_stack, sessions))
    want_late = late_ids(read_topic(kafka_stack, late))
    assert len(want) > 2 * USERS, len(want)
    assert any(s["kpi"]["purchases"] for s in want.values()) and want_late
    yield World(kafka_stack, topics, items, want, want_late, log_dir)


def _replay_world(world: World, name: str) -> tuple[dict[str, dict[str, Any]], set[str], list[bytes]]:
    sessions, late = world.topics.out(name)
    raw = read_topic(world.stack, sessions)
    return final_sessions(raw), late_ids(read_topic(world.stack, late)), raw


def test_kill_9_mid_stream_yields_the_sessions_of_an_uninterrupted_run(world: World) -> None:
    """The input is already in Kafka; the controller is killed -9 twice while it works through it."""
    group = f"kill-{uuid.uuid4().hex[:6]}"
    ctl = Controller(world.stack, world.topics, "kill", group, world.log_dir)
    rds = redis.Redis.from_url(world.stack.redis_url)
    kills = 0
    for wait_offsets in (len(world.items) // 4, len(world.items) // 2):
        ctl.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill once the shards are part-way through the input
            done = 0
            for p in range(PARTITIONS):
                raw = rds.get(f"rewardloop:outer:{group}:p{p}:meta")
                done += sum(json.loads(raw)["offsets"].values()) if raw else 0
            if done >= wait_offsets:
                break
            time.sleep(0.01)
        ctl.kill9()
        kills += 1
    ctl.start()
    try:
        wait_done(world.stack, world.topics, group)
    finally:
        ctl.stop()
    got, got_late, raw = _replay_world(world, "kill")
    assert kills == 2
    if got != world.want:
        pytest.fail("\n".join(diff(got, world.want)), pytrace=False)
    assert got_late == world.want_late
    assert any(json.loads(v).get("revision", 0) > 0 for v in raw), "amendments were exercised"


def test_two_controllers_split_partitions_and_match_one(world: World) -> None:
    """Member A alone, then B joins (rebalance), then A leaves (rebalance): the same sessions."""
    group = f"scale-{uuid.uuid4().hex[:6]}"
    a = Controller(world.stack, world.topics, "scale", group, world.log_dir, "-a")
    b = Controller(world.stack, world.topics, "scale", group, world.log_dir, "-b")
    rds = redis.Redis.from_url(world.stack.redis_url)

    def progress() -> int:
        total = 0
        for p in range(PARTITIONS):
            raw = rds.get(f"rewardloop:outer:{group}:p{p}:meta")
            total += sum(json.loads(raw)["offsets"].values()) if raw else 0
        return total

    def wait_progress(n: int) -> None:
        deadline = time.monotonic() + 60
        while progress() < n and time.monotonic() < deadline:
            time.sleep(0.01)

    for c in (a, b):  # slow enough that the rebalances land mid-stream
        c.env["OUTER_MAX_RECORDS_PER_SECOND"] = "250"
    a.start()
    try:
        b.start()  # joins while A works through the backlog (throttled): a rebalance mid-stream
        deadline = time.monotonic() + 60
        while not _lines(b.log_path) and time.monotonic() < deadline:  # B got its share
            time.sleep(0.05)
        wait_progress(len(world.items) // 2)
        total = sum(high_watermarks(world.stack, [world.topics.reward, world.topics.kpi]).values())
        at_leave = progress()
        a.stop()  # leaves the group: B takes every partition
        deadline = time.monotonic() + 60
        while len(_lines(b.log_path)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        wait_done(world.stack, world.topics, group)
        # B first shared the partitions with A, then took them all, while input was still unread
        b_assignments = [len(json.loads(ln)["partitions"]) for ln in _lines(b.log_path)]
        assert len(b_assignments) >= 2 and min(b_assignments) < max(b_assignments) == 2 * PARTITIONS
        assert at_leave < total, (at_leave, total)
    finally:
        a.stop()
        b.stop()
    got, got_late, _ = _replay_world(world, "scale")
    if got != world.want:
        pytest.fail("\n".join(diff(got, world.want)), pytrace=False)
    assert got_late == world.want_late


def _lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln.startswith("{") and "partitions assigned" in ln]
