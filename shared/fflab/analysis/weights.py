"""Signs of the weights of a layer (paper, section 4.5 and Appendix A.2)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["fraction_positive_weights", "fraction_negative_incoming"]


def _as_weight_matrix(weight: Any) -> np.ndarray:
    weight = np.asarray(weight)
    if weight.ndim != 2 or weight.size == 0:
        raise ValueError(
            f"weight must be a non-empty 2-D array (out_units, in_units); got shape {weight.shape}."
        )
    if not np.all(np.isfinite(weight)):
        raise ValueError("weight must contain only finite values (no nan or inf).")
    return weight


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
    weight = _as_weight_matrix(weight)
    return np.mean(weight < 0, axis=1, dtype=np.float64)
