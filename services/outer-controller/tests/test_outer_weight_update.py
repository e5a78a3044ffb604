from __future__ import annotations

import math
import random

import pytest

from rewardloop_common.events import SessionKpi, SessionRecord, SessionStep
from rewardloop_common.weights import BUILTIN_WEIGHTS, Weights
from rewardloop_common.weights_store import WeightsStore
from rewardloop_outer.business_reward import business_reward
from rewardloop_outer.weight_update import (
    WeightUpdater,
    compute_update,
    pearson,
    session_features,
)


def make_session(
    i: int,
    *,
    dwell: float = 5.0,
    clicked: bool = True,
    skipped: bool = False,
    rel: float = 0.5,
    revenue: float = 0.0,
    segment: str = "default",
    n: int = 3,
) -> SessionRecord:
    steps = [
        SessionStep(
            event_id=f"e{i}-{j}",
            item_id="i",
            position=j,
            event_time_ms=1000 + j,
            clicked=clicked,
            dwell_seconds=dwell,
            skipped=skipped,
            predicted_relevance=rel,
            behavior_propensity=0.5,
            reward=1.0,
            weights_version=0,
            return_=1.0,
        )
        for j in range(n)
    ]
    return SessionRecord(
        session_key=f"u{i}:1000",
        user_id=f"u{i}",
        segment=segment,
        start_ms=1000,
        end_ms=1000 + n,
        closed_at_ms=5000,
        n_steps=n,
        gamma=0.99,
        steps=steps,
        discounted_return=1.0,
        kpi=SessionKpi(revenue=revenue, purchases=int(revenue > 0)),
        business_reward=business_reward(revenue, 0, 0),
        weights_versions=[0],
    )


def dwell_correlated_batch(n: int, seed: int = 7) -> list[SessionRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        dwell = rng.uniform(0, 60)
        revenue = dwell * 2 + rng.uniform(0, 5)  # purchases follow dwell
        out.append(
            make_session(i, dwell=dwell, clicked=rng.random() < 0.5, rel=rng.random(), revenue=revenue)
        )
    return out


def test_pearson() -> None:
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) == 0.0
    assert pearson([1, 2, 3], [5, 5, 5]) == 0.0
    assert pearson([1], [1]) == 0.0
    with pytest.raises(ValueError):
        pearson([1, 2], [1])


def test_session_features() -> None:
    rec = make_session(0, dwell=math.e - 1, clicked=True, skipped=True, rel=0.25)
    f = session_features(rec)
    assert (f.click, f.skip, f.relevance) == (1.0, 1.0, 0.25)
    assert f.dwell == pytest.approx(1.0)


def test_dwell_correlated_purchases_raise_dwell_weight() -> None:
    up = compute_update(BUILTIN_WEIGHTS, dwell_correlated_batch(200), learning_rate=0.1, max_step=0.1)
    assert up.correlations["dwell"] > 0.8
    assert up.new.dwell > BUILTIN_WEIGHTS.dwell
    assert up.new.dwell == pytest.approx(BUILTIN_WEIGHTS.dwell + 0.1 * up.correlations["dwell"])
    assert abs(up.delta["click"]) < 0.05 and up.should_push
    assert "batch of 200 sessions" in up.reason() and "dwell=+0." in up.reason()


def test_step_is_capped_and_bounds_hold() -> None:
    batch = dwell_correlated_batch(50)
    up = compute_update(BUILTIN_WEIGHTS, batch, learning_rate=10.0, max_step=0.05)
    assert all(abs(d) <= 0.05 + 1e-12 for d in up.delta.values())
    at_bound = Weights(click=0.0, dwell=5.0, skip=-5.0, relevance=5.0)
    up = compute_update(at_bound, batch, learning_rate=10.0, max_step=3.0)
    assert up.new.dwell == 5.0  # clipped at the upper bound
    assert 0.0 <= up.new.click <= 5.0 and -5.0 <= up.new.skip <= 0.0


def test_skip_correlated_with_loss_makes_skip_more_negative() -> None:
    batch = [make_session(i, skipped=i % 2 == 0, revenue=0.0 if i % 2 == 0 else 20.0) for i in range(20)]
    up = compute_update(BUILTIN_WEIGHTS, batch, 0.1, 0.1)
    assert up.correlations["skip"] == pytest.approx(-1.0)
    assert up.new.skip == pytest.approx(BUILTIN_WEIGHTS.skip - 0.1)


def test_zero_variance_means_no_push(store: WeightsStore) -> None:
    updater = WeightUpdater(store, batch_sessions=5, learning_rate=0.1, max_step=0.1)
    for i in range(5):
        result = updater.add(make_session(i, revenue=10.0))  # identical sessions: no variance
    assert result is not None
    update, doc = result
    assert doc is None and update.max_abs_delta == 0.0
    assert store.get_stored("default") is None and updater.pending("default") == 0


def test_updater_pushes_from_current_redis_weights(store: WeightsStore) -> None:
    admin = Weights(click=2.0, dwell=1.0, skip=-1.0, relevance=0.5)
    store.push("default", admin, source="gateway", reason="admin change")
    updater = WeightUpdater(store, batch_sessions=40, learning_rate=0.1, max_step=0.1)
    results = [updater.add(s) for s in dwell_correlated_batch(40)]
    assert all(r is None for r in results[:-1])
    update, doc = results[-1]  # type: ignore[misc]
    assert doc is not None and doc.version == 2 and doc.source == "outer-controller"
    assert update.old == admin  # started from the admin's weights, not the built-ins
    assert doc.weights.dwell > admin.dwell
    assert doc.reason.startswith("batch of 40 sessions")
    assert [d.source for d in store.history("default", 5)] == ["outer-controller", "gateway"]


def test_updater_batches_per_segment(store: WeightsStore) -> None:
    updater = WeightUpdater(store, batch_sessions=10, learning_rate=0.1, max_step=0.1)
    for s in dwell_correlated_batch(9):
        updater.add(s)
    for s in dwell_correlated_batch(10, seed=3):
        s2 = s.model_copy(update={"segment": "premium"})
        out = updater.add(s2)
    assert out is not None and out[1] is not None and out[1].segment == "premium"
    assert updater.pending("default") == 9
    assert store.get_stored("default") is None
