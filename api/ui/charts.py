"""Loss curves as inline SVG: the points of one polyline per layer, computed
here so that templates only draw them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class LossChart:
    width: int
    height: int
    lines: list[str]  # SVG polyline ``points``, one per layer (FF) or one (end to end)
    low: float
    high: float
    epochs: int


def loss_chart(histories: Sequence[Sequence[float]], width: int = 240, height: int = 60,
               pad: float = 2.0) -> LossChart | None:
    """The loss curves of a run (``RunMetrics.loss_history``: per layer for FF, one
    list otherwise) on shared axes: epoch ``i`` of ``E`` at x = pad + i (width -
    2 pad) / (E - 1), loss ``v`` at y = pad + (high - v) (height - 2 pad) / (high -
    low), where low and high are the least and largest finite loss. Non-finite
    losses are left out; a single loss is drawn as a level line across. None when
    there is no finite loss.

    >>> loss_chart([[1.0, 0.0]], width=10, height=10, pad=0).lines
    ['0,0 10,10']
    """
    finite = [v for history in histories for v in history if math.isfinite(v)]
    if not finite:
        return None
    low, high = min(finite), max(finite)
    span = high - low or 1.0
    epochs = max(len(history) for history in histories)
    step = (width - 2 * pad) / max(epochs - 1, 1)
    lines = []
    for history in histories:
        points = [(pad + i * step, pad + (high - v) * (height - 2 * pad) / span)
                  for i, v in enumerate(history) if math.isfinite(v)]
        if len(points) == 1:  # one epoch: a level line across, so that it shows
            points.append((width - pad, points[0][1]))
        lines.append(" ".join(f"{x:.4g},{y:.4g}" for x, y in points))
    return LossChart(width, height, lines, low, high, epochs)
