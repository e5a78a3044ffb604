"""The weight tuner (DRL-PUT style) and the guards every push goes through.

**Action space.** The four inner-reward weights are tuned in three groups, each on ``L`` discrete
levels (default 10) inside bounded ranges:

* ``click`` in [0.2, 2.0];
* ``dwell`` in [0.1, 1.5];
* ``quality`` q in [0.2, 2.0] -> ``relevance = q``, ``skip = -0.375 * q`` (q = 0.8 is the built-in
  0.8 / -0.3).

An action is one level per group (``[l_click, l_dwell, l_quality]``; 1000 actions with L = 10).

**Behaviour = the scorer's exploration slice** (docs/architecture.md, "Redis: exploration slice").
The tuner publishes, per segment, an exploration document (``OUTER_EXPLORATION_SLICE``, default
0.5 %; actions = the whole grid when it has <= 256 actions, else the 3x3x3 neighbourhood of the current
action; action id = ``l_click * L^2 + l_dwell * L + l_quality``) together with the weights in ONE
script, and re-publishes it when the current weights move (an admin push). The scorer applies it
and logs ``explore_action`` / ``explore_probability`` / ``exploration_version`` on every reward event;
the session's record carries its first step's values in its ``tuner`` field (``logged``: true) and
they are the (action, propensity) the learning and the relative-gain gate use -- the propensity as the
marginal probability of the served weights (:meth:`WeightTuner.behaviour_for`: the grid holds the
current action too). Sessions without a logged document count as the current action with propensity 1.

**Learning.** A factorised softmax policy per segment (context = segment; ``OUTER_TUNER_PER_SEGMENT``)
``pi(a) = prod_g softmax(theta_g)[a_g]``, started centred on the served action (strength 2) and re-centred
when the weights are moved outside the tuner; one single-step mini-batch REINFORCE step per batch of
``OUTER_UPDATE_BATCH_SESSIONS`` sessions (:func:`batch_rewards`, :func:`reinforce_gradient`): reward
``r_i = kappa_i * mm(business.value) + (1 - kappa_i) * mean(mm(click rate), mm(mean ln(1+dwell)), 1 -
mm(skip rate))`` with ``mm`` the min-max normalisation over the batch; clipped importance weights ``w_i =
min(10, pi(a_i) / mu_i)``; ``theta += lr * sum_i w_i A_i grad log pi(a_i) / sum_i w_i`` with ``A_i = (r_i -
V_snips(pi)) / std(r)``. The candidate weights are the policy's mode.

**Guards, in order** (each decision is logged and counted in
``rewardloop_outer_tuner_decisions_total{segment,decision}``):

1. ``rollback`` -- the update moved the policy by ``KL(new || old) > OUTER_KL_MAX`` (0.3): it is
   discarded and the policy stays at the previous version (a per-update trust region, so that the mode
   can move by small accepted steps; checked on every update, whether or not a push is due);
2. ``no_change`` -- the mode is still the served action;
3. ``blocked_diversity`` -- the candidate policy collapsed (mean normalised entropy < 0.05) or the
   batch data never saw more than one action (nothing to learn it from);
4. ``blocked_relative_gain`` -- the self-normalised IPS estimate of the candidate's value does not
   beat the behaviour policy's (mean reward of the logged data);
5. ``blocked_min_sessions`` -- fewer than ``OUTER_MIN_SESSIONS`` sessions since the last push;
6. ``shadow`` -- ``OUTER_SHADOW_MODE`` (default on): the would-be weights are logged, not pushed;
7. ``superseded`` -- the weights in Redis are not the ones the step started from (a learning step
   reads them from the tuner's 5-second cache; a push reads them again first): someone else pushed
   meanwhile (an admin's re-targeting), so the candidate is dropped and the next step starts from theirs;
8. ``pushed``.

The earlier correlation rule (:mod:`.weight_update`, ``OUTER_TUNER=correlation``) goes through
``blocked_min_sessions``, ``rollback`` (KL of the normalised |weights|, before a push), ``no_change``,
``shadow``, ``superseded`` and ``pushed``.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import orjson

from rewardloop_common.events import SessionRecord, SessionTuner
from rewardloop_common.exploration import MAX_ACTIONS
from rewardloop_common.logging import get_logger
from rewardloop_common.weights import BUILTIN_WEIGHTS, WEIGHT_NAMES, Weights
from rewardloop_common.weights_store import WeightsStore, validate_segment
from rewardloop_outer_native import drlput_step

from .metrics import OuterMetrics
from .weight_update import FirstStep, TunerSession, compute_update

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
#: the kappa a session whose record has none is learned with (also read by the native step)
UNSET_KAPPA = 0.2
MAX_REMEMBERED_DOCS = 256  # published exploration documents kept for the propensity correction
MAX_MEMO_BEHAVIOURS = 4096  # memoised behaviours (a few distinct ones per document in practice)
#: decisions that change nothing: a repeat of the last logged one is logged at most this often
ROUTINE_DECISIONS = frozenset(
    ("no_change", "shadow", "blocked_min_sessions", "blocked_diversity", "blocked_relative_gain")
)
ROUTINE_LOG_INTERVAL_S = 10.0
MAX_KEPT_DECISIONS = 1000  # ~40 decisions/s at 50 000 events/s: an unbounded list grew without end


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


def kl(p: np.ndarray, q: np.ndarray) -> float:
    p = np.clip(p, 1e-12, 1.0)
    q = np.clip(q, 1e-12, 1.0)
    return float(np.sum(p * np.log(p / q)))


def encode_action(action: Sequence[int], levels: int) -> int:
    """The exploration document's action id of a grid action (row-major over the groups)."""
    i = 0
    for a in action:
        i = i * levels + int(a)
    return i


def decode_action(action_id: int, levels: int) -> list[int]:
    out = []
    for _ in GROUPS:
        action_id, a = divmod(action_id, levels)
        out.append(a)
    return out[::-1]


def batch_rewards(batch: Sequence[SessionRecord | TunerSession]) -> np.ndarray:
    """Per-session reward in [0, 1]: ``kappa * mm(business value) + (1 - kappa) * mean(mm(click rate),
    mm(mean ln(1 + dwell)), 1 - mm(skip rate))``, ``mm`` = min-max over the batch."""
    return _rewards(_batch_table([TunerSession.of(r) for r in batch], ()))


# the columns of :func:`_batch_table`: kappa, business value, click / dwell / skip features, the
# behaviour's action (one column per group) and its propensity
_KAPPA, _VALUE, _CLICK, _DWELL, _SKIP, _ACTION = 0, 1, 2, 3, 4, 5
_MU = _ACTION + len(GROUPS)


def _batch_table(batch: Sequence[TunerSession], centre: Sequence[int]) -> np.ndarray:
    """The batch as one (n, 9) array built in one pass (per-column ``fromiter`` over generators was
    most of a learning step's cost): see the ``_KAPPA`` .. ``_MU`` columns; a session without a behaviour
    counts as ``centre`` with propensity 1."""
    none = (*centre, 1.0)
    return np.array(
        [
            (
                UNSET_KAPPA if r.kappa is None else r.kappa,
                r.value,
                r.features.click,
                r.features.dwell,
                r.features.skip,
                *(none if r.tuner is None else (*r.tuner.action, r.tuner.propensity)),
            )
            for r in batch
        ],
        dtype=float,
    ).reshape(len(batch), -1)


def _rewards(table: np.ndarray) -> np.ndarray:
    """:func:`batch_rewards` of a :func:`_batch_table` (the same float operations per session)."""
    kappa = table[:, _KAPPA]
    bval, clicks, dwell, skip = (minmax(table[:, c]) for c in (_VALUE, _CLICK, _DWELL, _SKIP))
    return kappa * bval + (1 - kappa) * (clicks + dwell + (1 - skip)) / 3  # type: ignore[no-any-return]


def minmax(x: np.ndarray) -> np.ndarray:
    """``(x - min) / (max - min)``; all 0.5 when the batch does not vary."""
    lo, hi = float(x.min()), float(x.max())
    if hi - lo <= 1e-12:
        return np.full(len(x), 0.5)
    return (x - lo) / (hi - lo)  # type: ignore[no-any-return]


def reinforce_gradient(
    policy: Policy, actions: Sequence[Sequence[int]] | np.ndarray, mus: np.ndarray, rewards: np.ndarray
) -> np.ndarray:
    """Off-policy single-step REINFORCE gradient of the factorised policy, per unit learning rate.

    ``sum_i w_i A_i grad log pi(a_i) / sum_i w_i`` with clipped importance weights ``w_i = min(10,
    pi(a_i) / mu_i)``, the self-normalised IPS value of ``pi`` as the baseline and advantages divided
    by the batch's reward standard deviation. Why each part: with a small slice almost every session
    is the current action (w ~ pi / (1 - slice), small), so dividing by the batch size instead of
    ``sum w`` shrank the step by the share of explored sessions; min-max rewards whose spread is a few
    hundredths made the raw advantages as small (a step then needed a learning rate tuned to the
    reward scale); and the behaviour mean is not the target policy's value, the SNIPS estimate is."""
    probs = policy.probs()
    acts = np.asarray(actions, dtype=np.intp).reshape(len(actions), -1)
    iw = np.minimum(MAX_IW, policy.probs_of(acts, probs) / mus)
    total = float(iw.sum())
    if total <= 1e-12:
        return np.zeros_like(policy.theta)
    baseline = float((iw * rewards).sum()) / total
    adv = (rewards - baseline) / (float(rewards.std()) + 1e-6)
    # per session: -w*A*probs (the softmax part of grad log pi, every group) and +w*A at each chosen
    # level -- summed over the batch at once (a Python loop over the sessions was ~10 us each)
    wa = iw * adv
    grad = -float(wa.sum()) * probs
    for g in range(acts.shape[1]):
        grad[g] += np.bincount(acts[:, g], weights=wa, minlength=grad.shape[1])
    return grad / total


@dataclass
class Policy:
    """A factorised softmax policy. ``theta`` is read-only (an update makes a new policy), so its
    probabilities are computed once: a learning step asks for them ~5 times."""

    theta: np.ndarray  # (groups, levels)
    version: int = 0
    _probs: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.theta = np.array(self.theta, dtype=float)
        self.theta.flags.writeable = False

    def probs(self) -> np.ndarray:
        if self._probs is None:
            z = np.exp(self.theta - self.theta.max(axis=1, keepdims=True))
            self._probs = z / z.sum(axis=1, keepdims=True)
        return self._probs

    def prob(self, action: Sequence[int]) -> float:
        p = self.probs()
        return float(np.prod([p[g, a] for g, a in enumerate(action)]))

    def probs_of(self, actions: np.ndarray, probs: np.ndarray | None = None) -> np.ndarray:
        """:meth:`prob` of each row of ``actions`` (n, groups) at once (``probs``: this policy's
        :meth:`probs`, when the caller has them)."""
        p = self.probs() if probs is None else probs
        if len(actions) == 0:
            return np.zeros(0)
        return np.prod(p[np.arange(p.shape[0]), actions], axis=1)  # type: ignore[no-any-return]

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


class LearningStep(NamedTuple):
    """One REINFORCE step's outcome: the updated policy, ``KL(new || old)``, the candidate's
    self-normalised IPS value and the behaviour's mean reward, the batch's distinct actions, the new
    policy's mean normalised entropy and its mode (the candidate action)."""

    policy: Policy
    kl: float
    v_new: float
    v_beh: float
    distinct: int
    entropy: float
    mode: list[int]


def learning_step(
    batch: Sequence[TunerSession], centre: Sequence[int], old: Policy, lr: float
) -> LearningStep:
    """:func:`learning_step_py` in Rust (``rewardloop_outer_native.drlput_step``: ~60 steps a second
    at 10^5 events/s, where building the batch's array and the ~40 numpy operations of a step were
    ~1.5 us per closed session, about twice that inside the running controller); the Python reference
    for what the native step declines (e.g. an action level off the grid)."""
    out = drlput_step(batch, centre, old.theta.tobytes(), lr, MAX_IW, UNSET_KAPPA)
    if out is None:
        return learning_step_py(batch, centre, old, lr)
    theta, kl_val, v_new, v_beh, distinct, entropy, mode = out
    policy = Policy(np.frombuffer(theta).reshape(old.theta.shape), old.version + 1)
    return LearningStep(policy, kl_val, v_new, v_beh, distinct, entropy, mode)


def learning_step_py(
    batch: Sequence[TunerSession], centre: Sequence[int], old: Policy, lr: float
) -> LearningStep:
    """One REINFORCE step from ``old`` on ``batch`` (sessions without a behaviour count as
    ``centre``): the reference of :func:`learning_step`."""
    table = _batch_table(batch, centre)
    rewards = _rewards(table)
    actions = table[:, _ACTION:_MU].astype(np.intp)
    mus = table[:, _MU]
    new = Policy(old.theta + lr * reinforce_gradient(old, actions, mus, rewards), old.version + 1)
    # off-policy value of the candidate (self-normalised IPS) vs the behaviour policy
    w_new = np.minimum(MAX_IW, new.probs_of(actions) / mus)
    v_new = float((w_new * rewards).sum() / max(1e-12, w_new.sum()))
    distinct = len(set(map(tuple, actions.tolist())))
    return LearningStep(
        new, new.kl_to(old), v_new, float(rewards.mean()), distinct, new.entropy_norm(), new.mode()
    )


@dataclass
class SegmentState:
    policy: Policy | None = None
    #: the grid action of the weights the policy was last centred on / pushed
    centre: list[int] | None = None
    batch: list[TunerSession] = field(default_factory=list)
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
        #: the latest decisions (every one is counted, and logged or summed into the next log line)
        self.decisions: deque[Decision] = deque(maxlen=MAX_KEPT_DECISIONS)
        # per segment: the last logged decision, when, and its unlogged repeats since (_log_decision)
        self._logged: dict[str, tuple[str, float, int]] = {}
        self._wcache: dict[str, tuple[float, Weights]] = {}
        self._nearest: dict[str, tuple[Weights, list[int]]] = {}
        self._explore_centre: dict[str, list[int]] = {}
        # segment -> the weights object its exploration centre was last checked against (asked for
        # every session: the check -- nearest action, a list compare -- only when they changed)
        self._explore_checked: dict[str, Weights] = {}
        # documents this tuner published: (segment, version) -> (centre action id, slice, action ids)
        self._docs: dict[tuple[str, int], tuple[int, float, frozenset[int]]] = {}
        self._behaviours: dict[tuple[Any, ...], bytes] = {}
        self._behaviour_models: dict[bytes, SessionTuner] = {}

    def _ctx(self, segment: str) -> str:
        return segment if self.per_segment else "default"

    # --------------------------------------------------------------------------------- behaviour

    def behaviour(self, rec: SessionRecord, first: Any = None) -> SessionTuner:
        """The session's behaviour (action, propensity) from what the scorer logged on its first
        step (``first``: an event with ``explore_*`` fields); the current action with propensity 1
        when no exploration document was active."""
        return self.behaviour_for(rec.segment, first)

    def behaviour_json(
        self, segment: str, first: tuple[int | None, float | None, int | None] | None
    ) -> bytes:
        """The record field's bytes (``orjson`` of the dict without unset fields) of
        :meth:`behaviour_for` a session whose first step logged ``first`` = ``(explore_action,
        explore_probability, exploration_version)`` (``None``: no steps); :meth:`behaviour_of` gives
        the model back. Memoised on everything the answer depends on -- the logged fields, the document
        they name (as this tuner remembers it) and the current grid action: building and dumping the
        model was ~2/3 of the tuner's cost per closed session."""
        act_id, prob, version = first if first is not None else (None, None, None)
        doc = None if prob is None or version is None else self._docs.get((segment, version))
        key = (segment, act_id, prob, version, doc, tuple(self._current_action(segment)))
        raw = self._behaviours.get(key)
        if raw is None:
            tuner = self.behaviour_for(segment, None if first is None else FirstStep(*first))
            raw = orjson.dumps(tuner.model_dump(mode="json", exclude_unset=True))
            if len(self._behaviours) >= MAX_MEMO_BEHAVIOURS:
                self._behaviours.clear()
                self._behaviour_models.clear()
            self._behaviours[key] = raw
            self._behaviour_models[raw] = tuner
        return raw

    def behaviour_of(self, raw: bytes) -> SessionTuner:
        """The model of bytes :meth:`behaviour_json` returned (the same object; parsed if forgotten)."""
        hit = self._behaviour_models.get(raw)
        return hit if hit is not None else SessionTuner.model_validate_json(raw)

    def behaviour_for(self, segment: str, first: Any = None) -> SessionTuner:
        """:meth:`behaviour` of a session of ``segment`` (the engine has no record model to pass).

        The propensity is the behaviour's marginal probability of the session's *action* (a weight
        vector), not of the branch the scorer took: the grid contains the document's centre, so the
        centre is served with ``(1 - slice) + slice/n`` -- by the segment's weights or by an exploration
        draw that landed on it -- while the scorer logs ``1 - slice`` or ``slice/n`` for its branch. For a
        document this tuner published it knows the centre and the grid and corrects the logged value;
        for any other (published before a restart, or by someone else) the logged value stands."""
        prob = getattr(first, "explore_probability", None)
        version = getattr(first, "exploration_version", None)
        act_id = getattr(first, "explore_action", None)
        if prob is None or version is None:
            current = self._current_action(segment)
            return SessionTuner(action=current, propensity=1.0, explore=False)
        doc = self._docs.get((segment, version))
        if act_id is not None and 0 <= act_id < self.n_actions:
            if doc is not None:
                centre, eps, ids = doc
                prob = eps / len(ids) + (1.0 - eps if act_id == centre else 0.0)
            return SessionTuner(
                action=decode_action(act_id, self.levels),
                propensity=prob,
                explore=True,
                explore_action=act_id,
                exploration_version=version,
                logged=True,
            )
        if doc is not None:
            centre, eps, ids = doc
            action = decode_action(centre, self.levels)
            prob = 1.0 - eps + (eps / len(ids) if centre in ids else 0.0)
        else:
            action = self._current_action(segment)
        return SessionTuner(
            action=action, propensity=prob, explore=False, exploration_version=version, logged=True
        )

    # ------------------------------------------------------------------------------ exploration

    def exploration_actions(self, current: Sequence[int]) -> list[tuple[int, Weights]]:
        """The exploration grid: every action when there are <= 256, else the neighbourhood of
        ``current`` (+-1 level per group, clipped to the grid)."""
        if self.n_actions <= MAX_ACTIONS:
            grid: Iterable[tuple[int, ...]] = itertools.product(range(self.levels), repeat=len(GROUPS))
        else:
            ranges = [range(max(0, c - 1), min(self.levels - 1, c + 1) + 1) for c in current]
            grid = itertools.product(*ranges)
        return [(encode_action(a, self.levels), action_weights(a, self.levels)) for a in grid]

    def publish_exploration(self, segment: str, weights: Weights | None = None, reason: str = "") -> None:
        """Write the segment's exploration document (with ``weights``: both, atomically)."""
        base = weights if weights is not None else self._weights(segment)
        centre = nearest_action(base, self.levels)
        _wdoc, edoc = self.store.push_exploration(
            segment,
            self.eps,
            self.exploration_actions(centre),
            SOURCE,
            weights=weights,
            reason=reason,
        )
        self._explore_centre[segment] = centre
        self._explore_checked.pop(segment, None)
        centre_id = encode_action(centre, self.levels)
        self._remember_doc(segment, edoc.version, centre_id, edoc.slice, edoc.actions)
        self.metrics.exploration_version.labels(segment=segment).set(edoc.version)
        self.metrics.exploration_slice.labels(segment=segment).set(edoc.slice)
        log.info(
            "exploration document published",
            segment=segment,
            version=edoc.version,
            slice=edoc.slice,
            actions=len(edoc.actions),
            centre=centre,
        )

    def _remember_doc(self, segment: str, version: int, centre: int, eps: float, actions: Any) -> None:
        self._docs[(segment, version)] = (centre, eps, frozenset(a.id for a in actions))
        while len(self._docs) > MAX_REMEMBERED_DOCS:  # sessions of older documents use the logged value
            del self._docs[next(iter(self._docs))]

    def maybe_publish_exploration(self, segment: str) -> None:
        """(Re)publish when exploration is on and the current weights left the published centre."""
        if self.eps <= 0:
            return
        w = self._weights(segment)
        if self._explore_checked.get(segment) is w:
            return  # checked against these weights, and nothing published since
        centre = self._current_action(segment)
        if self._explore_centre.get(segment) != centre:
            try:
                self.publish_exploration(segment)
            except Exception as exc:  # noqa: BLE001 - exploration must not stop the loop
                log.warning("could not publish the exploration document", segment=segment, error=str(exc))
                self._explore_centre[segment] = centre  # retried when the weights move again
        self._explore_checked[segment] = w

    def _current_action(self, segment: str) -> list[int]:
        """The grid action nearest the segment's current weights (asked for every session: computed
        again only when :meth:`_weights` returns another document)."""
        w = self._weights(segment)
        hit = self._nearest.get(segment)
        if hit is None or hit[0] is not w:
            hit = self._nearest[segment] = (w, nearest_action(w, self.levels))
        return list(hit[1])

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

    def add(self, session: SessionRecord | TunerSession) -> Decision | None:
        rec = TunerSession.of(session)
        ctx = self._ctx(rec.segment)
        st = self.segments.get(ctx)
        if st is None:
            st = self.segments[ctx] = SegmentState()
        self.maybe_publish_exploration(rec.segment)
        if rec.tuner is None:
            rec = rec._replace(tuner=self.behaviour_for(rec.segment))
        if rec.tuner is not None and rec.tuner.explore:
            self.metrics.tuner_explored.inc()
        st.batch.append(rec)
        st.since_push += 1
        if len(st.batch) < self.batch_sessions:
            return None
        batch, st.batch = st.batch, []
        # the weights served now, as cached for the behaviour (<= 5 s old): a Redis read per step cost
        # ~1/4 of the step itself; a push re-reads them first (_finish). A segment the store cannot
        # key raises here, as that read did (the caller counts it), instead of being tuned on the
        # built-ins the cache falls back to
        validate_segment(rec.segment)
        current = self._weights(rec.segment)
        if self.strategy == "correlation":
            d = self._correlation(rec.segment, st, batch, current)
        else:
            d = self._drlput(rec.segment, st, batch, current)
        self.decisions.append(d)
        self.metrics.tuner_decisions.labels(segment=rec.segment, decision=d.decision).inc()
        if d.kl is not None:
            self.metrics.tuner_kl.labels(segment=rec.segment).set(d.kl)
        self._log_decision(d)
        return d

    def _log_decision(self, d: Decision) -> None:
        """Log a decision; a repeat of the segment's last logged one that changed nothing is logged at
        most every ``ROUTINE_LOG_INTERVAL_S``, with how many repeats went unlogged since (each is still
        counted in the metric and kept in :attr:`decisions`). At 10^5 events/s the tuner decides ~60
        times a second, and a log line per decision cost ~4 % of the loop thread (py-spy)."""
        now = time.monotonic()
        last = self._logged.get(d.segment)
        # shadow mode's point is the would-be weights: a shadow decision with other weights is news
        key = d.decision if d.decision != "shadow" or d.weights is None else f"shadow {d.weights!r}"
        if (
            d.decision in ROUTINE_DECISIONS
            and last is not None
            and last[0] == key
            and now - last[1] < ROUTINE_LOG_INTERVAL_S
        ):
            self._logged[d.segment] = (key, last[1], last[2] + 1)
            return
        self._logged[d.segment] = (key, now, 0)
        log.info(
            "tuner decision",
            segment=d.segment,
            decision=d.decision,
            reason=d.reason,
            weights=None if d.weights is None else d.weights.as_dict(),
            version=d.version,
            unlogged_repeats=0 if last is None else last[2],
        )

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
        fresh = self.store.get_effective(segment).weights
        if fresh != old:
            # the weights moved since the cached read this step started from (an admin push): never
            # overwrite them with a step computed on older ones; the next step starts from these
            self._wcache[segment] = (time.monotonic(), fresh)
            return Decision(
                segment, "superseded", f"served weights changed to {fresh.as_dict()}; {why}", cand, kl=kl_val
            )
        reason = f"{self.strategy}: {why}"[:2000]
        if self.eps > 0:  # the new weights and their exploration grid in one script
            self.publish_exploration(segment, cand, reason)
            doc = self.store.get_effective(segment)
            self._wcache.pop(segment, None)
        else:
            doc = self.store.push(segment, cand, source=SOURCE, reason=reason)
        st.since_push = 0
        self.metrics.weight_updates.inc()
        self.metrics.weights_version.labels(segment=doc.segment).set(doc.version)
        return Decision(segment, "pushed", why, cand, doc.version, kl=kl_val)

    def _correlation(
        self, segment: str, st: SegmentState, batch: list[TunerSession], current: Weights
    ) -> Decision:
        upd = compute_update(current, batch, self.learning_rate, self.max_step)
        kl_val = _weights_kl(upd.new, current)
        return self._finish(segment, st, upd.new, current, kl_val, upd.reason())

    def _drlput(
        self, segment: str, st: SegmentState, batch: list[TunerSession], current: Weights
    ) -> Decision:
        centre = nearest_action(current, self.levels)
        if st.policy is None or st.centre != centre:
            # first batch, or the weights were moved outside the tuner (admin re-targeting): the
            # policy restarts centred on what is served now
            st.policy = Policy.centred(centre, self.levels)
            st.centre = centre
        s = learning_step(batch, centre, st.policy, self.lr)
        cand = action_weights(s.mode, self.levels)
        why = (
            f"batch {len(batch)}, {s.distinct} distinct actions, V_ips(new)={s.v_new:.4f} "
            f"vs V(behaviour)={s.v_beh:.4f}, KL={s.kl:.4f}, entropy={s.entropy:.3f}, mode={s.mode}"
        )
        # trust region: one update may move the policy by at most KL_max (DRL-PUT's KL(new||old))
        if s.kl > self.kl_max:
            return Decision(segment, "rollback", f"KL {s.kl:.3f} > {self.kl_max}; {why}", cand, kl=s.kl)
        st.policy = s.policy
        if s.mode == centre:
            return Decision(segment, "no_change", why, cand, kl=s.kl)
        if s.entropy < MIN_ENTROPY or s.distinct < 2:
            return Decision(segment, "blocked_diversity", why, cand, kl=s.kl)
        if s.v_new <= s.v_beh + self.min_gain:
            return Decision(segment, "blocked_relative_gain", why, cand, kl=s.kl)
        d = self._finish(segment, st, cand, current, 0.0, why)
        if d.decision == "pushed":
            st.centre = s.mode
        return Decision(d.segment, d.decision, d.reason, d.weights, d.version, kl=s.kl)

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
