"""Benchmarks of fflab's training engine (``make bench``) and service (``make load-bench``,
``poll_cost``, ``client_cost``); not part of the package."""

from __future__ import annotations

import statistics


def print_spread(per_round: dict[str, list[float]], label: str, digits: int = 2) -> None:
    """One line per variant: the least of its values over the rounds (the estimator:
    noise only adds time), the median and maximum for the spread, and the least as a
    fraction of the first variant's least."""
    width = max(len(label), *(len(name) for name in per_round))
    baseline = min(next(iter(per_round.values())))
    print(f"{label:<{width}} {'min':>7} {'median':>7} {'max':>7} {'min / first':>12}")
    for name, values in per_round.items():
        print(f"{name:<{width}} {min(values):>7.{digits}f} {statistics.median(values):>7.{digits}f} "
              f"{max(values):>7.{digits}f} {min(values) / baseline:>12.2f}")
