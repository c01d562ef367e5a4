"""The pipeline's numbers pinned to recorded values, so that a refactor of the
code around the science cannot change a result.

- Analysis and aggregation, bit for bit: every run of a small experiment is
  given representations and weights drawn with numpy's seeded generator (the
  same bytes on every machine), with a planted ensemble per class; the run
  documents and results.json (timings aside) must hash to the recorded digests.
- Training, to float tolerance (BLAS kernels differ between CPUs): one tiny
  run per model on real data from a fixed seed must give the recorded
  accuracy, losses and fractions of positive weights.

To record new values after an intended change of the numbers, run
``python tests/test_pipeline_golden.py`` and commit tests/golden/pipeline.json
with the reason.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fflab.pipeline import documents, experiment, folders
from fflab.results import RunMetrics, Timings, write_document
from fflab.spec import build_spec

GOLDEN = Path(__file__).parent / "golden" / "pipeline.json"
# The analyses beyond the paper that need the real test images and a trained network.
NETWORK_ANALYSES = ("layer_accuracy", "dynamics", "lesions", "selectivity", "intrinsic_dimension", "subensembles")
WIDTH = 48
N_TEST = 300
TIMING_KEYS = {"timings", "train_seconds"}
TRAINING_OVERRIDES = {
    "models": ["ff", "bpff", "bp"], "datasets": ["mnist"], "seeds": [0], "unseen_class": None,
    "data": {"train_subset": 300, "test_subset": 200},
    "network": {"width": 32},
    "ff": {"epochs": 2, "batch_size": 50}, "bpff": {"epochs": 2, "batch_size": 50},
    "bp": {"epochs": 2, "batch_size": 50},
}


def analysis_spec():
    return build_spec("quick", {
        "models": ["ff", "bpff", "bp"], "datasets": ["mnist", "fashion_mnist"], "seeds": [0, 1],
        "unseen_class": 0, "network": {"width": WIDTH},
    })


def write_synthetic_run(spec, key, run_dir: Path) -> None:
    """Representations with a planted ensemble per class (2 to 6 units from 4c on high
    for class c, the rest low with noise), 80% of images correct, and weights
    with a model-dependent share of positive entries."""
    salt = int.from_bytes(hashlib.sha256(key.run_id.encode()).digest()[:4], "little")
    rng = np.random.default_rng(salt)
    labels = np.arange(N_TEST) % 10
    correct = rng.random(N_TEST) < 0.8
    if key.unseen_class is not None:
        correct[labels == key.unseen_class] = False
    arrays = {}
    for layer in range(1, spec.network.layers + 1):
        X = rng.random((N_TEST, WIDTH)) * 0.1 * layer
        for c in range(10):
            rows = labels == c
            size = 2 + (c + layer) % 5
            units = (4 * c + np.arange(size) + layer) % WIDTH
            X[np.ix_(rows, units)] = 0.6 + 0.4 * rng.random((rows.sum(), size))
        X[rng.random(X.shape) < 0.2] = 0.0
        arrays[f"layer{layer}"] = X.astype(np.float32)
    run_dir.mkdir(parents=True, exist_ok=True)
    predictions = np.where(correct, labels, (labels + 1) % 10)
    np.savez(run_dir / "representations.npz", labels=labels, predictions=predictions, correct=correct, **arrays)
    widths = [784] + [WIDTH] * spec.network.layers
    positive_share = {"ff": 0.2, "bpff": 0.35, "bp": 0.5}[key.model]
    state = {}
    for index, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        magnitude = rng.random((n_out, n_in)).astype(np.float32)
        sign = np.where(rng.random((n_out, n_in)) < positive_share, 1.0, -1.0).astype(np.float32)
        state[f"layers.{index}.weight"] = torch.from_numpy(magnitude * sign)
        state[f"layers.{index}.bias"] = torch.zeros(n_out)
    torch.save(state, run_dir / "weights.pt")
    write_document(
        RunMetrics(
            run_id=key.run_id, model=key.model, dataset=key.dataset, seed=key.seed,
            unseen_class=key.unseen_class, accuracy=float(correct.mean()),
            per_class_accuracy=[float(correct[labels == c].mean()) for c in range(10)],
            n_train=1000, n_test=N_TEST, loss_history=[[1.0, 0.5]], device="cpu",
            timings=Timings(train_seconds=0.0, evaluate_seconds=0.0),
        ),
        run_dir / "metrics.json",
    )


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def digest(path: Path) -> str:
    canonical = json.dumps(without_timings(json.loads(path.read_text())), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def analysis_digests(experiment_dir: Path) -> dict[str, str]:
    spec = analysis_spec()
    folders.write_spec(spec, experiment_dir)
    for key in spec.runs():
        write_synthetic_run(spec, key, folders.run_dir_of(experiment_dir, key))
        # All but the analyses beyond the paper: they need the real test images and the
        # trained network, and have their own known-answer tests (test_further_analyses).
        documents.analyse_run(spec, key, folders.run_dir_of(experiment_dir, key),
                              names=[name for name in documents.RUN_DOCUMENTS if name not in NETWORK_ANALYSES])
    experiment.aggregate(spec, experiment_dir)
    digests = {}
    for path in sorted(experiment_dir.rglob("*.json")):
        if path.name != "metrics.json" and path.name != "spec.json":
            digests[str(path.relative_to(experiment_dir))] = digest(path)
    return digests


def training_numbers(experiment_dir: Path) -> dict[str, dict]:
    spec = build_spec("quick", TRAINING_OVERRIDES)
    numbers = {}
    for key in spec.runs():
        record = experiment.execute_run(spec, key, folders.run_dir_of(experiment_dir, key))
        metrics = json.loads((folders.run_dir_of(experiment_dir, key) / "metrics.json").read_text())
        numbers[key.model] = {
            "accuracy": record["accuracy"],
            "loss_history": metrics["loss_history"],
            "fraction_positive_weights": record["fraction_positive_weights"],
        }
    return numbers


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


def test_analysis_and_aggregation_are_bit_identical(tmp_path, golden):
    digests = analysis_digests(tmp_path)
    assert set(digests) == set(golden["analysis"])
    changed = sorted(name for name in digests if digests[name] != golden["analysis"][name])
    assert not changed, f"these documents changed: {changed}"


@pytest.mark.slow
def test_training_gives_the_recorded_numbers(tmp_path, golden, data_root):
    numbers = training_numbers(tmp_path)
    assert set(numbers) == set(golden["training"])
    for model, expected in golden["training"].items():
        got = numbers[model]
        assert got["accuracy"] == pytest.approx(expected["accuracy"], abs=0.011), model  # 2 of 200 images
        assert len(got["loss_history"]) == len(expected["loss_history"]), model
        for got_layers, expected_layers in zip(got["loss_history"], expected["loss_history"]):
            assert np.allclose(got_layers, expected_layers, rtol=1e-3, atol=1e-5), model
        assert np.allclose(got["fraction_positive_weights"], expected["fraction_positive_weights"], atol=2e-3), model


if __name__ == "__main__":
    import os
    import tempfile

    os.environ.setdefault("FFLAB_DATA_ROOT", str(Path(__file__).resolve().parents[1] / "data"))
    with tempfile.TemporaryDirectory() as first, tempfile.TemporaryDirectory() as second:
        recorded = {"analysis": analysis_digests(Path(first)), "training": training_numbers(Path(second))}
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(recorded, indent=1) + "\n")
    print(f"recorded {len(recorded['analysis'])} document digests and {len(recorded['training'])} training runs",
          file=sys.stderr)


def test_a_folder_analysed_before_a_document_was_registered_still_compares(tmp_path, golden):
    """compare_folders needs the documents the summary record reads, not every registered one."""
    from fflab.pipeline.documents import RUN_DOCUMENTS
    from fflab.pipeline.paper_analyses import RECORD_DOCUMENTS

    analysis_digests(tmp_path)
    later = [name for name in RUN_DOCUMENTS if name not in RECORD_DOCUMENTS]
    for path in (tmp_path / "runs").glob("*/*.json"):
        if path.stem in later:
            path.unlink()
    comparison = experiment.compare_folders([tmp_path])
    assert comparison.cells and "runs)" not in comparison.experiment  # every run counted as analysed
