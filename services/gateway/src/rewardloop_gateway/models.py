"""HTTP request/response models of the gateway (the event and weights models live in rewardloop_common)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from rewardloop_common.events import KpiEventBase
from rewardloop_common.weights import Segment, Weights, WeightsDocument

SEGMENT_PATTERN = r"^[A-Za-z0-9_.\-]+$"
MAX_BATCH = 1000


class KpiAccepted(BaseModel):
    event_id: str
    accepted: bool = True


class KpiBatchRequest(BaseModel):
    events: list[KpiEventBase] = Field(min_length=1, max_length=MAX_BATCH)


class KpiBatchAccepted(BaseModel):
    accepted: int
    event_ids: list[str]


class WeightsUpdateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    segment: Segment = "default"
    weights: Weights
    reason: str = Field(default="", max_length=2000)


class WeightsHistoryResponse(BaseModel):
    segment: str
    documents: list[WeightsDocument]


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"]
    redis: bool
    kafka: bool
