"""Per-user sessions over scored actions and KPI events (docs/architecture.md, "Sessions").

Pure and deterministic: every method takes ``now_ms`` (the wall clock) as an argument.

Rules:

* The clock is ``max(max action event time seen, now_ms)``. (KPI event times do not move the clock,
  just as KPI events do not extend sessions.)
* A user has at most one open session. An action within ``gap`` of the open session's span joins it
  (``start``/``last`` widen as needed); an action more than ``gap`` after its last action closes it
  and opens a new one; an action more than ``gap`` *before* its start (a very late event) becomes a
  one-step session of its own, closed at once.
* :meth:`SessionWindow.close_due` closes every session with ``clock - last_action_ms > gap``.
* De-duplication by ``event_id``: within the open session, and against the most recent
  ``dedup_capacity`` ids seen (so a redelivered action after its session closed does not start a
  spurious session).
* KPI events attach to the user's open session without extending it; with no open session they are
  *unattributed* (counted; the attribution window for delayed KPIs is issue #4).
* Every event may carry its Kafka source ``(topic, partition, offset)``; :meth:`held_offsets` tells
  the lowest offset per partition still held by an open session (what is safe to commit).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum

from rewardloop_common.events import KpiEvent, RewardEvent

from .returns import order_steps

TopicPartition = tuple[str, int]
Source = tuple[str, int, int]  # topic, partition, offset


class AddResult(StrEnum):
    ADDED = "added"
    DUPLICATE = "duplicate"
    UNATTRIBUTED = "unattributed"


@dataclass
class OpenSession:
    user_id: str
    segment: str
    start_ms: int
    last_ms: int
    actions: dict[str, RewardEvent] = field(default_factory=dict)
    kpis: dict[str, KpiEvent] = field(default_factory=dict)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)

    def hold(self, source: Source | None) -> None:
        if source is None:
            return
        tp = (source[0], source[1])
        prev = self.offsets.get(tp)
        if prev is None or source[2] < prev:
            self.offsets[tp] = source[2]


@dataclass(frozen=True)
class ClosedSession:
    user_id: str
    segment: str
    start_ms: int
    end_ms: int
    closed_at_ms: int
    actions: list[RewardEvent]  # ordered by (event_time_ms, position, event_id)
    kpis: list[KpiEvent]
    offsets: dict[TopicPartition, int]

    @property
    def session_key(self) -> str:
        return session_key(self.user_id, self.start_ms)


def session_key(user_id: str, start_ms: int) -> str:
    """Deterministic key of a session: ``"<user_id>:<start_ms>"``."""
    return f"{user_id}:{start_ms}"


class _RecentIds:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._ids

    def add(self, key: str) -> None:
        self._ids[key] = None
        self._ids.move_to_end(key)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)


class SessionWindow:
    def __init__(self, gap_ms: int, dedup_capacity: int = 200_000) -> None:
        if gap_ms <= 0:
            raise ValueError("gap_ms must be > 0")
        self.gap_ms = int(gap_ms)
        self.max_event_ms = 0
        self._open: dict[str, OpenSession] = {}
        self._closed: list[ClosedSession] = []  # closed by add_action, returned by the next close_due
        self._seen_actions = _RecentIds(dedup_capacity)
        self._seen_kpis = _RecentIds(dedup_capacity)
        self.unattributed_kpis = 0
        self.duplicates = 0
        self.late_actions = 0

    # ------------------------------------------------------------------------------------- queries

    def clock(self, now_ms: int) -> int:
        return max(self.max_event_ms, int(now_ms))

    @property
    def open_count(self) -> int:
        return len(self._open)

    def open_session(self, user_id: str) -> OpenSession | None:
        return self._open.get(user_id)

    def held_offsets(self) -> dict[TopicPartition, int]:
        """Lowest Kafka offset per partition still held by an open (or closed, not yet returned) session."""
        held: dict[TopicPartition, int] = {}
        sessions: list[OpenSession | ClosedSession] = [*self._open.values(), *self._closed]
        for s in sessions:
            for tp, off in s.offsets.items():
                if tp not in held or off < held[tp]:
                    held[tp] = off
        return held

    # ------------------------------------------------------------------------------------- updates

    def add_action(self, ev: RewardEvent, now_ms: int, source: Source | None = None) -> AddResult:
        if ev.event_id in self._seen_actions:
            self.duplicates += 1
            return AddResult.DUPLICATE
        self._seen_actions.add(ev.event_id)
        t = ev.event_time_ms
        self.max_event_ms = max(self.max_event_ms, t)
        s = self._open.get(ev.user_id)
        if s is not None and t > s.last_ms + self.gap_ms:
            self._closed.append(self._close(s, self.clock(now_ms)))
            del self._open[ev.user_id]
            s = None
        if s is not None and t < s.start_ms - self.gap_ms:
            self.late_actions += 1
            late = OpenSession(ev.user_id, ev.segment, t, t, {ev.event_id: ev})
            late.hold(source)
            self._closed.append(self._close(late, self.clock(now_ms)))
            return AddResult.ADDED
        if s is None:
            s = OpenSession(ev.user_id, ev.segment, t, t)
            self._open[ev.user_id] = s
        s.actions[ev.event_id] = ev
        s.start_ms = min(s.start_ms, t)
        s.last_ms = max(s.last_ms, t)
        s.hold(source)
        return AddResult.ADDED

    def add_kpi(self, ev: KpiEvent, now_ms: int, source: Source | None = None) -> AddResult:
        if ev.event_id in self._seen_kpis:
            self.duplicates += 1
            return AddResult.DUPLICATE
        s = self._open.get(ev.user_id)
        if s is None:
            self.unattributed_kpis += 1
            return AddResult.UNATTRIBUTED
        self._seen_kpis.add(ev.event_id)
        s.kpis[ev.event_id] = ev
        s.hold(source)
        return AddResult.ADDED

    def close_due(self, now_ms: int) -> list[ClosedSession]:
        """Close (and return) every session whose last action is more than ``gap`` before the clock,
        plus sessions closed earlier by :meth:`add_action`. Ordered by ``(end_ms, session_key)``."""
        clock = self.clock(now_ms)
        out, self._closed = self._closed, []
        for user_id in [u for u, s in self._open.items() if clock - s.last_ms > self.gap_ms]:
            out.append(self._close(self._open.pop(user_id), clock))
        out.sort(key=lambda c: (c.end_ms, c.session_key))
        return out

    def close_all(self, now_ms: int) -> list[ClosedSession]:
        """Close every open session regardless of the gap (tests and tools; the service does not)."""
        clock = self.clock(now_ms)
        out, self._closed = self._closed, []
        out.extend(self._close(s, clock) for s in self._open.values())
        self._open.clear()
        out.sort(key=lambda c: (c.end_ms, c.session_key))
        return out

    def drop_partitions(self, partitions: set[TopicPartition]) -> int:
        """Forget open sessions holding events of ``partitions`` (revoked in a rebalance): the new
        owner re-reads them from the committed offsets. Returns how many sessions were dropped."""
        doomed = [u for u, s in self._open.items() if partitions & s.offsets.keys()]
        for u in doomed:
            del self._open[u]
        before = len(self._closed)
        self._closed = [c for c in self._closed if not (partitions & c.offsets.keys())]
        return len(doomed) + before - len(self._closed)

    @staticmethod
    def _close(s: OpenSession, clock: int) -> ClosedSession:
        actions = order_steps(list(s.actions.values()))
        kpis = sorted(s.kpis.values(), key=lambda k: (k.event_time_ms, k.event_id))
        return ClosedSession(
            user_id=s.user_id,
            segment=actions[0].segment if actions else s.segment,
            start_ms=s.start_ms,
            end_ms=s.last_ms,
            closed_at_ms=clock,
            actions=actions,
            kpis=kpis,
            offsets=dict(s.offsets),
        )
