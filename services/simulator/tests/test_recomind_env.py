"""RecoMindEnv (synthetic world, grounded=False): contract shapes, determinism, causes, behaviour."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields

import numpy as np
import pytest

from rewardloop_sim.recomind import EnvConfig, RecoMindEnv, SessionOutcome, StepOutcome

Policy = Callable[[RecoMindEnv, int, np.ndarray], np.ndarray]


def first_k(env: RecoMindEnv, user: int, cands: np.ndarray) -> np.ndarray:
    return cands[: env.config.slate_size]


def run(
    env: RecoMindEnv, policy: Policy, n_sessions: int, seed: int = 0
) -> list[tuple[list[StepOutcome], SessionOutcome]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_sessions):
        user = int(rng.integers(env.n_users))
        session = env.start_session(user)
        steps = []
        while not session.done:
            steps.append(env.step(session, policy(env, user, env.candidates(user))))
        out.append((steps, env.end_session(session)))
    return out


def fingerprint(results: list[tuple[list[StepOutcome], SessionOutcome]]) -> list[tuple[object, ...]]:
    return [
        (
            tuple(int(i) for s in steps for i in s.items),
            tuple(bool(c) for s in steps for c in s.clicks),
            tuple(round(float(d), 9) for s in steps for d in s.dwell_seconds),
            outcome.purchased,
            outcome.returned_next_day,
            round(outcome.business_reward, 9),
            tuple(outcome.cause_steps.tolist()),
        )
        for steps, outcome in results
    ]


def test_contract_fields() -> None:
    assert {f.name for f in fields(StepOutcome)} >= {
        "items", "clicks", "dwell_seconds", "skips", "true_relevance", "done",
    }  # fmt: skip
    assert {f.name for f in fields(SessionOutcome)} >= {
        "n_steps", "purchased", "revenue", "margin", "returned_next_day", "business_reward",
        "cause_steps", "step_causal_weight",
    }  # fmt: skip
    cfg = EnvConfig()
    assert (cfg.n_users, cfg.slate_size, cfg.n_candidates, cfg.max_steps, cfg.session_gap_minutes) == (
        1000, 10, 100, 50, 30,
    )  # fmt: skip


def test_seeded_and_deterministic() -> None:
    a = fingerprint(run(RecoMindEnv(3, EnvConfig(n_users=50), grounded=False), first_k, 40))
    b = fingerprint(run(RecoMindEnv(3, EnvConfig(n_users=50), grounded=False), first_k, 40))
    c = fingerprint(run(RecoMindEnv(4, EnvConfig(n_users=50), grounded=False), first_k, 40))
    assert a == b
    assert a != c


def test_shapes_and_ranges() -> None:
    cfg = EnvConfig(n_users=20, slate_size=6, n_candidates=30, n_items=300, n_categories=5, embedding_dim=8)
    env = RecoMindEnv(1, cfg, grounded=False)
    cat = env.catalogue
    assert cat.n_items == 300
    assert cat.embedding.shape == (300, 8)
    assert cat.features().shape == (300, cat.feature_dim) == (300, 8 + 5 + 2)
    assert ((cat.clickbait >= 0) & (cat.clickbait <= 1)).all()
    assert (cat.price > 0).all() and (cat.margin > 0).all() and (cat.margin < cat.price).all()
    assert env.user_context(0).shape == (env.user_context_dim,)
    cands = env.candidates(3)
    assert cands.shape == (30,) and len(set(cands.tolist())) == 30
    assert cands.min() >= 0 and cands.max() < 300
    ideal = env.ideal_slate(3, cands, k=6)
    rel = env.true_relevance(3, cands)
    assert set(ideal.tolist()) <= set(cands.tolist())
    assert np.allclose(np.sort(rel)[::-1][:6], env.true_relevance(3, ideal))
    session = env.start_session(3)
    o = env.step(session, cands[:6])
    assert o.items.shape == o.clicks.shape == o.dwell_seconds.shape == o.skips.shape == (6,)
    assert o.true_relevance.shape == (6,) and ((o.true_relevance >= 0) & (o.true_relevance <= 1)).all()
    assert o.clicks.dtype == bool and o.skips.dtype == bool
    assert not (o.clicks & o.skips).any()
    assert ((o.dwell_seconds > 0) == o.clicks).all()
    assert session.step == 1 and session.history == [o]


def test_bad_input_is_refused() -> None:
    env = RecoMindEnv(0, EnvConfig(n_users=5, n_items=200), grounded=False)
    session = env.start_session(0)
    with pytest.raises(ValueError, match="slate must be"):
        env.step(session, np.arange(9))
    with pytest.raises(ValueError, match="integer"):
        env.step(session, np.zeros(10))
    with pytest.raises(ValueError, match=r"lie in \[0, 200\)"):
        env.step(session, np.arange(195, 205))
    with pytest.raises(ValueError, match="user must lie"):
        env.start_session(5)
    with pytest.raises(ValueError, match="n_candidates"):
        EnvConfig(n_items=50)
    while not session.done:
        env.step(session, env.candidates(0)[:10])
    with pytest.raises(ValueError, match="done"):
        env.step(session, env.candidates(0)[:10])


def test_causes_are_consistent() -> None:
    env = RecoMindEnv(5, EnvConfig(n_users=200), grounded=False)
    results = run(env, lambda e, u, c: e.ideal_slate(u, c, 10), 600)
    purchases = returns = 0
    for steps, out in results:
        assert out.n_steps == len(steps) and steps[-1].done and not any(s.done for s in steps[:-1])
        assert out.step_causal_weight.shape == (out.n_steps,)
        assert (out.step_causal_weight >= 0).all()
        assert np.array_equal(out.cause_steps, np.flatnonzero(out.step_causal_weight > 0))
        if out.business_reward > 0:
            assert out.step_causal_weight.sum() == pytest.approx(1.0)
            assert out.cause_steps.size >= 1
        else:
            assert not out.step_causal_weight.any() and out.cause_steps.size == 0
        if out.purchased:
            purchases += 1
            assert out.cause_steps.size >= 1 and out.revenue > 0 and out.margin > 0
            assert out.purchased_item >= 0
            clicked = {int(i) for s in steps for i in s.items[s.clicks]}
            assert out.purchased_item in clicked  # one buys what one clicked
        else:
            assert out.revenue == out.margin == 0.0 and out.purchased_item == -1
        returns += out.returned_next_day
        expected = out.margin + env.config.retention_value * out.returned_next_day
        assert out.business_reward == pytest.approx(expected)
    # sparse but present (measured at this seed: 4.2 % purchases, 28.5 % returns for the relevance oracle)
    assert 0.02 < purchases / len(results) < 0.3
    assert 0.1 < returns / len(results) < 0.7


def _bait_policy(sign: float) -> Policy:
    def policy(env: RecoMindEnv, user: int, cands: np.ndarray) -> np.ndarray:
        score = env.true_relevance(user, cands) + sign * env.catalogue.clickbait[cands]
        return cands[np.argsort(-score, kind="stable")[: env.config.slate_size]]

    return policy


def test_clickbait_raises_clicks_and_lowers_purchases_and_returns() -> None:
    cfg = EnvConfig(n_users=300)
    bait = run(RecoMindEnv(11, cfg, grounded=False), _bait_policy(+1.0), 800, seed=1)
    honest = run(RecoMindEnv(11, cfg, grounded=False), _bait_policy(-1.0), 800, seed=1)

    def ctr(results: list[tuple[list[StepOutcome], SessionOutcome]]) -> float:
        return float(np.mean([s.clicks.mean() for steps, _ in results for s in steps]))

    def rate(results: list[tuple[list[StepOutcome], SessionOutcome]], attr: str) -> float:
        return float(np.mean([getattr(out, attr) for _, out in results]))

    # measured at these seeds: CTR 0.40 vs 0.30, purchases 0.1 % vs 21.5 %, returns 0 % vs 48 %,
    # median dwell of clicked items 13 s vs 22 s
    assert ctr(bait) > ctr(honest) + 0.03
    assert rate(bait, "purchased") < rate(honest, "purchased") - 0.05
    assert rate(bait, "returned_next_day") < rate(honest, "returned_next_day") - 0.2
    bait_dwell = np.concatenate([s.dwell_seconds[s.clicks] for steps, _ in bait for s in steps])
    honest_dwell = np.concatenate([s.dwell_seconds[s.clicks] for steps, _ in honest for s in steps])
    assert np.median(bait_dwell) < 0.7 * np.median(honest_dwell)


def test_dwell_is_bimodal_and_heavy_tailed() -> None:
    env = RecoMindEnv(2, EnvConfig(n_users=100), grounded=False)
    results = run(env, lambda e, u, c: e.ideal_slate(u, c, 10), 300)
    long_form = env.catalogue.long_form
    dwell, is_long = [], []
    for steps, _ in results:
        for s in steps:
            dwell.append(s.dwell_seconds[s.clicks])
            is_long.append(long_form[s.items[s.clicks]])
    d, lf = np.concatenate(dwell), np.concatenate(is_long)
    assert np.median(d[lf]) > 5 * np.median(d[~lf])  # two modes: clips vs long reads
    assert np.quantile(d, 0.99) > 8 * np.median(d)  # heavy right tail


def test_interests_drift_toward_what_is_clicked() -> None:
    env = RecoMindEnv(8, EnvConfig(n_users=10), grounded=False)
    user = 0
    cat = env.catalogue
    # the category the user likes least (mean true relevance), then serve only that category
    rel = env.true_relevance(user, np.arange(cat.n_items))
    by_cat = np.array([rel[cat.category == c].mean() for c in range(cat.n_categories)])
    target = int(np.argmin(by_cat))
    pool = np.flatnonzero(cat.category == target)
    context_before = env.user_context(user)
    rng = np.random.default_rng(0)
    for _ in range(30):
        session = env.start_session(user)
        while not session.done:
            env.step(session, rng.choice(pool, size=10, replace=False))
        env.end_session(session)
    after = env.true_relevance(user, pool).mean()
    assert after > by_cat[target] + 0.1
    context_after = env.user_context(user)
    share = slice(cat.embedding_dim, cat.embedding_dim + cat.n_categories)
    assert context_after[share][target] > context_before[share][target] + 0.3


def test_click_probability_is_what_step_samples() -> None:
    env = RecoMindEnv(9, EnvConfig(n_users=5, drift_rate=0.0), grounded=False)  # no drift: a fixed target
    user = 2
    slate = env.candidates(user)[:10]
    expected = np.array([env.click_probability(user, slate[p : p + 1], position=p)[0] for p in range(10)])
    n = 4000
    clicks = np.zeros(10)
    for _ in range(n):
        session = env.start_session(user)
        clicks += env.step(session, slate).clicks  # the first step of a session: step index 0
    se = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(clicks / n - expected) < 4 * se + 1e-3)
