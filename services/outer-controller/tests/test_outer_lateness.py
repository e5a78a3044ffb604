"""Late actions, amendments, delayed KPI attribution and the durable per-user state (issue #4)."""

from __future__ import annotations

from rewardloop_common.testing import make_kpi_event, make_reward_event
from rewardloop_outer.session_window import AddResult, SessionWindow

T0 = 1_763_888_400_000
GAP = 60_000
LATE = 120_000
ATTR = 3_600_000


def window() -> SessionWindow:
    return SessionWindow(GAP, allowed_lateness_ms=LATE, attribution_window_ms=ATTR)


def test_late_action_amends_the_closed_session_with_a_new_revision() -> None:
    w = window()
    w.add_action(make_reward_event("e1", "u1", T0), 0)
    w.add_action(make_reward_event("e2", "u1", T0 + 30_000), 0)
    w.add_action(make_reward_event("x", "u2", T0 + 100_000), 0)  # moves the watermark
    [c0] = w.close_due(0)
    assert c0.revision == 0 and c0.session_key == f"u1:{T0}"
    # an out-of-order event within the lateness, before the session's start: routed, not a new session
    assert w.add_action(make_reward_event("e0", "u1", T0 - 10_000), 0) is AddResult.AMENDED
    [c1] = w.close_due(0)
    assert c1.revision == 1 and c1.session_key == f"u1:{T0}"  # the key stays fixed
    assert [a.event_id for a in c1.actions] == ["e0", "e1", "e2"] and c1.start_ms == T0 - 10_000
    assert w.late_actions == 1 and w.amendments == 1
    # a duplicate of a step of the retained session is recognised
    assert w.add_action(make_reward_event("e1", "u1", T0), 0) is AddResult.DUPLICATE


def test_action_beyond_allowed_lateness_becomes_a_late_event() -> None:
    w = window()
    w.add_action(make_reward_event("now", "u2", T0 + 1_000_000), 0)
    assert w.add_action(make_reward_event("old", "u1", T0), 0) is AddResult.LATE
    [late] = w.drain_late()
    assert (late.kind, late.reason, late.event_id) == ("action", "beyond_allowed_lateness", "old")
    assert late.event["event_id"] == "old" and w.too_late_actions == 1 and w.open_session("u1") is None


def test_delayed_kpi_after_close_amends_within_the_attribution_window() -> None:
    w = window()
    w.add_action(make_reward_event("e1", "u1", T0), 0)
    w.add_action(make_reward_event("tick", "u2", T0 + 10 * GAP), 0)
    [c0] = w.close_due(0)
    assert c0.kpis == []
    k = make_kpi_event("k1", "u1", "purchase", T0 + 5 * GAP, revenue=20.0)
    assert w.add_kpi(k, 0) is AddResult.AMENDED
    [c1] = w.close_due(0)
    assert c1.revision == 1 and [x.event_id for x in c1.kpis] == ["k1"]
    # beyond the window: unattributed, reported
    w.add_action(make_reward_event("tick2", "u2", T0 + ATTR + 20 * GAP), 0)
    w.close_due(0)
    k2 = make_kpi_event("k2", "u1", "return_visit", T0 + ATTR + 5 * GAP)
    assert w.add_kpi(k2, 0) is AddResult.UNATTRIBUTED
    assert [x.reason for x in w.drain_late()] == ["unattributed"]


def test_kpi_before_its_actions_waits_and_joins_the_session() -> None:
    w = window()
    k = make_kpi_event("k1", "u1", "purchase", T0 + 500, revenue=5.0)
    assert w.add_kpi(k, 0) is AddResult.PENDING
    w.add_action(make_reward_event("e1", "u1", T0), 0)
    w.add_action(make_reward_event("tick", "u2", T0 + 10 * GAP), 0)
    [c] = w.close_due(0)
    assert c.revision == 0 and [x.event_id for x in c.kpis] == ["k1"] and w.pending_kpi_count == 0
    assert w.drain_late() == []


def test_pending_kpi_without_session_is_reported_once_settled() -> None:
    w = window()
    assert w.add_kpi(make_kpi_event("k1", "u1", event_time_ms=T0), 0) is AddResult.PENDING
    w.add_action(make_reward_event("tick", "u2", T0 + 2 * GAP + LATE + 1), 0)
    assert w.close_due(0) == []
    [late] = w.drain_late()
    assert late.reason == "unattributed" and w.unattributed_kpis == 1


def test_retained_sessions_expire() -> None:
    w = window()
    w.add_action(make_reward_event("e1", "u1", T0), 0)
    w.add_action(make_reward_event("tick", "u2", T0 + 2 * GAP), 0)
    w.close_due(0)
    assert w.retained_count == 1
    w.add_action(make_reward_event("tick2", "u3", T0 + ATTR + GAP), 0)
    w.close_due(0)
    assert w.retained_sessions("u1") == []


def test_user_state_round_trips() -> None:
    w = window()
    w.add_action(make_reward_event("e1", "u1", T0, clicked=True, reward=1.5), 0)
    w.add_action(make_reward_event("tick", "u2", T0 + 3 * GAP), 0)
    w.close_due(0)
    w.add_action(make_reward_event("e2", "u1", T0 + 4 * GAP), 0)
    w.add_kpi(make_kpi_event("k1", "u1", event_time_ms=T0 + 4 * GAP + 5), 0)
    w.add_kpi(make_kpi_event("k9", "u9", event_time_ms=T0 + 10 * GAP), 0)  # pending: no session
    assert {"u1", "u2"} <= w.dirty
    raw, raw9 = w.user_state("u1"), w.user_state("u9")
    assert raw is not None and raw9 is not None
    w2 = window()
    w2.load_user("u1", raw)
    w2.load_user("u9", raw9)
    assert w2.user_state("u1") == raw
    assert w2.add_action(make_reward_event("e1", "u1", T0), 0) is AddResult.DUPLICATE
    assert w2.add_kpi(make_kpi_event("k1", "u1", event_time_ms=T0 + 4 * GAP + 5), 0) is AddResult.DUPLICATE
    assert w2.open_session("u1") is not None and w2.retained_count == 1 and w2.pending_kpi_count == 1
