"""Sweeps: a spec field varied over a list of values, expanded into a grid of runs
under one experiment, aggregated per grid point.

- The spec: sweepable paths and values, errors located at ``sweep.<path>``,
  the grid, run ids with their point.
- The aggregation, on hand-built runs whose accuracy, ensemble sizes and
  fractions of positive weights are known per grid point and seed: the sweep
  section's means and standard errors, the stacked tables, the figure.
- The service's limits count the expanded grid.
- End to end through ``fflab run`` and through the service (the real stack:
  API, worker, PostgreSQL, Redis, S3), training on a tiny subset.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing
from dataclasses import replace
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import ValidationError

from fflab import accounts, gpu, results
from fflab.db import session_scope
from fflab.db.migrate import upgrade_database
from fflab.pipeline import documents, experiment, folders
from fflab.results import RunMetrics, Timings, write_document
from fflab.settings import Settings
from fflab.spec import ExperimentSpec, RunKey, build_spec, sweepable_fields
from service_helpers import TINY as SERVICE_TINY
from service_helpers import Stack, poll_experiment
from test_pipeline_golden import NETWORK_ANALYSES

pytest_plugins = ["service_support"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def schema(name: str) -> dict:
    return json.loads((results.SCHEMA_DIR / f"{name}.schema.json").read_text())


def locations(error: ValidationError) -> list[str]:
    return [".".join(str(part) for part in problem["loc"]) for problem in error.errors()]


# ---------------------------------------------------------------- the spec


def test_a_sweep_expands_into_a_grid_of_runs_whose_ids_round_trip():
    spec = build_spec("quick", {"models": ["ff", "bp"], "unseen_class": 0,
                                "sweep": {"network.threshold": [0.1, 0.3, 1], "bp.learning_rate": [0.01, 0.003]}})
    assert spec.sweep == {"network.threshold": [0.1, 0.3, 1.0], "bp.learning_rate": [0.01, 0.003]}
    points = spec.points()
    assert [p.index for p in points] == list(range(6))
    assert points[3].values == {"network.threshold": 0.3, "bp.learning_rate": 0.003}  # first field slowest
    at = spec.at(3)
    assert (at.network.threshold, at.bp.learning_rate, at.sweep) == (0.3, 0.003, None)
    assert at.ff == spec.ff and at.seeds == spec.seeds
    keys = spec.runs()
    # per point: 2 models x 3 seeds, plus FF without class 0 on MNIST per seed
    assert len(keys) == 6 * (6 + 3) and len({k.run_id for k in keys}) == len(keys)
    assert keys[:2] == spec.runs_at(0)[:2]
    assert spec.runs_at(5)[-1].run_id == "ff-mnist-seed2-p5-without0"
    for key in keys:
        assert RunKey.parse(key.run_id) == key
    assert RunKey.parse("bp-fashion_mnist-seed12-p9") == RunKey("bp", "fashion_mnist", 12, None, 9)
    assert spec.paper_point() == 0


def test_without_a_sweep_nothing_changes():
    spec = build_spec("quick")
    assert spec.sweep is None and spec.points() == [] and spec.paper_point() is None
    assert spec.at(None) is spec
    assert [k.run_id for k in spec.runs()][:1] == ["ff-mnist-seed0"]
    with pytest.raises(ValueError, match="no sweep"):
        spec.at(0)


@pytest.mark.parametrize(("sweep", "where", "message"), [
    ({"network.threshold": [0.1, 0]}, "sweep.network.threshold.1", "greater than 0"),
    ({"network.threshold": [0.1, "high"]}, "sweep.network.threshold.1", "valid number"),
    ({"ff.epochs": [2, 2.5]}, "sweep.ff.epochs.1", "valid integer"),
    ({"network.activation": ["sigmoid", "tanh"]}, "sweep.network.activation.1", "'sigmoid'"),
    ({"network.threshold": [1, 1.0]}, "sweep.network.threshold", "repeated: 1.0"),
    ({"network.threshold": [0.3]}, "sweep.network.threshold", "2 to 10 values"),
    ({"network.threshold": [0.1 * i for i in range(1, 12)]}, "sweep.network.threshold", "2 to 10 values"),
    ({"seeds": [1, 2]}, "sweep.seeds", "cannot be swept"),
    ({"analysis.table_quantile": [0.9, 0.95]}, "sweep.analysis.table_quantile", "cannot be swept"),
    ({"device": ["cpu", "cuda"]}, "sweep.device", "cannot be swept"),
    ({"snapshots": [None, 3]}, "sweep.snapshots", "cannot be swept"),
    ({"network.thresold": [0.1, 0.3]}, "sweep.network.thresold", "network.threshold"),
    ({"symba.epochs": [1, 2]}, "sweep.symba.epochs", "not among models"),
    ({"network.width": [8, 16], "network.layers": [1, 2], "ff.epochs": [1, 2]}, "sweep", "1 to 2 settings"),
    ({}, "sweep", "1 to 2 settings"),
    # Each value is valid alone; one grid point is not (a rule across two fields).
    ({"network.normalize_first_layer": [True, False], "network.first_layer_normalization": ["l2", None]},
     "sweep", 'network.normalize_first_layer = false with network.first_layer_normalization = "l2" is not allowed'),
])
def test_bad_sweeps_are_named_at_their_path(sweep, where, message):
    with pytest.raises(ValidationError) as raised:
        build_spec("quick", {"sweep": sweep})
    problems = {loc: problem["msg"] for loc, problem in zip(locations(raised.value), raised.value.errors())}
    assert where in problems, problems
    assert message in problems[where], problems[where]


def test_sweepable_fields_leave_out_what_makes_the_grid():
    fields = sweepable_fields()
    assert {"network.threshold", "bp.learning_rate", "ff.epochs", "data.train_subset", "prediction"} <= set(fields)
    assert not {f for f in fields if f.split(".")[0] in
                {"name", "models", "datasets", "seeds", "unseen_class", "unseen_class_datasets",
                 "unseen_class_negatives", "sweep", "analysis", "device", "snapshots"}}


def test_every_sweepable_setting_takes_a_json_scalar():
    """A swept value is a scalar (SweepValue): a setting whose values are lists or
    objects could not be given one, so it must not be offered."""
    def containers(annotation) -> set:
        origin = typing.get_origin(annotation)
        found = {origin} & {list, dict, tuple, set}
        return found.union(*(containers(arg) for arg in typing.get_args(annotation)))

    for path in sweepable_fields():
        section, *inner = path.split(".")
        field = ExperimentSpec.model_fields[section]
        if inner:
            field = field.annotation.model_fields[inner[0]]
        assert not containers(field.annotation), (path, field.annotation)


def test_a_spec_with_a_sweep_round_trips_through_json():
    spec = build_spec("quick", {"sweep": {"data.train_subset": [None, 500]}})
    assert spec.points()[0].values == {"data.train_subset": None}
    assert type(spec).model_validate_json(spec.model_dump_json()) == spec


def test_a_runs_gpu_memory_estimate_uses_its_grid_points_width():
    spec = build_spec("quick", {"sweep": {"network.width": [100, 2000]}})
    narrow, wide = (gpu.estimate_run_memory(spec, key) for key in (spec.runs_at(0)[0], spec.runs_at(1)[0]))
    assert wide > narrow
    assert wide == gpu.estimate_run_memory(spec.at(1), replace(spec.runs_at(1)[0], point=None))


# ---------------------------------------------------------------- aggregation on hand-built runs

WIDTH, N_TEST = 16, 100
THRESHOLDS = [0.1, 0.3]


def planted(point: int, seed: int, layer: int) -> dict[str, float]:
    """The numbers a hand-built run has: accuracy, every class's ensemble size in
    the layer, fraction of positive weights in the layer."""
    return {"accuracy": 0.5 + 0.1 * point + 0.2 * seed, "size": 2 + point + seed + (layer - 1),
            "positive": 0.25 + 0.25 * point + 0.125 * seed}  # exact shares of 16 x 784 and 16 x 16


def write_planted_run(spec, key: RunKey, run_dir: Path) -> None:
    """Images of class c: units c, c+1, ... (``size`` of them) at 1.0, the others at
    0.0, so that Method 1 at 0.95 finds exactly those units; the first ``accuracy``
    share of the test images correct (as many of each class); weights with exactly
    the planted share of positive entries."""
    labels = np.arange(N_TEST) % 10
    arrays = {}
    for layer in (1, 2):
        numbers = planted(key.point, key.seed, layer)
        X = np.zeros((N_TEST, WIDTH), dtype=np.float32)
        for c in range(10):
            X[np.ix_(labels == c, (c + np.arange(numbers["size"])) % WIDTH)] = 1.0
        arrays[f"layer{layer}"] = X
    accuracy = planted(key.point, key.seed, 1)["accuracy"]
    correct = np.arange(N_TEST) < round(accuracy * N_TEST)
    run_dir.mkdir(parents=True, exist_ok=True)
    np.savez(run_dir / "representations.npz", labels=labels, predictions=np.where(correct, labels, (labels + 1) % 10),
             correct=correct, **arrays)
    state = {}
    for index, (n_in, n_out) in enumerate(((784, WIDTH), (WIDTH, WIDTH))):
        positive = round(planted(key.point, key.seed, index + 1)["positive"] * n_in * n_out)
        weights = -np.ones(n_in * n_out, dtype=np.float32)
        weights[:positive] = 0.5
        state[f"layers.{index}.weight"] = torch.from_numpy(weights.reshape(n_out, n_in))
        state[f"layers.{index}.bias"] = torch.zeros(n_out)
    torch.save(state, run_dir / "weights.pt")
    write_document(RunMetrics(
        run_id=key.run_id, model=key.model, dataset=key.dataset, seed=key.seed, unseen_class=None,
        accuracy=float(correct.mean()), per_class_accuracy=[float(correct[labels == c].mean()) for c in range(10)],
        n_train=100, n_test=N_TEST, loss_history=[[1.0]], device="cpu",
        timings=Timings(train_seconds=0.0, evaluate_seconds=0.0),
    ), run_dir / "metrics.json")


@pytest.fixture(scope="module")
def planted_sweep(tmp_path_factory) -> tuple[Path, dict]:
    spec = build_spec("quick", {"models": ["ff", "bp"], "seeds": [0, 1], "unseen_class": None,
                                "network": {"width": WIDTH, "layers": 2},
                                "sweep": {"network.threshold": THRESHOLDS}})
    folder = tmp_path_factory.mktemp("sweep") / "planted"
    folders.write_spec(spec, folder)
    for key in spec.runs():
        write_planted_run(spec, key, folders.run_dir_of(folder, key))
        # Not the analyses beyond the paper: they need the real test images and a trained
        # network (the tiny sweeps below compute them per grid point).
        documents.analyse_run(spec, key, folders.run_dir_of(folder, key),
                              names=[name for name in documents.RUN_DOCUMENTS if name not in NETWORK_ANALYSES])
    return folder, experiment.aggregate(spec, folder)


def test_the_sweep_section_has_the_planted_numbers_per_point(planted_sweep):
    folder, document = planted_sweep
    jsonschema.validate(json.loads((folder / "results.json").read_text()), schema("results"))
    assert document["schema_version"] == results.SWEEP_SCHEMA_VERSION
    sweep = document["sweep"]
    assert sweep["fields"] == ["network.threshold"] and sweep["paper_point"] == 0
    assert sweep["points"] == [{"index": i, "values": {"network.threshold": t}} for i, t in enumerate(THRESHOLDS)]
    assert [(c["point"], c["model"]) for c in sweep["cells"]] == [(0, "ff"), (0, "bp"), (1, "ff"), (1, "bp")]
    for cell in sweep["cells"]:
        p = cell["point"]
        # two seeds one apart in the planted numbers: SE = std(ddof=1) / sqrt(2) = half the gap
        assert cell["accuracy"] == pytest.approx({"mean": 0.6 + 0.1 * p, "se": 0.1, "n": 2})
        assert cell["ensemble_size"] == [pytest.approx({"mean": 2.5 + p + layer, "se": 0.5, "n": 2})
                                         for layer in (0, 1)]
        assert cell["fraction_positive_weights"] == [pytest.approx({"mean": 0.3125 + 0.25 * p, "se": 0.0625,
                                                                    "n": 2})] * 2
    assert {(r["run_id"], r["point"], r["sweep_values"]["network.threshold"]) for r in document["runs"]} == {
        (f"{m}-mnist-seed{s}-p{p}", p, THRESHOLDS[p]) for m in ("ff", "bp") for s in (0, 1) for p in (0, 1)}


def test_tables_have_a_row_per_point_and_model_and_the_sweep_table(planted_sweep):
    folder, document = planted_sweep
    table1 = document["tables"]["table1"]
    assert table1["columns"][:4] == ["network.threshold", "Model", "MNIST mean", "MNIST se"]
    assert [row[:3] for row in table1["rows"]] == [
        [0.1, "FF", pytest.approx(0.6)], [0.1, "BP", pytest.approx(0.6)],
        [0.3, "FF", pytest.approx(0.7)], [0.3, "BP", pytest.approx(0.7)]]
    table2 = document["tables"]["table2"]
    assert table2["rows"][2][table2["columns"].index("MNIST Layer 2 mean")] == pytest.approx(4.5)
    sweep = (folder / "tables" / "sweep.md").read_text()
    assert "| network.threshold | Model | Data set | Accuracy | Ensemble size Layer 1 |" in sweep
    assert "| 0.3 | FF | MNIST | 0.7 ± 0.1 | 3.5 ± 0.5 | 4.5 ± 0.5 |" in sweep
    csv = (folder / "tables" / "sweep.csv").read_text().splitlines()
    assert csv[0].startswith("network.threshold,Model,Data set,Accuracy mean,Accuracy se,")
    assert len(csv) == 1 + 4
    assert list(document["tables"]) == [t for t in results.TABLES if t != "unseen_class"]


def test_the_sweep_figure_and_the_papers_figures_of_the_first_point(planted_sweep):
    folder, document = planted_sweep
    assert {"sweep.png", "figure1a.png", "figure7.png", "dominance.png", "paper_comparison.png"} <= set(
        document["figures"])
    content = (folder / "figures" / "sweep.png").read_bytes()
    assert content.startswith(PNG_SIGNATURE) and int.from_bytes(content[16:20], "big") > 600
    # The Method 1 vs 2 fit and the comparison with the paper pool the first point's runs only.
    assert document["method_comparison"]["n_points"] == 2 * 2 * 2 * 10  # runs x layers x classes
    comparison = json.loads((folder / "tables" / "paper_comparison.json").read_text())
    assert comparison["experiment"].endswith("(sweep point 0: network.threshold=0.1)")
    accuracy = next(c for c in comparison["cells"] if c["id"] == "table1/ff/mnist")
    assert (accuracy["mean"], accuracy["n"]) == (pytest.approx(0.6), 2)
    assert {"field": "network.threshold", "paper": 0.5, "experiment": 0.1, "source": ""} in comparison["protocol"]


# ---------------------------------------------------------------- the service's limits on the grid

LIMITS = {"max_runs_per_experiment": 6, "max_queued_runs_per_user": 5, "max_width": 96}
BASE = {"preset": "quick", "models": ["bp"], "datasets": ["mnist"], "seeds": [0, 1], "unseen_class": None,
        "data": {"train_subset": 200, "test_subset": 200}, "network": {"width": 64, "layers": 2},
        "bp": {"epochs": 1, "learning_rate": 0.003}}


@pytest.fixture()
def limited(tmp_path: Path):
    from api.main import create_app

    settings = Settings(var_dir=tmp_path / "var", **LIMITS)
    upgrade_database(settings.resolved_database_url)
    with session_scope(settings.resolved_database_url) as session:
        key = accounts.issue_key(session, accounts.create_user(session, "alice"))
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"}) as client:
        yield client


def test_the_typed_submission_offers_the_sweep(limited):
    schemas = limited.get("/openapi.json").json()["components"]["schemas"]
    sweep = schemas["ExperimentSubmit"]["properties"]["sweep"]
    grid = next(option for option in sweep["anyOf"] if option.get("type") == "object")
    assert grid["additionalProperties"]["type"] == "array"
    assert {"number", "string", "null"} <= {t["type"] for t in grid["additionalProperties"]["items"]["anyOf"]}
    assert "network.threshold" in sweep["description"]


def test_limits_count_the_expanded_grid(limited):
    client = limited
    # 4 values x 2 seeds = 8 runs > 6 per experiment
    too_many = client.post("/v1/experiments", json={**BASE, "sweep": {"bp.learning_rate": [0.1, 0.03, 0.01, 0.003]}})
    assert too_many.status_code == 422, too_many.text
    assert too_many.headers["content-type"] == "application/problem+json"
    assert too_many.json()["code"] == "validation_error"
    problem = next(p for p in too_many.json()["details"] if p["field"] == "sweep")
    assert "8 runs" in problem["message"] and "FFLAB_MAX_RUNS_PER_EXPERIMENT" in problem["message"]
    assert problem["given"] == 8
    # a swept value above a limit is named where it is given; the base width it replaces is not checked
    wide = client.post("/v1/experiments", json={**BASE, "network": {"width": 500, "layers": 2},
                                                "sweep": {"network.width": [32, 200]}})
    assert wide.status_code == 422, wide.text
    assert [p["field"] for p in wide.json()["details"]] == ["sweep.network.width"]
    assert "FFLAB_MAX_WIDTH" in wide.json()["details"][0]["message"] and wide.json()["details"][0]["given"] == 200
    assert "sweep.network.width" in wide.json()["message"]
    bad_value = client.post("/v1/experiments", json={**BASE, "sweep": {"bp.learning_rate": [0.01, 2]}})
    assert bad_value.status_code == 422
    assert "sweep.bp.learning_rate.1" in [p["field"] for p in bad_value.json()["details"]]
    # 3 values x 2 seeds = 6 runs: within the experiment limit, above the user's cap of 5
    over_cap = client.post("/v1/experiments", json={**BASE, "sweep": {"bp.learning_rate": [0.03, 0.01, 0.003]}})
    assert over_cap.status_code == 429, over_cap.text
    assert over_cap.json()["code"] == "quota_exceeded"
    assert "6 runs" in over_cap.json()["message"] and "FFLAB_MAX_QUEUED_RUNS_PER_USER" in over_cap.json()["message"]
    accepted = client.post("/v1/experiments", json={**BASE, "sweep": {"bp.learning_rate": [0.01, 0.003]}})
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["runs_total"] == 4
    runs = client.get(f"{accepted.json()['url']}/runs").json()
    assert sorted(r["run_id"] for r in runs["items"]) == sorted(
        f"bp-mnist-seed{s}-p{p}" for s in (0, 1) for p in (0, 1))


# ---------------------------------------------------------------- end to end through the CLI

TINY = ["--set", "data.train_subset=200", "--set", "data.test_subset=200", "--set", "network.width=32",
        "--set", 'models=["ff"]', "--set", "seeds=[0,1]", "--set", "unseen_class=null",
        "--set", "ff.epochs=1", "--set", "ff.batch_size=100",
        "--set", 'sweep={"network.layers":[1,2]}']


@pytest.mark.slow
def test_a_tiny_sweep_through_fflab_run(tmp_path, data_root):
    out = tmp_path / "tiny-sweep"
    done = subprocess.run([sys.executable, "-m", "fflab", "run", "--preset", "quick", *TINY, "--out", str(out)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, done.stderr
    assert "run 4/4 ff-mnist-seed1-p1" in done.stderr
    assert "Sweep of network.layers" in done.stdout  # the sweep table after Tables 1-3
    assert sorted(p.name for p in (out / "runs").iterdir()) == [
        "ff-mnist-seed0-p0", "ff-mnist-seed0-p1", "ff-mnist-seed1-p0", "ff-mnist-seed1-p1"]
    document = json.loads((out / "results.json").read_text())
    jsonschema.validate(document, schema("results"))
    cells = document["sweep"]["cells"]
    assert [(c["point"], c["accuracy"]["n"], len(c["ensemble_size"])) for c in cells] == [(0, 2, 1), (1, 2, 2)]
    assert all(c["accuracy"]["se"] is not None for c in cells)
    assert (out / "figures" / "sweep.png").read_bytes().startswith(PNG_SIGNATURE)
    # the runs trained with their point's depth: one loss series per FF layer
    losses = {p: json.loads((out / "runs" / f"ff-mnist-seed0-p{p}" / "metrics.json").read_text())["loss_history"]
              for p in (0, 1)}
    assert (len(losses[0]), len(losses[1])) == (1, 2)
    # and were analysed with it: the analyses beyond the paper rebuild each point's network
    for point, layers in ((0, [1]), (1, [1, 2])):
        run_dir = out / "runs" / f"ff-mnist-seed1-p{point}"
        accuracy = json.loads((run_dir / "layer_accuracy.json").read_text())
        assert [g["layer"] for g in accuracy["goodness"]] == [p["layer"] for p in accuracy["probes"]] == layers
        dynamics = json.loads((run_dir / "dynamics.json").read_text())
        assert dynamics["epochs"] == [1] and sorted({p["layer"] for p in dynamics["points"]}) == layers
        assert [x["layer"] for x in json.loads((run_dir / "selectivity.json").read_text())["layers"]] == layers
        for name in documents.run_analyses():
            jsonschema.validate(json.loads((run_dir / f"{name}.json").read_text()), schema(name))
    assert (out / "figures" / "layer_accuracy.png").read_bytes().startswith(PNG_SIGNATURE)
    # the comparison with the paper of a folder shows its first grid point
    pooled = experiment.compare_folders([out])
    assert pooled.experiment.endswith("(sweep point 0: network.layers=1)")


@pytest.mark.slow
def test_a_tiny_sweep_through_the_service(stack: Stack, monkeypatch):
    from click.testing import CliRunner

    from fflab.cli import main
    from fflab.settings import get_settings

    with stack.client(stack.member_key) as alice:
        created = alice.post("/v1/experiments", json={**SERVICE_TINY, "models": ["bp"], "name": "swept",
                                                      "sweep": {"bp.learning_rate": [0.01, 0.003]}})
        assert created.status_code == 202, created.text
        assert created.json()["runs_total"] == 2
        base = created.json()["url"]
        done = poll_experiment(alice, created.json()["id"], ("succeeded", "failed"), timeout=300)
        assert done["status"] == "succeeded", done
        document = alice.get(f"{base}/results").json()
        assert document["schema_version"] == "1.1"
        assert [(c["point"], c["model"], c["accuracy"]["n"]) for c in document["sweep"]["cells"]] == [
            (0, "bp", 1), (1, "bp", 1)]
        assert [r["run_id"] for r in document["runs"]] == ["bp-mnist-seed0-p0", "bp-mnist-seed0-p1"]
        tables = alice.get(f"{base}/results", params={"format": "md"}).text
        assert "# table1" in tables and "# sweep" in tables and "| bp.learning_rate | Model |" in tables
        csv = alice.get(f"{base}/results", params={"format": "csv", "table": "sweep"}).text
        assert csv.startswith("bp.learning_rate,Model,Data set,Accuracy mean")
        assert alice.get(f"{base}/figures/sweep").content.startswith(PNG_SIGNATURE)
        metrics = alice.get(f"{base}/runs/bp-mnist-seed0-p1/documents/metrics")
        assert metrics.status_code == 200 and metrics.json()["run_id"] == "bp-mnist-seed0-p1"
        probes = alice.get(f"{base}/layer-accuracy").json()["runs"]  # computed per grid point by the worker
        assert sorted(r["run_id"] for r in probes) == ["bp-mnist-seed0-p0", "bp-mnist-seed0-p1"]
        assert alice.get(f"{base}/results", params={"format": "csv"}).status_code == 422  # csv names its table
        comparison = alice.get(f"{base}/paper-comparison").json()
        assert comparison["experiment"].endswith("(sweep point 0: bp.learning_rate=0.01)")
    monkeypatch.setenv("FFLAB_API_URL", stack.api_url)
    monkeypatch.setenv("FFLAB_API_KEY", stack.member_key)
    get_settings.cache_clear()
    try:
        printed = CliRunner().invoke(main, ["results", created.json()["id"]], catch_exceptions=False)
    finally:
        get_settings.cache_clear()
    assert printed.exit_code == 0 and "Sweep of bp.learning_rate" in printed.output
