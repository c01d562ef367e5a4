"""Training snapshots: a fixed probe set captured at the spec's snapshot epochs.

The ensemble-dynamics analysis (``fflab.pipeline.run_analyses.dynamics``) needs
captures made during training: ``SnapshotRecorder`` wraps the trainers'
per-epoch progress callback and, at the spec's snapshot epochs, records a fixed
probe set's representations, accuracy and each layer's fraction of positive
weights into ``snapshots.npz``. A run resumed from a checkpoint has only the
snapshots taken after it resumed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fflab.analysis.dynamics import default_snapshot_epochs
from fflab.analysis.layer_accuracy import PREDICTION_RULES
from fflab.analysis.weights import fraction_positive_weights
from fflab.models.bp import BPClassifier, bp_predict_and_represent
from fflab.models.common import (
    GoodnessNetwork,
    ProgressCallback,
    TrainingProgress,
    goodness_representations,
    label_goodness,
)
from fflab.pipeline.run_analyses.common import ANALYSIS_SEED, per_class_rows
from fflab.spec import ExperimentSpec, RunKey

SNAPSHOT_PROBE_PER_CLASS = 50  # dynamics: the fixed probe set, 500 test images
SNAPSHOT_COUNT = 5  # default snapshots: log-spaced epochs
SNAPSHOT_FILE = "snapshots.npz"


def snapshot_epochs(spec: ExperimentSpec, model: str) -> list[int]:
    """The epochs at which a model's training is captured (see ``ExperimentSpec.snapshots``)."""
    epochs = spec.training(model).epochs
    if spec.snapshots is None:
        return default_snapshot_epochs(epochs, SNAPSHOT_COUNT)
    return [e for e in spec.snapshots if e <= epochs]


class SnapshotRecorder:
    """A progress callback that also captures the probe set at the snapshot epochs.

    ``net`` is the network being trained, read at each capture.
    Captures are kept in memory (float16 representations of 500 images) and
    written by ``save``.
    """

    def __init__(self, spec: ExperimentSpec, key: RunKey, images: torch.Tensor, labels: torch.Tensor,
                 net: GoodnessNetwork | BPClassifier, progress: ProgressCallback | None):
        self.spec, self.key, self.net, self.progress = spec, key, net, progress
        self.epochs = set(snapshot_epochs(spec, key.model))
        self.rows = per_class_rows(labels.numpy(), SNAPSHOT_PROBE_PER_CLASS, ANALYSIS_SEED)
        self.images, self.labels = images[self.rows], labels[self.rows]
        self.captures: list[tuple[int, int, float, float, np.ndarray]] = []

    def __call__(self, event: TrainingProgress) -> None:
        if self.progress is not None:
            self.progress(event)
        if event.epoch in self.epochs:
            self.capture(event)

    @torch.no_grad()
    def capture(self, event: TrainingProgress) -> None:
        net = self.net
        labels = self.labels.numpy()
        if isinstance(net, BPClassifier):
            predictions, layers = bp_predict_and_represent(net, self.images)
            trained: Sequence[int] = range(len(layers))
        else:
            layers = goodness_representations(net, self.images, self.labels)
            scores = label_goodness(net, self.images).numpy()
            # FF trains one layer at a time: the layers up to it predict, and it alone is captured.
            upto = len(layers) if event.layer is None else event.layer + 1
            predictions = PREDICTION_RULES[self.spec.prediction](scores[:, :, :upto]).argmax(axis=1)
            trained = range(len(layers)) if event.layer is None else [event.layer]
        accuracy = float((np.asarray(predictions) == labels).mean())
        for index in trained:
            weights = net.linear(index).weight.detach().cpu().numpy()
            self.captures.append((index + 1, event.epoch, accuracy, fraction_positive_weights(weights),
                                  layers[index].numpy().astype(np.float16)))

    def save(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        arrays = {f"layer{layer}_epoch{epoch}": rep for layer, epoch, _, _, rep in self.captures}
        meta = np.array([[layer, epoch, accuracy, positive] for layer, epoch, accuracy, positive, _ in self.captures],
                        dtype=np.float64).reshape(-1, 4)
        arrays_in_file = {"rows": self.rows, "meta": meta, **arrays}
        np.savez_compressed(run_dir / SNAPSHOT_FILE, **arrays_in_file)  # type: ignore[arg-type]  # numpy's stub: **arrays as allow_pickle


def snapshot_recorder(spec: ExperimentSpec, key: RunKey, images: torch.Tensor, labels: torch.Tensor,
                      net: GoodnessNetwork | BPClassifier,
                      progress: ProgressCallback | None) -> SnapshotRecorder | None:
    """A recorder for the run, or None when it takes no snapshot (no cost at all)."""
    if not snapshot_epochs(spec, key.model):
        return None
    return SnapshotRecorder(spec, key, images, labels, net, progress)
