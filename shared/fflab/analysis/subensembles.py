"""Within-class structure: sub-ensembles.

A class's images need not all use the same units. Each image is reduced to its
set of active units (activation at or above ``threshold``, by default the
class's Method 1 threshold: the quantile of all its activations, and above
their minimum, as in Method 1, so that saturated units count and silent ones
do not), images are compared
by the Jaccard distance between those sets, and grouped by average-linkage
agglomerative clustering (scikit-learn). The number of groups k is the one in
2..``max_clusters`` with the best mean silhouette among the clusterings whose
every group holds at least ``min_group_fraction`` of the images (silhouette
alone rewards splitting off a single outlying image), if that silhouette
reaches ``min_silhouette``; otherwise the class is one group. Each group's
sub-ensemble is the set of units active in at least half of its images.

Shapes: ``N`` images of one class, ``n`` units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import silhouette_score

from fflab.analysis.ensembles import method1_threshold

__all__ = ["SubEnsembles", "jaccard_distances", "sub_ensembles"]


def jaccard_distances(active: np.ndarray) -> np.ndarray:
    """(N, n) boolean -> (N, N) Jaccard distances 1 - |a ∩ b| / |a ∪ b| (0 for two empty sets)."""
    active = np.asarray(active, dtype=bool)
    a = active.astype(np.float64)
    intersection = a @ a.T
    counts = a.sum(axis=1)
    union = counts[:, None] + counts[None, :] - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        distance = np.where(union > 0, 1.0 - intersection / union, 0.0)
    np.fill_diagonal(distance, 0.0)
    return distance


@dataclass(frozen=True)
class SubEnsembles:
    """``assignment[i]``: group of image i (0..k-1, groups ordered by size, largest
    first); ``image_counts[g]``; ``units[g]``: the group's sub-ensemble (sorted);
    ``silhouette``: of the chosen k (None for k = 1)."""

    assignment: np.ndarray
    image_counts: list[int]
    units: list[np.ndarray]
    silhouette: float | None
    threshold: float


def sub_ensembles(
    X: np.ndarray,
    threshold: float | None = None,
    quantile: float = 0.95,
    max_clusters: int = 6,
    min_silhouette: float = 0.25,
    min_group_fraction: float = 0.05,
) -> SubEnsembles:
    """Sub-ensembles of one class in one layer. X: (N, n) activations.

    ``threshold`` None: Method 1's, ``method1_threshold(X, quantile)`` (np.quantile). Needs N >= 2.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 2:
        raise ValueError(f"X must be (N, n) with N >= 2; got shape {X.shape}")
    if max_clusters < 2 or not -1 <= min_silhouette <= 1 or not 0 <= min_group_fraction < 0.5:
        raise ValueError("max_clusters must be >= 2, min_silhouette in [-1, 1] and min_group_fraction in [0, 0.5)")
    if threshold is None:
        threshold = method1_threshold(X, quantile)
    active = (X >= threshold) & (X > X.min())
    distance = jaccard_distances(active)
    best_k, best_score, best_labels = 1, None, np.zeros(X.shape[0], dtype=int)
    for k in range(2, min(max_clusters, X.shape[0] - 1) + 1):
        labels = AgglomerativeClustering(n_clusters=k, metric="precomputed", linkage="average").fit_predict(distance)
        if np.bincount(labels).min() < max(2.0, min_group_fraction * X.shape[0]):
            continue
        score = float(silhouette_score(distance, labels, metric="precomputed"))
        if best_score is None or score > best_score:
            best_k, best_score, best_labels = k, score, labels
    if best_score is None or best_score < min_silhouette:
        best_k, best_score, best_labels = 1, None, np.zeros(X.shape[0], dtype=int)
    counts = np.bincount(best_labels, minlength=best_k)
    order = np.argsort(-counts, kind="stable")
    relabel = np.empty(best_k, dtype=int)
    relabel[order] = np.arange(best_k)
    assignment = relabel[best_labels]
    units = [np.flatnonzero(active[assignment == g].mean(axis=0) >= 0.5) for g in range(best_k)]
    return SubEnsembles(assignment, [int(counts[g]) for g in order], units, best_score, float(threshold))
