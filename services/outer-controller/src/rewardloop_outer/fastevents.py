"""Light, validated event objects for the hot path (the schema is :mod:`rewardloop_common.events`).

Why not pydantic per record: at tens of thousands of records per second, ``model_validate_json`` plus
``model_dump`` for the durable state cost more than the session logic itself (see the README's profile).
:func:`parse_action` parses with ``orjson`` and checks the common, well-formed shape with plain type and
range tests; anything else (a string where an int is expected, a missing field, a value out of range,
bad JSON) goes through the pydantic model, which either accepts it (lax coercions: then the canonical
JSON is kept) or raises its :class:`~pydantic.ValidationError` with the field named. The fast path
never accepts what the model would reject.

Every object keeps its record as compact JSON bytes (``raw``): the durable state stores these bytes
as they are, so no event is ever re-serialised.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from rewardloop_common.events import KpiEvent, RewardEvent

_INF = math.inf
# the scorer's usual record: the 15 required fields + segment, request_id, session_id
_BASE_FIELDS = 18


class Action:
    """One scored action (the fields of :class:`RewardEvent` the outer loop uses) and its JSON."""

    __slots__ = (
        "event_id",
        "request_id",
        "user_id",
        "item_id",
        "position",
        "event_time_ms",
        "clicked",
        "dwell_seconds",
        "skipped",
        "predicted_relevance",
        "behavior_propensity",
        "segment",
        "reward",
        "weights_version",
        "explore_action",
        "explore_probability",
        "exploration_version",
        "raw",
    )

    def __init__(self, d: dict[str, Any], raw: bytes) -> None:
        self.event_id: str = d["event_id"]
        self.request_id: str = d.get("request_id") or ""
        self.user_id: str = d["user_id"]
        self.item_id: str = d["item_id"]
        self.position: int = d["position"]
        self.event_time_ms: int = d["event_time_ms"]
        self.clicked: bool = d["clicked"]
        self.dwell_seconds: float = float(d["dwell_seconds"])
        self.skipped: bool = d["skipped"]
        self.predicted_relevance: float = float(d["predicted_relevance"])
        self.behavior_propensity: float = float(d["behavior_propensity"])
        self.segment: str = d.get("segment") or "default"
        self.reward: float = float(d["reward"])
        self.weights_version: int = d["weights_version"]
        self.explore_action: int | None = d.get("explore_action")
        ep = d.get("explore_probability")
        self.explore_probability: float | None = None if ep is None else float(ep)
        self.exploration_version: int | None = d.get("exploration_version")
        self.raw = raw

    def as_dict(self) -> dict[str, Any]:
        return dict(orjson.loads(self.raw))


class Kpi:
    """One delayed business event and its JSON."""

    __slots__ = ("event_id", "user_id", "kind", "event_time_ms", "revenue", "raw")

    def __init__(self, ev: KpiEvent, raw: bytes) -> None:
        self.event_id = ev.event_id
        self.user_id = ev.user_id
        self.kind = ev.kind
        self.event_time_ms = ev.event_time_ms
        self.revenue = ev.revenue
        self.raw = raw

    def as_dict(self) -> dict[str, Any]:
        return dict(orjson.loads(self.raw))


_FLOAT, _INT, _STR, _BOOL, _DICT = float, int, str, bool, dict
_NUM = frozenset((float, int))  # a JSON number (bool is neither: type(True) is bool)
_isfinite = math.isfinite
_new_action = object.__new__


def _fast_action(d: dict[str, Any], raw: bytes) -> Action | None:
    """The :class:`Action` of the common, well-formed shape (strict types, every range of
    :class:`RewardEvent`); ``None`` for anything else (the caller then asks the pydantic model).

    One pass that checks and builds (each field is read once; no helper calls per field): at 10^5
    records/s every function call and dict lookup here is a visible share of the controller's time."""
    T = type
    try:
        eid, uid, item = d["event_id"], d["user_id"], d["item_id"]
        pos, t, wv, sc = d["position"], d["event_time_ms"], d["weights_version"], d["scored_at_ms"]
        clicked, skipped, parts = d["clicked"], d["skipped"], d["parts"]
        dw, rel, prop = d["dwell_seconds"], d["predicted_relevance"], d["behavior_propensity"]
        reward, raw_reward = d["reward"], d["raw_reward"]
        if T(parts) is not _DICT:
            return None
        pc, pd, ps, pr = parts["click"], parts["dwell"], parts["skip"], parts["relevance"]
    except KeyError:
        return None
    if not (
        T(eid) is _STR
        and T(uid) is _STR
        and T(item) is _STR
        and T(pos) is _INT
        and T(t) is _INT
        and T(wv) is _INT
        and T(sc) is _INT
        and T(clicked) is _BOOL
        and T(skipped) is _BOOL
        and 0 < len(eid) <= 256
        and 0 < len(uid) <= 256
        and 0 < len(item) <= 256
        and pos >= 0
        and t > 0
        and wv >= 0
        and sc >= 0
    ):
        return None
    num = _NUM
    if not (
        T(dw) in num
        and T(rel) in num
        and T(prop) in num
        and T(reward) in num
        and T(raw_reward) in num
        and T(pc) in num
        and T(pd) in num
        and T(ps) in num
        and T(pr) in num
    ):
        return None
    # one test for the common case: a sum of finite terms is finite (when it is not -- a non-finite
    # term, or finite ones that overflow -- each term is tested)
    try:
        finite = _isfinite(dw + rel + prop + reward + raw_reward + pc + pd + ps + pr)
    except OverflowError:  # an integer too large for a float
        finite = False
    if not finite and not all(
        T(x) is _INT or _isfinite(x) for x in (dw, rel, prop, reward, raw_reward, pc, pd, ps, pr)
    ):
        return None
    if not (dw >= 0 and 0 <= rel <= 1 and 0 < prop <= 1):
        return None
    get = d.get
    seg, rid = get("segment"), get("request_id")
    if len(d) == _BASE_FIELDS:  # exactly the required + usual optional fields: nothing else to check
        if not (T(seg) is _STR and T(rid) is _STR and T(get("session_id")) is _STR):
            return None
        ea = ep = xv = None
    else:
        ea, ep, xv = get("explore_action"), get("explore_probability"), get("exploration_version")
        if not (
            T(get("segment", "")) is _STR
            and T(get("request_id", "")) is _STR
            and T(get("session_id", "")) is _STR
            and (ea is None or (T(ea) is _INT and ea >= 0))
            and (ep is None or (T(ep) in num and 0 < ep <= 1))  # the range excludes inf and nan
            and (xv is None or (T(xv) is _INT and xv >= 1))
        ):
            return None
        if ep is not None:
            ep = float(ep)
    a: Action = _new_action(Action)
    a.event_id = eid
    a.request_id = rid or ""
    a.user_id = uid
    a.item_id = item
    a.position = pos
    a.event_time_ms = t
    a.clicked = clicked
    a.dwell_seconds = float(dw)
    a.skipped = skipped
    a.predicted_relevance = float(rel)
    a.behavior_propensity = float(prop)
    a.segment = seg or "default"
    a.reward = float(reward)
    a.weights_version = wv
    a.explore_action = ea
    a.explore_probability = ep
    a.exploration_version = xv
    # the durable state is newline-delimited: a record with raw newlines (pretty-printed) is re-encoded
    a.raw = raw if b"\n" not in raw and b"\r" not in raw else orjson.dumps(d)
    return a


def parse_action(raw: bytes) -> Action:
    """A validated :class:`Action`; raises ``pydantic.ValidationError`` / ``ValueError`` when invalid."""
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError:
        d = None
    if type(d) is _DICT:
        a = _fast_action(d, raw)
        if a is not None:
            return a
    return action_from_model(RewardEvent.model_validate_json(raw))


def action_from_model(ev: RewardEvent) -> Action:
    raw = ev.model_dump_json(exclude_none=True).encode()
    return Action(orjson.loads(raw), raw)


def parse_kpi(raw: bytes) -> Kpi:
    """A validated :class:`Kpi` (KPI events are rare: the pydantic model validates each one)."""
    return kpi_from_model(KpiEvent.model_validate_json(raw))


def kpi_from_model(ev: KpiEvent) -> Kpi:
    return Kpi(ev, ev.model_dump_json().encode())


def kpi_from_dict(d: dict[str, Any]) -> Kpi:
    return kpi_from_model(KpiEvent.model_validate(d))
