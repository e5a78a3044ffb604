"""FastAPI application factory of the gateway.

Test seam: ``create_app(settings, producer=FakeProducer())`` injects any object implementing
:class:`rewardloop_common.kafka.AsyncEventProducer` (``start()``, ``await produce(topic, key, value,
timeout)``, ``await healthy()``, ``await close()``) instead of the real confluent-kafka producer.
``redis_client`` likewise injects a ``redis.asyncio.Redis``. The app starts and closes an injected
producer in its lifespan like its own one, but never closes an injected Redis client.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import redis.asyncio as aredis
from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from redis.exceptions import RedisError

from rewardloop_common.events import KpiEvent, KpiEventBase
from rewardloop_common.kafka import AsyncEventProducer, AsyncProducer, DeliveryError, encode_json
from rewardloop_common.kpi_priorities import (
    KPI_PRIORITIES_KEY,
    KpiPrioritiesDocument,
    KpiPrioritiesUpdate,
)
from rewardloop_common.logging import get_logger
from rewardloop_common.weights import WeightsDocument
from rewardloop_common.weights_store import AsyncWeightsStore, InvalidWeightsDocument

from . import __version__
from .metrics import GatewayMetrics, MetricsMiddleware
from .models import (
    SEGMENT_PATTERN,
    HealthResponse,
    KpiAccepted,
    KpiBatchAccepted,
    KpiBatchRequest,
    WeightsHistoryResponse,
    WeightsUpdateRequest,
)
from .settings import GatewaySettings

log = get_logger("rewardloop.gateway")

SegmentQuery = Annotated[
    str, Query(min_length=1, max_length=64, pattern=SEGMENT_PATTERN, description="weights segment")
]


@dataclass
class AppState:
    settings: GatewaySettings
    producer: AsyncEventProducer
    redis: aredis.Redis
    store: AsyncWeightsStore
    metrics: GatewayMetrics


def _state(request: Request) -> AppState:
    return request.app.state.gw  # type: ignore[no-any-return]


_bearer = HTTPBearer(auto_error=False, description="GATEWAY_ADMIN_TOKEN")


def _require_admin(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    expected = _state(request).settings.admin_token.encode()
    given = creds.credentials.encode() if creds and creds.scheme.lower() == "bearer" else b""
    if not given or not secrets.compare_digest(given, expected):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing or invalid bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _json_safe_error(err: Any) -> Any:
    err = jsonable_encoder(err)
    try:
        json.dumps(err, allow_nan=False)
        return err
    except ValueError:
        return {k: v for k, v in err.items() if k not in ("input", "ctx")}


def create_app(
    settings: GatewaySettings | None = None,
    *,
    producer: AsyncEventProducer | None = None,
    redis_client: aredis.Redis | None = None,
) -> FastAPI:
    """Build the gateway app. See the module docstring for the producer/Redis injection seam."""
    settings = settings or GatewaySettings()
    metrics = GatewayMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        prod: AsyncEventProducer = producer or AsyncProducer.from_servers(
            settings.kafka_bootstrap_servers, client_id="rewardloop-gateway"
        )
        own_redis = redis_client is None
        rds = redis_client or aredis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=2.0, socket_timeout=5.0
        )
        prod.start()
        app.state.gw = AppState(settings, prod, rds, AsyncWeightsStore(rds), metrics)
        log.info(
            "gateway started",
            kafka=settings.kafka_bootstrap_servers,
            redis=settings.redis_url,
            topic=settings.kafka_topic_kpi_raw,
        )
        try:
            yield
        finally:
            await prod.close()
            if own_redis:
                await rds.aclose()
            log.info("gateway stopped")

    app = FastAPI(
        title="rewardloop gateway",
        version=__version__,
        description="KPI events in (HTTP -> Kafka `recsys.kpi.raw`) and the reward-weights admin API.",
        lifespan=lifespan,
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    async def _produce_kpi(st: AppState, body: KpiEventBase) -> KpiEvent:
        event = KpiEvent(**body.model_dump(), received_at_ms=int(time.time() * 1000))
        await st.producer.produce(
            st.settings.kafka_topic_kpi_raw,
            event.user_id,
            encode_json(event),
            timeout=st.settings.gateway_kafka_delivery_timeout_seconds,
        )
        st.metrics.kpi_events.labels(kind=event.kind).inc()
        return event

    @app.post(
        "/v1/kpi-events",
        operation_id="postKpiEvent",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=KpiAccepted,
        tags=["kpi"],
        summary="Record one delayed business event (purchase, return_visit, subscription)",
        responses={503: {"description": "Kafka did not acknowledge the event in time; retry"}},
    )
    async def post_kpi_event(body: KpiEventBase, request: Request) -> KpiAccepted:
        """Produces the event to `recsys.kpi.raw` keyed by `user_id`; answers 202 only once the broker
        acknowledged it (acks=all). `received_at_ms` is set by the gateway."""
        st = _state(request)
        try:
            await _produce_kpi(st, body)
        except DeliveryError as exc:
            log.warning("kpi event not delivered", event_id=body.event_id, error=str(exc))
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=f"kafka: {exc}") from exc
        return KpiAccepted(event_id=body.event_id, accepted=True)

    @app.post(
        "/v1/kpi-events:batch",
        operation_id="postKpiEventsBatch",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=KpiBatchAccepted,
        tags=["kpi"],
        summary="Record up to 1000 business events in one call",
        responses={503: {"description": "some events were not acknowledged; retrying all is safe"}},
    )
    async def post_kpi_events_batch(body: KpiBatchRequest, request: Request) -> Any:
        """All-or-503: every event is produced concurrently; 202 only when all were acknowledged.
        On 503 the body lists `failed_event_ids`; consumers de-duplicate by `event_id`, so re-sending
        the whole batch is safe."""
        st = _state(request)
        results = await asyncio.gather(*(_produce_kpi(st, e) for e in body.events), return_exceptions=True)
        failed = [
            e.event_id for e, r in zip(body.events, results, strict=True) if isinstance(r, BaseException)
        ]
        unexpected = [r for r in results if isinstance(r, BaseException) and not isinstance(r, DeliveryError)]
        if unexpected:
            raise unexpected[0]
        if failed:
            log.warning("kpi batch partially delivered", failed=len(failed), total=len(body.events))
            return JSONResponse(
                status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                content={"detail": "kafka did not acknowledge every event", "failed_event_ids": failed},
            )
        return KpiBatchAccepted(accepted=len(body.events), event_ids=[e.event_id for e in body.events])

    @app.get(
        "/v1/weights",
        operation_id="getWeights",
        response_model=WeightsDocument,
        tags=["weights"],
        summary="The current weights document of a segment",
    )
    async def get_weights(request: Request, segment: SegmentQuery = "default") -> WeightsDocument:
        """What the scorer uses for `segment`: that segment's document, else the `default` segment's,
        else the built-in defaults (version 0, source `builtin-default`). The returned `segment` field
        says which document it is."""
        st = _state(request)
        try:
            return await st.store.get_effective(segment)
        except InvalidWeightsDocument as exc:
            raise HTTPException(500, detail=f"stored weights document is invalid: {exc}") from exc

    @app.get(
        "/v1/weights/history",
        operation_id="getWeightsHistory",
        response_model=WeightsHistoryResponse,
        tags=["weights"],
        summary="Written weights documents of a segment, newest first",
    )
    async def get_weights_history(
        request: Request,
        segment: SegmentQuery = "default",
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> WeightsHistoryResponse:
        """Entry 0 is the current document; at most 100 are kept."""
        docs = await _state(request).store.history(segment, limit)
        return WeightsHistoryResponse(segment=segment, documents=docs)

    @app.put(
        "/v1/weights",
        operation_id="putWeights",
        response_model=WeightsDocument,
        tags=["weights"],
        summary="Write new weights for a segment (admin; bearer token)",
        dependencies=[Depends(_require_admin)],
        responses={401: {"description": "missing or invalid bearer token"}},
    )
    async def put_weights(body: WeightsUpdateRequest, request: Request) -> WeightsDocument:
        """Validated against the bounds (click, dwell, relevance in [0, 5]; skip in [-5, 0]; finite),
        then written atomically with a new global version and announced on `rewardloop:weights-updates`."""
        st = _state(request)
        try:
            doc = await st.store.push(body.segment, body.weights, source="gateway", reason=body.reason)
        except ValidationError as exc:  # pragma: no cover - the body model already validated
            raise HTTPException(422, detail=str(exc)) from exc
        st.metrics.weights_pushes.inc()
        log.info("weights pushed", segment=doc.segment, version=doc.version, reason=body.reason)
        return doc

    @app.get(
        "/v1/kpi-priorities",
        operation_id="getKpiPriorities",
        response_model=KpiPrioritiesDocument,
        tags=["weights"],
        summary="The business KPI priorities the outer controller blends (defaults when none is stored)",
    )
    async def get_kpi_priorities(request: Request) -> KpiPrioritiesDocument:
        raw = await _state(request).store.client.get(KPI_PRIORITIES_KEY)
        if raw is None:
            return KpiPrioritiesDocument(source="default", reason="no document: controller defaults")
        return KpiPrioritiesDocument.model_validate_json(raw)

    @app.put(
        "/v1/kpi-priorities",
        operation_id="putKpiPriorities",
        response_model=KpiPrioritiesDocument,
        tags=["weights"],
        summary="Re-target the business KPI priorities at runtime (admin; bearer token)",
        dependencies=[Depends(_require_admin)],
        responses={401: {"description": "missing or invalid bearer token"}},
    )
    async def put_kpi_priorities(body: KpiPrioritiesUpdate, request: Request) -> KpiPrioritiesDocument:
        """Stored in Redis (`rewardloop:kpi-priorities`); the outer controller picks it up within
        `OUTER_PRIORITIES_REFRESH_S` (2 s) without a restart. Each priority in [0, 10]; kappa in [0, 1]."""
        doc = KpiPrioritiesDocument(**body.model_dump(), updated_at_ms=int(time.time() * 1000))
        await _state(request).store.client.set(KPI_PRIORITIES_KEY, doc.stored_json())
        log.info("KPI priorities set", priorities=doc.priorities.model_dump(), kappa=doc.kappa)
        return doc

    @app.get(
        "/healthz",
        operation_id="healthz",
        response_model=HealthResponse,
        tags=["ops"],
        responses={503: {"model": HealthResponse, "description": "Redis or Kafka unreachable"}},
    )
    async def healthz(request: Request) -> Any:
        st = _state(request)
        try:
            redis_ok = bool(await asyncio.wait_for(st.redis.ping(), 2.0))
        except (RedisError, OSError, TimeoutError):
            redis_ok = False
        try:
            kafka_ok = await asyncio.wait_for(st.producer.healthy(), 3.0)
        except Exception:  # noqa: BLE001 - any failure means "not healthy"
            kafka_ok = False
        body = HealthResponse(
            status="ok" if redis_ok and kafka_ok else "degraded", redis=redis_ok, kafka=kafka_ok
        )
        code = status.HTTP_200_OK if body.status == "ok" else status.HTTP_503_SERVICE_UNAVAILABLE
        return JSONResponse(status_code=code, content=body.model_dump())

    @app.get("/metrics", operation_id="metrics", tags=["ops"], response_class=Response)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's 422 body, minus inputs that JSON cannot carry (NaN/Infinity would crash it)."""
        return JSONResponse(status_code=422, content={"detail": [_json_safe_error(e) for e in exc.errors()]})

    @app.exception_handler(RedisError)
    async def redis_error(_: Request, exc: RedisError) -> JSONResponse:
        log.warning("redis error", error=str(exc))
        return JSONResponse(status_code=503, content={"detail": f"redis: {exc}"})

    return app
