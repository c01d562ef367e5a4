"""``fflab diff`` on results folders, through real subprocesses: a tiny experiment
(FF, two seeds) against a copy of itself whose spec says another threshold (known
answers: only that field differs, every difference is 0, every Jaccard is 1), two
of its runs against each other, the figures written, and the refusals."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fflab.analysis.experiment_comparison import jaccard
from fflab.results import RunEnsembles, read_document

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = ["--set", 'models=["ff"]', "--set", "seeds=[0,1]", "--set", "data.train_subset=300",
        "--set", "data.test_subset=300", "--set", "network.width=48", "--set", "network.layers=2",
        "--set", "ff.epochs=1", "--set", "ff.batch_size=100", "--set", "unseen_class=null",
        "--set", "snapshots=[]"]


def fflab(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "fflab", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if check and done.returncode != 0:
        raise AssertionError(f"fflab {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def folders(tmp_path_factory, data_root) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("diff")
    first = root / "theta03"
    fflab("run", "--preset", "quick", *TINY, "--out", str(first))
    second = root / "theta05"
    shutil.copytree(first, second)
    spec = json.loads((second / "spec.json").read_text())
    spec["network"]["threshold"] = 0.5
    (second / "spec.json").write_text(json.dumps(spec))
    return first, second


@pytest.mark.slow
def test_diff_of_two_folders_known_answers(folders, tmp_path) -> None:
    first, second = folders
    found = json.loads(fflab("diff", str(first), str(second), "--format", "json").stdout)
    assert [f["field"] for f in found["spec"] if f["differs"]] == ["network.threshold"]
    assert [side["runs"] for side in found["sides"]] == [2, 2]
    assert {d["difference"] for c in found["tables"] for d in c["differences"]} == {0.0}
    assert {c["table"] for c in found["tables"]} == {"table1", "table2", "table3"}
    assert found["overlaps"] and {o["jaccard"] for o in found["overlaps"]} == {1.0}
    assert {(o["run_a"], o["run_b"]) for o in found["overlaps"]} == {("ff-mnist-seed0", "ff-mnist-seed0"),
                                                                     ("ff-mnist-seed1", "ff-mnist-seed1")}
    text = fflab("diff", str(first), str(second), "--figures", str(tmp_path / "figures")).stdout
    assert "## Spec: 1 of" in text and "| network.threshold | `0.3` | `0.5` |" in text
    for name in ("loss_curves", "layer_quantities"):
        assert (tmp_path / "figures" / f"{name}.png").read_bytes().startswith(PNG_SIGNATURE)
    csv_lines = fflab("diff", str(first), str(second), "--format", "csv").stdout.splitlines()
    assert csv_lines[0].startswith("table,model,dataset,layer") and len(csv_lines) == 1 + len(found["tables"])


@pytest.mark.slow
def test_diff_of_two_runs_against_their_ensembles(folders) -> None:
    first, _ = folders
    runs = [first / "runs" / "ff-mnist-seed0", first / "runs" / "ff-mnist-seed1"]
    found = json.loads(fflab("diff", *map(str, runs), "--format", "json").stdout)
    assert [side["run_id"] for side in found["sides"]] == ["ff-mnist-seed0", "ff-mnist-seed1"]
    assert {d["verdict"] for c in found["tables"] for d in c["differences"]} <= {"no error bar", "not comparable"}
    quantile = found["method1_quantile"]
    units = [{(e.layer, e.class_index): set(e.units) for e in read_document(RunEnsembles, run / "ensembles.json")
              .ensembles if e.method == "method1" and e.quantile == quantile and e.n_images > 0} for run in runs]
    assert len(found["overlaps"]) == len(set(units[0]) & set(units[1]))
    for o in found["overlaps"]:
        key = (o["layer"], o["class_index"])
        assert o["jaccard"] == pytest.approx(jaccard(units[0][key], units[1][key]))


@pytest.mark.slow
def test_diff_refusals(folders) -> None:
    first, second = folders
    done = fflab("diff", str(first), check=False)
    assert done.returncode == 2 and "give 2 to 8" in done.stderr
    done = fflab("diff", str(first), "0123456789abcdef", check=False)
    assert done.returncode == 2 and "not both" in done.stderr
    done = fflab("diff", str(first), str(first / "tables"), check=False)
    assert done.returncode == 1 and "not a results folder" in done.stderr
    done = fflab("compare", "--experiment", "a", "--experiment", "b", check=False)
    assert done.returncode == 2 and "fflab diff a b" in done.stderr
