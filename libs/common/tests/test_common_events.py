from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from rewardloop_common.events import KpiEvent, KpiEventBase, RewardEvent, SessionRecord

REWARD_JSON = """{
  "event_id": "e-1", "request_id": "r-1", "user_id": "u-1", "session_id": "s-1", "item_id": "i-9",
  "position": 0, "event_time_ms": 1763888400000,
  "clicked": true, "dwell_seconds": 12.5, "skipped": false,
  "predicted_relevance": 0.7, "behavior_propensity": 0.2, "segment": "default",
  "reward": 2.47, "raw_reward": 2.47,
  "parts": {"click": 1.0, "dwell": 1.31, "skip": 0.0, "relevance": 0.56},
  "weights_version": 3, "scored_at_ms": 1763888400012
}"""

KPI_JSON = """{"event_id": "k-1", "user_id": "u-1", "session_id": "s-1", "kind": "purchase",
 "event_time_ms": 1763888460000, "revenue": 19.99, "item_id": "i-9", "received_at_ms": 1763888460100}"""

SESSION_JSON = """{
  "session_key": "u-1:1763888400000", "user_id": "u-1", "segment": "default",
  "start_ms": 1763888400000, "end_ms": 1763888700000, "closed_at_ms": 1763890500000,
  "n_steps": 2, "gamma": 0.99,
  "steps": [{"event_id": "e-1", "item_id": "i-9", "position": 0, "event_time_ms": 1763888400000,
             "clicked": true, "dwell_seconds": 12.5, "skipped": false, "predicted_relevance": 0.7,
             "behavior_propensity": 0.2, "reward": 2.47, "weights_version": 3, "return": 2.47}],
  "discounted_return": 2.47,
  "kpi": {"revenue": 19.99, "purchases": 1, "return_visits": 0, "subscriptions": 0, "event_ids": ["k-1"]},
  "business_reward": 3.04,
  "weights_versions": [3]
}"""


def test_reward_event_parses_doc_example() -> None:
    ev = RewardEvent.model_validate_json(REWARD_JSON)
    assert ev.parts.dwell == 1.31 and ev.weights_version == 3 and ev.clicked


def test_reward_event_empty_segment_means_default() -> None:
    data = json.loads(REWARD_JSON) | {"segment": ""}
    assert RewardEvent.model_validate(data).segment == "default"


@pytest.mark.parametrize(
    "field,value",
    [("event_id", ""), ("event_time_ms", 0), ("predicted_relevance", 1.5), ("behavior_propensity", 0.0)],
)
def test_reward_event_rejects_invalid(field: str, value: object) -> None:
    data = json.loads(REWARD_JSON) | {field: value}
    with pytest.raises(ValidationError) as exc:
        RewardEvent.model_validate(data)
    assert field in str(exc.value)


def test_kpi_event_parses_doc_example_and_optional_fields() -> None:
    ev = KpiEvent.model_validate_json(KPI_JSON)
    assert ev.kind == "purchase" and ev.revenue == 19.99
    ev2 = KpiEvent(event_id="k-2", user_id="u", kind="return_visit", event_time_ms=1, received_at_ms=2)
    assert ev2.session_id is None and ev2.item_id is None and ev2.revenue is None


@pytest.mark.parametrize("revenue", [None, 0.0, -1.0])
def test_purchase_requires_positive_revenue(revenue: float | None) -> None:
    with pytest.raises(ValidationError, match="revenue"):
        KpiEventBase(event_id="k", user_id="u", kind="purchase", event_time_ms=1, revenue=revenue)


def test_kpi_kind_is_a_closed_set() -> None:
    with pytest.raises(ValidationError, match="kind"):
        KpiEventBase.model_validate({"event_id": "k", "user_id": "u", "kind": "refund", "event_time_ms": 1})


def test_session_record_round_trips_with_return_alias() -> None:
    rec = SessionRecord.model_validate_json(SESSION_JSON)
    assert rec.steps[0].return_ == 2.47
    out = json.loads(rec.to_json_bytes())
    assert out == json.loads(SESSION_JSON)
    assert "return" in out["steps"][0] and "return_" not in out["steps"][0]
