from __future__ import annotations

import json

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import ValidationError

from rewardloop_common.events import KpiEvent
from rewardloop_common.testing import FakeAsyncProducer as FakeProducer
from rewardloop_gateway.settings import LOCAL_DEV_TOKEN, GatewaySettings

PURCHASE = {
    "event_id": "k-1",
    "user_id": "u-1",
    "session_id": "s-1",
    "kind": "purchase",
    "event_time_ms": 1763888460000,
    "revenue": 19.99,
    "item_id": "i-9",
}
NEW_WEIGHTS = {"click": 1.5, "dwell": 0.7, "skip": -0.5, "relevance": 1.0}


def _field_locs(resp_json: dict) -> list[list]:  # type: ignore[type-arg]
    return [e["loc"] for e in resp_json["detail"]]


# ----------------------------------------------------------------------------------- KPI events


def test_post_kpi_event_produces_keyed_record(client: TestClient, producer: FakeProducer) -> None:
    resp = client.post("/v1/kpi-events", json=PURCHASE)
    assert resp.status_code == 202, resp.text
    assert resp.json() == {"event_id": "k-1", "accepted": True}
    [(topic, key, value)] = producer.records
    assert topic == "recsys.kpi.raw" and key == "u-1"
    ev = KpiEvent.model_validate_json(value)
    assert ev.revenue == 19.99 and ev.received_at_ms > 0 and ev.session_id == "s-1"


def test_post_kpi_event_optional_fields(client: TestClient, producer: FakeProducer) -> None:
    resp = client.post(
        "/v1/kpi-events",
        json={"event_id": "k-2", "user_id": "u-2", "kind": "return_visit", "event_time_ms": 5},
    )
    assert resp.status_code == 202
    rec = json.loads(producer.records[0][2])
    assert rec["session_id"] is None and rec["item_id"] is None and rec["revenue"] is None


@pytest.mark.parametrize(
    "patch,field",
    [
        ({"revenue": 0}, "revenue"),
        ({"revenue": None}, "revenue"),
        ({"kind": "refund"}, "kind"),
        ({"user_id": ""}, "user_id"),
        ({"event_time_ms": 0}, "event_time_ms"),
    ],
)
def test_post_kpi_event_invalid_names_field(
    client: TestClient,
    producer: FakeProducer,
    patch: dict,
    field: str,  # type: ignore[type-arg]
) -> None:
    resp = client.post("/v1/kpi-events", json=PURCHASE | patch)
    assert resp.status_code == 422
    assert ["body", field] in _field_locs(resp.json())
    assert producer.records == []


def test_post_kpi_event_missing_field(client: TestClient) -> None:
    body = {k: v for k, v in PURCHASE.items() if k != "event_id"}
    resp = client.post("/v1/kpi-events", json=body)
    assert resp.status_code == 422 and ["body", "event_id"] in _field_locs(resp.json())


def test_post_kpi_event_kafka_failure_is_503(client: TestClient, producer: FakeProducer) -> None:
    producer.fail = True
    assert client.post("/v1/kpi-events", json=PURCHASE).status_code == 503
    producer.fail, producer.hang = False, True
    assert client.post("/v1/kpi-events", json=PURCHASE).status_code == 503


def test_kpi_batch(client: TestClient, producer: FakeProducer) -> None:
    events = [PURCHASE | {"event_id": f"k-{i}", "user_id": f"u-{i % 3}"} for i in range(10)]
    resp = client.post("/v1/kpi-events:batch", json={"events": events})
    assert resp.status_code == 202, resp.text
    assert resp.json()["accepted"] == 10 and len(producer.records) == 10
    assert client.post("/v1/kpi-events:batch", json={"events": []}).status_code == 422
    too_many = {"events": [PURCHASE] * 1001}
    assert client.post("/v1/kpi-events:batch", json=too_many).status_code == 422
    bad = client.post("/v1/kpi-events:batch", json={"events": [PURCHASE, PURCHASE | {"revenue": -1}]})
    assert bad.status_code == 422 and ["body", "events", 1, "revenue"] in _field_locs(bad.json())
    producer.fail = True
    failed = client.post("/v1/kpi-events:batch", json={"events": events[:2]})
    assert failed.status_code == 503 and failed.json()["failed_event_ids"] == ["k-0", "k-1"]


# -------------------------------------------------------------------------------------- weights


def test_get_weights_builtin_default(client: TestClient) -> None:
    resp = client.get("/v1/weights")
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["version"] == 0 and doc["source"] == "builtin-default"
    assert doc["weights"] == {"click": 1.0, "dwell": 0.5, "skip": -0.3, "relevance": 0.8}


def test_put_weights_requires_token(client: TestClient) -> None:
    body = {"segment": "default", "weights": NEW_WEIGHTS, "reason": "x"}
    r = client.put("/v1/weights", json=body)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert client.put("/v1/weights", json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert (
        client.put("/v1/weights", json=body, headers={"Authorization": "Basic dGVzdA=="}).status_code == 401
    )
    # auth is checked before the body: an invalid body without a token is still 401
    assert client.put("/v1/weights", json={"weights": {}}).status_code == 401
    assert client.get("/v1/weights").json()["version"] == 0


@pytest.mark.parametrize(
    "weights,field",
    [
        (NEW_WEIGHTS | {"skip": 0.5}, "skip"),
        (NEW_WEIGHTS | {"click": 6}, "click"),
        (NEW_WEIGHTS | {"dwell": -1}, "dwell"),
        ({k: v for k, v in NEW_WEIGHTS.items() if k != "relevance"}, "relevance"),
    ],
)
def test_put_weights_bounds_422(
    client: TestClient,
    auth: dict[str, str],
    weights: dict,
    field: str,  # type: ignore[type-arg]
) -> None:
    resp = client.put("/v1/weights", json={"weights": weights}, headers=auth)
    assert resp.status_code == 422
    assert ["body", "weights", field] in _field_locs(resp.json())


def test_put_weights_non_finite_422(client: TestClient, auth: dict[str, str]) -> None:
    raw = '{"weights": {"click": NaN, "dwell": 0.5, "skip": -0.3, "relevance": 0.8}}'
    resp = client.put("/v1/weights", content=raw, headers=auth | {"Content-Type": "application/json"})
    assert resp.status_code == 422, resp.text
    assert ["body", "weights", "click"] in _field_locs(resp.json())


def test_put_then_get_and_history(
    client: TestClient, auth: dict[str, str], settings: GatewaySettings
) -> None:
    r1 = client.put(
        "/v1/weights", json={"segment": "default", "weights": NEW_WEIGHTS, "reason": "a"}, headers=auth
    )
    assert r1.status_code == 200, r1.text
    d1 = r1.json()
    assert d1["version"] == 1 and d1["source"] == "gateway" and d1["weights"] == NEW_WEIGHTS
    assert client.get("/v1/weights", params={"segment": "default"}).json() == d1

    r2 = client.put(
        "/v1/weights", json={"weights": NEW_WEIGHTS | {"click": 2.0}, "reason": "b"}, headers=auth
    )
    assert r2.json()["version"] == 2
    hist = client.get("/v1/weights/history", params={"segment": "default", "limit": 10}).json()
    assert hist["segment"] == "default"
    assert [d["reason"] for d in hist["documents"]] == ["b", "a"]
    assert len(client.get("/v1/weights/history", params={"limit": 1}).json()["documents"]) == 1
    assert client.get("/v1/weights/history", params={"limit": 0}).status_code == 422

    # the document in Redis is the one the scorer reads
    raw = redis.Redis.from_url(settings.redis_url).get("rewardloop:weights:default")
    assert json.loads(raw)["version"] == 2  # type: ignore[arg-type]


def test_segments(client: TestClient, auth: dict[str, str]) -> None:
    client.put("/v1/weights", json={"weights": NEW_WEIGHTS}, headers=auth)
    # an unknown segment falls back to the default segment's document, like the scorer
    assert client.get("/v1/weights", params={"segment": "premium"}).json()["segment"] == "default"
    r = client.put(
        "/v1/weights", json={"segment": "premium", "weights": NEW_WEIGHTS | {"dwell": 3}}, headers=auth
    )
    assert r.status_code == 200
    assert client.get("/v1/weights", params={"segment": "premium"}).json()["weights"]["dwell"] == 3
    assert client.get("/v1/weights", params={"segment": "bad segment"}).status_code == 422
    bad = client.put("/v1/weights", json={"segment": "a b", "weights": NEW_WEIGHTS}, headers=auth)
    assert bad.status_code == 422 and ["body", "segment"] in _field_locs(bad.json())


# ------------------------------------------------------------------------------------ ops & misc


def test_healthz(client: TestClient, producer: FakeProducer) -> None:
    resp = client.get("/healthz")
    assert resp.status_code == 200 and resp.json() == {"status": "ok", "redis": True, "kafka": True}
    producer.alive = False
    resp = client.get("/healthz")
    assert resp.status_code == 503 and resp.json()["kafka"] is False


def test_healthz_redis_down(settings: GatewaySettings, producer: FakeProducer) -> None:
    from rewardloop_common.testing import free_port
    from rewardloop_gateway.app import create_app

    s = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with TestClient(create_app(s, producer=producer)) as c:
        resp = c.get("/healthz")
        assert resp.status_code == 503 and resp.json()["redis"] is False
        assert c.get("/v1/weights").status_code == 503


def test_metrics(client: TestClient, auth: dict[str, str]) -> None:
    client.post("/v1/kpi-events", json=PURCHASE)
    client.put("/v1/weights", json={"weights": NEW_WEIGHTS}, headers=auth)
    client.get("/v1/weights")
    client.get("/nope")
    text = client.get("/metrics").text
    assert 'rewardloop_gateway_kpi_events_total{kind="purchase"} 1.0' in text
    assert "rewardloop_gateway_weights_pushes_total 1.0" in text
    assert 'rewardloop_gateway_http_requests_total{method="GET",route="/v1/weights",status="200"} 1.0' in text
    assert 'route="/v1/kpi-events",status="202"' in text
    assert 'route="<unmatched>",status="404"' in text
    # GET and PUT share the route template
    assert 'rewardloop_gateway_http_request_duration_seconds_count{route="/v1/weights"} 2.0' in text
    assert "rewardloop_gateway_build_info{" in text


def test_openapi_operation_ids(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    ids = {op["operationId"] for path in spec["paths"].values() for op in path.values()}
    assert {
        "postKpiEvent",
        "postKpiEventsBatch",
        "getWeights",
        "getWeightsHistory",
        "putWeights",
        "healthz",
        "metrics",
    } <= ids
    assert client.get("/docs").status_code == 200


def test_settings_require_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("REWARDLOOP_ENV", raising=False)
    with pytest.raises(ValidationError, match="GATEWAY_ADMIN_TOKEN"):
        GatewaySettings()
    monkeypatch.setenv("REWARDLOOP_ENV", "local")
    assert GatewaySettings().admin_token == LOCAL_DEV_TOKEN
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", "s3cret")
    monkeypatch.setenv("GATEWAY_PORT", "8123")
    s = GatewaySettings()
    assert s.admin_token == "s3cret" and s.gateway_port == 8123 and "s3cret" not in repr(s)


def test_cli_help_and_refuses_without_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from rewardloop_gateway.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "GATEWAY_ADMIN_TOKEN" in capsys.readouterr().out
    monkeypatch.delenv("GATEWAY_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("REWARDLOOP_ENV", raising=False)
    assert main([]) == 2


def test_kpi_priorities_runtime_retarget(client: TestClient, auth: dict[str, str]) -> None:
    assert client.get("/v1/kpi-priorities").json()["source"] == "default"
    body = {"priorities": {"revenue": 2.0, "retention": 0.5}, "kappa": 0.6, "reason": "q4 push"}
    assert client.put("/v1/kpi-priorities", json=body).status_code == 401
    bad = {"priorities": {"revenue": -1.0}}
    assert client.put("/v1/kpi-priorities", json=bad, headers=auth).status_code == 422
    r = client.put("/v1/kpi-priorities", json=body, headers=auth)
    assert r.status_code == 200, r.text
    got = client.get("/v1/kpi-priorities").json()
    assert got["priorities"]["revenue"] == 2.0 and got["kappa"] == 0.6 and got["updated_at_ms"] > 0
