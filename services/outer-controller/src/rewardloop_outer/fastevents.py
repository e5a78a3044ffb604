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


_FLOAT, _INT, _STR, _BOOL = float, int, str, bool


def _num(v: Any) -> bool:
    t = type(v)
    return (t is _FLOAT and -_INF < v < _INF) or t is _INT


def _fast_ok(d: Any) -> bool:
    """The common, well-formed shape (strict types, every range of :class:`RewardEvent`)."""
    if type(d) is not dict:
        return False
    try:
        eid, uid, item = d["event_id"], d["user_id"], d["item_id"]
        pos, t, dw = d["position"], d["event_time_ms"], d["dwell_seconds"]
        rel, prop = d["predicted_relevance"], d["behavior_propensity"]
        wv, sc, parts = d["weights_version"], d["scored_at_ms"], d["parts"]
        if not (
            type(eid) is _STR
            and 0 < len(eid) <= 256
            and type(uid) is _STR
            and 0 < len(uid) <= 256
            and type(item) is _STR
            and 0 < len(item) <= 256
            and type(pos) is _INT
            and pos >= 0
            and type(t) is _INT
            and t > 0
            and type(d["clicked"]) is _BOOL
            and type(d["skipped"]) is _BOOL
            and _num(dw)
            and dw >= 0
            and _num(rel)
            and 0 <= rel <= 1
            and _num(prop)
            and 0 < prop <= 1
            and _num(d["reward"])
            and _num(d["raw_reward"])
            and type(wv) is _INT
            and wv >= 0
            and type(sc) is _INT
            and sc >= 0
            and type(parts) is dict
            and _num(parts["click"])
            and _num(parts["dwell"])
            and _num(parts["skip"])
            and _num(parts["relevance"])
        ):
            return False
    except KeyError:
        return False
    if len(d) == _BASE_FIELDS:  # exactly the required + usual optional fields: nothing else to check
        return (
            type(d.get("segment")) is _STR
            and type(d.get("request_id")) is _STR
            and type(d.get("session_id")) is _STR
        )
    for k in ("segment", "request_id", "session_id"):
        if type(d.get(k, "")) is not _STR:
            return False
    ea, ep, xv = d.get("explore_action"), d.get("explore_probability"), d.get("exploration_version")
    return (
        (ea is None or (type(ea) is _INT and ea >= 0))
        and (ep is None or (_num(ep) and 0 < ep <= 1))
        and (xv is None or (type(xv) is _INT and xv >= 1))
    )


def _compact(raw: bytes, d: dict[str, Any]) -> bytes:
    # the durable state is newline-delimited: a record with raw newlines (pretty-printed) is re-encoded
    return orjson.dumps(d) if b"\n" in raw or b"\r" in raw else raw


def parse_action(raw: bytes) -> Action:
    """A validated :class:`Action`; raises ``pydantic.ValidationError`` / ``ValueError`` when invalid."""
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError:
        d = None
    if d is not None and _fast_ok(d):
        return Action(d, _compact(raw, d))
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
