"""Cancelling keeps what finished, and re-analyses keep their history, through the
real service on both deployments: the embedded default (``fflab serve``) and
PostgreSQL + Redis + S3 (``stack``), one server per module and deployment.

- An experiment cancelled after one run succeeded (FF, one epoch) while the other
  still trains (BP, thousands of epochs of single images) ends ``cancelled`` with the
  partial results of the succeeded run: results.json ``partial`` with the runs in
  and out (and why), tables titled and figures captioned "partial: 1 of 2 runs",
  the status's ``results``, the paper comparison saying so; ``fflab results`` and
  ``fflab figures`` say what exists, and for an experiment cancelled before any run
  succeeded that there is nothing (exit 1).
- Two re-analyses with different settings (one by ``fflab analyse ID --wait``) are
  each readable at ``.../analyses/{id}/results`` afterwards; the experiment's
  results are the latest's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from fflab.cli import main
from service_helpers import TINY, Serve, Stack, poll_experiment, wait_for

pytest_plugins = ["service_support"]

QUICK = {**TINY, "name": "partial-quick", "models": ["ff"], "seeds": [0], "snapshots": []}
# FF for one epoch, then BP for far longer than the test waits: cancelled while it trains.
PARTIAL = {**TINY, "name": "partial", "models": ["ff", "bp"], "seeds": [0], "snapshots": [],
           "bp": {"epochs": 5000, "batch_size": 1, "learning_rate": 0.003}}
NOTHING = {**PARTIAL, "name": "partial-none", "models": ["bp"]}


@dataclass
class Deployment:
    url: str
    key: str
    partial: str  # cancelled after ff-mnist-seed0 succeeded
    none: str  # cancelled before any run succeeded
    quick: str  # succeeded: re-analysed

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=60)


def runs_of(client: httpx.Client, experiment_id: str) -> dict[str, str]:
    return {run["run_id"]: run["status"] for run in client.get(f"/v1/experiments/{experiment_id}/runs").json()["items"]}


def prepare(url: str, key: str) -> Deployment:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        ids = {}
        for spec in (PARTIAL, QUICK, NOTHING):
            response = client.post("/v1/experiments", json=spec)
            assert response.status_code == 202, response.text
            ids[spec["name"]] = response.json()["id"]
        partial = ids["partial"]
        wait_for(lambda: runs_of(client, partial) == {"ff-mnist-seed0": "succeeded", "bp-mnist-seed0": "running"}
                 or None, 240, "FF to succeed while BP trains", 0.2)
        assert client.post(f"/v1/experiments/{partial}/cancel").status_code == 200
        assert client.post(f"/v1/experiments/{ids['partial-none']}/cancel").status_code == 200
        for experiment_id, final in ((partial, "cancelled"), (ids["partial-none"], "cancelled"),
                                     (ids["partial-quick"], "succeeded")):
            done = poll_experiment(client, experiment_id, ("succeeded", "failed", "cancelled"), timeout=240)
            assert done["status"] == final, done
    return Deployment(url, key, partial, ids["partial-none"], ids["partial-quick"])


@pytest.fixture(scope="module", params=["embedded", "stack"])
def deployment(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    if request.param == "stack":
        stack: Stack = request.getfixturevalue("stack")
        with stack.client(stack.admin_key) as admin:
            key = admin.post("/v1/admin/users", json={"name": "alice-partial"}).json()["api_key"]
        yield prepare(stack.api_url, key)
        return
    request.getfixturevalue("data_root")
    serve = Serve(tmp_path_factory.mktemp("serve-partial"), "serve", progress_interval_s="0.2",
                  stop_check_interval_s="0.2")
    try:
        serve.wait_up(timeout=240)
        yield prepare(serve.url, serve.key())
    except BaseException:
        print(serve.process.tail(80))
        raise
    finally:
        serve.process.stop()


@pytest.fixture
def cli(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    from fflab.settings import get_settings

    monkeypatch.setenv("FFLAB_API_URL", deployment.url)
    monkeypatch.setenv("FFLAB_API_KEY", deployment.key)
    get_settings.cache_clear()
    yield CliRunner()
    get_settings.cache_clear()


def test_a_cancelled_experiment_keeps_the_results_of_its_succeeded_run(deployment: Deployment) -> None:
    with deployment.client() as client:
        status = client.get(f"/v1/experiments/{deployment.partial}").json()
        assert status["status"] == "cancelled" and status["timings"]["finished_at"]
        assert status["results"]["partial"] is True
        assert (status["results"]["runs_included"], status["results"]["runs_total"]) == (1, 2)
        assert runs_of(client, deployment.partial) == {"ff-mnist-seed0": "succeeded", "bp-mnist-seed0": "cancelled"}

        results = client.get(f"/v1/experiments/{deployment.partial}/results").json()
        assert results["partial"] is True
        assert results["runs_included"] == ["ff-mnist-seed0"]
        assert [(run["run_id"], run["status"]) for run in results["runs_missing"]] == [("bp-mnist-seed0", "cancelled")]
        assert [run["run_id"] for run in results["runs"]] == ["ff-mnist-seed0"]
        assert "partial: 1 of 2 runs" in results["tables"]["table1"]["title"]
        assert [str(row[0]).lower() for row in results["tables"]["table1"]["rows"]] == ["ff"]
        markdown = client.get(f"/v1/experiments/{deployment.partial}/results", params={"format": "md"}).text
        assert "partial: 1 of 2 runs" in markdown and "bp-mnist-seed0 (cancelled)" in markdown

        figures = client.get(f"/v1/experiments/{deployment.partial}/figures").json()["items"]
        names = {figure["name"] for figure in figures}
        assert "figure2.png" in names and "figure1a.png" in names, names
        png = client.get(f"/v1/experiments/{deployment.partial}/figures/figure2.png")
        assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
        assert "figure2.png" in results["figures"]  # its caption (drawn as paths) says partial: 1 of 2 runs

        comparison = client.get(f"/v1/experiments/{deployment.partial}/paper-comparison").json()
        assert "partial: 1 of 2 runs" in comparison["experiment"]

        nothing = client.get(f"/v1/experiments/{deployment.none}")
        assert nothing.json()["status"] == "cancelled" and nothing.json()["results"] is None
        refused = client.get(f"/v1/experiments/{deployment.none}/results")
        assert refused.status_code == 409 and "none of its runs succeeded" in refused.json()["detail"]


def test_fflab_results_and_figures_say_what_exists(deployment: Deployment, cli: CliRunner, tmp_path: Path) -> None:
    result = cli.invoke(main, ["results", deployment.partial])
    assert result.exit_code == 0, result.output
    assert "partial: 1 of 2 runs" in result.output and "bp-mnist-seed0 (cancelled)" in result.output
    assert "ff-mnist-seed0" in result.output
    result = cli.invoke(main, ["results", deployment.partial, "--format", "json"])
    assert result.exit_code == 0 and "partial results: 1 of 2 runs" in result.output, result.output
    result = cli.invoke(main, ["figures", deployment.partial, "--download", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "figure2.png").read_bytes()[:4] == b"\x89PNG"

    result = cli.invoke(main, ["results", deployment.none])
    assert result.exit_code == 1, result.output
    assert "none of its runs succeeded" in result.output and "1 cancelled" in result.output
    result = cli.invoke(main, ["figures", deployment.none])
    assert result.exit_code == 1, result.output
    assert "has no figures" in result.output and "cancelled before any of its runs succeeded" in result.output


def test_two_reanalyses_both_readable(deployment: Deployment, cli: CliRunner) -> None:
    result = cli.invoke(main, ["analyse", deployment.quick, "--quantile", "0.8", "--wait"])
    assert result.exit_code == 0, result.output
    first = result.output.split()[1]
    assert f"analysis {first}: succeeded" in result.output, result.output
    with deployment.client() as client:
        response = client.post(f"/v1/experiments/{deployment.quick}/analyses",
                               json={"quantiles": [0.95], "table_quantile": 0.95, "figure_quantile": 0.95})
        assert response.status_code == 202, response.text
        second = response.json()["id"]
        wait_for(lambda: client.get(f"/v1/experiments/{deployment.quick}/analyses/{second}").json()["status"]
                 in ("succeeded", "failed") or None, 180, "the second re-analysis", 0.2)
        versions = client.get(f"/v1/experiments/{deployment.quick}/analyses").json()["items"]
        assert [(v["id"], v["status"], v["spec"]["quantiles"]) for v in versions] == [
            (first, "succeeded", [0.8]), (second, "succeeded", [0.95])]
        kept = {}
        for version in versions:
            assert version["results_url"].endswith(f"/analyses/{version['id']}/results")
            kept[version["id"]] = client.get(version["results_url"]).json()
        assert "0.8" in kept[first]["tables"]["table2"]["title"]
        assert "0.95" in kept[second]["tables"]["table2"]["title"]
        assert client.get(f"/v1/experiments/{deployment.quick}/results").json() == kept[second]
        markdown = client.get(f"/v1/experiments/{deployment.quick}/analyses/{first}/results",
                              params={"format": "md", "table": "table2"}).text
        assert "0.8" in markdown
        status = client.get(f"/v1/experiments/{deployment.quick}").json()
        assert status["results"]["partial"] is False and status["results"]["analysis_id"] == second
        other = client.get(f"/v1/experiments/{deployment.partial}/analyses/{first}/results")
        assert other.status_code == 404
