"""The hot path's shortcuts against the pydantic models they replace: the session record's bytes
(:func:`record_json` vs ``SessionRecord.to_json_bytes``), the reward event's fast parse (vs
``RewardEvent``), the outbox encoding (vs ``json.dumps``) and the GC freeze."""

from __future__ import annotations

import gc
import json
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from outer_streams import K, stream_items
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from test_outer_credit_blend import _artefact

from rewardloop_common.events import KpiEvent, RewardEvent, SessionRecord, SessionTuner
from rewardloop_common.kafka import encode_json
from rewardloop_common.testing import make_reward_event
from rewardloop_outer.business_reward import DEFAULT_PRIORITIES, KappaSchedule
from rewardloop_outer.credit import CreditAssigner
from rewardloop_outer.engine import DurableController, _outbox_batch, _outbox_batch_py, _read_outbox_batch
from rewardloop_outer.fastevents import Action, _fast_action, action_from_model, parse_action
from rewardloop_outer.metrics import OuterMetrics
from rewardloop_outer.records import RewardContext, compute_record, record_json, record_model
from rewardloop_outer.session_window import ClosedSession, SessionWindow
from rewardloop_outer.settings import OuterSettings
from rewardloop_outer.state_store import MemoryStateStore
from rewardloop_outer_native import outbox_batch

GAP = 60_000
TUNERS = [
    None,
    SessionTuner(action=[4, 2, 3], propensity=1.0, explore=False),
    SessionTuner(
        action=[1, 2, 3],
        propensity=0.005,
        explore=True,
        explore_action=123,
        exploration_version=2,
        logged=True,
    ),
    SessionTuner.model_validate({"action": [0, 0, 9], "propensity": 1, "logged": True}),  # int -> float
]


def closed_sessions(seed: int) -> list[ClosedSession]:
    """Sessions with KPIs, late actions (amendments) and duplicates, as the engine closes them."""
    w = SessionWindow(GAP, allowed_lateness_ms=300_000, attribution_window_ms=3_600_000)
    out: list[ClosedSession] = []
    for topic, _user, value in stream_items(seed, 40, GAP):
        if topic == K:
            w.add_kpi(KpiEvent.model_validate_json(value), 0)
        else:
            w.add_action(parse_action(value), 0)
        out += w.close_due(0)
    return out + w.close_all(10**13)


def contexts(tmp_path: Path) -> list[RewardContext]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    _artefact(tmp_path, 2)
    model = CreditAssigner(0.9, str(tmp_path), reload_every_s=0)
    model.maybe_reload(1.0)
    assert model.name == "gated-attention:v2"
    return [
        RewardContext(
            0.99, KappaSchedule(0.2, 0.8, 1), CreditAssigner(0.99), priorities=dict(DEFAULT_PRIORITIES)
        ),
        # int priorities and an int kappa override: the models coerce them to floats
        RewardContext(
            1.0,
            KappaSchedule(0.2, 0.8, 86_400_000, 1_763_888_400_000),
            CreditAssigner(1.0),
            priorities={"revenue": 2, "ndcg10": 0.5, "engagement": 0, "retention": 1.0},
            kappa_override=1,
        ),
        RewardContext(0.0, KappaSchedule(0.5, 0.5, 1), model, baseline_alpha=0.3),
    ]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_record_json_is_the_models_bytes(tmp_path: Path, seed: int) -> None:
    sessions = closed_sessions(seed)
    assert len(sessions) > 60 and any(c.revision > 0 for c in sessions) and any(c.kpis for c in sessions)
    for i, ctx in enumerate(contexts(tmp_path / str(seed))):
        baselines: dict[str, float] = {}
        for j, closed in enumerate(sessions):
            v = compute_record(closed, ctx, baselines)
            tuner = TUNERS[(i + j) % len(TUNERS)]
            want = record_model(v, tuner).to_json_bytes()
            got = record_json(v, tuner)
            assert got == want, (closed.session_key, got, want)
            # and the schema accepts it, unchanged
            assert SessionRecord.model_validate_json(got).to_json_bytes() == got


def test_record_json_takes_the_models_path_for_what_they_reject(tmp_path: Path) -> None:
    closed = closed_sessions(4)[0]
    ctx = contexts(tmp_path)[0]
    ctx.priorities["revenue"] = float("inf")  # a non-finite part: the model raises, as it always did
    v = compute_record(closed, ctx, {})
    with pytest.raises(ValidationError):
        record_json(v)
    long_user = closed.__class__(**{**closed.__dict__, "user_id": "u" * 250})  # session_key > 256 chars
    ctx = contexts(tmp_path / "b")[0]
    with pytest.raises(ValidationError):
        record_json(compute_record(long_user, ctx, {}))


def _mutations(seed: int, n: int) -> list[bytes]:
    rng = random.Random(seed)
    base = orjson.loads(encode_json(make_reward_event("e1", "u1", request_id="r", clicked=True, reward=0.7)))
    odd: list[Any] = [None, True, 0, 1, -1, 0.0, 0.5, 1.5, -2.5, 1e308, "", "x", "a" * 257, [], {}, 2**63]
    fields = [*base, "explore_action", "explore_probability", "exploration_version", "extra"]
    out = []
    for _ in range(n):
        d = json.loads(json.dumps(base))
        for _ in range(rng.choice([0, 1, 1, 2])):
            k = rng.choice(fields)
            if rng.random() < 0.15:
                d.pop(k, None)
            elif k == "parts" and rng.random() < 0.5:
                d["parts"] = {**d["parts"], rng.choice(["click", "skip", "x"]): rng.choice(odd)}
            else:
                d[k] = rng.choice(odd)
        out.append(json.dumps(d, indent=1 if rng.random() < 0.05 else None).encode())
    out.append(b'{"event_id": "e1", "dwell_seconds": Infinity}')
    return out


def _fields(a: Action) -> dict[str, Any]:
    return {k: getattr(a, k) for k in Action.__slots__ if k != "raw"}


def test_the_fast_parse_agrees_with_the_model() -> None:
    fast = 0
    for raw in _mutations(11, 4000):
        try:
            model: Action | None = action_from_model(RewardEvent.model_validate_json(raw))
        except ValidationError:
            model = None
        try:
            d = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        a = _fast_action(d, raw) if type(d) is dict else None
        if a is None:
            continue
        fast += 1
        assert model is not None, raw  # never accepts what the model rejects
        assert _fields(a) == _fields(model), raw
        assert orjson.loads(a.raw) == orjson.loads(raw) and b"\n" not in a.raw
    assert fast > 1000  # the usual shapes do take the fast path


def test_an_outbox_batch_reads_back_what_was_written() -> None:
    entries = [
        (f"s:u{i}:{i}:0", ("recsys.sessions", key, v))
        for i, (key, v) in enumerate(
            [
                (b"u1", b'{"a":"plain"}'),
                ("ü".encode(), '{"a":"ïtem 😀"}'.encode()),
                (b"u\n2", b'{"a":"del \x7f"}\n{"b":1}'),  # newlines in keys and values
                (b"u3", b""),
            ]
        )
    ]
    assert _read_outbox_batch(_outbox_batch(entries)) == entries
    assert _read_outbox_batch(_outbox_batch([])) == []


def test_the_native_outbox_batch_writes_the_python_bytes() -> None:
    rng = random.Random(3)
    alphabet = ["a", "Z", "0", '"', "\\", "/", "\n", "\t", "\x00", "\x1f", "\x7f", "é", "€", "😀", " ", ":"]

    def text(n: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(n))

    for _ in range(200):
        entries = [
            (f"s:{text(6)}:{i}:0", (text(3) or "t", text(5).encode(), text(rng.randrange(40)).encode()))
            for i in range(rng.randrange(6))
        ]
        assert outbox_batch(entries) == _outbox_batch_py(entries)
        assert _read_outbox_batch(_outbox_batch(entries)) == entries
    # a lone surrogate (orjson refuses it; the Python path escapes it with json): declined natively
    odd = [("l:session:\ud800:0", ("recsys.late", b"u", b"{}"))]
    assert outbox_batch(odd) is None
    assert _read_outbox_batch(_outbox_batch(odd)) == odd


class _NoKafka:
    def subscribe(self, *_a: Any, **_k: Any) -> None:
        pass


def test_the_state_is_frozen_out_of_the_collector() -> None:
    def controller(interval: float) -> DurableController:
        s = OuterSettings(outer_gc_freeze_interval_s=interval, outer_gc_full_interval_s=100.0)
        return DurableController(
            s, _NoKafka(), _NoKafka(), MemoryStateStore(), None, OuterMetrics(CollectorRegistry())
        )

    gc.unfreeze()
    try:
        ctl = controller(0.0)
        ctl._maybe_freeze(ctl._last_freeze + 10.0)
        assert gc.get_freeze_count() == 0  # off
        ctl = controller(1.0)
        ctl._maybe_freeze(ctl._last_freeze + 0.5)
        assert gc.get_freeze_count() == 0  # not yet
        state = [[i] for i in range(1000)]  # long-lived objects
        ctl._maybe_freeze(ctl._last_freeze + 1.0)
        frozen = gc.get_freeze_count()
        assert frozen >= len(state)
        assert not any(gc.is_tracked(x) and x in gc.get_objects(2) for x in state[:3])
        ctl._maybe_freeze(ctl._last_full_gc + 100.0)  # the full collection unfreezes first
        assert gc.get_freeze_count() >= len(state)
    finally:
        gc.unfreeze()
