"""Ensemble dynamics: how the ensembles form during training.

During training a run captures, at a few epochs (``analysis.snapshots``), the
representations of a fixed probe set of test images (see
``fflab.run_analyses``). Here, from those captures and the trained network's
representations of the same images, each snapshot's Method 1 ensembles are
compared with the final ones: their size and their Jaccard overlap
|E_t ∩ E_final| / |E_t ∪ E_final| (1 when both are empty).

Every probe image of a class is used, correct or not (the snapshots'
predictions differ, so "correctly classified" would change the images from
one snapshot to the next). Shapes: ``S`` snapshots, ``P`` probe images, ``n``
units, ``C`` classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fflab.analysis.ensembles import class_ensembles

__all__ = ["EnsembleTrajectory", "default_snapshot_epochs", "ensemble_trajectory", "jaccard"]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|a ∩ b| / |a ∪ b| of two sets of unit indices; 1.0 when both are empty."""
    units_a, units_b = set(np.asarray(a).tolist()), set(np.asarray(b).tolist())
    union = units_a | units_b
    return 1.0 if not union else len(units_a & units_b) / len(union)


def default_snapshot_epochs(epochs: int, count: int = 5) -> list[int]:
    """A log-spaced handful of epochs in 1..epochs, the last included:
    ``count`` points of geomspace(1, epochs), rounded, duplicates dropped."""
    if epochs < 1 or count < 1:
        raise ValueError(f"epochs and count must be >= 1; got {epochs}, {count}")
    return sorted({int(round(e)) for e in np.geomspace(1, epochs, count)})


@dataclass(frozen=True)
class EnsembleTrajectory:
    """``sizes[s, c]``: size of class c's ensemble at snapshot s; ``jaccard[s, c]``:
    its overlap with the final ensemble; ``final_sizes[c]``; ``classes`` in order."""

    sizes: np.ndarray
    jaccard: np.ndarray
    final_sizes: np.ndarray
    classes: list[int]


def ensemble_trajectory(
    snapshots: Sequence[np.ndarray],
    final: np.ndarray,
    labels: np.ndarray,
    quantile: float,
    classes: Sequence[int],
    threshold: str = "quantile",
    bins: int = 10,
) -> EnsembleTrajectory:
    """Method 1 ensembles (at ``quantile``; ``threshold`` and ``bins`` as in
    ``method1_ensemble``) of one layer at each snapshot, against the final ones.

    snapshots: S arrays (P, n); final: (P, n); labels: (P,). A class with no
    probe image gets empty ensembles (size 0, overlap 1).
    """
    final = np.asarray(final)
    labels = np.asarray(labels)
    if final.ndim != 2 or final.shape[0] != labels.shape[0]:
        raise ValueError(f"final must be (P, n) with P = len(labels); got {final.shape}, {labels.shape}")
    classes = list(classes)
    method1 = {"quantile": quantile, "threshold": threshold, "bins": bins}
    last = class_ensembles(final, labels, "method1", classes=classes, **method1)
    sizes = np.zeros((len(snapshots), len(classes)), dtype=int)
    overlap = np.zeros((len(snapshots), len(classes)))
    for s, X in enumerate(snapshots):
        X = np.asarray(X)
        if X.shape != final.shape:
            raise ValueError(f"snapshot {s} has shape {X.shape}; the final representations {final.shape}")
        ensembles = class_ensembles(X, labels, "method1", classes=classes, **method1)
        for i, c in enumerate(classes):
            sizes[s, i] = ensembles[c].size
            overlap[s, i] = jaccard(ensembles[c], last[c])
    return EnsembleTrajectory(sizes, overlap, np.array([last[c].size for c in classes]), classes)
