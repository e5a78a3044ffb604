"""The Grafana dashboards in deploy/grafana/dashboards: loading them and their PromQL targets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS_DIR = REPO / "deploy" / "grafana" / "dashboards"
DATASOURCE_UID = "rewardloop-prometheus"

# what Grafana substitutes in a query, as fixed windows for a direct Prometheus query
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "10s", "$__range": "5m"}


@dataclass(frozen=True)
class Target:
    dashboard: str
    panel: str
    ref_id: str
    expr: str
    datasource_uid: str | None

    @property
    def name(self) -> str:
        return f"{self.dashboard} / {self.panel} [{self.ref_id}]"

    def promql(self) -> str:
        q = self.expr
        for var, value in GRAFANA_VARS.items():
            q = q.replace(var, value)
        return q


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS_DIR.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those nested in collapsed rows included."""
    for p in dashboard.get("panels", []):
        yield p
        yield from p.get("panels", [])


def targets() -> list[Target]:
    out: list[Target] = []
    for path in dashboard_files():
        d = load(path)
        for p in panels(d):
            for t in p.get("targets", []):
                ds = t.get("datasource") or {}
                out.append(
                    Target(
                        dashboard=d["title"],
                        panel=p.get("title", f"panel {p.get('id')}"),
                        ref_id=t.get("refId", "?"),
                        expr=t.get("expr", ""),
                        datasource_uid=ds.get("uid") if isinstance(ds, dict) else None,
                    )
                )
    return out
