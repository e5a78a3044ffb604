"""Validation statistics on hand-computed cases; the full MovieLens validation runs when the data is there."""

from __future__ import annotations

import numpy as np
import pytest

from rewardloop_sim.recomind.datasets import DatasetUnavailable, MovieLens100k, movielens_100k
from rewardloop_sim.recomind.grounding import grounded_preferences
from rewardloop_sim.recomind.validation import (
    auc,
    calibrate_sessions,
    ks_two_sample,
    real_sessions,
    temporal_split,
    validate,
)


def _ml(user: list[int], item: list[int], rating: list[float], ts: list[int]) -> MovieLens100k:
    return MovieLens100k(
        user_id=np.array(user),
        item_id=np.array(item),
        rating=np.array(rating, dtype=float),
        timestamp=np.array(ts),
        item_genres=np.zeros((max(item) + 1, 1), dtype=bool),
        genre_names=("g",),
        item_title=("",) * (max(item) + 1),
        n_users=max(user) + 1,
        n_items=max(item) + 1,
    )


def test_auc_hand_computed() -> None:
    assert auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auc(np.array([1.0]), np.array([2.0])) == 0.0
    # pairs: (2 vs 1) win, (2 vs 2) tie, (2 vs 3) loss, (4 vs *) 3 wins -> (1 + 0.5 + 3) / 6
    assert auc(np.array([2.0, 4.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(4.5 / 6)
    with pytest.raises(ValueError):
        auc(np.array([]), np.array([1.0]))


def test_ks_hand_computed() -> None:
    d, p = ks_two_sample(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0]))
    assert d == 0.0 and p == 1.0
    d, _ = ks_two_sample(np.array([1.0, 2.0]), np.array([3.0, 4.0]))
    assert d == 1.0
    # F_a(1) = 1/2, F_b(1) = 0 ... the largest gap is at x = 1 or 2: |1/2 - 0| vs |1 - 1/2|
    d, _ = ks_two_sample(np.array([1.0, 2.0]), np.array([2.0, 3.0]))
    assert d == 0.5
    big_a = np.random.default_rng(0).normal(size=2000)
    big_b = np.random.default_rng(1).normal(size=2000)
    assert ks_two_sample(big_a, big_b)[1] > 0.01  # same distribution: no evidence against
    assert ks_two_sample(big_a, big_b + 0.5)[1] < 1e-6


def test_temporal_split_holds_out_each_users_latest_ratings() -> None:
    ml = _ml([0] * 5 + [1] * 10, list(range(15)), [4.0] * 15, [50, 10, 40, 20, 30] + list(range(100, 110)))
    test = temporal_split(ml, 0.2)
    assert np.flatnonzero(test).tolist() == [0, 13, 14]  # user 0: its latest (t=50); user 1: its last two


def test_real_sessions_split_on_the_gap() -> None:
    minute = 60
    ml = _ml(
        [0, 0, 0, 0, 1, 1],
        [0, 1, 2, 3, 0, 1],
        [5, 1, 4, 2, 3, 4],
        [0, 10 * minute, 45 * minute, 46 * minute, 0, 31 * minute],
    )
    lengths, liked = real_sessions(ml, 30.0)
    assert lengths.tolist() == [2, 2, 1, 1]
    assert liked.tolist() == [0.5, 0.5, 0.0, 1.0]


@pytest.fixture(scope="module")
def movielens() -> MovieLens100k:
    try:
        return movielens_100k()
    except DatasetUnavailable as exc:
        pytest.skip(f"MovieLens-100k unavailable: {exc}")


def test_validation_on_movielens(movielens: MovieLens100k) -> None:
    report = validate(seed=0, n_sessions=300, calibrate=False)
    # the fitted preference model must beat chance clearly on held-out logs (measured 0.879)
    assert report.auc_relevance > 0.8
    assert report.auc_like_vs_dislike > 0.6
    assert 0 <= report.ks_session_length <= 1 and 0 <= report.ks_engagement <= 1
    assert report.real_session_length.n > 1000 and report.sim_session_length.n > 100
    assert "click-model AUC" in report.table()


def test_calibration_prefers_the_plausible_session_shape(movielens: MovieLens100k) -> None:
    prefs = grounded_preferences(0, ml=movielens)
    # continue_bias = -6 ends nearly every session after one slate: far from MovieLens' rating bursts
    grid = {"continue_bias": (-6.0, 1.5)}
    params, objective = calibrate_sessions(prefs, movielens, np.arange(0, 943, 2), n_sessions=200, grid=grid)
    assert params == {"continue_bias": 1.5}
    assert 0 < objective < 2
