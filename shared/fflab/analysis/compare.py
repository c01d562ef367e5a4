"""Comparison of the two methods that define ensembles (paper, Appendix A.3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LinearFit", "MethodFits", "linear_fit", "method_size_regression", "method_size_fits"]


@dataclass(frozen=True)
class LinearFit:
    """Least-squares line ``y = slope * x + intercept``.

    Attributes
    ----------
    slope, intercept : float
    r2 : float
        Coefficient of determination; nan when y has zero variance.
    n_points : int
    """

    slope: float
    intercept: float
    r2: float
    n_points: int


def linear_fit(x: Any, y: Any) -> LinearFit:
    """Ordinary least-squares line of y against x.

    Parameters
    ----------
    x, y : array-like of shape (k,)
        At least 2 finite points; x must not be constant.

    Returns
    -------
    LinearFit
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or y.ndim != 1 or x.shape != y.shape:
        raise ValueError(
            f"x and y must be 1-D arrays of the same length; got shapes {x.shape} and {y.shape}."
        )
    if x.size < 2:
        raise ValueError(f"x and y need at least 2 points for a line; got {x.size}.")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("x and y must contain only finite values (no nan or inf).")
    dx = x - x.mean()
    dy = y - y.mean()
    sxx = float(dx @ dx)
    if sxx == 0:
        raise ValueError("x has zero variance (all values equal): the slope is undefined.")
    slope = float(dx @ dy) / sxx
    intercept = float(y.mean() - slope * x.mean())
    residual = y - (slope * x + intercept)
    syy = float(dy @ dy)
    r2 = 1.0 - float(residual @ residual) / syy if syy > 0 else float("nan")
    return LinearFit(slope=slope, intercept=intercept, r2=r2, n_points=int(x.size))


def method_size_regression(sizes_method1: Any, sizes_method2: Any) -> LinearFit:
    """Regression line of Figure 8B: Method 1 size against Method 2 size.

    Following the paper's caption ("sizes of the ensembles defined by
    Method 1 vs. the sizes of the ensembles defined by Method 2"), the
    Method 1 size is y and the Method 2 size is x:
    ``size_method1 = slope * size_method2 + intercept``. The paper reports
    slope 0.98 and intercept 9.95 over all models, data sets, classes and
    layers (quantile 0.99, epsilon 0.2).

    Parameters
    ----------
    sizes_method1 : array-like of shape (k,)
        Size of each ensemble by Method 1 (y).
    sizes_method2 : array-like of shape (k,)
        Size of the same ensembles by Method 2 (x), in the same order.

    Returns
    -------
    LinearFit
    """
    sizes_method1 = np.asarray(sizes_method1, dtype=np.float64)
    sizes_method2 = np.asarray(sizes_method2, dtype=np.float64)
    if sizes_method1.shape != sizes_method2.shape or sizes_method1.ndim != 1:
        raise ValueError(
            "sizes_method1 and sizes_method2 must be 1-D arrays of the same length; got shapes "
            f"{sizes_method1.shape} and {sizes_method2.shape}."
        )
    if sizes_method1.size < 2:
        raise ValueError(
            f"sizes_method1 and sizes_method2 need at least 2 points; got {sizes_method1.size}."
        )
    if np.ptp(sizes_method2) == 0:
        raise ValueError(
            "sizes_method2 (x) has zero variance (all sizes equal): the slope is undefined."
        )
    return linear_fit(sizes_method2, sizes_method1)


@dataclass(frozen=True)
class MethodFits:
    """Figure 8B's regression, split so that it can be compared with the paper.

    Attributes
    ----------
    all_points : LinearFit or None
        Over every point (the paper's pooled fit); None where undefined.
    both_found : LinearFit or None
        Over the points where both methods find an ensemble (both sizes > 0).
    per_group : dict of str to (LinearFit or None)
        Over the points of each group (e.g. model), all points.
    left_out : int
        Points left out of ``both_found``: one method or both found nothing.
    """

    all_points: LinearFit | None
    both_found: LinearFit | None
    per_group: dict[str, LinearFit | None]
    left_out: int


def _fit_or_none(sizes_method1: np.ndarray, sizes_method2: np.ndarray) -> LinearFit | None:
    try:
        return method_size_regression(sizes_method1, sizes_method2)
    except ValueError:  # fewer than two points, or constant Method 2 sizes
        return None


def method_size_fits(sizes_method1: Any, sizes_method2: Any, groups: Any) -> MethodFits:
    """Figure 8B's fit over all points, over the points where both methods find
    an ensemble, and per group.

    Where Method 2 finds nothing (x = 0) while Method 1 finds hundreds of
    saturated units (BP), the pooled line is pulled by points that say nothing
    of how the two methods agree; ``both_found`` leaves them out.

    Parameters
    ----------
    sizes_method1, sizes_method2 : array-like of shape (k,)
        Ensemble sizes by Method 1 (y) and Method 2 (x).
    groups : array-like of shape (k,)
        Group of each point (e.g. the model), str.

    Returns
    -------
    MethodFits
        A fit is None where it is undefined (fewer than 2 points or constant x).
    """
    y = np.asarray(sizes_method1, dtype=np.float64)
    x = np.asarray(sizes_method2, dtype=np.float64)
    groups = np.asarray(groups, dtype=object)
    if not (y.ndim == x.ndim == groups.ndim == 1 and y.shape == x.shape == groups.shape):
        raise ValueError(
            "sizes_method1, sizes_method2 and groups must be 1-D of the same length; got shapes "
            f"{y.shape}, {x.shape} and {groups.shape}."
        )
    both = (y > 0) & (x > 0)
    return MethodFits(
        all_points=_fit_or_none(y, x),
        both_found=_fit_or_none(y[both], x[both]),
        per_group={str(g): _fit_or_none(y[groups == g], x[groups == g]) for g in dict.fromkeys(groups)},
        left_out=int((~both).sum()),
    )
