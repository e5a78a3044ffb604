"""rewardloop gateway: KPI events in (HTTP -> Kafka ``recsys.kpi.raw``), weights admin (Redis)."""

__version__ = "0.1.0"
