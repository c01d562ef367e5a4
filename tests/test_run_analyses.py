"""One registry entry is all an analysis needs: a toy analysis registered here, in
one place (``RUN_DOCUMENTS.register``), is served by the real app over HTTP
(its endpoint and OpenAPI, paged, its layer filter and the 422 of a layer the
network lacks), read by the client, offered by ``fflab run-analysis``, written
by ``fflab schemas`` and listed on the web UI's run page; and dominance, the
analysis that had none of these, has them all, with a known answer. The paper's
per-run collections (shared units, weights) and a run's list of documents page
and refuse a layer the network lacks the same way.

The app runs in uvicorn in this process (SQLite, a local artifact folder), on a
hand-built experiment of two FF runs with three hidden layers of four units.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import jsonschema
import numpy as np
import pytest
import uvicorn
from click.testing import CliRunner
from pydantic import BaseModel

from fflab import accounts
from fflab.client import Client, run_analysis_names
from fflab.db import Artifact, Experiment, Run, session_scope
from fflab.db.migrate import upgrade_database
from fflab.pipeline import documents
from fflab.pipeline.run_document import RunAnalysis, RunAnalysisInput
from fflab.results import RunIdentity, write_document
from fflab.settings import Settings
from fflab.spec import RunKey, build_spec
from fflab.storage import experiment_prefix, get_storage
from service_helpers import free_port, http_ready, wait_for
from test_ui_http import sign_in

EXPERIMENT = "e" * 32
RUNS = ("ff-mnist-seed0", "ff-mnist-seed1")
LABELS = np.array([0, 0, 1, 1])
# Per layer, 4 images x 4 units. Layer 1: unit 2 is the most active on every image;
# layer 2: unit 0 on images 0-2, unit 3 on image 3; layer 3: silent but unit 1 on image 0.
LAYERS = [
    np.array([[0, 1, 5, 0], [1, 0, 4, 0], [0, 0, 3, 1], [2, 0, 6, 0]], dtype=np.float32),
    np.array([[9, 0, 0, 0], [8, 1, 0, 0], [7, 0, 0, 1], [0, 0, 0, 5]], dtype=np.float32),
    np.array([[0, 3, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=np.float32),
]


# ----------------------------------------------------------------------------- the toy analyses


def active_units(X: np.ndarray) -> int:
    """Units active on at least one image. X: (N, n) -> an int."""
    return int((np.asarray(X) > 0).any(axis=0).sum())


class ToyLayer(BaseModel):
    layer: int
    active_units: int


class RunToyCensus(RunIdentity):
    layers: list[ToyLayer]


class RunToyTotal(RunIdentity):
    total_active: int


def toy_census(inputs: RunAnalysisInput) -> RunToyCensus:
    stored = inputs.representations
    return RunToyCensus(run_id=inputs.key.run_id, model=inputs.key.model, dataset=inputs.key.dataset,
                        seed=inputs.key.seed, unseen_class=None,
                        layers=[ToyLayer(layer=layer, active_units=active_units(stored[f"layer{layer}"]))
                                for layer in (1, 2, 3)])


def toy_total(inputs: RunAnalysisInput) -> RunToyTotal:
    census = inputs.documents["toy_census"]
    return RunToyTotal(**census.model_dump(include=set(RunIdentity.model_fields)),
                       total_active=sum(layer.active_units for layer in census.layers))


TOYS = (
    RunAnalysis("toy_census", RunToyCensus, "Units active on any image, per layer.", analyse=toy_census,
                layer_fields=("layers",)),
    RunAnalysis("toy_total", RunToyTotal, "Units active on any image, over the network.", analyse=toy_total),
)


@pytest.fixture(scope="module")
def toys() -> Iterator[tuple[RunAnalysis, ...]]:
    """The toy analyses registered, in the one place an analysis is registered."""
    for toy in TOYS:
        documents.RUN_DOCUMENTS.register(toy.name, toy)
    try:
        yield TOYS
    finally:
        for toy in TOYS:
            documents.RUN_DOCUMENTS.unregister(toy.name)


def test_an_entry_names_its_layer_fields_among_its_documents_fields() -> None:
    with pytest.raises(ValueError, match="records is not a field of RunToyCensus"):
        RunAnalysis("toy", RunToyCensus, "x", analyse=toy_census, layer_fields=("records",))
    with pytest.raises(ValueError, match="needs its analyse step"):
        RunAnalysis("toy", RunToyCensus, "x")
    with pytest.raises(ValueError, match="registered twice"):
        documents.RUN_DOCUMENTS.register("dominance", documents.RUN_DOCUMENTS["dominance"])


# ----------------------------------------------------------------------------- the world


@dataclass
class World:
    url: str
    key: str
    folder: Path


def _hand_built(settings: Settings, folder: Path) -> str:
    """alice's experiment with two analysed runs: the toys' and dominance's documents
    computed by their steps from the same representations, stored as artifacts."""
    storage = get_storage(settings)
    spec = build_spec("quick", {"name": "toys", "models": ["ff"], "seeds": [0, 1], "unseen_class": None,
                                "network": {"width": 4, "layers": 3}})
    with session_scope(settings.resolved_database_url) as session:
        alice = accounts.create_user(session, "alice")
        key = accounts.issue_key(session, alice)
        experiment = Experiment(id=EXPERIMENT, owner=alice, name="toys", spec=spec.model_dump(mode="json"),
                                runs_total=len(RUNS), status="succeeded")
        session.add(experiment)
        session.flush()  # the experiment before its artifacts
        for seed, run_id in enumerate(RUNS):
            run_dir = folder / run_id
            run_dir.mkdir()
            np.savez(run_dir / "representations.npz", labels=LABELS, predictions=LABELS,
                     correct=np.ones(4, dtype=bool), **{f"layer{i}": X for i, X in enumerate(LAYERS, start=1)})
            inputs = RunAnalysisInput(spec, RunKey("ff", "mnist", seed), run_dir)
            identity = {"schema_version": "1.0", "run_id": run_id, "model": "ff", "dataset": "mnist", "seed": seed,
                        "unseen_class": None}
            experiment.runs.append(Run(
                run_id=run_id, model="ff", dataset="mnist", seed=seed, unseen_class=None, queue="cpu",
                status="succeeded", attempts=1, record={"accuracy": 1.0},
                shared_units={**identity, "matrices": [{"layer": layer, "method": "method2", "classes": [0, 1],
                                                        "matrix": [[1, 0], [0, 1]]} for layer in (1, 2, 3)]},
                weight_stats={**identity, "layers": [{"layer": layer, "fraction_positive": 0.5,
                                                      "fraction_negative_incoming": [0.5] * 4}
                                                     for layer in (1, 2, 3)]}))
            session.flush()
            for name in ("toy_census", "toy_total", "dominance"):
                inputs.documents[name] = documents.RUN_DOCUMENTS[name].analyse(inputs)
                path = run_dir / f"{name}.json"
                write_document(inputs.documents[name], path)
                stored = storage.put_file(f"{experiment_prefix(EXPERIMENT)}/runs/{run_id}/{name}.json", path)
                session.add(Artifact(experiment_id=EXPERIMENT, name=f"runs/{run_id}/{name}.json", key=stored.key,
                                     size=stored.size, sha256=stored.sha256, content_type="application/json"))
    return key


@pytest.fixture(scope="module")
def world(toys, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from api.main import create_app

    folder = tmp_path_factory.mktemp("toys")
    settings = Settings(var_dir=folder / "var")
    upgrade_database(settings.resolved_database_url)
    key = _hand_built(settings, folder)
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(http_ready(f"http://127.0.0.1:{port}/healthz"), 30, "the API")
        yield World(f"http://127.0.0.1:{port}", key, folder)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def api(world: World) -> httpx.Client:
    return httpx.Client(base_url=world.url, headers={"Authorization": f"Bearer {world.key}"}, timeout=30)


# ----------------------------------------------------------------------------- the service


def test_every_registered_analysis_has_its_endpoint_in_the_openapi(world: World) -> None:
    paths = api(world).get("/openapi.json").json()["paths"]
    for name in documents.run_analyses():
        assert f"/v1/experiments/{{experiment_id}}/{name.replace('_', '-')}" in paths, name
    toy = paths["/v1/experiments/{experiment_id}/toy-census"]["get"]
    assert "Units active on any image, per layer." in toy["description"]
    assert {p["name"] for p in toy["parameters"]} >= {"model", "dataset", "layer", "run_id", "limit", "page_token"}


def test_the_toy_is_served_paged_and_filtered_by_layer(world: World) -> None:
    with api(world) as client:
        body = client.get(f"/v1/experiments/{EXPERIMENT}/toy-census").json()
        assert [run["run_id"] for run in body["runs"]] == list(RUNS) and body["next_page_token"] is None
        assert [layer["active_units"] for layer in body["runs"][0]["layers"]] == [4, 3, 1]
        first = client.get(f"/v1/experiments/{EXPERIMENT}/toy-census", params={"limit": 1, "layer": 2}).json()
        assert [run["run_id"] for run in first["runs"]] == [RUNS[0]]
        assert first["runs"][0]["layers"] == [{"layer": 2, "active_units": 3}]
        second = client.get(f"/v1/experiments/{EXPERIMENT}/toy-census", params={
            "limit": 1, "layer": 2, "page_token": first["next_page_token"]}).json()
        assert [run["run_id"] for run in second["runs"]] == [RUNS[1]] and second["next_page_token"] is None
        total = client.get(f"/v1/experiments/{EXPERIMENT}/toy-total").json()["runs"]
        assert [run["total_active"] for run in total] == [8, 8]


def test_a_layer_the_network_lacks_is_a_422_naming_the_allowed_layers(world: World) -> None:
    with api(world) as client:
        for path in ("toy-census", "dominance", "lesions"):
            response = client.get(f"/v1/experiments/{EXPERIMENT}/{path}", params={"layer": 7})
            assert response.status_code == 422, (path, response.text)
            problem = response.json()
            assert problem["code"] == "validation_error"
            assert problem["details"][0]["field"] == "query.layer" and problem["details"][0]["given"] == 7
            assert "allowed layers are 1 to 3" in problem["message"] and problem["details"][0]["allowed"] == "1 to 3"
        response = client.get(f"/v1/experiments/{EXPERIMENT}/toy-total", params={"layer": 1})
        assert response.status_code == 422 and "not per layer" in response.json()["message"]
        assert client.get(f"/v1/experiments/{EXPERIMENT}/toy-census", params={"layer": 3}).status_code == 200


def test_the_papers_collections_and_a_runs_documents_page_too(world: World) -> None:
    with api(world) as client:
        for path, field in (("shared-units", "matrices"), ("weights", "layers")):
            url = f"/v1/experiments/{EXPERIMENT}/{path}"
            first = client.get(url, params={"limit": 1, "layer": 3}).json()
            assert [run["run_id"] for run in first["runs"]] == [RUNS[0]], path
            assert [entry["layer"] for entry in first["runs"][0][field]] == [3], path
            second = client.get(url, params={"limit": 1, "layer": 3, "page_token": first["next_page_token"]}).json()
            assert [run["run_id"] for run in second["runs"]] == [RUNS[1]] and second["next_page_token"] is None
            assert client.get(url).json()["next_page_token"] is None
            refused = client.get(url, params={"layer": 4})
            assert refused.status_code == 422 and refused.json()["details"][0]["field"] == "query.layer", path
            assert "allowed layers are 1 to 3" in refused.json()["message"], path
        refused = client.get(f"/v1/experiments/{EXPERIMENT}/ensembles", params={"layer": 7})
        assert refused.status_code == 422 and refused.json()["details"][0]["allowed"] == "1 to 3"
        url = f"/v1/experiments/{EXPERIMENT}/runs/{RUNS[0]}/documents"
        names, params = [], {"limit": 4}
        while True:
            page = client.get(url, params=params).json()
            assert len(page["items"]) <= 4
            names += [(item["name"], item["available"]) for item in page["items"]]
            if not page["next_page_token"]:
                break
            params["page_token"] = page["next_page_token"]
    assert [name for name, _ in names] == list(documents.RUN_DOCUMENTS)
    assert dict(names)["toy_census"] and dict(names)["dominance"] and not dict(names)["lesions"]


def test_dominance_is_served_with_its_known_answer(world: World) -> None:
    with api(world) as client:
        runs = client.get(f"/v1/experiments/{EXPERIMENT}/dominance", params={"run_id": RUNS[0]}).json()["runs"]
    layers = runs[0]["layers"]
    assert [(d["layer"], d["n_winners"], d["top_unit"], d["top_share"]) for d in layers] == [
        (1, 1, 2, 1.0), (2, 2, 0, 0.75), (3, 2, 0, 0.75)]  # layer 3: images 1-3 tie at 0: unit 0 wins
    assert [(c["class_index"], c["unit"], c["share"]) for c in layers[1]["per_class"][:2]] == [(0, 0, 1.0),
                                                                                               (1, 0, 0.5)]
    schema = documents.json_schema("dominance")
    jsonschema.validate(runs[0], schema)


# ----------------------------------------------------------------------------- client, CLI, schemas, UI


def test_the_client_lists_and_reads_the_toy(world: World) -> None:
    import fflab.client

    assert "toy-census" in run_analysis_names() and "dominance" in run_analysis_names()
    assert "toy-census" in fflab.client.RUN_ANALYSES
    with Client(world.url, world.key) as client:
        for name in ("toy-census", "toy_census"):
            body = client.run_analysis(EXPERIMENT, name, layer=3)
            assert [run["layers"] for run in body["runs"]] == [[{"layer": 3, "active_units": 1}]] * 2
        assert client.run_analysis(EXPERIMENT, "dominance", run_id=RUNS[1])["runs"][0]["run_id"] == RUNS[1]
        with pytest.raises(ValueError, match="analysis must be one of .*toy-census"):
            client.run_analysis(EXPERIMENT, "toy-censuses")


def test_the_cli_offers_the_toy_and_reads_it(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from fflab.cli import main
    from fflab.settings import get_settings

    monkeypatch.setenv("FFLAB_API_URL", world.url)
    monkeypatch.setenv("FFLAB_API_KEY", world.key)
    get_settings.cache_clear()
    try:
        help_text = CliRunner().invoke(main, ["run-analysis", "--help"]).output
        result = CliRunner().invoke(main, ["run-analysis", EXPERIMENT, "toy-census", "--layer", "1"],
                                    catch_exceptions=False)
        refused = CliRunner().invoke(main, ["run-analysis", EXPERIMENT, "toy-censuses"])
    finally:
        get_settings.cache_clear()
    assert "toy-census" in help_text and "dominance" in help_text
    assert result.exit_code == 0, result.output
    assert [run["layers"] for run in json.loads(result.output)["runs"]] == [[{"layer": 1, "active_units": 4}]] * 2
    assert refused.exit_code == 2 and "toy-census" in refused.output


def test_the_schema_generator_writes_the_toy(toys, tmp_path: Path) -> None:
    from fflab.cli import main

    printed = json.loads(CliRunner().invoke(main, ["schemas"], catch_exceptions=False).output)
    assert printed["toy_census"] == RunToyCensus.model_json_schema()
    assert printed["toy_total"] == RunToyTotal.model_json_schema()
    written = {path.name for path in documents.write_schemas(tmp_path)}
    assert {"toy_census.schema.json", "toy_total.schema.json", "dominance.schema.json"} <= written


def test_the_ui_run_page_lists_the_toy_and_serves_its_document(world: World) -> None:
    client = httpx.Client(base_url=world.url, timeout=30, follow_redirects=False)
    sign_in(client, world.key)
    experiment_page = client.get(f"/ui/experiments/{EXPERIMENT}").text
    assert f'href="/ui/experiments/{EXPERIMENT}/runs/{RUNS[0]}" class="run-page"' in experiment_page
    page = client.get(f"/ui/experiments/{EXPERIMENT}/runs/{RUNS[0]}")
    assert page.status_code == 200, page.text
    for name in documents.run_analyses():
        assert f'data-analysis="{name}"' in page.text, name
    assert "Units active on any image, per layer." in page.text
    link = f"/ui/experiments/{EXPERIMENT}/runs/{RUNS[0]}/documents/toy_census"
    assert f'href="{link}"' in page.text
    served = client.get(link)
    assert served.status_code == 200
    assert json.loads(served.content) == json.loads((world.folder / RUNS[0] / "toy_census.json").read_text())
    assert client.get(f"/ui/experiments/{EXPERIMENT}/runs/{RUNS[0]}/documents/lesions").status_code == 404
    assert client.get(f"/ui/experiments/{EXPERIMENT}/runs/nope").status_code == 404
