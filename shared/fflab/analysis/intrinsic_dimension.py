"""Intrinsic dimension of representations: the TwoNN estimator.

TwoNN (Facco, d'Errico, Rodriguez and Laio, Sci. Rep. 7, 12140, 2017) uses only
each point's two nearest neighbours: with r1 <= r2 their Euclidean distances,
mu = r2 / r1 follows a Pareto law with exponent d on a locally uniform
d-dimensional manifold, so -log(1 - F(mu)) = d log(mu). The estimate is the
slope of that line through the origin, fitted by least squares on the points
with the smallest mu after discarding the largest fraction (``discard``,
default 10%, as in the paper: the tail is where curvature and noise act).

Duplicate points carry no information (r1 = 0, mu infinite), so the rows are
made unique first (``np.unique`` over rows, as Facco et al. do) and the number
of rows dropped is returned. Leaving that to the neighbour search does not
work: in high dimension it returns the distance between two identical rows as
about 1e-7, not 0 (scikit-learn computes ||x||^2 + ||y||^2 - 2 x.y), so a
duplicate's mu is huge but finite and the fit flattens (a plane in 784-D with
20% duplicate rows gave 0.19). Shapes: ``N`` points, ``n`` coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.neighbors import NearestNeighbors

__all__ = ["TwoNNResult", "two_nn"]


@dataclass(frozen=True)
class TwoNNResult:
    dimension: float  # nan when fewer than 3 usable points
    n_points: int  # points the fit used (unique rows, after discarding the tail)
    n_duplicates: int  # rows dropped as exact copies of another row (N - unique rows)


def two_nn(points: np.ndarray, discard: float = 0.1) -> TwoNNResult:
    """TwoNN estimate of the intrinsic dimension of points: (N, n).

    Exact duplicate rows are dropped first (one copy of each kept); the result
    counts them in ``n_duplicates``.
    """
    if not 0 <= discard < 1:
        raise ValueError(f"discard must be in [0, 1); got {discard}")
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2:
        raise ValueError(f"points must be (N, n); got shape {points.shape}")
    unique = np.unique(points, axis=0) if points.shape[0] else points
    n_duplicates = points.shape[0] - unique.shape[0]
    if unique.shape[0] < 3:
        return TwoNNResult(float("nan"), 0, n_duplicates)
    distances, _ = NearestNeighbors(n_neighbors=3).fit(unique).kneighbors(unique)
    r1, r2 = distances[:, 1], distances[:, 2]
    usable = r1 > 0  # distinct rows: a guard only
    mu = np.sort(r2[usable] / r1[usable])
    n = mu.size
    keep = int(np.floor(n * (1 - discard)))
    if keep < 3:
        return TwoNNResult(float("nan"), 0, n_duplicates)
    x = np.log(mu[:keep])
    y = -np.log(1 - np.arange(1, keep + 1) / n)
    dimension = float(x @ y / (x @ x)) if x @ x > 0 else float("nan")
    return TwoNNResult(dimension, keep, n_duplicates)
