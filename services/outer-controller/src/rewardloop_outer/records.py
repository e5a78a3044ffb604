"""Closed sessions -> ``recsys.sessions`` records with the blended reward and per-step credit (issue #4).

Per session (all in the record):

* ``steps[t].return`` = ``G_t = r_t + gamma * G_{t+1}`` over the scorer's clipped step rewards;
  ``discounted_return = G_0`` (unchanged contract);
* ``business_reward`` = the legacy ``clip(ln(1+revenue) + subscriptions + 0.5*return_visits, -5, 5)``
  (unchanged contract);
* ``business`` = the parts ``revenue`` (ln(1+revenue)), ``ndcg10`` (mean NDCG@10 of the served slates,
  from logged positions and engagement gains), ``engagement``, ``retention`` and their prioritised
  ``value`` (clip to [-5, 5]);
* ``kappa`` = the KPI weight from the schedule (or the runtime override);
  ``blended_reward = clip((1 - kappa) * discounted_return + kappa * business.value, -5, 5)``;
* ``baseline`` = the segment's rolling EMA of ``blended_reward`` before this session (per shard; only
  revision 0 moves it), ``advantage = clip(blended_reward - baseline, -5, 5)``;
* ``steps[t].credit = share_t * advantage`` (:mod:`rewardloop_outer.credit`), ``credit_model`` names
  the shares used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import orjson

from rewardloop_common.events import (
    RewardEvent,
    SessionBusiness,
    SessionKpi,
    SessionRecord,
    SessionStep,
    SessionTuner,
)

from .business_reward import (
    KappaSchedule,
    business_parts,
    business_reward,
    clip_reward,
    ema_update,
)
from .credit import CreditAssigner
from .fastevents import Action
from .returns import discounted_returns
from .session_window import ClosedSession


def session_step(a: Action | RewardEvent, g: float, **extra: Any) -> SessionStep:
    """One ``recsys.sessions`` step from a closed session's action and its return ``g``."""
    # model_construct: every value comes from an already validated event (or is computed from them);
    # validating ~10^5 steps/s again was the largest cost of closing sessions
    return SessionStep.model_construct(
        event_id=a.event_id,
        item_id=a.item_id,
        position=a.position,
        event_time_ms=a.event_time_ms,
        clicked=a.clicked,
        dwell_seconds=a.dwell_seconds,
        skipped=a.skipped,
        predicted_relevance=a.predicted_relevance,
        behavior_propensity=a.behavior_propensity,
        reward=a.reward,
        weights_version=a.weights_version,
        return_=g,
        **extra,
    )


@dataclass(slots=True)
class KpiTotals:
    """The fields of :class:`SessionKpi`, without the model (one per closed session: the validation
    was a visible share of closing a session; :func:`session_kpi` checks what the model would)."""

    revenue: float
    purchases: int
    return_visits: int
    subscriptions: int
    event_ids: list[str]

    def model(self) -> SessionKpi:
        return SessionKpi(
            revenue=self.revenue,
            purchases=self.purchases,
            return_visits=self.return_visits,
            subscriptions=self.subscriptions,
            event_ids=self.event_ids,
        )


def session_kpi(closed: ClosedSession) -> KpiTotals:
    """The session's KPI totals (revenue of purchases, counts per kind, the attributed event ids)."""
    kpis = closed.kpis
    if not kpis:
        return KpiTotals(0.0, 0, 0, 0, [])
    purchases = [k for k in kpis if k.kind == "purchase"]
    # float(): the model's int -> float coercion (an empty sum is the int 0)
    totals = KpiTotals(
        revenue=float(sum((k.revenue or 0.0) for k in purchases)),
        purchases=len(purchases),
        return_visits=sum(1 for k in kpis if k.kind == "return_visit"),
        subscriptions=sum(1 for k in kpis if k.kind == "subscription"),
        event_ids=[k.event_id for k in kpis],
    )
    if not math.isfinite(totals.revenue):
        totals.model()  # raises the model's ValidationError, as building the model did
    return totals


@dataclass
class RewardContext:
    gamma: float
    kappa: KappaSchedule
    credit: CreditAssigner
    baseline_alpha: float = 0.05
    priorities: dict[str, float] = field(default_factory=dict)
    kappa_override: float | None = None


@dataclass(slots=True)
class RecordValues:
    """Everything computed for one record (both :func:`build_record` and :func:`record_json` read it)."""

    closed: ClosedSession
    gamma: float
    returns: list[float]
    credits: list[float]
    kpi: KpiTotals
    business_reward: float
    parts: dict[str, float]
    priorities: dict[str, float]
    kappa: float
    blended: float
    baseline: float
    advantage: float
    credit_model: str

    @property
    def weights_versions(self) -> list[int]:
        return sorted({a.weights_version for a in self.closed.actions})


def compute_record(closed: ClosedSession, ctx: RewardContext, baselines: dict[str, float]) -> RecordValues:
    """The record's values; ``baselines`` (segment -> EMA) is the shard's and is updated for revision 0."""
    gamma = ctx.gamma
    actions = closed.actions
    rewards = [a.reward for a in actions]
    returns = discounted_returns(rewards, gamma)
    kpi = session_kpi(closed)
    revenue, subs, visits = kpi.revenue, kpi.subscriptions, kpi.return_visits
    parts = business_parts(
        [(a.request_id or a.event_id, a.position, a.clicked, a.dwell_seconds, a.skipped) for a in actions],
        revenue,
        subs,
        visits,
        ctx.priorities,
    )
    g0 = returns[0] if returns else 0.0
    kappa = ctx.kappa.at(closed.end_ms, ctx.kappa_override)
    blended = clip_reward((1.0 - kappa) * g0 + kappa * parts["value"])
    seg = closed.segment
    base = closed.baseline if closed.revision > 0 and closed.baseline is not None else baselines.get(seg)
    advantage = clip_reward(blended - (base if base is not None else blended))
    if closed.revision == 0:
        baselines[seg] = ema_update(base, blended, ctx.baseline_alpha)
    shares = ctx.credit.shares(actions)
    if len(shares) != len(actions):
        raise ValueError(f"{len(shares)} credit shares for {len(actions)} steps")
    return RecordValues(
        closed=closed,
        gamma=gamma,
        returns=returns,
        credits=[sh * advantage for sh in shares],
        kpi=kpi,
        business_reward=business_reward(revenue, subs, visits),
        parts=parts,
        priorities={**ctx.priorities},
        kappa=kappa,
        blended=blended,
        baseline=base if base is not None else blended,
        advantage=advantage,
        credit_model=ctx.credit.name,
    )


def record_model(v: RecordValues, tuner: SessionTuner | None = None) -> SessionRecord:
    """The validated :class:`SessionRecord` (the schema; ``tuner`` set only when given)."""
    closed, parts = v.closed, v.parts
    steps = [
        session_step(a, g, credit=c, request_id=a.request_id)
        for a, g, c in zip(closed.actions, v.returns, v.credits, strict=True)
    ]
    rec = SessionRecord(
        session_key=closed.session_key,
        user_id=closed.user_id,
        segment=closed.segment,
        start_ms=closed.start_ms,
        end_ms=closed.end_ms,
        closed_at_ms=closed.closed_at_ms,
        n_steps=len(steps),
        gamma=v.gamma,
        steps=steps,
        discounted_return=v.returns[0] if v.returns else 0.0,
        kpi=v.kpi.model(),
        business_reward=v.business_reward,
        weights_versions=v.weights_versions,
        revision=closed.revision,
        business=SessionBusiness(
            revenue=parts["revenue"],
            ndcg10=parts["ndcg10"],
            engagement=parts["engagement"],
            retention=parts["retention"],
            priorities=v.priorities,
            value=parts["value"],
        ),
        kappa=v.kappa,
        blended_reward=v.blended,
        baseline=v.baseline,
        advantage=v.advantage,
        credit_model=v.credit_model,
    )
    if tuner is not None:
        rec.tuner = tuner
    return rec


def build_record(closed: ClosedSession, ctx: RewardContext, baselines: dict[str, float]) -> SessionRecord:
    """The full record; ``baselines`` (segment -> EMA) is the shard's and is updated for revision 0."""
    return record_model(compute_record(closed, ctx, baselines))


_isfinite = math.isfinite


def _finite(v: RecordValues) -> bool:
    # a sum is finite only if every term is (an overflowing sum merely takes the slow path)
    parts = v.parts
    return _isfinite(
        sum(v.returns)
        + sum(v.credits)
        + v.kpi.revenue
        + v.business_reward
        + parts["revenue"]
        + parts["ndcg10"]
        + parts["engagement"]
        + parts["retention"]
        + parts["value"]
        + sum(v.priorities.values())
        + v.kappa
        + v.blended
        + v.baseline
        + v.advantage
    )


def record_json(v: RecordValues, tuner: SessionTuner | None = None) -> bytes:
    """``record_model(v, tuner).to_json_bytes()``, byte for byte, without building the pydantic models.

    Why: at 10^4 sessions/s the per-step ``model_construct``, the record's validation and its
    serialiser were the largest cost of closing a session. The dict below lists exactly the fields
    ``build_record`` sets, in the models' field order and with their wire names; ``float()`` applies
    the models' int -> float coercion. Anything unusual (no steps, a non-finite number, the gamma out
    of range, an id too long) takes the pydantic path, which raises as before; the tests compare both for many
    sessions."""
    closed, parts, returns, credits = v.closed, v.parts, v.returns, v.credits
    actions = closed.actions
    gamma = v.gamma
    skey = closed.session_key
    if (
        not actions
        or not (0.0 <= gamma <= 1.0)
        or not 0 < len(closed.user_id) <= 256
        or len(skey) > 256
        or not _finite(v)
    ):
        return record_model(v, tuner).to_json_bytes()
    steps = [
        {
            "event_id": a.event_id,
            "item_id": a.item_id,
            "position": a.position,
            "event_time_ms": a.event_time_ms,
            "clicked": a.clicked,
            "dwell_seconds": a.dwell_seconds,
            "skipped": a.skipped,
            "predicted_relevance": a.predicted_relevance,
            "behavior_propensity": a.behavior_propensity,
            "reward": a.reward,
            "weights_version": a.weights_version,
            "return": returns[i],
            "credit": credits[i],
            "request_id": a.request_id,
        }
        for i, a in enumerate(actions)
    ]
    kpi = v.kpi
    d: dict[str, Any] = {
        "session_key": skey,
        "user_id": closed.user_id,
        "segment": closed.segment,
        "start_ms": closed.start_ms,
        "end_ms": closed.end_ms,
        "closed_at_ms": closed.closed_at_ms,
        "n_steps": len(steps),
        "gamma": float(gamma),
        "steps": steps,
        "discounted_return": float(returns[0]),
        "kpi": {
            "revenue": float(kpi.revenue),
            "purchases": kpi.purchases,
            "return_visits": kpi.return_visits,
            "subscriptions": kpi.subscriptions,
            "event_ids": kpi.event_ids,
        },
        "business_reward": float(v.business_reward),
        "weights_versions": v.weights_versions,
        "revision": closed.revision,
        "business": {
            "revenue": float(parts["revenue"]),
            "ndcg10": float(parts["ndcg10"]),
            "engagement": float(parts["engagement"]),
            "retention": float(parts["retention"]),
            "priorities": {k: float(p) for k, p in v.priorities.items()},
            "value": float(parts["value"]),
        },
        "kappa": float(v.kappa),
        "blended_reward": float(v.blended),
        "baseline": float(v.baseline),
        "advantage": float(v.advantage),
        "credit_model": v.credit_model,
    }
    if tuner is not None:
        d["tuner"] = tuner.model_dump(mode="json", exclude_unset=True)
    try:
        return orjson.dumps(d)
    except (TypeError, orjson.JSONEncodeError):  # e.g. a str orjson refuses (lone surrogate)
        return record_model(v, tuner).to_json_bytes()
