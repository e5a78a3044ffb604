from __future__ import annotations

from typing import Any

import orjson
import pytest

from rewardloop_common.testing import make_kpi_event, make_reward_event
from rewardloop_outer.session_window import AddResult, SessionWindow

T0 = 1_763_888_400_000
GAP = 2_000  # 2 s


def test_actions_group_and_close_after_gap() -> None:
    w = SessionWindow(GAP)
    w.add_action(make_reward_event("e1", "u1", T0), now_ms=T0)
    w.add_action(make_reward_event("e2", "u1", T0 + 1_500), now_ms=T0 + 1_500)
    w.add_action(make_reward_event("e3", "u2", T0 + 100), now_ms=T0 + 1_500)
    assert w.open_count == 2
    assert w.close_due(now_ms=T0 + 2_000) == []  # u2: 1900 <= gap
    closed = w.close_due(now_ms=T0 + 2_101)  # u2: 2001 > gap; u1: 601
    assert [c.session_key for c in closed] == [f"u2:{T0 + 100}"]
    closed = w.close_due(now_ms=T0 + 3_501)
    [s] = closed
    assert s.session_key == f"u1:{T0}" and s.end_ms == T0 + 1_500 and s.closed_at_ms == T0 + 3_501
    assert [a.event_id for a in s.actions] == ["e1", "e2"]
    assert w.open_count == 0


def test_clock_uses_max_event_time() -> None:
    w = SessionWindow(GAP)
    w.add_action(make_reward_event("e1", "u1", T0), now_ms=0)
    # wall clock far behind: event time of another user's action moves the clock
    w.add_action(make_reward_event("e2", "u2", T0 + 5_000), now_ms=0)
    assert w.clock(0) == T0 + 5_000
    assert [c.user_id for c in w.close_due(now_ms=0)] == ["u1"]


def test_gap_in_event_time_splits_a_users_sessions() -> None:
    w = SessionWindow(GAP)
    w.add_action(make_reward_event("e1", "u1", T0), now_ms=T0)
    w.add_action(make_reward_event("e2", "u1", T0 + 5_000), now_ms=T0)
    closed = w.close_due(now_ms=T0)  # the first one was closed by the split
    assert [c.session_key for c in closed] == [f"u1:{T0}"]
    assert w.open_session("u1") is not None and w.open_session("u1").start_ms == T0 + 5_000  # type: ignore[union-attr]


def test_out_of_order_and_late_actions() -> None:
    w = SessionWindow(GAP)
    w.add_action(make_reward_event("e2", "u1", T0 + 1_000), now_ms=T0)
    w.add_action(make_reward_event("e1", "u1", T0), now_ms=T0)  # earlier, within the gap: joins
    s = w.open_session("u1")
    assert s is not None and s.start_ms == T0
    w.add_action(make_reward_event("old", "u1", T0 - 10_000), now_ms=T0)  # far too late: own session
    assert w.late_actions == 1
    keys = [c.session_key for c in w.close_due(now_ms=T0)]
    assert keys == [f"u1:{T0 - 10_000}"]
    assert [a.event_id for a in w.close_all(now_ms=T0)[0].actions] == ["e1", "e2"]


def test_dedup_by_event_id_even_after_close() -> None:
    w = SessionWindow(GAP, allowed_lateness_ms=1_000)  # closed sessions are retained: they de-duplicate
    ev = make_reward_event("e1", "u1", T0)
    assert w.add_action(ev, T0) is AddResult.ADDED
    assert w.add_action(ev, T0) is AddResult.DUPLICATE
    assert len(w.close_due(T0 + GAP + 1)) == 1
    assert w.add_action(ev, T0 + GAP + 1) is AddResult.DUPLICATE
    assert w.open_count == 0 and w.duplicates == 2


def test_delta_lines_replay_to_the_same_state() -> None:
    w = SessionWindow(GAP, allowed_lateness_ms=1_000, attribution_window_ms=10_000)
    blobs: list[bytes] = []
    w.add_action(make_reward_event("e1", "u1", T0), 0)
    assert w.add_kpi(make_kpi_event("k0", "u1", event_time_ms=T0 + 1_200), 0) is AddResult.PENDING
    blobs.append(w.delta())
    w.commit_delta()
    w.add_action(make_reward_event("e2", "u1", T0 + 500), 0)
    d2 = w.delta()
    assert b'"e1"' not in d2 and b'"e2"' in d2  # only what was appended since the last delta
    blobs.append(d2)
    w.commit_delta()
    w.add_action(make_reward_event("e3", "u1", T0 + 4 * GAP), 0)  # closes the first, takes the KPI
    d3 = w.delta()
    assert d3.startswith(b'["f","u1"]')  # the pending KPI moved: the user's full state is rewritten
    blobs.append(d3)
    w.commit_delta()
    w2 = SessionWindow(GAP, allowed_lateness_ms=1_000, attribution_window_ms=10_000)
    assert w2.restore(blobs) == 1
    assert w2.user_state("u1") == w.user_state("u1")
    assert [k.event_id for k in w2.retained_sessions("u1")[0].kpis.values()] == ["k0"]
    assert w2.add_action(make_reward_event("e2", "u1", T0 + 500), 0) is AddResult.DUPLICATE


def test_a_delta_writes_a_retained_session_only_when_it_changed() -> None:
    w = SessionWindow(GAP, allowed_lateness_ms=1_000, attribution_window_ms=10 * GAP)
    blobs: list[bytes] = []

    def commit() -> list[list[Any]]:
        d = w.delta()
        blobs.append(d)
        w.commit_delta()
        return [orjson.loads(x) for x in d.split(b"\n")]

    def meta(i: int) -> dict[str, Any]:
        return w.retained_sessions("u1")[i].meta()

    w.add_action(make_reward_event("e1", "u1", T0), 0)
    assert [x[0] for x in commit()] == ["o", "a"]
    w.add_action(make_reward_event("e2", "u1", T0 + 2 * GAP), 0)  # closes e1's session
    o, r, a = commit()
    assert o == ["o", "u1", w.open_session("u1").meta()]  # type: ignore[union-attr]
    assert r == ["r", "u1", meta(0)] and a[0] == "a" and a[3]["event_id"] == "e2"
    w.add_action(make_reward_event("e3", "u1", T0 + 2 * GAP + 10), 0)
    assert [x[0] for x in commit()] == ["o", "a"]  # the retained session unchanged: no "r" line
    w.add_action(make_reward_event("e4", "u1", T0 + 5 * GAP), 0)  # closes the second session
    assert [(x[0], x[2].get("s") if x[0] == "r" else None) for x in commit()[:-1]] == [
        ("o", None),
        ("r", T0 + 2 * GAP),  # only the session that changed, not the first one
    ]
    w.set_baseline("u1", T0, 0.5)
    assert commit()[1:] == [["r", "u1", meta(0)]]
    w.add_kpi(make_kpi_event("k1", "u1", event_time_ms=T0 + 100), 0)  # amends the first session
    o, r, k = commit()
    assert r == ["r", "u1", meta(0)] and r[2]["m"] is True and k[0] == "k"
    w2 = SessionWindow(GAP, allowed_lateness_ms=1_000, attribution_window_ms=10 * GAP)
    assert w2.restore(blobs) == 1
    assert w2.user_state("u1") == w.user_state("u1")


def test_kpi_attaches_without_extending_and_unattributed() -> None:
    w = SessionWindow(GAP)
    assert w.add_kpi(make_kpi_event("k0", "u1", event_time_ms=T0), T0) is AddResult.UNATTRIBUTED
    w.add_action(make_reward_event("e1", "u1", T0), T0)
    k = make_kpi_event("k1", "u1", event_time_ms=T0 + 1_900, revenue=5.0)
    assert w.add_kpi(k, T0 + 1_900) is AddResult.ADDED
    assert w.add_kpi(k, T0 + 1_900) is AddResult.DUPLICATE
    # the KPI did not extend the session nor move the clock
    [s] = w.close_due(T0 + GAP + 1)
    assert s.end_ms == T0 and [x.event_id for x in s.kpis] == ["k1"]
    assert w.unattributed_kpis == 1
    assert w.add_kpi(make_kpi_event("k2", "u1"), T0 + GAP + 2) is AddResult.UNATTRIBUTED


def test_invalid_gap() -> None:
    with pytest.raises(ValueError):
        SessionWindow(0)
