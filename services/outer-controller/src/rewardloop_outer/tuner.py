"""The weight tuner (DRL-PUT style) and the guards every push goes through.

**Action space.** The four inner-reward weights are tuned in three groups, each on ``L`` discrete
levels (default 10) inside bounded ranges:

* ``click`` in [0.2, 2.0];
* ``dwell`` in [0.1, 1.5];
* ``quality`` q in [0.2, 2.0] -> ``relevance = q``, ``skip = -0.375 * q`` (q = 0.8 is the built-in
  0.8 / -0.3).

An action is one level per group (``[l_click, l_dwell, l_quality]``; 1000 actions with L = 10).

**Behaviour (logged in every session record's ``tuner`` field).** Most sessions run under the
current weights (the nearest action); a deterministic slice of sessions (``OUTER_EXPLORE_FRACTION``,
default 0.5 %, chosen by a hash of the ``session_key``) is assigned an action drawn uniformly; the
record logs the action and its behaviour probability ``mu(a) = (1 - eps) * 1[a = current] + eps / |A|``.

**Learning.** A factorised softmax policy per segment (context = segment; ``OUTER_TUNER_PER_SEGMENT``)
``pi(a) = prod_g softmax(theta_g)[a_g]``, one single-step mini-batch REINFORCE step per batch of
``OUTER_UPDATE_BATCH_SESSIONS`` sessions: reward ``r_i = kappa_i * mm(business.value) + (1 - kappa_i) *
mean(mm(click rate), mm(mean ln(1+dwell)), 1 - mm(skip rate))`` with ``mm`` the min-max normalisation
over the batch; ``theta_g += lr * mean_i w_i (r_i - mean r) (onehot(a_ig) - pi_g)`` with clipped
importance weights ``w_i = min(10, pi(a_i) / mu_i)``. The candidate weights are the policy's mode.

**Guards, in order, before any push** (each decision is logged and counted in
``rewardloop_outer_tuner_decisions_total{segment,decision}``):

1. ``blocked_min_sessions`` -- fewer than ``OUTER_MIN_SESSIONS`` sessions since the last push;
2. ``blocked_diversity`` -- the candidate policy collapsed (mean normalised entropy < 0.05) or the
   batch data never saw more than one action while the candidate differs (nothing to learn it from);
3. ``blocked_relative_gain`` -- the self-normalised IPS estimate of the candidate's value does not
   beat the behaviour policy's (mean reward of the logged data);
4. ``rollback`` -- ``KL(new || old) > OUTER_KL_MAX`` (0.3): the policy is rolled back to the last
   accepted version (the weights document is left as it is);
5. ``shadow`` -- ``OUTER_SHADOW_MODE`` (default on): the would-be weights are logged, not pushed;
6. ``no_change`` / ``pushed``.

The earlier correlation rule (:mod:`.weight_update`, ``OUTER_TUNER=correlation``) goes through the
same guards 1, 4 (KL of the normalised |weights|), 5 and 6.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from rewardloop_common.events import SessionRecord, SessionTuner
from rewardloop_common.logging import get_logger
from rewardloop_common.weights import BUILTIN_WEIGHTS, WEIGHT_NAMES, Weights
from rewardloop_common.weights_store import WeightsStore

from .metrics import OuterMetrics
from .weight_update import compute_update, session_features

log = get_logger("rewardloop.outer.tuner")
SOURCE = "outer-controller"

GROUPS: tuple[tuple[str, float, float], ...] = (
    ("click", 0.2, 2.0),
    ("dwell", 0.1, 1.5),
    ("quality", 0.2, 2.0),
)
SKIP_PER_QUALITY = -0.375
MIN_ENTROPY = 0.05
MAX_IW = 10.0


def level_value(group: int, level: int, levels: int) -> float:
    _, lo, hi = GROUPS[group]
    return lo + (hi - lo) * level / (levels - 1)


def action_weights(action: Sequence[int], levels: int) -> Weights:
    c, d, q = (level_value(g, a, levels) for g, a in enumerate(action))
    return Weights.clipped({"click": c, "dwell": d, "relevance": q, "skip": SKIP_PER_QUALITY * q})


def nearest_action(w: Weights, levels: int) -> list[int]:
    vals = (w.click, w.dwell, w.relevance)
    out = []
    for g, v in enumerate(vals):
        _, lo, hi = GROUPS[g]
        out.append(int(min(levels - 1, max(0, round((v - lo) / (hi - lo) * (levels - 1))))))
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max())
    return z / z.sum()


def kl(p: np.ndarray, q: np.ndarray) -> float:
    p = np.clip(p, 1e-12, 1.0)
    q = np.clip(q, 1e-12, 1.0)
    return float(np.sum(p * np.log(p / q)))


def _hash01(key: str) -> float:
    h = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


def minmax(xs: Sequence[float]) -> list[float]:
    lo, hi = min(xs), max(xs)
    if hi - lo <= 1e-12:
        return [0.5] * len(xs)
    return [(x - lo) / (hi - lo) for x in xs]


@dataclass
class Policy:
    theta: np.ndarray  # (groups, levels)
    version: int = 0

    def probs(self) -> np.ndarray:
        return np.stack([_softmax(t) for t in self.theta])

    def prob(self, action: Sequence[int]) -> float:
        p = self.probs()
        return float(np.prod([p[g, a] for g, a in enumerate(action)]))

    def mode(self) -> list[int]:
        return [int(i) for i in self.theta.argmax(axis=1)]

    def kl_to(self, old: Policy) -> float:
        """KL(self || old) of the factorised policies (sum over groups)."""
        p, q = self.probs(), old.probs()
        return sum(kl(p[g], q[g]) for g in range(p.shape[0]))

    def entropy_norm(self) -> float:
        p = np.clip(self.probs(), 1e-12, 1.0)
        h = -(p * np.log(p)).sum(axis=1) / math.log(p.shape[1])
        return float(h.mean())

    @classmethod
    def centred(cls, action: Sequence[int], levels: int, strength: float = 2.0) -> Policy:
        theta = np.zeros((len(GROUPS), levels))
        for g, a in enumerate(action):
            theta[g, a] = strength
        return cls(theta)


@dataclass
class SegmentState:
    policy: Policy | None = None
    accepted: Policy | None = None
    batch: list[SessionRecord] = field(default_factory=list)
    since_push: int = 0


@dataclass(frozen=True)
class Decision:
    segment: str
    decision: str
    reason: str
    weights: Weights | None = None
    version: int | None = None
    kl: float | None = None


class WeightTuner:
    """Both tuners (``strategy`` = ``drlput`` | ``correlation``) behind the same guards."""

    def __init__(
        self,
        store: WeightsStore,
        metrics: OuterMetrics,
        *,
        strategy: str = "drlput",
        batch_sessions: int = 200,
        min_sessions: int = 10_000,
        shadow: bool = True,
        explore_fraction: float = 0.005,
        kl_max: float = 0.3,
        levels: int = 10,
        lr: float = 0.5,
        per_segment: bool = True,
        learning_rate: float = 0.1,
        max_step: float = 0.1,
        min_gain: float = 0.0,
    ) -> None:
        self.store, self.metrics = store, metrics
        self.strategy = strategy
        self.batch_sessions, self.min_sessions, self.shadow = batch_sessions, min_sessions, shadow
        self.eps, self.kl_max, self.levels, self.lr = explore_fraction, kl_max, levels, lr
        self.per_segment = per_segment
        self.learning_rate, self.max_step, self.min_gain = learning_rate, max_step, min_gain
        self.n_actions = levels ** len(GROUPS)
        self.segments: dict[str, SegmentState] = {}
        self.decisions: list[Decision] = []
        self._wcache: dict[str, tuple[float, Weights]] = {}

    def _ctx(self, segment: str) -> str:
        return segment if self.per_segment else "default"

    # --------------------------------------------------------------------------------- behaviour

    def behaviour(self, rec: SessionRecord) -> SessionTuner:
        """The session's behaviour action and its probability (deterministic in the session key)."""
        current = nearest_action(self._weights(rec.segment), self.levels)
        u = _hash01("explore:" + rec.session_key)
        explore = u < self.eps
        if explore:
            idx = int(_hash01("action:" + rec.session_key) * self.n_actions) % self.n_actions
            action = list(next(itertools.islice(itertools.product(range(self.levels), repeat=3), idx, None)))
        else:
            action = current
        mu = self.eps / self.n_actions + ((1.0 - self.eps) if action == current else 0.0)
        return SessionTuner(action=action, propensity=mu, explore=explore, policy_version=0)

    def _weights(self, segment: str) -> Weights:
        """The segment's current weights (cached for 5 s; the built-ins when Redis fails)."""
        now = time.monotonic()
        hit = self._wcache.get(segment)
        if hit is not None and now - hit[0] < 5.0:
            return hit[1]
        try:
            w = self.store.get_effective(segment).weights
        except Exception as exc:  # noqa: BLE001 - behaviour logging must not stop the loop
            log.warning("could not read the current weights", segment=segment, error=str(exc))
            w = hit[1] if hit is not None else BUILTIN_WEIGHTS
        self._wcache[segment] = (now, w)
        return w

    # ---------------------------------------------------------------------------------- learning

    def add(self, rec: SessionRecord) -> Decision | None:
        ctx = self._ctx(rec.segment)
        st = self.segments.setdefault(ctx, SegmentState())
        if rec.tuner is None:
            rec = rec.model_copy(update={"tuner": self.behaviour(rec)})
        if rec.tuner is not None and rec.tuner.explore:
            self.metrics.tuner_explored.inc()
        st.batch.append(rec)
        st.since_push += 1
        if len(st.batch) < self.batch_sessions:
            return None
        batch, st.batch = st.batch, []
        current = self.store.get_effective(rec.segment)
        if self.strategy == "correlation":
            d = self._correlation(rec.segment, st, batch, current.weights)
        else:
            d = self._drlput(rec.segment, st, batch, current.weights)
        self.decisions.append(d)
        self.metrics.tuner_decisions.labels(segment=rec.segment, decision=d.decision).inc()
        if d.kl is not None:
            self.metrics.tuner_kl.labels(segment=rec.segment).set(d.kl)
        log.info(
            "tuner decision",
            segment=d.segment,
            decision=d.decision,
            reason=d.reason,
            weights=None if d.weights is None else d.weights.as_dict(),
            version=d.version,
        )
        return d

    def _finish(
        self, segment: str, st: SegmentState, cand: Weights, old: Weights, kl_val: float, why: str
    ) -> Decision:
        if st.since_push < self.min_sessions:
            return Decision(
                segment,
                "blocked_min_sessions",
                f"{st.since_push} < {self.min_sessions}; {why}",
                cand,
                kl=kl_val,
            )
        if kl_val > self.kl_max:
            return Decision(segment, "rollback", f"KL {kl_val:.3f} > {self.kl_max}; {why}", cand, kl=kl_val)
        if (
            max(abs(a - b) for a, b in zip(cand.as_dict().values(), old.as_dict().values(), strict=True))
            <= 1e-6
        ):
            return Decision(segment, "no_change", why, cand, kl=kl_val)
        if self.shadow:
            return Decision(segment, "shadow", f"would push {cand.as_dict()}; {why}", cand, kl=kl_val)
        doc = self.store.push(segment, cand, source=SOURCE, reason=f"{self.strategy}: {why}"[:2000])
        st.since_push = 0
        self.metrics.weight_updates.inc()
        self.metrics.weights_version.labels(segment=doc.segment).set(doc.version)
        return Decision(segment, "pushed", why, cand, doc.version, kl=kl_val)

    def _correlation(
        self, segment: str, st: SegmentState, batch: list[SessionRecord], current: Weights
    ) -> Decision:
        upd = compute_update(current, batch, self.learning_rate, self.max_step)
        kl_val = _weights_kl(upd.new, current)
        return self._finish(segment, st, upd.new, current, kl_val, upd.reason())

    def _drlput(
        self, segment: str, st: SegmentState, batch: list[SessionRecord], current: Weights
    ) -> Decision:
        if st.policy is None:
            st.policy = Policy.centred(nearest_action(current, self.levels), self.levels)
            st.accepted = Policy(st.policy.theta.copy())
        assert st.accepted is not None
        old = st.policy
        feats = [session_features(r) for r in batch]
        kappa = [r.kappa if r.kappa is not None else 0.2 for r in batch]
        bval = minmax([r.business.value if r.business else r.business_reward for r in batch])
        clicks, dwell, skip = (minmax([getattr(f, k) for f in feats]) for k in ("click", "dwell", "skip"))
        rewards = np.array(
            [
                k * b + (1 - k) * (c + d + (1 - s)) / 3
                for k, b, c, d, s in zip(kappa, bval, clicks, dwell, skip, strict=True)
            ]
        )
        actions = [r.tuner.action if r.tuner else nearest_action(current, self.levels) for r in batch]
        mus = np.array([r.tuner.propensity if r.tuner else 1.0 for r in batch])
        iw = np.minimum(MAX_IW, np.array([old.prob(a) for a in actions]) / mus)
        adv = rewards - rewards.mean()
        probs = old.probs()
        grad = np.zeros_like(old.theta)
        for a, w, ad in zip(actions, iw, adv, strict=True):
            for g, lvl in enumerate(a):
                onehot = np.zeros(self.levels)
                onehot[lvl] = 1.0
                grad[g] += w * ad * (onehot - probs[g])
        new = Policy(old.theta + self.lr * grad / len(batch), old.version + 1)
        kl_val = new.kl_to(st.accepted)
        # off-policy value of the candidate (self-normalised IPS) vs the behaviour policy
        w_new = np.minimum(MAX_IW, np.array([new.prob(a) for a in actions]) / mus)
        v_new = float((w_new * rewards).sum() / max(1e-12, w_new.sum()))
        v_beh = float(rewards.mean())
        distinct = len({tuple(a) for a in actions})
        cand = action_weights(new.mode(), self.levels)
        why = (
            f"batch {len(batch)}, {distinct} distinct actions, V_ips(new)={v_new:.4f} "
            f"vs V(behaviour)={v_beh:.4f}, KL={kl_val:.4f}, entropy={new.entropy_norm():.3f}, "
            f"mode={new.mode()}"
        )
        st.policy = new
        moved = new.mode() != st.accepted.mode()
        if not moved:
            return Decision(segment, "no_change", why, cand, kl=kl_val)
        if new.entropy_norm() < MIN_ENTROPY or distinct < 2:
            return Decision(segment, "blocked_diversity", why, cand, kl=kl_val)
        if v_new <= v_beh + self.min_gain:
            return Decision(segment, "blocked_relative_gain", why, cand, kl=kl_val)
        d = self._finish(segment, st, cand, current, kl_val, why)
        if d.decision == "rollback":
            st.policy = Policy(st.accepted.theta.copy(), st.accepted.version)
        elif d.decision in ("pushed", "no_change"):
            st.accepted = Policy(new.theta.copy(), new.version)
        return d

    def state_json(self) -> str:
        return json.dumps(
            {
                seg: {
                    "theta": None if st.policy is None else st.policy.theta.tolist(),
                    "since_push": st.since_push,
                }
                for seg, st in self.segments.items()
            }
        )


def _weights_kl(new: Weights, old: Weights) -> float:
    p = np.array([abs(new.as_dict()[k]) for k in WEIGHT_NAMES]) + 1e-9
    q = np.array([abs(old.as_dict()[k]) for k in WEIGHT_NAMES]) + 1e-9
    return kl(p / p.sum(), q / q.sum())
