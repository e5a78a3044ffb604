"""The trade-off points behind the operator's panel: rolling means per (weights version, action), the
current point, the Pareto frontier and bounded labels."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import CollectorRegistry

from rewardloop_common.events import SessionBusiness, SessionRecord
from rewardloop_common.testing import make_session_record, make_session_step
from rewardloop_outer.metrics import OuterMetrics
from rewardloop_outer.tradeoff import TradeoffTracker, pareto_front


def _rec(version: int, clicks: int, dwell: float, value: float) -> SessionRecord:
    steps = [
        make_session_step(
            t, item_id="i", position=t, clicked=t < clicks, dwell_seconds=dwell / 4, weights_version=version
        )
        for t in range(4)
    ]
    return make_session_record(steps, business_reward=value, business=SessionBusiness(value=value), kappa=0.5)


def _get(m: OuterMetrics, name: str, version: str, action: str) -> float | None:
    return m.registry.get_sample_value(name, {"version": version, "action": action})


def test_pareto_front() -> None:
    pts = {
        ("1", "a"): (1.0, 10.0, 0.5),
        ("1", "b"): (2.0, 10.0, 0.5),  # dominates a
        ("1", "c"): (0.5, 30.0, 0.1),  # more dwell: on the front
        ("1", "d"): (2.0, 10.0, 0.5),  # equal to b: neither dominates the other
    }
    assert pareto_front(pts) == {("1", "b"), ("1", "c"), ("1", "d")}
    assert pareto_front({}) == set()


def test_points_current_marker_and_frontier() -> None:
    m = OuterMetrics(CollectorRegistry())
    t = TradeoffTracker(m, window=2, pareto_interval_s=0.0)
    cur = SimpleNamespace(explore_action=None)
    t.add(_rec(1, clicks=1, dwell=8.0, value=0.5), cur)
    t.add(_rec(1, clicks=3, dwell=8.0, value=1.5), cur)
    t.add(_rec(1, clicks=4, dwell=40.0, value=2.0), SimpleNamespace(explore_action=7))
    assert _get(m, "rewardloop_outer_tradeoff_clicks", "1", "current") == 2.0
    assert _get(m, "rewardloop_outer_tradeoff_business_reward", "1", "current") == 1.0
    assert _get(m, "rewardloop_outer_tradeoff_dwell_seconds", "1", "7") == 40.0
    assert _get(m, "rewardloop_outer_tradeoff_current", "1", "current") == 1.0
    # the explored action 7 dominates the current weights' point
    assert _get(m, "rewardloop_outer_tradeoff_pareto", "1", "7") == 1.0
    assert _get(m, "rewardloop_outer_tradeoff_pareto", "1", "current") == 0.0
    # a newer weights version becomes the current point; the window is rolling (2 sessions)
    t.add(_rec(2, clicks=4, dwell=40.0, value=3.0), cur)
    assert _get(m, "rewardloop_outer_tradeoff_current", "1", "current") == 0.0
    assert _get(m, "rewardloop_outer_tradeoff_current", "2", "current") == 1.0
    assert _get(m, "rewardloop_outer_tradeoff_pareto", "2", "current") == 1.0
    assert _get(m, "rewardloop_outer_tradeoff_pareto", "1", "7") == 0.0
    t.add(_rec(1, clicks=0, dwell=0.0, value=0.0), cur)
    assert _get(m, "rewardloop_outer_tradeoff_clicks", "1", "current") == 1.5  # (3 + 0) / 2


def test_labels_stay_bounded() -> None:
    m = OuterMetrics(CollectorRegistry())
    t = TradeoffTracker(m, max_points=3, pareto_interval_s=0.0)
    for a in range(5):
        t.add(_rec(1, clicks=1, dwell=1.0, value=0.1 * a), SimpleNamespace(explore_action=a))
    assert sorted(t.points) == [("1", "2"), ("1", "3"), ("1", "4")] and sorted(t.means) == sorted(t.points)
    assert _get(m, "rewardloop_outer_tradeoff_clicks", "1", "0") is None
    assert _get(m, "rewardloop_outer_tradeoff_pareto", "1", "1") is None


def test_the_frontier_is_recomputed_at_most_once_per_interval() -> None:
    m = OuterMetrics(CollectorRegistry())
    now = [0.0]
    t = TradeoffTracker(m, pareto_interval_s=1.0, clock=lambda: now[0])
    t.add(_rec(1, clicks=1, dwell=1.0, value=0.1), SimpleNamespace(explore_action=1))
    t.add(_rec(1, clicks=2, dwell=2.0, value=0.2), SimpleNamespace(explore_action=2))
    assert _get(m, "rewardloop_outer_tradeoff_pareto", "1", "2") is None  # not yet
    now[0] = 1.0
    t.add(_rec(1, clicks=0, dwell=0.0, value=0.0), SimpleNamespace(explore_action=3))
    assert _get(m, "rewardloop_outer_tradeoff_pareto", "1", "2") == 1.0
    assert _get(m, "rewardloop_outer_tradeoff_pareto", "1", "1") == 0.0
