"""Experiments and runs set against each other: the statistics of ``fflab diff``
and ``GET /v1/comparisons`` (pure functions over plain values).

- ``flatten``: a nested spec as dotted keys (``network.threshold``);
- ``spec_differences``: every dotted key of several specs, with each spec's value
  and whether they differ;
- ``compare_samples``: two samples of per-run values (one per seed) as mean ± SE
  each and their difference with its combined standard error, Welch's t with the
  Welch-Satterthwaite degrees of freedom (``fflab.analysis.welch_satterthwaite_df``)
  and its two-sided p. A side with one run has no error bar: the difference is
  given, no test and no verdict. Where nothing differs (normal runs, equal
  variances), Welch's t says "differs" in 2.3% of draws with 2 runs a side, 3.5%
  with 3 and 4.4% with 5 (conservative), but in 11% with 2 runs against 15
  (tests/test_experiment_comparison.py measures it): a lone "differs" between
  sides of very unequal size deserves a second look;
- ``jaccard`` and ``ensemble_overlaps``: how far two runs' Method 1 ensembles of
  the same class and layer coincide. The Jaccard index of two empty ensembles is
  defined as 1 (the two runs agree that the class has no ensemble there); of one
  empty and one non-empty ensemble it is 0.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scipy import stats

from fflab.analysis.aggregate import mean_and_standard_error
from fflab.analysis.paper_comparison import CONFIDENCE, welch_satterthwaite_df

__all__ = [
    "DIFFERENCE_VERDICTS",
    "Difference",
    "Estimate",
    "Overlap",
    "SpecField",
    "compare_samples",
    "ensemble_overlaps",
    "estimate",
    "flatten",
    "jaccard",
    "spec_differences",
]

# Every verdict a compared cell can carry, with what it means.
DIFFERENCE_VERDICTS = {
    "consistent": "Welch's t finds no difference at the 5% level (p >= 0.05)",
    "differs": "Welch's t finds a difference at the 5% level (p < 0.05)",
    "no error bar": "a side has a single run (or no spread at all): the difference is given, no test",
    "not comparable": "a side has no value for this cell",
}
# The value a spec lacks a key with (spec_differences): not None, which is a value.
MISSING = "(absent)"


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as ``{"dotted.key": leaf}``; lists are leaves.

    ``{"network": {"threshold": 0.3}, "seeds": [0, 1]}`` ->
    ``{"network.threshold": 0.3, "seeds": [0, 1]}``. An empty mapping is a leaf
    (``{}``) so that it is not lost.
    """
    if isinstance(value, Mapping) and value:
        flat: dict[str, Any] = {}
        for key, inner in value.items():
            flat.update(flatten(inner, f"{prefix}{key}."))
        return flat
    if not prefix:
        raise ValueError(f"flatten expects a non-empty mapping; got {value!r}.")
    return {prefix[:-1]: value}


@dataclass(frozen=True)
class SpecField:
    """One dotted key of the compared specs.

    Attributes
    ----------
    field : str
    values : list
        Each spec's value, in the order given (``MISSING`` where a spec lacks it).
    differs : bool
        Whether the values are not all equal.
    """

    field: str
    values: list[Any]
    differs: bool


def spec_differences(specs: Sequence[Mapping[str, Any]]) -> list[SpecField]:
    """Every dotted key of ``specs`` (the first spec's keys in order, then keys
    only later specs have), each with every spec's value and whether they differ.

    Parameters
    ----------
    specs : sequence of mappings, at least 2
        The specs (e.g. ``ExperimentSpec.model_dump(mode="json")``).

    Returns
    -------
    list of SpecField
    """
    if len(specs) < 2:
        raise ValueError(f"spec_differences needs at least 2 specs; got {len(specs)}.")
    flats = [flatten(spec) for spec in specs]
    keys = list(dict.fromkeys(key for flat in flats for key in flat))
    fields = []
    for key in keys:
        values = [flat.get(key, MISSING) for flat in flats]
        fields.append(SpecField(key, values, any(v != values[0] for v in values[1:])))
    return fields


@dataclass(frozen=True)
class Estimate:
    """Mean ± standard error of one side's per-run values.

    Attributes
    ----------
    mean : float or None
        None without any value.
    se : float or None
        ``std(ddof=1) / sqrt(n)``; None with fewer than 2 values.
    n : int
        Runs with a value.
    """

    mean: float | None
    se: float | None
    n: int


def estimate(values: Iterable[float | None]) -> Estimate:
    """The mean ± SE of the finite values (None and nan are left out, never 0)."""
    present = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not present:
        return Estimate(None, None, 0)
    mean, se = mean_and_standard_error(present)
    return Estimate(float(mean), None if math.isnan(se) else float(se), len(present))


@dataclass(frozen=True)
class Difference:
    """Side B against side A for one cell.

    Attributes
    ----------
    a, b : Estimate
    verdict : str
        A key of ``DIFFERENCE_VERDICTS``.
    difference : float or None
        ``b.mean - a.mean``.
    combined_se : float or None
        ``sqrt(a.se^2 + b.se^2)`` (both sides need 2 runs or more).
    df : float or None
        Welch-Satterthwaite degrees of freedom of ``combined_se``.
    t, p : float or None
        ``difference / combined_se`` and its two-sided p under Student's t with ``df``.
    ci : tuple of float or None
        The difference's ``CONFIDENCE`` interval.
    note : str
    """

    a: Estimate
    b: Estimate
    verdict: str
    difference: float | None = None
    combined_se: float | None = None
    df: float | None = None
    t: float | None = None
    p: float | None = None
    ci: tuple[float, float] | None = None
    note: str = ""


def compare_samples(a: Iterable[float | None], b: Iterable[float | None],
                    confidence: float = CONFIDENCE) -> Difference:
    """Side B's per-run values against side A's: Welch's t of ``mean(b) - mean(a)``.

    The combined standard error is ``sqrt(se_a^2 + se_b^2)``; its degrees of freedom
    follow Welch-Satterthwaite over the components ``se_a^2`` (``n_a - 1``) and
    ``se_b^2`` (``n_b - 1``); p is two-sided. Equals ``scipy.stats.ttest_ind(a, b,
    equal_var=False)`` (tests/test_experiment_comparison.py checks it).

    Parameters
    ----------
    a, b : iterables of float (None or nan: missing, left out)
        One value per run (seed).
    confidence : float in (0, 1), default=0.95
        "differs" when ``p < 1 - confidence``; the interval's level.

    Returns
    -------
    Difference
        ``not comparable`` where a side has no value; ``no error bar`` (the
        difference only) where a side has one value, or both sides have no spread.
    """
    if not (isinstance(confidence, float) and 0 < confidence < 1):
        raise ValueError(f"confidence must be a float in (0, 1); got {confidence!r}.")
    first, second = estimate(a), estimate(b)
    if first.n == 0 or second.n == 0:
        side = "A" if first.n == 0 else "B"
        return Difference(first, second, "not comparable", note=f"side {side} has no value for this cell")
    assert first.mean is not None and second.mean is not None  # both sides have values (n > 0)
    difference = second.mean - first.mean
    if first.se is None or second.se is None:
        ones = " and ".join(name for name, side in (("A", first), ("B", second)) if side.se is None)
        return Difference(first, second, "no error bar", difference,
                          note=f"one run on side {ones}: no standard error, no test")
    variances = [first.se ** 2, second.se ** 2]
    combined = math.sqrt(sum(variances))
    if combined == 0:
        return Difference(first, second, "no error bar", difference, 0.0,
                          note="every run of both sides has the same value: no spread, no test")
    df = welch_satterthwaite_df(variances, [float(first.n - 1), float(second.n - 1)])
    t = difference / combined
    p = float(min(1.0, 2 * stats.t.sf(abs(t), df)))
    quantile = float(stats.t.ppf(0.5 + confidence / 2, df))
    ci = (difference - quantile * combined, difference + quantile * combined)
    verdict = "differs" if p < 1 - confidence else "consistent"
    return Difference(first, second, verdict, difference, combined, df, t, p, ci)


def jaccard(a: Collection[int], b: Collection[int]) -> float:
    """``|a ∩ b| / |a ∪ b|`` of two sets of unit indices; 1.0 for two empty sets
    (they agree: no ensemble), 0.0 for one empty and one non-empty set.

    ``jaccard({1, 2, 3}, {2, 3, 4}) == 0.5``.
    """
    first, second = set(a), set(b)
    union = first | second
    return 1.0 if not union else len(first & second) / len(union)


@dataclass(frozen=True)
class Overlap:
    """Two runs' ensembles of one class in one layer.

    Attributes
    ----------
    layer : int
        From 1.
    class_index : int
    size_a, size_b : int
    shared : int
        ``|a ∩ b|``.
    jaccard : float
        ``jaccard(a, b)``.
    """

    layer: int
    class_index: int
    size_a: int
    size_b: int
    shared: int
    jaccard: float


def ensemble_overlaps(a: Mapping[tuple[int, int], Collection[int]],
                      b: Mapping[tuple[int, int], Collection[int]]) -> list[Overlap]:
    """The overlap of two runs' ensembles for every (layer, class) both have.

    Parameters
    ----------
    a, b : mappings (layer, class_index) -> unit indices
        Each run's ensembles (e.g. Method 1 at one quantile), only the (layer,
        class) pairs that were analysed (a class without analysed images has no
        entry, not an empty one).

    Returns
    -------
    list of Overlap
        Sorted by layer, then class.
    """
    overlaps = []
    for key in sorted(set(a) & set(b)):
        first, second = set(a[key]), set(b[key])
        overlaps.append(Overlap(int(key[0]), int(key[1]), len(first), len(second), len(first & second),
                                jaccard(first, second)))
    return overlaps
