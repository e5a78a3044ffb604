"""The native reward-event parser (``rewardloop_outer_native``) against the Python fast path it
replaces (:func:`rewardloop_outer.fastevents._fast_action`) and the native JSON writer against orjson.

The invariant: whatever the native parser accepts, the Python fast path accepts with the same values
and the same stored bytes. (It may decline more -- the caller then takes the Python path -- but the
common shapes must stay native: that is checked too.)"""

from __future__ import annotations

import json
import random
import struct

import orjson
import pytest

import rewardloop_outer_native as native
from rewardloop_common.kafka import encode_json
from rewardloop_common.testing import make_reward_event
from rewardloop_outer.fastevents import Action, _fast_action

FIELDS = Action.__slots__  # every field of the Python fast path's event, raw included


def python_fields(raw: bytes) -> dict | None:
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(d) is not dict:
        return None
    a = _fast_action(d, raw)
    if a is None or a.raw is not raw:  # re-encoded records (raw newlines) are left to Python
        return None
    return {f: getattr(a, f) for f in FIELDS}


def same(py: dict, nat: dict) -> bool:
    for f in FIELDS:
        a, b = py[f], nat[f]
        if type(a) is not type(b) or a != b:
            return False
    return True


VALUES = [
    None,
    True,
    False,
    0,
    -1,
    1,
    7,
    2**63,
    2**64,
    10**30,
    0.0,
    -0.0,
    0.5,
    1.0,
    1.5,
    -2.5,
    1e308,
    "",
    "x",
    "é" * 256,
    "é" * 257,
    "a\nb",
    [],
    {},
]


def base_doc(rng: random.Random) -> dict:
    ev = make_reward_event(
        f"e{rng.randrange(10**6)}", f"u{rng.randrange(50)}", 1_763_888_400_000 + rng.randrange(10**6)
    )
    d = orjson.loads(encode_json(ev))
    if rng.random() < 0.3:
        d["explore_action"] = rng.randrange(20)
        d["explore_probability"] = rng.choice([0.005, 1, 0.25])
        d["exploration_version"] = rng.randrange(1, 4)
    return d


def mutate(rng: random.Random, d: dict) -> bytes:
    keys = list(d)
    for _ in range(rng.randrange(4)):
        op = rng.randrange(6)
        if op == 0 and keys:
            d.pop(rng.choice(keys), None)
        elif op == 1:
            d[rng.choice(keys + ["explore_action", "explore_probability", "exploration_version"])] = (
                rng.choice(VALUES)
            )
        elif op == 2:
            d[f"extra{rng.randrange(3)}"] = rng.choice(VALUES)
        elif op == 3 and isinstance(d.get("parts"), dict):
            d["parts"][rng.choice(["click", "dwell", "skip", "relevance", "other"])] = rng.choice(VALUES)
        elif op == 4:
            d[rng.choice(["dwell_seconds", "predicted_relevance", "behavior_propensity", "reward"])] = (
                rng.choice([rng.random(), rng.random() * 1e3, 1, 0])
            )
        else:
            d[rng.choice(["position", "weights_version", "scored_at_ms", "event_time_ms"])] = rng.choice(
                [0, 1, -1, 2**62, 2**63 - 1, 2**63, 3.0]
            )
    # json, not orjson: integers beyond 64 bits must reach the parsers too
    raw = json.dumps(d, separators=(",", ":"), ensure_ascii=rng.random() < 0.5).encode()
    if rng.random() < 0.05:  # a duplicate key (orjson keeps the last; the native parser declines)
        raw = raw[:-1] + b',"user_id":"dup"}'
    if rng.random() < 0.03:
        raw = json.dumps(d, indent=2).encode()
    return raw


def test_native_parse_accepts_only_what_the_python_fast_path_accepts_with_equal_values() -> None:
    rng = random.Random(20261130)
    accepted = declined_but_python_accepts = 0
    for i in range(20_000):
        d = base_doc(rng)
        raw = mutate(rng, d) if i % 4 else orjson.dumps(d)
        nat = native.parse_action_fields(raw)
        py = python_fields(raw)
        if nat is not None:
            assert py is not None, raw
            assert same(py, nat), (raw, py, nat)
            accepted += 1
        elif py is not None:
            # declined by design (the Python path decides): duplicate keys, integers beyond 64 bits
            dup = raw.count(b'"user_id"') > 1
            big = any(type(v) is int and v > 2**63 - 1 for v in json.loads(raw).values())
            assert dup or big, raw
            declined_but_python_accepts += 1
    # the unmutated quarter (and most single mutations that keep the shape) stay native
    assert accepted > 6_000
    assert declined_but_python_accepts < accepted // 10, declined_but_python_accepts


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"[]",
        b"null",
        b'{"event_id": "e"}',
        b"{" + b'"a":1,' * 3 + b'"b":2}',
    ],
)
def test_native_parse_declines_garbage(raw: bytes) -> None:
    assert native.parse_action_fields(raw) is None


def test_json_writer_matches_orjson() -> None:
    rng = random.Random(7)
    for _ in range(100_000):
        x = struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0]
        if x != x or x in (float("inf"), float("-inf")):
            continue
        assert native.dumps_f64(x) == orjson.dumps(x), x
    for e in range(-330, 310):
        for m in (1.0, 1.5, 9.999999999999999, 1.2345678901234567):
            x = m * 10.0**e if -300 < e < 300 else float(f"{m}e{e}")
            if x == x and abs(x) != float("inf"):
                assert native.dumps_f64(x) == orjson.dumps(x), x
                assert native.dumps_f64(-x) == orjson.dumps(-x), -x
    for s in ["", "plain", "é€😀", '"\\', "".join(chr(i) for i in range(0, 128)), "\u2028\u2029\x7f"]:
        assert native.dumps_str(s) == orjson.dumps(s), s


def test_the_int_literal_minus_zero_is_left_to_python() -> None:
    """CPython reads ``-0`` as the int 0 (a float field then holds 0.0); serde_json would read -0.0."""
    raw = encode_json(make_reward_event("e1", "u1", 1_763_888_400_000, reward=0.25))
    minus_zero_int = raw.replace(b'"reward":0.25', b'"reward":-0')
    assert minus_zero_int != raw
    assert native.parse_action_fields(minus_zero_int) is None
    py = python_fields(minus_zero_int)
    assert py is not None and str(py["reward"]) == "0.0"
    minus_zero_float = raw.replace(b'"reward":0.25', b'"reward":-0.0')
    nat = native.parse_action_fields(minus_zero_float)
    py = python_fields(minus_zero_float)
    assert nat is not None and py is not None and same(py, nat) and str(nat["reward"]) == "-0.0"
