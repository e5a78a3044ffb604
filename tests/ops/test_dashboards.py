"""Static checks of the Grafana provisioning and dashboards (no Grafana needed)."""

from __future__ import annotations

from pathlib import Path

import yaml

from .dashboards import DASHBOARDS_DIR, DATASOURCE_UID, REPO, dashboard_files, load, panels, targets

PROVISIONING = REPO / "deploy" / "grafana" / "provisioning"


def test_datasource_is_provisioned_with_the_fixed_uid() -> None:
    doc = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())
    (ds,) = doc["datasources"]
    assert ds["uid"] == DATASOURCE_UID
    assert ds["type"] == "prometheus"
    assert ds["url"] == "http://prometheus:9090"


def test_dashboard_provider_points_at_the_mounted_dashboards() -> None:
    doc = yaml.safe_load((PROVISIONING / "dashboards" / "rewardloop.yaml").read_text())
    (prov,) = doc["providers"]
    assert prov["type"] == "file"
    assert prov["options"]["path"] == "/var/lib/grafana/dashboards"


def test_the_four_dashboards_exist() -> None:
    titles = {load(p)["title"] for p in dashboard_files()}
    assert titles == {
        "rewardloop / Serving",
        "rewardloop / Telemetry",
        "rewardloop / Outer loop",
        "rewardloop / Trainer",
    }


def test_dashboards_have_unique_uids_and_panel_ids() -> None:
    uids = [load(p)["uid"] for p in dashboard_files()]
    assert len(uids) == len(set(uids))
    for path in dashboard_files():
        ids = [p["id"] for p in panels(load(path))]
        assert len(ids) == len(set(ids)), path.name


def test_every_target_uses_the_provisioned_datasource() -> None:
    ts = targets()
    assert ts
    bad = [t.name for t in ts if t.datasource_uid != DATASOURCE_UID or not t.expr.strip()]
    assert not bad, f"targets without datasource uid {DATASOURCE_UID} or without expr: {bad}"
    for path in dashboard_files():
        for p in panels(load(path)):
            if p.get("type") != "row":
                assert p.get("datasource", {}).get("uid") == DATASOURCE_UID, f"{path.name}: {p['title']}"


def test_dashboards_dir_is_what_compose_mounts() -> None:
    compose = (REPO / "docker-compose.yml").read_text()
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in compose
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in compose
    assert Path(DASHBOARDS_DIR).is_dir()
