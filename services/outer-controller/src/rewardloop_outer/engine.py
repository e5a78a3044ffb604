"""The durable, scale-out outer controller (issue #4): sharded session state in Redis.

Shards: one per input partition number ``p`` (``recsys.reward.raw[p]`` + ``recsys.kpi.raw[p]``; both
are keyed by ``user_id`` and consumed with range assignment, so one member owns both). Each shard has
its own :class:`SessionWindow`, so its clock is that partition's own event-time watermark and two
processes splitting the partitions compute exactly what one process would.

The commit protocol (per loop iteration; a checkpoint every ``OUTER_CHECKPOINT_INTERVAL_MS``):

1. consume a batch; apply every record to its shard's state (records below the shard's stored
   offset -- already in the state -- are skipped; duplicates by ``event_id`` are counted and ignored);
2. close due sessions / emit amendments; their records and the late-event records go to the shard's
   *outbox* (in memory);
3. **checkpoint**: the dirty users, the outbox changes (the records new since the last checkpoint as ONE
   *batch*, and the removal of the batches whose records were all acknowledged) and the shard meta
   with the *next input offsets
   the state reflects* are written to Redis in one fenced ``MULTI/EXEC`` (:mod:`.state_store`);
4. only then: the outbox is produced (acks=all, idempotent) and the input offsets are committed to
   Kafka (informational: on assignment the controller seeks to the offsets stored in Redis). A record
   leaves the outbox when the broker acknowledged it (the removal lands with the next checkpoint).

After ``kill -9`` the new owner loads the last checkpoint and replays from its offsets: the state is
exactly-once; the output is at-least-once (an acknowledged record whose outbox removal did not land
yet is produced again, byte-identical: consumers de-duplicate on ``(session_key, revision)``).
"""

from __future__ import annotations

import gc
import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from pydantic import ValidationError
from redis.exceptions import RedisError

from rewardloop_common.events import SessionRecord, SessionTuner
from rewardloop_common.kpi_priorities import KPI_PRIORITIES_KEY
from rewardloop_common.logging import get_logger
from rewardloop_outer_native import (
    RecordQueue,
    close_records,
    group_messages,
    ingest_actions,
    ingest_queue,
    outbox_batch,
    session_record,
)

from .business_reward import DEFAULT_PRIORITIES, KappaSchedule, ema_update
from .credit import CreditAssigner
from .fastevents import parse_action, parse_kpi
from .metrics import OuterMetrics
from .native_window import RESULTS as _RESULTS
from .native_window import NativeClosed, NativeSessionWindow
from .records import RewardContext, compute_record, record_json
from .session_window import AddResult, ClosedSession, LateEvent, SessionWindow
from .settings import OuterSettings
from .state_log import NativeUncovered, StateLog, restore_log
from .state_store import Fenced, ShardDelta, StateStore
from .tradeoff import TradeoffTracker
from .weight_update import FirstStep, SessionFeatures, TunerSession

log = get_logger("rewardloop.outer.engine")


LAG_EXPORT_INTERVAL_S = 5.0


def wall_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Shard:
    partition: int
    window: SessionWindow | NativeSessionWindow
    epoch: int
    offsets: dict[str, int] = field(default_factory=dict)  # topic -> next offset the state reflects
    baselines: dict[str, float] = field(default_factory=dict)
    outbox: dict[str, tuple[str, bytes, bytes]] = field(default_factory=dict)
    outbox_new: set[str] = field(default_factory=set)  # not checkpointed yet
    # the durable outbox is one hash field per checkpoint (a batch); a batch is removed once every
    # record in it was acknowledged (one field per record cost a Redis field, a compression call and
    # a removal per session: a visible share at 10^4 sessions/s)
    rid_batch: dict[str, str] = field(default_factory=dict)  # record id -> its batch (field)
    batch_pending: dict[str, set[str]] = field(default_factory=dict)  # batch -> unacknowledged ids
    batches_done: set[str] = field(default_factory=set)  # to remove with the next checkpoint
    next_batch: int = 0
    in_flight: set[str] = field(default_factory=set)
    ingest_ts: list[int] = field(default_factory=list)  # Kafka timestamps since the last checkpoint
    log: StateLog = field(default_factory=StateLog)  # the durable delta log's bookkeeping

    @property
    def core(self) -> Any:
        """The native window (``rewardloop_outer_native.NativeWindow``) or ``None`` (Python window)."""
        return getattr(self.window, "core", None)

    def meta(self) -> dict[str, Any]:
        w = self.window
        return {  # copies: a failed write is sent again later, with the offsets of when it was taken
            "offsets": dict(self.offsets),
            "log_base": self.log.base,
            "max_event_ms": w.max_event_ms,
            "baselines": dict(self.baselines),
            "counters": {
                "duplicates": w.duplicates,
                "late_actions": w.late_actions,
                "too_late_actions": w.too_late_actions,
                "unattributed_kpis": w.unattributed_kpis,
                "amendments": w.amendments,
            },
        }


#: rewardloop_outer_event_to_state_lag_seconds samples the first record of every batch and then one in
#: this many (reading each record's timestamp costs measurable time at 10^4 events/s);
#: ``DurableController.lag_sample_every`` overrides it (the benchmark samples one in 8).
LAG_SAMPLE_EVERY = 64


#: the loop counts as behind (its checkpoint write pipelined) after this many full batches in a row
PIPELINE_AFTER_FULL_BATCHES = 3


@dataclass
class _PendingWrite:
    """One checkpoint's payload, taken from the shards: per shard its delta, the ids in its new outbox
    batch and the sampled record timestamps; the input offsets that state reflects and the records for
    the tuner it makes durable (committed and fed once it landed -- the loop has moved on by then when
    the write runs on the writer thread)."""

    shards: list[tuple[Shard, ShardDelta, list[str], list[int]]] = field(default_factory=list)
    offsets: list[tuple[Shard, str, int]] = field(default_factory=list)
    tuner: list[TunerSession] = field(default_factory=list)


def _ts(m: Any) -> int:
    ts = m.timestamp()
    return int(ts[1]) if ts and ts[0] else 0


class MessageQueue(deque[Any]):
    """A partition's consumed confluent-kafka ``Message``s, with :class:`RecordQueue`'s ``head_ts``
    (the native consumer's queue) so that the merge reads both alike."""

    def head_ts(self) -> int:
        return _ts(self[0]) if self else 0


def _outbox_batch(entries: list[tuple[str, tuple[str, bytes, bytes]]]) -> bytes:
    """One outbox batch: per record a JSON header line ``{"r": id, "t": topic, "k": key, "n": len}``
    and then the value's ``n`` bytes and a newline (values are stored as they are, not re-escaped).
    Built natively (:func:`outbox_batch`, the same bytes; ~3 % of the loop thread in Python at 10^5
    events/s); :func:`_outbox_batch_py` for what the native path declines."""
    native = outbox_batch(entries)
    return native if native is not None else _outbox_batch_py(entries)


def _outbox_batch_py(entries: list[tuple[str, tuple[str, bytes, bytes]]]) -> bytes:
    """:func:`_outbox_batch` in Python (the reference)."""
    out: list[bytes] = []
    for rid, (t, k, v) in entries:
        out.append(_outbox_value_header(rid, t, k, len(v)))
        out.append(v)
    return b"\n".join(out)


def _outbox_value_header(rid: str, topic: str, key: bytes, n: int) -> bytes:
    try:
        return orjson.dumps({"r": rid, "t": topic, "k": key.decode(), "n": n})
    except (TypeError, orjson.JSONEncodeError):  # a str orjson refuses (lone surrogate)
        return json.dumps({"r": rid, "t": topic, "k": key.decode(), "n": n}).encode()


def _read_outbox_batch(raw: bytes) -> list[tuple[str, tuple[str, bytes, bytes]]]:
    """The records of a batch written by :func:`_outbox_batch`."""
    out: list[tuple[str, tuple[str, bytes, bytes]]] = []
    pos = 0
    while pos < len(raw):
        nl = raw.index(b"\n", pos)
        h = json.loads(raw[pos:nl])
        start = nl + 1
        value = raw[start : start + h["n"]]
        out.append((h["r"], (h["t"], h["k"].encode(), value)))
        pos = start + h["n"] + 1
    return out


def _forget(shard: Shard, batch: str, rid: str | None) -> None:
    """``rid`` no longer needs ``batch``; a batch nobody needs is removed with the next checkpoint."""
    pending = shard.batch_pending.get(batch)
    if pending is None:
        return
    if rid is not None:
        pending.discard(rid)
    if not pending:
        del shard.batch_pending[batch]
        shard.batches_done.add(batch)


class DurableController:
    def __init__(
        self,
        settings: OuterSettings,
        consumer: Any,
        producer: Any,
        state: StateStore,
        tuner: Any | None = None,
        metrics: OuterMetrics | None = None,
        *,
        now_ms: Callable[[], int] = wall_ms,
        poll_timeout: float = 0.05,
        max_batch: int = 2000,
        on_record: Callable[[SessionRecord], None] | None = None,
    ) -> None:
        self.s = settings
        self.consumer = consumer
        self.producer = producer
        # a producer with ``batch_reports`` (rewardloop_outer_native.NativeProducer) takes records and
        # gives delivery reports a batch at a time (tokens -> the outbox record each stands for);
        # anything else has confluent-kafka's API (a callback per record, run inside poll/flush)
        self._native_producer = bool(getattr(producer, "batch_reports", False))
        # a consumer with ``consume_into`` (rewardloop_outer_native.NativeConsumer) fills the partition
        # queues itself (RecordQueues, reward events parsed already); anything else is confluent-kafka's
        # Consumer, whose Messages are grouped into MessageQueues here
        self._native_consumer = hasattr(consumer, "consume_into")
        self._tokens: dict[int, tuple[Shard, str]] = {}
        self._next_token = 0
        self.state = state
        self.tuner = tuner
        self.metrics = metrics or OuterMetrics()
        self.wall = now_ms
        self.poll_timeout = poll_timeout
        self.max_batch = max_batch
        self.on_record = on_record
        self.reward_topic = settings.kafka_topic_reward_raw
        self.kpi_topic = settings.kafka_topic_kpi_raw
        self.shards: dict[int, Shard] = {}
        self.ctx = RewardContext(
            gamma=settings.outer_gamma,
            kappa=KappaSchedule(
                settings.outer_kappa_initial,
                settings.outer_kappa_final,
                round(settings.outer_kappa_anneal_days * 86_400_000),
                settings.outer_kappa_anchor_ms,
            ),
            credit=CreditAssigner(settings.outer_gamma, settings.outer_credit_model_dir or None),
            baseline_alpha=settings.outer_baseline_alpha,
            priorities=dict(DEFAULT_PRIORITIES),
        )
        self._lock = threading.Lock()  # delivery callbacks run inside poll()/flush() on this thread
        self._last_checkpoint = 0.0
        self._last_priorities = -math.inf
        # revision-0 sessions for the tuner (fed once checkpointed)
        self._tuner_queue: list[TunerSession] = []
        self._retry: _PendingWrite | None = None  # a write that failed: sent again before anything newer
        # the loop's checkpoint write on a thread of its own (OUTER_CHECKPOINT_PIPELINE): at most one in
        # flight; the loop applies the next records meanwhile and lands it when it is done
        self._writer: ThreadPoolExecutor | None = None
        self._inflight: tuple[Future[tuple[int, float]], _PendingWrite] | None = None
        self._landed_pws: list[_PendingWrite] = []  # landed, offsets not committed / tuner not fed yet
        self._full_batches = 0  # consumed full batches in a row: the loop is behind
        self._queues: dict[tuple[str, int], Any] = {}  # MessageQueue or RecordQueue
        self._paused: set[tuple[str, int]] = set()
        self._idle_since: dict[tuple[str, int], float] = {}
        # (landed at, wall ms; event (Kafka timestamp) -> durable state, ms) of the sampled records (bench)
        self.lag_samples: list[tuple[int, int]] = []
        self.record_lag = False  # keep the sampled lags in lag_samples (the benchmark)
        self.lag_sample_every = LAG_SAMPLE_EVERY
        m = self.metrics
        # labelled children resolved once: .labels() per record is a measurable cost at 10^4+/s
        self._consumed_c = {
            self.reward_topic: m.events_consumed.labels(topic=self.reward_topic),
            self.kpi_topic: m.events_consumed.labels(topic=self.kpi_topic),
        }
        self._routed_c = {
            self.reward_topic: m.routed_late.labels(kind="action"),
            self.kpi_topic: m.routed_late.labels(kind="kpi"),
        }
        self._too_late_c = m.too_late.labels(kind="action")
        self.tradeoff = TradeoffTracker(m)
        self._last_lag = -math.inf
        self._last_freeze = time.monotonic()  # the first freeze after one interval of work
        self._last_full_gc = self._last_freeze
        self._n_consumed = {self.reward_topic: 0, self.kpi_topic: 0}  # added to the counter per batch

    # ------------------------------------------------------------------------------------ lifecycle

    def clock_now(self) -> int:
        return 0 if self.s.outer_clock == "event" else self.wall()

    def new_window(self) -> SessionWindow | NativeSessionWindow:
        s = self.s
        if s.outer_native:
            return NativeSessionWindow(
                s.gap_ms,
                allowed_lateness_ms=s.lateness_ms,
                attribution_window_ms=s.attribution_ms,
                compress_retained=s.outer_compress_retained,
            )
        return SessionWindow(
            s.gap_ms, allowed_lateness_ms=s.lateness_ms, attribution_window_ms=s.attribution_ms
        )

    def subscribe(self) -> None:
        topics = [self.reward_topic, self.kpi_topic]
        self.consumer.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
        log.info(
            "subscribed",
            topics=topics,
            group=self.s.outer_consumer_group,
            consumer=type(self.consumer).__name__,
            producer=type(self.producer).__name__,
        )

    def run(self, stop: threading.Event) -> None:
        self.subscribe()
        try:
            with automatic_gc_paused(self.s):
                while not stop.is_set():
                    self.run_once()
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        log.info("shutting down", shards=sorted(self.shards))
        try:
            self.checkpoint_and_flush()
        except (RedisError, Fenced) as exc:
            log.warning("final checkpoint failed", error=str(exc))
        finally:
            try:
                self.consumer.close()
            except (KafkaException, RuntimeError) as exc:
                log.warning("consumer close failed", error=str(exc))
            if self._writer is not None:
                self._writer.shutdown(wait=True)

    # ------------------------------------------------------------------------------------- the loop

    def run_once(self) -> int:
        t0 = time.monotonic()
        self._refresh_priorities()
        self.ctx.credit.maybe_reload(t0)
        rate = self.s.outer_max_records_per_second
        n = self.max_batch if not rate else max(1, min(self.max_batch, rate // 10))
        n_msgs = self._enqueue(n)
        self._full_batches = self._full_batches + 1 if n_msgs >= n else 0
        handled = self._process_queues()
        for topic, n in self._n_consumed.items():
            if n:
                self._consumed_c[topic].inc(n)
                self._n_consumed[topic] = 0
        self.close_due(self.clock_now())
        self.tradeoff.maybe_refresh()  # the last sessions' points, when no session closes for a while
        if t0 - self._last_lag >= LAG_EXPORT_INTERVAL_S:
            self._export_lag()
            self._last_lag = t0
        self._poll_producer(0)
        if (time.monotonic() - self._last_checkpoint) * 1000 >= self.s.outer_checkpoint_interval_ms:
            # behind (PIPELINE_AFTER_FULL_BATCHES full batches in a row): write on the writer thread
            # while the loop goes on -- more records/s (from a 10^6-event backlog 97-103k -> 98-124k);
            # otherwise inline, the lower latency (the writer thread waits for the GIL at each of its
            # Python steps: pipelined after every full batch, P99 at 50 000/s went 89-94 -> 102-261 ms,
            # a single full batch happening there now and then); inline lands a write in flight first
            if self.s.outer_checkpoint_pipeline and self._full_batches >= PIPELINE_AFTER_FULL_BATCHES:
                self._checkpoint_pipelined()
            else:
                self.checkpoint_and_produce()
        self._maybe_freeze(time.monotonic())
        if rate and n_msgs:  # catch-up throttle (protects Redis; the tests use it to slow a backlog)
            time.sleep(max(0.0, n_msgs / rate - (time.monotonic() - t0)))
        return handled

    def _enqueue(self, n: int) -> int:
        """Consume up to ``n`` records into the partition queues; how many came.

        A method of its own so that the batch list is gone before the loop's collect+freeze: held by
        run_once's frame, its 10^4 Message objects were ~half of what each collection traversed (and
        were frozen, to be freed only by reference counting anyway)."""
        if self._native_consumer:
            return self._enqueue_native(n)
        msgs = self._consume(n)
        # by (topic, partition), natively (a few method calls per message); records already in the
        # state are skipped when applied (handle / ingest_actions compare with the shard's offsets)
        groups, errors = group_messages(msgs)
        for m in errors:
            err = m.error()
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error", error=str(err))
        for (topic, p), ms in groups.items():
            if p not in self.shards:
                continue  # not ours (raced a revoke)
            q = self._queues.get((topic, p))
            if q is None:
                q = self._queues[topic, p] = MessageQueue()
            q.extend(ms)
            self._maybe_pause(topic, p, q)
        return len(msgs)

    def _enqueue_native(self, n: int) -> int:
        """:meth:`_enqueue` with the native consumer: it puts the records into the queues itself."""
        count, touched, errors = self.consumer.consume_into(
            self._queues, n, self.poll_timeout, self.reward_topic
        )
        for err in errors:
            log.warning("consumer error", error=err)
        for topic, p in touched:
            if p not in self.shards:
                self._queues.pop((topic, p), None)  # not ours (raced a revoke)
                continue
            self._maybe_pause(topic, p, self._queues[topic, p])
        return int(count)

    def _maybe_pause(self, topic: str, p: int, q: Any) -> None:
        if len(q) >= self.s.outer_max_queued and (topic, p) not in self._paused:
            self._pause(topic, p)

    def _consume(self, n: int) -> list[Any]:
        """Up to ``n`` records: what the client has fetched already, without waiting; when it has
        none, wait (at most ``poll_timeout``) for the first and take what arrived with it.

        ``consume(n, timeout)`` alone returns only once it has ``n`` records or the timeout passed: a
        partial batch waited the whole timeout even with records ready -- measured 0.15-0.3 s of idle
        per 2*10^5 backlog events, and up to ``poll_timeout`` more lag for every record live."""
        consume = self.consumer.consume
        msgs = consume(num_messages=n, timeout=0)
        if not msgs:
            msgs = consume(num_messages=1, timeout=self.poll_timeout)
            if msgs and n > 1:
                msgs += consume(num_messages=n - 1, timeout=0)
        return msgs  # type: ignore[no-any-return]

    # Records of a shard's two input partitions are applied in ONE order that does not depend on how
    # the client fetched them: a merge by (Kafka timestamp, topic) of the two partition queues, as
    # Kafka Streams does for the partitions of a task. When one queue is empty the other waits until
    # that partition is known to be caught up (its cached high watermark), at most OUTER_MAX_IDLE_MS.
    def _process_queues(self) -> int:
        now = self.clock_now()
        handled = 0
        topics = (self.reward_topic, self.kpi_topic)
        for p, shard in list(self.shards.items()):
            qs = [self._queues.get((t, p)) or MessageQueue() for t in topics]
            caught_up: dict[str, bool] = {}  # an empty queue's partition does not move in this pass
            while qs[0] or qs[1]:
                if qs[0] and qs[1]:
                    i = 0 if qs[0].head_ts() <= qs[1].head_ts() else 1
                else:
                    i = 0 if qs[0] else 1
                    other = topics[1 - i]
                    ok = caught_up.get(other)
                    if ok is None:
                        ok = caught_up[other] = self._caught_up(other, p, shard)
                    if not ok:
                        waited = self._idle_since.setdefault((other, p), time.monotonic())
                        if (time.monotonic() - waited) * 1000 < self.s.outer_max_idle_ms:
                            break
                    elif not qs[1 - i]:
                        # the common case: one topic only, the other caught up -- drain it in one go
                        self._idle_since.pop((other, p), None)
                        if i == 0 and shard.core is not None:
                            handled += self._drain_native(qs[0], p, shard, now)
                        else:
                            handled += self._drain(qs[i], p, shard, now)
                        continue
                self._idle_since.pop((topics[1 - i], p), None)
                m = qs[i].popleft()
                if self.handle(m.topic(), p, m.offset(), m.value(), now):
                    handled += 1
                    if handled % self.lag_sample_every == 1 or self.lag_sample_every == 1:
                        shard.ingest_ts.append(_ts(m))
            for t, q in zip(topics, qs, strict=True):
                if (t, p) in self._paused and len(q) < self.s.outer_max_queued // 2:
                    self._resume(t, p)
        return handled

    def _drain(self, q: Any, p: int, shard: Shard, now: int) -> int:
        handled = 0
        handle, every = self.handle, self.lag_sample_every
        while q:
            m = q.popleft()
            if handle(m.topic(), p, m.offset(), m.value(), now):
                handled += 1
                if every == 1 or handled % every == 1:
                    shard.ingest_ts.append(_ts(m))
        return handled

    def _drain_native(self, q: Any, p: int, shard: Shard, now: int) -> int:
        """:meth:`_drain` of a reward-topic queue in the native core; a record it declines (not the
        common shape, no value) goes through :meth:`handle`, then the native run continues after it."""
        if isinstance(q, RecordQueue):
            return self._drain_records(q, p, shard, now)
        msgs = list(q)
        q.clear()
        topic, core = self.reward_topic, shard.core
        every = self.lag_sample_every
        counts = [0] * len(_RESULTS)
        handled, i = 0, 0
        while i < len(msgs):
            i, *run = ingest_actions(core, msgs, i, shard.offsets.get(topic, 0), now, every)
            handled += self._applied(shard, topic, counts, *run)
            if i < len(msgs):  # the one the native path declined
                m = msgs[i]
                if self.handle(topic, p, m.offset(), m.value(), now):
                    handled += 1
                i += 1
        self._count_results(topic, counts)
        return handled

    def _drain_records(self, q: RecordQueue, p: int, shard: Shard, now: int) -> int:
        """:meth:`_drain_native` of the native consumer's queue: its reward events are parsed already;
        one without (no value, declined by the parser) stays at its head and goes through
        :meth:`handle`."""
        topic, core = self.reward_topic, shard.core
        counts = [0] * len(_RESULTS)
        handled = 0
        while q:
            run = ingest_queue(core, q, shard.offsets.get(topic, 0), now, self.lag_sample_every)
            handled += self._applied(shard, topic, counts, *run)
            if q:  # the one the native path declined
                m = q.popleft()
                if self.handle(topic, p, m.offset(), m.value(), now):
                    handled += 1
        self._count_results(topic, counts)
        return handled

    @staticmethod
    def _applied(
        shard: Shard, topic: str, counts: list[int], nxt: int, applied: int, c: list[int], lag_ts: list[int]
    ) -> int:
        """A native run's outcome (``ingest_actions`` / ``ingest_queue``) into the shard's next offset,
        its lag samples and the run's ``counts``; how many records it applied."""
        if applied:
            shard.offsets[topic] = nxt
            for k, v in enumerate(c):
                counts[k] += v
            shard.ingest_ts.extend(lag_ts)
        return applied

    def _count_results(self, topic: str, counts: list[int]) -> None:
        """The counters of a native run's window results (see ``native_window.RESULTS``)."""
        self._n_consumed[topic] += sum(counts)
        m_ = self.metrics
        if counts[1]:
            m_.duplicates.inc(counts[1])
        if counts[3]:
            self._routed_c[topic].inc(counts[3])
        if counts[5]:
            self._too_late_c.inc(counts[5])

    def _maybe_freeze(self, now: float) -> None:
        """Keep CPython's cyclic GC off the session state (``OUTER_GC_FREEZE_INTERVAL_S``).

        The state is hundreds of thousands of long-lived, acyclic objects (events, sessions). With the
        default GC every 25 % of growth triggers a full collection that scans all of them: measured at
        ~20 % of the controller's time and pauses of 0.4 s at 2*10^5 events, the P99 lag's outliers.
        Here the objects created since the last call are collected (cyclic garbage among them is freed;
        the frozen ones are not scanned) and the survivors frozen. Frozen objects are still freed by
        reference counting; only a cycle that dies after being frozen waits for the full collection
        every ``OUTER_GC_FULL_INTERVAL_S``. (The hot path creates no cycles: with the GC disabled, a
        2*10^5-event run leaves the same 877 unreachable objects as a 5*10^4 one, all from start-up.)
        While :meth:`run` loops, this is the only collection (:func:`automatic_gc_paused`)."""
        iv = self.s.outer_gc_freeze_interval_s
        if not iv or now - self._last_freeze < iv:
            return
        self._last_freeze = now
        if now - self._last_full_gc >= self.s.outer_gc_full_interval_s:
            self._last_full_gc = now
            gc.unfreeze()
        gc.collect()
        gc.freeze()

    def _export_lag(self) -> None:
        """``rewardloop_outer_consumer_lag_messages``: high watermark (the client's cached value,
        refreshed with every fetch -- no broker round trip) minus the next offset the state reflects."""
        for p, shard in self.shards.items():
            for topic in (self.reward_topic, self.kpi_topic):
                try:
                    _lo, hi = self.consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)
                except (KafkaException, RuntimeError):
                    continue
                if hi is None or hi < 0:
                    continue
                lag = max(0, hi - shard.offsets.get(topic, 0))
                self.metrics.consumer_lag.labels(topic=topic, partition=str(p)).set(lag)

    def _caught_up(self, topic: str, p: int, shard: Shard) -> bool:
        try:
            _lo, hi = self.consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)
        except (KafkaException, RuntimeError):
            return False
        return hi >= 0 and shard.offsets.get(topic, 0) >= hi

    def _pause(self, topic: str, p: int) -> None:
        self._paused.add((topic, p))
        self.consumer.pause([TopicPartition(topic, p)])

    def _resume(self, topic: str, p: int) -> None:
        self._paused.discard((topic, p))
        self.consumer.resume([TopicPartition(topic, p)])

    def handle(self, topic: str, partition: int, offset: int, value: bytes | None, now_ms: int) -> bool:
        shard = self.shards.get(partition)
        if shard is None:
            return False  # not ours (a message that raced a revoke)
        if offset < shard.offsets.get(topic, 0):
            return False  # already in the state (replayed before the seek took effect)
        shard.offsets[topic] = offset + 1
        self._n_consumed[topic] += 1
        w = shard.window
        try:
            if value is None:
                raise ValueError("empty record value")
            if topic == self.reward_topic:
                if isinstance(w, NativeSessionWindow):
                    result = w.add_action_raw(value, now_ms)  # native parse; the Python path for the rest
                else:
                    result = w.add_action(parse_action(value), now_ms)
            elif topic == self.kpi_topic:
                result = w.add_kpi(parse_kpi(value), now_ms)
            else:
                raise ValueError(f"unexpected topic {topic}")
        except (ValidationError, ValueError, UnicodeDecodeError) as exc:
            self.metrics.invalid_records.labels(topic=topic).inc()
            log.warning(
                "invalid record", topic=topic, partition=partition, offset=offset, error=str(exc)[:500]
            )
            return True
        if result is AddResult.ADDED:
            return True
        m = self.metrics
        if result is AddResult.DUPLICATE:
            m.duplicates.inc()
        elif result is AddResult.UNATTRIBUTED:
            m.kpi_unattributed.inc()
        elif result is AddResult.AMENDED:
            self._routed_c[topic].inc()
        elif result is AddResult.LATE:
            self._too_late_c.inc()
        elif result is AddResult.PENDING:
            m.kpi_pending.inc()
        return True

    def close_due(self, now_ms: int) -> None:
        for shard in self.shards.values():
            w = shard.window
            before_unattributed = w.unattributed_kpis
            # revision 0 and an amendment of it can come out of one close_due(): the amendment's snapshot
            # was taken before revision 0's tuner and baseline were stored on the session: take them from here
            fresh_tuners: dict[str, SessionTuner] = {}
            fresh_baselines: dict[str, float] = {}
            if shard.core is not None and self.on_record is None:
                closed_list = self._close_native(shard, now_ms, fresh_baselines, fresh_tuners)
            else:
                closed_list = w.close_due(now_ms)
            for closed in closed_list:
                if closed.revision > 0 and closed.baseline is None:
                    skey = closed.session_key
                    if skey in fresh_baselines:
                        closed = closed.with_baseline(fresh_baselines[skey])
                try:
                    self._emit(shard, closed, fresh_tuners, fresh_baselines)
                except (ValidationError, ValueError, OverflowError) as exc:
                    # valid events, but no record can carry the session (e.g. revenues summing to inf):
                    # stopping would stop again at the same record after every restart
                    self._invalid_session(shard, closed, exc)
            if w.unattributed_kpis > before_unattributed:
                self.metrics.kpi_unattributed.inc(w.unattributed_kpis - before_unattributed)
            for late in w.drain_late():
                self._emit_late(shard, late, f"l:{late.kind}:{late.event_id}")
        self.metrics.open_sessions.set(sum(s.window.open_count for s in self.shards.values()))

    def _close_native(
        self,
        shard: Shard,
        now_ms: int,
        fresh_baselines: dict[str, float],
        fresh_tuners: dict[str, SessionTuner],
    ) -> list[Any]:
        """The native window's due sessions and their records in one native call (discounted credit:
        only the tuner's behaviour needs Python, :meth:`_behaviour_json`, once per distinct segment and
        first step's exploration fields in the batch); the sessions it leaves (from the first unusual
        one on, or all with a credit model loaded) go through :meth:`_emit`."""
        ctx = self.ctx
        if ctx.credit.model is not None:
            return shard.window.close_due(now_ms)  # type: ignore[return-value]
        m, k = self.metrics, ctx.kappa
        records, points, n_sessions, n_amended, rest, fresh, tuners = close_records(
            shard.core,
            now_ms,
            ctx.gamma,
            (k.initial, k.final, k.anneal_ms, k.anchor_ms, ctx.kappa_override),
            list(ctx.priorities.items()),
            shard.baselines,
            ctx.baseline_alpha,
            ctx.credit.name,
            m.step_credit_native,
            m.business_reward_native,
            None if self.tuner is None else self._behaviour_json,
        )
        topic, outbox, new = self.s.kafka_topic_sessions, shard.outbox, shard.outbox_new
        queue = None if self.tuner is None else self._tuner_queue
        behaviours = dict(tuners) if queue is not None else {}
        for rid, user, value, tuned in records:
            outbox[rid] = (topic, user.encode(), value)
            new.add(rid)
            if tuned is not None and queue is not None:
                skey = rid[2:-2]  # "s:<session_key>:0"
                seg, kappa, business_reward, business_value, click, dwell, skip, rel = tuned
                feats = SessionFeatures(click, dwell, skip, rel)
                raw = behaviours.get(skey)
                behaviour = None if raw is None else self.tuner.behaviour_of(raw)  # type: ignore[union-attr]
                queue.append(
                    TunerSession(skey, seg, behaviour, kappa, business_reward, business_value, feats)
                )
        if n_sessions:
            m.sessions_closed.inc(n_sessions)
            m.observe_credit(ctx.credit.name, (), n_sessions)
        if n_amended:
            m.amendments.inc(n_amended)
        self.tradeoff.add_points(points)
        fresh_baselines.update(fresh)
        if rest:  # amendments among them take revision 0's tuner from here
            fresh_tuners.update((skey, self.tuner.behaviour_of(t)) for skey, t in tuners)  # type: ignore[union-attr]
        return [NativeClosed(c) for c in rest]

    def _behaviour_json(self, segment: str, first: tuple[Any, Any, Any] | None) -> bytes | None:
        """Revision 0's ``tuner`` field for the native close (the bytes :meth:`_native_record` and
        ``set_tuner`` would write); ``None`` (no field) if the tuner fails -- closed sessions must not
        be lost on the way out of the native call."""
        assert self.tuner is not None  # passed to the native close only with a tuner
        try:
            return self.tuner.behaviour_json(segment, first)  # type: ignore[no-any-return]
        except Exception as exc:  # noqa: BLE001
            log.exception(
                "tuner behaviour failed; session recorded without it", segment=segment, error=str(exc)
            )
            self.metrics.tuner_errors.labels(reason="error").inc()
            return None

    def _emit(
        self,
        shard: Shard,
        closed: ClosedSession | NativeClosed,
        fresh_tuners: dict[str, SessionTuner],
        fresh_baselines: dict[str, float],
    ) -> None:
        """One closed session (or amendment) -> its record in the outbox, metrics, tuner, trade-off.

        The record's bytes come from the native core (:func:`session_record`) or, for the Python
        window and every unusual session, from :func:`record_json` -- the same bytes; the
        :class:`SessionRecord` is built only for its consumers (the tuner, ``on_record``)."""
        w = shard.window
        m = self.metrics
        ctx = self.ctx
        skey = closed.session_key
        first = self._first_step(closed)
        tuner = self._session_tuner(closed, first, fresh_tuners)
        seg = closed.segment
        # the baseline the advantage is taken against: revision 0's for an amendment, else the EMA
        base = closed.baseline
        if closed.revision == 0 or base is None:
            base = shard.baselines.get(seg)
        out = None
        if isinstance(closed, NativeClosed):
            out = self._native_record(closed, base, tuner)
        if out is None:
            py = closed.to_closed_session() if isinstance(closed, NativeClosed) else closed
            v = compute_record(py, ctx, shard.baselines)  # moves the segment's EMA for revision 0
            value = record_json(v, tuner)
            baseline, business_value = v.baseline, v.parts["value"]
            if closed.revision == 0:
                m.business_reward.observe(v.business_reward)
                m.observe_credit(v.credit_model, v.credits)
                self.tradeoff.add_steps(py.actions, first, business_value)
        else:
            value, blended, baseline, business_value, business_reward, clicks, dwell, max_wv = out
            if closed.revision == 0:
                shard.baselines[seg] = ema_update(base, blended, ctx.baseline_alpha)
                m.business_reward.observe(business_reward)
                m.observe_credit(ctx.credit.name, ())  # the step credits went to the native histogram
                self.tradeoff.add_point(
                    max_wv, first.explore_action if first else None, clicks, dwell, business_value
                )
        if closed.revision == 0:
            key_ms = closed.key_ms or closed.start_ms
            w.set_baseline(closed.user_id, key_ms, baseline)
            fresh_baselines[skey] = baseline
            if tuner is not None:
                # exclude_unset: the amendment then serialises byte-for-byte like revision 0
                w.set_tuner(closed.user_id, key_ms, tuner.model_dump(mode="json", exclude_unset=True))
                fresh_tuners[skey] = tuner
        rid = f"s:{skey}:{closed.revision}"
        self._outbox_add(shard, rid, self.s.kafka_topic_sessions, closed.user_id, value)
        if closed.revision == 0:
            m.sessions_closed.inc()
            if self.tuner is not None:
                self._tuner_queue.append(TunerSession.from_json(value))
        else:
            m.amendments.inc()
        if self.on_record is not None:
            self.on_record(SessionRecord.model_validate_json(value))

    @staticmethod
    def _first_step(closed: ClosedSession | NativeClosed) -> Any:
        """The first step's exploration fields (what the tuner and the trade-off point read)."""
        if isinstance(closed, NativeClosed):
            f = closed.native.first_explore()
            return None if f is None else FirstStep(*f)
        return closed.actions[0] if closed.actions else None

    def _session_tuner(
        self, closed: ClosedSession | NativeClosed, first: Any, fresh_tuners: dict[str, SessionTuner]
    ) -> SessionTuner | None:
        """The record's ``tuner`` field: the behaviour for revision 0, revision 0's for an amendment."""
        if closed.revision == 0:
            return None if self.tuner is None else self.tuner.behaviour_for(closed.segment, first)
        if closed.tuner is not None:
            return SessionTuner.model_validate(closed.tuner)
        if closed.session_key in fresh_tuners:
            return fresh_tuners[closed.session_key].model_copy()
        return None

    def _native_record(self, closed: NativeClosed, base: float | None, tuner: SessionTuner | None) -> Any:
        """The native record (``None``: an unusual session -- the Python path decides, or raises)."""
        ctx = self.ctx
        c = closed.native
        credit = ctx.credit
        shares = None if credit.model is None else credit.shares(closed.actions)
        return session_record(
            c,
            ctx.gamma,
            ctx.kappa.at(c.end_ms, ctx.kappa_override),
            list(ctx.priorities.items()),
            base,
            shares,
            credit.name,
            None if tuner is None else orjson.dumps(tuner.model_dump(mode="json", exclude_unset=True)),
            # step credits are observed for revision 0 only (an amendment repeats the session's steps)
            self.metrics.step_credit_native if c.revision == 0 else None,
        )

    def _invalid_session(self, shard: Shard, closed: ClosedSession, exc: Exception) -> None:
        """A session whose record cannot be built goes to the late topic (``kind`` session, ``reason``
        invalid_session) with what identifies its events; they stay in the durable state meanwhile."""
        skey = closed.session_key
        log.error("session record cannot be built; sent to the late topic", session_key=skey, error=str(exc))
        late = LateEvent(
            "session",
            "invalid_session",
            closed.user_id,
            skey,
            closed.end_ms,
            closed.closed_at_ms,
            {
                "session_key": skey,
                "revision": closed.revision,
                "n_steps": len(closed.actions),
                "action_event_ids": [a.event_id for a in closed.actions],
                "kpi_event_ids": [k.event_id for k in closed.kpis],
                "error": str(exc)[:2000],
            },
        )
        self._emit_late(shard, late, f"l:session:{skey}:{closed.revision}")

    def _emit_late(self, shard: Shard, late: LateEvent, rid: str) -> None:
        """A late-topic record into the outbox (``rid``: its outbox id, stable across replays), counted."""
        self._outbox_add(shard, rid, self.s.outer_late_topic, late.user_id, late.to_json_bytes())
        self.metrics.late_records.labels(reason=late.reason).inc()

    def _outbox_add(self, shard: Shard, rid: str, topic: str, key: str, value: bytes) -> None:
        shard.outbox[rid] = (topic, key.encode(), value)
        shard.outbox_new.add(rid)

    # ---------------------------------------------------------------------------------- durability

    def checkpoint(self) -> bool:
        """Make everything so far durable: write every shard's changes in one fenced transaction;
        ``False`` when it did not land (the same bytes are sent again first by the next call)."""
        self._land_inflight()
        self._last_checkpoint = time.monotonic()
        if self._retry is not None:
            pw, self._retry = self._retry, None
            if not self._write_and_land(pw):
                return False
        return self._write_and_land(self._take())

    def _checkpoint_pipelined(self) -> None:
        """The loop's checkpoint: land the write in flight if it is done (not done: nothing now, the
        next loop looks again), then take the changes since and start writing them on the writer thread.
        Offsets are committed, outbox records produced and the tuner fed only for a landed write, as
        with :meth:`checkpoint_and_produce`; a failed write is sent again before anything newer."""
        if self._inflight is not None:
            if not self._inflight[0].done():
                return
            self._land_inflight()
        self._last_checkpoint = time.monotonic()
        pw = self._retry if self._retry is not None else self._take()
        self._retry = None
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="checkpoint-writer")
        self._inflight = (self._writer.submit(self._write, pw), pw)

    def _write(self, pw: _PendingWrite) -> tuple[int, float]:
        """On the writer thread: the transaction; when it landed (wall ms) and how long it took."""
        t0 = time.perf_counter()
        self.state.checkpoint([d for _, d, _, _ in pw.shards])
        return wall_ms(), time.perf_counter() - t0

    def _land_inflight(self) -> None:
        """Wait for the write in flight (if any), handle its outcome, and act on it if it landed."""
        if self._inflight is None:
            return
        fut, pw = self._inflight
        self._inflight = None
        if self._settle(pw, fut.result):
            self._after_landing()

    def _take(self) -> _PendingWrite:
        """Take every shard's changes since the last take (the windows start tracking afresh): the
        write is retried with these same bytes until it lands or the shard is fenced."""
        pw = _PendingWrite()
        pw.tuner, self._tuner_queue = self._tuner_queue, []
        log_max, garbage_ratio = self.s.outer_state_log_max_bytes, self.s.outer_state_log_garbage_ratio
        with self._lock:
            for shard in self.shards.values():
                w = shard.window
                d = ShardDelta(shard.partition, shard.epoch)
                native = isinstance(shard.log.uncovered, NativeUncovered)
                if native:  # the delta, its users marked uncovered and the commit in one native call
                    d.log_append = shard.core.take_delta(shard.log.next_seq)
                    if d.log_append:
                        shard.log.appended(len(d.log_append), dead=shard.core.delta_garbage)
                else:
                    dirty = w.dirty
                    if dirty:
                        d.log_append = w.delta()
                        shard.log.appended(len(d.log_append), dirty, w.delta_garbage)
                c = d.compaction = shard.log.compact(w.user_state, len(d.log_append), log_max, garbage_ratio)
                self._observe_state(shard, len(c.users_set) + len(c.users_del))
                d.meta = shard.meta()  # after the compaction: its log_base
                if not native:
                    w.commit_delta()
                rids: list[str] = []
                if shard.outbox_new:
                    rids = list(shard.outbox_new)
                    batch = f"b:{shard.next_batch}"
                    d.outbox_set[batch] = _outbox_batch([(r, shard.outbox[r]) for r in rids])
                d.outbox_del = list(shard.batches_done)
                pw.shards.append((shard, d, rids, shard.ingest_ts))
                pw.offsets.extend((shard, topic, off) for topic, off in shard.offsets.items())
                shard.ingest_ts = []
        return pw

    def _observe_state(self, shard: Shard, compacted: int) -> None:
        m, p = self.metrics, str(shard.partition)
        if compacted:
            m.compacted_users.inc(compacted)
        m.state_bytes.labels(partition=p, part="log").set(shard.log.log_bytes)
        m.state_bytes.labels(partition=p, part="snapshot").set(shard.log.snap_bytes)
        m.state_bytes.labels(partition=p, part="log_dead").set(shard.log.dead_bytes)

    def _write_and_land(self, pw: _PendingWrite) -> bool:
        return self._settle(pw, lambda: self._write(pw))

    def _settle(self, pw: _PendingWrite, outcome: Callable[[], tuple[int, float]]) -> bool:
        """The outcome of ``pw``'s write (inline, or the writer thread's future): fenced -> drop the
        shards; failed -> sent again first next time; landed -> bookkept, its offsets and tuner records
        queued for :meth:`_after_landing`. ``True`` when it landed."""
        try:
            done_ms, took = outcome()
        except Fenced as exc:
            self._fenced(exc)
            return False
        except (RedisError, OSError) as exc:
            self._write_failed(pw, exc)
            return False
        self._landed(pw, took, done_ms)
        self._landed_pws.append(pw)
        return True

    def _write_failed(self, pw: _PendingWrite, exc: Exception) -> None:
        log.error("checkpoint failed; will retry", error=str(exc))
        self.metrics.checkpoint_errors.labels(reason="redis").inc()
        self._retry = pw

    def _fenced(self, exc: Exception) -> None:
        """A rebalance gave a shard to another member while we were not looking: drop every shard and
        rejoin, so the next assignment reloads them from Redis."""
        log.error("fenced: another controller owns a shard; rejoining the group", error=str(exc))
        self.metrics.checkpoint_errors.labels(reason="fenced").inc()
        self._retry = None
        # sessions closed since the last take are not durable either: the replay re-emits them (with
        # a pipelined write the loop went on after the take, so this queue is not empty then)
        self._tuner_queue = []
        self.shards.clear()
        self._queues.clear()
        self._paused.clear()
        try:
            self.consumer.unsubscribe()
            self.subscribe()
        except (KafkaException, RuntimeError) as exc2:
            log.error("re-subscribe failed", error=str(exc2))

    def _landed(self, pw: _PendingWrite, took: float, done_ms: int) -> None:
        """A write landed: its outbox batch may be produced, its offsets committed, its lag observed."""
        self.metrics.checkpoint_seconds.observe(took)
        with self._lock:
            for shard, d, rids, ingest_ts in pw.shards:
                self._batch_landed(shard, d.outbox_set.keys(), rids, d.outbox_del)
                for ts in ingest_ts:
                    lag = done_ms - ts
                    self.metrics.state_lag.observe(lag / 1000)
                    if self.record_lag:
                        self.lag_samples.append((done_ms, lag))

    @staticmethod
    def _batch_landed(shard: Shard, added: Any, rids: list[str], removed: list[str]) -> None:
        """After a checkpoint: the new records (``rids``) are in their batch, the removed batches gone."""
        shard.batches_done.difference_update(removed)
        for batch in added:
            shard.next_batch += 1
            shard.batch_pending[batch] = set(rids)
            for rid in rids:
                old = shard.rid_batch.get(rid)
                if old is not None:  # added again (a replay re-emits it): the new batch carries it
                    _forget(shard, old, rid)
                shard.rid_batch[rid] = batch
            shard.outbox_new.difference_update(rids)

    def checkpoint_and_produce(self) -> None:
        if not self.checkpoint():
            return
        self._after_landing()

    def _after_landing(self) -> None:
        """Produce the landed outbox records, commit the offsets the landed writes reflect (durable
        now), feed the tuner the records they made durable."""
        landed, self._landed_pws = self._landed_pws, []
        for shard in list(self.shards.values()):
            rids = [r for r in shard.outbox if r not in shard.in_flight and r not in shard.outbox_new]
            if self._native_producer:
                self._produce_native(shard, rids)
            else:
                for rid in rids:
                    self._produce(shard, rid)
        self._poll_producer(0)
        if landed:
            self._commit_offsets(landed[-1].offsets)
        self._feed_tuner([rec for pw in landed for rec in pw.tuner])

    def checkpoint_and_flush(self, timeout_s: float = 10.0) -> None:
        """Checkpoint, produce the outbox, wait for the acknowledgements, checkpoint their removal."""
        self.checkpoint_and_produce()
        remaining = self.producer.flush(timeout_s)
        if self._native_producer:
            self._poll_producer(0)  # its reports are collected by a poll
        if remaining:
            log.warning("producer flush timed out", remaining=remaining)
        self.checkpoint()

    def _produce(self, shard: Shard, rid: str) -> None:
        topic, key, value = shard.outbox[rid]
        # a partial (2 objects for the collector) rather than a closure (function, cells and their
        # tuple: ~5): thousands are awaiting acknowledgement at any time at 10^4 sessions/s
        on_delivery = partial(self._delivered, shard, rid)
        try:
            self.producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
            shard.in_flight.add(rid)
        except (BufferError, KafkaException) as exc:
            log.warning("record not produced; will retry", id=rid, error=str(exc))
            self.producer.poll(0.05)

    def _produce_native(self, shard: Shard, rids: list[str]) -> None:
        """:meth:`_produce` of ``rids`` through a ``NativeProducer``: one call, each record with a token
        its delivery report comes back with (:meth:`_poll_producer`)."""
        if not rids:
            return
        outbox, tokens, t0 = shard.outbox, self._tokens, self._next_token
        batch = []
        for i, rid in enumerate(rids):
            tokens[t0 + i] = (shard, rid)
            batch.append((*outbox[rid], t0 + i))
        self._next_token = t0 + len(rids)
        taken, refused = self.producer.produce(batch)
        shard.in_flight.update(rids[:taken])
        if refused is not None:  # the rest stays in the outbox, not in flight: produced after a landing
            for i in range(taken, len(rids)):
                del tokens[t0 + i]
            log.warning("records not produced; will retry", records=len(rids) - taken, error=refused)
            self._poll_producer(0.05)

    def _poll_producer(self, timeout_s: float) -> None:
        """Serve the producer's delivery reports (confluent-kafka: its callbacks run inside ``poll``)."""
        if not self._native_producer:
            self.producer.poll(timeout_s)
            return
        delivered, failed = self.producer.poll(timeout_s)
        if not delivered and not failed:
            return
        tokens = self._tokens
        with self._lock:
            for t in delivered:
                self._settle_delivery(*tokens.pop(t), None)
            for t, err in failed:
                self._settle_delivery(*tokens.pop(t), err)

    def _delivered(self, shard: Shard, rid: str, err: Any, _msg: Any) -> None:
        """The producer's delivery report for outbox record ``rid`` (inside poll()/flush())."""
        with self._lock:
            self._settle_delivery(shard, rid, err)

    def _settle_delivery(self, shard: Shard, rid: str, err: Any) -> None:
        """Outbox record ``rid`` acknowledged (``err`` None: it leaves the outbox) or not (produced again
        after the next landing)."""
        shard.in_flight.discard(rid)
        if err is not None:
            self.metrics.session_produce_errors.inc()
            log.warning("record not delivered; will retry", id=rid, error=str(err))
        elif rid in shard.outbox and rid not in shard.outbox_new:
            del shard.outbox[rid]
            batch = shard.rid_batch.pop(rid, None)
            if batch is not None:
                _forget(shard, batch, rid)

    def _commit_offsets(self, offsets: list[tuple[Shard, str, int]]) -> None:
        # a shard given up (revoked, fenced) since the write was taken is not ours to commit
        tps = [
            TopicPartition(topic, shard.partition, off)
            for shard, topic, off in offsets
            if self.shards.get(shard.partition) is shard
        ]
        if not tps:
            return
        try:
            self.consumer.commit(offsets=tps, asynchronous=True)
        except (KafkaException, RuntimeError) as exc:  # RuntimeError: the native consumer's
            log.warning("offset commit failed (state is in Redis; informational)", error=str(exc))

    # ---------------------------------------------------------------------------------- rebalance

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        parts = sorted({p.partition for p in partitions})
        for p in parts:
            if p not in self.shards:
                self.shards[p] = self._load_shard(p)
        for tp in partitions:
            off = self.shards[tp.partition].offsets.get(tp.topic)
            if off is not None:
                tp.offset = off
        log.info(
            "partitions assigned", partitions=[f"{p.topic}[{p.partition}]@{p.offset}" for p in partitions]
        )
        consumer.assign(partitions)
        try:
            consumer.resume(partitions)  # a pause must not survive a rebalance
        except (KafkaException, RuntimeError, AttributeError):
            pass

    def _load_shard(self, p: int) -> Shard:
        snap = self.state.claim(p)
        w = self.new_window()
        meta = snap.meta
        log_blobs, state_log = restore_log(snap.log, int(meta.get("log_base", 0)), snap.snapseq, snap.users)
        n_users = w.restore([*snap.users.values(), *log_blobs])
        if isinstance(w, NativeSessionWindow):
            state_log.keep_natively(w.core)
        w.max_event_ms = int(meta.get("max_event_ms", 0))
        c = meta.get("counters", {})
        w.duplicates = c.get("duplicates", 0)
        w.late_actions = c.get("late_actions", 0)
        w.too_late_actions = c.get("too_late_actions", 0)
        w.unattributed_kpis = c.get("unattributed_kpis", 0)
        w.amendments = c.get("amendments", 0)
        shard = Shard(
            p,
            w,
            snap.epoch,
            offsets=dict(meta.get("offsets", {})),
            baselines=dict(meta.get("baselines", {})),
            log=state_log,
        )
        for field_, raw in snap.outbox.items():
            if field_.startswith("b:"):
                entries = _read_outbox_batch(raw)
                shard.next_batch = max(shard.next_batch, int(field_[2:]) + 1)
            else:  # one record per field (controllers before the batches): a batch of one
                o = json.loads(raw)
                entries = [(field_, (o["t"], o["k"].encode(), o["v"].encode()))]
            shard.batch_pending[field_] = set()
            for rid, entry in entries:
                old = shard.rid_batch.get(rid)
                if old is not None:
                    _forget(shard, old, rid)
                shard.outbox[rid] = entry
                shard.rid_batch[rid] = field_
                shard.batch_pending[field_].add(rid)
            if not shard.batch_pending[field_]:
                _forget(shard, field_, None)
        log.info(
            "shard loaded",
            partition=p,
            epoch=snap.epoch,
            users=n_users,
            log_entries=len(snap.log),
            outbox=len(shard.outbox),
            offsets=shard.offsets,
        )
        return shard

    def _on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        revoked = {p.partition for p in partitions}
        log.info("partitions revoked", partitions=sorted(revoked))
        try:
            self.checkpoint_and_flush()
        except (RedisError, Fenced) as exc:
            log.warning("checkpoint on revoke failed", error=str(exc))
        for p in revoked:
            self.shards.pop(p, None)
            for t in (self.reward_topic, self.kpi_topic):
                try:
                    self.metrics.consumer_lag.remove(t, str(p))
                except KeyError:
                    pass
                self._queues.pop((t, p), None)
                self._paused.discard((t, p))
                self._idle_since.pop((t, p), None)
            for part in ("log", "snapshot"):
                try:
                    self.metrics.state_bytes.remove(str(p), part)
                except KeyError:
                    pass

    # ----------------------------------------------------------------------- priorities and tuner

    def _refresh_priorities(self) -> None:
        now = time.monotonic()
        if now - self._last_priorities < self.s.outer_priorities_refresh_s:
            return
        self._last_priorities = now
        try:
            raw = self.state.get(KPI_PRIORITIES_KEY)
        except (RedisError, OSError) as exc:
            log.warning("could not read KPI priorities", error=str(exc))
            return
        pr = dict(DEFAULT_PRIORITIES)
        override: float | None = None
        if raw:
            try:
                doc = json.loads(raw)
                pr.update(
                    {k: float(v) for k, v in doc.get("priorities", {}).items() if k in pr and v is not None}
                )
                if doc.get("kappa") is not None:
                    override = float(doc["kappa"])
            except (ValueError, TypeError, AttributeError) as exc:
                log.warning("invalid KPI priorities document ignored", error=str(exc))
                return
        if pr != self.ctx.priorities or override != self.ctx.kappa_override:
            log.info("KPI priorities in effect", priorities=pr, kappa_override=override)
        self.ctx.priorities, self.ctx.kappa_override = pr, override

    def _feed_tuner(self, queue: list[TunerSession]) -> None:
        if self.tuner is None:
            return
        for rec in queue:
            try:
                self.tuner.add(rec)
            except (RedisError, OSError) as exc:
                log.error("weight tuner failed (batch dropped)", segment=rec.segment, error=str(exc))
                self.metrics.tuner_errors.labels(reason="redis").inc()
            except ValidationError as exc:
                # a segment the scorer accepts but the weights store cannot key (e.g. a space in it):
                # nothing to tune for it; the session is on recsys.sessions already
                log.warning("session's segment is not a weights segment", segment=rec.segment, error=str(exc))
                self.metrics.tuner_errors.labels(reason="invalid_segment").inc()
            except Exception as exc:  # noqa: BLE001 - the replayed record would crash the controller again
                log.exception("weight tuner failed on a session", segment=rec.segment, error=str(exc))
                self.metrics.tuner_errors.labels(reason="error").inc()


@contextmanager
def automatic_gc_paused(settings: OuterSettings) -> Iterator[None]:
    """CPython's automatic collection off while the loop runs (with ``OUTER_GC_FREEZE_INTERVAL_S``).

    The loop's periodic ``gc.collect()`` (:meth:`DurableController._maybe_freeze`) collects every object
    created since the last one anyway; the automatic collections in between (one per 700 allocations,
    and full ones whenever the few unfrozen objects grew by a quarter) scanned the same young objects
    again and again: measured at 50 000 events/s with the tuner (alternated, 3 runs each), the loop
    thread's CPU per event 18.1-22.9 us with them, 15.9-16.7 without, lag P99 2.9-5.6 s vs 0.9-1.8 s."""
    if not settings.outer_gc_freeze_interval_s or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def make_input_consumer(settings: OuterSettings, config: dict[str, Any]) -> Any:
    """The consumer of the input topics (confluent-kafka style ``config``): the native core's
    ``NativeConsumer`` (``OUTER_NATIVE_CONSUMER``, default) or confluent-kafka's ``Consumer``."""
    if settings.outer_native_consumer:
        from rewardloop_outer_native import NativeConsumer

        return NativeConsumer(config)
    from confluent_kafka import Consumer

    return Consumer(config)


def make_outbox_producer(settings: OuterSettings, config: dict[str, Any]) -> Any:
    """The producer of the outbox records: the native core's ``NativeProducer``
    (``OUTER_NATIVE_PRODUCER``, default) or confluent-kafka's ``Producer``."""
    if settings.outer_native_producer:
        from rewardloop_outer_native import NativeProducer

        return NativeProducer(config)
    from confluent_kafka import Producer

    return Producer(config)


def make_tuner(settings: OuterSettings, store: Any, metrics: OuterMetrics) -> Any:
    from .tuner import WeightTuner

    return WeightTuner(
        store,
        metrics,
        strategy=settings.outer_tuner,
        batch_sessions=settings.outer_update_batch_sessions,
        min_sessions=settings.outer_min_sessions,
        shadow=settings.outer_shadow_mode,
        explore_fraction=settings.outer_exploration_slice,
        kl_max=settings.outer_kl_max,
        levels=settings.outer_tuner_levels,
        lr=settings.outer_tuner_lr,
        per_segment=settings.outer_tuner_per_segment,
        learning_rate=settings.outer_learning_rate,
        max_step=settings.outer_max_step,
    )
