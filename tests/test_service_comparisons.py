"""Experiments and runs compared with each other, and searched, through the real
service on both deployments: the embedded default (``fflab serve``: SQLite, the
serverless broker) and PostgreSQL + Redis + S3 (``stack``). Two tiny experiments
trained by a real worker (FF, two seeds, theta 0.3 against 0.5):

- ``GET /v1/comparisons``: the spec diff, Table 1 against scipy's Welch test on
  the runs' accuracies, the Jaccard overlaps against the ensembles the API serves,
  markdown, CSV and the overlaid figures; two runs of one experiment; every refusal
  (one side, nine, twice the same, another user's private experiment, an unknown
  run, no finished run, hostile text);
- ``GET /v1/experiments?filter=...``: spec values, metrics, tags; unknown fields with
  "did you mean", NaN, huge numbers and injection attempts refused or harmless;
- the client (``compare``, ``comparison_figure``, ``experiments(filters=)``) and the
  CLI (``fflab diff``, ``fflab status --filter``, ``fflab compare --experiment A
  --experiment B`` refused, pointing to ``fflab diff``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from scipy import stats

from fflab.analysis.experiment_comparison import jaccard
from fflab.cli import main
from fflab.client import ApiError, Client
from service_helpers import TINY, Serve, Stack, poll_experiment

pytest_plugins = ["service_support"]

BASE = {**TINY, "models": ["ff"], "seeds": [0, 1], "network": {"width": 48, "layers": 2}, "snapshots": []}


@dataclass
class Deployment:
    url: str
    alice: str
    bob: str
    a: str  # theta 0.3, tagged baseline
    b: str  # theta 0.5
    owner: str = "alice"  # the name of the user whose key is alice

    def client(self, key: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


def train_two(url: str, alice: str) -> tuple[str, str]:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {alice}"}, timeout=60) as client:
        ids = []
        for name, threshold, tags in (("theta-low", 0.3, ["baseline"]), ("theta-high", 0.5, [])):
            response = client.post("/v1/experiments", json={
                **BASE, "name": name, "tags": tags, "network": {**BASE["network"], "threshold": threshold}})
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        for experiment_id in ids:
            done = poll_experiment(client, experiment_id, ("succeeded", "failed"), timeout=300)
            assert done["status"] == "succeeded", done
    return ids[0], ids[1]


@pytest.fixture(scope="module", params=["embedded", "stack"])
def deployment(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    if request.param == "stack":
        stack: Stack = request.getfixturevalue("stack")
        # Two users of its own: the session's stack holds other modules' experiments, which a search would find.
        with stack.client(stack.admin_key) as admin:
            keys = [admin.post("/v1/admin/users", json={"name": f"{name}-compare"}).json()["api_key"]
                    for name in ("alice", "bob")]
        yield Deployment(stack.api_url, keys[0], keys[1], *train_two(stack.api_url, keys[0]), owner="alice-compare")
        return
    request.getfixturevalue("data_root")
    serve = Serve(tmp_path_factory.mktemp("serve-compare"), "serve", progress_interval_s="0.2")
    try:
        serve.wait_up(timeout=240)  # a loaded machine starts the worker slowly
        with serve.client() as admin:
            keys = [admin.post("/v1/admin/users", json={"name": name}).json()["api_key"] for name in ("alice", "bob")]
        yield Deployment(serve.url, keys[0], keys[1], *train_two(serve.url, keys[0]))
    except BaseException:
        print(serve.process.tail(80))
        raise
    finally:
        serve.process.stop()


def accuracies(client: httpx.Client, experiment_id: str) -> dict[str, float]:
    runs = client.get(f"/v1/experiments/{experiment_id}/runs").json()["items"]
    return {run["run_id"]: run["accuracy"] for run in runs}


def method1_units(client: httpx.Client, experiment_id: str, run_id: str, quantile: float) -> dict:
    body = client.get(f"/v1/experiments/{experiment_id}/ensembles",
                      params={"run_id": run_id, "method": "method1", "quantile": quantile}).json()
    return {(e["layer"], e["class_index"]): set(e["units"]) for run in body["runs"] for e in run["ensembles"]
            if e["n_images"] > 0}


def test_two_experiments_compared(deployment: Deployment) -> None:
    with deployment.client(deployment.alice) as client:
        response = client.get("/v1/comparisons", params={"experiment": [deployment.a, deployment.b]})
        assert response.status_code == 200, response.text
        found = response.json()
        assert [side["experiment"] for side in found["sides"]] == [deployment.a, deployment.b]
        assert [side["runs"] for side in found["sides"]] == [2, 2]
        differing = {f["field"]: f["values"] for f in found["spec"] if f["differs"]}
        assert differing == {"name": ["theta-low", "theta-high"], "network.threshold": [0.3, 0.5]}
        # Table 1 against scipy's Welch test on the runs' accuracies as the API serves them.
        a, b = accuracies(client, deployment.a), accuracies(client, deployment.b)
        cell = next(c for c in found["tables"] if c["table"] == "table1")
        assert [e["n"] for e in cell["estimates"]] == [2, 2]
        assert cell["estimates"][0]["mean"] == pytest.approx(sum(a.values()) / 2)
        difference = cell["differences"][0]
        assert difference["difference"] == pytest.approx(sum(b.values()) / 2 - sum(a.values()) / 2)
        welch = stats.ttest_ind(list(b.values()), list(a.values()), equal_var=False)
        if difference["verdict"] != "no error bar":  # two runs with one accuracy each side: no spread
            assert difference["p"] == pytest.approx(welch.pvalue) and difference["df"] == pytest.approx(welch.df)
        assert {c["layer"] for c in found["tables"] if c["table"] == "table3"} == {1, 2}
        # The overlaps: seed 0 with seed 0, seed 1 with seed 1, against the ensembles the API serves.
        quantile = found["method1_quantile"]
        assert quantile == 0.95  # the quick preset's table quantile, computed by both
        assert {(o["run_a"], o["run_b"]) for o in found["overlaps"]} == {
            ("ff-mnist-seed0", "ff-mnist-seed0"), ("ff-mnist-seed1", "ff-mnist-seed1")}
        units_a = method1_units(client, deployment.a, "ff-mnist-seed0", quantile)
        units_b = method1_units(client, deployment.b, "ff-mnist-seed0", quantile)
        checked = [o for o in found["overlaps"] if o["run_a"] == "ff-mnist-seed0"]
        assert {(o["layer"], o["class_index"]) for o in checked} == set(units_a) & set(units_b)
        for o in checked:
            key = (o["layer"], o["class_index"])
            assert o["jaccard"] == pytest.approx(jaccard(units_a[key], units_b[key]))
            assert (o["size_a"], o["size_b"]) == (len(units_a[key]), len(units_b[key]))
        markdown = client.get("/v1/comparisons", params={"experiment": [deployment.a, deployment.b], "format": "md"})
        assert markdown.headers["content-type"].startswith("text/markdown") and "network.threshold" in markdown.text
        csv_text = client.get("/v1/comparisons", params={"experiment": [deployment.a, deployment.b],
                                                         "format": "csv"}).text
        assert csv_text.splitlines()[0].startswith("table,model,dataset,layer,reference,side")
        for name in ("loss_curves", "layer_quantities.png"):
            figure = client.get(f"/v1/comparisons/figures/{name}",
                                params={"experiment": [deployment.a, deployment.b]})
            assert figure.status_code == 200 and figure.content[:4] == b"\x89PNG", figure.text[:300]
        assert client.get("/v1/comparisons/figures/nope",
                          params={"experiment": [deployment.a, deployment.b]}).status_code == 422


def test_two_runs_of_one_experiment_compared(deployment: Deployment) -> None:
    with deployment.client(deployment.alice) as client:
        sides = [f"{deployment.a}/ff-mnist-seed0", f"{deployment.a}/ff-mnist-seed1"]
        found = client.get("/v1/comparisons", params={"experiment": sides}).json()
        assert [side["run_id"] for side in found["sides"]] == ["ff-mnist-seed0", "ff-mnist-seed1"]
        assert not [f for f in found["spec"] if f["differs"]]
        cell = next(c for c in found["tables"] if c["table"] == "table1")
        assert [e["n"] for e in cell["estimates"]] == [1, 1] and [e["se"] for e in cell["estimates"]] == [None, None]
        assert {d["verdict"] for c in found["tables"] for d in c["differences"]} <= {"no error bar", "not comparable"}
        assert {(o["run_a"], o["run_b"]) for o in found["overlaps"]} == {("ff-mnist-seed0", "ff-mnist-seed1")}


def problem_fields(response: httpx.Response) -> list[str]:
    assert response.headers["content-type"].startswith("application/problem+json"), response.text
    return [d["field"] for d in response.json()["details"]]


def test_comparisons_refused(deployment: Deployment) -> None:
    a, b = deployment.a, deployment.b
    with deployment.client(deployment.alice) as client:
        for sides in ([a], [], [a] * 2, [a, b, *(f"{a}/run{i}" for i in range(7))]):
            response = client.get("/v1/comparisons", params={"experiment": sides})
            assert response.status_code == 422 and problem_fields(response) == ["query.experiment"], response.text
        for bad in ("a b", f"{a}/", "x/y/z", "'; DROP TABLE experiments; --", "x" * 300):
            response = client.get("/v1/comparisons", params={"experiment": [a, bad]})
            assert response.status_code in (404, 422), (bad, response.text)
        assert client.get("/v1/comparisons", params={"experiment": [a, "0" * 32]}).status_code == 404
        missing = client.get("/v1/comparisons", params={"experiment": [a, f"{b}/bp-mnist-seed9"]})
        assert missing.status_code == 404 and "no run bp-mnist-seed9" in missing.json()["message"]
        raw = client.get(f"/v1/comparisons?experiment={a}&experiment=%ED%A0%80")
        assert raw.status_code == 422
        # An experiment with no finished run yet: 409.
        slow = client.post("/v1/experiments", json={**BASE, "name": "slow", "seeds": [0],
                                                    "data": {"train_subset": 5000, "test_subset": 200},
                                                    "ff": {"epochs": 60, "batch_size": 100}})
        assert slow.status_code == 202, slow.text
        slow_id = slow.json()["id"]
        try:
            response = client.get("/v1/comparisons", params={"experiment": [a, slow_id]})
            assert response.status_code == 409 and "no finished run" in response.json()["message"]
        finally:
            client.delete(f"/v1/experiments/{slow_id}")
    with deployment.client(deployment.bob) as client:  # alice's experiments are private
        response = client.get("/v1/comparisons", params={"experiment": [a, b]})
        assert response.status_code == 404 and a in response.json()["message"]
    with deployment.client(None) as client:
        assert client.get("/v1/comparisons", params={"experiment": [a, b]}).status_code == 401


def listed(client: httpx.Client, *filters: str) -> list[str] | httpx.Response:
    response = client.get("/v1/experiments", params={"filter": list(filters)})
    if response.status_code != 200:
        return response
    return sorted(item["id"] for item in response.json()["items"])


def test_search_by_spec_values_metrics_and_tags(deployment: Deployment) -> None:
    a, b = deployment.a, deployment.b
    with deployment.client(deployment.alice) as client:
        assert listed(client, "network.threshold=0.5") == [b]
        assert listed(client, "network.threshold<0.4", "models=ff") == [a]
        assert listed(client, "tag=baseline") == [a]
        assert listed(client, "tag!=baseline", "name=theta-high") == [b]
        assert listed(client, "accuracy>0") == sorted([a, b])
        assert listed(client, "accuracy.ff.mnist>1") == []
        accuracy_a = sum(accuracies(client, a).values()) / 2
        assert listed(client, f"accuracy.ff={json.dumps(accuracy_a)}") == [a]
        assert listed(client, "accuracy.bp>0") == []  # no BP run: no value, no match
        assert listed(client, "ff.epochs>=1", "status=succeeded") == sorted([a, b])
        assert listed(client, "name=x' OR '1'='1") == []  # a value, never SQL
        assert listed(client, f"owner={deployment.owner}") == sorted([a, b])
        for bad, said in (("network.treshold=0.3", "did you mean network.threshold"),
                          ("acuracy>0.9", "did you mean accuracy"),
                          ("network.threshold=NaN", "NaN"), ("network.threshold=1e999", "finite"),
                          ("network.threshold=" + "9" * 100, "out of range"),
                          ("network.threshold>>1", "is a number"), ("1=1", "expected <field>"),
                          ("name>a", "= or != only"), ("created_at>yesterday", "ISO 8601")):
            response = listed(client, bad)
            assert isinstance(response, httpx.Response) and response.status_code == 422, (bad, response)
            assert problem_fields(response) == ["query.filter"] and said in response.json()["message"], response.text
        unknown = listed(client, "network.treshold=0.3")
        assert "network.threshold" in unknown.json()["details"][0]["allowed"]
        assert client.get("/v1/experiments?filter=name%3D%ED%A0%80").status_code == 422
        too_many = listed(client, *(["accuracy>0"] * 21))
        assert too_many.status_code == 422 and "at most 20" in too_many.json()["message"]
    with deployment.client(deployment.bob) as client:  # search never reaches past what one may read
        assert listed(client, "network.threshold=0.5") == []


def test_client_and_cli(deployment: Deployment, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    a, b = deployment.a, deployment.b
    with Client(deployment.url, deployment.alice) as api:
        found = api.compare([a, b])
        assert [s["experiment"] for s in found["sides"]] == [a, b]
        assert "network.threshold" in api.compare([a, b], "md")
        assert api.comparison_figure([a, b], "loss_curves")[:4] == b"\x89PNG"
        assert [e["id"] for e in api.experiments(filters=["network.threshold=0.5"])] == [b]
        with pytest.raises(ApiError) as refused:
            api.compare([a])
        assert refused.value.status_code == 422
    monkeypatch.setenv("FFLAB_API_URL", deployment.url)
    monkeypatch.setenv("FFLAB_API_KEY", deployment.alice)
    from fflab.settings import get_settings

    get_settings.cache_clear()
    try:
        runner = CliRunner()
        result = runner.invoke(main, ["diff", a, b, "--figures", str(tmp_path / "figures")])
        assert result.exit_code == 0, result.output
        assert "network.threshold" in result.output and "Jaccard" in result.output
        assert (tmp_path / "figures" / "layer_quantities.png").read_bytes()[:4] == b"\x89PNG"
        result = runner.invoke(main, ["diff", a, b, "--format", "json"])
        assert json.loads(result.output)["sides"][1]["experiment"] == b
        result = runner.invoke(main, ["status", "--filter", "network.threshold=0.5"])
        assert result.exit_code == 0 and b in result.output and a not in result.output, result.output
        result = runner.invoke(main, ["status", "--filter", "network.treshold=0.5"])
        assert result.exit_code != 0 and "did you mean network.threshold" in result.output
        result = runner.invoke(main, ["compare", "--experiment", a, "--experiment", b])
        assert result.exit_code == 2 and f"fflab diff {a} {b}" in result.output, result.output
        result = runner.invoke(main, ["diff", a])
        assert result.exit_code == 2 and "give 2 to 8" in result.output
    finally:
        get_settings.cache_clear()
