"""Label selectivity: do a class's ensemble units answer to the label?

The paper claims ensemble units respond minimally to negative data. For FF
and BP/FF the input carries a label; here the images of class c pass through
the network once with each label k embedded, and the mean activity of class
c's ensemble units (over those images and units) gives ``activity[c, k]``:
the diagonal is the true label, the rest wrong labels. The selectivity index
of a class is (true - mean wrong) / (true + mean wrong), in [-1, 1]: 1 when
the units are silent under every wrong label, 0 when the label does not matter.

BP has no label input, so it has no label selectivity. Shapes: ``K`` labels,
``N`` images, ``n`` units, ``C`` classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["LabelSelectivity", "label_selectivity"]


@dataclass(frozen=True)
class LabelSelectivity:
    """``activity[i, k]``: mean activity of classes[i]'s ensemble with label k
    (nan: no image or empty ensemble); ``true_label[i]``, ``wrong_labels[i]``
    (mean over k != classes[i]) and ``index[i]`` per class."""

    activity: np.ndarray
    true_label: np.ndarray
    wrong_labels: np.ndarray
    index: np.ndarray
    classes: list[int]


def label_selectivity(
    by_label: np.ndarray, labels: np.ndarray, ensembles: Mapping[int, np.ndarray], classes: Sequence[int]
) -> LabelSelectivity:
    """by_label: (K, N, n), the layer's activations of every image with label k
    embedded; labels: (N,) true classes; ensembles: class -> unit indices."""
    by_label, labels = np.asarray(by_label, dtype=float), np.asarray(labels)
    if by_label.ndim != 3 or by_label.shape[1] != labels.shape[0]:
        raise ValueError(f"by_label must be (K, N, n) with N = len(labels); got {by_label.shape}")
    n_labels = by_label.shape[0]
    classes = list(classes)
    activity = np.full((len(classes), n_labels), np.nan)
    for i, c in enumerate(classes):
        if not 0 <= c < n_labels:
            raise ValueError(f"class {c} has no label among the {n_labels} embedded")
        units = np.asarray(ensembles.get(c, []), dtype=int)
        rows = labels == c
        if units.size and rows.any():
            activity[i] = by_label[:, rows][:, :, units].mean(axis=(1, 2))
    true = np.array([activity[i, c] for i, c in enumerate(classes)])
    wrong = np.array([np.delete(activity[i], c).mean() for i, c in enumerate(classes)])
    with np.errstate(invalid="ignore", divide="ignore"):
        index = (true - wrong) / (true + wrong)
    return LabelSelectivity(activity, true, wrong, index, classes)
