"""docker-compose.yml and the Dockerfile cannot run here (no Docker engine):
check their structure instead."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
FFLAB_SERVICES = ("api", "worker-gpu0", "worker-gpu1", "worker-cpu")


def test_services_present() -> None:
    assert {"postgres", "redis", "minio", "minio-init", "data", *FFLAB_SERVICES} <= set(SERVICES)


def test_long_running_services_have_healthchecks() -> None:
    for name in ("postgres", "redis", "minio", *FFLAB_SERVICES):
        check = SERVICES[name].get("healthcheck")
        assert check and check["test"][0] in ("CMD", "CMD-SHELL"), name
    assert "/readyz" in " ".join(SERVICES["api"]["healthcheck"]["test"])


def test_one_gpu_worker_per_device() -> None:
    gpu_workers = {name: s for name, s in SERVICES.items() if name.startswith("worker-gpu")}
    devices = []
    for name, service in gpu_workers.items():
        reservations = service["deploy"]["resources"]["reservations"]["devices"]
        assert len(reservations) == 1, name
        device = reservations[0]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"], name
        assert len(device["device_ids"]) == 1, name
        devices.append(device["device_ids"][0])
        command = service["command"]
        assert command[:4] == ["fflab", "worker", "--gpu", "0"], name  # the container's only GPU
        node = command[command.index("--name") + 1]
        assert node.startswith(f"fflab-gpu{device['device_ids'][0]}@"), name
        assert node.split("@")[0] in " ".join(service["healthcheck"]["test"]), name
    assert sorted(devices) == [str(i) for i in range(len(gpu_workers))]
    assert "deploy" not in SERVICES["worker-cpu"]
    assert SERVICES["worker-cpu"]["command"][:4] == ["fflab", "worker", "--queue", "cpu"]


def test_services_share_configuration_and_wait_for_dependencies() -> None:
    for name in FFLAB_SERVICES:
        service = SERVICES[name]
        env = service["environment"]
        assert env["FFLAB_DATABASE_URL"].startswith("postgresql+psycopg://") and "@postgres:" in env["FFLAB_DATABASE_URL"]
        assert env["FFLAB_BROKER_URL"].startswith("redis://redis:")
        assert env["FFLAB_S3_ENDPOINT_URL"] == "http://minio:9000" and env["FFLAB_S3_BUCKET"] == "fflab"
        depends = service["depends_on"]
        assert depends["postgres"]["condition"] == depends["redis"]["condition"] == "service_healthy"
        assert depends["minio-init"]["condition"] == "service_completed_successfully"
    assert "mc mb --ignore-existing local/fflab" in " ".join(SERVICES["minio-init"]["entrypoint"])
    assert SERVICES["api"]["ports"] == ["8000:8000"]


def test_named_volumes() -> None:
    assert {"pgdata", "redisdata", "miniodata", "data"} <= set(COMPOSE["volumes"])
    mounts = {name: [v.split(":")[0] for v in SERVICES[name].get("volumes", [])] for name in SERVICES}
    assert mounts["postgres"] == ["pgdata"] and mounts["redis"] == ["redisdata"]
    assert mounts["minio"] == ["miniodata"] and mounts["worker-gpu0"] == ["data"]


def test_dockerfile_installs_the_pinned_package_and_runs_the_api() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    assert "['project']['dependencies']" in dockerfile  # torch and the rest from pyproject's pins
    assert "pip install --no-deps -e ." in dockerfile
    assert re.search(r'^CMD \["uvicorn", "--factory", "api.main:create_app"', dockerfile, re.M)
    assert "HEALTHCHECK" in dockerfile
