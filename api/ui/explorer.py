"""The ensemble explorer's numbers: each unit's mean activity over a class's
images, and the units laid out on a square grid (28 x 28 for 784 units) with the
ensemble and the units it shares with another class marked.

``class_mean_activity`` and ``unit_grid`` are pure functions over arrays.
``stored_class_means`` reads a run's ``representations.npz`` from the artifact
storage once and keeps the (small) per-class means of every layer in a cache
keyed by the file's sha256, so that flipping through classes and layers does not
read the (large) file again.
"""

from __future__ import annotations

import io
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from fflab.data import N_CLASSES
from fflab.pipeline.folders import analysed_rows, layer_count
from fflab.storage import Storage


def class_mean_activity(representations: np.ndarray, labels: np.ndarray, rows: np.ndarray,
                        n_classes: int = N_CLASSES) -> np.ndarray:
    """Mean activation of every unit over each class's selected images.

    Parameters
    ----------
    representations : (N, n) array
        Post-activation values of one layer, one row per test image.
    labels : (N,) int array
        Class of each image, in ``[0, n_classes)``.
    rows : (N,) bool array
        The images to average over (the analysed ones: ``fflab.pipeline.folders.analysed_rows``).

    Returns
    -------
    (n_classes, n) float array
        Row ``c`` is the mean over the selected images of class ``c``; NaN for a
        class with none.
    """
    X = np.asarray(representations, dtype=float)
    y = np.asarray(labels)
    keep = np.asarray(rows, dtype=bool)
    if X.ndim != 2:
        raise ValueError(f"representations: expected an (N, n) array, got shape {X.shape}")
    if y.shape != (X.shape[0],) or keep.shape != (X.shape[0],):
        raise ValueError(f"labels and rows must have shape ({X.shape[0]},); got {y.shape} and {keep.shape}")
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes})")
    means = np.full((n_classes, X.shape[1]), np.nan)
    for c in range(n_classes):
        selected = keep & (y == c)
        if selected.any():
            means[c] = X[selected].mean(axis=0)
    return means


@dataclass(frozen=True)
class GridCell:
    unit: int
    mean: float | None  # mean activity; None where unknown
    level: float  # mean scaled to [0, 1] by the grid's largest mean (0 where unknown)
    in_ensemble: bool
    shared: bool  # in the ensemble and in the other class's


def unit_grid(n_units: int, ensemble: Iterable[int], other: Iterable[int] = (),
              mean: np.ndarray | None = None) -> tuple[int, list[GridCell]]:
    """The units on the smallest square grid, row-major (unit ``u`` at row
    ``u // side``, column ``u % side``: ``fflab.figures.square_grid``'s layout).

    Parameters
    ----------
    n_units : int
    ensemble, other : unit indices in ``[0, n_units)``
        The ensemble shown and the other class's (for the shared units).
    mean : (n_units,) array or None
        Each unit's mean activity (NaN: unknown).

    Returns
    -------
    (side, cells)
        ``side = ceil(sqrt(n_units))``; one cell per unit, in unit order.
    """
    members, others = set(int(u) for u in ensemble), set(int(u) for u in other)
    outside = [u for u in members | others if not 0 <= u < n_units]
    if outside:
        raise ValueError(f"units {sorted(outside)[:5]} are outside [0, {n_units})")
    values = np.full(n_units, np.nan) if mean is None else np.asarray(mean, dtype=float)
    if values.shape != (n_units,):
        raise ValueError(f"mean: expected shape ({n_units},), got {values.shape}")
    finite = values[np.isfinite(values)]
    top = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    cells = [
        GridCell(unit=u, mean=float(v) if math.isfinite(v) else None,
                 level=min(max(float(v) / top, 0.0), 1.0) if math.isfinite(v) else 0.0,
                 in_ensemble=u in members, shared=u in members and u in others)
        for u, v in enumerate(values)
    ]
    return max(1, math.isqrt(n_units - 1) + 1) if n_units > 0 else 1, cells


class ClassMeansCache:
    """Per-class mean activity of each layer of a run, by the sha256 of its
    representations.npz (at most ``size`` runs kept)."""

    def __init__(self, size: int = 8):
        self.size, self._items, self._lock = size, OrderedDict[tuple[str, int | None, bool, int], dict[int, np.ndarray]](), threading.Lock()

    def get(self, storage: Storage, key: str, sha256: str, unseen_class: int | None,
            correct_only: bool, n_classes: int = N_CLASSES) -> dict[int, np.ndarray]:
        """``{layer: (C, n) array}`` (layers from 1, C the data set's ``n_classes``) of the stored file ``key``."""
        cache_key = (sha256, unseen_class, correct_only, n_classes)
        with self._lock:
            if cache_key in self._items:
                self._items.move_to_end(cache_key)
                return self._items[cache_key]
        with np.load(io.BytesIO(b"".join(storage.iter_bytes(key)))) as npz:
            stored = {name: npz[name] for name in npz.files}
        rows = analysed_rows(stored, unseen_class, correct_only)
        means = {layer: class_mean_activity(stored[f"layer{layer}"], stored["labels"], rows, n_classes)
                 for layer in range(1, layer_count(stored) + 1)}
        with self._lock:
            self._items[cache_key] = means
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return means
