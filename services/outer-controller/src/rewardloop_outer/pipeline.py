"""Kafka records -> sessions -> ``recsys.sessions`` records, without any Kafka I/O.

:class:`SessionPipeline` decodes and validates raw record values, feeds the :class:`SessionWindow`,
turns closed sessions into :class:`~rewardloop_common.events.SessionRecord` objects, and keeps the
offset bookkeeping that decides what is safe to commit:

* a closed session's record is *unsent* until :meth:`SessionPipeline.mark_delivered` is called
  (after the broker acknowledged it);
* the safe commit offset of a partition is the lowest offset still held by an open session or an
  unsent record, else one past the last consumed offset.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from rewardloop_common.events import (
    KpiEvent,
    RewardEvent,
    SessionRecord,
)
from rewardloop_common.logging import get_logger

from .business_reward import business_reward
from .metrics import OuterMetrics
from .records import session_kpi, session_step
from .returns import discounted_returns
from .session_window import AddResult, ClosedSession, SessionWindow, TopicPartition

log = get_logger("rewardloop.outer.pipeline")


def build_session_record(closed: ClosedSession, gamma: float) -> SessionRecord:
    rewards = [a.reward for a in closed.actions]
    returns = discounted_returns(rewards, gamma)
    steps = [session_step(a, g) for a, g in zip(closed.actions, returns, strict=True)]
    kpi = session_kpi(closed)
    return SessionRecord(
        session_key=closed.session_key,
        user_id=closed.user_id,
        segment=closed.segment,
        start_ms=closed.start_ms,
        end_ms=closed.end_ms,
        closed_at_ms=closed.closed_at_ms,
        n_steps=len(steps),
        gamma=gamma,
        steps=steps,
        discounted_return=returns[0] if returns else 0.0,
        kpi=kpi,
        business_reward=business_reward(kpi.revenue, kpi.subscriptions, kpi.return_visits),
        weights_versions=sorted({a.weights_version for a in closed.actions}),
    )


@dataclass
class PendingRecord:
    record: SessionRecord
    offsets: dict[TopicPartition, int]


class SessionPipeline:
    def __init__(
        self,
        reward_topic: str,
        kpi_topic: str,
        gap_ms: int,
        gamma: float,
        metrics: OuterMetrics | None = None,
    ) -> None:
        self.reward_topic = reward_topic
        self.kpi_topic = kpi_topic
        self.gamma = gamma
        self.window = SessionWindow(gap_ms)
        self.metrics = metrics or OuterMetrics(registry=None)
        self._consumed: dict[TopicPartition, int] = {}  # last consumed offset per partition
        self._unsent: dict[str, PendingRecord] = {}

    # ------------------------------------------------------------------------------------- input

    def handle(
        self, topic: str, partition: int, offset: int, value: bytes | None, now_ms: int
    ) -> AddResult | None:
        """Feed one consumed record. Invalid records are counted and logged, never raised."""
        tp = (topic, partition)
        if offset >= self._consumed.get(tp, -1):
            self._consumed[tp] = offset
        self.metrics.events_consumed.labels(topic=topic).inc()
        source = (topic, partition, offset)
        try:
            if value is None:
                raise ValueError("empty record value")
            if topic == self.reward_topic:
                result = self.window.add_action(RewardEvent.model_validate_json(value), now_ms, source)
            elif topic == self.kpi_topic:
                result = self.window.add_kpi(KpiEvent.model_validate_json(value), now_ms, source)
                if result is AddResult.UNATTRIBUTED:
                    self.metrics.kpi_unattributed.inc()
            else:
                raise ValueError(f"unexpected topic {topic}")
        except (ValidationError, ValueError, UnicodeDecodeError) as exc:
            self.metrics.invalid_records.labels(topic=topic).inc()
            log.warning(
                "invalid record", topic=topic, partition=partition, offset=offset, error=str(exc)[:500]
            )
            return None
        if result is AddResult.DUPLICATE:
            self.metrics.duplicates.inc()
        self.metrics.open_sessions.set(self.window.open_count)
        return result

    # ------------------------------------------------------------------------------------ output

    def close_due(self, now_ms: int) -> list[SessionRecord]:
        """Close due sessions; their records stay *unsent* until :meth:`mark_delivered`."""
        out: list[SessionRecord] = []
        for closed in self.window.close_due(now_ms):
            rec = build_session_record(closed, self.gamma)
            self._unsent[rec.session_key] = PendingRecord(rec, closed.offsets)
            self.metrics.sessions_closed.inc()
            self.metrics.business_reward.observe(rec.business_reward)
            out.append(rec)
        self.metrics.open_sessions.set(self.window.open_count)
        return out

    def unsent(self) -> list[SessionRecord]:
        return [p.record for p in self._unsent.values()]

    def get_unsent(self, session_key: str) -> SessionRecord | None:
        p = self._unsent.get(session_key)
        return None if p is None else p.record

    def mark_delivered(self, session_key: str) -> None:
        self._unsent.pop(session_key, None)

    # ----------------------------------------------------------------------------------- offsets

    def safe_offsets(self) -> dict[TopicPartition, int]:
        """The offset to commit per consumed partition (Kafka semantics: the next one to read)."""
        held = self.window.held_offsets()
        for p in self._unsent.values():
            for tp, off in p.offsets.items():
                if tp not in held or off < held[tp]:
                    held[tp] = off
        return {tp: min(held.get(tp, last + 1), last + 1) for tp, last in self._consumed.items()}

    def forget_partitions(self, partitions: set[TopicPartition]) -> None:
        """After a revoke: drop open sessions, unsent records and offsets of those partitions."""
        dropped = self.window.drop_partitions(partitions)
        for key in [k for k, p in self._unsent.items() if partitions & p.offsets.keys()]:
            del self._unsent[key]
        for tp in partitions:
            self._consumed.pop(tp, None)
        if dropped:
            log.info("dropped sessions of revoked partitions", sessions=dropped)
        self.metrics.open_sessions.set(self.window.open_count)
