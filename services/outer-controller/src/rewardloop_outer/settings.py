"""Outer-controller settings (environment variables; see services/outer-controller/README.md)."""

from __future__ import annotations

from pydantic import Field

from rewardloop_common.settings import CommonSettings


class OuterSettings(CommonSettings):
    #: 0.0.0.0 so Prometheus can scrape it inside compose (the contract fixes only the port).
    outer_metrics_host: str = "0.0.0.0"
    outer_metrics_port: int = Field(default=9102, ge=0, le=65535)
    outer_session_gap_seconds: float = Field(default=1800.0, gt=0)
    outer_gamma: float = Field(default=0.99, ge=0.0, le=1.0)
    outer_consumer_group: str = Field(default="rewardloop-outer-controller", min_length=1)
    outer_update_batch_sessions: int = Field(default=200, ge=2)
    outer_learning_rate: float = Field(default=0.1, ge=0.0, allow_inf_nan=False)
    outer_max_step: float = Field(default=0.1, ge=0.0, allow_inf_nan=False)

    @property
    def gap_ms(self) -> int:
        return max(1, round(self.outer_session_gap_seconds * 1000))
