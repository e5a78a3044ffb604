"""The trade-off points behind the operator's panel: rolling means per (weights version, action), the
current point, the Pareto frontier and bounded labels."""

from __future__ import annotations

import random
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


def _samples(m: OuterMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in m.registry.collect()
        if fam.name.startswith("rewardloop_outer_tradeoff")
        for s in fam.samples
    }


def test_add_points_is_add_point_in_order() -> None:
    """The native close hands its points over in bulk (``add_points``): the same windows, current point,
    evictions and gauges as one ``add_point`` per session -- runs of one key (the common case), key
    changes, a newer version becoming current and points evicted mid-batch included."""
    rng = random.Random(3)
    points: list[tuple[int, int | None, float, float, float]] = []
    version = 1
    while len(points) < 400:
        version = max(1, version + rng.choice([-1, 0, 0, 1]))
        action = None if rng.random() < 0.6 else rng.randrange(8)
        for _ in range(rng.randint(1, 30)):
            points.append((version, action, float(rng.randint(0, 4)), rng.random() * 60, rng.random()))
    one, bulk = OuterMetrics(CollectorRegistry()), OuterMetrics(CollectorRegistry())
    t1 = TradeoffTracker(one, window=7, max_points=5, pareto_interval_s=0.0)
    t2 = TradeoffTracker(bulk, window=7, max_points=5, pareto_interval_s=0.0)
    for p in points:
        t1.add_point(*p)
    t2.add_points(points[:150])
    t2.add_points(points[150:])
    assert list(t2.points.items()) == list(t1.points.items()) and len(t1.points) == 5
    assert (t2.current, t2._newest_version) == (t1.current, t1._newest_version)
    assert _samples(bulk) == _samples(one) and len(_samples(one)) > 20
