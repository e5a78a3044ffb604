"""The bounded outer update rule for the inner-reward weights.

Rule (one update per segment every ``OUTER_UPDATE_BATCH_SESSIONS`` closed sessions of that segment):

1. For each session *s* in the batch compute four features from its steps:

   * ``f_click(s)``  = click rate = (#steps with ``clicked``) / n_steps
   * ``f_dwell(s)``  = mean over steps of ``ln(1 + dwell_seconds)``
   * ``f_skip(s)``   = skip rate = (#steps with ``skipped``) / n_steps
   * ``f_rel(s)``    = mean ``predicted_relevance``

   and the target ``y(s)`` = the session's ``business_reward``
   (``clip(ln(1 + revenue) + 1.0*subscriptions + 0.5*return_visits, -5, 5)``).

2. For each weight *k*: ``c_k`` = Pearson correlation of ``f_k`` and ``y`` across the batch; ``c_k = 0``
   when either side has zero variance (no signal -> no move).

3. ``delta_k = clip(OUTER_LEARNING_RATE * c_k, -OUTER_MAX_STEP, +OUTER_MAX_STEP)``.

4. ``w'_k = clip(w_k + delta_k, bounds_k)`` where ``w`` is the segment's CURRENT document read from
   Redis at update time (so an admin's ``PUT /v1/weights`` in between is respected; a segment
   without a document starts from the ``default`` segment's, else the built-in defaults), and the
   bounds are click, dwell, relevance in [0, 5] and skip in [-5, 0]. (The service's
   :class:`~.tuner.WeightTuner` takes ``w`` from its 5-second cache and reads Redis again before a
   push: a document that changed meanwhile supersedes the update, which is then dropped.)

5. Push ``w'`` with ``WeightsStore.push(segment, w', source="outer-controller", reason=...)`` only if
   ``max_k |delta_k| > 1e-6``; the reason names the batch size and the correlations. The batch is
   cleared either way.

Why this shape: the sign of ``c_k`` says whether sessions with more of term *k* earned more
business value, and its magnitude (in [-1, 1]) how consistently; the learning rate and the per-step
cap bound how far one batch can move a weight (at most ``OUTER_MAX_STEP`` per weight per batch), and
the absolute bounds keep every document valid for the scorer. It is a correlational heuristic, not a
causal estimate: logged propensities (``behavior_propensity``) are carried in the records for the
off-policy estimators that may replace it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import orjson

from rewardloop_common.events import SessionRecord, SessionTuner
from rewardloop_common.logging import get_logger
from rewardloop_common.weights import WEIGHT_BOUNDS, WEIGHT_NAMES, Weights, WeightsDocument
from rewardloop_common.weights_store import WeightsStore

log = get_logger("rewardloop.outer.weights")

MIN_DELTA = 1e-6
_VAR_EPS = 1e-12

SOURCE = "outer-controller"


class SessionFeatures(NamedTuple):
    """A session's four step features (a named tuple: built for every closed session on the hot path,
    ~5x cheaper than a frozen dataclass)."""

    click: float
    dwell: float
    skip: float
    relevance: float

    def get(self, name: str) -> float:
        return float(getattr(self, name))


def session_features(rec: SessionRecord) -> SessionFeatures:
    return _features([(s.clicked, s.dwell_seconds, s.skipped, s.predicted_relevance) for s in rec.steps])


def _features(steps: Sequence[tuple[bool, float, bool, float]]) -> SessionFeatures:
    """The four features of (clicked, dwell_seconds, skipped, predicted_relevance) steps. Summed one by
    one in step order, as the native close does (``sum()`` of floats is compensated from Python 3.12
    on: the same batch would give the tuner other last bits on the two paths)."""
    n = len(steps)
    if n == 0:
        return SessionFeatures(0.0, 0.0, 0.0, 0.0)
    clicks = skips = 0
    dwell = relevance = 0.0
    for clicked, dwell_s, skipped, rel in steps:
        clicks += clicked
        dwell += math.log1p(max(0.0, dwell_s))
        skips += skipped
        relevance += rel
    return SessionFeatures(click=clicks / n, dwell=dwell / n, skip=skips / n, relevance=relevance / n)


class FirstStep(NamedTuple):
    """A session's first step as the tuner's behaviour and the trade-off point read it (the scorer's
    exploration fields)."""

    explore_action: int | None
    explore_probability: float | None
    exploration_version: int | None


class TunerSession(NamedTuple):
    """What the weight rules read of a closed session: its segment, behaviour, kappa, business value
    and step features. The controller's native close returns these fields with each revision-0
    record; the Python close builds it from the record's JSON (:meth:`from_json`, ~6x cheaper than
    validating the whole :class:`SessionRecord`, which was the tuner's largest cost per session);
    anything else from the model (:meth:`of`). A named tuple, as :class:`SessionFeatures`."""

    session_key: str
    segment: str
    tuner: SessionTuner | None
    kappa: float | None
    business_reward: float
    value: float  # business.value (the KPI priorities' blend), else business_reward
    features: SessionFeatures

    @classmethod
    def of(cls, rec: SessionRecord | TunerSession) -> TunerSession:
        if isinstance(rec, TunerSession):
            return rec
        return cls(
            rec.session_key,
            rec.segment,
            rec.tuner,
            rec.kappa,
            rec.business_reward,
            rec.business.value if rec.business else rec.business_reward,
            session_features(rec),
        )

    @classmethod
    def from_json(cls, raw: bytes) -> TunerSession:
        """From a record the controller wrote (valid by construction: the fields are not re-checked,
        except the tuner's, which pydantic builds)."""
        d = orjson.loads(raw)
        tuner = d.get("tuner")
        business = d.get("business")
        br = float(d["business_reward"])
        steps = [
            (s["clicked"], s["dwell_seconds"], s["skipped"], s["predicted_relevance"]) for s in d["steps"]
        ]
        return cls(
            d["session_key"],
            d["segment"],
            None if tuner is None else SessionTuner.model_validate(tuner),
            d.get("kappa"),
            br,
            float(business["value"]) if business else br,
            _features(steps),
        )


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Pearson correlation; 0.0 when fewer than 2 points or either side has (near) zero variance."""
    n = len(xs)
    if n != len(ys):
        raise ValueError("xs and ys differ in length")
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx / n <= _VAR_EPS or syy / n <= _VAR_EPS:
        return 0.0
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


@dataclass(frozen=True)
class WeightUpdate:
    n_sessions: int
    correlations: dict[str, float]
    delta: dict[str, float]
    old: Weights
    new: Weights

    @property
    def max_abs_delta(self) -> float:
        return max(abs(d) for d in self.delta.values())

    @property
    def should_push(self) -> bool:
        return self.max_abs_delta > MIN_DELTA

    def reason(self) -> str:
        corr = ", ".join(f"{k}={self.correlations[k]:+.3f}" for k in WEIGHT_NAMES)
        delta = ", ".join(f"{k}={self.delta[k]:+.4f}" for k in WEIGHT_NAMES)
        return f"batch of {self.n_sessions} sessions; corr(feature, business_reward): {corr}; delta: {delta}"


def compute_update(
    current: Weights,
    sessions: Sequence[SessionRecord | TunerSession],
    learning_rate: float,
    max_step: float,
) -> WeightUpdate:
    """Apply steps 1-4 of the rule to one batch (pure)."""
    samples = [TunerSession.of(s) for s in sessions]
    feats = [s.features for s in samples]
    ys = [s.business_reward for s in samples]
    corr: dict[str, float] = {}
    delta: dict[str, float] = {}
    new: dict[str, float] = {}
    old = current.as_dict()
    for k in WEIGHT_NAMES:
        c = pearson([f.get(k) for f in feats], ys)
        d = max(-max_step, min(max_step, learning_rate * c))
        lo, hi = WEIGHT_BOUNDS[k]
        corr[k] = c
        new[k] = min(hi, max(lo, old[k] + d))
        delta[k] = d
    return WeightUpdate(len(sessions), corr, delta, current, Weights(**new))


class WeightUpdater:
    """Buffers closed sessions per segment and applies the rule every ``batch_sessions`` of them."""

    def __init__(
        self, store: WeightsStore, batch_sessions: int, learning_rate: float, max_step: float
    ) -> None:
        self.store = store
        self.batch_sessions = batch_sessions
        self.learning_rate = learning_rate
        self.max_step = max_step
        self._buffers: dict[str, list[SessionRecord]] = defaultdict(list)

    def pending(self, segment: str) -> int:
        return len(self._buffers.get(segment, []))

    def add(self, rec: SessionRecord) -> tuple[WeightUpdate, WeightsDocument | None] | None:
        """Buffer ``rec``; when its segment's batch is full, run the rule. Returns ``None`` while the
        batch fills, else the update and the pushed document (``None`` when the move was too small).
        Redis errors propagate (the batch is dropped: the next one starts fresh)."""
        buf = self._buffers[rec.segment]
        buf.append(rec)
        if len(buf) < self.batch_sessions:
            return None
        batch, self._buffers[rec.segment] = buf, []
        current = self.store.get_effective(rec.segment)
        update = compute_update(current.weights, batch, self.learning_rate, self.max_step)
        if not update.should_push:
            log.info("weight update skipped (no signal)", segment=rec.segment, sessions=len(batch))
            return update, None
        doc = self.store.push(rec.segment, update.new, source=SOURCE, reason=update.reason())
        log.info(
            "weights pushed",
            segment=doc.segment,
            version=doc.version,
            based_on=current.version,
            weights=doc.weights.as_dict(),
            correlations=update.correlations,
        )
        return update, doc
