"""Business KPI priorities: the weights of the outer loop's business-reward parts, re-targetable at
runtime (gateway ``PUT /v1/kpi-priorities``, admin token) and read by the outer controller every few
seconds, without a restart.

Redis key ``rewardloop:kpi-priorities``: a JSON :class:`KpiPrioritiesDocument`. No document = the
controller's defaults (revenue 1.0, ndcg10 0.5, engagement 0.5, retention 1.0, kappa by schedule).
"""

from __future__ import annotations

from typing import Final

from pydantic import BaseModel, ConfigDict, Field

KPI_PRIORITIES_KEY: Final = "rewardloop:kpi-priorities"

Priority = Field(default=None, ge=0.0, le=10.0, allow_inf_nan=False)


class KpiPriorities(BaseModel):
    """Weights of the business parts; an absent one keeps the controller's default."""

    model_config = ConfigDict(extra="forbid")

    revenue: float | None = Priority
    ndcg10: float | None = Priority
    engagement: float | None = Priority
    retention: float | None = Priority


class KpiPrioritiesUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    priorities: KpiPriorities = Field(default_factory=KpiPriorities)
    #: overrides the kappa schedule (the KPI weight of the blend) when set
    kappa: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False)
    reason: str = Field(default="", max_length=2000)


class KpiPrioritiesDocument(KpiPrioritiesUpdate):
    updated_at_ms: int = Field(default=0, ge=0)
    source: str = "gateway"

    def stored_json(self) -> str:
        return self.model_dump_json(exclude_none=False)
