"""The outer controller's Kafka loop.

One consumer (group ``OUTER_CONSUMER_GROUP``, ``enable.auto.commit=false``, range assignment) reads
``recsys.reward.raw`` and ``recsys.kpi.raw``; every iteration it

1. polls up to 500 records (timeout 0.2 s) and feeds them to the :class:`SessionPipeline`
   (invalid records are counted and logged, never raised);
2. closes the due sessions, produces each :class:`SessionRecord` to ``recsys.sessions`` keyed by
   ``user_id`` (acks=all, idempotent producer) and feeds it to the :class:`WeightUpdater`;
3. about once a second: flushes the producer (waits for delivery reports) and commits, per partition,
   the lowest offset still held by an open session or an undelivered session record (else one past the
   last consumed record). Failed deliveries are retried on the next iteration and keep holding offsets.

Crash semantics (at-least-once): open sessions live in memory only; after a crash or restart the
controller re-reads from the committed offsets, so no action is lost, but sessions whose records
were produced but not yet committed past may be produced again (same ``session_key``). Durable
session state across crashes is the next issue.

On SIGTERM/SIGINT the loop stops, the producer is flushed, what is safe is committed, and the
consumer is closed. Open sessions are NOT closed early (they would be cut short); they are rebuilt
from Kafka by the next run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from redis.exceptions import RedisError

from rewardloop_common.events import SessionRecord
from rewardloop_common.logging import get_logger
from rewardloop_common.weights_store import WeightsStore

from .metrics import OuterMetrics
from .pipeline import SessionPipeline
from .settings import OuterSettings
from .weight_update import WeightUpdater

log = get_logger("rewardloop.outer")


def wall_ms() -> int:
    return int(time.time() * 1000)


class OuterController:
    def __init__(
        self,
        settings: OuterSettings,
        consumer: Any,
        producer: Any,
        store: WeightsStore,
        metrics: OuterMetrics | None = None,
        *,
        now_ms: Callable[[], int] = wall_ms,
        poll_timeout: float = 0.2,
        max_batch: int = 500,
        commit_interval_s: float = 1.0,
        flush_timeout_s: float = 10.0,
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.producer = producer
        self.store = store
        self.metrics = metrics or OuterMetrics()
        self.now_ms = now_ms
        self.poll_timeout = poll_timeout
        self.max_batch = max_batch
        self.commit_interval_s = commit_interval_s
        self.flush_timeout_s = flush_timeout_s
        self.pipeline = SessionPipeline(
            settings.kafka_topic_reward_raw,
            settings.kafka_topic_kpi_raw,
            settings.gap_ms,
            settings.outer_gamma,
            self.metrics,
        )
        self.updater = WeightUpdater(
            store,
            settings.outer_update_batch_sessions,
            settings.outer_learning_rate,
            settings.outer_max_step,
        )
        self._in_flight: set[str] = set()
        self._failed: list[str] = []
        self._committed: dict[tuple[str, int], int] = {}
        self._last_commit = time.monotonic()
        self._lock = threading.Lock()  # delivery callbacks run inside poll()/flush() on this thread

    # ------------------------------------------------------------------------------------ lifecycle

    def subscribe(self) -> None:
        topics = [self.settings.kafka_topic_reward_raw, self.settings.kafka_topic_kpi_raw]
        self.consumer.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
        log.info("subscribed", topics=topics, group=self.settings.outer_consumer_group)

    def run(self, stop: threading.Event) -> None:
        self.subscribe()
        self._read_weights_versions()
        try:
            while not stop.is_set():
                self.run_once()
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        log.info("shutting down", open_sessions=self.pipeline.window.open_count)
        try:
            self.commit(force=True)
        finally:
            try:
                self.consumer.close()
            except (KafkaException, RuntimeError) as exc:
                log.warning("consumer close failed", error=str(exc))

    # ------------------------------------------------------------------------------------- the loop

    def run_once(self) -> int:
        msgs = self.consumer.consume(num_messages=self.max_batch, timeout=self.poll_timeout)
        now = self.now_ms()
        handled = 0
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error", error=str(err))
                continue
            self.pipeline.handle(m.topic(), m.partition(), m.offset(), m.value(), now)
            handled += 1
        for rec in self.pipeline.close_due(self.now_ms()):
            self._produce(rec)
            self._update_weights(rec)
        self._retry_failed()
        self.producer.poll(0)
        if time.monotonic() - self._last_commit >= self.commit_interval_s:
            self.commit()
        return handled

    def _produce(self, rec: SessionRecord) -> None:
        key = rec.session_key

        def on_delivery(err: Any, _msg: Any) -> None:
            with self._lock:
                self._in_flight.discard(key)
                if err is not None:
                    self.metrics.session_produce_errors.inc()
                    log.warning("session record not delivered; will retry", session_key=key, error=str(err))
                    self._failed.append(key)
                else:
                    self.pipeline.mark_delivered(key)

        try:
            self.producer.produce(
                self.settings.kafka_topic_sessions,
                key=rec.user_id.encode("utf-8"),
                value=rec.to_json_bytes(),
                on_delivery=on_delivery,
            )
            with self._lock:
                self._in_flight.add(key)
        except (BufferError, KafkaException) as exc:
            log.warning("session record not produced; will retry", session_key=key, error=str(exc))
            with self._lock:
                self._failed.append(key)
            self.producer.poll(0.1)

    def _retry_failed(self) -> None:
        with self._lock:
            keys, self._failed = self._failed, []
        for key in keys:
            rec = self.pipeline.get_unsent(key)
            if rec is not None and key not in self._in_flight:
                self._produce(rec)

    def _update_weights(self, rec: SessionRecord) -> None:
        try:
            result = self.updater.add(rec)
        except (RedisError, OSError) as exc:
            log.error("weight update failed (batch dropped)", segment=rec.segment, error=str(exc))
            return
        if result is not None and result[1] is not None:
            doc = result[1]
            self.metrics.weight_updates.inc()
            self.metrics.weights_version.labels(segment=doc.segment).set(doc.version)

    def _read_weights_versions(self) -> None:
        try:
            doc = self.store.get("default")
            self.metrics.weights_version.labels(segment="default").set(doc.version)
        except Exception as exc:  # noqa: BLE001 - metrics only
            log.warning("could not read the current weights", error=str(exc))

    # -------------------------------------------------------------------------------------- commits

    def commit(self, force: bool = False) -> None:
        """Wait for in-flight session records, then commit the safe offsets that moved."""
        self._last_commit = time.monotonic()
        remaining = self.producer.flush(self.flush_timeout_s)
        if remaining:
            log.warning("producer flush timed out", remaining=remaining)
        offsets = self.pipeline.safe_offsets()
        changed = [
            TopicPartition(t, p, o) for (t, p), o in offsets.items() if self._committed.get((t, p)) != o
        ]
        if not changed:
            return
        try:
            self.consumer.commit(offsets=changed, asynchronous=False)
        except KafkaException as exc:
            log.warning("commit failed", error=str(exc), force=force)
            return
        for tp in changed:
            self._committed[(tp.topic, tp.partition)] = tp.offset

    def _on_assign(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        log.info("partitions assigned", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])

    def _on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        log.info("partitions revoked", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])
        self.commit(force=True)
        revoked = {(p.topic, p.partition) for p in partitions}
        self.pipeline.forget_partitions(revoked)
        for tp in revoked:
            self._committed.pop(tp, None)
