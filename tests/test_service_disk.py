"""A small disk: ``fflab serve`` (the embedded default: SQLite, the SQLite broker and
local artifacts, all in the var dir) with its var dir and temporary folder on a 30 MB
tmpfs, over real HTTP.

* /readyz reports each folder's free space and a write probe, and answers 503 once the
  disk is below FFLAB_MIN_FREE_DISK_BYTES;
* DELETE frees a queued experiment's files on a disk that is full to the last byte
  (files first, then rows: SQLite cannot write before);
* a run fails with a clear error while the disk runs short during its training, instead
  of staying ``running`` with its failure unrecordable.

Mounting needs root (or CAP_SYS_ADMIN); elsewhere the test is skipped, saying so.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service_helpers import TINY, Process, base_env, free_port, http_ready, poll_experiment, wait_for

pytest_plugins = ["service_support"]

MiB = 2**20
FLOOR = 8 * MiB


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 30 MB tmpfs mounted at tmp_path/disk, unmounted at the end."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=30m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 30 MB tmpfs here (needs root or CAP_SYS_ADMIN): "
                    f"{mounted.stderr.strip() or mounted.returncode}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def fill(disk: Path, name: str, leave: int) -> Path:
    """Write a ballast file until ``leave`` bytes are free on ``disk`` (0: until full)."""
    path = disk / name
    with path.open("ab") as handle:
        while (free := shutil.disk_usage(disk).free) > leave:
            try:
                handle.write(b"\0" * min(MiB, max(free - leave, 4096)))
                handle.flush()
            except OSError as error:
                assert error.errno == errno.ENOSPC
                break
    return path


def test_small_disk_readiness_delete_and_failing_run(small_disk: Path, tmp_path: Path) -> None:
    port = free_port()
    env = base_env(api_port=str(port), min_free_disk_bytes=str(FLOOR), disk_check_interval_s="0.2",
                   stop_check_interval_s="0.2", progress_interval_s="0.2")
    (small_disk / "tmp").mkdir()
    env["TMPDIR"] = str(small_disk / "tmp")
    url = f"http://127.0.0.1:{port}"
    logs = tmp_path / "logs"
    logs.mkdir()
    serve = Process("serve", [sys.executable, "-m", "fflab", "serve", "--no-worker"], env, small_disk, logs)
    worker = None
    try:
        wait_for(lambda: serve.check_alive() or http_ready(f"{url}/healthz")(), 90, "fflab serve")
        key = (small_disk / "var" / "admin.key").read_text().strip()
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)

        ready = client.get("/readyz").json()  # 503 without a worker; the disk is fine
        assert ready["checks"]["disk"] == "ok", ready
        folders = ready["disk"]
        assert folders["var dir"]["path"] == str((small_disk / "var").resolve())
        assert 0 < folders["var dir"]["free_bytes"] <= 30 * MiB
        assert folders["var dir"]["min_free_bytes"] == FLOOR and folders["var dir"]["write"] == "ok"

        # A queued experiment (no worker) with 10 MB of partial files; then a full disk.
        queued = client.post("/v1/experiments", json={**TINY, "name": "queued"})
        assert queued.status_code == 202, queued.text
        experiment_id = queued.json()["id"]
        partial = small_disk / "var" / "artifacts" / "experiments" / experiment_id / "runs" / "ff" / "weights.pt.partial"
        partial.parent.mkdir(parents=True)
        partial.write_bytes(b"\0" * (10 * MiB))
        ballast = fill(small_disk, "ballast", 0)
        assert shutil.disk_usage(small_disk).free < 64 * 1024

        full = client.get("/readyz")
        assert full.status_code == 503
        assert full.json()["checks"]["disk"].startswith("low: "), full.json()
        assert "FFLAB_MIN_FREE_DISK_BYTES" in full.json()["checks"]["disk"]

        deleted = client.delete(f"/v1/experiments/{experiment_id}")
        assert deleted.status_code == 204, deleted.text
        assert not partial.exists()
        assert client.get(f"/v1/experiments/{experiment_id}").status_code == 404

        ballast.unlink()
        assert client.get("/readyz").json()["checks"]["disk"] == "ok"

        # A run that trains while the disk runs short fails, saying why.
        worker = Process("worker", [sys.executable, "-m", "fflab", "worker", "--queue", "cpu", "--queue", "gpu",
                                    "--pool", "solo", "--name", "disk-worker"], env, small_disk, logs)
        slow = {**TINY, "name": "slow", "models": ["ff"], "ff": {**TINY["ff"], "epochs": 5000}}
        created = client.post("/v1/experiments", json=slow)
        assert created.status_code == 202, created.text
        slow_id = created.json()["id"]

        def training() -> bool:
            worker.check_alive()
            runs = client.get(f"/v1/experiments/{slow_id}/runs").json()
            items = runs["items"] if isinstance(runs, dict) else runs
            return any(run["status"] == "running" and run.get("progress") for run in items)

        wait_for(training, 120, "the slow run to train", 0.3)
        fill(small_disk, "ballast", FLOOR // 2)
        failed = poll_experiment(client, slow_id, ("failed", "succeeded", "cancelled"), timeout=60)
        assert failed["status"] == "failed", failed
        runs = client.get(f"/v1/experiments/{slow_id}/runs").json()
        items = runs["items"] if isinstance(runs, dict) else runs
        assert "low disk space while the run trained" in items[0]["error"], items[0]
        assert "FFLAB_MIN_FREE_DISK_BYTES" in items[0]["error"]

        low = client.get("/readyz")
        assert low.status_code == 503 and low.json()["checks"]["disk"].startswith("low: ")
        assert low.json()["disk"]["var dir"]["free_bytes"] < FLOOR
    finally:
        for process in (worker, serve):
            if process is not None:
                process.stop()
        for path in small_disk.glob("ballast*"):
            os.unlink(path)
