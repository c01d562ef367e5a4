"""POST /v1/representations on the embedded default (``fflab serve``: SQLite, local
files) and on PostgreSQL + Redis + S3, one server each: a representations file
uploaded through the client, analysed by the real worker as an experiment of kind
``representations`` and read through the experiment routes (ensembles, a figure,
tables, the paper comparison that does not apply, a re-analysis); hostile uploads
answered 4xx leaving no row and no file; parallel uploads all accounted for."""

from __future__ import annotations

import io
import re
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from fflab.client import ApiError, Client
from service_helpers import Serve, Stack, poll_experiment
from test_representations import N, arrays, npz

pytest_plugins = ["service_support"]

MAX_BYTES, MAX_UNITS, MAX_IMAGES = 300_000, 64, 400  # the stack's too (service_support)
QUOTA = 15_000_000  # embedded only: an upload's estimate is about 6.1 MB (fflab.usage)


@dataclass
class Deployment:
    name: str
    url: str
    alice: str
    bob: str
    dave: str
    stored: Any  # () -> set of stored keys or files under experiments/

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def users(url: str, admin_key: str, suffix: str) -> list[str]:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=60) as admin:
        return [admin.post("/v1/admin/users", json={"name": f"{name}{suffix}"}).json()["api_key"]
                for name in ("alice", "bob", "dave")]


@pytest.fixture(scope="module", params=["embedded", "stack"])
def deployment(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    if request.param == "stack":
        stack: Stack = request.getfixturevalue("stack")
        yield Deployment("stack", stack.api_url, *users(stack.api_url, stack.admin_key, "-repr"),
                         stored=lambda: set(stack.s3_keys("experiments/")))
        return
    request.getfixturevalue("data_root")
    folder = tmp_path_factory.mktemp("serve-representations")
    serve = Serve(folder, "serve", progress_interval_s="0.2", representations_max_bytes=str(MAX_BYTES),
                  representations_max_units=str(MAX_UNITS), representations_max_images=str(MAX_IMAGES),
                  storage_quota_bytes_per_user=str(QUOTA))
    artifacts = folder / "var" / "artifacts" / "experiments"
    try:
        serve.wait_up(timeout=240)  # a loaded machine starts the worker slowly
        yield Deployment("embedded", serve.url, *users(serve.url, serve.key(), ""),
                         stored=lambda: {p.relative_to(artifacts).as_posix() for p in artifacts.rglob("*")}
                         if artifacts.is_dir() else set())
    except BaseException:
        print(serve.process.tail(80))
        raise
    finally:
        serve.process.stop()


def test_an_upload_is_analysed_and_served_as_an_experiment(deployment: Deployment, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "toy.npz"
    path.write_bytes(npz())
    with Client(deployment.url, deployment.alice) as api:
        seen: list[int] = []
        created = api.upload_representations(path, name="toy-upload", tags=["byo"], on_bytes=seen.append)
        assert sum(seen) == path.stat().st_size and created["runs_total"] == 1 and created["name"] == "toy-upload"
        final = api.wait(created["id"], timeout=150, interval=0.3)
        assert final["status"] == "succeeded", final
        assert final["kind"] == "representations" and final["tags"] == ["byo"]
        assert final["spec"]["kind"] == "representations" and [layer["units"] for layer in final["spec"]["layers"]] \
            == [12, 8]
        experiment_id = created["id"]
        ensembles = api.ensembles(experiment_id, layer=2, method="method1")
        records = [e for run in ensembles["runs"] for e in run["ensembles"]]
        assert records and {e["layer"] for e in records} == {2} and ensembles["runs"][0]["model"] == "external"
        assert {e["class_index"] for e in records} == {0, 1, 2}
        png = api.figure(experiment_id, "figure1b.png")
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        with httpx.Client(base_url=deployment.url, timeout=30) as browser:  # the web UI shows it
            token = re.search(r'name="csrf_token" value="([^"]+)"', browser.get("/ui/sign-in").text).group(1)
            assert browser.post("/ui/sign-in", data={"api_key": deployment.alice, "csrf_token": token,
                                                     "next": "/ui/"}).status_code == 303
            page = browser.get(f"/ui/experiments/{experiment_id}")
            assert page.status_code == 200 and "toy-upload" in page.text and "figure1b.png" in page.text
            explorer = browser.get(f"/ui/experiments/{experiment_id}/ensembles", params={"layer": 2})
            assert explorer.status_code == 200 and "ensembles JSON" in explorer.text, explorer.text[-800:]
        comparison = api.paper_comparison(experiment_id)
        assert comparison["cells"] == [] and comparison["protocol"][0]["field"] == "kind"
        assert "does not apply" in api.paper_comparison(experiment_id, "md")
        runs = api.request("GET", f"/v1/experiments/{experiment_id}/runs").json()["items"]
        assert [(run["run_id"], run["status"], run["accuracy"]) for run in runs] == [
            ("external-recorded-seed0", "succeeded", 1.0)]
        tables = api.request("GET", f"/v1/experiments/{experiment_id}/results", params={"format": "md"}).text
        assert "# table2" in tables and "# table3" in tables
        names = {item["name"] for item in api.request("GET", f"/v1/experiments/{experiment_id}/artifacts").json()[
            "items"]}
        assert {"upload/representations.npz", "runs/external-recorded-seed0/ensembles.json",
                "runs/external-recorded-seed0/recording.json", "results.json"} <= names
        assert "figures/training_curves.png" not in names
        # A layer the file does not have is refused naming it.
        refused = api.http.get(f"/v1/experiments/{experiment_id}/shared-units", params={"layer": 3})
        assert refused.status_code == 422 and "1 to 2" in refused.text
        # Re-analysis with another quantile, from the stored file's run.
        analysis = api.analyse(experiment_id, {"quantiles": [0.8], "table_quantile": 0.8, "figure_quantile": 0.8})
        done = api.wait_analysis(experiment_id, analysis["id"], timeout=120)
        assert done["status"] == "succeeded", done
        assert api.ensembles(experiment_id, quantile=0.8)["quantiles"] == [0.8]
        # Not set against a trained experiment: 409 saying why.
        with pytest.raises(ApiError) as caught:
            api.compare([experiment_id, experiment_id + "x"])
        assert caught.value.status_code == 409 and "uploaded representations" in caught.value.message
    with deployment.client(deployment.bob) as bob:  # another user's private upload is not found
        assert bob.get(f"/v1/experiments/{experiment_id}").status_code == 404
    # The CLI: a progress bar, the id and URL; a refused file named by its key.
    from fflab.cli import main
    from fflab.settings import get_settings

    monkeypatch.setenv("FFLAB_API_URL", deployment.url)
    monkeypatch.setenv("FFLAB_API_KEY", deployment.alice)
    get_settings.cache_clear()  # the CLI reads them once per process
    try:
        result = CliRunner().invoke(main, ["upload-representations", str(path), "--name", "cli-upload", "--wait"])
        assert result.exit_code == 0, result.output
        assert "/v1/experiments/" in result.output and "succeeded" in result.output
        bad = tmp_path / "bad.npz"
        bad.write_bytes(npz(layer1=np.full((N, 12), np.inf)))
        result = CliRunner().invoke(main, ["upload-representations", str(bad)])
        assert result.exit_code == 1 and "layer1: holds" in result.output and "finite numbers only" in result.output
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


def too_many_images() -> bytes:
    labels = np.arange(MAX_IMAGES + 1) % 3
    buffer = io.BytesIO()
    np.savez(buffer, layer1=np.random.default_rng(0).random((labels.size, 4)), labels=labels)
    return buffer.getvalue()


def pickled() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays(labels=np.array([object()] * N, dtype=object)))
    return buffer.getvalue()


def no_image_of_a_class() -> bytes:
    labels = np.arange(N) % 3
    labels[labels == 1] = 0
    return npz(labels=labels, predictions=None, class_names=np.array(["a", "b", "c"]))


HOSTILE = {  # name: (body, status, field or None)
    "wrong shape": (npz(layer2=np.zeros((N - 1, 8))), 422, "layer2"),
    "N mismatch": (npz(labels=np.arange(N - 5) % 3, predictions=None), 422, None),
    "NaN": (npz(layer1=np.full((N, 12), np.nan)), 422, "layer1"),
    "infinity": (npz(layer2=np.full((N, 8), -np.inf)), 422, "layer2"),
    "too many units": (npz(layer1=np.ones((N, MAX_UNITS + 1)), weights_layer1=None, weights_layer2=None), 422,
                       "layer1"),
    "too many images": (too_many_images(), 422, None),
    "a class with no image": (no_image_of_a_class(), 422, "labels"),
    "not an npz": (b"just some text, not a zip", 415, None),
    "truncated": (npz()[: len(npz()) // 2], None, None),  # 415 or 422: what is left decides
    "pickle-bearing": (pickled(), 422, "labels"),
    "empty": (b"", 422, None),
}


def raw_upload(url: str, key: str, head_extra: str, pieces: list[bytes]) -> int:
    """POST /v1/representations over a raw socket (headers as given); returns the
    status of the first response, sending what the server still reads."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall((f"POST /v1/representations HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
                      f"Content-Type: application/octet-stream\r\n{head_extra}\r\n").encode())
        try:
            for piece in pieces:
                sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before the whole body: what a cap does
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def chunked(data: bytes, size: int = 65536) -> list[bytes]:
    return [f"{len(data[i:i + size]):x}\r\n".encode() + data[i:i + size] + b"\r\n"
            for i in range(0, len(data), size)] + [b"0\r\n\r\n"]


def test_hostile_uploads_get_4xx_and_leave_no_trace(deployment: Deployment) -> None:
    before = deployment.stored()
    with deployment.client(deployment.bob) as bob:
        for what, (body, status, field) in HOSTILE.items():
            response = bob.post("/v1/representations", content=body,
                                headers={"Content-Type": "application/octet-stream"})
            assert 400 <= response.status_code < 500, (what, response.status_code, response.text)
            if status is not None:
                assert response.status_code == status, (what, response.text)
            problem = response.json()
            assert problem["code"] == {413: "payload_too_large", 415: "unsupported_media_type"}.get(
                response.status_code, "validation_error"), (what, problem)
            if field is not None:
                assert problem["details"][0]["field"] == field and problem["details"][0]["allowed"], (what, problem)
        # A form, or JSON, is not the file.
        form = bob.post("/v1/representations", files={"file": ("toy.npz", npz())})
        assert form.status_code == 415 and "application/octet-stream" in form.json()["message"]
        # Over the cap: honest Content-Length, then as it streams in chunks.
        over = b"\0" * (MAX_BYTES + 1)
        response = bob.post("/v1/representations", content=over, headers={"Content-Type": "application/octet-stream"})
        assert response.status_code == 413 and "FFLAB_REPRESENTATIONS_MAX_BYTES" in response.json()["message"]
        assert bob.get("/v1/experiments").json()["total"] == 0
    # A Content-Length over the cap with a small body: refused from the header.
    assert raw_upload(deployment.url, deployment.bob, f"Content-Length: {MAX_BYTES * 10}\r\n", [b"PK"]) == 413
    # A Content-Length under the cap and more bytes sent: only the declared ones are the body (not an npz).
    assert raw_upload(deployment.url, deployment.bob, "Content-Length: 100\r\n", [over[:100000]]) in (400, 415)
    # Chunked, no length: counted as it arrives.
    assert raw_upload(deployment.url, deployment.bob, "Transfer-Encoding: chunked\r\n", chunked(over * 2)) == 413
    with deployment.client(deployment.bob) as bob:
        assert bob.get("/v1/experiments").json()["total"] == 0  # no row
    assert deployment.stored() == before  # no file


def test_parallel_uploads_are_all_accounted_for(deployment: Deployment) -> None:
    """Four uploads of one user at once: each is accepted (an experiment that
    succeeds) or, on the embedded deployment's storage quota, refused with 429
    leaving nothing."""
    before = deployment.stored()
    barrier = threading.Barrier(4, timeout=60)
    bodies = [npz(layer1=np.random.default_rng(seed).random((N, 12))) for seed in range(4)]

    def upload(index: int) -> httpx.Response:
        with deployment.client(deployment.dave) as client:
            client.get("/healthz")
            barrier.wait()
            return client.post("/v1/representations", content=bodies[index], params={"name": f"parallel-{index}"},
                               headers={"Content-Type": "application/octet-stream"})

    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(upload, range(4)))
    accepted = [r.json()["id"] for r in responses if r.status_code == 202]
    refused = [r for r in responses if r.status_code != 202]
    assert all(r.status_code == 429 and r.json()["code"] == "quota_exceeded" and "storage quota" in r.json()["message"]
               for r in refused), [r.text for r in refused]
    assert accepted and (refused if deployment.name == "embedded" else not refused), [r.text for r in responses]
    with deployment.client(deployment.dave) as client:
        listed = client.get("/v1/experiments", params={"limit": 50}).json()
        assert sorted(item["id"] for item in listed["items"]) == sorted(accepted)
        for experiment_id in accepted:
            assert poll_experiment(client, experiment_id, ("succeeded", "failed"), 150)["status"] == "succeeded"
    added = {key.split("/", 2)[1 if key.startswith("experiments/") else 0] for key in deployment.stored() - before}
    assert added == set(accepted)

