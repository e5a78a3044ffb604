"""``rewardloop-gateway``: run the gateway with uvicorn."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pydantic import ValidationError

ENV_HELP = """\
environment variables:
  GATEWAY_HOST                  bind address (default 127.0.0.1)
  GATEWAY_PORT                  port (default 8000)
  GATEWAY_ADMIN_TOKEN           bearer token for PUT /v1/weights; REQUIRED unless REWARDLOOP_ENV=local
  REWARDLOOP_ENV                'local' allows the dev token 'local-dev-token'
  GATEWAY_KAFKA_DELIVERY_TIMEOUT_SECONDS  wait for the broker's ack before answering 503 (default 5)
  KAFKA_BOOTSTRAP_SERVERS       default 127.0.0.1:9092
  KAFKA_TOPIC_KPI_RAW           default recsys.kpi.raw
  REDIS_URL                     default redis://127.0.0.1:6379/0
  LOG_FORMAT / LOG_LEVEL        console|json / INFO

endpoints: POST /v1/kpi-events, POST /v1/kpi-events:batch, GET /v1/weights, GET /v1/weights/history,
PUT /v1/weights (bearer), GET /healthz, GET /metrics, OpenAPI docs at /docs.
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rewardloop-gateway",
        description="rewardloop gateway: KPI events in (HTTP -> Kafka), weights admin (Redis).",
        epilog=ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", help="override GATEWAY_HOST")
    parser.add_argument("--port", type=int, help="override GATEWAY_PORT")
    ns = parser.parse_args(argv)

    import uvicorn

    from rewardloop_common.logging import configure_logging

    from .app import create_app
    from .settings import GatewaySettings

    try:
        settings = GatewaySettings()
    except ValidationError as exc:
        print(f"rewardloop-gateway: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=ns.host or settings.gateway_host,
        port=ns.port or settings.gateway_port,
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
