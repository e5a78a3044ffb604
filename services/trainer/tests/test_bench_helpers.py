"""The learning benchmark's helpers: convergence, hull, credit scoring, bootstrap, DRL-PUT ablation,
section 5's KL-bound choice."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # the bench runs as a script

import bench_learning as bl  # noqa: E402
import drlput_ablation as da  # noqa: E402

from rewardloop_outer.tuner import Policy as TunerPolicy  # noqa: E402
from rewardloop_outer.tuner import reinforce_gradient  # noqa: E402
from rewardloop_trainer.ope import Estimate  # noqa: E402

# ------------------------------------------------------------------------------ iterations_to_converge


def test_converge_on_a_step_curve() -> None:
    # moving averages (window 5) of 10 zeros then 10 ones: 0 ... 0, 0.2, 0.4, 0.6, 0.8, 1 ... 1;
    # 95 % of the way from 0 to 1 is first reached by the MA ending at index 14 -> 15 iterations
    curve = [0.0] * 10 + [1.0] * 10
    assert bl.iterations_to_converge(curve) == 15


def test_converge_on_a_falling_curve_and_edge_cases() -> None:
    assert bl.iterations_to_converge([1.0] * 10 + [0.0] * 10) == 15  # decreasing: the same rule, mirrored
    assert bl.iterations_to_converge([0.0, 1.0, 2.0]) == 3  # shorter than the window: the whole run
    assert bl.iterations_to_converge([2.0] * 12) == 5  # flat: converged at the first full window


# ------------------------------------------------------------------------------ upper_hull_above


def test_hull_counts_points_above_the_concave_envelope() -> None:
    ws = np.array([[0.0, 0.0], [1.0, 2.0], [2.0, 0.0]])  # hull: (0,0) -> (1,2) -> (2,0)
    layered = np.array(
        [
            [0.5, 1.5],  # above the hull line y = 2x (1.0 at x=0.5)
            [0.5, 0.9],  # below
            [1.5, 1.0],  # on the segment (1,2)-(2,0): y = 1.0 there -> not strictly above
            [3.0, 9.0],  # outside the weighted sum's x range: not counted
        ]
    )
    assert bl.upper_hull_above(ws, layered) == 1


def test_hull_ignores_points_under_the_convex_hull_in_a_dip() -> None:
    # a dip in the weighted-sum points (0.2 at x=1) is bridged by the hull (0,1)-(2,1): a layered
    # point at (1, 0.9) lies below the hull, even though it is above the dip
    ws = np.array([[0.0, 1.0], [1.0, 0.2], [2.0, 1.0]])
    assert bl.upper_hull_above(ws, np.array([[1.0, 0.9]])) == 0
    assert bl.upper_hull_above(ws, np.array([[1.0, 1.1]])) == 1


# ------------------------------------------------------------------------------ credit scoring


def _traj(n: int, causal: list[float], dwell: list[float]) -> bl.Traj:
    tr = bl.Traj(user=0, causal=np.array(causal))
    for t in range(n):
        tr.ctx.append(np.zeros(1))
        d = np.zeros(bl.K)
        d[0] = dwell[t]
        tr.dwell.append(d)
    return tr


def test_credit_scores_ties_and_l1() -> None:
    tr = _traj(4, [0.0, 1.0, 0.0, 0.0], [0.0] * 4)
    hits, l1 = bl.credit_scores([np.full(4, 0.25), np.array([0.1, 0.7, 0.1, 0.1])], [tr, tr])
    assert hits.tolist() == [0.25, 1.0]  # uniform: a random pick among 4 tied steps
    assert l1 == pytest.approx([1.5, 0.6])


def test_dwell_shares_follow_log_dwell_and_fall_back_to_uniform() -> None:
    tr = _traj(3, [0, 0, 1], [0.0, math.e - 1, math.e**3 - 1])  # ln(1+dwell) = 0, 1, 3
    assert bl.dwell_shares(tr) == pytest.approx([0.0, 0.25, 0.75])
    assert bl.dwell_shares(_traj(2, [1, 0], [0.0, 0.0])) == pytest.approx([0.5, 0.5])


def test_bootstrap_ci_brackets_the_mean_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(0)
    small = (rng.random(50) < 0.3).astype(float)
    large = (rng.random(5000) < 0.3).astype(float)
    lo_s, hi_s = bl.bootstrap_ci(small)
    lo_l, hi_l = bl.bootstrap_ci(large)
    assert lo_s <= small.mean() <= hi_s and lo_l <= large.mean() <= hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 5  # ~ 1/sqrt(n): 10x narrower for 100x the sessions
    # binomial sd of the mean at n = 5000, p = 0.3: 0.0065 -> a 95 % interval ~ ±0.0127
    assert hi_l - lo_l == pytest.approx(2 * 1.96 * math.sqrt(0.3 * 0.7 / 5000), rel=0.15)
    assert bl.bootstrap_ci(np.ones(7)) == (1.0, 1.0)
    with pytest.raises(ValueError):
        bl.bootstrap_ci(np.array([]))


# ------------------------------------------------------------------------------ DRL-PUT ablation


def test_level_masses_and_entropy() -> None:
    m = da.level_masses(0.5, 0.1, 10)
    assert m.sum() == pytest.approx(1.0) and m.argmax() in (4, 5)
    assert da.normalised_entropy(np.full((3, 10), 0.1)) == pytest.approx(1.0)
    onehot = np.zeros((3, 10))
    onehot[:, 2] = 1.0
    assert da.normalised_entropy(onehot) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("kind", ["gaussian", "uniform"])
def test_discrete_exploration_is_a_distribution(kind: str) -> None:
    ex = da.Exploration(kind, discrete=True, levels=4, sigma=0.3)
    centre = np.array([1, 2, 0]) / 3
    grid = [np.array(a, dtype=float) / 3 for a in np.ndindex(4, 4, 4)]
    assert sum(ex.prob(x, centre) for x in grid) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    xs = [ex.sample(centre, rng) for _ in range(2000)]
    freq = sum(np.allclose(x, centre) for x in xs) / len(xs)
    assert freq == pytest.approx(ex.prob(centre, centre), abs=0.03)


def test_weights_stay_in_the_tuner_ranges() -> None:
    assert da.to_weights(np.array([0.0, 0.0, 0.0])) == pytest.approx((0.2, 0.1, 0.2))
    assert da.to_weights(np.array([1.5, -1.0, 1.0])) == pytest.approx((2.0, 0.1, 2.0))  # clipped


def test_grouped_step_is_the_tuners_gradient() -> None:
    rng = np.random.default_rng(1)
    start = da.start_action(10)
    pol = da.initial_policy("grouped", da.AblationConfig())
    xs = [pol.sample(rng) for _ in range(20)]
    mus = np.array([pol.prob(x) for x in xs])
    r = rng.random(20)
    new = pol.stepped(xs, mus, r)
    acts = [list(da.levels_of(x, 10)) for x in xs]
    expected = TunerPolicy.centred(da.levels_of(start, 10), 10).theta + 0.5 * reinforce_gradient(
        TunerPolicy.centred(da.levels_of(start, 10), 10), acts, mus, r
    )
    assert isinstance(new, da.FactorisedPolicy)
    np.testing.assert_allclose(new.policy.theta, expected)


def test_joint_softmax_moves_towards_the_rewarded_action() -> None:
    pol = da.JointSoftmaxPolicy.centred(np.array([0.0, 0.0, 0.0]), 3, lr=1.0, start_prob=0.5)
    good = np.array([1.0, 1.0, 1.0])
    xs = [good, np.zeros(3), np.zeros(3)]
    mus = np.array([pol.prob(x) for x in xs])
    new = pol.stepped(xs, mus, np.array([1.0, 0.0, 0.0]))
    assert new.prob(good) > pol.prob(good)
    assert new.kl_to(pol) > 0 and pol.kl_to(pol) == 0


def test_gaussian_step_is_the_weighted_mean_shift() -> None:
    pol = da.GaussianPolicy(np.full(3, 0.5), 0.1, 10, lr=1.0)
    xs = [np.array([0.6, 0.5, 0.5]), np.array([0.4, 0.5, 0.5])]
    mus = np.array([pol.prob(x) for x in xs])  # on-policy: w = 1
    new = pol.stepped(xs, mus, np.array([1.0, 0.0]))
    # A = (r - 0.5)/0.5 = ±1: shift = (0.1·1 + (-0.1)·(-1))/2 = 0.1 along the first axis
    np.testing.assert_allclose(new.mean, [0.6, 0.5, 0.5], atol=1e-5)
    assert new.kl_to(pol) == pytest.approx(0.1**2 / (2 * 0.01), rel=1e-4)


def test_critic_recovers_a_quadratic() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((200, 3))
    y = 1.0 + x[:, 0] - 2.0 * x[:, 1] ** 2 + 0.5 * x[:, 0] * x[:, 2]
    q = da.fit_critic(x, y, l2=1e-6)
    np.testing.assert_allclose(q(x), y, atol=1e-4)


def test_run_variant_is_deterministic_and_reports_the_gates() -> None:
    world = bl.make_world(grounded=False)
    cfg = da.AblationConfig(rounds=2, batch=8, eval_sessions=10)
    a = da.run_variant(world.env, "continuous", "uniform", "actor-critic", 3, cfg)
    b = da.run_variant(world.env, "continuous", "uniform", "actor-critic", 3, cfg)
    assert a.curve == b.curve and np.array_equal(a.mode, b.mode)
    assert a.diversity == (a.entropy >= da.MIN_ENTROPY and a.distinct >= 2)
    assert a.relative_gain == (a.v_snips > a.v_behaviour)
    assert a.would_push == (a.moved and a.diversity and a.relative_gain)
    with pytest.raises(ValueError, match="action space"):
        da.run_variant(world.env, "hexagonal", "uniform", "reinforce", 0, cfg)


# ---------------------------------------------------------------- slate_phi (section 5's DR model)


def test_slate_phi_is_the_position_discounted_slate_mean_and_its_cross_with_the_context() -> None:
    ctx = np.array([[1.0, 2.0]])
    feats = np.arange(12, dtype=float).reshape(1, 4, 3)  # 4 candidates, 3 item features
    slates = np.array([[[2, 0], [1, 3]]])  # 2 slates of K = 2
    phi = bl.slate_phi(ctx, feats, slates)
    assert phi.shape == (1, 2, 1 + 2 + 3 + 6)
    d = 1.0 / np.log2([2.0, 3.0])
    m = (d[0] * feats[0, 2] + d[1] * feats[0, 0]) / d.sum()
    np.testing.assert_allclose(phi[0, 0], np.concatenate([[1.0], ctx[0], m, np.outer(ctx[0], m).ravel()]))


# ---------------------------------------------------------------- choose_kl_bound (section 5's KL bound)


def _case(lower: float, kl: float, better: bool) -> bl.GateCase:
    # DR's interval only matters through its lower bound; the behaviour's held-out value is 1.0 throughout
    est = Estimate("dr", lower + 0.5, lower, lower + 1.0, 100, 50.0)
    return bl.GateCase(est, kl, 1.0, better)


def test_choose_kl_bound_counts_right_decisions_per_bound() -> None:
    cases = [
        _case(1.2, 0.3, True),  # a close, better candidate: needs a bound >= 0.3
        _case(1.5, 3.0, False),  # a far, worse one that OPE over-rates: only a bound < 3 blocks it
        _case(0.8, 0.1, False),  # OPE blocks it whatever the bound: right everywhere
        _case(1.3, 2.0, True),  # better, KL exactly 2: a bound of 2 lets it through (KL <= bound)
    ]
    chosen, right = bl.choose_kl_bound(cases)
    assert right == {0.25: 2, 0.5: 3, 1.0: 3, 2.0: 4, 4.0: 3, 8.0: 3, math.inf: 3}
    assert chosen == 2.0
    assert cases[3].decision(2.0).decision == "promoted"
    assert cases[1].decision(2.0).decision == "blocked_kl"
    assert cases[2].decision(math.inf).decision == "blocked_ope"


def test_choose_kl_bound_breaks_ties_towards_the_smallest_bound() -> None:
    cases = [_case(1.2, 0.3, True), _case(0.8, 0.1, False)]  # every bound >= 0.5 gets both right
    chosen, right = bl.choose_kl_bound(
        cases, grid=(math.inf, 8.0, 0.5, 2.0, 0.25)
    )  # grid order is irrelevant
    assert right == {math.inf: 2, 8.0: 2, 0.5: 2, 2.0: 2, 0.25: 1}
    assert chosen == 0.5
    # no bound wins only when it is strictly better: a far, better candidate
    chosen, _ = bl.choose_kl_bound([*cases, _case(1.4, 20.0, True)])
    assert chosen == math.inf
    with pytest.raises(ValueError):
        bl.choose_kl_bound([])
