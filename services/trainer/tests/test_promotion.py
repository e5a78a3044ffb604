"""promotion.evaluate_candidate on a hand-made two-action bandit.

Behaviour: uniform over actions {0, 1}; action 0 always pays 1, action 1 pays 0; 100 logged decisions of
each, so the behaviour's value is 0.5. The reward model is exact (q̂(0) = 1, q̂(1) = 0), so every DR term
equals v_target = π(0): DR = π(0) with a zero-width interval, and SNIPS = π(0) too (weights 2π(0), 2π(1)).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from rewardloop_trainer.promotion import evaluate_candidate, mean_kl

N = 100
ACTIONS = np.array([0] * N + [1] * N)
REWARDS = (ACTIONS == 0).astype(float)
Q_LOGGED = REWARDS.copy()
BEHAVIOUR = np.array([0.5, 0.5])
KL_MAX = 0.5


def kl_to_uniform(p0: float) -> float:
    return p0 * math.log(p0 / 0.5) + (1 - p0) * math.log((1 - p0) / 0.5)


def evaluate(p0: float, **kw: object):  # type: ignore[no-untyped-def]
    pi = np.array([p0, 1.0 - p0])
    kl = mean_kl(np.log(pi)[None, :], np.log(BEHAVIOUR)[None, :])
    return evaluate_candidate(
        REWARDS, pi[ACTIONS], BEHAVIOUR[ACTIONS], Q_LOGGED, np.full(2 * N, p0), kl=kl, kl_max=KL_MAX, **kw
    )


def test_a_better_close_candidate_is_promoted() -> None:
    ev = evaluate(0.9)  # KL = 0.9 ln 1.8 + 0.1 ln 0.2 = 0.368 <= 0.5
    assert ev.kl == pytest.approx(kl_to_uniform(0.9)) and ev.kl == pytest.approx(0.3681, abs=1e-4)
    assert ev.dr.value == pytest.approx(0.9) and ev.dr.lower == pytest.approx(0.9)
    assert ev.snips.value == pytest.approx(0.9)  # 100·1.8 / (100·1.8 + 100·0.2)
    assert ev.decision.behaviour_value == pytest.approx(0.5)  # defaults to the logged mean reward
    assert ev.promote and ev.decision.decision == "promoted"


def test_a_worse_candidate_is_blocked_by_ope() -> None:
    ev = evaluate(0.1)  # the same KL as 0.9, but DR = 0.1 < 0.5
    assert ev.kl == pytest.approx(kl_to_uniform(0.9))
    assert ev.dr.value == pytest.approx(0.1)
    assert not ev.promote and ev.decision.decision == "blocked_ope"


def test_a_better_but_far_candidate_is_blocked_by_kl() -> None:
    ev = evaluate(0.99)  # DR = 0.99, but KL = 0.99 ln 1.98 + 0.01 ln 0.02 = 0.637 > 0.5
    assert ev.dr.value == pytest.approx(0.99)
    assert ev.kl == pytest.approx(0.6371, abs=1e-4)
    assert not ev.promote and ev.decision.decision == "blocked_kl"


def test_a_higher_behaviour_value_blocks_and_snips_can_gate() -> None:
    assert evaluate(0.9, behaviour_value=0.95).decision.decision == "blocked_ope"
    assert evaluate(0.9, gate_on="snips").decision.estimate.estimator == "snips"


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="kl_max"):
        evaluate_candidate(REWARDS, REWARDS, REWARDS + 0.5, Q_LOGGED, Q_LOGGED, kl=0.1, kl_max=0.0)
    with pytest.raises(ValueError, match="normalised"):
        mean_kl(np.log([[0.5, 0.6]]), np.log([[0.5, 0.5]]))
    with pytest.raises(ValueError, match="non-empty"):
        mean_kl(np.zeros((1, 2)), np.zeros((1, 3)))
    # a candidate that never takes an action contributes 0·log 0 = 0 for it
    assert mean_kl(np.array([[0.0, -np.inf]]), np.log([[0.5, 0.5]])) == pytest.approx(math.log(2.0))
