"""fflab analyse-representations: the pipeline's analyses, tables and figures on a
representations file (a torch MLP trained outside fflab and captured, and a toy file
with weights and snapshots)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from fflab.representations import read_representations
from test_representations import N, arrays, captured, npz  # noqa: F401 (captured: the fixture)


def test_analyse_representations_writes_the_documents_tables_and_figures(captured: Path, tmp_path: Path) -> None:
    from fflab.cli import main
    from fflab.pipeline.documents import RUN_DOCUMENTS
    from fflab.pipeline.recorded import RECORDED_KEY, Recording
    from fflab.results import read_document

    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["analyse-representations", str(captured), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "does not apply" in result.output and "Table 2" in result.output
    recording = read_document(Recording, out / "recording.json")
    run_dir = out / "runs" / RECORDED_KEY.run_id
    # The registry's analyses that need only activities and labels, none that needs the network.
    assert recording.documents == ["ensembles", "shared_units", "intrinsic_dimension", "subensembles", "dominance"]
    assert set(recording.not_applicable) >= {"layer_accuracy", "lesions", "selectivity"}
    for name in recording.documents + ["metrics"]:
        RUN_DOCUMENTS[name].model.model_validate_json((run_dir / RUN_DOCUMENTS[name].file).read_text())
    ensembles = json.loads((run_dir / "ensembles.json").read_text())
    assert {e["layer"] for e in ensembles["ensembles"]} == {1, 2} and ensembles["model"] == "external"
    assert {e["class_name"] for e in ensembles["ensembles"]} == {str(c) for c in range(10)}
    results = json.loads((out / "results.json").read_text())
    assert {"table1", "table2", "sparseness_hoyer", "shared_units"} <= set(results["tables"])
    assert results["runs"][0]["accuracy"] > 0.7
    assert "figure1b.png" in results["figures"] and "training_curves.png" not in results["figures"]
    pngs = [name for name in results["figures"] if name.endswith(".png")]
    assert sorted(results["figures"]) == sorted([*pngs, *(name.removesuffix(".png") + ".svg" for name in pngs)])
    for name in pngs:  # each a PNG, with its SVG beside it, as a trained experiment's figures
        assert (out / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / "figures" / name.replace(".png", ".svg")).read_bytes().startswith(b"<?xml")
    # A broken file: exit 1 naming the key.
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays(layer1=np.full((N, 12), np.nan)))
    refused = CliRunner().invoke(main, ["analyse-representations", str(bad), "--out", str(tmp_path / "no")])
    assert refused.exit_code == 1 and "layer1: holds" in refused.output and "finite numbers only" in refused.output


def test_weights_and_snapshots_bring_their_analyses(tmp_path: Path) -> None:
    from fflab.pipeline.recorded import Recording, analyse_representations
    from fflab.results import read_document

    rng = np.random.default_rng(2)
    labels = np.arange(200) % 4
    layer = (rng.random((200, 16)) < 0.1) * rng.random((200, 16)) + np.eye(16)[labels] * 2
    data = npz(layer1=layer, layer2=None, weights_layer2=None, weights_layer1=rng.normal(size=(16, 6)),
               labels=labels, predictions=None, snapshot_epochs=np.array([1, 10]), snapshot_rows=np.arange(40),
               snapshot_layer1=np.stack([layer[:40] * 0.5, layer[:40]]))
    results = analyse_representations(read_representations(io.BytesIO(data)), tmp_path, "toy")
    recording = read_document(Recording, tmp_path / "recording.json")
    assert "weight_stats" in recording.documents and "dynamics" in recording.documents
    assert "table1" not in results["tables"]  # no predictions: no accuracy
    assert results["runs"][0]["fraction_positive_weights"][0] is not None
    assert "figure7_layer1.png" in results["figures"]
