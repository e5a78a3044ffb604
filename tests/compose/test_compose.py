"""docker-compose.yml agrees with the native stack (deploy/local) and docs/architecture.md.

Runs `docker-compose config` (or `docker compose config`), which resolves the file and `.env` without
a Docker engine, and checks the resolved model: the services, their published ports (the native
defaults), a memory limit and a healthcheck on each, long-form `depends_on`, and that every env var
an app service gets is one the native stack knows (deploy/local/env.defaults, the single list of names
that deploy/local/start.sh loads).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_DEFAULTS = REPO / "deploy" / "local" / "env.defaults"
ARCHITECTURE = REPO / "docs" / "architecture.md"

APP_SERVICES = {"inner-reward", "gateway", "outer-controller", "trainer", "kafka-init"}
INFRA_SERVICES = {"kafka", "redis", "prometheus", "grafana"}
ONE_SHOT = {"kafka-init"}

# docs/architecture.md, "Ports and environment": what each service publishes on the host
EXPECTED_PORTS = {
    "inner-reward": {50051, 9464},
    "gateway": {8000},
    "outer-controller": {9102},
    "trainer": {9103},
    "kafka": {9092},
    "redis": {6379},
    "prometheus": {9090},
    "grafana": {3000},
    "kafka-init": set(),
}


def _compose_cmd() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def _clean_env() -> dict[str, str]:
    """The environment without anything that would override .env (a shell with GATEWAY_PORT=18000...)."""
    keep = {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "DOCKER_CONFIG"}
    return {k: v for k, v in os.environ.items() if k in keep}


@cache
def resolved() -> dict[str, Any]:
    cmd = _compose_cmd()
    if cmd is None:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed")
    out = subprocess.run(
        [*cmd, "-f", str(COMPOSE_FILE), "--project-directory", str(REPO), "config"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=_clean_env(),
        timeout=60,
    )
    assert out.returncode == 0, f"`{' '.join(cmd)} config` failed:\n{out.stderr}"
    return yaml.safe_load(out.stdout)


@cache
def env_defaults() -> dict[str, str]:
    names: dict[str, str] = {}
    for raw in ENV_DEFAULTS.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition("=")
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*", name), f"bad line in env.defaults: {raw!r}"
        names[name] = value
    return names


def _services() -> dict[str, dict[str, Any]]:
    return resolved()["services"]


def _published_ports(svc: dict[str, Any]) -> set[int]:
    ports: set[int] = set()
    for p in svc.get("ports", []):
        if isinstance(p, dict):
            ports.add(int(p["published"]))
        else:  # "HOST:CONTAINER" or "IP:HOST:CONTAINER"
            parts = str(p).split(":")
            ports.add(int(parts[-2]))
    return ports


def _env_names(svc: dict[str, Any]) -> set[str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        return {e.split("=", 1)[0] for e in env}
    return set(env)


def test_compose_config_resolves_without_an_engine() -> None:
    assert resolved()["services"]


def test_expected_services() -> None:
    assert set(_services()) == APP_SERVICES | INFRA_SERVICES


@pytest.mark.parametrize("name", sorted(EXPECTED_PORTS))
def test_published_ports_are_the_native_defaults(name: str) -> None:
    assert _published_ports(_services()[name]) == EXPECTED_PORTS[name]


def test_native_defaults_match_the_published_ports() -> None:
    d = env_defaults()
    native = {
        "inner-reward": {
            int(d["INNER_REWARD_GRPC_ADDR"].rsplit(":", 1)[1]),
            int(d["INNER_REWARD_METRICS_ADDR"].rsplit(":", 1)[1]),
        },
        "gateway": {int(d["GATEWAY_PORT"])},
        "outer-controller": {int(d["OUTER_METRICS_PORT"])},
        "trainer": {int(d["TRAINER_METRICS_PORT"])},
        "kafka": {int(d["KAFKA_PORT"])},
        "redis": {int(d["REDIS_PORT"])},
        "prometheus": {int(d["PROMETHEUS_PORT"])},
    }
    for name, ports in native.items():
        assert ports == EXPECTED_PORTS[name], name
    assert d["KAFKA_CONTROLLER_PORT"] == "9093"


@pytest.mark.parametrize("name", sorted(APP_SERVICES | INFRA_SERVICES))
def test_every_service_has_a_memory_limit(name: str) -> None:
    svc = _services()[name]
    limit = svc.get("mem_limit") or svc.get("deploy", {}).get("resources", {}).get("limits", {}).get("memory")
    assert limit, f"{name} has no mem_limit"


@pytest.mark.parametrize("name", sorted((APP_SERVICES | INFRA_SERVICES) - ONE_SHOT))
def test_every_long_running_service_has_a_healthcheck(name: str) -> None:
    hc = _services()[name].get("healthcheck") or {}
    assert not hc.get("disable"), name
    assert hc.get("test"), f"{name}: healthcheck without test"
    assert hc.get("interval"), f"{name}: healthcheck without interval"
    assert hc.get("start_period"), f"{name}: healthcheck without start_period"


def test_depends_on_is_long_form_with_conditions() -> None:
    allowed = {"service_healthy", "service_completed_successfully"}
    services = _services()
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on must be the long form"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert spec.get("condition") in allowed, f"{name} -> {dep}: {spec}"
            want = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert spec["condition"] == want, f"{name} -> {dep}"
    for name in APP_SERVICES - ONE_SHOT:
        assert "kafka-init" in (services[name].get("depends_on") or {}), f"{name} must wait for kafka-init"


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_app_env_names_are_the_native_stacks(name: str) -> None:
    unknown = _env_names(_services()[name]) - set(env_defaults())
    assert not unknown, f"{name} gets env vars the native stack does not know: {sorted(unknown)}"


def test_compose_hosts_are_service_names() -> None:
    for name in APP_SERVICES:
        env = _services()[name]["environment"]
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert env["REDIS_URL"] == "redis://redis:6379/0"


def test_images_are_pinned() -> None:
    for name, svc in _services().items():
        image = svc.get("image", "")
        assert image and ":" in image.rsplit("/", 1)[-1], f"{name}: image {image!r} has no tag"
        assert not image.endswith(":latest"), f"{name}: {image} is not pinned"
    assert _services()["kafka"]["image"] == "apache/kafka:4.1.1"
    assert _services()["redis"]["image"] == "redis:7.4-alpine"


def test_env_defaults_agree_with_the_architecture_doc() -> None:
    """Every `| svc | `VAR` | `default` |` row of the doc's env table has that default in env.defaults."""
    d = env_defaults()
    rows = re.findall(r"^\|[^|]*\|\s*`([A-Z_]+)`\s*\|\s*`([^`]*)`[^|]*\|\s*$", ARCHITECTURE.read_text(), re.M)
    assert rows, "no env rows found in docs/architecture.md"
    for name, default in rows:
        assert name in d, f"{name} (docs/architecture.md) missing from deploy/local/env.defaults"
        value = d[name].replace("${KAFKA_PORT}", d["KAFKA_PORT"]).replace("${REDIS_PORT}", d["REDIS_PORT"])
        assert value == default, f"{name}: env.defaults has {value!r}, the doc says {default!r}"
