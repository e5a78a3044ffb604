"""Prometheus configs and rules are valid, and the alert rules behave (promtool unit tests).

promtool comes with Prometheus (Debian package `prometheus`, installed by deploy/local/install.sh).
These tests fail, not skip, when it is missing: the rules are part of the deliverable.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROM_DIR = REPO / "deploy" / "prometheus"
RULES = PROM_DIR / "rules" / "rewardloop.rules.yml"
RULE_TESTS = PROM_DIR / "tests" / "rewardloop.rules.test.yml"
CONFIGS = [PROM_DIR / "prometheus.yml", PROM_DIR / "prometheus.compose.yml"]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool not found: run deploy/local/install.sh (Debian package prometheus)"
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_rules_file_is_valid() -> None:
    out = promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_prometheus_config_is_valid_and_loads_the_rules(config: Path) -> None:
    out = promtool("check", "config", str(config))
    assert out.returncode == 0, out.stdout + out.stderr
    rule_files = yaml.safe_load(config.read_text()).get("rule_files") or []
    resolved = {(config.parent / f).resolve() for f in rule_files}
    assert RULES.resolve() in resolved, f"{config.name} does not load {RULES.relative_to(REPO)}"


def test_alert_rules_unit_tests() -> None:
    out = promtool("test", "rules", str(RULE_TESTS))
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_for_severity_and_annotations() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    alerts = [r for g in groups for r in g["rules"] if "alert" in r]
    assert len(alerts) >= 5
    for a in alerts:
        name = a["alert"]
        assert "for" in a, f"{name}: no `for:`"
        assert a.get("labels", {}).get("severity") in {"page", "warning"}, f"{name}: severity"
        ann = a.get("annotations", {})
        assert ann.get("summary") and ann.get("description"), f"{name}: summary/description"
    names = {a["alert"] for a in alerts}
    for required in (
        "RewardloopServiceDown",
        "RewardloopScorerP99OverBudget",
        "RewardloopTelemetrySpoolGrowing",
        "RewardloopTelemetryEventsFailing",
        "RewardloopTelemetryEventsDropped",
        "RewardloopOuterConsumerLagging",
        "RewardloopOuterConsumerLagHigh",
        "RewardloopOuterSessionsStalled",
        "RewardloopOuterWeightsRollback",
    ):
        assert required in names
