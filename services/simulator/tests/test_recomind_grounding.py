"""Grounding in MovieLens-100k: the fitted preferences, their cache, and the grounded env. Skips offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rewardloop_sim.recomind import EnvConfig, RecoMindEnv
from rewardloop_sim.recomind.datasets import DatasetUnavailable, MovieLens100k, movielens_100k
from rewardloop_sim.recomind.grounding import GroundedPreferences, grounded_preferences, main_genre


def test_main_genre_is_the_rarest_listed_genre() -> None:
    genres = np.array(
        [[1, 1, 0], [1, 0, 0], [1, 0, 1], [0, 0, 0], [1, 1, 0]],
        dtype=bool,
    )  # counts: 4, 2, 1
    assert main_genre(genres).tolist() == [1, 0, 2, 2, 1]


@pytest.fixture(scope="module")
def movielens() -> MovieLens100k:
    try:
        return movielens_100k()
    except DatasetUnavailable as exc:
        pytest.skip(f"MovieLens-100k unavailable: {exc}")


@pytest.fixture(scope="module")
def prefs(movielens: MovieLens100k) -> GroundedPreferences:
    return grounded_preferences(0, ml=movielens)


def test_preferences_fit_the_log(movielens: MovieLens100k, prefs: GroundedPreferences) -> None:
    assert prefs.user_factors.shape == (943, 16) and prefs.item_factors.shape == (1682, 16)
    logit = prefs.logit(movielens.user_id, movielens.item_id)
    liked = movielens.rating >= 4
    # calibrated: mean P(like) over rated pairs = the liked share (55.4 %)
    assert np.mean(1 / (1 + np.exp(-logit))) == pytest.approx(liked.mean(), abs=1e-3)
    # the fit separates liked from disliked ratings it was trained on
    assert logit[liked].mean() > logit[~liked].mean() + 1.0


def test_preferences_are_cached_and_deterministic(movielens: MovieLens100k, tmp_path: Path) -> None:
    train = np.arange(0, 100_000, 2)
    a = grounded_preferences(3, iterations=20, train=train, cache_dir=tmp_path, ml=movielens)
    assert len(list((tmp_path / "grounding").glob("*.npz"))) == 1
    b = grounded_preferences(
        3, iterations=20, train=train, cache_dir=tmp_path, ml=movielens
    )  # from the cache
    assert np.array_equal(a.user_factors, b.user_factors) and a.calibration == b.calibration
    from rewardloop_sim.recomind.grounding import fit_preferences

    c = fit_preferences(movielens, train, seed=3, iterations=20)  # refit from scratch: identical
    assert np.array_equal(a.item_factors, c.item_factors)


def test_grounded_env_uses_movies_and_genres(movielens: MovieLens100k, prefs: GroundedPreferences) -> None:
    env = RecoMindEnv(0, EnvConfig(n_users=1000), grounded=True)
    cat = env.catalogue
    assert cat.n_items == 1682 and cat.category_names == movielens.genre_names
    assert np.array_equal(cat.category, main_genre(movielens.item_genres))
    assert np.array_equal(cat.embedding, prefs.item_factors)
    # user 5 is MovieLens user 6 (index 5); user 948 is a jittered copy of the same person
    items = np.arange(cat.n_items)
    rel = env.true_relevance(5, items)
    expected = 1 / (1 + np.exp(-prefs.logit(np.full(cat.n_items, 5), items)))
    assert np.allclose(rel, expected)
    copy = env.true_relevance(948, items)
    assert np.corrcoef(rel, copy)[0, 1] > 0.8 and not np.allclose(rel, copy)
    session = env.start_session(5)
    while not session.done:
        env.step(session, env.ideal_slate(5, env.candidates(5), 10))
    out = env.end_session(session)
    assert out.n_steps >= 1 and out.step_causal_weight.shape == (out.n_steps,)
