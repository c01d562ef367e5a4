"""What the per-run analyses share: their documents' base, the seed of every
subsample and the stratified draw, the one-thread timing of an ``analyse``
step, the Method 1 ensembles they read, and the figure recipes' run readers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
import torch
from numpy.typing import ArrayLike
from pydantic import BaseModel, ConfigDict, Field
from threadpoolctl import threadpool_limits

from fflab.results import Document, RunEnsembles, RunIdentity, finite_or_none
from fflab.spec import ExperimentSpec, RunKey

if TYPE_CHECKING:
    from fflab.pipeline.run_document import RunAnalysisInput

# The seed of every subsample the analyses draw (recorded in their documents).
ANALYSIS_SEED = 0
D = TypeVar("D", bound=Document)


class Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AnalysisDocument(RunIdentity):
    """The base of an analysis's document: the run's identity and the seconds it took."""

    seconds: float = Field(0.0, description="Wall-clock time the analysis took.")


A = TypeVar("A", bound=AnalysisDocument)


def per_class_rows(labels: np.ndarray, per_class: int, seed: int, among: np.ndarray | None = None) -> np.ndarray:
    """Sorted indices of at most ``per_class`` rows of each class (drawn with ``seed``),
    among the rows where ``among`` (a boolean mask) is true."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    allowed = np.ones(labels.shape, dtype=bool) if among is None else np.asarray(among, dtype=bool)
    chosen = []
    for c in np.unique(labels):
        rows = np.flatnonzero((labels == c) & allowed)
        chosen.append(rows if rows.size <= per_class else rng.choice(rows, per_class, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64) if chosen else np.zeros(0, dtype=np.int64)


def run_identity(key: RunKey) -> dict[str, Any]:
    """The identity fields of a run document (as fflab.pipeline.train writes them)."""
    return {"run_id": key.run_id, "model": key.model, "dataset": key.dataset, "seed": key.seed,
            "unseen_class": key.unseen_class}


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch, BLAS and OpenMP on one thread. These analyses are many small
    operations; on a loaded machine each parallel region of a small operation
    can wait a scheduler time slice for its second thread (L-BFGS steps of 8 ms
    instead of well under 1, measured on two shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(threads)


def timed_on_one_thread(analyse: Callable[[RunAnalysisInput], A]) -> Callable[[RunAnalysisInput], A]:
    """An ``analyse`` function run on one thread, its document's ``seconds`` set."""

    @wraps(analyse)
    def run(inputs: RunAnalysisInput) -> A:
        started = time.perf_counter()
        with one_thread():
            document = analyse(inputs)
        document.seconds = time.perf_counter() - started
        return document

    return run


def finite_list(values: ArrayLike) -> list[float | None]:
    return [finite_or_none(v) for v in np.asarray(values, dtype=float).ravel()]


def table_ensembles(ensembles: RunEnsembles) -> tuple[float, dict[int, dict[int, np.ndarray]]]:
    """A run's Method 1 ensembles at the table quantile: (quantile, {layer: {class: units}})."""
    quantile = ensembles.analysis.table_quantile
    found: dict[int, dict[int, np.ndarray]] = {}
    for record in ensembles.ensembles:
        if record.method == "method1" and record.quantile == quantile:
            found.setdefault(record.layer, {})[record.class_index] = np.asarray(record.units, dtype=int)
    return quantile, found


def mean_se(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R, L) with nan for missing -> mean and standard error per column (0 with one run)."""
    values = np.asarray(values, dtype=float)
    counts = np.sum(np.isfinite(values), axis=0)
    mean = np.nanmean(values, axis=0) if values.size else np.zeros(values.shape[1:])
    std = np.nanstd(values, axis=0, ddof=1) if values.shape[0] > 1 else np.zeros(values.shape[1])
    se = np.where(counts > 1, std / np.sqrt(np.maximum(counts, 1)), 0.0)
    return mean, np.nan_to_num(se)


# --------------------------------------------------------------------------- figure recipes
#
# A recipe (``DocumentFigure``) gets the spec and a reader of the document for any
# run, and returns one figure for the experiment, or None when no run of the
# experiment has the document (folders analysed before it existed).

Reader = Callable[[RunKey], Document]


def read_as(read: Reader, key: RunKey, model: type[D]) -> D:
    """``read(key)``, typed as the recipe's document ``model``: the reader a recipe
    gets validates its own registry entry's model."""
    return cast(D, read(key))


def documents_of(spec: ExperimentSpec, read: Reader, keys: list[RunKey], model: type[D]) -> list[tuple[RunKey, D]]:
    """The runs of ``keys`` that have the document, with it (as ``model``)."""
    found = []
    for key in keys:
        try:
            found.append((key, read_as(read, key, model)))
        except FileNotFoundError:
            continue
    return found


def main_runs(spec: ExperimentSpec) -> list[RunKey]:
    """The runs trained on every class, on the first data set."""
    return [key for key in spec.runs() if key.dataset == spec.datasets[0] and key.unseen_class is None]


def first_seed_runs(spec: ExperimentSpec) -> list[RunKey]:
    return [key for key in main_runs(spec) if key.seed == spec.seeds[0]]
