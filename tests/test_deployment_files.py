"""docker-compose.yml cannot run here (no Docker engine): check what reading it can check."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose__has_the_full_stack() -> None:
    assert set(COMPOSE["services"]) >= {"kafka", "redis", "worker", "prometheus", "grafana"}
    for name, service in COMPOSE["services"].items():
        assert "image" in service or "build" in service, name


def test_compose__dependencies_and_volumes_exist() -> None:
    services = COMPOSE["services"]
    named_volumes = set(COMPOSE.get("volumes") or {})
    for name, service in services.items():
        depends = service.get("depends_on") or []
        for dep in depends if isinstance(depends, list) else depends.keys():
            assert dep in services, f"{name} depends on unknown service {dep}"
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in named_volumes, f"{name} uses undeclared volume {source}"


def test_compose__worker_reaches_kafka_and_redis_by_service_name() -> None:
    env = COMPOSE["services"]["worker"]["environment"]
    kafka_env = COMPOSE["services"]["kafka"]["environment"]
    host, port = env["NEXUS_KAFKA_BOOTSTRAP"].split(":")
    assert host == "kafka"
    assert f"PLAINTEXT://kafka:{port}" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    assert re.match(r"redis://redis:6379/\d+$", env["NEXUS_REDIS_URL"])


def test_compose__prometheus_scrapes_the_worker_metrics_port() -> None:
    prometheus = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())
    targets = [
        t for job in prometheus["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    ]
    port = COMPOSE["services"]["worker"]["environment"]["NEXUS_METRICS_PORT"]
    assert f"worker:{port}" in targets


def test_compose__grafana_provisioning_points_at_mounted_dashboards() -> None:
    provider = yaml.safe_load((REPO / "grafana/provisioning/dashboards/nexus.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    mounts = COMPOSE["services"]["grafana"]["volumes"]
    assert any(m.split(":")[1] == path for m in mounts)
