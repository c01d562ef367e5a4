"""The per-run analyses beyond the paper through the real stack: a tiny
experiment trained by a real worker, the document of every registered analysis
served by the API (each valid against its committed schema, filtered by layer),
read by the client and the CLI, and their figures stored with the experiment's."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from fflab.cli import main
from fflab.client import RUN_ANALYSES, Client
from fflab.pipeline.documents import run_analyses
from service_helpers import TINY, Stack, poll_experiment

pytest_plugins = ["service_support"]

SCHEMAS = Path(__file__).resolve().parents[1] / "shared" / "fflab" / "schemas"


@pytest.fixture(scope="module")
def experiment(stack: Stack) -> dict:
    with stack.client(stack.member_key) as client:
        created = client.post("/v1/experiments", json={**TINY, "network": {"width": 48, "layers": 2},
                                                       "snapshots": [1]}).json()
        return poll_experiment(client, created["id"], ("succeeded", "failed"), timeout=180)


def test_every_analysis_is_served_per_run_and_valid(stack: Stack, experiment: dict) -> None:
    assert experiment["status"] == "succeeded", experiment
    with stack.client(stack.member_key) as client:
        for path in RUN_ANALYSES:
            response = client.get(f"/v1/experiments/{experiment['id']}/{path}")
            assert response.status_code == 200, (path, response.text)
            body = response.json()
            assert {run["run_id"] for run in body["runs"]} == {"ff-mnist-seed0", "bp-mnist-seed0"}, path
            schema = json.loads((SCHEMAS / f"{path.replace('-', '_')}.schema.json").read_text())
            for document in body["runs"]:
                jsonschema.validate(document, schema)
        lesions = client.get(f"/v1/experiments/{experiment['id']}/lesions",
                             params={"model": "ff", "layer": 2}).json()["runs"]
        assert [run["model"] for run in lesions] == ["ff"]
        assert lesions[0]["lesions"] and {record["layer"] for record in lesions[0]["lesions"]} == {2}
        dynamics = client.get(f"/v1/experiments/{experiment['id']}/dynamics", params={"model": "bp"}).json()
        assert dynamics["runs"][0]["epochs"] == [1]
        figures = {item["name"] for item in client.get(f"/v1/experiments/{experiment['id']}/figures").json()["items"]}
        drawn = [name for name, analysis in run_analyses().items() if analysis.figure is not None]
        assert {"layer_accuracy", "dynamics", "lesions", "selectivity", "intrinsic_dimension", "dominance"} <= set(drawn)
        for name in drawn:
            assert f"{name}.png" in figures, name  # as GET .../figures/{name} takes it
        assert client.get(f"/v1/experiments/{experiment['id']}/figures/lesions").content[:4] == b"\x89PNG"
        # The generic run-document route serves them too.
        generic = client.get(f"/v1/experiments/{experiment['id']}/runs/ff-mnist-seed0/documents/subensembles")
        assert generic.status_code == 200 and generic.json()["run_id"] == "ff-mnist-seed0"


def test_bad_filters_are_422_naming_the_field_and_others_cannot_read(stack: Stack, experiment: dict) -> None:
    with stack.client(stack.member_key) as client:
        response = client.get(f"/v1/experiments/{experiment['id']}/selectivity", params={"layer": 0})
        assert response.status_code == 422 and "layer" in response.text
        response = client.get(f"/v1/experiments/{experiment['id']}/subensembles", params={"model": "cnn"})
        assert response.status_code == 422 and "model" in response.text
    with stack.client(stack.other_key) as client:
        assert client.get(f"/v1/experiments/{experiment['id']}/lesions").status_code == 404
    with stack.client(None) as client:
        assert client.get(f"/v1/experiments/{experiment['id']}/lesions").status_code == 401


def test_client_and_cli(stack: Stack, experiment: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    with Client(stack.api_url, stack.member_key) as api:
        selectivity = api.run_analysis(experiment["id"], "selectivity", model="bp")
        assert [run["applicable"] for run in selectivity["runs"]] == [False]
        with pytest.raises(ValueError, match="analysis must be one of"):
            api.run_analysis(experiment["id"], "lesion")
    monkeypatch.setenv("FFLAB_API_URL", stack.api_url)
    monkeypatch.setenv("FFLAB_API_KEY", stack.member_key)
    from fflab.settings import get_settings

    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["run-analysis", experiment["id"], "layer-accuracy", "--model", "ff",
                                           "--layer", "1"], catch_exceptions=False)
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)["runs"][0]
    assert [g["layer"] for g in document["goodness"]] == [1] and [p["layer"] for p in document["probes"]] == [1]
