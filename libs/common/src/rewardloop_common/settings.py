"""pydantic-settings base classes for the environment shared by every Python service.

Environment variables (defaults from docs/architecture.md):

* ``KAFKA_BOOTSTRAP_SERVERS`` (``127.0.0.1:9092``)
* ``REDIS_URL`` (``redis://127.0.0.1:6379/0``)
* ``KAFKA_TOPIC_REWARD_RAW`` / ``KAFKA_TOPIC_KPI_RAW`` / ``KAFKA_TOPIC_SESSIONS``
  (``recsys.reward.raw`` / ``recsys.kpi.raw`` / ``recsys.sessions``)
* ``LOG_FORMAT`` (``console`` or ``json``) and ``LOG_LEVEL`` (``INFO``)

Service settings subclass :class:`CommonSettings` and add their own fields; field names map to
environment variables case-insensitively (``gateway_port`` <- ``GATEWAY_PORT``). No ``.env`` file is
read: the compose ``.env`` uses in-network host names that do not work natively.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class _Base(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)


class KafkaSettings(_Base):
    kafka_bootstrap_servers: str = Field(default="127.0.0.1:9092", min_length=1)
    kafka_topic_reward_raw: str = Field(default="recsys.reward.raw", min_length=1)
    kafka_topic_kpi_raw: str = Field(default="recsys.kpi.raw", min_length=1)
    kafka_topic_sessions: str = Field(default="recsys.sessions", min_length=1)
    #: late / unattributed events of the outer controller (its OUTER_LATE_TOPIC)
    outer_late_topic: str = Field(default="recsys.sessions.late", min_length=1)

    @property
    def all_topics(self) -> list[str]:
        return [
            self.kafka_topic_reward_raw,
            self.kafka_topic_kpi_raw,
            self.kafka_topic_sessions,
            self.outer_late_topic,
        ]


class RedisSettings(_Base):
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", min_length=1)


class LoggingSettings(_Base):
    log_format: Literal["console", "json"] = "console"
    log_level: str = "INFO"


class CommonSettings(KafkaSettings, RedisSettings, LoggingSettings):
    """Everything every Python service reads: Kafka, Redis, topics, logging."""
