"""Ensembles of active units: Method 1 and Method 2 of the paper (section 3.4).

All functions are pure and work on numpy arrays of activations, one row per
image and one column per unit of a layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

from fflab.registry import Registry

__all__ = [
    "METHOD1_THRESHOLDS",
    "METHOD2_CUTS",
    "Method1Result",
    "Method2Result",
    "UnseenClassActivity",
    "method1_ensemble",
    "method1_threshold",
    "method1_units",
    "method2_decision_diagram",
    "method2_ensemble",
    "method2_top_cluster",
    "class_ensembles",
    "ensemble_sizes",
    "shared_units_matrix",
    "mean_shared_units",
    "unseen_class_activity",
    "sparseness_index",
    "hoyer_sparseness",
    "SparsenessMeasure",
    "SPARSENESS_MEASURES",
    "mean_sparseness",
    "class_sparseness",
]

METHODS = ("method1", "method2")
_METHOD_PARAMS = {
    "method1": ("quantile", "threshold", "bins"),
    "method2": ("epsilon", "rho_cut", "nh_cut", "upper_bound", "cut"),
}


# How Method 1's threshold is read from the values of X. The paper: "We compute the
# histogram of values in X, set a quantile in their distribution".
METHOD1_THRESHOLDS: Registry[str] = Registry("method1_threshold", {
    "quantile": "np.quantile of all values of X (linear interpolation between the two nearest values)",
    "histogram": "the quantile read off a histogram of X (histogram_bins equal bins from the smallest value to "
                 "the largest, numpy's and matplotlib's default 10): the upper edge of the first bin at which "
                 "the cumulative share of values reaches the quantile",
})


# How Method 2 picks its ensemble where its cuts are automatic (rho_cut or nh_cut None). The
# paper drew its cuts by eye in each decision diagram (section 3.4, Figure 4C); these rules are
# fflab's. Where nh_cut is given, the rule does not matter.
METHOD2_CUTS: Registry[str] = Registry("method2_cut", {
    "isolated": "rho_cut = sqrt(median(rho) / (2 epsilon)); walking down from the most active unit, the "
                "ensemble is the run of units with rho < rho_cut above the first unit with rho >= rho_cut "
                "(nh_cut = its n_h). A dense cluster at the top, such as units saturated together at 1.0, "
                "stops the walk at once: no ensemble",
    "top_cluster": "as isolated, except that the most active group of units is an ensemble however dense it "
                   "is, when it is set apart from the rest by a gap in mean activity wider than epsilon and "
                   "does not hold the median unit (a saturated cluster at the top above the bulk); the walk "
                   "then goes on below it",
})


@dataclass(frozen=True)
class Method1Result:
    """Ensemble found by Method 1.

    Attributes
    ----------
    units : ndarray of shape (k,), int64
        Sorted indices of the active units.
    threshold : float
        The quantile of all values of X; nan when X is empty.
    medians : ndarray of shape (n,)
        Median activation of each unit over the images.
    """

    units: np.ndarray
    threshold: float
    medians: np.ndarray


@dataclass(frozen=True)
class Method2Result:
    """Ensemble found by Method 2 and its decision diagram.

    Attributes
    ----------
    units : ndarray of shape (k,), int64
        Sorted indices of the units with ``rho < rho_cut`` and
        ``n_higher < nh_cut``.
    mean_activity : ndarray of shape (n,)
        Mean activation of each unit over the images.
    rho : ndarray of shape (n,)
        Density of each unit in the decision diagram.
    n_higher : ndarray of shape (n,), int64
        Number of units with a strictly higher mean activation.
    rho_cut : float
        Density cut used (given or automatic).
    nh_cut : int
        Cut on ``n_higher`` used (given or automatic).
    top_cluster : ndarray of shape (t,), int64
        Sorted indices of the units taken as a cluster at the top by the
        ``"top_cluster"`` rule (they are in ``units`` whatever their ``rho``
        and ``n_higher``); empty under ``"isolated"``.
    """

    units: np.ndarray
    mean_activity: np.ndarray
    rho: np.ndarray
    n_higher: np.ndarray
    rho_cut: float
    nh_cut: int
    top_cluster: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))


@dataclass(frozen=True)
class UnseenClassActivity:
    """Activation of the ensemble of a class unseen in training, and of the others.

    Attributes
    ----------
    unseen_units : ndarray of shape (k,), int64
        Units of the unseen class's ensemble.
    unseen_mean_activity : float
        Mean activation over the unseen class's images and its ensemble's
        units; nan if either is empty.
    seen_mean_activity : float
        Mean activation over all (image, unit) pairs where the image belongs
        to a seen class c and the unit to E_c, pooled over the seen classes;
        nan if there are no such pairs.
    seen_classes : tuple of int
        The seen classes used (the keys of ``ensembles`` other than the unseen
        class).
    """

    unseen_units: np.ndarray
    unseen_mean_activity: float
    seen_mean_activity: float
    seen_classes: tuple[int, ...]


def _as_activation_matrix(X: ArrayLike, name: str = "X") -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (images, units); got shape {X.shape}.")
    if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)
            or X.dtype == bool):
        raise ValueError(f"{name} must be numeric; got dtype {X.dtype}.")
    if not np.issubdtype(X.dtype, np.floating):
        X = X.astype(np.float64)
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{name} must contain only finite values (no nan or inf).")
    return X


def _check_representations(representations: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    representations = _as_activation_matrix(representations, "representations")
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D array; got shape {labels.shape}.")
    if labels.shape[0] != representations.shape[0]:
        raise ValueError(
            f"labels must have one entry per row of representations; got {labels.shape[0]} "
            f"labels for {representations.shape[0]} rows."
        )
    return representations, labels


def _resolve_classes(labels: np.ndarray, classes: Iterable[int] | None) -> list[int]:
    if classes is None:
        return [int(c) for c in np.unique(labels)]
    resolved = [int(c) for c in classes]
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"classes must not contain duplicates; got {resolved}.")
    return resolved


def _check_epsilon(epsilon: Any) -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, Real) or not (
        math.isfinite(epsilon) and float(epsilon) > 0
    ):
        raise ValueError(f"epsilon must be a finite number > 0; got {epsilon!r}.")
    return float(epsilon)


def _check_upper_bound(upper_bound: Any) -> float | None:
    if upper_bound is None:
        return None
    if isinstance(upper_bound, bool) or not isinstance(upper_bound, Real) or not math.isfinite(
        upper_bound
    ):
        raise ValueError(f"upper_bound must be a finite number or None; got {upper_bound!r}.")
    return float(upper_bound)


def _check_method1_options(quantile: Any, threshold: Any, bins: Any) -> None:
    if isinstance(quantile, bool) or not isinstance(quantile, Real) or not 0 < float(quantile) < 1:
        raise ValueError(f"quantile must be a number in the open interval (0, 1); got {quantile!r}.")
    METHOD1_THRESHOLDS.lookup(threshold)
    if isinstance(bins, bool) or not isinstance(bins, Integral) or bins < 1:
        raise ValueError(f"bins must be an integer >= 1; got {bins!r}.")


def method1_threshold(X: Any, quantile: float = 0.95, threshold: str = "quantile", bins: int = 10) -> float:
    """Method 1's threshold: the ``quantile`` of all values of X, by one of
    ``METHOD1_THRESHOLDS``.

    ``"quantile"`` is ``np.quantile`` (linear interpolation). ``"histogram"``
    reads it off ``np.histogram(X, bins)`` (equal bins from X's smallest value
    to its largest): the upper edge of the first bin at which the cumulative
    share of values reaches ``quantile``, so that at least that share lie at
    or below it. Its resolution is the bin width: with 10 bins over sigmoid
    outputs in [0, 1], 0.1.

    Parameters
    ----------
    X : array-like of shape (m, n), m, n >= 1
        Activations of m images on n units.
    quantile : float, default=0.95
        In (0, 1).
    threshold : {"quantile", "histogram"}, default="quantile"
    bins : int, default=10
        Number of bins of the histogram, >= 1 (``"histogram"`` only).

    Returns
    -------
    float
    """
    _check_method1_options(quantile, threshold, bins)
    X = _as_activation_matrix(X)
    if X.size == 0:
        raise ValueError("X must hold at least one value.")
    return _method1_threshold(X, quantile, threshold, bins)


def _method1_threshold(X: np.ndarray, quantile: float, threshold: str, bins: int) -> float:
    """method1_threshold on a checked, non-empty activation matrix and checked options."""
    if threshold == "quantile":
        return float(np.quantile(X, quantile))
    counts, edges = np.histogram(X, bins=int(bins))
    reached = np.cumsum(counts) >= quantile * X.size * (1 - 1e-12)  # 19 of 20 values reach 0.95
    return float(edges[int(np.argmax(reached)) + 1])


def method1_ensemble(X: Any, quantile: float = 0.95, threshold: str = "quantile", bins: int = 10) -> Method1Result:
    """Ensemble of one class in one layer by Method 1 (quantile of X).

    The threshold is the ``quantile`` of all values of X (:func:`method1_threshold`:
    ``np.quantile``, or read off a histogram of X). Unit j is active if its
    median over the images is ``>=`` the threshold and ``>`` the smallest value
    of X. The ``>=`` keeps the saturation case at the top: sigmoid outputs
    saturate at exactly 1.0 in float32, so the quantile can equal the maximum,
    and saturated units then count as active. The strict ``>`` above the
    minimum removes the opposite case: where the quantile is the floor of the
    layer (0 for ReLU, or sigmoid outputs that underflow to 0.0), a unit whose
    median is that floor is silent, not active.

    Parameters
    ----------
    X : array-like of shape (m, n)
        Activations of the m images of one class on the n units of a layer.
    quantile : float, default=0.95
        Quantile of the values of X used as threshold, in (0, 1).
    threshold : {"quantile", "histogram"}, default="quantile"
        How the quantile is read from X (``METHOD1_THRESHOLDS``).
    bins : int, default=10
        Bins of the histogram, for ``threshold="histogram"``.

    Returns
    -------
    Method1Result
        With ``m == 0`` (or ``n == 0``) the ensemble is empty, the threshold
        and the medians are nan.
    """
    _check_method1_options(quantile, threshold, bins)
    X = _as_activation_matrix(X)
    m, n = X.shape
    if m == 0 or n == 0:
        return Method1Result(
            units=np.empty(0, dtype=np.int64),
            threshold=float("nan"),
            medians=np.full(n, np.nan, dtype=X.dtype),
        )
    cut = _method1_threshold(X, quantile, threshold, bins)
    medians = np.median(X, axis=0)
    return Method1Result(units=method1_units(medians, cut, float(X.min())), threshold=cut, medians=medians)


def method1_units(medians: Any, cut: float, floor: float) -> np.ndarray:
    """Method 1's rule, given a class's unit medians and its threshold: the units
    whose median is ``>= cut`` and ``> floor``, the smallest value of X
    (:func:`method1_ensemble` says why both).

    Parameters
    ----------
    medians : array-like of shape (n,)
        Each unit's median over the class's images.
    cut : float
        The threshold (:func:`method1_threshold`, or any other reading of it).
    floor : float
        The smallest value of the class's activation matrix.

    Returns
    -------
    ndarray of shape (k,), int64
        The active units, sorted.
    """
    medians = np.asarray(medians)
    return np.flatnonzero((medians >= cut) & (medians > floor)).astype(np.int64)


def method2_decision_diagram(
    mean_activity: Any, epsilon: float = 0.2, upper_bound: float | None = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Decision diagram (rho, n_higher) of Method 2.

    ``n_higher[j]`` is the number of units with a strictly higher mean
    activity. ``rho[j]`` is the number of units k (j included) with
    ``mean_j - epsilon <= mean_k <= mean_j + epsilon``, divided by
    ``2 * epsilon``; when ``mean_j + epsilon > upper_bound`` the window is cut
    by the bound and the count is divided by
    ``epsilon + min(epsilon, upper_bound - mean_j)`` instead (paper,
    footnote 1; ``upper_bound - mean_j`` is floored at 0). There is no
    correction at the lower end, as in the paper.

    Parameters
    ----------
    mean_activity : array-like of shape (n,)
        Mean activation of each unit over the images of a class.
    epsilon : float, default=0.2
        Radius of the window, > 0.
    upper_bound : float or None, default=1.0
        Upper bound of the activations (1 for a sigmoid); None disables the
        correction.

    Returns
    -------
    rho : ndarray of shape (n,), float64
    n_higher : ndarray of shape (n,), int64
    """
    epsilon = _check_epsilon(epsilon)
    upper_bound = _check_upper_bound(upper_bound)
    mean_activity = np.asarray(mean_activity, dtype=np.float64)
    if mean_activity.ndim != 1:
        raise ValueError(f"mean_activity must be a 1-D array; got shape {mean_activity.shape}.")
    if not np.all(np.isfinite(mean_activity)):
        raise ValueError("mean_activity must contain only finite values (no nan or inf).")
    n = mean_activity.shape[0]
    ordered = np.sort(mean_activity)
    count = np.searchsorted(ordered, mean_activity + epsilon, side="right") - np.searchsorted(
        ordered, mean_activity - epsilon, side="left"
    )
    width = np.full(n, 2 * epsilon)
    if upper_bound is not None:
        near = mean_activity + epsilon > upper_bound
        room_to_bound = np.maximum(upper_bound - mean_activity[near], 0.0)
        width[near] = epsilon + np.minimum(epsilon, room_to_bound)
    rho = count / width
    n_higher = (n - np.searchsorted(ordered, mean_activity, side="right")).astype(np.int64)
    return rho, n_higher


def method2_top_cluster(mean_activity: Any, epsilon: float = 0.2) -> np.ndarray:
    """The most active group of units, when it stands apart from the bulk.

    Sorted by mean activity, the units split wherever two neighbours are more
    than ``epsilon`` apart (then neither counts in the other's density window).
    The most active group is a cluster at the top if it does not hold the
    median unit (rank ``(n - 1) // 2`` from the least active), whose group is
    the bulk. A block of units saturated together at 1.0 above a bulk below
    ``1 - epsilon`` is such a cluster however dense it is.

    Parameters
    ----------
    mean_activity : array-like of shape (n,)
        Mean activation of each unit over the images of a class.
    epsilon : float, default=0.2
        Method 2's radius, > 0: the widest gap inside a group.

    Returns
    -------
    ndarray of shape (t,), int64
        Sorted indices of the cluster's units; empty when the units form one
        group or the most active group holds the median unit.
    """
    epsilon = _check_epsilon(epsilon)
    mean_activity = np.asarray(mean_activity, dtype=np.float64)
    if mean_activity.ndim != 1:
        raise ValueError(f"mean_activity must be a 1-D array; got shape {mean_activity.shape}.")
    if not np.all(np.isfinite(mean_activity)):
        raise ValueError("mean_activity must contain only finite values (no nan or inf).")
    n = mean_activity.shape[0]
    ordered = np.sort(mean_activity)
    breaks = np.flatnonzero(np.diff(ordered) > epsilon)  # a gap after sorted position i
    if breaks.size == 0 or breaks[-1] < (n - 1) // 2:
        return np.empty(0, dtype=np.int64)
    return np.flatnonzero(mean_activity > ordered[breaks[-1]]).astype(np.int64)


def method2_ensemble(
    X: Any,
    epsilon: float = 0.2,
    rho_cut: float | None = None,
    nh_cut: int | None = None,
    upper_bound: float | None = 1.0,
    cut: str = "isolated",
) -> Method2Result:
    """Ensemble of one class in one layer by Method 2 (decision diagram).

    A unit is in the ensemble if ``rho < rho_cut`` and ``n_higher < nh_cut``
    (see :func:`method2_decision_diagram`): few units are more active than
    it, and few units have a similar activity.

    Automatic cuts, used where a cut is None (``cut``, one of
    ``METHOD2_CUTS``; the paper drew its cuts by eye):

    - ``rho_cut`` is the geometric mean of the density of an isolated unit,
      ``1 / (2 * epsilon)``, and the median density over all units:
      ``rho_cut = sqrt(median(rho) / (2 * epsilon))``. It separates the
      units of the bulk (median density) from lone units.
    - ``"isolated"``: ``nh_cut`` is the ``n_higher`` of the most active unit
      whose ``rho >= rho_cut``: walking down from the most active unit, the
      ensemble is the run of low-density units above the first dense unit
      (the top of the bulk). If no unit has ``rho >= rho_cut``,
      ``nh_cut = n``. Units saturated together at the top are dense, so the
      walk stops at once and there is no ensemble.
    - ``"top_cluster"``: where ``nh_cut`` is automatic, the cluster at the top
      (:func:`method2_top_cluster`: the most active group of units, set apart
      by a gap wider than ``epsilon``, without the median unit) is in the
      ensemble however dense it is, and ``nh_cut`` is the ``n_higher`` of the
      most active dense unit outside it: the walk goes on below the cluster.
      Without such a cluster it is ``"isolated"``.

    Parameters
    ----------
    X : array-like of shape (m, n)
        Activations of the m images of one class on the n units of a layer.
    epsilon : float, default=0.2
        Radius of the density window, > 0.
    rho_cut : float or None, default=None
        Density cut, > 0; None for the automatic cut.
    nh_cut : int or None, default=None
        Cut on the number of more active units, >= 0; None for the automatic
        cut.
    upper_bound : float or None, default=1.0
        Upper bound of the activations, for the density correction; None
        disables it.
    cut : {"isolated", "top_cluster"}, default="isolated"
        Rule of the automatic cuts (``METHOD2_CUTS``).

    Returns
    -------
    Method2Result
        With ``m == 0`` or ``n == 0`` the ensemble is empty, mean activities
        and densities are nan and automatic cuts are nan (rho) and 0 (n_higher).
    """
    epsilon = _check_epsilon(epsilon)
    upper_bound = _check_upper_bound(upper_bound)
    METHOD2_CUTS.lookup(cut)
    if rho_cut is not None and (
        isinstance(rho_cut, bool) or not isinstance(rho_cut, Real) or not rho_cut > 0
    ):
        raise ValueError(f"rho_cut must be a number > 0 or None; got {rho_cut!r}.")
    if nh_cut is not None and (
        isinstance(nh_cut, bool) or not isinstance(nh_cut, Integral) or nh_cut < 0
    ):
        raise ValueError(f"nh_cut must be an integer >= 0 or None; got {nh_cut!r}.")
    X = _as_activation_matrix(X)
    m, n = X.shape
    if m == 0 or n == 0:
        return Method2Result(
            units=np.empty(0, dtype=np.int64),
            mean_activity=np.full(n, np.nan),
            rho=np.full(n, np.nan),
            n_higher=np.zeros(n, dtype=np.int64),
            rho_cut=float("nan") if rho_cut is None else float(rho_cut),
            nh_cut=0 if nh_cut is None else int(nh_cut),
        )
    mean_activity = X.mean(axis=0, dtype=np.float64)
    rho, n_higher = method2_decision_diagram(mean_activity, epsilon, upper_bound)
    if rho_cut is None:
        rho_cut = math.sqrt(float(np.median(rho)) / (2 * epsilon))
    top = np.zeros(n, dtype=bool)
    if nh_cut is None:
        if cut == "top_cluster":
            top[method2_top_cluster(mean_activity, epsilon)] = True
        dense = (rho >= rho_cut) & ~top
        # n_higher decreases with activity, so the most active dense unit has the smallest.
        nh_cut = int(n_higher[dense].min()) if dense.any() else n
    units = np.flatnonzero(top | ((rho < rho_cut) & (n_higher < nh_cut))).astype(np.int64)
    return Method2Result(
        units=units,
        mean_activity=mean_activity,
        rho=rho,
        n_higher=n_higher,
        rho_cut=float(rho_cut),
        nh_cut=int(nh_cut),
        top_cluster=np.flatnonzero(top).astype(np.int64),
    )


def class_ensembles(
    representations: Any,
    labels: Any,
    method: str = "method1",
    classes: Iterable[int] | None = None,
    **params: Any,
) -> dict[int, np.ndarray]:
    """Ensemble of each class in one layer.

    Parameters
    ----------
    representations : array-like of shape (N, n)
        Activations of N images on the n units of a layer.
    labels : array-like of shape (N,)
        Class of each image.
    method : {"method1", "method2"}, default="method1"
        :func:`method1_ensemble` or :func:`method2_ensemble`.
    classes : iterable of int or None, default=None
        Classes to analyse, in this order; None for the sorted unique labels.
        A class with no image gets an empty ensemble.
    **params
        Passed to the method: ``quantile``, ``threshold``, ``bins`` (method1); ``epsilon``,
        ``rho_cut``, ``nh_cut``, ``upper_bound``, ``cut`` (method2).

    Returns
    -------
    dict of int to ndarray of shape (k_c,), int64
        Class to sorted unit indices, in class order.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}; got {method!r}.")
    unknown = sorted(set(params) - set(_METHOD_PARAMS[method]))
    if unknown:
        raise ValueError(
            f"params {unknown} are not parameters of {method}; allowed: "
            f"{', '.join(_METHOD_PARAMS[method])}."
        )
    representations, labels = _check_representations(representations, labels)
    ensemble_of = method1_ensemble if method == "method1" else method2_ensemble
    return {
        c: ensemble_of(representations[labels == c], **params).units
        for c in _resolve_classes(labels, classes)
    }


def ensemble_sizes(
    ensembles: dict[int, np.ndarray], classes: Iterable[int] | None = None
) -> np.ndarray:
    """Number of units in each ensemble.

    Parameters
    ----------
    ensembles : dict of int to array-like of unit indices
    classes : iterable of int or None, default=None
        Order of the classes; None for the order of the dict.

    Returns
    -------
    ndarray of shape (C,), int64
    """
    order = list(ensembles) if classes is None else [int(c) for c in classes]
    missing = [c for c in order if c not in ensembles]
    if missing:
        raise ValueError(f"classes {missing} have no entry in ensembles.")
    return np.array([np.unique(np.asarray(ensembles[c])).size for c in order], dtype=np.int64)


def shared_units_matrix(ensembles: dict[int, np.ndarray], classes: Iterable[int]) -> np.ndarray:
    """Number of units shared by the ensembles of each pair of classes.

    Parameters
    ----------
    ensembles : dict of int to array-like of unit indices
    classes : iterable of int
        The C classes, in the order of the rows and columns.

    Returns
    -------
    ndarray of shape (C, C), int64
        Element [i, j] is ``|E_ci ∩ E_cj|``; the diagonal holds the sizes.
    """
    classes = [int(c) for c in classes]
    missing = [c for c in classes if c not in ensembles]
    if missing:
        raise ValueError(f"classes {missing} have no entry in ensembles.")
    members = [np.unique(np.asarray(ensembles[c], dtype=np.int64)) for c in classes]
    if any(units.size and units[0] < 0 for units in members):
        raise ValueError("ensembles must hold non-negative unit indices.")
    n_units = 1 + max((int(units[-1]) for units in members if units.size), default=-1)
    membership = np.zeros((len(classes), n_units), dtype=np.int64)
    for row, units in enumerate(members):
        membership[row, units] = 1
    return membership @ membership.T


def mean_shared_units(matrix: Any) -> float:
    """Mean number of units shared by a pair of distinct classes.

    Parameters
    ----------
    matrix : array-like of shape (C, C)
        A :func:`shared_units_matrix` (symmetric), C >= 2.

    Returns
    -------
    float
        Mean of the C(C-1)/2 entries above the diagonal.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 2:
        raise ValueError(f"matrix must be a square (C, C) array with C >= 2; got shape {matrix.shape}.")
    return float(matrix[np.triu_indices(matrix.shape[0], k=1)].mean())


def unseen_class_activity(
    representations: Any, labels: Any, unseen_class: int, ensembles: dict[int, np.ndarray]
) -> UnseenClassActivity:
    """Activation of the ensemble of a class unseen in training (paper, 4.4).

    The paper reports 0.34 for the unseen class against 0.43 for the seen
    ones.

    Parameters
    ----------
    representations : array-like of shape (N, n)
        Activations of N images on the n units of a layer; all test images,
        those of the unseen class included.
    labels : array-like of shape (N,)
        Class of each image.
    unseen_class : int
        The class left out of training; must be a key of ``ensembles``.
    ensembles : dict of int to array-like of unit indices
        Ensemble of each class; the other keys are the seen classes.

    Returns
    -------
    UnseenClassActivity
        ``seen_mean_activity`` pools all (image, unit) pairs of the seen
        classes (image of class c, unit of E_c), so each pair weighs the
        same and classes with more images or larger ensembles weigh more.
    """
    representations, labels = _check_representations(representations, labels)
    unseen_class = int(unseen_class)
    if unseen_class not in ensembles:
        raise ValueError(f"unseen_class {unseen_class} has no entry in ensembles.")
    n_units = representations.shape[1]

    def units_of(c: int) -> np.ndarray:
        units = np.unique(np.asarray(ensembles[c], dtype=np.int64))
        if units.size and (units[0] < 0 or units[-1] >= n_units):
            raise ValueError(
                f"ensembles[{c}] holds unit indices outside [0, {n_units}) of representations."
            )
        return units

    unseen_units = units_of(unseen_class)
    unseen_values = representations[labels == unseen_class][:, unseen_units]
    unseen_mean = float(unseen_values.mean()) if unseen_values.size else float("nan")

    seen_classes = tuple(int(c) for c in ensembles if int(c) != unseen_class)
    total, count = 0.0, 0
    for c in seen_classes:
        values = representations[labels == c][:, units_of(c)]
        total += float(values.sum(dtype=np.float64))
        count += values.size
    seen_mean = total / count if count else float("nan")
    return UnseenClassActivity(
        unseen_units=unseen_units,
        unseen_mean_activity=unseen_mean,
        seen_mean_activity=seen_mean,
        seen_classes=seen_classes,
    )


def _check_patterns(X: ArrayLike) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim not in (1, 2):
        raise ValueError(f"X must be a 1-D or 2-D array; got shape {X.shape}.")
    n = X.shape[-1]
    if n < 2:
        raise ValueError(f"X must have at least 2 units (last axis); got {n}.")
    if not np.all(np.isfinite(X)):
        raise ValueError("X must contain only finite values (no nan or inf).")
    if np.any(X < 0):
        raise ValueError("X must be non-negative (activations such as sigmoid outputs).")
    return X


def sparseness_index(X: Any) -> np.ndarray | float:
    """Population sparseness (Treves-Rolls, as normalised by Vinje & Gallant).

    ``S = (1 - mean(r)**2 / mean(r**2)) / (1 - 1/n)`` for each row r: 0 for a
    uniform vector, 1 for a one-hot vector. An all-zero row gives nan: no
    unit is active, so the pattern has no sparseness to speak of.

    Parameters
    ----------
    X : array-like of shape (k, n) or (n,)
        Non-negative activations, one pattern per row; n >= 2.

    Returns
    -------
    ndarray of shape (k,), or float for a 1-D input
    """
    X = _check_patterns(X)
    n = X.shape[-1]
    mean = X.mean(axis=-1)
    mean_square = np.mean(X * X, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sparseness = (1.0 - mean * mean / mean_square) / (1.0 - 1.0 / n)
    sparseness = np.where(mean_square > 0, sparseness, np.nan)
    return float(sparseness) if X.ndim == 1 else sparseness


def hoyer_sparseness(X: Any) -> np.ndarray | float:
    """Hoyer's sparseness, the measure of the authors' code.

    ``S = (sqrt(n) - ||r||_1 / ||r||_2) / (sqrt(n) - 1)`` for each row r: 0
    for a uniform vector, 1 for a one-hot vector. An all-zero row gives nan.

    Parameters
    ----------
    X : array-like of shape (k, n) or (n,)
        Non-negative activations, one pattern per row; n >= 2.

    Returns
    -------
    ndarray of shape (k,), or float for a 1-D input
    """
    X = _check_patterns(X)
    n = X.shape[-1]
    l1 = np.abs(X).sum(axis=-1)
    l2 = np.sqrt(np.sum(X * X, axis=-1))
    root = math.sqrt(n)
    with np.errstate(invalid="ignore", divide="ignore"):
        sparseness = (root - l1 / l2) / (root - 1.0)
    sparseness = np.where(l2 > 0, sparseness, np.nan)
    return float(sparseness) if X.ndim == 1 else sparseness


@dataclass(frozen=True)
class SparsenessMeasure:
    """A sparseness measure of a set of activation patterns (the images of a class).

    Attributes
    ----------
    of_pattern : callable
        Sparseness of each row of a (k, n) array: :func:`sparseness_index` or
        :func:`hoyer_sparseness`.
    over : {"images", "class_mean"}
        ``"images"``: the mean over the images of each image's sparseness;
        ``"class_mean"``: the sparseness of the images' mean pattern.
    description : str
    """

    of_pattern: Callable[[Any], np.ndarray | float]
    over: Literal["images", "class_mean"]
    description: str


# The sparseness measures, by the names of the run records' fields (sparseness_<name>) and of
# the tables. "hoyer" is the authors' convention (their analysis code: Hoyer's measure of each
# image's activity vector, then the nanmean over images); "treves_rolls" is population
# sparseness as it is defined, one stimulus (image) at a time. The class-mean versions blur
# the images of a class into one pattern first: one-hot images on different units are 1 each
# but their mean is not (a class whose images are one-hot on 4 of 20 units, 6:1:1:1, gives
# Hoyer 0.873).
SPARSENESS_MEASURES: Registry[SparsenessMeasure] = Registry("measure", {
    "treves_rolls": SparsenessMeasure(
        sparseness_index, "images", "Treves-Rolls population sparseness of each image's activity vector, "
        "averaged over the images"),
    "hoyer": SparsenessMeasure(
        hoyer_sparseness, "images", "Hoyer's sparseness of each image's activity vector, averaged over the "
        "images (the authors' code)"),
    "treves_rolls_of_class_mean": SparsenessMeasure(
        sparseness_index, "class_mean", "Treves-Rolls sparseness of the class's mean activity vector"),
    "hoyer_of_class_mean": SparsenessMeasure(
        hoyer_sparseness, "class_mean", "Hoyer's sparseness of the class's mean activity vector"),
})


def mean_sparseness(X: Any, measure: str = "hoyer") -> float:
    """Sparseness of a set of activation patterns by one of ``SPARSENESS_MEASURES``.

    For a measure over ``"images"`` (``"treves_rolls"``, ``"hoyer"``): the
    mean over the rows of each row's sparseness, all-zero rows (nan: no
    active unit) left out, as the authors' ``nanmean``. For a
    ``"class_mean"`` measure: the sparseness of the mean row.

    Parameters
    ----------
    X : array-like of shape (m, n)
        Non-negative activations of m images on n >= 2 units.
    measure : str, default="hoyer"
        A key of ``SPARSENESS_MEASURES``.

    Returns
    -------
    float
        nan when X has no row, or no row (or a mean) with an active unit.
    """
    of = SPARSENESS_MEASURES.lookup(measure)
    X = _check_patterns(X)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D array (images, units); got shape {X.shape}.")
    if X.shape[0] == 0:
        return float("nan")
    if of.over == "class_mean":
        return float(of.of_pattern(X.mean(axis=0)))
    per_image = np.asarray(of.of_pattern(X), dtype=np.float64)
    finite = per_image[np.isfinite(per_image)]
    return float(finite.mean()) if finite.size else float("nan")


def class_sparseness(
    representations: Any,
    labels: Any,
    classes: Iterable[int] | None = None,
    measure: str = "treves_rolls",
) -> dict[int, float]:
    """Sparseness of each class's images (:func:`mean_sparseness`).

    Parameters
    ----------
    representations : array-like of shape (N, n)
        Non-negative activations of N images on the n units of a layer.
    labels : array-like of shape (N,)
        Class of each image.
    classes : iterable of int or None, default=None
        Classes, in this order; None for the sorted unique labels. A class
        with no image gets nan.
    measure : str, default="treves_rolls"
        A key of ``SPARSENESS_MEASURES``: ``"treves_rolls"`` and ``"hoyer"``
        average each image's sparseness over the class's images;
        ``"treves_rolls_of_class_mean"`` and ``"hoyer_of_class_mean"`` take
        the sparseness of the class's mean activation vector.

    Returns
    -------
    dict of int to float
        Class to its sparseness.
    """
    SPARSENESS_MEASURES.lookup(measure)
    representations, labels = _check_representations(representations, labels)
    return {
        c: mean_sparseness(representations[labels == c], measure) for c in _resolve_classes(labels, classes)
    }
