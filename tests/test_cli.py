"""The CLI end to end on a small subset, through real subprocesses."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from fflab import results
from fflab.analysis import method1_threshold
from fflab.pipeline import documents, folders

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = [
    "--set", "data.train_subset=400", "--set", "data.test_subset=400",
    "--set", "network.width=64", "--set", "network.normalize_first_layer=true",
    "--set", "ff.epochs=2", "--set", "ff.batch_size=50", "--set", "ff.learning_rate=0.003",
    "--set", "bpff.epochs=2", "--set", "bpff.batch_size=50", "--set", "bpff.learning_rate=0.003",
    "--set", "bp.epochs=2", "--set", 'datasets=["mnist","fashion_mnist"]', "--set", "seeds=[0]",
]


def fflab(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "fflab", *args], capture_output=True, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    if check and done.returncode != 0:
        raise AssertionError(f"fflab {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, data_root) -> Path:
    out = tmp_path_factory.mktemp("results") / "tiny"
    done = fflab("run", "--preset", "quick", *TINY, "--out", str(out))
    assert f"figures: {out.resolve() / 'figures'}" in done.stdout
    assert "Table 1" in done.stdout
    assert "epoch" in done.stderr  # the progress bar
    return out


def schema(name: str) -> dict:
    return json.loads((results.SCHEMA_DIR / f"{name}.schema.json").read_text())


@pytest.mark.slow
def test_every_json_file_matches_its_schema(experiment):
    run_dirs = sorted((experiment / "runs").iterdir())
    # 3 models x 2 data sets + FF without class 0 on Fashion-MNIST (the paper's)
    assert len(run_dirs) == 7
    for run_dir in run_dirs:
        for name in ("metrics", "ensembles", "shared_units", "weight_stats"):
            document = json.loads((run_dir / f"{name}.json").read_text())
            jsonschema.validate(document, schema(name))
            assert document["schema_version"] == documents.DOCUMENTS[name].model_fields["schema_version"].default
    jsonschema.validate(json.loads((experiment / "results.json").read_text()), schema("results"))
    jsonschema.validate(
        json.loads((experiment / "tables" / "paper_comparison.json").read_text()), schema("paper_comparison")
    )


@pytest.mark.slow
def test_every_figure_is_a_real_png(experiment):
    names = sorted(p.name for p in (experiment / "figures").glob("*.png"))
    expected = {"figure1a", "figure1b", "figure1c", "figure2", "figure3a", "figure3b",
                "figure4a", "figure4b", "figure4c", "figure5", "figure6", "figure7", "figure8a",
                "figure2_layer2", "figure2_layer3", "paper_comparison", "training_curves"}
    assert expected <= {n.removesuffix(".png") for n in names}
    for name in names:
        content = (experiment / "figures" / name).read_bytes()
        assert content.startswith(PNG_SIGNATURE)
        width = int.from_bytes(content[16:20], "big")
        assert width > 200


@pytest.mark.slow
def test_tables_in_every_format(experiment):
    md = fflab("tables", str(experiment)).stdout
    assert "| FF |" in md and "MNIST" in md and "FASHIONMNIST" in md
    csv = fflab("tables", str(experiment), "--format", "csv").stdout
    assert csv.splitlines()[0].startswith("Model,MNIST mean,MNIST se")
    for name in ("table1", "table2", "table3"):
        assert json.loads((experiment / "tables" / f"{name}.json").read_text())["rows"]
    written = list(json.loads((experiment / "results.json").read_text())["tables"])
    assert written == [t for t in results.TABLES if t != "sweep"]  # every table but a sweep's, in order
    unseen = json.loads((experiment / "tables" / "unseen_class.json").read_text())
    assert [row[0] for row in unseen["rows"]] == ["unseen class", "seen classes"]


@pytest.mark.slow
def test_reanalysis_with_another_quantile_changes_ensembles_without_retraining(experiment):
    weights_before = (experiment / "runs" / "bp-mnist-seed0" / "weights.pt").read_bytes()
    sizes_before = json.loads((experiment / "results.json").read_text())["tables"]["table2"]
    fflab("analyse", str(experiment), "--quantile", "0.5", "--quantile", "0.99")
    spec = json.loads((experiment / "spec.json").read_text())
    assert spec["analysis"]["quantiles"] == [0.5, 0.99]
    sizes_after = json.loads((experiment / "results.json").read_text())["tables"]["table2"]
    assert sizes_after != sizes_before
    ensembles = json.loads((experiment / "runs" / "bp-mnist-seed0" / "ensembles.json").read_text())
    m1 = {e["quantile"] for e in ensembles["ensembles"] if e["method"] == "method1"}
    assert m1 == {0.5, 0.99}
    loose = sum(e["size"] for e in ensembles["ensembles"] if e["quantile"] == 0.5)
    strict = sum(e["size"] for e in ensembles["ensembles"] if e["quantile"] == 0.99)
    assert loose > strict
    assert (experiment / "runs" / "bp-mnist-seed0" / "weights.pt").read_bytes() == weights_before


@pytest.mark.slow
def test_reanalysis_reads_method1_thresholds_off_a_histogram_and_back(experiment):
    run_dir = experiment / "runs" / "ff-mnist-seed0"
    before = json.loads((run_dir / "ensembles.json").read_text())["ensembles"]
    fflab("analyse", str(experiment), "--method1-threshold", "histogram", "--histogram-bins", "7")
    spec = json.loads((experiment / "spec.json").read_text())
    assert spec["analysis"]["method1_threshold"] == "histogram" and spec["analysis"]["histogram_bins"] == 7
    document = json.loads((run_dir / "ensembles.json").read_text())
    assert document["analysis"]["method1_threshold"] == "histogram"
    stored = folders.load_representations(run_dir)
    keep = folders.analysed_rows(stored, None, spec["analysis"]["correct_only"])
    checked = 0
    for record in document["ensembles"]:
        if record["method"] != "method1" or record["n_images"] == 0:
            continue
        X = stored[f"layer{record['layer']}"][keep][stored["labels"][keep] == record["class_index"]]
        assert record["threshold"] == pytest.approx(method1_threshold(X, record["quantile"], "histogram", 7))
        checked += 1
    assert checked > 0
    compared = fflab("compare", str(experiment)).stdout
    assert '| analysis.method1_threshold | "quantile" | "histogram" |' in compared
    fflab("analyse", str(experiment), "--method1-threshold", "quantile")
    assert json.loads((run_dir / "ensembles.json").read_text())["ensembles"] == before


@pytest.mark.slow
def test_compare_labels_a_quick_run_as_not_a_reproduction_and_covers_every_cell(experiment, tmp_path):
    md = fflab("compare", str(experiment)).stdout
    assert "**Not a reproduction**" in md
    assert "| data.train_subset | null | 400 |" in md
    assert "| network.threshold | 0.5 | 0.3 |" in md
    assert "| seeds (runs per configuration) | 15 | 1 |" in md
    document = json.loads(fflab("compare", str(experiment), "--format", "json").stdout)
    ids = {cell["id"] for cell in document["cells"]}
    assert {"table1/ff/mnist", "table2/bp/fashion_mnist/layer3", "table3/bpff/mnist/layer2",
            "text/shared_units/ff/fashion_mnist/layer1", "text/unseen_activity/unseen/fashion_mnist/layer1",
            "figure8b/slope"} <= ids
    cell = next(c for c in document["cells"] if c["id"] == "table1/ff/mnist")
    assert cell["paper_mean"] == 0.93 and cell["paper_se"] == 0.001 and cell["n"] == 1
    assert cell["verdict"] in {"consistent", "differs"} and cell["t"] is not None and cell["df"] > 14
    unseen = next(c for c in document["cells"] if c["id"] == "text/unseen_activity/unseen/fashion_mnist/layer1")
    assert unseen["paper_mean"] == 0.34
    assert unseen["verdict"] in {"not comparable", "descriptive", "did not learn"}
    assert (unseen["mean"] is None) == (unseen["verdict"] != "descriptive")
    csv_lines = fflab("compare", str(experiment), "--format", "csv").stdout.splitlines()
    assert csv_lines[0].startswith("id,source,quantity") and len(csv_lines) == 1 + len(document["cells"])
    # two folders are pooled; the same run twice is refused
    fflab("compare", str(experiment), "--out", str(tmp_path / "out"))
    assert (tmp_path / "out" / "figures" / "paper_comparison.png").read_bytes().startswith(PNG_SIGNATURE)
    done = fflab("compare", str(experiment), str(experiment), check=False)
    assert done.returncode == 1 and "is in both" in done.stderr
    # an unfinished experiment contributes the runs analysed so far, and says so
    partial = tmp_path / "partial"
    shutil.copytree(experiment, partial, ignore=shutil.ignore_patterns("*.npz", "*.pt", "*.png"))
    (partial / "runs" / "bp-mnist-seed0" / "ensembles.json").unlink()
    (partial / "results.json").unlink()
    document = json.loads(fflab("compare", str(partial), "--format", "json").stdout)
    assert document["experiment"].endswith("(6 of 7 runs)")
    assert next(c for c in document["cells"] if c["id"] == "table1/bp/mnist")["verdict"] == "not comparable"


def test_bad_settings_are_named_without_a_traceback(tmp_path):
    done = fflab("run", "--preset", "quick", "--set", "ff.epochs=-3", "--out", str(tmp_path), check=False)
    assert done.returncode == 2
    assert "ff.epochs" in done.stderr and "greater than or equal to 1" in done.stderr
    assert "Traceback" not in done.stderr
    done = fflab("run", "--preset", "quick", "--set", "network.goodness=l3", check=False)
    assert "network.goodness" in done.stderr and "'l_inf'" in done.stderr
    done = fflab("run", "--preset", "quick", "--set", "seeds=[0", check=False)  # a list cut short
    assert done.returncode == 2 and "seeds: '[0' is not valid JSON" in done.stderr
    assert "Traceback" not in done.stderr


def test_analyse_refuses_a_folder_that_is_not_a_results_folder(tmp_path):
    done = fflab("analyse", str(tmp_path), check=False)
    assert done.returncode == 1 and "no spec.json" in done.stderr


def test_committed_schemas_match_the_documents():
    for name in documents.DOCUMENTS:
        committed = json.loads((results.SCHEMA_DIR / f"{name}.schema.json").read_text())
        assert committed == documents.json_schema(name), f"run `fflab schemas --write` ({name})"


CLIENT_START = r"""
import sys
from fflab.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = sorted({name.split(".")[0] for name in sys.modules} & {"torch", "sklearn", "matplotlib"})
print("imported:" + ",".join(heavy), file=sys.stderr)
"""


@pytest.mark.parametrize("verb", [["--help"], ["status"], ["submit", "--preset", "quick"], ["run", "--help"]])
def test_client_verbs_start_without_torch_sklearn_or_matplotlib(verb):
    """The command line and its client verbs, in a fresh process against an API that
    refuses connections, import none of the libraries of training, analysis and
    figures (benchmarks/cli_startup.py times their start-up)."""
    env = {**os.environ, "FFLAB_API_URL": "http://127.0.0.1:9", "FFLAB_API_KEY": "test"}
    done = subprocess.run([sys.executable, "-c", CLIENT_START, *verb], capture_output=True, text=True,
                          timeout=300, env=env)
    assert "imported:" in done.stderr.splitlines(), done.stderr


# ----------------------------------------------------------------------------- service verbs' papercuts


@pytest.fixture()
def service_env(monkeypatch, tmp_path):
    """No FFLAB_* setting of the service from the caller's environment; the var dir an
    empty folder; settings read afresh (and again after the test)."""
    from fflab.settings import get_settings

    for name in list(os.environ):
        if name.startswith("FFLAB_") and name != "FFLAB_DATA_ROOT":
            monkeypatch.delenv(name)
    monkeypatch.setenv("FFLAB_VAR_DIR", str(tmp_path / "var"))
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_client_reads_the_url_and_key_as_the_verbs_do(service_env, tmp_path):
    from fflab.client import Client
    from fflab.settings import get_settings

    service_env.setenv("FFLAB_API_URL", "http://lab.example:8123/")
    service_env.setenv("FFLAB_API_KEY", "fflab_fromtheenvironment")
    get_settings.cache_clear()
    with Client() as api:
        assert str(api.http.base_url) == "http://lab.example:8123"
        assert api.http.headers["authorization"] == "Bearer fflab_fromtheenvironment"
        assert api.web_page("abc") == "http://lab.example:8123/ui/experiments/abc"
    with Client("http://other:1", "fflab_given") as api:  # what is given wins
        assert (str(api.http.base_url), api.http.headers["authorization"]) == ("http://other:1", "Bearer fflab_given")

    # Without them: http://$FFLAB_API_HOST:$FFLAB_API_PORT, and the admin key `fflab serve` wrote.
    service_env.delenv("FFLAB_API_URL")
    service_env.delenv("FFLAB_API_KEY")
    service_env.setenv("FFLAB_API_PORT", "8124")
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "admin.key").write_text("fflab_admin\n")
    get_settings.cache_clear()
    with Client() as api:
        assert str(api.http.base_url) == "http://127.0.0.1:8124"
        assert api.http.headers["authorization"] == "Bearer fflab_admin"


def test_a_service_verb_without_a_key_says_how_to_give_one(service_env):
    from click.testing import CliRunner

    from fflab.cli import SERVICE_VERBS, main

    service_env.setenv("FFLAB_API_URL", "http://127.0.0.1:9")  # refuses connections
    runner = CliRunner()
    for verb in (["status"], ["submit", "--preset", "quick"], ["results", "x"]):
        done = runner.invoke(main, verb)
        assert done.exit_code == 1 and done.output == "Error: no API key: set FFLAB_API_KEY (or pass --key)\n", verb
    with_key = runner.invoke(main, ["status", "--key", "fflab_given"])
    assert with_key.exit_code == 1 and "cannot reach the fflab API at http://127.0.0.1:9" in with_key.output
    for verb in SERVICE_VERBS:
        assert "--key" in runner.invoke(main, [verb, "--help"]).output, verb


def test_submit_prints_the_experiments_web_page(service_env, monkeypatch):
    from click.testing import CliRunner

    from fflab.cli import main
    from fflab.client import Client

    sent = []

    def submit(self, body):
        sent.append((str(self.http.base_url), self.http.headers["authorization"], body))
        return {"id": "e1", "url": "http://lab.example:8123/v1/experiments/e1", "status": "queued",
                "runs_total": 12, "name": "quick"}

    monkeypatch.setattr(Client, "submit", submit)
    service_env.setenv("FFLAB_API_URL", "http://lab.example:8123")
    done = CliRunner().invoke(main, ["submit", "--preset", "quick", "--key", "fflab_k"])
    assert done.exit_code == 0, done.output
    assert done.output.splitlines() == ["e1 http://lab.example:8123/v1/experiments/e1",
                                        "web page: http://lab.example:8123/ui/experiments/e1"]
    assert sent == [("http://lab.example:8123", "Bearer fflab_k",
                     {"visibility": "private", "priority": "normal", "preset": "quick"})]


def test_admin_create_user_outside_the_var_dir_warns_it_creates_a_database(tmp_path):
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("FFLAB_") or name == "FFLAB_DATA_ROOT"}

    def create(name: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fflab", "admin", "create-user", name], capture_output=True,
                              text=True, cwd=tmp_path, env=env, timeout=300)

    first = create("alice")
    assert first.returncode == 0, first.stderr
    database = tmp_path / "var" / "fflab.db"
    assert f"warning: no database at {database}: creating a new one" in first.stderr
    assert "FFLAB_VAR_DIR" in first.stderr and first.stdout.startswith("fflab_")
    second = create("bob")  # the database is there now
    assert second.returncode == 0 and "warning" not in second.stderr and second.stdout.startswith("fflab_")
