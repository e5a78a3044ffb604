"""Section 4 of the learning benchmark: the DRL-PUT weight tuner's design choices, ablated.

The outer controller's tuner (:mod:`rewardloop_outer.tuner`) picks the inner-reward weights -- click,
dwell and quality ``q`` (relevance ``q``, skip ``-0.375 q``) inside the tuner's ``GROUPS`` ranges -- and
learns from sessions served under them. Here the same choice is made against RecoMindEnv: a session is
ranked by the utility those weights define over per-item predictions (the scorer's shape)::

    u(i) = w_click·P(click_i) + w_dwell·P(click_i)·E[ln(1+dwell_i)]/ln 241 + q·rel_i + (-0.375 q)·P(skip_i)

and the session's reward is ``κ·business + (1-κ)·(click rate + mean normalised ln(1+dwell) + 1 - skip
rate)/3`` with κ = 0.5 (the tuner's ``batch_rewards`` blend, but on a fixed scale instead of the per-batch
min-max, so that the true value V(a) of an action is well defined and rewards of different rounds can be
pooled by a critic; the REINFORCE estimator divides by the batch's reward sd, so it is scale-free).

Variants (every combination, same sessions budget, same start = the built-in weights):

* **action space** -- ``continuous``: x in [0,1]^3 (normalised ranges), a Gaussian policy N(m, σ²)
  with fixed σ; ``discretised``: one softmax over the joint grid of L^3 actions; ``grouped``: the
  tuner's factorised softmax, one L-level softmax per group (its :class:`~rewardloop_outer.tuner.Policy`
  and :func:`~rewardloop_outer.tuner.reinforce_gradient`, imported, not copied);
* **exploration** -- the behaviour is ``(1-ε)·P + ε·X`` with X ``gaussian`` (local: N(mode, σ_x²),
  discretised onto the levels for the grid policies) or ``uniform`` (global: uniform over the space);
* **learner** -- ``reinforce``: the tuner's off-policy estimator ``Σ w_i A_i ∇log P(a_i) / Σ w_i``,
  ``w = min(MAX_IW, P/μ)``, ``A = (r - V_snips)/sd(r)``; ``actor-critic``: the same estimator with the
  sampled reward replaced by a critic Q(a) (ridge regression on quadratic action features, fitted on
  every session so far). The Gaussian's step is the natural gradient (Fisher⁻¹ = σ²).
  Every update goes through the tuner's trust region: discarded when KL(new || old) > ``kl_max``.

Gates, as :meth:`rewardloop_outer.tuner.WeightTuner._drlput` applies them to its candidate (the
thresholds ``MIN_ENTROPY`` and ``MAX_IW`` are imported from it; the checks are inline there, so they
are restated here): **Diversity** -- the final policy's mean normalised per-group entropy (for the
Gaussian: of its mass on the L level bins) >= ``MIN_ENTROPY`` and the last batch saw >= 2 distinct
(level-rounded) actions; **Relative gain** -- the self-normalised IPS value of the final policy on the
last batch > the batch's mean reward (the behaviour's value). Next to the gates, the *true* gain:
V(final mode) − V(start), each estimated online on fresh sessions.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from rewardloop_common.weights import BUILTIN_WEIGHTS
from rewardloop_outer.tuner import (
    GROUPS,
    MAX_IW,
    MIN_ENTROPY,
    SKIP_PER_QUALITY,
    nearest_action,
    reinforce_gradient,
)
from rewardloop_outer.tuner import Policy as GroupedPolicy
from rewardloop_sim.recomind.env import RecoMindEnv

ACTION_SPACES = ("continuous", "discretised", "grouped")
EXPLORATIONS = ("gaussian", "uniform")
LEARNERS = ("reinforce", "actor-critic")
N_GROUPS = len(GROUPS)
LOG_241 = math.log(241.0)


@dataclass(frozen=True)
class AblationConfig:
    rounds: int = 20
    batch: int = 100
    eval_sessions: int = 1000
    levels: int = 10  # the tuner's default L
    epsilon: float = 0.2  # exploration share (the tuner's slice is 0.5 %, for ~10^4 sessions per push)
    explore_sigma: float = 0.15  # Gaussian exploration, in normalised units (1.35 levels at L = 10)
    policy_sigma: float = 0.08  # the continuous policy's fixed sd (~ the centred softmax's spread)
    lr: float = 0.5  # the tuner's default, softmax policies
    lr_gaussian: float = 1.0  # natural-gradient step of the Gaussian mean
    kl_max: float = 0.3  # the tuner's OUTER_KL_MAX
    kappa: float = 0.5
    critic_l2: float = 1.0


# ------------------------------------------------------------------------------------ actions


def to_weights(x: np.ndarray) -> tuple[float, float, float]:
    """Normalised action (3,) -> (w_click, w_dwell, q) inside the tuner's GROUPS ranges (clipped)."""
    vals = [lo + float(np.clip(v, 0.0, 1.0)) * (hi - lo) for (_, lo, hi), v in zip(GROUPS, x, strict=True)]
    return vals[0], vals[1], vals[2]


def levels_of(x: np.ndarray, levels: int) -> tuple[int, ...]:
    return tuple(int(v) for v in np.clip(np.rint(np.asarray(x) * (levels - 1)), 0, levels - 1))


def start_action(levels: int) -> np.ndarray:
    """The built-in weights' nearest grid action, normalised."""
    return np.array(nearest_action(BUILTIN_WEIGHTS, levels), dtype=float) / (levels - 1)


def normalised_entropy(marginals: np.ndarray) -> float:
    """Mean over groups of H(p_g)/ln L (the tuner's ``Policy.entropy_norm``)."""
    p = np.clip(marginals, 1e-12, 1.0)
    return float((-(p * np.log(p)).sum(axis=1) / math.log(p.shape[1])).mean())


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))


def level_masses(centre: float, sigma: float, levels: int) -> np.ndarray:
    """Mass of N(centre, sigma²) on each level's bin of [0,1] (outer bins extended to ±inf)."""
    edges = (np.arange(levels + 1) - 0.5) / (levels - 1)
    edges[0], edges[-1] = -np.inf, np.inf
    cdf = _normal_cdf((edges - centre) / sigma)
    return np.diff(cdf)


# ------------------------------------------------------------------------------------ policies


class Learned(Protocol):
    """The learned part P of the behaviour: sample, probability (density), mode, per-group level
    marginals, a REINFORCE-style step from (actions, behaviour propensities, values), KL to another."""

    def sample(self, rng: np.random.Generator) -> np.ndarray: ...
    def prob(self, x: np.ndarray) -> float: ...
    def mode(self) -> np.ndarray: ...
    def marginals(self) -> np.ndarray: ...
    def stepped(self, xs: Sequence[np.ndarray], mus: np.ndarray, values: np.ndarray) -> Learned: ...
    def kl_to(self, old: Learned) -> float: ...


@dataclass
class GaussianPolicy:
    mean: np.ndarray
    sigma: float
    levels: int
    lr: float

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        return self.mean + self.sigma * rng.standard_normal(N_GROUPS)

    def prob(self, x: np.ndarray) -> float:
        z = (np.asarray(x) - self.mean) / self.sigma
        return float(np.exp(-0.5 * z @ z) / (math.sqrt(2 * math.pi) * self.sigma) ** N_GROUPS)

    def mode(self) -> np.ndarray:
        return np.clip(self.mean, 0.0, 1.0)

    def marginals(self) -> np.ndarray:
        return np.stack([level_masses(m, self.sigma, self.levels) for m in self.mean])

    def stepped(self, xs: Sequence[np.ndarray], mus: np.ndarray, values: np.ndarray) -> GaussianPolicy:
        # natural gradient: Fisher^-1 ∇_m log N = σ² (x - m)/σ² = x - m
        w, adv = snips_advantages(np.array([self.prob(x) for x in xs]), mus, values)
        if w is None:
            return self
        step = (w * adv) @ (np.stack(xs) - self.mean) / w.sum()
        return GaussianPolicy(self.mean + self.lr * step, self.sigma, self.levels, self.lr)

    def kl_to(self, old: Learned) -> float:
        assert isinstance(old, GaussianPolicy)
        d = self.mean - old.mean
        return float(d @ d / (2 * self.sigma**2))


@dataclass
class JointSoftmaxPolicy:
    """One softmax over all L^3 grid actions (index = row-major levels, as the tuner's encode_action)."""

    theta: np.ndarray  # (L^3,)
    levels: int
    lr: float

    @classmethod
    def centred(cls, start: np.ndarray, levels: int, lr: float, start_prob: float) -> JointSoftmaxPolicy:
        n = levels**N_GROUPS
        theta = np.zeros(n)
        # logit so that P(start) = start_prob (the grouped policy's product of its centred groups)
        theta[cls.index(levels_of(start, levels), levels)] = math.log(start_prob * (n - 1) / (1 - start_prob))
        return cls(theta, levels, lr)

    @staticmethod
    def index(lv: Sequence[int], levels: int) -> int:
        i = 0
        for a in lv:
            i = i * levels + int(a)
        return i

    def probs(self) -> np.ndarray:
        z = np.exp(self.theta - self.theta.max())
        return z / z.sum()

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        i = int(rng.choice(self.theta.shape[0], p=self.probs()))
        return np.array(np.unravel_index(i, (self.levels,) * N_GROUPS), dtype=float) / (self.levels - 1)

    def prob(self, x: np.ndarray) -> float:
        return float(self.probs()[self.index(levels_of(x, self.levels), self.levels)])

    def mode(self) -> np.ndarray:
        i = int(self.theta.argmax())
        return np.array(np.unravel_index(i, (self.levels,) * N_GROUPS), dtype=float) / (self.levels - 1)

    def marginals(self) -> np.ndarray:
        p = self.probs().reshape((self.levels,) * N_GROUPS)
        return np.stack([p.sum(axis=tuple(a for a in range(N_GROUPS) if a != g)) for g in range(N_GROUPS)])

    def stepped(self, xs: Sequence[np.ndarray], mus: np.ndarray, values: np.ndarray) -> JointSoftmaxPolicy:
        p = self.probs()
        idx = [self.index(levels_of(x, self.levels), self.levels) for x in xs]
        w, adv = snips_advantages(p[idx], mus, values)
        if w is None:
            return self
        grad = -(w * adv).sum() * p  # the softmax part of ∇log P
        np.add.at(grad, idx, w * adv)
        return JointSoftmaxPolicy(self.theta + self.lr * grad / w.sum(), self.levels, self.lr)

    def kl_to(self, old: Learned) -> float:
        assert isinstance(old, JointSoftmaxPolicy)
        p, q = np.clip(self.probs(), 1e-12, 1), np.clip(old.probs(), 1e-12, 1)
        return float((p * np.log(p / q)).sum())


@dataclass
class FactorisedPolicy:
    """The tuner's own policy and gradient (rewardloop_outer.tuner.Policy / reinforce_gradient)."""

    policy: GroupedPolicy
    levels: int
    lr: float

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        p = self.policy.probs()
        return np.array([rng.choice(self.levels, p=p[g]) for g in range(N_GROUPS)], dtype=float) / (
            self.levels - 1
        )

    def prob(self, x: np.ndarray) -> float:
        return self.policy.prob(levels_of(x, self.levels))

    def mode(self) -> np.ndarray:
        return np.array(self.policy.mode(), dtype=float) / (self.levels - 1)

    def marginals(self) -> np.ndarray:
        return self.policy.probs()

    def stepped(self, xs: Sequence[np.ndarray], mus: np.ndarray, values: np.ndarray) -> FactorisedPolicy:
        acts = [list(levels_of(x, self.levels)) for x in xs]
        grad = reinforce_gradient(self.policy, acts, mus, values)
        return FactorisedPolicy(
            GroupedPolicy(self.policy.theta + self.lr * grad, self.policy.version + 1), self.levels, self.lr
        )

    def kl_to(self, old: Learned) -> float:
        assert isinstance(old, FactorisedPolicy)
        return self.policy.kl_to(old.policy)


def snips_advantages(
    p: np.ndarray, mus: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
    """The tuner's weights and advantages: ``w = min(MAX_IW, p/μ)``, ``A = (v - Σwv/Σw) / sd(v)``."""
    w = np.minimum(MAX_IW, p / mus)
    if w.sum() <= 1e-12:
        return None, None
    base = float((w * values).sum() / w.sum())
    return w, (values - base) / (float(values.std()) + 1e-6)


def snips_value(p: np.ndarray, mus: np.ndarray, rewards: np.ndarray) -> float:
    w = np.minimum(MAX_IW, p / mus)
    return float((w * rewards).sum() / max(1e-12, w.sum()))


# ------------------------------------------------------------------------------------ exploration


@dataclass
class Exploration:
    """X(· | centre): ``gaussian`` around the learned policy's mode, or ``uniform`` over the space."""

    kind: str
    discrete: bool
    levels: int
    sigma: float

    def sample(self, centre: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.kind == "uniform":
            if self.discrete:
                return rng.integers(self.levels, size=N_GROUPS).astype(float) / (self.levels - 1)
            return rng.random(N_GROUPS)
        if self.discrete:
            c = levels_of(centre, self.levels)
            lv = [
                rng.choice(self.levels, p=level_masses(ci / (self.levels - 1), self.sigma, self.levels))
                for ci in c
            ]
            return np.array(lv, dtype=float) / (self.levels - 1)
        return centre + self.sigma * rng.standard_normal(N_GROUPS)

    def prob(self, x: np.ndarray, centre: np.ndarray) -> float:
        if self.kind == "uniform":
            if self.discrete:
                return 1.0 / self.levels**N_GROUPS
            return 1.0 if bool(np.all((x >= 0) & (x <= 1))) else 0.0
        if self.discrete:
            c, lv = levels_of(centre, self.levels), levels_of(x, self.levels)
            return float(
                np.prod(
                    [
                        level_masses(ci / (self.levels - 1), self.sigma, self.levels)[li]
                        for ci, li in zip(c, lv, strict=True)
                    ]
                )
            )
        z = (np.asarray(x) - centre) / self.sigma
        return float(np.exp(-0.5 * z @ z) / (math.sqrt(2 * math.pi) * self.sigma) ** N_GROUPS)


# ------------------------------------------------------------------------------------ critic


def quadratic_features(xs: np.ndarray) -> np.ndarray:
    """[1, x, x², pairwise products] of clipped normalised actions (n, 3) -> (n, 10)."""
    x = np.clip(np.atleast_2d(xs), 0.0, 1.0)
    pairs = [x[:, i] * x[:, j] for i, j in itertools.combinations(range(x.shape[1]), 2)]
    return np.column_stack([np.ones(len(x)), x, x**2, *pairs])


def fit_critic(xs: np.ndarray, rewards: np.ndarray, l2: float) -> Callable[[np.ndarray], np.ndarray]:
    """Ridge regression of the reward on quadratic action features (intercept not penalised)."""
    phi = quadratic_features(xs)
    reg = l2 * np.eye(phi.shape[1])
    reg[0, 0] = 0.0
    coef = np.linalg.solve(phi.T @ phi + reg, phi.T @ rewards)
    return lambda a: quadratic_features(a) @ coef


# ------------------------------------------------------------------------------------ the world


def session_reward(
    env: RecoMindEnv, weights: tuple[float, float, float], rng: np.random.Generator, kappa: float
) -> tuple[float, float]:
    """Serve one session ranked by the weights' utility; (reward, business reward)."""
    w_click, w_dwell, q = weights
    cat, cfg = env.catalogue, env.config
    k = cfg.slate_size
    user = int(rng.integers(env.n_users))
    sess = env.start_session(user)
    clicks = skips = shown = 0
    dwell_norm: list[float] = []
    while not sess.done:
        cands = env.candidates(user)
        p_click = env.click_probability(user, cands, 0, sess.step)
        rel = env.true_relevance(user, cands)
        p_skip = (1 - p_click) * (cfg.skip_base + cfg.skip_irrelevance * (1 - rel))
        exp_dwell = np.where(cat.long_form[cands], cfg.long_dwell_seconds, cfg.short_dwell_seconds) * (
            1 - cfg.clickbait_dwell_cut * cat.clickbait[cands]
        )
        util = (
            w_click * p_click
            + w_dwell * p_click * np.log1p(exp_dwell) / LOG_241
            + q * rel
            + SKIP_PER_QUALITY * q * p_skip
        )
        o = env.step(sess, cands[np.argsort(-util, kind="stable")[:k]])
        clicks += int(o.clicks.sum())
        skips += int(o.skips.sum())
        shown += k
        dwell_norm.extend((np.log1p(o.dwell_seconds[o.clicks]) / LOG_241).tolist())
    biz = env.end_session(sess).business_reward
    engagement = (
        clicks / shown + (float(np.mean(dwell_norm)) if dwell_norm else 0.0) + 1 - skips / shown
    ) / 3
    return kappa * biz + (1 - kappa) * engagement, biz


def true_value(
    make_env: Callable[[int], RecoMindEnv], x: np.ndarray, seed: int, n: int, kappa: float
) -> tuple[float, float, float]:
    """(mean reward, its standard error, mean business reward) of action x on n fresh sessions."""
    env = make_env(seed)  # the run's world, fresh users and env state
    rng = np.random.default_rng(20_000 + seed)  # the same users for every action evaluated
    out = np.array([session_reward(env, to_weights(x), rng, kappa) for _ in range(n)])
    return float(out[:, 0].mean()), float(out[:, 0].std(ddof=1) / math.sqrt(n)), float(out[:, 1].mean())


# ------------------------------------------------------------------------------------ one run


@dataclass
class VariantResult:
    space: str
    exploration: str
    learner: str
    seed: int
    diversity: bool
    relative_gain: bool
    entropy: float
    distinct: int
    v_snips: float
    v_behaviour: float
    rollbacks: int
    mode: np.ndarray
    true_value: float = float("nan")
    true_se: float = float("nan")
    true_business: float = float("nan")
    curve: list[float] = field(default_factory=list)  # mean reward per round
    start: np.ndarray = field(default_factory=lambda: np.full(N_GROUPS, np.nan))

    @property
    def moved(self) -> bool:
        """Not the tuner's ``no_change``: some weight of the final mode differs from the start's by > 1e-6."""
        return (
            max(abs(a - b) for a, b in zip(to_weights(self.mode), to_weights(self.start), strict=True)) > 1e-6
        )

    @property
    def would_push(self) -> bool:
        return self.moved and self.diversity and self.relative_gain


def initial_policy(space: str, cfg: AblationConfig) -> Learned:
    start = start_action(cfg.levels)
    grouped = GroupedPolicy.centred(levels_of(start, cfg.levels), cfg.levels)
    if space == "grouped":
        return FactorisedPolicy(grouped, cfg.levels, cfg.lr)
    if space == "discretised":
        return JointSoftmaxPolicy.centred(
            start, cfg.levels, cfg.lr, grouped.prob(levels_of(start, cfg.levels))
        )
    if space == "continuous":
        return GaussianPolicy(start.copy(), cfg.policy_sigma, cfg.levels, cfg.lr_gaussian)
    raise ValueError(f"unknown action space {space!r}; expected one of {ACTION_SPACES}")


def run_variant(
    make_env: Callable[[int], RecoMindEnv],
    space: str,
    exploration: str,
    learner: str,
    seed: int,
    cfg: AblationConfig,
) -> VariantResult:
    if exploration not in EXPLORATIONS or learner not in LEARNERS:
        raise ValueError(f"unknown variant {exploration!r}/{learner!r}")
    env = make_env(seed)
    rng = np.random.default_rng(seed)
    policy = initial_policy(space, cfg)
    explore = Exploration(exploration, space != "continuous", cfg.levels, cfg.explore_sigma)
    seen_x: list[np.ndarray] = []
    seen_r: list[float] = []
    rollbacks = 0
    curve: list[float] = []
    xs: list[np.ndarray] = []
    mus = rewards = np.zeros(0)
    for _ in range(cfg.rounds):
        centre = policy.mode()
        xs = [
            explore.sample(centre, rng) if rng.random() < cfg.epsilon else policy.sample(rng)
            for _ in range(cfg.batch)
        ]
        mus = np.array(
            [(1 - cfg.epsilon) * policy.prob(x) + cfg.epsilon * explore.prob(x, centre) for x in xs]
        )
        rewards = np.array([session_reward(env, to_weights(x), rng, cfg.kappa)[0] for x in xs])
        curve.append(float(rewards.mean()))
        seen_x.extend(xs)
        seen_r.extend(rewards.tolist())
        if learner == "actor-critic":
            critic = fit_critic(np.stack(seen_x), np.array(seen_r), cfg.critic_l2)
            values = critic(np.stack(xs))
        else:
            values = rewards
        new = policy.stepped(xs, mus, values)
        if new.kl_to(policy) > cfg.kl_max:  # the tuner's trust region: discard the update
            rollbacks += 1
        else:
            policy = new
    entropy = normalised_entropy(policy.marginals())
    distinct = len({levels_of(x, cfg.levels) for x in xs})
    v_new = snips_value(np.array([policy.prob(x) for x in xs]), mus, rewards)
    v_beh = float(rewards.mean())
    return VariantResult(
        space,
        exploration,
        learner,
        seed,
        diversity=entropy >= MIN_ENTROPY and distinct >= 2,
        relative_gain=v_new > v_beh,
        entropy=entropy,
        distinct=distinct,
        v_snips=v_new,
        v_behaviour=v_beh,
        rollbacks=rollbacks,
        mode=policy.mode(),
        curve=curve,
        start=start_action(cfg.levels),
    )


def run_ablation(
    make_env: Callable[[int], RecoMindEnv],
    seeds: Sequence[int],
    cfg: AblationConfig,
    log: Callable[[str], None] = print,
) -> tuple[list[VariantResult], dict[int, tuple[float, float, float]]]:
    """Every variant on every seed; true values of the final modes and of the start action per seed."""
    results = []
    start_values = {}
    for seed in seeds:
        cache: dict[tuple[float, ...], tuple[float, float, float]] = {}

        def value(x: np.ndarray, seed: int = seed, cache: dict = cache) -> tuple[float, float, float]:
            key = tuple(np.round(x, 9).tolist())  # most runs end where they started: evaluate once
            if key not in cache:
                cache[key] = true_value(make_env, x, seed, cfg.eval_sessions, cfg.kappa)
            return cache[key]

        start_values[seed] = value(start_action(cfg.levels))
        for space, expl, learner in itertools.product(ACTION_SPACES, EXPLORATIONS, LEARNERS):
            r = run_variant(make_env, space, expl, learner, seed, cfg)
            r.true_value, r.true_se, r.true_business = value(r.mode)
            results.append(r)
            log(
                f"[4] seed {seed} {space}/{expl}/{learner}: diversity {r.diversity} relative gain "
                f"{r.relative_gain} true {r.true_value:.3f} vs start {start_values[seed][0]:.3f}"
            )
    return results, start_values
