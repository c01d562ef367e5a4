"""Training one run: train it, evaluate it on the test set, and store its
metrics, test-set representations and weights in its folder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fflab.data import load_split, n_classes
from fflab.devices import describe_device
from fflab.models import MODELS
from fflab.models.common import (
    Checkpoint,
    ProgressCallback,
    StopCheck,
    TrainingJob,
    negative_classes_of,
    resolve_device,
    seed_everything,
)
from fflab.pipeline.folders import write_representations
from fflab.pipeline.snapshots import snapshot_recorder
from fflab.results import RunDevice, RunMetrics, Timings, write_document
from fflab.spec import ExperimentSpec, RunKey

# The training subset is drawn with a fixed seed so that every model and seed of an
# experiment sees the same images: seeds vary the initialisation and the negatives.
DATA_SEED = 0
METRICS_FILE = "metrics.json"


def run_identity(key: RunKey) -> dict[str, Any]:
    """The identity fields every run document starts with."""
    return {
        "run_id": key.run_id,
        "model": key.model,
        "dataset": key.dataset,
        "seed": key.seed,
        "unseen_class": key.unseen_class,
    }


def negative_classes_for(spec: ExperimentSpec, key: RunKey, train_labels: torch.Tensor) -> torch.Tensor:
    """The labels a run's wrong labels are drawn from: all the data set's for an unseen-class
    run under ``unseen_class_negatives="all_labels"`` (the authors' code), else the
    classes it trains on."""
    if key.unseen_class is not None and spec.unseen_class_negatives == "all_labels":
        return torch.arange(n_classes(key.dataset))
    return negative_classes_of(train_labels, None)


def train_and_evaluate(
    spec: ExperimentSpec,
    key: RunKey,
    run_dir: Path,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    checkpoint: Checkpoint | None = None,
    checkpoint_every: int | None = None,
    data_root: Path | None = None,
) -> RunMetrics:
    """Train one run, evaluate it on the test set, and write its metrics,
    weights and representations into ``run_dir``.

    With a ``checkpoint``, training saves its state there (fflab.models.training:
    FF and SymBa after every layer, BP/FF and BP every ``checkpoint_every``
    epochs) and resumes from it if it holds one: the results equal those of an
    uninterrupted run. The data sets are
    read from ``data_root`` (default: ``Settings.data_root``). ``spec`` is the
    experiment's: the run trains with its grid point's settings (``spec.at``)."""
    spec = spec.at(key.point)
    device = resolve_device(spec.device)
    excluded = () if key.unseen_class is None else (key.unseen_class,)
    train = load_split(key.dataset, True, spec.data.train_subset, excluded, seed=DATA_SEED, root=data_root)
    test = load_split(key.dataset, False, spec.data.test_subset, seed=DATA_SEED, root=data_root)
    generator = seed_everything(key.seed)
    model = MODELS.lookup(key.model)
    net = model.build(spec.network, key.dataset).to(device)
    # Captures a probe set at the snapshot epochs (ensemble dynamics); None: no snapshot.
    snapshots = snapshot_recorder(spec, key, test.images, test.labels, net, progress)
    progress = snapshots or progress
    job = TrainingJob(
        net=net, images=train.images.to(device), labels=train.labels.to(device),
        training=spec.training(key.model), generator=generator, negative_labels=spec.negative_labels,
        negative_classes=negative_classes_for(spec, key, train.labels), progress=progress,
        should_stop=should_stop, checkpoint=checkpoint, checkpoint_every=checkpoint_every, tf32=spec.tf32,
    )

    started = time.perf_counter()
    history = model.train(job)
    train_seconds = time.perf_counter() - started
    if snapshots is not None:
        snapshots.save(run_dir)

    started = time.perf_counter()
    net.eval()
    evaluation = model.evaluate(net, test.images, test.labels, spec)
    predictions = evaluation.predictions
    arrays = {name: array.numpy() for name, array in evaluation.arrays.items()}
    correct = (predictions == test.labels).numpy()
    for index, layer in enumerate(evaluation.layers, start=1):
        arrays[f"layer{index}"] = layer.numpy().astype(np.float32)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_representations(run_dir, {"labels": test.labels.numpy(), "predictions": predictions.numpy(),
                                    "correct": correct, **arrays})
    torch.save({name: t.cpu() for name, t in net.state_dict().items()}, run_dir / "weights.pt")
    evaluate_seconds = time.perf_counter() - started

    test_labels = test.labels.numpy()
    per_class = [
        float(correct[test_labels == c].mean()) if (test_labels == c).any() else None
        for c in range(n_classes(key.dataset))
    ]
    metrics = RunMetrics(
        **run_identity(key),
        accuracy=float(correct.mean()),
        per_class_accuracy=per_class,
        n_train=len(train),
        n_test=len(test),
        loss_history=history,
        device=str(device),
        device_info=RunDevice(**describe_device(device).as_dict()),
        timings=Timings(train_seconds=train_seconds, evaluate_seconds=evaluate_seconds),
    )
    write_document(metrics, run_dir / METRICS_FILE)
    return metrics
