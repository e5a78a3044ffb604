"""Off-policy value of the tuner's weight actions, from the scorer's exploration slice.

The scorer serves a small slice of users with a uniformly drawn weight action and logs the action and its
behaviour probability; the outer controller copies them into each session record (``tuner``, with
``logged=True``). Each session is one logged decision ``(a_i, p_i, r_i)`` with ``r_i`` the business reward.

For every explored action ``a`` with enough sessions this estimates the value of the deterministic
policy "serve everyone with ``a``" (``π(a_i) = 1[a_i = a]``) with SNIPS and IPS, next to the behaviour
policy's on-policy mean, so an operator (and the promotion gate) can see whether any candidate beats the
weights now served. The effective sample size of each candidate's weights says how much to trust it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from rewardloop_common.events import SessionRecord

from .ope import Estimate, ips, snips

BEHAVIOUR = "behaviour"


@dataclass(frozen=True)
class ActionEstimates:
    policy: str  # "behaviour" or "action-<id>"
    sessions: int  # sessions served with this action (all logged sessions for the behaviour)
    estimates: tuple[Estimate, ...]


def logged_decisions(records: Sequence[SessionRecord]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(action id, behaviour probability, business reward) of every session with a logged decision.

    Sessions served by the segment's weights get action ``-1``; sessions without a logged probability
    (no exploration document was active) are left out: their propensity is unknown.
    """
    acts: list[int] = []
    probs: list[float] = []
    rewards: list[float] = []
    for r in records:
        t = r.tuner
        if t is None or not t.logged or not 0.0 < t.propensity <= 1.0:
            continue
        acts.append(-1 if t.explore_action is None else int(t.explore_action))
        probs.append(float(t.propensity))
        rewards.append(float(r.business_reward))
    return np.asarray(acts, dtype=np.int64), np.asarray(probs), np.asarray(rewards)


def estimate_actions(
    records: Sequence[SessionRecord],
    *,
    min_sessions: int = 5,
    max_actions: int = 10,
    cap: float | None = None,
) -> list[ActionEstimates]:
    """The behaviour's on-policy mean and SNIPS/IPS of the ``max_actions`` most served explored actions."""
    out: list[ActionEstimates] = []
    all_rewards = np.asarray([float(r.business_reward) for r in records])
    if all_rewards.size >= 2:
        ones = np.ones_like(all_rewards)
        on_policy = ips(all_rewards, ones, ones)  # weights 1: the plain mean with its normal interval
        on_policy = replace(on_policy, estimator="on_policy")
        out.append(ActionEstimates(BEHAVIOUR, int(all_rewards.size), (on_policy,)))
    acts, probs, rewards = logged_decisions(records)
    if acts.size == 0:
        return out
    counts = Counter(int(a) for a in acts if a >= 0)
    for action, n in counts.most_common(max_actions):
        if n < min_sessions:
            break
        target = (acts == action).astype(np.float64)
        est = (
            snips(rewards, target, probs, cap=cap),
            ips(rewards, target, probs, cap=cap),
        )
        out.append(ActionEstimates(f"action-{action}", n, est))
    return out
