"""Lesions: are the ensembles causally necessary for their class?

A class's ensemble in one layer is silenced (its units' activations forced to
0 at test time, downstream layers seeing the silenced output), and the
accuracy on that class and on the other classes is compared with the intact
network's. Two controls silence as many units outside the ensemble: drawn at
random (several draws, mean ± standard error), and the ones most active on the
class (by mean activity over the class's images; one deterministic set). If
the ensemble carries the class, silencing it costs that class far more than
either control does, and costs the other classes little.

This module chooses the unit sets and summarises accuracies; the forward
passes with silenced units are ``fflab.models.probing``. Shapes: ``N``
images, ``n`` units, ``k`` units silenced.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LESION_KINDS", "AccuracyDrop", "accuracy_drop", "control_unit_sets", "mean_and_se"]

LESION_KINDS = ("ensemble", "random", "most_active")


def control_unit_sets(
    ensemble: np.ndarray, class_mean_activity: np.ndarray, draws: int, rng: np.random.Generator
) -> tuple[list[np.ndarray], np.ndarray]:
    """The controls of an ensemble lesion: ``draws`` random sets and the most
    active set, each of ``len(ensemble)`` units outside the ensemble (fewer when
    fewer units lie outside it).

    ensemble: (k,) unit indices; class_mean_activity: (n,) the class's mean
    activation per unit. Returns (random sets, most active set), each sorted.
    Ties in activity go to the lower index.
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1; got {draws}")
    activity = np.asarray(class_mean_activity, dtype=float)
    outside = np.setdiff1d(np.arange(activity.size), np.asarray(ensemble, dtype=int))
    k = min(len(ensemble), outside.size)
    random_sets = [np.sort(rng.choice(outside, size=k, replace=False)) for _ in range(draws)]
    order = outside[np.argsort(-activity[outside], kind="stable")]
    return random_sets, np.sort(order[:k])


@dataclass(frozen=True)
class AccuracyDrop:
    """Intact minus lesioned accuracy on the target class and on the other classes."""

    target: float
    others: float


def accuracy_drop(intact: np.ndarray, lesioned: np.ndarray, labels: np.ndarray, target: int) -> AccuracyDrop:
    """intact, lesioned: (N,) predicted labels; labels: (N,). Needs images of the
    target class and of at least one other class."""
    intact, lesioned, labels = np.asarray(intact), np.asarray(lesioned), np.asarray(labels)
    rows = labels == target
    if not rows.any() or rows.all():
        raise ValueError(f"labels must hold images of class {target} and of other classes")

    def accuracy(predictions: np.ndarray, where: np.ndarray) -> float:
        return float((predictions[where] == labels[where]).mean())

    return AccuracyDrop(
        target=accuracy(intact, rows) - accuracy(lesioned, rows),
        others=accuracy(intact, ~rows) - accuracy(lesioned, ~rows),
    )


def mean_and_se(values: list[float]) -> tuple[float, float | None]:
    """Mean and standard error (sample std / sqrt(n)); SE is None for one value."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        raise ValueError("values must not be empty")
    if array.size == 1:
        return float(array[0]), None
    return float(array.mean()), float(array.std(ddof=1) / np.sqrt(array.size))
