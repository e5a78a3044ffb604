"""The session window backed by the Rust extension: :class:`NativeSessionWindow` has the public API of
:class:`~rewardloop_outer.session_window.SessionWindow` (the reference: same results, same closed
sessions, same late events, byte-identical state lines) with the state held in Rust.

The engine's hot path calls the Rust object directly (:attr:`NativeSessionWindow.core`:
``core.add_action_raw(raw, now_ms)`` parses and adds a scored action, returning a result code, or ``-1``
when the record is not of the common shape -- then :meth:`NativeSessionWindow.add_action_raw` takes the
Python path: :func:`~rewardloop_outer.fastevents.parse_action` validates it and ``core.add_action`` adds
it). This module is the thin adapter for everything else.

Result codes (``rewardloop_outer_native.NativeWindow.ADDED`` ...): 0 added, 1 duplicate, 2 unattributed,
3 amended, 4 pending, 5 late; :data:`RESULTS` maps them to :class:`AddResult`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from rewardloop_common.events import KpiEvent, RewardEvent
from rewardloop_outer_native import Closed, NativeWindow

from .fastevents import Action, Kpi, action_from_model, kpi_from_model, parse_action
from .session_window import AddResult, ClosedSession, LateEvent, OpenSession

#: result code -> AddResult (index = code)
RESULTS: tuple[AddResult, ...] = (
    AddResult.ADDED,
    AddResult.DUPLICATE,
    AddResult.UNATTRIBUTED,
    AddResult.AMENDED,
    AddResult.PENDING,
    AddResult.LATE,
)
NOT_COMMON = NativeWindow.NOT_COMMON

_UNSET = object()  # NativeClosed.tuner not read yet


def _kpi(raw: bytes) -> Kpi:
    return Kpi(KpiEvent.model_validate_json(raw), raw)


class NativeClosed:
    """A closed session (``ClosedSession``'s attributes) over the native :class:`Closed`: the events are
    turned into Python objects only when ``actions`` / ``kpis`` are read (``native`` has them as JSON)."""

    __slots__ = ("native", "_actions", "_kpis", "_tuner")

    def __init__(self, native: Closed) -> None:
        self.native = native
        self._actions: list[Action] | None = None
        self._kpis: list[Kpi] | None = None
        self._tuner: Any = _UNSET

    user_id = property(lambda self: self.native.user_id)
    segment = property(lambda self: self.native.segment)
    start_ms = property(lambda self: self.native.start_ms)
    end_ms = property(lambda self: self.native.end_ms)
    closed_at_ms = property(lambda self: self.native.closed_at_ms)
    revision = property(lambda self: self.native.revision)
    key_ms = property(lambda self: self.native.key_ms)
    baseline = property(lambda self: self.native.baseline)
    session_key = property(lambda self: self.native.session_key)

    @property
    def tuner(self) -> dict[str, Any] | None:
        if self._tuner is _UNSET:
            t = self.native.tuner_json
            self._tuner = None if t is None else orjson.loads(t)
        return self._tuner  # type: ignore[no-any-return]

    @property
    def actions(self) -> list[Action]:
        if self._actions is None:
            self._actions = [Action(orjson.loads(r), r) for r in self.native.action_raws()]
        return self._actions

    @property
    def kpis(self) -> list[Kpi]:
        if self._kpis is None:
            self._kpis = [_kpi(r) for r in self.native.kpi_raws()]
        return self._kpis

    def to_closed_session(self) -> ClosedSession:
        """The same session as the reference's :class:`ClosedSession` (the Python record path)."""
        return ClosedSession(
            user_id=self.user_id,
            segment=self.segment,
            start_ms=self.start_ms,
            end_ms=self.end_ms,
            closed_at_ms=self.closed_at_ms,
            actions=self.actions,
            kpis=self.kpis,
            revision=self.revision,
            key_ms=self.key_ms,
            baseline=self.baseline,
            tuner=self.tuner,
        )

    def with_baseline(self, baseline: float | None) -> NativeClosed:
        """A copy with another baseline (``dataclasses.replace(closed, baseline=...)``)."""
        return NativeClosed(self.native.with_baseline(baseline))

    def __repr__(self) -> str:
        return (
            f"NativeClosed({self.session_key!r}, revision={self.revision}, n_actions={self.native.n_actions})"
        )


def _open_session(user_id: str, d: dict[str, Any]) -> OpenSession:
    t = d["t"]
    s = OpenSession(
        user_id=user_id,
        segment=d["g"],
        start_ms=d["s"],
        last_ms=d["l"],
        revision=d["v"],
        closed_at_ms=d["c"],
        amended=d["m"],
        key_ms=d["q"],
        baseline=d["b"],
        tuner=None if t is None else orjson.loads(t),
        sid=d["i"],
    )
    for r in d["actions"]:
        a = Action(orjson.loads(r), r)
        s.actions[a.event_id] = a
    for r in d["kpis"]:
        k = _kpi(r)
        s.kpis[k.event_id] = k
    return s


def _counter(name: str) -> property:
    return property(lambda self: getattr(self.core, name), lambda self, v: setattr(self.core, name, v))


class NativeSessionWindow:
    """:class:`~rewardloop_outer.session_window.SessionWindow` with the state in Rust (``core``)."""

    def __init__(
        self,
        gap_ms: int,
        *,
        allowed_lateness_ms: int | None = None,
        attribution_window_ms: int = 0,
        compress_retained: bool = True,
    ) -> None:
        self.core = NativeWindow(
            int(gap_ms), allowed_lateness_ms, int(attribution_window_ms), bool(compress_retained)
        )
        self.gap_ms = self.core.gap_ms
        self.lateness_ms = allowed_lateness_ms
        self.attribution_ms = self.core.attribution_window_ms
        self.retain = self.core.retain
        self.retention_ms = self.core.retention_ms
        self.kpi_settle_ms = self.core.kpi_settle_ms

    max_event_ms = _counter("max_event_ms")
    duplicates = _counter("duplicates")
    late_actions = _counter("late_actions")
    too_late_actions = _counter("too_late_actions")
    unattributed_kpis = _counter("unattributed_kpis")
    amendments = _counter("amendments")
    kpis_pending = _counter("kpis_pending")

    # ------------------------------------------------------------------------------------- queries

    def clock(self, now_ms: int) -> int:
        return max(self.core.max_event_ms, int(now_ms))

    @property
    def open_count(self) -> int:
        return self.core.open_count  # type: ignore[no-any-return]

    @property
    def retained_count(self) -> int:
        return self.core.retained_count  # type: ignore[no-any-return]

    @property
    def pending_kpi_count(self) -> int:
        return self.core.pending_kpi_count  # type: ignore[no-any-return]

    @property
    def dirty(self) -> set[str]:
        """Users changed since the last :meth:`commit_delta` (a copy)."""
        return set(self.core.dirty_users())

    def open_session(self, user_id: str) -> OpenSession | None:
        """A copy of the open session (changing it does not change the window)."""
        d = self.core.open_session(user_id)
        return None if d is None else _open_session(user_id, d)

    def retained_sessions(self, user_id: str) -> list[OpenSession]:
        return [_open_session(user_id, d) for d in self.core.retained_sessions(user_id)]

    def set_baseline(self, user_id: str, key_ms: int, baseline: float) -> None:
        self.core.set_baseline(user_id, key_ms, baseline)

    def set_tuner(self, user_id: str, key_ms: int, tuner: dict[str, Any]) -> None:
        self.core.set_tuner(user_id, key_ms, orjson.dumps(tuner))

    def drain_late(self) -> list[LateEvent]:
        return [
            LateEvent(kind, reason, user, eid, t, clock, orjson.loads(raw))
            for kind, reason, user, eid, t, clock, raw in self.core.drain_late()
        ]

    # ------------------------------------------------------------------------------------- updates

    def add_action_raw(self, raw: bytes, now_ms: int) -> AddResult:
        """Parse and add a scored action (raises like :func:`parse_action` when it is invalid)."""
        code = self.core.add_action_raw(raw, now_ms)
        if code == NOT_COMMON:
            code = self.core.add_action(parse_action(raw), now_ms)
        return RESULTS[code]

    def add_action(self, ev: Action | RewardEvent, now_ms: int) -> AddResult:
        if not isinstance(ev, Action):
            ev = action_from_model(ev)
        return RESULTS[self.core.add_action(ev, int(now_ms))]

    def add_kpi(self, ev: Kpi | KpiEvent, now_ms: int) -> AddResult:
        if not isinstance(ev, Kpi):
            ev = kpi_from_model(ev)
        code = self.core.add_kpi(
            ev.event_id, ev.user_id, ev.kind, ev.event_time_ms, ev.revenue, ev.raw, int(now_ms)
        )
        return RESULTS[code]

    def close_due(self, now_ms: int) -> list[NativeClosed]:
        return [NativeClosed(c) for c in self.core.close_due(int(now_ms))]

    def close_all(self, now_ms: int) -> list[NativeClosed]:
        return [NativeClosed(c) for c in self.core.close_all(int(now_ms))]

    # --------------------------------------------------------------------------- durable state

    def users(self) -> set[str]:
        return self.core.users()  # type: ignore[no-any-return]

    def user_state(self, user_id: str) -> bytes | None:
        return self.core.user_state(user_id)  # type: ignore[no-any-return]

    def delta(self, users: Iterable[str] | None = None) -> bytes:
        return self.core.delta(None if users is None else list(users))  # type: ignore[no-any-return]

    @property
    def delta_garbage(self) -> int:
        """Of the last :meth:`delta` (``SessionWindow.delta_garbage``)."""
        return self.core.delta_garbage  # type: ignore[no-any-return]

    def commit_delta(self) -> None:
        self.core.commit_delta()

    def restore(self, blobs: Iterable[bytes]) -> int:
        return self.core.restore(list(blobs))  # type: ignore[no-any-return]

    def load_user(self, user_id: str, raw: bytes) -> None:
        self.core.restore([raw])
