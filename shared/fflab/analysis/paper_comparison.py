"""A published estimate against this experiment's, cell by cell.

Pure functions: the published values and this experiment's run records come
in as arguments (``fflab.paper`` reads them from files).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Verdict", "compare_estimates", "CONSISTENT_WITHIN"]

# A cell is consistent when the difference is within this many combined standard errors.
CONSISTENT_WITHIN = 2.0


@dataclass(frozen=True)
class Verdict:
    """The comparison of one cell.

    Attributes
    ----------
    verdict : {"consistent", "differs", "not comparable"}
    z : float or None
        ``(ours - paper) / combined_se``; None when not comparable.
    combined_se : float or None
        ``sqrt(se_paper**2 + se_ours**2)`` with the substitutions in ``note``.
    note : str
        How the error was formed, or why the cell is not comparable.
    """

    verdict: str
    z: float | None
    combined_se: float | None
    note: str


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def compare_estimates(
    paper_mean: float,
    paper_se: float | None,
    paper_n: int | None,
    ours_mean: float | None,
    ours_se: float | None,
    ours_n: int,
    within: float = CONSISTENT_WITHIN,
    paper_resolution: float | None = None,
) -> Verdict:
    """Compare a published mean ± SE with this experiment's mean ± SE.

    The difference is measured in combined standard errors,
    ``sqrt(se_paper**2 + se_ours**2)``. A published mean is also rounded: printed as
    0.93, it stands for any value in [0.925, 0.935]. With ``paper_resolution`` (the
    unit of its last printed digit, 0.01 for 0.93) that rounding counts as the
    standard uncertainty of a uniform error, ``paper_resolution / sqrt(12)`` (GUM,
    JCGM 100:2008, F.2.2.1), added in quadrature to ``se_paper``; it matters where
    the paper prints fewer digits than its error warrants (0.93 ± 0.001). Where one
    side has no standard error:

    - this experiment has one run (``ours_n == 1``) and the paper gives an SE
      over ``paper_n`` runs: a single run is one draw from the paper's run
      distribution, so its SE is the paper's run-to-run standard deviation,
      ``se_paper * sqrt(paper_n)``;
    - the paper gives no SE (Table 3, numbers in the text): the combined SE is
      this experiment's alone, and the note says so;
    - neither side has one: not comparable.

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
    within : float, default=2.0
        Consistent when ``|z| <= within``.
    paper_resolution : float or None, default=None
        The unit of the published mean's last printed digit (> 0); None: no
        rounding term.

    Returns
    -------
    Verdict
    """
    if not _finite(paper_mean):
        raise ValueError(f"paper_mean must be a finite number; got {paper_mean!r}.")
    if not (isinstance(within, (int, float)) and math.isfinite(within) and within > 0):
        raise ValueError(f"within must be a finite number > 0; got {within!r}.")
    if paper_resolution is not None and not (_finite(paper_resolution) and paper_resolution > 0):
        raise ValueError(f"paper_resolution must be a finite number > 0 or None; got {paper_resolution!r}.")
    if not _finite(ours_mean) or ours_n < 1:
        return Verdict("not comparable", None, None, "this experiment has no value for this cell")
    notes = []
    paper_error = paper_se if _finite(paper_se) else None
    ours_error = ours_se if _finite(ours_se) else None
    if ours_error is None and paper_error is not None and paper_n:
        ours_error = paper_error * math.sqrt(paper_n)
        notes.append("one run: its SE is the paper's run-to-run SD (SE x sqrt(n))")
    if paper_error is None and ours_error is None:  # a rounding is no measure of the spread
        return Verdict("not comparable", None, None,
                       "no standard error on either side (one run, and none published)")
    if paper_error is None:
        notes.append("the paper gives no error: ours alone" if paper_resolution is None
                     else "the paper gives no error: ours and its rounding")
    if paper_resolution is not None:
        rounding = paper_resolution / math.sqrt(12)
        if paper_error is not None and rounding > paper_error:
            notes.append(f"printed to {paper_resolution:g}: its rounding ({rounding:.2g}) exceeds its SE")
        paper_error = math.sqrt((paper_error or 0.0) ** 2 + rounding ** 2)
    combined = math.sqrt((paper_error or 0.0) ** 2 + (ours_error or 0.0) ** 2)
    difference = float(ours_mean) - float(paper_mean)
    if combined == 0:
        verdict = "consistent" if difference == 0 else "differs"
        return Verdict(verdict, None, 0.0, "; ".join(notes + ["zero standard error"]))
    z = difference / combined
    return Verdict("consistent" if abs(z) <= within else "differs", z, combined, "; ".join(notes))
