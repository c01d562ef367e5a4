"""A published estimate against this experiment's, cell by cell.

Pure functions: the published values and this experiment's run records come
in as arguments (``fflab.paper`` reads them from files).

The question a cell asks is whether this experiment's runs could be draws
from the paper's run distribution. The test is Student's t of the difference of
the two means, with the run-to-run variance pooled over the paper's runs (its
SD is its SE times sqrt(n)) and ours: exact under that hypothesis at any number
of runs, one included. Welch's t with the Welch-Satterthwaite degrees of
freedom is not: with our SD from 2 runs its false-"differs" rate is about 11%
(7% with 3), because the degrees of freedom are computed from the same noisy SD
(tests/analysis: the simulation). The z score of earlier versions, normal
quantile and our SE from 2-3 runs, called "differs" in 12-19% of such draws. The
paper's rounding enters as a component with infinite degrees of freedom, and the
effective degrees of freedom of the sum follow Welch-Satterthwaite (GUM, JCGM
100:2008, G.4.1). A cell the paper prints without an error has no verdict: it is
described (the values, the relative gap, inside the printed rounding interval
or not), since nothing says how far the paper's own runs spread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import special, stats
from typing_extensions import TypeIs

__all__ = [
    "CONFIDENCE",
    "VERDICTS",
    "Verdict",
    "above_chance",
    "compare_estimates",
    "welch_satterthwaite_df",
]

# Two-sided level of the test and of the difference's confidence interval.
CONFIDENCE = 0.95
# Every verdict a cell can carry, with what it means.
VERDICTS = {
    "consistent": "the test finds no difference at the 5% level (p >= 0.05)",
    "differs": "the test finds a difference at the 5% level (p < 0.05)",
    "descriptive": "the paper prints no error for this number: values and gap only, no test",
    "did not learn": "every run behind this cell is at chance level: its ensembles and weights say nothing",
    "not comparable": "this experiment has no value for this cell (or no error on either side)",
}
# One-sided level of the test that a run's accuracy is above chance.
CHANCE_LEVEL_ALPHA = 0.001


@dataclass(frozen=True)
class Verdict:
    """The comparison of one cell.

    Attributes
    ----------
    verdict : str
        A key of ``VERDICTS``.
    difference : float or None
        ``ours - paper``.
    combined_se : float or None
        Standard uncertainty of the difference: the paper's SE, its rounding
        (``resolution / sqrt(12)``) and ours, in quadrature.
    df : float or None
        Welch-Satterthwaite effective degrees of freedom of ``combined_se``
        (``inf`` where every component is known exactly).
    t : float or None
        ``difference / combined_se``.
    p : float or None
        Two-sided p-value of ``t`` under Student's t with ``df``.
    ci : tuple of float or None
        The difference's ``CONFIDENCE`` interval, ``difference ± t_q * combined_se``.
    relative_gap : float or None
        ``difference / |paper|`` (None where the paper's value is 0).
    within_rounding : bool or None
        Whether ours lies inside the interval the paper's printed digits stand
        for (``paper ± resolution / 2``); None without a resolution.
    note : str
        How the error was formed, or why there is no test.
    """

    verdict: str
    difference: float | None = None
    combined_se: float | None = None
    df: float | None = None
    t: float | None = None
    p: float | None = None
    ci: tuple[float, float] | None = None
    relative_gap: float | None = None
    within_rounding: bool | None = None
    note: str = ""


def _finite(value: float | None) -> TypeIs[float]:
    return value is not None and math.isfinite(value)


def welch_satterthwaite_df(variances: list[float], dofs: list[float]) -> float:
    """Effective degrees of freedom of a sum of variances (Welch-Satterthwaite).

    ``(sum u_i^2)^2 / sum(u_i^4 / nu_i)``; a component with ``nu_i = inf`` (a
    known variance, e.g. a rounding) adds nothing to the denominator.

    Parameters
    ----------
    variances : list of float, each >= 0
        The components ``u_i^2``.
    dofs : list of float, each > 0 (inf allowed)
        Their degrees of freedom ``nu_i``.

    Returns
    -------
    float
        ``inf`` where every component with a variance > 0 is known exactly.
    """
    if len(variances) != len(dofs):
        raise ValueError(f"variances and dofs must have the same length; got {len(variances)} and {len(dofs)}.")
    if any(not (math.isfinite(v) and v >= 0) for v in variances):
        raise ValueError(f"variances must be finite and >= 0; got {variances!r}.")
    if any(not (nu > 0) for nu in dofs):
        raise ValueError(f"dofs must be > 0; got {dofs!r}.")
    denominator = sum(v * v / nu for v, nu in zip(variances, dofs) if v > 0 and math.isfinite(nu))
    total = sum(variances)
    return math.inf if denominator == 0 else total * total / denominator


def _t_sf(t: float, df: float) -> float:
    """Upper tail of Student's t (the normal for ``df = inf``)."""
    return float(special.ndtr(-t)) if math.isinf(df) else float(special.stdtr(df, -t))


def _descriptive(paper_mean: float, ours_mean: float, resolution: float | None, note: str) -> Verdict:
    difference = float(ours_mean) - float(paper_mean)
    within = None if resolution is None else abs(difference) <= resolution / 2 * (1 + 1e-9)
    return Verdict(
        "descriptive", difference=difference,
        relative_gap=None if paper_mean == 0 else difference / abs(paper_mean),
        within_rounding=within, note=note,
    )


def compare_estimates(
    paper_mean: float,
    paper_se: float | None,
    paper_n: int | None,
    ours_mean: float | None,
    ours_se: float | None,
    ours_n: int,
    paper_resolution: float | None = None,
    confidence: float = CONFIDENCE,
) -> Verdict:
    """Compare a published mean ± SE with this experiment's mean ± SE.

    Student's t of ``ours - paper`` under the hypothesis that our runs are
    draws from the paper's run distribution. The components of its uncertainty:

    - the run-to-run variance pooled over the paper's runs (``se^2 * paper_n``,
      ``paper_n - 1`` degrees of freedom) and ours (``ours_se^2 * ours_n``,
      ``ours_n - 1``), times ``1 / paper_n + 1 / ours_n``. With one run (no SE)
      this is the paper's SD alone, ``sd^2 (1 + 1 / paper_n)`` with
      ``paper_n - 1`` degrees of freedom: a prediction interval. Where the paper
      states no run count, Welch's t with its SE taken as exact;
    - the paper's rounding: printed as 0.93, a mean stands for any value in
      [0.925, 0.935], a uniform error of standard uncertainty
      ``paper_resolution / sqrt(12)`` (GUM F.2.2.1), known exactly (infinite
      degrees of freedom; the sum's follow Welch-Satterthwaite).

    Where the paper prints no SE the cell is ``descriptive``: no test, since the
    spread of the paper's runs is unknown.

    Parameters
    ----------
    paper_mean : float
    paper_se : float or None
    paper_n : int or None
        Runs behind the published mean (None: not stated).
    ours_mean : float or None
        None or nan: this experiment has no value (not comparable).
    ours_se : float or None
        None or nan with one run.
    ours_n : int
        Runs behind ``ours_mean``.
    paper_resolution : float or None, default=None
        The unit of the published mean's last printed digit (> 0); None: no
        rounding term.
    confidence : float, default=0.95
        Two-sided level: "differs" when ``p < 1 - confidence``.

    Returns
    -------
    Verdict
    """
    if not _finite(paper_mean):
        raise ValueError(f"paper_mean must be a finite number; got {paper_mean!r}.")
    if not (isinstance(confidence, float) and 0 < confidence < 1):
        raise ValueError(f"confidence must be a float in (0, 1); got {confidence!r}.")
    if paper_resolution is not None and not (_finite(paper_resolution) and paper_resolution > 0):
        raise ValueError(f"paper_resolution must be a finite number > 0 or None; got {paper_resolution!r}.")
    if paper_n is not None and not (isinstance(paper_n, int) and paper_n >= 2):
        raise ValueError(f"paper_n must be an int >= 2 or None; got {paper_n!r}.")
    if not _finite(ours_mean) or ours_n < 1:
        return Verdict("not comparable", note="this experiment has no value for this cell")
    if not _finite(paper_se):
        return _descriptive(paper_mean, float(ours_mean), paper_resolution,
                            "the paper prints no error: no test, the values and their gap only")
    notes = []
    ours_sd_error = ours_se if _finite(ours_se) else math.nan
    ours_known = ours_n >= 2 and math.isfinite(ours_sd_error)
    if paper_n is not None:
        # Student's t with the variance pooled over the paper's runs and ours: the
        # hypothesis under test is that our runs are draws from the paper's run
        # distribution, whose SD the paper's SE gives (se * sqrt(n)).
        pooled_sum = float(paper_se) ** 2 * paper_n * (paper_n - 1)
        if ours_known:
            pooled_sum += ours_sd_error ** 2 * ours_n * (ours_n - 1)
        pooled_df = paper_n - 1 + (ours_n - 1 if ours_known else 0)
        runs = ours_n if ours_known else 1
        variances = [pooled_sum / pooled_df * (1 / paper_n + 1 / runs)]
        dofs = [float(pooled_df)]
        if not ours_known:
            notes.append(f"one run: set against the paper's run-to-run SD (SE x sqrt({paper_n})), "
                         f"{paper_n - 1} df")
    elif ours_known:
        variances, dofs = [float(paper_se) ** 2, ours_sd_error ** 2], [math.inf, float(ours_n - 1)]
        notes.append("the paper states no run count: Welch's t, its SE taken as exact")
    else:
        return Verdict("not comparable", note="one run, and the paper states no run count to turn its SE into "
                                              "a run-to-run SD")
    if paper_resolution is not None:
        rounding = paper_resolution / math.sqrt(12)
        if rounding > float(paper_se):
            notes.append(f"printed to {paper_resolution:g}: its rounding ({rounding:.2g}) exceeds its SE")
        variances.append(rounding ** 2)
        dofs.append(math.inf)
    difference = float(ours_mean) - float(paper_mean)
    combined = math.sqrt(sum(variances))
    relative = None if paper_mean == 0 else difference / abs(paper_mean)
    within = None if paper_resolution is None else abs(difference) <= paper_resolution / 2 * (1 + 1e-9)
    if combined == 0:
        return Verdict("consistent" if difference == 0 else "differs", difference, 0.0, None, None, None, None,
                       relative, within, "; ".join(notes + ["zero standard error"]))
    df = welch_satterthwaite_df(variances, dofs)
    t = difference / combined
    p = min(1.0, 2 * _t_sf(abs(t), df))
    quantile = float(special.ndtri(0.5 + confidence / 2)) if math.isinf(df) else \
        float(special.stdtrit(df, 0.5 + confidence / 2))
    ci = (difference - quantile * combined, difference + quantile * combined)
    verdict = "differs" if p < 1 - confidence else "consistent"
    return Verdict(verdict, difference, combined, df, t, p, ci, relative, within, "; ".join(notes))


def above_chance(accuracy: float, n_test: int, n_classes: int = 10, alpha: float = CHANCE_LEVEL_ALPHA) -> bool:
    """Whether a test accuracy is above chance (1 / ``n_classes``) beyond noise.

    A one-sided binomial test: ``accuracy * n_test`` correct answers out of
    ``n_test`` against a guess right with probability ``1 / n_classes``; above
    chance when ``p < alpha``. With 10000 test images and 10 classes the cut is
    at about 0.109. Pass the balanced accuracy (the mean of the per-class
    accuracies) where there is one: a network that answers one class for every
    image has exactly ``1 / n_classes`` of it, while its plain accuracy is that
    class's share of the test set (0.114 for MNIST's class 1).

    Parameters
    ----------
    accuracy : float in [0, 1]
        Balanced (or plain) test accuracy.
    n_test : int >= 1
    n_classes : int >= 2, default=10
    alpha : float in (0, 1), default=0.001

    Returns
    -------
    bool
    """
    if not (_finite(accuracy) and 0 <= accuracy <= 1):
        raise ValueError(f"accuracy must be a number in [0, 1]; got {accuracy!r}.")
    if not (isinstance(n_test, int) and n_test >= 1):
        raise ValueError(f"n_test must be an int >= 1; got {n_test!r}.")
    if not (isinstance(n_classes, int) and n_classes >= 2):
        raise ValueError(f"n_classes must be an int >= 2; got {n_classes!r}.")
    if not (isinstance(alpha, float) and 0 < alpha < 1):
        raise ValueError(f"alpha must be a float in (0, 1); got {alpha!r}.")
    correct = int(round(accuracy * n_test))
    p = stats.binomtest(correct, n_test, 1 / n_classes, alternative="greater").pvalue
    return bool(p < alpha)
