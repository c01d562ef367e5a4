"""The service end to end through real HTTP, on PostgreSQL, Redis, moto S3 and a
real Celery worker (fixtures in service_support.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import jsonschema
import pytest

from fflab.storage import experiment_prefix
from service_helpers import TINY, Stack, poll_experiment, wait_for

pytest_plugins = ["service_support"]

SCHEMAS = Path(__file__).resolve().parents[1] / "shared" / "fflab" / "schemas"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text())


@pytest.fixture(scope="module")
def member(stack: Stack) -> httpx.Client:
    with stack.client(stack.member_key) as client:
        yield client


@pytest.fixture(scope="module")
def finished(stack: Stack, member: httpx.Client) -> dict:
    """A tiny experiment (FF and BP, one seed) submitted by alice and run to success."""
    response = member.post("/v1/experiments", json=TINY)
    assert response.status_code == 202, response.text
    created = response.json()
    assert response.headers["location"] == created["url"]
    assert created["runs_total"] == 2
    experiment = poll_experiment(member, created["id"], ("succeeded", "failed", "cancelled"))
    assert experiment["status"] == "succeeded", experiment
    return experiment


def test_experiment_runs_to_success_with_progress_and_timings(finished: dict, member: httpx.Client) -> None:
    assert finished["progress"]["runs_done"] == finished["progress"]["runs_total"] == 2
    assert finished["progress"]["runs_by_status"] == {"succeeded": 2}
    timings = finished["timings"]
    assert timings["started_at"] and timings["finished_at"] and timings["elapsed_seconds"] > 0
    assert finished["spec"]["network"]["width"] == 64 and finished["error"] is None

    runs = member.get(f"/v1/experiments/{finished['id']}/runs").json()["items"]
    assert {run["run_id"] for run in runs} == {"ff-mnist-seed0", "bp-mnist-seed0"}
    assert all(run["status"] == "succeeded" and run["queue"].endswith("cpu") for run in runs)
    run = member.get(f"/v1/experiments/{finished['id']}/runs/ff-mnist-seed0").json()
    jsonschema.validate(run["metrics"], schema("metrics"))
    assert 0 <= run["accuracy"] <= 1 and run["record"]["model"] == "ff"

    listed = member.get("/v1/experiments", params={"status": "succeeded"}).json()
    assert finished["id"] in [item["id"] for item in listed["items"]]
    assert member.get("/v1/experiments", params={"status": "failed"}).json()["total"] == 0


def test_result_documents_follow_the_published_schemas(finished: dict, member: httpx.Client) -> None:
    base = f"/v1/experiments/{finished['id']}"
    ensembles = member.get(f"{base}/ensembles", params={"limit": 1000}).json()
    assert ensembles["next_page_token"] is None
    assert len(ensembles["runs"]) == 2
    for document in ensembles["runs"]:
        jsonschema.validate(document, schema("ensembles"))
        methods = {record["method"] for record in document["ensembles"]}
        assert methods == {"method1", "method2"}
    for document in member.get(f"{base}/shared-units").json()["runs"]:
        jsonschema.validate(document, schema("shared_units"))
    for document in member.get(f"{base}/weights").json()["runs"]:
        jsonschema.validate(document, schema("weight_stats"))
    results = member.get(f"{base}/results").json()
    jsonschema.validate(results, schema("results"))
    assert list(results["tables"]) == ["table1", "table2", "table3", "sparseness_treves_rolls",
                                       "sparseness_hoyer", "sparseness_treves_rolls_of_class_mean",
                                       "sparseness_hoyer_of_class_mean", "shared_units"]

    filtered = member.get(f"{base}/ensembles", params={"model": "ff", "layer": 2, "class_index": 3,
                                                        "method": "method1", "quantile": 0.9}).json()
    assert [d["run_id"] for d in filtered["runs"]] == ["ff-mnist-seed0"]
    records = filtered["runs"][0]["ensembles"]
    assert len(records) == 1 and records[0]["layer"] == 2 and records[0]["class_index"] == 3

    csv = member.get(f"{base}/results", params={"format": "csv", "table": "table1"})
    assert csv.headers["content-type"].startswith("text/csv") and csv.text.startswith("Model")
    markdown = member.get(f"{base}/results", params={"format": "md"}).text
    assert "# table1" in markdown and "# table3" in markdown and "| FF |" in markdown
    hoyer = member.get(f"{base}/results", params={"format": "csv", "table": "sparseness_hoyer"})
    assert hoyer.status_code == 200 and hoyer.text.startswith("Model,MNIST Layer 1 mean")
    missing = member.get(f"{base}/results", params={"format": "csv", "table": "unseen_class"})
    assert missing.status_code == 404 and "has no table unseen_class" in missing.text


def test_paper_comparison_in_every_format(finished: dict, member: httpx.Client) -> None:
    base = f"/v1/experiments/{finished['id']}/paper-comparison"
    document = member.get(base).json()
    jsonschema.validate(document, schema("paper_comparison"))
    assert document["reproduction"] is False
    fields = {d["field"] for d in document["protocol"]}
    assert {"data.train_subset", "ff.epochs", "seeds (runs per configuration)"} <= fields
    cells = {c["id"]: c for c in document["cells"]}
    assert cells["table1/ff/mnist"]["n"] == 1 and cells["table1/ff/mnist"]["paper_mean"] == 0.93
    assert cells["table1/bpff/mnist"]["verdict"] == "not comparable"  # no BP/FF run here
    markdown = member.get(base, params={"format": "md"})
    assert markdown.headers["content-type"].startswith("text/markdown")
    assert "**Not a reproduction**" in markdown.text and "| table2/ff/mnist/layer1 |" in markdown.text
    csv = member.get(base, params={"format": "csv"})
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines()[0].startswith("id,source,quantity") and len(csv.text.splitlines()) == 1 + len(document["cells"])
    assert member.get(base, params={"format": "xml"}).status_code == 422


def test_figures_and_artifacts_come_from_s3(stack: Stack, finished: dict, member: httpx.Client) -> None:
    base = f"/v1/experiments/{finished['id']}"
    figures = member.get(f"{base}/figures").json()["items"]
    names = {figure["name"] for figure in figures}
    assert {"figure1a.png", "figure2.png", "training_curves.png"} <= names
    png = member.get(f"{base}/figures/figure1a")
    assert png.headers["content-type"] == "image/png" and png.content.startswith(PNG_SIGNATURE)

    artifacts = {a["name"]: a for a in member.get(f"{base}/artifacts").json()["items"]}
    weights = artifacts["runs/ff-mnist-seed0/weights.pt"]
    body = member.get(f"{base}/artifacts/runs/ff-mnist-seed0/weights.pt").content
    assert len(body) == weights["size"] and hashlib.sha256(body).hexdigest() == weights["sha256"]
    part = member.get(weights["url"], headers={"Range": "bytes=10-19"})  # a ranged read of S3
    assert part.status_code == 206 and part.content == body[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(body)}"
    assert weights["content_type"] == "application/octet-stream"
    assert "runs/bp-mnist-seed0/representations.npz" in artifacts and "results.json" in artifacts

    keys = stack.s3_keys(experiment_prefix(finished["id"]))
    assert f"{experiment_prefix(finished['id'])}/runs/ff-mnist-seed0/weights.pt" in keys
    assert f"{experiment_prefix(finished['id'])}/tables/table2.csv" in keys


def test_reanalysis_changes_ensembles_without_retraining(finished: dict, member: httpx.Client) -> None:
    base = f"/v1/experiments/{finished['id']}"
    query = {"model": "ff", "method": "method1", "layer": 1}

    def sizes() -> dict[tuple[float, int], int]:
        document = member.get(f"{base}/ensembles", params=query).json()["runs"][0]
        return {(r["quantile"], r["class_index"]): r["size"] for r in document["ensembles"]}

    before = sizes()
    assert {q for q, _ in before} == {0.9, 0.95, 0.99}
    trained_at = member.get(f"{base}/runs/ff-mnist-seed0").json()["finished_at"]

    analysis = {"quantiles": [0.5], "table_quantile": 0.5, "figure_quantile": 0.5}
    response = member.post(f"{base}/analyses", json=analysis)
    assert response.status_code == 202, response.text
    created = response.json()
    assert member.get(created["url"]).json()["status"] in ("queued", "running", "succeeded")
    done = wait_for(lambda: (a := member.get(created["url"]).json())["status"] in ("succeeded", "failed") and a,
                    60, "the analysis", 0.2)
    assert done["status"] == "succeeded", done

    after = sizes()
    assert {q for q, _ in after} == {0.5}
    # A lower quantile, a lower threshold: ensembles grow.
    assert sum(after.values()) > sum(v for (q, _), v in before.items() if q == 0.9)
    assert member.get(f"{base}/runs/ff-mnist-seed0").json()["finished_at"] == trained_at
    experiment = member.get(base).json()
    assert experiment["spec"]["analysis"]["quantiles"] == [0.5]
    table2 = member.get(f"{base}/results").json()["tables"]["table2"]
    assert "0.5" in json.dumps(table2)
    assert member.get(f"{base}/figures/figure1b").content.startswith(PNG_SIGNATURE)
    listed = member.get(f"{base}/analyses").json()["items"]
    assert [a["id"] for a in listed] == [created["id"]]


def test_cancel_stops_a_running_experiment(stack: Stack, member: httpx.Client) -> None:
    slow = {**TINY, "ff": {"epochs": 5000, "batch_size": 100, "learning_rate": 0.003}}
    created = member.post("/v1/experiments", json=slow).json()
    url = created["url"]

    def training() -> dict | None:
        body = member.get(url).json()
        return body if body["progress"]["running"] else None

    running = wait_for(training, 60, "the FF run to report progress", 0.2)
    progress = running["progress"]["running"][0]
    assert running["status"] == "running"
    assert progress["model"] == "ff" and progress["layer"] == 1 and progress["epochs"] == 5000
    assert progress["eta_seconds"] is not None

    response = member.post(f"{url}/cancel")  # the FF run trains: final once it has stopped
    assert response.status_code == 200 and response.json()["status"] == "cancelling"

    def stopped() -> list | None:
        runs = member.get(f"{url}/runs").json()["items"]
        return runs if all(run["status"] == "cancelled" for run in runs) else None

    runs = {run["run_id"]: run for run in wait_for(stopped, 30, "both runs to be cancelled", 0.2)}
    assert runs["ff-mnist-seed0"]["started_at"] is not None
    assert runs["bp-mnist-seed0"]["started_at"] is None  # was still queued: never trained
    assert member.get(url).json()["status"] == "cancelled"
    assert member.post(f"{url}/cancel").status_code == 409
    stack.check_alive()


def test_delete_removes_the_experiment_and_its_artifacts(stack: Stack, member: httpx.Client) -> None:
    created = member.post("/v1/experiments", json={**TINY, "models": ["bp"]}).json()
    experiment = poll_experiment(member, created["id"], ("succeeded", "failed"))
    assert experiment["status"] == "succeeded"
    prefix = experiment_prefix(created["id"])
    assert stack.s3_keys(prefix)

    assert member.delete(created["url"]).status_code == 204
    assert member.get(created["url"]).status_code == 404
    assert member.get(f"{created['url']}/artifacts/results.json").status_code == 404
    assert stack.s3_keys(prefix) == []


def test_readiness_and_metrics(stack: Stack) -> None:
    with stack.client(None) as anonymous:
        ready = anonymous.get("/readyz")
        assert ready.status_code == 200
        # anonymous: each check's state only (the details are for an admin or FFLAB_METRICS_TOKEN)
        assert ready.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok", "storage": "ok",
                                                              "disk": "ok", "workers": "ok"},
                                "gpus": [], "disk": {}}
        assert anonymous.get("/healthz").json() == {"status": "ok"}
        assert anonymous.get("/metrics").status_code == 401  # user names: an admin key or FFLAB_METRICS_TOKEN
        metrics = anonymous.get("/metrics", headers={"Authorization": f"Bearer {stack.admin_key}"}).text
        assert 'fflab_runs{queue="' in metrics and "fflab_http_requests_total" in metrics
        assert anonymous.get("/docs").status_code == 200
        assert "/v1/experiments" in anonymous.get("/openapi.json").json()["paths"]
        assert anonymous.get("/healthz").headers["x-request-id"]
