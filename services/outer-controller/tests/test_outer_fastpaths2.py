"""The second round of hot-path shortcuts against what they replace, value for value: the open-session
queue (vs one ``heapq``), the business parts and NDCG (vs the previous formulas, bit for bit) and the
KPI totals (vs ``SessionKpi``)."""

from __future__ import annotations

import heapq
import math
import random

import pytest
from pydantic import ValidationError
from test_outer_fastpaths import closed_sessions

from rewardloop_common.events import SessionKpi
from rewardloop_outer.business_reward import (
    DEFAULT_PRIORITIES,
    DWELL_NORM,
    RETURN_VISIT_WEIGHT,
    REWARD_MAX,
    REWARD_MIN,
    SUBSCRIPTION_WEIGHT,
    business_parts,
    ndcg_at_k,
)
from rewardloop_outer.records import session_kpi
from rewardloop_outer.session_window import ClosedSession, DueQueue


def test_the_due_queue_pops_in_heap_order() -> None:
    rng = random.Random(3)
    for _ in range(50):
        q = DueQueue()
        ref: list[tuple[int, str]] = []  # one heapq over the same entries
        t = 1_000
        for _ in range(400):
            if rng.random() < 0.6:
                t += rng.choice([0, 0, 1, 5, 20])  # mostly increasing, with ties
                key = t - (rng.randrange(40) if rng.random() < 0.2 else 0)  # some out of order
                user = f"u{rng.randrange(8)}"
                q.push(key, user)
                heapq.heappush(ref, (key, user))
            elif ref:
                clock, gap = t + rng.randrange(30), 10
                assert q.due(clock, gap) == (clock - ref[0][0] > gap)
                assert q.pop() == heapq.heappop(ref)
            assert len(q) == len(ref)
        assert [q.pop() for _ in range(len(q))] == [heapq.heappop(ref) for _ in range(len(ref))]
        assert not q.due(10**9, 0)


# --- the formulas before the round (business_reward.py at commit 29a2edb), kept as the reference


def _ref_gain(clicked: bool, dwell: float, skipped: bool) -> float:
    if skipped:
        return 0.0
    return (1.0 if clicked else 0.0) + math.log1p(max(0.0, dwell)) / DWELL_NORM


def _ref_ndcg(gains: list[tuple[int, float]], k: int = 10) -> float:
    ranked = sorted(gains)
    dcg = sum(g / math.log2(i + 2) for i, (_, g) in enumerate(ranked[:k]))
    ideal = sorted((g for _, g in ranked), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def _ref_parts(
    steps: list[tuple[str, int, bool, float, bool]],
    revenue: float,
    subs: int,
    visits: int,
    pr: dict[str, float],
) -> dict[str, float]:
    pr = {**DEFAULT_PRIORITIES, **pr}
    slates: dict[str, list[tuple[int, float]]] = {}
    eng = 0.0
    for slate, pos, clicked, dwell, skipped in steps:
        slates.setdefault(slate, []).append((pos, _ref_gain(clicked, dwell, skipped)))
        eng += _ref_gain(clicked, dwell, False) - (0.5 if skipped else 0.0)
    parts = {
        "revenue": math.log1p(max(0.0, float(revenue))),
        "ndcg10": sum(_ref_ndcg(v) for v in slates.values()) / len(slates) if slates else 0.0,
        "engagement": eng / len(steps) if steps else 0.0,
        "retention": RETURN_VISIT_WEIGHT * visits + SUBSCRIPTION_WEIGHT * subs,
    }
    value = sum(pr[k] * parts[k] for k in DEFAULT_PRIORITIES)
    parts["value"] = min(REWARD_MAX, max(REWARD_MIN, value))
    return parts


def test_business_parts_and_ndcg_are_the_previous_formulas_bit_for_bit() -> None:
    rng = random.Random(5)
    for _ in range(2000):
        n = rng.randrange(0, 30)
        steps = [
            (
                f"r{rng.randrange(4)}",
                rng.randrange(15),
                rng.random() < 0.4,
                rng.choice([0.0, 0.0, rng.random() * 300, rng.random() * 1e6]),
                rng.random() < 0.2,
            )
            for _ in range(n)
        ]
        pr = {"revenue": rng.random() * 3, "ndcg10": rng.random()} if rng.random() < 0.5 else {}
        args = (rng.random() * 100, rng.randrange(3), rng.randrange(3))
        assert business_parts(steps, *args, pr) == _ref_parts(steps, *args, pr)
        gains = [(p, 0.0 if sk else rng.random()) for _, p, _, _, sk in steps]
        for k in (1, 3, 10, 12):
            assert ndcg_at_k(gains, k) == _ref_ndcg(gains, k)


def test_kpi_totals_are_the_session_kpi_model() -> None:
    sessions = closed_sessions(11)
    assert sum(1 for c in sessions if c.kpis) >= 10
    for c in sessions:
        purchases = [k for k in c.kpis if k.kind == "purchase"]
        want = SessionKpi(
            revenue=sum((k.revenue or 0.0) for k in purchases),
            purchases=len(purchases),
            return_visits=sum(1 for k in c.kpis if k.kind == "return_visit"),
            subscriptions=sum(1 for k in c.kpis if k.kind == "subscription"),
            event_ids=[k.event_id for k in c.kpis],
        )
        got = session_kpi(c)
        assert got.model() == want
        assert type(got.revenue) is float and got.revenue == want.revenue


def test_kpi_totals_reject_what_the_model_rejects() -> None:
    c = next(c for c in closed_sessions(11) if any(k.kind == "purchase" for k in c.kpis))
    k = next(k for k in c.kpis if k.kind == "purchase")
    k.revenue = 1e308
    big = ClosedSession(**{**c.__dict__, "kpis": [k, k, k]})  # the sum overflows to inf
    with pytest.raises(ValidationError):
        session_kpi(big)
