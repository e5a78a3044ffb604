from __future__ import annotations

import math

import numpy as np
import pytest

from rewardloop_trainer import ope

R = [1.0, 0.0, 1.0, 0.0]
PB = [0.5, 0.5, 0.25, 0.5]
PE = [1.0, 0.5, 0.5, 0.0]  # weights 2, 1, 2, 0


def test_ips_snips_dr_on_a_hand_computed_case() -> None:
    assert ope.ips(R, PE, PB).value == pytest.approx(1.0)
    assert ope.snips(R, PE, PB).value == pytest.approx(4.0 / 5.0)
    dr = ope.doubly_robust(R, PE, PB, q_logged=[0.5] * 4, v_target=[0.6] * 4)
    assert dr.value == pytest.approx((1.6 + 0.1 + 1.6 + 0.6) / 4)
    assert ope.ips(R, PE, PB, cap=1.5).value == pytest.approx(0.75)
    assert ope.ips(R, PE, PB).ess == pytest.approx(25.0 / 9.0)


def test_normal_interval_by_hand() -> None:
    est = ope.ips(R, PE, PB)  # terms 2, 0, 2, 0: sd (ddof 1) = sqrt(4/3)
    half = 1.959963984540054 * math.sqrt(4.0 / 3.0) / 2.0
    assert est.lower == pytest.approx(1.0 - half) and est.upper == pytest.approx(1.0 + half)


def test_dr_with_a_perfect_model_has_no_variance() -> None:
    r = np.array([0.3, 0.7, 0.2])
    est = ope.doubly_robust(r, [0.2, 0.9, 0.5], [0.5, 0.5, 0.5], q_logged=r, v_target=[0.4, 0.4, 0.4])
    assert est.value == pytest.approx(0.4) and est.upper - est.lower == pytest.approx(0.0)


def _bandit(seed: int, n: int) -> tuple[np.ndarray, ...]:
    """3 arms, uniform behaviour, a target that prefers arm 2; true value known."""
    rng = np.random.default_rng(seed)
    means = np.array([0.1, 0.3, 0.6])
    target = np.array([0.1, 0.2, 0.7])
    a = rng.integers(0, 3, size=n)
    r = (rng.random(n) < means[a]).astype(float)
    return r, target[a], np.full(n, 1 / 3), float(target @ means), means, target, a


@pytest.mark.parametrize("interval", ["normal", "bootstrap"])
def test_estimators_cover_the_true_value(interval: str) -> None:
    r, pe, pb, truth, means, target, a = _bandit(7, 4000)
    q_hat = means + 0.05  # a biased reward model: DR stays unbiased through the correction term
    kw = {"interval": interval, "n_boot": 300, "level": 0.99}  # one draw: 99 % so that 1 in 100 seeds fails
    for est in (
        ope.ips(r, pe, pb, **kw),
        ope.snips(r, pe, pb, **kw),
        ope.doubly_robust(r, pe, pb, q_hat[a], np.full(len(r), target @ q_hat), **kw),
    ):
        assert est.lower < truth < est.upper, est
        assert abs(est.value - truth) < 0.03, est
    naive = float(r.mean())  # the behaviour's value is clearly different: the check can fail
    assert abs(naive - truth) > 0.1


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="behaviour_prob must lie"):
        ope.ips([1.0], [0.5], [0.0])
    with pytest.raises(ValueError, match="expected 2"):
        ope.ips([1.0, 0.0], [0.5, 0.5], [0.5])
    with pytest.raises(ValueError, match="non-finite"):
        ope.snips([float("nan")], [0.5], [0.5])
    with pytest.raises(ValueError, match="undefined"):
        ope.snips([1.0], [0.0], [0.5])


def test_promotion_gate() -> None:
    est = ope.Estimate("snips", 0.5, 0.45, 0.55, 100, 50.0)
    assert ope.promotion_gate(est, behaviour_value=0.4, kl=0.1, kl_max=0.3).decision == "promoted"
    assert ope.promotion_gate(est, behaviour_value=0.46, kl=0.1, kl_max=0.3).decision == "blocked_ope"
    assert ope.promotion_gate(est, behaviour_value=0.4, kl=0.31, kl_max=0.3).decision == "blocked_kl"


def test_off_policy_check_on_a_synthetic_slate_log() -> None:
    """Uniform-random log vs a peaked context-free target: IPS recovers the target's on-policy mean."""
    rng = np.random.default_rng(5)
    n_actions, len_list, n = 20, 3, 60_000
    ctr = rng.uniform(0.01, 0.2, size=n_actions)
    target = rng.dirichlet(np.full(n_actions, 0.3), size=len_list)
    pos = rng.integers(0, len_list, size=n)
    rand_a = rng.integers(0, n_actions, size=n)
    rand = {
        "action": rand_a,
        "position": pos,
        "reward": (rng.random(n) < ctr[rand_a]).astype(float),
        "pscore": np.full(n, 1.0 / n_actions),
    }
    tgt_a = np.array([rng.choice(n_actions, p=target[p]) for p in pos])
    tgt = {"action": tgt_a, "position": pos, "reward": (rng.random(n) < ctr[tgt_a]).astype(float)}
    out = ope.off_policy_check(rand, tgt, n_actions, len_list)
    for name in ("ips", "snips"):
        est = out[name]
        assert isinstance(est, ope.Estimate)
        assert est.lower < out["on_policy"] < est.upper, (name, est, out["on_policy"])
    assert abs(float(out["behaviour"]) - float(out["on_policy"])) > 0.01  # the check can fail


def test_open_bandit_dataset_bts_from_random() -> None:
    """Real ZOZOTOWN logs (the OBD sample inside the obp wheel): BTS's CTR estimated from the random logs."""
    datasets = pytest.importorskip("rewardloop_sim.recomind.datasets")
    try:
        rand = datasets.obp_sample(behavior_policy="random", campaign="all")
        bts = datasets.obp_sample(behavior_policy="bts", campaign="all")
    except (OSError, RuntimeError) as exc:  # no registry access: nothing to check against
        pytest.skip(f"Open Bandit Dataset sample unavailable: {exc}")
    logs = [{k: getattr(d, k) for k in ("action", "position", "reward", "pscore")} for d in (rand, bts)]
    out = ope.off_policy_check(logs[0], logs[1], rand.n_actions, rand.len_list, level=0.99)
    print({k: (v.as_dict() if isinstance(v, ope.Estimate) else v) for k, v in out.items()})
    est = out["snips"]
    assert isinstance(est, ope.Estimate)
    # 10k rows, CTR ~0.5 %: the interval is wide; the on-policy CTR must fall inside it
    assert est.lower <= out["on_policy"] <= est.upper, (est, out["on_policy"])
