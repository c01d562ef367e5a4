"""How much Method 1's ensemble sizes depend on how its threshold is read.

    python -m benchmarks.method1_readings results/NAME/runs/RUN_ID [...]

For each run folder (its stored test-set representations, the correctly
classified images as the paper analyses them) and each layer, prints the mean
Method 1 ensemble size over the classes for: quantiles from 0.8 to 0.995; numpy's
quantile estimators at the table's 0.95; one threshold pooled over every class;
the 10-bin histogram reading (``analysis.method1_threshold = histogram``); and, per
class, the range of quantiles over which its 0.95 ensemble stays the same.
docs/reproduction.md records what it printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from fflab.analysis.ensembles import method1_threshold, method1_units
from fflab.pipeline.folders import analysed_rows, layer_count, load_representations

QUANTILES = (0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.99, 0.995)
ESTIMATORS = ("linear", "lower", "higher", "nearest", "midpoint", "hazen", "weibull", "median_unbiased")
TABLE_QUANTILE = 0.95


def stable_quantiles(X: np.ndarray, quantile: float = TABLE_QUANTILE) -> tuple[float, float]:
    """The quantile levels between which one class's Method 1 ensemble at ``quantile``
    stays the same: the share of X's values below the highest median left out, and
    below the lowest median kept."""
    medians = np.median(X, axis=0)
    kept = medians >= np.quantile(X, quantile)
    values = np.sort(X, axis=None)
    low = np.searchsorted(values, medians[~kept].max()) / values.size if (~kept).any() else 0.0
    high = np.searchsorted(values, medians[kept].min()) / values.size if kept.any() else 1.0
    return float(low), float(high)


def readings(X: np.ndarray, labels: np.ndarray) -> dict[str, object]:
    """Mean ensemble size over the classes under each reading; X (N, n), labels (N,)."""
    per_class = [X[labels == c] for c in np.unique(labels)]
    medians = [np.median(Xc, axis=0) for Xc in per_class]
    floors = [float(Xc.min()) for Xc in per_class]

    def mean_size(cut_of) -> float:
        return float(np.mean([method1_units(m, cut_of(Xc), floor).size
                              for Xc, m, floor in zip(per_class, medians, floors)]))

    pooled = float(np.quantile(X, TABLE_QUANTILE))
    stable = [stable_quantiles(Xc) for Xc in per_class]
    return {
        **{f"quantile {q:g}": mean_size(lambda Xc, q=q: float(np.quantile(Xc, q))) for q in QUANTILES},
        **{f"estimator {m}": mean_size(lambda Xc, m=m: float(np.quantile(Xc, TABLE_QUANTILE, method=m)))
           for m in ESTIMATORS},
        "pooled over classes": mean_size(lambda Xc: pooled),
        "histogram, 10 bins": mean_size(lambda Xc: method1_threshold(Xc, TABLE_QUANTILE, "histogram", 10)),
        "every class's ensemble holds for quantiles in": [max(low for low, _ in stable),
                                                          min(high for _, high in stable)],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run folders (results/NAME/runs/RUN_ID)")
    args = parser.parse_args(argv)
    for run_dir in args.run_dirs:
        stored = load_representations(run_dir)
        keep = analysed_rows(stored, None, correct_only=True)
        labels = stored["labels"][keep]
        for layer in range(1, layer_count(stored) + 1):
            X = stored[f"layer{layer}"][keep].astype(np.float64)
            print(json.dumps({"run": str(run_dir), "layer": layer, **readings(X, labels)}))


if __name__ == "__main__":
    main()
