"""The session-level business reward (docs/architecture.md, ``recsys.sessions``)."""

from __future__ import annotations

import math
from typing import Final

REWARD_MIN: Final = -5.0
REWARD_MAX: Final = 5.0
SUBSCRIPTION_WEIGHT: Final = 1.0
RETURN_VISIT_WEIGHT: Final = 0.5


def business_reward(revenue: float, subscriptions: int, return_visits: int) -> float:
    """``clip(ln(1 + revenue) + 1.0 * subscriptions + 0.5 * return_visits, -5, 5)``.

    ``revenue`` is the session's summed purchase revenue (>= 0; negative values are treated as 0).
    """
    revenue = max(0.0, float(revenue))
    raw = math.log1p(revenue) + SUBSCRIPTION_WEIGHT * subscriptions + RETURN_VISIT_WEIGHT * return_visits
    return min(REWARD_MAX, max(REWARD_MIN, raw))


# ------------------------------------------------------------------ the blended business reward (#4)

#: Default KPI priorities (weights of the business parts); re-targetable at runtime through the
#: gateway's ``PUT /v1/kpi-priorities`` (Redis key ``rewardloop:kpi-priorities``).
DEFAULT_PRIORITIES: Final[dict[str, float]] = {
    "revenue": 1.0,
    "ndcg10": 0.5,
    "engagement": 0.5,
    "retention": 1.0,
}
NDCG_K: Final = 10
DWELL_NORM: Final = math.log1p(300.0)  # 5 minutes of dwell = one unit of engagement


def step_gain(clicked: bool, dwell_seconds: float, skipped: bool) -> float:
    """Engagement gain of one served item: click + ln(1+dwell)/ln(301), 0 when skipped (>= 0)."""
    if skipped:
        return 0.0
    return (1.0 if clicked else 0.0) + math.log1p(max(0.0, dwell_seconds)) / DWELL_NORM


def step_engagement(clicked: bool, dwell_seconds: float, skipped: bool) -> float:
    """Signed per-step engagement: the gain, minus 0.5 for a skip."""
    return step_gain(clicked, dwell_seconds, False) - (0.5 if skipped else 0.0)


#: log2(i + 2), the DCG discount of rank i (computed once; the same values as computing them inline)
_DISCOUNTS: Final = tuple(math.log2(i + 2) for i in range(NDCG_K))


def ndcg_at_k(gains_by_position: list[tuple[int, float]], k: int = NDCG_K) -> float:
    """NDCG@k of one served slate from its logged ``(position, gain)`` pairs (0 when no gain)."""
    ranked = sorted(gains_by_position)
    disc = _DISCOUNTS if k == NDCG_K else tuple(math.log2(i + 2) for i in range(k))
    # zip stops at min(len, k): the first k ranks, summed in rank order as before
    dcg = sum([g / d for (_, g), d in zip(ranked, disc, strict=False)])
    ideal = sorted([g for _, g in ranked], reverse=True)
    idcg = sum([g / d for g, d in zip(ideal, disc, strict=False)])
    return dcg / idcg if idcg > 0 else 0.0


def business_parts(
    steps: list[tuple[str, int, bool, float, bool]],
    revenue: float,
    subscriptions: int,
    return_visits: int,
    priorities: dict[str, float] | None = None,
) -> dict[str, float]:
    """The parts and value of the blended business reward of one session.

    ``steps`` are ``(slate_id, position, clicked, dwell_seconds, skipped)``; a slate is the steps that
    share a ``request_id`` (a single action is a slate of one). Returns ``revenue`` = ln(1+revenue),
    ``ndcg10`` = mean NDCG@10 over slates, ``engagement`` = mean signed step engagement,
    ``retention`` = 0.5*return_visits + subscriptions and ``value`` = clip(sum_k p_k * part_k, -5, 5).
    """
    pr = {**DEFAULT_PRIORITIES, **(priorities or {})}
    slates: dict[str, list[tuple[int, float]]] = {}
    eng = 0.0
    for slate, pos, clicked, dwell, skipped in steps:
        # step_gain and step_engagement of the step from one gain (the same arithmetic, one log1p)
        g = step_gain(clicked, dwell, False)
        gains = slates.get(slate)
        if gains is None:
            gains = slates[slate] = []
        if skipped:
            gains.append((pos, 0.0))
            eng += g - 0.5
        else:
            gains.append((pos, g))
            eng += g
    parts = {
        "revenue": math.log1p(max(0.0, float(revenue))),
        "ndcg10": sum([ndcg_at_k(v) for v in slates.values()]) / len(slates) if slates else 0.0,
        "engagement": eng / len(steps) if steps else 0.0,
        "retention": RETURN_VISIT_WEIGHT * return_visits + SUBSCRIPTION_WEIGHT * subscriptions,
    }
    value = sum([pr[k] * parts[k] for k in DEFAULT_PRIORITIES])
    parts["value"] = min(REWARD_MAX, max(REWARD_MIN, value))
    return parts


def clip_reward(x: float) -> float:
    return min(REWARD_MAX, max(REWARD_MIN, x))


class KappaSchedule:
    """kappa (the KPI weight of the blend) annealed linearly in event time:
    ``kappa(t) = k0 + (k1 - k0) * clip((t - anchor_ms) / anneal_ms, 0, 1)``.

    A runtime override (``kappa`` in the KPI priorities) wins when set."""

    def __init__(self, initial: float, final: float, anneal_ms: int, anchor_ms: int = 0) -> None:
        if not (0.0 <= initial <= 1.0 and 0.0 <= final <= 1.0):
            raise ValueError("kappa must be in [0, 1]")
        self.initial, self.final, self.anneal_ms, self.anchor_ms = (
            initial,
            final,
            max(1, anneal_ms),
            anchor_ms,
        )

    def at(self, t_ms: int, override: float | None = None) -> float:
        if override is not None:
            return min(1.0, max(0.0, override))
        frac = min(1.0, max(0.0, (t_ms - self.anchor_ms) / self.anneal_ms)) if self.anchor_ms else 0.0
        return self.initial + (self.final - self.initial) * frac


def ema_update(baseline: float | None, x: float, alpha: float) -> float:
    """Rolling EMA baseline: the first value seeds it."""
    return x if baseline is None else (1.0 - alpha) * baseline + alpha * x
