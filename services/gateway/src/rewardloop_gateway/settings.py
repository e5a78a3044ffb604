"""Gateway settings (environment variables; see services/gateway/README.md)."""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator

from rewardloop_common.settings import CommonSettings

LOCAL_DEV_TOKEN = "local-dev-token"


class GatewaySettings(CommonSettings):
    """``GATEWAY_*`` plus the shared Kafka/Redis/topic/logging variables.

    ``GATEWAY_ADMIN_TOKEN`` is required unless ``REWARDLOOP_ENV=local``, where it defaults to
    ``local-dev-token``; constructing the settings raises otherwise (the service refuses to start).
    """

    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(default=8000, ge=1, le=65535)
    gateway_admin_token: SecretStr | None = None
    rewardloop_env: str = "production"
    #: How long a KPI POST waits for the broker's acknowledgement before answering 503.
    gateway_kafka_delivery_timeout_seconds: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _require_token(self) -> GatewaySettings:
        token = self.gateway_admin_token.get_secret_value() if self.gateway_admin_token else ""
        if not token.strip():
            if self.rewardloop_env.strip().lower() == "local":
                self.gateway_admin_token = SecretStr(LOCAL_DEV_TOKEN)
            else:
                raise ValueError(
                    "GATEWAY_ADMIN_TOKEN is required (set REWARDLOOP_ENV=local to use the dev token "
                    f"{LOCAL_DEV_TOKEN!r})"
                )
        return self

    @property
    def admin_token(self) -> str:
        assert self.gateway_admin_token is not None
        return self.gateway_admin_token.get_secret_value()
