"""A run's stored representations: compressed without loss (the analyses read the
float32 values training computed), and the uncompressed files of runs trained
before still read the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fflab.pipeline import paper_analyses
from fflab.pipeline.documents import RunAnalysisInput
from fflab.pipeline.folders import REPRESENTATIONS_FILE, load_representations, write_representations
from fflab.spec import RunKey, build_spec

WIDTH, PER_CLASS = 8, 6


def near_saturation_arrays() -> dict[str, np.ndarray]:
    """Ten classes of six images on two sigmoid layers of eight units. In layer 1 of
    every class, units 0-1 are saturated at exactly 1.0 and units 2-5 lie within
    float16's rounding of 1.0 (1 - 1e-4): Method 1's 0.95 quantile is 1.0, so its
    ensemble is {0, 1} in float32 and would be {0, ..., 5} in float16."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), PER_CLASS)
    n = labels.size
    layer1 = rng.uniform(0.0, 0.2, (n, WIDTH)).astype(np.float32)
    layer1[:, :2] = 1.0
    layer1[:, 2:6] = np.float32(1 - 1e-4) - rng.uniform(0, 1e-5, (n, 4)).astype(np.float32)
    layer2 = (1 / (1 + np.exp(-rng.normal(0, 3, (n, WIDTH))))).astype(np.float32)
    predictions = labels.copy()
    predictions[::5] = (labels[::5] + 1) % 10
    return {"labels": labels, "predictions": predictions, "correct": predictions == labels,
            "label_goodness": rng.uniform(0, 1, (n, 10, 2)).astype(np.float32), "layer1": layer1, "layer2": layer2}


def ensembles_of(run_dir: Path) -> dict:
    """The run's ensembles document (the paper's analyses) from its stored file."""
    spec = build_spec("quick", {"network": {"width": WIDTH, "layers": 2}})
    inputs = RunAnalysisInput(spec, RunKey("ff", "mnist", 0, unseen_class=3), run_dir)
    document = paper_analyses.ensembles_document(inputs)
    inputs.documents["ensembles"] = document
    shared = paper_analyses.shared_units_document(inputs)
    return {"ensembles": document.model_dump(mode="json"), "shared_units": shared.model_dump(mode="json")}


def test_compressed_representations_reanalyse_to_the_same_ensembles(tmp_path: Path) -> None:
    arrays = near_saturation_arrays()
    old, new, half = tmp_path / "old", tmp_path / "new", tmp_path / "float16"
    old.mkdir()
    np.savez(old / REPRESENTATIONS_FILE, **arrays)  # as every run trained before stored them
    write_representations(new, arrays)
    assert (new / REPRESENTATIONS_FILE).stat().st_size < (old / REPRESENTATIONS_FILE).stat().st_size

    read_old, read_new = load_representations(old), load_representations(new)
    assert sorted(read_old) == sorted(read_new) == sorted(arrays)
    for name, array in arrays.items():  # bit for bit, dtypes included
        assert read_old[name].dtype == read_new[name].dtype == array.dtype
        assert np.array_equal(read_old[name], array) and np.array_equal(read_new[name], array)

    from_old, from_new = ensembles_of(old), ensembles_of(new)
    assert from_new == from_old
    method1 = {(r["layer"], r["class_index"], r["quantile"]): r["units"]
               for r in from_new["ensembles"]["ensembles"] if r["method"] == "method1"}
    assert method1[(1, 0, 0.95)] == [0, 1]
    assert from_new["ensembles"]["unseen"]  # the unseen class's activity compared too

    # What the lossless format avoids: the same values rounded to float16 (and read
    # back as float32) change Method 1's ensembles.
    rounded = {name: a.astype(np.float16).astype(np.float32) if a.dtype == np.float32 else a
               for name, a in arrays.items()}
    write_representations(half, rounded)
    method1_half = {(r["layer"], r["class_index"], r["quantile"]): r["units"]
                    for r in ensembles_of(half)["ensembles"]["ensembles"] if r["method"] == "method1"}
    assert method1_half[(1, 0, 0.95)] == [0, 1, 2, 3, 4, 5]
