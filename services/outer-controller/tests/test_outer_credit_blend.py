"""Business reward parts, kappa schedule, EMA baseline and per-step credit (issue #4)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from rewardloop_common.testing import make_kpi_event, make_reward_event
from rewardloop_outer.business_reward import KappaSchedule, business_parts, ema_update, ndcg_at_k
from rewardloop_outer.credit import (
    CHUNK,
    FEATURES,
    CreditAssigner,
    GatedAttentionModel,
    chunks,
    discounted_shares,
)
from rewardloop_outer.records import RewardContext, build_record
from rewardloop_outer.session_window import SessionWindow

T0 = 1_763_888_400_000


def test_ndcg_and_parts() -> None:
    assert ndcg_at_k([(0, 1.0), (1, 0.0)]) == pytest.approx(1.0)
    assert ndcg_at_k([(0, 0.0), (1, 1.0)]) == pytest.approx(1 / math.log2(3))
    assert ndcg_at_k([(0, 0.0)]) == 0.0
    parts = business_parts([("r1", 0, False, 0.0, True), ("r1", 1, True, 30.0, False)], 19.0, 1, 2)
    assert parts["revenue"] == pytest.approx(math.log(20.0))
    assert parts["retention"] == pytest.approx(2.0)
    assert 0 < parts["ndcg10"] < 1
    want = parts["revenue"] + 0.5 * parts["ndcg10"] + 0.5 * parts["engagement"] + parts["retention"]
    assert parts["value"] == pytest.approx(min(5.0, want))
    only_rev = business_parts([], 5.0, 0, 0, {"revenue": 2.0, "ndcg10": 0, "engagement": 0, "retention": 0})
    assert only_rev["value"] == pytest.approx(2 * math.log(6.0))


def test_kappa_schedule_and_ema() -> None:
    k = KappaSchedule(0.2, 0.8, 1000, anchor_ms=T0)
    assert k.at(T0 - 5) == pytest.approx(0.2) and k.at(T0 + 500) == pytest.approx(0.5)
    assert k.at(T0 + 10_000) == pytest.approx(0.8) and k.at(T0, override=0.9) == 0.9
    assert KappaSchedule(0.2, 0.8, 1000).at(T0 + 10**9) == pytest.approx(0.2)  # no anchor: initial
    assert ema_update(None, 2.0, 0.1) == 2.0 and ema_update(2.0, 4.0, 0.5) == 3.0


def test_discounted_shares_and_chunks() -> None:
    s = discounted_shares(3, 0.5)
    assert sum(s) == pytest.approx(1.0) and s == pytest.approx([1 / 7, 2 / 7, 4 / 7])
    assert discounted_shares(2, 0.0) == [0.0, 1.0]
    assert chunks(10) == [(0, 10)]
    cs = chunks(1200)
    assert cs[0] == (0, 512) and cs[1] == (448, 960) and cs[-1][1] == 1200
    assert all(b[0] == a[1] - 64 for a, b in zip(cs, cs[1:], strict=False))


def _artefact(path: Path, version: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    d, h, a = len(FEATURES), 8, 4
    f = path / f"credit-model-v{version}.npz"
    np.savez(
        f,
        W_in=rng.normal(size=(d, h)),
        b_in=rng.normal(size=h),
        W_ctx=rng.normal(size=(d, h)),
        V=rng.normal(size=(h, a)),
        b_v=rng.normal(size=a),
        U=rng.normal(size=(h, a)),
        b_u=rng.normal(size=a),
        w=rng.normal(size=a),
        c=np.float64(0.0),
        features=np.array(FEATURES),
    )
    return f


def test_gated_attention_loader_versions_and_fallback(tmp_path: Path) -> None:
    ca = CreditAssigner(0.9, str(tmp_path), reload_every_s=0)
    ca.maybe_reload(1.0)
    assert ca.name == "discounted"  # no artefact yet
    (tmp_path / "credit-model-v3.npz").write_bytes(b"not a zip")  # a broken one is refused
    _artefact(tmp_path, 2)
    ca.maybe_reload(2.0)
    assert ca.name == "gated-attention:v2"
    _artefact(tmp_path, 4)
    ca.maybe_reload(3.0)
    assert ca.name == "gated-attention:v4"
    acts = [make_reward_event(f"e{i}", "u", T0 + i, clicked=i % 3 == 0, reward=0.1 * i) for i in range(1100)]
    shares = ca.shares(acts)
    assert len(shares) == 1100 and sum(shares) == pytest.approx(1.0) and min(shares) > 0
    assert len(CHUNK * [0]) == 512
    m = GatedAttentionModel.load(tmp_path / "credit-model-v4.npz")
    assert m.shares(acts[:5]) == pytest.approx(ca.model.shares(acts[:5]))  # type: ignore[union-attr]


def test_record_has_blend_baseline_and_credit() -> None:
    w = SessionWindow(1000)
    w.add_action(make_reward_event("e1", "u1", T0, request_id="r1", clicked=True, reward=2.0), 0)
    w.add_action(make_reward_event("e2", "u1", T0 + 1, request_id="r1", position=1, reward=1.0), 0)
    w.add_kpi(make_kpi_event("k1", "u1", event_time_ms=T0 + 2, revenue=9.0), 0)
    [closed] = w.close_all(T0 + 5000)
    ctx = RewardContext(gamma=0.5, kappa=KappaSchedule(0.2, 0.8, 1), credit=CreditAssigner(0.5))
    baselines: dict[str, float] = {}
    rec = build_record(closed, ctx, baselines)
    assert rec.discounted_return == pytest.approx(2.5) and rec.kappa == pytest.approx(0.2)
    assert rec.business is not None and rec.business.revenue == pytest.approx(math.log(10))
    assert rec.blended_reward == pytest.approx(0.8 * 2.5 + 0.2 * rec.business.value)
    assert rec.advantage == 0.0 and baselines["default"] == rec.blended_reward  # first: seeds the EMA
    rec2 = build_record(closed, ctx, {"default": 0.0})
    assert rec2.advantage == pytest.approx(rec2.blended_reward)
    credits = [s.credit for s in rec2.steps]
    assert sum(credits) == pytest.approx(rec2.advantage)  # type: ignore[arg-type]
    assert credits == pytest.approx([rec2.advantage / 3, 2 * rec2.advantage / 3])  # type: ignore[operator]
    assert rec2.credit_model == "discounted" and rec2.revision == 0


def test_credit_stats_metrics() -> None:
    from rewardloop_outer.metrics import OuterMetrics

    m = OuterMetrics()
    m.observe_credit("discounted", [0.1, -0.3])
    m.observe_credit("gated-attention:v4", [1.5])
    m.observe_credit(None, [])
    reg = m.registry
    assert reg.get_sample_value("rewardloop_outer_sessions_credited_total", {"model": "discounted"}) == 2
    assert reg.get_sample_value("rewardloop_outer_sessions_credited_total", {"model": "gated-attention"}) == 1
    assert reg.get_sample_value("rewardloop_outer_credit_model_version") == 0  # the last one: discounted
    assert reg.get_sample_value("rewardloop_outer_step_credit_count") == 3
    assert reg.get_sample_value("rewardloop_outer_step_credit_bucket", {"le": "-0.2"}) == 1
