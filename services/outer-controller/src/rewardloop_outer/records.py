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

from dataclasses import dataclass, field
from typing import Any

from rewardloop_common.events import RewardEvent, SessionBusiness, SessionKpi, SessionRecord, SessionStep

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


def session_kpi(closed: ClosedSession) -> SessionKpi:
    """The session's KPI totals (revenue of purchases, counts per kind, the attributed event ids)."""
    purchases = [k for k in closed.kpis if k.kind == "purchase"]
    return SessionKpi(
        revenue=sum((k.revenue or 0.0) for k in purchases),
        purchases=len(purchases),
        return_visits=sum(1 for k in closed.kpis if k.kind == "return_visit"),
        subscriptions=sum(1 for k in closed.kpis if k.kind == "subscription"),
        event_ids=[k.event_id for k in closed.kpis],
    )


@dataclass
class RewardContext:
    gamma: float
    kappa: KappaSchedule
    credit: CreditAssigner
    baseline_alpha: float = 0.05
    priorities: dict[str, float] = field(default_factory=dict)
    kappa_override: float | None = None


def build_record(closed: ClosedSession, ctx: RewardContext, baselines: dict[str, float]) -> SessionRecord:
    """The full record; ``baselines`` (segment -> EMA) is the shard's and is updated for revision 0."""
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
    steps = [
        session_step(a, g, credit=sh * advantage, request_id=a.request_id)
        for a, g, sh in zip(actions, returns, shares, strict=True)
    ]
    return SessionRecord(
        session_key=closed.session_key,
        user_id=closed.user_id,
        segment=seg,
        start_ms=closed.start_ms,
        end_ms=closed.end_ms,
        closed_at_ms=closed.closed_at_ms,
        n_steps=len(steps),
        gamma=gamma,
        steps=steps,
        discounted_return=g0,
        kpi=kpi,
        business_reward=business_reward(revenue, subs, visits),
        weights_versions=sorted({a.weights_version for a in actions}),
        revision=closed.revision,
        business=SessionBusiness(
            revenue=parts["revenue"],
            ndcg10=parts["ndcg10"],
            engagement=parts["engagement"],
            retention=parts["retention"],
            priorities={**ctx.priorities},
            value=parts["value"],
        ),
        kappa=kappa,
        blended_reward=blended,
        baseline=base if base is not None else blended,
        advantage=advantage,
        credit_model=ctx.credit.name,
    )
