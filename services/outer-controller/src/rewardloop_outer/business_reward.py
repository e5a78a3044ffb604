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
