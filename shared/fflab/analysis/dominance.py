"""Dominant units: how often each unit is a layer's most active unit on an image.

Shapes: ``N`` images, ``n`` units."""

from __future__ import annotations

import numpy as np


def winner_counts(X: np.ndarray) -> np.ndarray:
    """How many images each unit wins. X: (N, n) -> (n,) ints summing to N
    (ties go to the lowest unit index)."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (images, units); got shape {X.shape}")
    return np.bincount(X.argmax(axis=1), minlength=X.shape[1]) if X.shape[0] else np.zeros(X.shape[1], int)
