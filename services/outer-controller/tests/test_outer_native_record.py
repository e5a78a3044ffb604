"""The native session record (``rewardloop_outer_native.session_record``) against the Python reference
it replaces: :func:`rewardloop_outer.records.compute_record` + :func:`~rewardloop_outer.records.record_json`.

The invariant: for every closed session the native call either returns the reference's bytes (and
the values the engine needs from the record, bit for bit), or returns ``None`` exactly where the
reference raises or takes its pydantic path. Plus the native step-credit histogram against
``prometheus_client.Histogram`` (counts, sum, exposition)."""

from __future__ import annotations

import dataclasses
import math
import random
import struct
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client import metrics as prom_metrics
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from pydantic import ValidationError
from test_outer_fastpaths import TUNERS

import rewardloop_outer_native as native
from rewardloop_common.events import KpiEvent, SessionRecord
from rewardloop_outer import records
from rewardloop_outer.business_reward import DEFAULT_PRIORITIES, KappaSchedule, ema_update
from rewardloop_outer.credit import CreditAssigner, discounted_shares
from rewardloop_outer.fastevents import Action, Kpi, _fast_action
from rewardloop_outer.native_record import NativeHistogram
from rewardloop_outer.records import RewardContext, compute_record, record_json
from rewardloop_outer.session_window import ClosedSession
from rewardloop_outer.tradeoff import TradeoffTracker

T0 = 1_763_888_400_000
# the step_credit histogram of metrics.py
CREDIT_NAME = "rewardloop_outer_step_credit"
CREDIT_DOC = "Per-step credit (share x session advantage) written into recsys.sessions."
CREDIT_BUCKETS = (-2, -1, -0.5, -0.2, -0.05, 0, 0.05, 0.2, 0.5, 1, 2)

ODD_CHARS = ['"', "\\", "\x01", "\x1f", "\t", "\b", "\f", "/", "é", "ß", "😀", "\u2028", "\x7f", "中", "<"]


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


def rand_id(rng: random.Random, prefix: str) -> str:
    if rng.random() < 0.25:
        return prefix + "".join(rng.choice(ODD_CHARS) for _ in range(rng.randint(1, 4)))
    return f"{prefix}{rng.randrange(10**6)}"


def rand_float(rng: random.Random, kind: str, wild: bool) -> float | int:
    """A value for a reward (signed) or a dwell (>= 0): usual, zeros, ints, tiny and (``wild``) huge ones."""
    r = rng.random() if wild else rng.random() * 0.9
    if kind == "reward":
        if r < 0.5:
            return rng.uniform(-1.5, 1.5)
        if r < 0.6:
            return rng.choice([0.0, -0.0, 0, 1, -3, 5, -5])
        if r < 0.8:
            return rng.uniform(-50, 50)
        if r < 0.9:
            return rng.choice([1e6, -1e6, 123456.789, 1e-300, -2.5e-7, 7e15, 1e16])
        return rng.choice([1e200, -1e200, 1.7e308, -1.7e308, 5e307])
    if r < 0.3:
        return rng.choice([0.0, 0, 1, 30, 299.5, 300.0])
    if r < 0.8:
        return rng.uniform(0, 400)
    if r < 0.95:
        return rng.choice([0.001, 1e-9, 86400.0, 1e9, 3.5e15])
    return rng.choice([1e300, 1.7e308])


def make_action(
    rng: random.Random,
    user: str,
    seg: str,
    t: int,
    request_ids: list[str],
    eids: list[str],
    wild: bool = False,
) -> bytes:
    eid = rand_id(rng, "e")
    eids.append(eid)
    r = rng.random()
    if r < 0.3:
        rid = ""
    elif r < 0.4 and eids:
        rid = rng.choice(eids)  # a request id that is another step's event id: one slate
    else:
        rid = rng.choice(request_ids)
    reward = rand_float(rng, "reward", wild)
    d: dict[str, Any] = {
        "event_id": eid,
        "request_id": rid,
        "user_id": user,
        "session_id": f"s-{user}",
        "item_id": rand_id(rng, "i"),
        "position": rng.choice([0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 25, 1000]),
        "event_time_ms": t,
        "clicked": rng.random() < 0.4,
        "dwell_seconds": rand_float(rng, "dwell", wild),
        "skipped": rng.random() < 0.25,
        "predicted_relevance": rng.choice([0, 1, 0.0, 1.0, 0.5, rng.random()]),
        "behavior_propensity": rng.choice([1, 1.0, 0.5, 0.01, rng.uniform(0.001, 1)]),
        "segment": seg,
        "reward": reward,
        "raw_reward": reward,
        "parts": {"click": 0.5, "dwell": 0.25, "skip": 0, "relevance": -0.1},
        "weights_version": rng.choice([0, 1, 2, 3, 7, 12]),
        "scored_at_ms": t + 1,
    }
    if rng.random() < 0.2:
        d["explore_action"] = rng.randrange(5)
        d["explore_probability"] = rng.choice([1, 0.2, 0.05])
        d["exploration_version"] = rng.randint(1, 4)
    return orjson.dumps(d)


def make_kpi(rng: random.Random, user: str, t: int, big: bool) -> tuple[KpiEvent, bytes]:
    kind = rng.choice(["purchase", "purchase", "return_visit", "subscription"])
    revenue: float | int | None = None
    if kind == "purchase":
        revenue = rng.choice([rng.uniform(0.01, 500), 1, 19.99, 1e6, 1e-9]) if not big else 1.2e308
    elif rng.random() < 0.3:
        revenue = rng.choice([0.0, 3.5])  # revenue on other kinds: not counted
    d = {
        "event_id": rand_id(rng, "k"),
        "user_id": user,
        "kind": kind,
        "event_time_ms": t,
        "revenue": revenue,
        "received_at_ms": t + 5,
    }
    ev = KpiEvent.model_validate(d)
    return ev, orjson.dumps(ev.model_dump(mode="json"))


class FixedShares:
    """A credit model with given shares (the gated-attention model's place in compute_record)."""

    def __init__(self, shares: list[float], name: str) -> None:
        self._shares, self.name = shares, name

    def shares(self, _actions: Any) -> list[float]:
        return list(self._shares)


class Scenario:
    """One closed session, as the Python window and the native one hand it out, and a reward context."""

    def __init__(self, rng: random.Random, n: int) -> None:
        self.user = rand_id(rng, "u") if rng.random() < 0.9 else "u" * rng.choice([200, 240, 256])
        self.seg = rng.choice(["default", "mobile", 'dé"sk', ""]) or "default"
        start = T0 + rng.randrange(10**9)
        request_ids = [rand_id(rng, "r") for _ in range(rng.randint(1, 4))]
        eids: list[str] = []
        wild = rng.random() < 0.08  # huge rewards and dwells
        self.raws = [
            make_action(rng, self.user, self.seg, start + 1000 * i, request_ids, eids, wild) for i in range(n)
        ]
        big_kpi = rng.random() < 0.01
        kpis = [
            make_kpi(rng, self.user, start + 500 * i, big_kpi) for i in range(rng.choice([0, 0, 1, 2, 5]))
        ]
        self.revision = rng.choice([0, 0, 1, 2])
        self.key_ms = rng.choice([0, start, start - 5000])
        self.baseline = rng.choice([None, rng.uniform(-5, 5), 0.0]) if self.revision else None
        self.tuner = rng.choice(TUNERS)
        tuner_dict = None
        if self.revision and self.tuner is not None:
            tuner_dict = self.tuner.model_dump(mode="json", exclude_unset=True)
        end, closed_at = start + 1000 * n, start + 1000 * n + 60_000
        actions = []
        for raw in self.raws:
            d = orjson.loads(raw)
            assert _fast_action(d, raw) is not None  # a valid event of the common shape
            actions.append(Action(d, raw))
        self.py = ClosedSession(
            self.user,
            self.seg,
            start,
            end,
            closed_at,
            actions,
            [Kpi(ev, raw) for ev, raw in kpis],
            self.revision,
            self.key_ms,
            self.baseline,
            tuner_dict,
        )
        self.native = native.closed_for_tests(
            self.user,
            self.seg,
            start,
            end,
            closed_at,
            self.raws,
            [(ev.event_id, ev.user_id, ev.kind, ev.event_time_ms, ev.revenue, raw) for ev, raw in kpis],
            self.revision,
            self.key_ms,
            self.baseline,
            None if tuner_dict is None else orjson.dumps(tuner_dict),
        )
        # the reward context
        self.gamma: float = rng.choice([0.0, 1.0, 0.95, 0.99, 0.5, rng.random(), 0, 1])
        k0, k1 = rng.random(), rng.choice([0.0, 1.0, rng.random()])
        override = rng.choice([None, None, 0.3, 1, 0, 1.5, -0.2])
        kappa = KappaSchedule(k0, k1, rng.choice([1, 3_600_000, 10**9]), rng.choice([0, T0, start]))
        pr: dict[str, float] = rng.choice(
            [
                {},
                dict(DEFAULT_PRIORITIES),
                {"revenue": 2, "ndcg10": 0.5, "engagement": 0, "retention": 1.0},  # ints too
                {"engagement": 3.25},
                {"ndcg10": 1.0, "custom": 7.5, "revenue": -0.5},  # a key outside the defaults
                {"revenue": -1.0, "ndcg10": -0.5, "engagement": -0.25, "retention": -2},
                {"retention": rng.uniform(-2, 2), "revenue": rng.uniform(0, 3), "ndcg10": rng.random()},
            ]
        )
        credit: Any = CreditAssigner(self.gamma)
        self.shares: list[float] | None = None
        if rng.random() < 0.3:
            w = [rng.uniform(0.01, 1) for _ in range(n)]
            s = sum(w)
            self.shares = [x / s for x in w]
            credit = FixedShares(self.shares, "gated-attention:v3")
        self.ctx = RewardContext(
            self.gamma,
            kappa,
            credit,
            baseline_alpha=rng.choice([0.05, 0.3]),
            priorities=pr,
            kappa_override=override,
        )
        self.baselines: dict[str, float] = {}
        if rng.random() < 0.7:
            self.baselines[self.seg] = rng.choice([0.0, rng.uniform(-5, 5), rng.uniform(-1, 1)])
        if rng.random() < 0.2:
            self.baselines["other"] = 1.0

    def base(self) -> float | None:
        c = self.py
        return c.baseline if c.revision > 0 and c.baseline is not None else self.baselines.get(c.segment)

    def run_native(self, hist: Any = None) -> Any:
        c, ctx = self.py, self.ctx
        return native.session_record(
            self.native,
            ctx.gamma,
            ctx.kappa.at(c.end_ms, ctx.kappa_override),
            list(ctx.priorities.items()),
            self.base(),
            self.shares,
            ctx.credit.name,
            None
            if self.tuner is None
            else orjson.dumps(self.tuner.model_dump(mode="json", exclude_unset=True)),
            hist,
        )


class NanKappa:
    def at(self, _t_ms: int, _override: float | None = None) -> float:
        return math.nan


class PydanticSpy:
    """Counts record_json's calls of its pydantic path (``record_model``)."""

    def __init__(self) -> None:
        self.calls = 0
        self._orig = records.record_model

    def __call__(self, *a: Any, **k: Any) -> SessionRecord:
        self.calls += 1
        return self._orig(*a, **k)


class PointSpy:
    """The trade-off point ``TradeoffTracker.add_steps`` computes (its ``add_point`` arguments)."""

    def add_point(self, *args: Any) -> None:
        self.args = args


def reference(s: Scenario, spy: PydanticSpy) -> tuple[str, Any]:
    """("raises", exc) | ("pydantic", bytes) | ("fast", (bytes, values, baselines after))."""
    baselines = dict(s.baselines)
    before = spy.calls
    try:
        v = compute_record(s.py, s.ctx, baselines)
        out = record_json(v, s.tuner)
    except (ValidationError, ValueError, OverflowError) as exc:
        return "raises", exc
    if spy.calls != before:
        return "pydantic", out
    return "fast", (out, v, baselines)


def check(s: Scenario, spy: PydanticSpy, hist: Any, ref_hist: Histogram) -> str:
    kind, ref = reference(s, spy)
    got = s.run_native(hist)
    if kind != "fast":
        assert got is None, (kind, ref, s.raws[:2])
        return kind
    assert got is not None, s.raws
    want, v, baselines = ref
    data, blended, baseline, value, breward, clicks, dwell, max_wv = got
    assert data == want
    assert bits(blended) == bits(v.blended)
    assert bits(baseline) == bits(v.baseline)
    assert bits(value) == bits(v.parts["value"])
    assert bits(breward) == bits(v.business_reward)
    p = PointSpy()
    TradeoffTracker.add_steps(p, s.py.actions, s.py.actions[0], v.parts["value"])  # type: ignore[arg-type]
    assert (max_wv, clicks, dwell) == (p.args[0], p.args[2], p.args[3])
    assert bits(dwell) == bits(p.args[3]) and type(clicks) is float and type(max_wv) is int
    # the caller moves the EMA with what it got back, as compute_record does for revision 0
    if s.py.revision == 0:
        assert bits(ema_update(s.base(), blended, s.ctx.baseline_alpha)) == bits(baselines[s.py.segment])
    for c in v.credits:
        ref_hist.observe(c)
    return kind


def hist_state(h: Histogram) -> tuple[list[float], float, float]:
    samples = {(x.name, x.labels.get("le")): x.value for m in h.collect() for x in m.samples}
    les = [k[1] for k in samples if k[0].endswith("_bucket")]
    return (
        [samples[(h._name + "_bucket", le)] for le in les],
        h._sum.get(),
        samples[(h._name + "_count", None)],
    )


@pytest.mark.parametrize("seed", range(6))
def test_native_record_equals_the_reference(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = PydanticSpy()
    monkeypatch.setattr(records, "record_model", spy)
    rng = random.Random(1000 + seed)
    hist = native.CreditHistogram(list(CREDIT_BUCKETS))
    ref_hist = Histogram("h", "h", buckets=CREDIT_BUCKETS, registry=CollectorRegistry())
    kinds: dict[str, int] = {}
    for i in range(500):
        n = rng.randint(1, 40) if i % 100 else rng.choice([600, 601])
        k = check(Scenario(rng, n), spy, hist, ref_hist)
        kinds[k] = kinds.get(k, 0) + 1
    # the usual sessions are native; the odd ones (huge rewards, kappa or priorities, overflowing
    # revenue) go to Python, as the reference's own paths decide
    assert kinds["fast"] > 350, kinds
    assert kinds.get("raises", 0) > 0 and kinds.get("pydantic", 0) > 0, kinds
    cum, total, count = hist.snapshot()
    ref_cum, ref_total, ref_count = hist_state(ref_hist)
    assert [float(c) for c in cum] == ref_cum and float(count) == ref_count
    assert bits(total) == bits(ref_total)


def _simple(n: int = 3, user: str = "u1", gamma: float = 0.9, **over: Any) -> tuple[Scenario, PydanticSpy]:
    rng = random.Random(7)
    s = Scenario.__new__(Scenario)
    t = T0
    raws = []
    for i in range(n):
        d = orjson.loads(make_action(rng, "u1", "default", t + i, ["r1"], []))  # (the closed user may be odd)
        d.update(reward=0.5, dwell_seconds=3.0)
        raws.append(orjson.dumps(d))
    s.raws, s.user, s.seg, s.tuner, s.shares = raws, user, "default", None, None
    acts = [Action(orjson.loads(r), r) for r in raws]
    s.py = ClosedSession(user, "default", t, t + n, t + n + 1, acts, [], 0, 0, None, None)
    s.native = native.closed_for_tests(user, "default", t, t + n, t + n + 1, raws, [], 0, 0, None, None)
    s.gamma = gamma
    s.ctx = RewardContext(gamma, KappaSchedule(0.5, 0.5, 1), CreditAssigner(gamma), priorities={})
    s.baselines = {}
    for k, v in over.items():
        setattr(s, k, v)
    return s, PydanticSpy()


def _expect_none(s: Scenario, spy: PydanticSpy, want: str) -> None:
    kind, _ = reference(s, spy)
    assert kind == want
    assert s.run_native() is None


def test_the_python_paths_return_none(monkeypatch: pytest.MonkeyPatch) -> None:
    s, spy = _simple()
    monkeypatch.setattr(records, "record_model", spy)
    # the plain session is native
    kind, ref = reference(s, spy)
    assert kind == "fast" and s.run_native()[0] == ref[0]
    # no actions: the model rejects n_steps=0
    s.py = dataclasses.replace(s.py, actions=[])
    s.native = native.closed_for_tests("u1", "default", T0, T0, T0, [], [], 0, 0, None, None)
    _expect_none(s, spy, "raises")
    # gamma outside [0, 1] (and NaN): discounted_returns raises
    for g in (1.5, -0.1, math.nan):
        s, _ = _simple(gamma=g)
        _expect_none(s, spy, "raises")
    # ids: empty user, a user id over 256 code points, a session key over 256
    for user in ("", "ü" * 257, "u" * 250):
        s, _ = _simple(user=user)
        _expect_none(s, spy, "raises")
    s, _ = _simple(user="ü" * 240)  # 240 code points (480 bytes): fine, and native
    assert reference(s, spy)[0] == "fast" and s.run_native() is not None
    # a non-finite priority, kappa or baseline: the model rejects the record
    s, _ = _simple()
    s.ctx.priorities = {"revenue": math.inf}
    _expect_none(s, spy, "raises")
    s, _ = _simple()
    assert s.run_native() is not None
    s.ctx.kappa = NanKappa()  # (KappaSchedule refuses NaN) a NaN kappa: the model rejects the record
    _expect_none(s, spy, "raises")
    s, _ = _simple()
    s.baselines = {"default": math.nan}
    _expect_none(s, spy, "raises")
    # finite values whose sum overflows: record_json takes the model's path (which accepts them)
    s, _ = _simple()
    s.ctx.priorities = {"revenue": 1e308, "ndcg10": 1e308}
    _expect_none(s, spy, "pydantic")
    # the wrong number of shares: compute_record raises
    s, _ = _simple(shares=[0.5, 0.5])
    s.ctx.credit = FixedShares([0.5, 0.5], "gated-attention:v1")
    _expect_none(s, spy, "raises")


def test_overflowing_revenue_and_returns_take_the_python_path(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = PydanticSpy()
    monkeypatch.setattr(records, "record_model", spy)
    # steps of 1.7e308 with gamma 0: every return is finite, their sum is not -- the model's path
    s, _ = _simple(n=2, gamma=0.0)
    raws = [orjson.dumps(orjson.loads(r) | {"reward": 1.7e308}) for r in s.raws]
    s.py = dataclasses.replace(s.py, actions=[Action(orjson.loads(r), r) for r in raws])
    s.native = native.closed_for_tests("u1", "default", T0, T0 + 2, T0 + 3, raws, [], 0, 0, None, None)
    _expect_none(s, spy, "pydantic")
    # two purchases of 1.2e308: the revenue sums to inf, session_kpi raises the model's error
    u = "u9"
    evs = [
        KpiEvent.model_validate(
            {"event_id": f"k{i}", "user_id": u, "kind": "purchase", "event_time_ms": T0, "revenue": 1.2e308}
            | {"received_at_ms": T0}
        )
        for i in range(2)
    ]
    s, _ = _simple(user=u)
    s.py = dataclasses.replace(s.py, kpis=[Kpi(ev, b"{}") for ev in evs])
    s.native = native.closed_for_tests(
        u, "default", T0, T0 + 3, T0 + 4, s.raws, [(e.event_id, u, e.kind, T0, e.revenue, b"{}") for e in evs]
    )
    _expect_none(s, spy, "raises")


def test_signed_zeros_sum_as_python_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every priority negative and every part 0: the products are -0.0, and sum() gives 0.0 (0 + -0.0)."""
    s, spy = _simple(n=1)
    monkeypatch.setattr(records, "record_model", spy)
    d = orjson.loads(s.raws[0])
    d.update(clicked=False, skipped=False, dwell_seconds=0, reward=-0.0)
    raw = orjson.dumps(d)
    s.raws = [raw]
    s.py = dataclasses.replace(s.py, actions=[Action(d, raw)])
    s.native = native.closed_for_tests("u1", "default", T0, T0 + 1, T0 + 2, [raw], [], 0, 0, None, None)
    s.ctx.priorities = {"revenue": -1.0, "ndcg10": -0.5, "engagement": -0.25, "retention": -2.0}
    kind, (want, v, _) = reference(s, spy)
    assert kind == "fast" and bits(v.parts["value"]) == bits(0.0)
    assert s.run_native()[0] == want


def test_business_reward_and_kpis(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short sessions with many KPI mixes (revenue, visits, subscriptions below the clip)."""
    spy = PydanticSpy()
    monkeypatch.setattr(records, "record_model", spy)
    rng = random.Random(21)
    hist = native.CreditHistogram(list(CREDIT_BUCKETS))
    ref_hist = Histogram("h", "h", buckets=CREDIT_BUCKETS, registry=CollectorRegistry())
    unclipped = 0
    for i in range(1500):
        s, _ = _simple(n=rng.randint(1, 3))
        evs = []
        for j in range(rng.randint(1, 4)):
            kind = rng.choice(["purchase", "return_visit", "subscription"])
            rev = rng.choice([rng.uniform(0.01, 60), rng.random(), 0.5, 3]) if kind == "purchase" else None
            evs.append(
                KpiEvent.model_validate(
                    {"event_id": f"k{i}.{j}", "user_id": "u1", "kind": kind, "event_time_ms": T0}
                    | {"revenue": rev, "received_at_ms": T0}
                )
            )
        s.py = dataclasses.replace(s.py, kpis=[Kpi(ev, b"{}") for ev in evs])
        s.native = native.closed_for_tests(
            "u1",
            "default",
            T0,
            s.py.end_ms,
            s.py.closed_at_ms,
            s.raws,
            [(e.event_id, "u1", e.kind, T0, e.revenue, b"{}") for e in evs],
            0,
            0,
            None,
            None,
        )
        s.ctx.kappa_override = rng.random()
        assert check(s, spy, hist, ref_hist) == "fast"
        v = compute_record(s.py, s.ctx, {})
        unclipped += abs(v.business_reward) < 5.0
    assert unclipped > 800


def test_discounted_shares_are_the_references() -> None:
    rng = random.Random(5)
    for n in [*range(0, 45), 600, 1000]:
        for g in [0.0, 1.0, 0.5, 0.95, 0.99, 1e-300, rng.random(), rng.random()]:
            assert [bits(x) for x in native.discounted_shares(n, g)] == [
                bits(x) for x in discounted_shares(n, g)
            ]


def test_closed_for_tests_refuses_what_the_native_parser_does_not_take() -> None:
    with pytest.raises(ValueError, match="action 0"):
        native.closed_for_tests("u", "s", 1, 2, 3, [b'{"event_id": 1}'], [], 0, 0, None, None)


def test_credit_histogram_counts_as_prometheus() -> None:
    rng = random.Random(9)
    h = native.CreditHistogram([float(b) for b in CREDIT_BUCKETS])
    assert h.buckets == [*map(float, CREDIT_BUCKETS), math.inf]
    ref = Histogram("h", "h", buckets=CREDIT_BUCKETS, registry=CollectorRegistry())
    values = [*CREDIT_BUCKETS, -0.0, math.inf, -math.inf, 1e300, -1e-300, 2.0000001]
    values += [rng.uniform(-3, 3) for _ in range(3000)] + [rng.choice(CREDIT_BUCKETS) for _ in range(200)]
    for x in values:
        h.observe(x)
        ref.observe(x)
    cum, total, count = h.snapshot()
    ref_cum, ref_total, ref_count = hist_state(ref)
    assert [float(c) for c in cum] == ref_cum and float(count) == ref_count == len(values)
    assert math.isnan(total) and math.isnan(ref_total)  # inf + -inf, as prometheus_client sums it
    h2 = native.CreditHistogram([0.5, 1.0, math.inf])
    ref2 = Histogram("h2", "h", buckets=[0.5, 1.0], registry=CollectorRegistry())
    for x in [0.1, 0.5, 0.7, 3.0, math.nan]:  # NaN: in no bucket, but in the sum
        h2.observe(x)
        ref2.observe(x)
    cum2, total2, count2 = h2.snapshot()
    assert [float(c) for c in cum2] == hist_state(ref2)[0] == [2.0, 3.0, 4.0] and count2 == 4
    assert math.isnan(total2) and math.isnan(ref2._sum.get())
    for bad in ([], [math.inf], [1.0, 0.5], [0.0, math.nan]):
        with pytest.raises(ValueError):
            native.CreditHistogram(bad)


@pytest.mark.parametrize(
    ("name", "doc", "buckets"),
    [
        (CREDIT_NAME, CREDIT_DOC, CREDIT_BUCKETS),
        ("x_seconds", "Non-negative bounds: with _sum.", (0.1, 1, 10)),
    ],
)
@pytest.mark.parametrize("created", [True, False])
def test_the_collector_exposes_what_histogram_does(name: str, doc: str, buckets: Any, created: bool) -> None:
    rng = random.Random(11)
    r1, r2 = CollectorRegistry(), CollectorRegistry()
    if not created:
        prom_metrics.disable_created_metrics()
    try:
        ref = Histogram(name, doc, buckets=buckets, registry=r1)
        col = NativeHistogram(name, doc, buckets, registry=r2)
        col.created = ref._created
        assert generate_latest(r1) == generate_latest(r2)  # empty
        for _ in range(500):
            x = rng.uniform(-3, 12)
            ref.observe(x)
            col.observe(x)
        col.native.observe(0.25)  # the hot path's way in
        ref.observe(0.25)
        assert generate_latest(r1) == generate_latest(r2)
        assert generate_openmetrics(r1) == generate_openmetrics(r2)
    finally:
        prom_metrics.enable_created_metrics()
    # the names are taken: a second metric of that name is refused, as for Histogram
    with pytest.raises(ValueError, match="Duplicated"):
        Histogram(name, doc, registry=r2)


def test_session_record_feeds_the_histogram_only_when_it_returns_a_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s, spy = _simple(n=4)
    h = native.CreditHistogram(list(CREDIT_BUCKETS))
    out = s.run_native(h)
    assert out is not None
    v = compute_record(s.py, s.ctx, {})
    ref = Histogram("h", "h", buckets=CREDIT_BUCKETS, registry=CollectorRegistry())
    for c in v.credits:
        ref.observe(c)
    assert [float(c) for c in h.snapshot()[0]] == hist_state(ref)[0] and h.snapshot()[2] == 4
    s.ctx.priorities = {"revenue": math.inf}
    assert s.run_native(h) is None
    assert h.snapshot()[2] == 4
