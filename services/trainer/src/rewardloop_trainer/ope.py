"""Off-policy evaluation (numpy): IPS, SNIPS and doubly robust estimates with confidence intervals.

Notation for ``n`` logged decisions ``(x_i, a_i, r_i)`` taken by the behaviour policy ``π_β``:

* ``w_i = π(a_i|x_i) / π_β(a_i|x_i)`` (optionally capped at ``cap``, which trades bias for variance);
* IPS ``V = mean(w r)``; SNIPS ``V = Σ w r / Σ w``;
* DR ``V = mean(v̂_i + w_i (r_i - q̂_i))`` with ``q̂_i = q̂(x_i, a_i)`` and ``v̂_i = Σ_a π(a|x_i) q̂(x_i, a)``.

Intervals: ``normal`` = mean ± z·sd/√n of the per-decision terms (for SNIPS the delta-method terms
``w (r - V) / mean(w)``); ``bootstrap`` = percentile interval over seeded resamples of the decisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Interval = Literal["normal", "bootstrap"]
_Z = {0.90: 1.6448536269514722, 0.95: 1.959963984540054, 0.99: 2.5758293035489004}


@dataclass(frozen=True)
class Estimate:
    estimator: str
    value: float
    lower: float
    upper: float
    n: int
    ess: float  # effective sample size of the weights, (Σw)² / Σw²

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "estimator": self.estimator,
            "value": self.value,
            "lower": self.lower,
            "upper": self.upper,
            "n": self.n,
            "ess": self.ess,
        }


def _arr(name: str, x: np.ndarray | list[float], n: int | None = None) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{name} has {a.shape[0]} entries, expected {n}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} has non-finite values")
    return a


def importance_weights(
    target_prob: np.ndarray | list[float], behaviour_prob: np.ndarray | list[float], cap: float | None = None
) -> np.ndarray:
    """``min(cap, π/π_β)``; behaviour probabilities must be in (0, 1], target ones in [0, 1]."""
    pe = _arr("target_prob", target_prob)
    pb = _arr("behaviour_prob", behaviour_prob, pe.shape[0])
    if (pb <= 0).any() or (pb > 1).any():
        raise ValueError("behaviour_prob must lie in (0, 1]")
    if (pe < 0).any() or (pe > 1).any():
        raise ValueError("target_prob must lie in [0, 1]")
    w = pe / pb
    if cap is not None:
        if cap <= 0:
            raise ValueError("cap must be > 0")
        w = np.minimum(w, cap)
    return w


def _logged(
    rewards: np.ndarray | list[float],
    target_prob: np.ndarray | list[float],
    behaviour_prob: np.ndarray | list[float],
    cap: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    """The logged rewards and their (capped) importance weights, checked to be equally long, non-empty."""
    r = _arr("rewards", rewards)
    w = importance_weights(target_prob, behaviour_prob, cap)
    if w.shape[0] != r.shape[0] or r.shape[0] == 0:
        raise ValueError("rewards and probabilities need the same, non-zero length")
    return r, w


def _ess(w: np.ndarray) -> float:
    s2 = float(np.sum(w**2))
    return float(np.sum(w) ** 2 / s2) if s2 > 0 else 0.0


def _interval(
    terms_fn: object,
    point: float,
    normal_terms: np.ndarray,
    n: int,
    interval: Interval,
    level: float,
    n_boot: int,
    seed: int,
) -> tuple[float, float]:
    if interval == "normal":
        if level not in _Z:
            raise ValueError(f"level must be one of {sorted(_Z)}")
        half = _Z[level] * float(np.std(normal_terms, ddof=1)) / np.sqrt(n) if n > 1 else float("inf")
        return float(point - half), float(point + half)
    if interval == "bootstrap":
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(n_boot, n))
        vals = np.array([terms_fn(i) for i in idx])  # type: ignore[operator]
        alpha = (1.0 - level) / 2.0
        lo, hi = np.quantile(vals, [alpha, 1.0 - alpha])
        return float(lo), float(hi)
    raise ValueError(f"unknown interval {interval!r}")


def ips(
    rewards: np.ndarray | list[float],
    target_prob: np.ndarray | list[float],
    behaviour_prob: np.ndarray | list[float],
    *,
    cap: float | None = None,
    interval: Interval = "normal",
    level: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> Estimate:
    r, w = _logged(rewards, target_prob, behaviour_prob, cap)
    terms = w * r
    v = float(terms.mean())
    lo, hi = _interval(lambda i: terms[i].mean(), v, terms, r.shape[0], interval, level, n_boot, seed)
    return Estimate("ips", v, lo, hi, r.shape[0], _ess(w))


def snips(
    rewards: np.ndarray | list[float],
    target_prob: np.ndarray | list[float],
    behaviour_prob: np.ndarray | list[float],
    *,
    cap: float | None = None,
    interval: Interval = "normal",
    level: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> Estimate:
    r, w = _logged(rewards, target_prob, behaviour_prob, cap)
    if w.sum() <= 0:
        raise ValueError("SNIPS is undefined: the target policy gives zero weight to every logged action")
    v = float(np.sum(w * r) / np.sum(w))
    delta_terms = w * (r - v) / w.mean()

    def boot(i: np.ndarray) -> float:
        s = w[i].sum()
        return float(np.sum(w[i] * r[i]) / s) if s > 0 else v

    lo, hi = _interval(boot, v, delta_terms + v, r.shape[0], interval, level, n_boot, seed)
    return Estimate("snips", v, lo, hi, r.shape[0], _ess(w))


def doubly_robust(
    rewards: np.ndarray | list[float],
    target_prob: np.ndarray | list[float],
    behaviour_prob: np.ndarray | list[float],
    q_logged: np.ndarray | list[float],
    v_target: np.ndarray | list[float],
    *,
    cap: float | None = None,
    interval: Interval = "normal",
    level: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> Estimate:
    """``q_logged`` = q̂(x_i, a_i); ``v_target`` = Σ_a π(a|x_i) q̂(x_i, a)."""
    r, w = _logged(rewards, target_prob, behaviour_prob, cap)
    n = r.shape[0]
    q = _arr("q_logged", q_logged, n)
    vt = _arr("v_target", v_target, n)
    terms = vt + w * (r - q)
    v = float(terms.mean())
    lo, hi = _interval(lambda i: terms[i].mean(), v, terms, n, interval, level, n_boot, seed)
    return Estimate("dr", v, lo, hi, n, _ess(w))


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    decision: str  # "promoted" | "blocked_ope" | "blocked_kl"
    reason: str
    kl: float
    estimate: Estimate
    behaviour_value: float


def promotion_gate(estimate: Estimate, behaviour_value: float, kl: float, kl_max: float) -> PromotionDecision:
    """Promote only when the OPE *lower* bound beats the behaviour policy's value and KL <= kl_max."""
    if not np.isfinite(kl) or kl > kl_max:
        return PromotionDecision(
            False, "blocked_kl", f"KL {kl:.4f} > {kl_max}", kl, estimate, behaviour_value
        )
    if estimate.lower <= behaviour_value:
        reason = f"{estimate.estimator} lower bound {estimate.lower:.4f} <= behaviour {behaviour_value:.4f}"
        return PromotionDecision(False, "blocked_ope", reason, kl, estimate, behaviour_value)
    reason = f"{estimate.estimator} lower {estimate.lower:.4f} > behaviour {behaviour_value:.4f}; KL {kl:.4f}"
    return PromotionDecision(True, "promoted", reason, kl, estimate, behaviour_value)


def position_action_distribution(
    actions: np.ndarray, positions: np.ndarray, n_actions: int, len_list: int
) -> np.ndarray:
    """(len_list, n_actions): the empirical ``π(a | position)`` of a logged, context-free policy."""
    a = np.asarray(actions, dtype=np.int64)
    p = np.asarray(positions, dtype=np.int64)
    if a.shape != p.shape or a.size == 0:
        raise ValueError("actions and positions need the same, non-zero length")
    if a.min() < 0 or a.max() >= n_actions or p.min() < 0 or p.max() >= len_list:
        raise ValueError("action or position out of range")
    counts = np.zeros((len_list, n_actions))
    np.add.at(counts, (p, a), 1.0)
    return counts / counts.sum(axis=1, keepdims=True)


def off_policy_check(
    eval_log: dict[str, np.ndarray],
    target_log: dict[str, np.ndarray],
    n_actions: int,
    len_list: int,
    **kw: object,
) -> dict[str, float | Estimate]:
    """The Open Bandit Dataset check (Saito et al. 2020): estimate the value of the policy that logged
    ``target_log`` (e.g. Bernoulli TS) from ``eval_log`` (e.g. uniform random, with ``pscore``), and
    compare with its on-policy mean reward. The target's ``π(a|position)`` is its empirical marginal
    (the OBD policies are context-free). Each log: ``action``, ``position``, ``reward`` (+ ``pscore``)."""
    pi = position_action_distribution(target_log["action"], target_log["position"], n_actions, len_list)
    a = np.asarray(eval_log["action"], dtype=np.int64)
    pos = np.asarray(eval_log["position"], dtype=np.int64)
    pe = pi[pos, a]
    r, pb = eval_log["reward"], eval_log["pscore"]
    return {
        "on_policy": float(np.mean(target_log["reward"])),
        "behaviour": float(np.mean(r)),
        "ips": ips(r, pe, pb, **kw),  # type: ignore[arg-type]
        "snips": snips(r, pe, pb, **kw),  # type: ignore[arg-type]
    }
