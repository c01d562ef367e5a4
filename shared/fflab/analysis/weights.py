"""Signs of the weights of a layer (paper, section 4.5 and Appendix A.2).

Figure 7's numbers: in layer 2, 775 of FF's 784 units have only negative
incoming weights (BP: about 100), and about 3/8 of BP/FF's units have a
fraction of negative incoming weights "very close to 75%", read here as within
``NEGATIVE_SHARE_TOLERANCE`` (0.05) of ``NEGATIVE_SHARE`` (0.75).
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import numpy as np

__all__ = [
    "NEGATIVE_SHARE",
    "NEGATIVE_SHARE_TOLERANCE",
    "fraction_positive_weights",
    "fraction_negative_incoming",
    "all_negative_incoming",
    "negative_share_near",
    "fraction_units_negative_share_near",
]

NEGATIVE_SHARE = 0.75  # Figure 7: BP/FF's peak
NEGATIVE_SHARE_TOLERANCE = 0.05  # "very close to": the half-width of the window around it
# A fraction k / n that lies on the window's edge (0.8 = 0.75 + 0.05) counts as inside;
# in floating point 0.8 - 0.75 exceeds 0.05 by 4e-17.
_EDGE = 1e-9


def _as_weight_matrix(weight: Any) -> np.ndarray:
    matrix = np.asarray(weight)
    if matrix.ndim != 2 or matrix.size == 0:
        raise ValueError(
            f"weight must be a non-empty 2-D array (out_units, in_units); got shape {matrix.shape}."
        )
    if not np.all(np.isfinite(matrix)):
        raise ValueError("weight must contain only finite values (no nan or inf).")
    return matrix


def fraction_positive_weights(weight: Any) -> float:
    """Fraction of the weights of a layer that are > 0 (Table 3).

    Parameters
    ----------
    weight : array-like of shape (out_units, in_units)
        Weight matrix, as ``torch.nn.Linear.weight``.

    Returns
    -------
    float
    """
    weight = _as_weight_matrix(weight)
    return float(np.count_nonzero(weight > 0) / weight.size)


def fraction_negative_incoming(weight: Any) -> np.ndarray:
    """Fraction of the incoming weights of each unit that are < 0 (Figure 7).

    Parameters
    ----------
    weight : array-like of shape (out_units, in_units)
        Weight matrix, as ``torch.nn.Linear.weight``: row i holds the
        incoming weights of unit i.

    Returns
    -------
    ndarray of shape (out_units,), float64
    """
    matrix = _as_weight_matrix(weight)
    return np.asarray(np.mean(matrix < 0, axis=1, dtype=np.float64))


def all_negative_incoming(weight: Any) -> np.ndarray:
    """Units whose incoming weights are all < 0 (Figure 7: FF, 775 of 784 in layer 2).

    Parameters
    ----------
    weight : array-like of shape (out_units, in_units)
        Weight matrix, as ``torch.nn.Linear.weight``: row i holds the
        incoming weights of unit i. A weight of exactly 0 is not negative.

    Returns
    -------
    ndarray of shape (k,), int64
        Sorted indices of those units; the count is its size.
    """
    weight = _as_weight_matrix(weight)
    return np.flatnonzero(np.all(weight < 0, axis=1)).astype(np.int64)


def negative_share_near(
    weight: Any, share: float = NEGATIVE_SHARE, tolerance: float = NEGATIVE_SHARE_TOLERANCE
) -> np.ndarray:
    """Units whose fraction of negative incoming weights is within ``tolerance``
    of ``share``, edges included (Figure 7: BP/FF, about 3/8 of the units near 0.75).

    Parameters
    ----------
    weight : array-like of shape (out_units, in_units)
        Weight matrix, as ``torch.nn.Linear.weight``.
    share : float, default=0.75
        Centre of the window, in [0, 1].
    tolerance : float, default=0.05
        Half-width of the window, >= 0.

    Returns
    -------
    ndarray of shape (k,), int64
        Sorted indices of those units.
    """
    if isinstance(share, bool) or not isinstance(share, Real) or not 0 <= share <= 1:
        raise ValueError(f"share must be a number in [0, 1]; got {share!r}.")
    if isinstance(tolerance, bool) or not isinstance(tolerance, Real) or not (
        math.isfinite(tolerance) and tolerance >= 0
    ):
        raise ValueError(f"tolerance must be a finite number >= 0; got {tolerance!r}.")
    fractions = fraction_negative_incoming(weight)
    return np.flatnonzero(np.abs(fractions - share) <= tolerance + _EDGE).astype(np.int64)


def fraction_units_negative_share_near(
    weight: Any, share: float = NEGATIVE_SHARE, tolerance: float = NEGATIVE_SHARE_TOLERANCE
) -> float:
    """Fraction of the units of :func:`negative_share_near` among all ``out_units``.

    Parameters
    ----------
    weight : array-like of shape (out_units, in_units)
    share : float, default=0.75
    tolerance : float, default=0.05

    Returns
    -------
    float
    """
    weight = _as_weight_matrix(weight)
    return float(negative_share_near(weight, share, tolerance).size / weight.shape[0])
