"""Promotion of a candidate policy: off-policy value (SNIPS + DR with intervals) and KL to the behaviour.

``evaluate_candidate`` takes held-out logged decisions (reward, the candidate's and the behaviour policy's
probability of the logged action, and a reward model's ``q̂``), the candidate's KL to the behaviour policy,
and returns both estimates plus ``ope.promotion_gate``'s decision: promote only when the gating estimate's
*lower* confidence bound beats the behaviour policy's value and ``KL(candidate ‖ behaviour) <= kl_max``.
DR gates by default: where q̂ explains part of the reward, its variance is below SNIPS's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from rewardloop_trainer.ope import Estimate, PromotionDecision, doubly_robust, promotion_gate, snips


@dataclass(frozen=True)
class CandidateEvaluation:
    snips: Estimate
    dr: Estimate
    kl: float
    decision: PromotionDecision

    @property
    def promote(self) -> bool:
        return self.decision.promote


def mean_kl(candidate_logp: np.ndarray, behaviour_logp: np.ndarray) -> float:
    """Mean over contexts of ``KL(π_cand(·|x) ‖ π_β(·|x))`` from (contexts, actions) log-probabilities."""
    lc = np.asarray(candidate_logp, dtype=np.float64)
    lb = np.asarray(behaviour_logp, dtype=np.float64)
    if lc.ndim != 2 or lc.shape != lb.shape or lc.shape[0] == 0:
        raise ValueError(f"need two equal, non-empty (contexts, actions) arrays, got {lc.shape}, {lb.shape}")
    pc = np.exp(lc)
    sums = np.concatenate([pc.sum(axis=1), np.exp(lb).sum(axis=1)])
    if not np.allclose(sums, 1.0, atol=1e-6):
        raise ValueError("each row must be a normalised log-probability distribution")
    # 0·log 0 = 0: actions the candidate never takes contribute nothing, whatever the behaviour does
    with np.errstate(invalid="ignore"):  # -inf - -inf where neither takes the action: masked out below
        terms = np.where(pc > 0, pc * (lc - lb), 0.0)
    return float(terms.sum(axis=1).mean())


def evaluate_candidate(
    rewards: np.ndarray | list[float],
    target_prob: np.ndarray | list[float],
    behaviour_prob: np.ndarray | list[float],
    q_logged: np.ndarray | list[float],
    v_target: np.ndarray | list[float],
    *,
    kl: float,
    kl_max: float,
    behaviour_value: float | None = None,
    cap: float | None = None,
    gate_on: Literal["dr", "snips"] = "dr",
    level: float = 0.95,
) -> CandidateEvaluation:
    """SNIPS and DR (normal intervals at ``level``) of the candidate on the logged decisions, and the gate.

    ``behaviour_value`` defaults to the logged rewards' mean (the behaviour policy's on-policy value on the
    same decisions). ``q_logged`` = q̂(x_i, a_i), ``v_target`` = E_{a~π_cand}[q̂(x_i, a)]."""
    if kl_max <= 0:
        raise ValueError("kl_max must be > 0")
    r = np.asarray(rewards, dtype=np.float64)
    s = snips(r, target_prob, behaviour_prob, cap=cap, level=level)
    d = doubly_robust(r, target_prob, behaviour_prob, q_logged, v_target, cap=cap, level=level)
    base = float(r.mean()) if behaviour_value is None else float(behaviour_value)
    gate = promotion_gate(d if gate_on == "dr" else s, base, kl, kl_max)
    return CandidateEvaluation(s, d, float(kl), gate)
