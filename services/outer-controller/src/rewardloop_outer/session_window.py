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
* De-duplication by ``event_id`` against the user's open, retained and pending events -- bounded
  (by the retention) and durable (it *is* the session state), so a replay after a crash de-duplicates
  exactly as the uninterrupted run did. A duplicate of an event older than the retention is beyond
  the allowed lateness anyway: it is reported again as the same late record (same outbox id).
* Durable state, as *lines* (one JSON array each, newline-separated; events are stored as the
  record's own JSON bytes, never re-serialised)::

      ["h", user, {"o": meta | null, "r": [meta, ...]}]   the user's header (session metadata)
      ["o", user, meta | null]                            the open session's metadata
      ["r", user, meta]                                   a retained session's metadata (by its "i")
      ["a", user, sid, {...action...}]                    an action of session ``sid``
      ["k", user, sid, {...kpi...}]                       a KPI of session ``sid`` (0 = pending)
      ["f", user]                                         forget the user (a full state follows)
      ["d", user]                                         the user has no state left

  :meth:`user_state` is one user's full state (header + every event line; ``None`` = nothing left);
  :meth:`delta` is what changed since the last :meth:`commit_delta`: per dirty user its header and
  the event lines *appended* since (a removal -- an expired session, a pending KPI moved into a
  session -- writes the user's full state after an ``f`` line instead). The header is an ``o`` line
  plus an ``r`` line per retained session whose metadata changed (closed into the list, amended,
  re-emitted, given a baseline or tuner), not the ``h`` line: the retained list holds every session
  of the attribution window (7 days by default), and rewriting it with each action made a delta grow
  with the user's history (it was ~80 % of a live delta's header bytes, ~40 % of all its bytes in
  ``make bench-outer``). A restore replaces the retained session with the line's ``i`` or appends it
  (a session enters the list when it closes, in closing order: the live list's order).
  :meth:`restore` replays a snapshot and deltas in order. The engine appends one delta blob per
  checkpoint to a Redis list and compacts it into a snapshot hash now and then (:mod:`.state_store`).
"""

from __future__ import annotations

import dataclasses
import heapq
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from rewardloop_common.events import KpiEvent, RewardEvent

from .fastevents import Action, Kpi, action_from_model, kpi_from_model
from .returns import order_steps


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
    actions: dict[str, Action] = field(default_factory=dict)
    kpis: dict[str, Kpi] = field(default_factory=dict)
    revision: int = 0
    closed_at_ms: int = 0
    amended: bool = False  # retained session changed since its last emitted revision
    key_ms: int = 0  # start_ms when first closed: the session_key stays fixed across amendments
    baseline: float | None = None  # the reward baseline of revision 0 (amendments reuse it)
    tuner: dict[str, Any] | None = None  # revision 0's tuner behaviour (amendments carry it too)
    sid: int = 1  # the session's number within its user's durable state

    def add(self, ev: Action) -> bool:
        """Add ``ev``; ``True`` when it moved ``last_ms`` (the session's due time)."""
        self.actions[ev.event_id] = ev
        t = ev.event_time_ms
        if t < self.start_ms:
            self.start_ms = t
        if t > self.last_ms:
            self.last_ms = t
            return True
        return False

    def meta(self) -> dict[str, Any]:
        return {
            "i": self.sid,
            "g": self.segment,
            "s": self.start_ms,
            "l": self.last_ms,
            "v": self.revision,
            "c": self.closed_at_ms,
            "m": self.amended,
            "q": self.key_ms,
            "b": self.baseline,
            "t": self.tuner,
        }

    @classmethod
    def from_meta(cls, user_id: str, d: dict[str, Any]) -> OpenSession:
        return cls(
            user_id=user_id,
            segment=d["g"],
            start_ms=d["s"],
            last_ms=d["l"],
            revision=d["v"],
            closed_at_ms=d["c"],
            amended=d["m"],
            key_ms=d["q"],
            baseline=d.get("b"),
            tuner=d.get("t"),
            sid=d["i"],
        )


@dataclass(frozen=True)
class ClosedSession:
    user_id: str
    segment: str
    start_ms: int
    end_ms: int
    closed_at_ms: int
    actions: list[Action]  # ordered by (event_time_ms, position, event_id)
    kpis: list[Kpi]
    revision: int = 0
    key_ms: int = 0  # the start_ms that names the session (0: start_ms)
    baseline: float | None = None  # revision 0's reward baseline (set for amendments)
    tuner: dict[str, Any] | None = None  # revision 0's tuner behaviour (set for amendments)

    @property
    def session_key(self) -> str:
        return session_key(self.user_id, self.key_ms or self.start_ms)

    def with_baseline(self, baseline: float | None) -> ClosedSession:
        """A copy with another baseline (``NativeClosed.with_baseline`` is the native twin)."""
        return dataclasses.replace(self, baseline=baseline)


@dataclass(frozen=True)
class LateEvent:
    """An event that no session took: ``kind`` is ``action`` or ``kpi``; ``reason`` is
    ``beyond_allowed_lateness`` or ``unattributed``. (The engine also sends a session whose record cannot
    be built this way: ``kind`` session, ``reason`` invalid_session.)"""

    kind: str
    reason: str
    user_id: str
    event_id: str
    event_time_ms: int
    clock_ms: int
    event: dict[str, Any]

    def to_json_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "kind": self.kind,
                "reason": self.reason,
                "user_id": self.user_id,
                "event_id": self.event_id,
                "event_time_ms": self.event_time_ms,
                "clock_ms": self.clock_ms,
                "event": self.event,
            }
        )


def session_key(user_id: str, start_ms: int) -> str:
    """Deterministic key of a session: ``"<user_id>:<start_ms>"``."""
    return f"{user_id}:{start_ms}"


class DueQueue:
    """A min-queue of ``(key, user)`` entries: the order of :mod:`heapq` over the same entries, cheaper
    when keys arrive in increasing order (the usual case: an open session's ``last_ms`` is the newest
    event time).

    Why: with a per-action push and pop, a heap of every entry of the last ``gap`` costs ~15 tuple
    comparisons per pop. An entry whose key is above every queued run entry's is appended to a
    sorted run (a deque); any other goes to a heap. :meth:`pop` takes the smaller head of the two, so
    the entries come out in exactly the heap's order (equal entries are equal tuples: their order
    cannot matter) -- the same entries, stale ones included, so callers see what one heap gave them."""

    __slots__ = ("run", "heap")

    def __init__(self) -> None:
        self.run: deque[tuple[int, str]] = deque()  # sorted: appended only above its last key
        self.heap: list[tuple[int, str]] = []

    def __len__(self) -> int:
        return len(self.run) + len(self.heap)

    def push(self, key: int, user: str) -> None:
        run = self.run
        if not run or key > run[-1][0]:
            run.append((key, user))
        else:
            heapq.heappush(self.heap, (key, user))

    def due(self, clock: int, gap: int) -> bool:
        """Is there an entry with ``clock - key > gap``?"""
        run, heap = self.run, self.heap
        return bool((run and clock - run[0][0] > gap) or (heap and clock - heap[0][0] > gap))

    def pop(self) -> tuple[int, str]:
        """The smallest entry (the queue must not be empty)."""
        run, heap = self.run, self.heap
        if heap and (not run or heap[0] < run[0]):
            return heapq.heappop(heap)
        return run.popleft()


def _event_line(kind: bytes, uj: bytes, sid: int, raw: bytes) -> bytes:
    return b"".join((b'["', kind, b'",', uj, b",", str(sid).encode(), b",", raw, b"]"))  # one copy of raw


def _event_lines_len(uj: bytes, sid: int, raws: list[bytes]) -> int:
    """The bytes of the event lines (``_event_line``) of user ``uj`` and ``sid`` holding ``raws``."""
    per_line = len(uj) + len(str(sid)) + 8  # '["a",' user ',' sid ',' raw ']'
    return sum(map(len, raws)) + per_line * len(raws)


def _session_lines_len(uj: bytes, s: OpenSession) -> int:
    """The bytes of ``s``'s event lines (each of its actions and KPIs)."""
    return _event_lines_len(uj, s.sid, [a.raw for a in s.actions.values()] + [k.raw for k in s.kpis.values()])


def _open_line(uj: bytes, o: OpenSession | None) -> bytes:
    """A user's open-session line (its retained sessions' metadata unchanged)."""
    return b'["o",' + uj + b"," + (b"null" if o is None else orjson.dumps(o.meta())) + b"]"


def _retained_line(uj: bytes, r: OpenSession) -> bytes:
    """A retained session's metadata line (replaces the one with its sid in a restore)."""
    return b'["r",' + uj + b"," + orjson.dumps(r.meta()) + b"]"


def _header_line(uj: bytes, o: OpenSession | None, rs: list[OpenSession] | None) -> bytes:
    """A user's header line from its open (``None``: none) and retained sessions."""
    return (
        b'["h",'
        + uj
        + b","
        + orjson.dumps({"o": None if o is None else o.meta(), "r": [r.meta() for r in rs or ()]})
        + b"]"
    )


class SessionWindow:
    def __init__(
        self,
        gap_ms: int,
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
        self._open_due = DueQueue()  # (last_ms, user) lazily invalidated
        self._retained: dict[str, list[OpenSession]] = {}
        self._retained_heap: list[tuple[int, str]] = []  # (expiry clock, user) lazily invalidated
        self._pending: dict[str, dict[str, Kpi]] = {}
        self._pending_heap: list[tuple[int, str, str]] = []  # (settle clock, user, kpi id)
        self._closed: list[ClosedSession] = []  # closed by add_action, returned by the next close_due
        self._late: list[LateEvent] = []
        self.dirty: set[str] = set()  # users changed since the last commit_delta
        self.delta_garbage = 0  # of the last delta(): the bytes of its superseding lines
        self._removed = 0  # bytes of event lines whose events left the state since the last commit
        self._appended: dict[str, list[bytes]] = {}  # event lines appended since then, per user
        self._rewrite: set[str] = set()  # users whose full state the next delta writes
        self._uj: dict[str, bytes] = {}  # user id -> its JSON string (lines), for dirty users
        # user -> the retained sessions (sids) whose metadata changed since the last commit_delta:
        # the delta writes an "r" line for each. Marked wherever a retained session's metadata
        # changes (_mark_retained); an event appended to the open session changes only the "o" line.
        self._rchanged: dict[str, list[int]] = {}
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

    def set_baseline(self, user_id: str, key_ms: int, baseline: float) -> None:
        """Remember revision 0's reward baseline on the retained session (amendments reuse it)."""
        for r in self._retained.get(user_id, ()):
            if r.key_ms == key_ms:
                r.baseline = baseline
                self._mark_retained(user_id, r.sid)

    def set_tuner(self, user_id: str, key_ms: int, tuner: dict[str, Any]) -> None:
        """Remember revision 0's tuner behaviour on the retained session: every revision is the complete
        session, so amendments carry the same ``tuner`` field (whether a delayed KPI lands in revision 0
        or in an amendment depends on cross-topic timing; the field must not)."""
        for r in self._retained.get(user_id, ()):
            if r.key_ms == key_ms:
                r.tuner = tuner
                self._mark_retained(user_id, r.sid)

    def drain_late(self) -> list[LateEvent]:
        out, self._late = self._late, []
        return out

    # ------------------------------------------------------------------------ change tracking

    def _append(self, user: str, sid: int, kind: bytes, raw: bytes) -> None:
        self.dirty.add(user)
        if user not in self._rewrite:
            uj = self._uj.get(user)
            if uj is None:
                uj = self._uj[user] = orjson.dumps(user)
            self._appended.setdefault(user, []).append(_event_line(kind, uj, sid, raw))

    def _mark_retained(self, user: str, sid: int) -> None:
        """Retained session ``sid``'s metadata changed: the next delta writes its ``r`` line."""
        self.dirty.add(user)
        changed = self._rchanged.setdefault(user, [])
        if sid not in changed:
            changed.append(sid)

    def _mark_rewrite(self, user: str) -> None:
        self.dirty.add(user)
        self._rewrite.add(user)
        self._appended.pop(user, None)

    def _new_sid(self, user: str) -> int:
        o = self._open.get(user)
        top = o.sid if o is not None else 0
        for r in self._retained.get(user, ()):
            top = max(top, r.sid)
        return top + 1

    # ------------------------------------------------------------------------------------- updates

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

    def add_action(self, ev: Action | RewardEvent, now_ms: int) -> AddResult:
        if not isinstance(ev, Action):
            ev = action_from_model(ev)
        user, eid = ev.user_id, ev.event_id
        # de-duplication against the user's open and retained sessions (inlined: once per record)
        s = self._open.get(user)
        if s is not None and eid in s.actions:
            self.duplicates += 1
            return AddResult.DUPLICATE
        for kept in self._retained.get(user, ()):
            if eid in kept.actions:
                self.duplicates += 1
                return AddResult.DUPLICATE
        t = ev.event_time_ms
        if t > self.max_event_ms:
            self.max_event_ms = t
        clock = self.max_event_ms if self.max_event_ms >= now_ms else int(now_ms)
        due, gap = self._open_due, self.gap_ms
        if due.due(clock, gap) or (self._pending_heap and clock > self._pending_heap[0][0]):
            self._advance(clock)
            s = self._open.get(user)  # _advance may have closed it
        if s is not None and t > s.last_ms + gap:
            del self._open[user]
            self._close_into(s, clock)
            s = None
        if s is not None and t >= s.start_ms - gap:
            if s.add(ev):  # a new last_ms gets a queue entry
                due.push(t, user)
            self._append(user, s.sid, b"a", ev.raw)
            return AddResult.ADDED
        # before the open session's span, or no open session
        if self.retain:
            r = self._find_retained(user, self.gap_ms, t, self.gap_ms)
            if r is not None:
                self.late_actions += 1
                r.add(ev)
                r.amended = True
                self._amended_users.add(user)
                self._append(user, r.sid, b"a", ev.raw)
                self._mark_retained(user, r.sid)
                return AddResult.AMENDED
        if self._too_late(t, clock):
            self.too_late_actions += 1
            self._late.append(
                LateEvent("action", "beyond_allowed_lateness", user, ev.event_id, t, clock, ev.as_dict())
            )
            return AddResult.LATE
        if s is None:
            s = OpenSession(user, ev.segment, t, t, sid=self._new_sid(user))
            s.add(ev)
            self._open[user] = s
            due.push(t, user)
            self._append(user, s.sid, b"a", ev.raw)
            return AddResult.ADDED
        self.late_actions += 1
        late = OpenSession(user, ev.segment, t, t, {ev.event_id: ev}, sid=self._new_sid(user))
        self._append(user, late.sid, b"a", ev.raw)
        self._close_into(late, clock)
        return AddResult.ADDED

    def add_kpi(self, ev: Kpi | KpiEvent, now_ms: int) -> AddResult:
        if not isinstance(ev, Kpi):
            ev = kpi_from_model(ev)
        user = ev.user_id
        if self._kpi_known(user, ev.event_id):
            self.duplicates += 1
            return AddResult.DUPLICATE
        if self.attribution_ms == 0:  # legacy: the open session or nothing
            s = self._open.get(user)
            if s is None:
                self.unattributed_kpis += 1
                return AddResult.UNATTRIBUTED
            s.kpis[ev.event_id] = ev
            self._append(user, s.sid, b"k", ev.raw)
            return AddResult.ADDED
        clock = self.clock(now_ms)
        result = self._attribute(ev, settled=clock > ev.event_time_ms + self.kpi_settle_ms)
        if result is AddResult.PENDING:
            self._pending.setdefault(user, {})[ev.event_id] = ev
            heapq.heappush(self._pending_heap, (ev.event_time_ms + self.kpi_settle_ms, user, ev.event_id))
            self.kpis_pending += 1
            self._append(user, 0, b"k", ev.raw)
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

    def _attribute(self, ev: Kpi, settled: bool, moved: bool = False) -> AddResult:
        """The session a KPI at ``tk`` belongs to: the user's latest session with
        ``start - gap/2 <= tk``, if ``tk <= last + gap/2`` (open) or ``tk <= last + W`` (closed).

        Before the KPI is *settled* (the clock passed ``tk + 2*gap + lateness``, so every action that
        could start such a session has been seen) only the unambiguous cases are decided at once; the
        rest waits (``PENDING``). The answer then does not depend on how the action and KPI topics
        interleave when they are consumed (a replay, a rebalance give the same sessions).
        ``moved``: the KPI was pending (its state line moves: the user's full state is rewritten)."""
        tk = ev.event_time_ms
        half = self.gap_ms // 2
        user = ev.user_id
        s = self._open.get(user)
        if s is not None and s.start_ms - half <= tk and (settled or tk <= s.last_ms + half):
            s.kpis[ev.event_id] = ev
            self._kpi_line(user, s.sid, ev, moved)
            return AddResult.ADDED
        if settled or (s is not None and tk < s.start_ms - half):
            r = self._find_retained(user, half, tk, self.attribution_ms)
            if r is not None:
                r.kpis[ev.event_id] = ev
                r.amended = True
                self._amended_users.add(user)
                self._kpi_line(user, r.sid, ev, moved)
                self._mark_retained(user, r.sid)
                return AddResult.AMENDED
        return AddResult.UNATTRIBUTED if settled else AddResult.PENDING

    def _kpi_line(self, user: str, sid: int, ev: Kpi, moved: bool) -> None:
        if moved:
            self._mark_rewrite(user)
        else:
            self._append(user, sid, b"k", ev.raw)

    def _unattributed(self, ev: Kpi, clock: int) -> None:
        self.unattributed_kpis += 1
        self._late.append(
            LateEvent("kpi", "unattributed", ev.user_id, ev.event_id, ev.event_time_ms, clock, ev.as_dict())
        )

    def _close_into(self, s: OpenSession, clock: int) -> None:
        """Close ``s`` (taking the user's pending KPIs it covers), queue its record, retain it."""
        user = s.user_id
        pending = self._pending.get(user)
        if pending:
            half = self.gap_ms // 2
            lo, hi = s.start_ms - half, s.last_ms + half
            taken = [k for k, kp in pending.items() if lo <= kp.event_time_ms <= hi]
            for kid in taken:
                s.kpis[kid] = pending.pop(kid)
            if not pending:
                del self._pending[user]
            if taken:
                self._mark_rewrite(user)
        s.closed_at_ms = clock
        if not s.key_ms:
            s.key_ms = s.start_ms
        self._closed.append(self._snapshot(s, clock))
        self.dirty.add(user)  # the "o" line (the open session may be gone)
        if self.retain:
            self._mark_retained(user, s.sid)
            s.amended = False
            self._retained.setdefault(user, []).append(s)
            heapq.heappush(self._retained_heap, (s.last_ms + self.retention_ms, user))
        else:
            self._mark_rewrite(user)  # its events leave the state
            self._removed += _session_lines_len(orjson.dumps(user), s)

    def _advance(self, clock: int) -> None:
        """Close the sessions the clock made due (into ``_closed``) and settle pending KPIs.

        Runs after every action (and in :meth:`close_due`), so a session closes at the exact event
        that makes it due: with an event-time clock, what a partition's state looks like after its
        n-th record does not depend on how the records were batched (a replay yields the same)."""
        due, gap = self._open_due, self.gap_ms
        while due.due(clock, gap):
            last, user = due.pop()
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
            self._mark_rewrite(user)
            if self._attribute(ev, settled=True, moved=True) is AddResult.UNATTRIBUTED:
                self._unattributed(ev, clock)
                self._removed += _event_lines_len(orjson.dumps(user), 0, [ev.raw])

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
        self._mark_retained(r.user_id, r.sid)
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
                if clock > r.last_ms + self.retention_ms:
                    if r.amended:
                        self._closed.append(self._amend(r, clock))  # emit before forgetting it
                    self._removed += _session_lines_len(orjson.dumps(user), r)
            if len(keep) != len(sessions):
                self._mark_rewrite(user)
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

    # --------------------------------------------------------------------------- durable state

    def _header_line(self, user: str, uj: bytes) -> bytes:
        return _header_line(uj, self._open.get(user), self._retained.get(user))

    def _has_state(self, user: str) -> bool:
        return user in self._open or bool(self._retained.get(user)) or bool(self._pending.get(user))

    def _full_lines(self, user: str, uj: bytes) -> list[bytes]:
        lines = [self._header_line(user, uj)]
        o = self._open.get(user)
        for s in ([o] if o is not None else []) + list(self._retained.get(user, ())):
            lines.extend(_event_line(b"a", uj, s.sid, a.raw) for a in s.actions.values())
            lines.extend(_event_line(b"k", uj, s.sid, k.raw) for k in s.kpis.values())
        lines.extend(_event_line(b"k", uj, 0, k.raw) for k in self._pending.get(user, {}).values())
        return lines

    def users(self) -> set[str]:
        """Every user with state."""
        return {*self._open, *self._retained, *self._pending}

    def user_state(self, user_id: str) -> bytes | None:
        """One user's full state (newline-separated lines); ``None`` = nothing left."""
        if not self._has_state(user_id):
            return None
        return b"\n".join(self._full_lines(user_id, orjson.dumps(user_id)))

    def delta(self, users: Iterable[str] | None = None) -> bytes:
        """The lines that bring a store from the last committed delta to now (see the module doc).

        Sets :attr:`delta_garbage`: how many bytes of the store it makes dead. Its lines but the
        appended ``a``/``k`` ones (newlines not counted) -- an ``o``/``r`` line replaces the user's
        last one, an ``f`` line and the full state after it replace all of the user's earlier lines,
        a ``d`` line removes them: their own size stands in for what they replace -- plus the event
        lines of what left the state since the last commit (expired retained sessions, closed ones
        when nothing is retained, pending KPIs no session took). :class:`.state_log.StateLog` compacts
        the log once these are a large part of it."""
        lines: list[bytes] = []
        # one lookup of the user's sessions for both "any state left?" and the header (a header per
        # dirty user per checkpoint: about one per record)
        open_, retained, pending, uj_of, rchanged = (
            self._open,
            self._retained,
            self._pending,
            self._uj,
            self._rchanged,
        )
        garbage = 0  # the bytes of the lines that supersede earlier ones (see delta_garbage)
        for user in self.dirty if users is None else users:
            uj = uj_of.get(user) or orjson.dumps(user)
            o, rs = open_.get(user), retained.get(user)
            at = len(lines)
            if o is None and not rs and not pending.get(user):  # not _has_state(user)
                lines.append(b'["d",' + uj + b"]")
            elif user in self._rewrite:
                lines.append(b'["f",' + uj + b"]")
                lines.extend(self._full_lines(user, uj))
            else:
                lines.append(_open_line(uj, o))
                changed = rchanged.get(user)
                if changed:  # in the retained list's order
                    lines.extend(_retained_line(uj, r) for r in rs or () if r.sid in changed)
                garbage += sum(map(len, lines[at:]))
                lines.extend(self._appended.get(user, ()))
                continue
            garbage += sum(map(len, lines[at:]))
        self.delta_garbage = garbage + self._removed
        return b"\n".join(lines)

    def commit_delta(self) -> None:
        """The last :meth:`delta` is durable: start tracking changes afresh."""
        self.dirty.clear()
        self._appended.clear()
        self._rewrite.clear()
        self._uj.clear()
        self._rchanged.clear()
        self._removed = 0

    def restore(self, blobs: Iterable[bytes]) -> int:
        """Rebuild the state from blobs of lines (a snapshot's user states, then deltas, in order).
        Returns the number of users restored."""
        headers: dict[str, dict[str, Any]] = {}
        events: dict[str, list[tuple[str, int, dict[str, Any], bytes]]] = {}
        for blob in blobs:
            if not blob:
                continue
            for line in blob.split(b"\n"):
                x = orjson.loads(line)
                op, user = x[0], x[1]
                if op == "h":
                    headers[user] = x[2]
                elif op == "o":  # the open session's metadata; the retained list as before
                    h = headers.get(user)
                    headers[user] = {"o": x[2], "r": [] if h is None else h["r"]}
                elif op == "r":  # one retained session's metadata: replaced by its sid, or appended
                    h = headers.get(user)
                    rs = [] if h is None else list(h["r"])
                    at = next((i for i, m in enumerate(rs) if m["i"] == x[2]["i"]), len(rs))
                    rs[at : at + 1] = [x[2]]
                    headers[user] = {"o": None if h is None else h["o"], "r": rs}
                elif op in ("a", "k"):
                    # the event's own bytes, exactly as stored: '["a",' user ',' sid ',' raw ']'
                    start = 6 + len(orjson.dumps(user)) + len(str(x[2])) + 1
                    events.setdefault(user, []).append((op, x[2], x[3], line[start:-1]))
                elif op in ("f", "d"):
                    headers.pop(user, None)
                    events.pop(user, None)
                else:
                    raise ValueError(f"unknown state line op {op!r}")
        for user, h in headers.items():
            self._load(user, h, events.get(user, []))
        return len(headers)

    def load_user(self, user_id: str, raw: bytes) -> None:
        self.restore([raw])

    def _load(self, user: str, h: dict[str, Any], evs: list[tuple[str, int, dict[str, Any], bytes]]) -> None:
        sessions: dict[int, OpenSession] = {}
        if h["o"] is not None:
            s = OpenSession.from_meta(user, h["o"])
            sessions[s.sid] = s
            self._open[user] = s
            self._open_due.push(s.last_ms, user)
        rs = [OpenSession.from_meta(user, m) for m in h["r"]]
        for r in rs:
            sessions[r.sid] = r
            heapq.heappush(self._retained_heap, (r.last_ms + self.retention_ms, user))
        if rs:
            self._retained[user] = rs
            if any(r.amended for r in rs):
                self._amended_users.add(user)
        for op, sid, d, raw in evs:
            if op == "a":
                sessions[sid].actions[d["event_id"]] = Action(d, raw)
                continue
            k = Kpi(KpiEvent.model_validate(d), raw)
            if sid:
                sessions[sid].kpis[k.event_id] = k
            else:
                self._pending.setdefault(user, {})[k.event_id] = k
                heapq.heappush(self._pending_heap, (k.event_time_ms + self.kpi_settle_ms, user, k.event_id))

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
            revision=s.revision,
            key_ms=s.key_ms,
            baseline=s.baseline,
            tuner=s.tuner,
        )
