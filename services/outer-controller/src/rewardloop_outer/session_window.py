"""Per-user event-time session windows over scored actions and KPI events (docs/architecture.md, "Sessions").

Pure and deterministic: every method takes ``now_ms`` (the wall clock) as an argument. One
:class:`SessionWindow` holds the state of one *shard* (in the service: one input partition number,
see :mod:`rewardloop_outer.engine`), so its clock is that partition's event-time watermark.

Rules:

* The clock is ``max(max action event time seen, now_ms)``; the service passes ``now_ms = 0`` for a
  pure event-time clock (``OUTER_CLOCK=event``) or the wall clock (``OUTER_CLOCK=wall``). KPI event
  times do not move the clock, just as KPI events do not extend sessions.
* A user has at most one open session. An action within ``gap`` of the open session's span joins it
  (``start``/``last`` widen as needed); an action more than ``gap`` after its last action closes it
  and opens a new one.
* :meth:`SessionWindow.close_due` closes every session with ``clock - last_action_ms > gap``.
* **Late actions** (before the open session's span, or for a user without one):

  1. with retention on (``allowed_lateness_ms`` or ``attribution_window_ms`` > 0) the action is routed
     to the user's *retained* closed session whose span +- gap contains it: that session is amended
     (its ``revision`` goes up by one and the next :meth:`close_due` returns the amended snapshot);
  2. else, when it is no older than ``gap + allowed_lateness`` behind the clock (always, when
     ``allowed_lateness_ms`` is ``None``), it becomes a session of its own (a one-step session closed
     at once when the user has another open session);
  3. else it is *too late*: counted in ``too_late_actions`` and returned by :meth:`drain_late` as a
     :class:`LateEvent` (the service writes it to the late-events topic) -- never silently dropped.

* **KPI events** attach to a session without extending it. With an attribution window ``W`` > 0 a KPI
  at time ``tk`` belongs to the user's latest session with ``start - gap/2 <= tk``, provided
  ``tk <= last + gap/2`` (it is in the session) or the session is closed and ``tk <= last + W`` (a
  delayed KPI: the closed session is *amended*). Undecidable cases wait (*pending*) until the clock
  passes ``tk + 2*gap + lateness``; a session that closes meanwhile takes the pending KPIs inside
  ``[start - gap/2, last + gap/2]``; what no session takes is reported as an unattributed
  :class:`LateEvent`. With ``W == 0`` (legacy) a KPI with no open session is unattributed at once.
* Closed sessions are retained (for amendments and de-duplication) until the clock passes
  ``end + max(gap + lateness, W)``.
* De-duplication by ``event_id``: against the user's open, retained and pending events, and against
  the most recent ``dedup_capacity`` ids seen by this process.
* Every event may carry its Kafka source ``(topic, partition, offset)``; :meth:`held_offsets` tells
  the lowest offset per partition still held by an open session (the legacy commit protocol).
* Durable state: every mutation marks the user *dirty*; :meth:`user_state` serialises one user's
  state (``None`` = nothing left) and :meth:`load_user` restores it.
"""

from __future__ import annotations

import heapq
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from rewardloop_common.events import KpiEvent, RewardEvent

from .returns import order_steps

TopicPartition = tuple[str, int]
Source = tuple[str, int, int]  # topic, partition, offset


class AddResult(StrEnum):
    ADDED = "added"
    DUPLICATE = "duplicate"
    UNATTRIBUTED = "unattributed"
    AMENDED = "amended"  # routed to a retained closed session (a new revision follows)
    PENDING = "pending"  # a KPI waiting for the watermark before attribution
    LATE = "late"  # beyond the allowed lateness: reported as a LateEvent


@dataclass
class OpenSession:
    user_id: str
    segment: str
    start_ms: int
    last_ms: int
    actions: dict[str, RewardEvent] = field(default_factory=dict)
    kpis: dict[str, KpiEvent] = field(default_factory=dict)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    revision: int = 0
    closed_at_ms: int = 0
    amended: bool = False  # retained session changed since its last emitted revision
    key_ms: int = 0  # start_ms when first closed: the session_key stays fixed across amendments
    baseline: float | None = None  # the reward baseline of revision 0 (amendments reuse it)

    def hold(self, source: Source | None) -> None:
        if source is None:
            return
        tp = (source[0], source[1])
        prev = self.offsets.get(tp)
        if prev is None or source[2] < prev:
            self.offsets[tp] = source[2]

    def add(self, ev: RewardEvent) -> None:
        self.actions[ev.event_id] = ev
        self.start_ms = min(self.start_ms, ev.event_time_ms)
        self.last_ms = max(self.last_ms, ev.event_time_ms)

    def to_json(self) -> dict[str, Any]:
        return {
            "u": self.user_id,
            "g": self.segment,
            "s": self.start_ms,
            "l": self.last_ms,
            "v": self.revision,
            "c": self.closed_at_ms,
            "m": self.amended,
            "q": self.key_ms,
            "b": self.baseline,
            "a": [_event_json(e) for e in self.actions.values()],
            "k": [_event_json(k) for k in self.kpis.values()],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> OpenSession:
        actions = [RewardEvent.model_validate(a) for a in d["a"]]
        kpis = [KpiEvent.model_validate(k) for k in d["k"]]
        return cls(
            user_id=d["u"],
            segment=d["g"],
            start_ms=d["s"],
            last_ms=d["l"],
            actions={a.event_id: a for a in actions},
            kpis={k.event_id: k for k in kpis},
            revision=d["v"],
            closed_at_ms=d["c"],
            amended=d["m"],
            key_ms=d["q"],
            baseline=d.get("b"),
        )


def _event_json(ev: RewardEvent | KpiEvent) -> dict[str, Any]:
    return ev.model_dump(mode="json")


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
    revision: int = 0
    key_ms: int = 0  # the start_ms that names the session (0: start_ms)
    baseline: float | None = None  # revision 0's reward baseline (set for amendments)

    @property
    def session_key(self) -> str:
        return session_key(self.user_id, self.key_ms or self.start_ms)


@dataclass(frozen=True)
class LateEvent:
    """An event that no session took: ``kind`` is ``action`` or ``kpi``; ``reason`` is
    ``beyond_allowed_lateness`` or ``unattributed``."""

    kind: str
    reason: str
    user_id: str
    event_id: str
    event_time_ms: int
    clock_ms: int
    event: dict[str, Any]

    def to_json_bytes(self) -> bytes:
        return json.dumps(
            {
                "kind": self.kind,
                "reason": self.reason,
                "user_id": self.user_id,
                "event_id": self.event_id,
                "event_time_ms": self.event_time_ms,
                "clock_ms": self.clock_ms,
                "event": self.event,
            },
            separators=(",", ":"),
        ).encode("utf-8")


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
    def __init__(
        self,
        gap_ms: int,
        dedup_capacity: int = 200_000,
        *,
        allowed_lateness_ms: int | None = None,
        attribution_window_ms: int = 0,
    ) -> None:
        if gap_ms <= 0:
            raise ValueError("gap_ms must be > 0")
        if allowed_lateness_ms is not None and allowed_lateness_ms < 0:
            raise ValueError("allowed_lateness_ms must be >= 0")
        if attribution_window_ms < 0:
            raise ValueError("attribution_window_ms must be >= 0")
        self.gap_ms = int(gap_ms)
        self.lateness_ms = allowed_lateness_ms
        self.attribution_ms = int(attribution_window_ms)
        self.retain = bool(allowed_lateness_ms) or self.attribution_ms > 0
        lateness = allowed_lateness_ms or 0
        self.retention_ms = max(self.gap_ms + lateness, self.attribution_ms)
        self.kpi_settle_ms = 2 * self.gap_ms + lateness
        self.max_event_ms = 0
        self._open: dict[str, OpenSession] = {}
        self._open_heap: list[tuple[int, str]] = []  # (last_ms, user) lazily invalidated
        self._retained: dict[str, list[OpenSession]] = {}
        self._retained_heap: list[tuple[int, str]] = []  # (expiry clock, user) lazily invalidated
        self._pending: dict[str, dict[str, KpiEvent]] = {}
        self._pending_heap: list[tuple[int, str, str]] = []  # (settle clock, user, kpi id)
        self._closed: list[ClosedSession] = []  # closed by add_action, returned by the next close_due
        self._late: list[LateEvent] = []
        self._seen_actions = _RecentIds(dedup_capacity)
        self._seen_kpis = _RecentIds(dedup_capacity)
        self.dirty: set[str] = set()
        self._amended_users: set[str] = set()  # users with a retained session amended since emission
        self.unattributed_kpis = 0
        self.duplicates = 0
        self.late_actions = 0  # actions before their session's span (routed somewhere)
        self.too_late_actions = 0  # beyond the allowed lateness (LateEvent)
        self.amendments = 0  # amended revisions emitted
        self.kpis_pending = 0

    # ------------------------------------------------------------------------------------- queries

    def clock(self, now_ms: int) -> int:
        return max(self.max_event_ms, int(now_ms))

    @property
    def open_count(self) -> int:
        return len(self._open)

    @property
    def retained_count(self) -> int:
        return sum(len(v) for v in self._retained.values())

    @property
    def pending_kpi_count(self) -> int:
        return sum(len(v) for v in self._pending.values())

    def open_session(self, user_id: str) -> OpenSession | None:
        return self._open.get(user_id)

    def retained_sessions(self, user_id: str) -> list[OpenSession]:
        return list(self._retained.get(user_id, []))

    def held_offsets(self) -> dict[TopicPartition, int]:
        """Lowest Kafka offset per partition still held by an open (or closed, not yet returned) session."""
        held: dict[TopicPartition, int] = {}
        sessions: list[OpenSession | ClosedSession] = [*self._open.values(), *self._closed]
        for s in sessions:
            for tp, off in s.offsets.items():
                if tp not in held or off < held[tp]:
                    held[tp] = off
        return held

    def set_baseline(self, user_id: str, key_ms: int, baseline: float) -> None:
        """Remember revision 0's reward baseline on the retained session (amendments reuse it)."""
        for r in self._retained.get(user_id, ()):
            if r.key_ms == key_ms:
                r.baseline = baseline
                self.dirty.add(user_id)

    def drain_late(self) -> list[LateEvent]:
        out, self._late = self._late, []
        return out

    # ------------------------------------------------------------------------------------- updates

    def _is_duplicate_action(self, ev: RewardEvent) -> bool:
        if ev.event_id in self._seen_actions:
            return True
        s = self._open.get(ev.user_id)
        if s is not None and ev.event_id in s.actions:
            return True
        return any(ev.event_id in r.actions for r in self._retained.get(ev.user_id, ()))

    def _too_late(self, t: int, clock: int) -> bool:
        return self.lateness_ms is not None and clock - t > self.gap_ms + self.lateness_ms

    def _find_retained(self, user_id: str, lo_pad: int, t: int, hi_pad: int) -> OpenSession | None:
        best: OpenSession | None = None
        for r in self._retained.get(user_id, ()):
            if r.start_ms - lo_pad <= t <= r.last_ms + hi_pad and (
                best is None or r.start_ms > best.start_ms
            ):
                best = r
        return best

    def add_action(self, ev: RewardEvent, now_ms: int, source: Source | None = None) -> AddResult:
        if self._is_duplicate_action(ev):
            self.duplicates += 1
            return AddResult.DUPLICATE
        self._seen_actions.add(ev.event_id)
        t = ev.event_time_ms
        self.max_event_ms = max(self.max_event_ms, t)
        clock = self.clock(now_ms)
        user = ev.user_id
        if (
            self._open_heap
            and clock - self._open_heap[0][0] > self.gap_ms
            or (self._pending_heap and clock > self._pending_heap[0][0])
        ):
            self._advance(clock)
        s = self._open.get(user)
        if s is not None and t > s.last_ms + self.gap_ms:
            del self._open[user]
            self._close_into(s, clock)
            s = None
        if s is not None and t >= s.start_ms - self.gap_ms:
            last = s.last_ms
            s.add(ev)
            s.hold(source)
            if s.last_ms != last:
                heapq.heappush(self._open_heap, (s.last_ms, user))
            self.dirty.add(user)
            return AddResult.ADDED
        # before the open session's span, or no open session
        if self.retain:
            r = self._find_retained(user, self.gap_ms, t, self.gap_ms)
            if r is not None:
                self.late_actions += 1
                r.add(ev)
                r.amended = True
                self._amended_users.add(user)
                self.dirty.add(user)
                return AddResult.AMENDED
        if self._too_late(t, clock):
            self.too_late_actions += 1
            self._late.append(
                LateEvent("action", "beyond_allowed_lateness", user, ev.event_id, t, clock, _event_json(ev))
            )
            return AddResult.LATE
        if s is None:
            s = OpenSession(user, ev.segment, t, t)
            s.add(ev)
            s.hold(source)
            self._open[user] = s
            heapq.heappush(self._open_heap, (t, user))
            self.dirty.add(user)
            return AddResult.ADDED
        self.late_actions += 1
        late = OpenSession(user, ev.segment, t, t, {ev.event_id: ev})
        late.hold(source)
        self._close_into(late, clock)
        return AddResult.ADDED

    def add_kpi(self, ev: KpiEvent, now_ms: int, source: Source | None = None) -> AddResult:
        user = ev.user_id
        if ev.event_id in self._seen_kpis or self._kpi_known(user, ev.event_id):
            self.duplicates += 1
            return AddResult.DUPLICATE
        if self.attribution_ms == 0:  # legacy: the open session or nothing
            s = self._open.get(user)
            if s is None:
                self.unattributed_kpis += 1
                return AddResult.UNATTRIBUTED
            self._seen_kpis.add(ev.event_id)
            s.kpis[ev.event_id] = ev
            s.hold(source)
            self.dirty.add(user)
            return AddResult.ADDED
        self._seen_kpis.add(ev.event_id)
        self.dirty.add(user)
        clock = self.clock(now_ms)
        result = self._attribute(ev, source, settled=clock > ev.event_time_ms + self.kpi_settle_ms)
        if result is AddResult.PENDING:
            self._pending.setdefault(user, {})[ev.event_id] = ev
            heapq.heappush(self._pending_heap, (ev.event_time_ms + self.kpi_settle_ms, user, ev.event_id))
            self.kpis_pending += 1
        elif result is AddResult.UNATTRIBUTED:
            self._unattributed(ev, clock)
        return result

    def _kpi_known(self, user: str, kpi_id: str) -> bool:
        s = self._open.get(user)
        if s is not None and kpi_id in s.kpis:
            return True
        if kpi_id in self._pending.get(user, {}):
            return True
        return any(kpi_id in r.kpis for r in self._retained.get(user, ()))

    def _attribute(self, ev: KpiEvent, source: Source | None, settled: bool) -> AddResult:
        """The session a KPI at ``tk`` belongs to: the user's latest session with
        ``start - gap/2 <= tk``, if ``tk <= last + gap/2`` (open) or ``tk <= last + W`` (closed).

        Before the KPI is *settled* (the clock passed ``tk + 2*gap + lateness``, so every action that
        could start such a session has been seen) only the unambiguous cases are decided at once; the
        rest waits (``PENDING``). The answer then does not depend on how the action and KPI topics
        interleave when they are consumed (a replay, a rebalance give the same sessions)."""
        tk = ev.event_time_ms
        half = self.gap_ms // 2
        s = self._open.get(ev.user_id)
        if s is not None and s.start_ms - half <= tk and (settled or tk <= s.last_ms + half):
            s.kpis[ev.event_id] = ev
            s.hold(source)
            return AddResult.ADDED
        if settled or (s is not None and tk < s.start_ms - half):
            r = self._find_retained(ev.user_id, half, tk, self.attribution_ms)
            if r is not None:
                r.kpis[ev.event_id] = ev
                r.amended = True
                self._amended_users.add(ev.user_id)
                return AddResult.AMENDED
        return AddResult.UNATTRIBUTED if settled else AddResult.PENDING

    def _unattributed(self, ev: KpiEvent, clock: int) -> None:
        self.unattributed_kpis += 1
        self._late.append(
            LateEvent(
                "kpi", "unattributed", ev.user_id, ev.event_id, ev.event_time_ms, clock, _event_json(ev)
            )
        )

    def _close_into(self, s: OpenSession, clock: int) -> None:
        """Close ``s`` (taking the user's pending KPIs it covers), queue its record, retain it."""
        pending = self._pending.get(s.user_id)
        if pending:
            half = self.gap_ms // 2
            lo, hi = s.start_ms - half, s.last_ms + half
            for kid in [k for k, kp in pending.items() if lo <= kp.event_time_ms <= hi]:
                s.kpis[kid] = pending.pop(kid)
            if not pending:
                del self._pending[s.user_id]
        s.closed_at_ms = clock
        if not s.key_ms:
            s.key_ms = s.start_ms
        self._closed.append(self._snapshot(s, clock))
        self.dirty.add(s.user_id)
        if self.retain:
            s.amended = False
            self._retained.setdefault(s.user_id, []).append(s)
            heapq.heappush(self._retained_heap, (s.last_ms + self.retention_ms, s.user_id))

    def _advance(self, clock: int) -> None:
        """Close the sessions the clock made due (into ``_closed``) and settle pending KPIs.

        Runs after every action (and in :meth:`close_due`), so a session closes at the exact event
        that makes it due: with an event-time clock, what a partition's state looks like after its
        n-th record does not depend on how the records were batched (a replay yields the same)."""
        heap = self._open_heap
        while heap and clock - heap[0][0] > self.gap_ms:
            last, user = heapq.heappop(heap)
            s = self._open.get(user)
            if s is None or s.last_ms != last:
                continue  # stale heap entry
            del self._open[user]
            self._close_into(s, clock)
        if self._pending_heap:
            self._settle_pending(clock)
        if self._retained_heap and clock > self._retained_heap[0][0]:
            self._expire_retained(clock)

    def close_due(self, now_ms: int) -> list[ClosedSession]:
        """Close (and return) every session whose last action is more than ``gap`` before the clock,
        plus sessions closed earlier by :meth:`add_action` and amended revisions of retained sessions,
        in closing order."""
        clock = self.clock(now_ms)
        self._advance(clock)
        out, self._closed = self._closed, []
        if self.retain:
            out.extend(self._emit_amendments(clock))
        # NOT re-sorted: closing order is a deterministic function of each partition's record order
        # (the EMA baseline depends on it); within one clock step the heap yields (end_ms, user) order
        return out

    def _settle_pending(self, clock: int) -> None:
        heap = self._pending_heap
        while heap and clock > heap[0][0]:
            _, user, kid = heapq.heappop(heap)
            pending = self._pending.get(user)
            ev = pending.pop(kid, None) if pending else None
            if ev is None:
                continue
            if not pending:
                self._pending.pop(user, None)
            self.dirty.add(user)
            if self._attribute(ev, None, settled=True) is AddResult.UNATTRIBUTED:
                self._unattributed(ev, clock)

    def _emit_amendments(self, clock: int) -> list[ClosedSession]:
        out: list[ClosedSession] = []
        users, self._amended_users = self._amended_users, set()
        for user in sorted(users):
            for r in self._retained.get(user, ()):
                if r.amended:
                    out.append(self._amend(r, clock))
        return out

    def _amend(self, r: OpenSession, clock: int) -> ClosedSession:
        r.amended = False
        r.revision += 1
        r.closed_at_ms = clock
        self.amendments += 1
        self.dirty.add(r.user_id)
        return self._snapshot(r, clock)

    def _expire_retained(self, clock: int) -> None:
        heap = self._retained_heap
        while heap and clock > heap[0][0]:
            _, user = heapq.heappop(heap)
            sessions = self._retained.get(user)
            if not sessions:
                continue
            keep = [r for r in sessions if clock <= r.last_ms + self.retention_ms]
            for r in sessions:
                if r.amended and clock > r.last_ms + self.retention_ms:
                    self._closed.append(self._amend(r, clock))  # emit before forgetting it
            if len(keep) != len(sessions):
                self.dirty.add(user)
            if keep:
                self._retained[user] = keep
            else:
                del self._retained[user]

    def close_all(self, now_ms: int) -> list[ClosedSession]:
        """Close every open session regardless of the gap (tests and tools; the service does not)."""
        clock = self.clock(now_ms)
        for user in list(self._open):
            self._close_into(self._open.pop(user), clock)
        out, self._closed = self._closed, []
        if self.retain:
            out.extend(self._emit_amendments(clock))
        out.sort(key=lambda c: (c.end_ms, c.session_key, c.revision))
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

    # --------------------------------------------------------------------------- durable state

    def user_state(self, user_id: str) -> str | None:
        """One user's state as JSON (open session, retained sessions, pending KPIs); ``None`` = empty."""
        o = self._open.get(user_id)
        r = self._retained.get(user_id)
        p = self._pending.get(user_id)
        if o is None and not r and not p:
            return None
        return json.dumps(
            {
                "o": None if o is None else o.to_json(),
                "r": [x.to_json() for x in r or ()],
                "p": [_event_json(k) for k in (p or {}).values()],
            },
            separators=(",", ":"),
        )

    def load_user(self, user_id: str, raw: str | bytes) -> None:
        d = json.loads(raw)
        if d["o"] is not None:
            s = OpenSession.from_json(d["o"])
            self._open[user_id] = s
            heapq.heappush(self._open_heap, (s.last_ms, user_id))
            for a in s.actions:
                self._seen_actions.add(a)
            for kid in s.kpis:
                self._seen_kpis.add(kid)
        if d["r"]:
            rs = [OpenSession.from_json(x) for x in d["r"]]
            self._retained[user_id] = rs
            if any(r.amended for r in rs):
                self._amended_users.add(user_id)
            for r in rs:
                heapq.heappush(self._retained_heap, (r.last_ms + self.retention_ms, user_id))
        if d["p"]:
            kp = [KpiEvent.model_validate(x) for x in d["p"]]
            self._pending[user_id] = {k.event_id: k for k in kp}
            for k in kp:
                heapq.heappush(
                    self._pending_heap, (k.event_time_ms + self.kpi_settle_ms, user_id, k.event_id)
                )

    @staticmethod
    def _snapshot(s: OpenSession, clock: int) -> ClosedSession:
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
            revision=s.revision,
            key_ms=s.key_ms,
            baseline=s.baseline,
        )

    _close = _snapshot  # backwards-compatible name
