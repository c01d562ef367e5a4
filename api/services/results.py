"""What an experiment has produced: its aggregated results and comparison with the
paper (once its aggregation has written them), its runs' ensembles, and its stored
files (figures, artifacts) by name."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import InstrumentedAttribute, Session, load_only

from api import schemas
from api.services.errors import Conflict, Invalid, NotFound
from fflab import paper
from fflab.db import Analysis, Artifact, Ensemble, Experiment, Result, Run
from fflab.pipeline import recorded
from fflab.representations import REPRESENTATIONS_KIND, experiment_kind
from fflab.results import PAPER_TABLES, PaperComparison, RunEnsembles, partial_note
from fflab.spec import ExperimentSpec

if TYPE_CHECKING:
    from api.paging import Page

FIGURES_PREFIX = "figures/"
Method = Literal["method1", "method2"]
MAX_LAYER = 1024  # far above any network's depth (NetworkSpec.layers); fits any integer column


def result_of(session: Session, experiment: Experiment) -> Result:
    """The experiment's aggregated results (Conflict until its last run has finished
    and been aggregated)."""
    result = session.get(Result, experiment.id)
    if result is None:
        if experiment.status in ("cancelled", "failed"):
            raise Conflict(f"experiment {experiment.id} is {experiment.status} and has no results: none of its "
                           "runs succeeded (GET .../runs says how each ended)")
        if experiment.status == "cancelling":
            raise Conflict(f"experiment {experiment.id} is cancelling: the partial results of its succeeded runs "
                           "are written once its last running run has stopped")
        raise Conflict(f"experiment {experiment.id} is {experiment.status}: its results are not ready (they are "
                       "written when its last run has finished and been aggregated)")
    return result


def partial_line(results: dict[str, Any]) -> str:
    """Partial results' first markdown line: how many runs are in, and which are
    not and why; "" for complete results."""
    if not results.get("partial"):
        return ""
    missing = results.get("runs_missing") or []
    included = len(results.get("runs_included") or ())
    left_out = ", ".join(f"{run['run_id']} ({run['status']})" for run in missing)
    runs_in = ", ".join(results.get("runs_included") or ())
    return f"_{partial_note(included, len(missing))}; in: {runs_in}; left out: {left_out}_\n\n"


def tables_document(experiment: Experiment, results: dict[str, Any], tables: dict[str, Any], format: str,
                    table: str | None) -> dict[str, Any] | str:
    """Results as JSON (a dict), or one table (NotFound if there is no such table),
    or Tables 1-3 and the sweep's each under a '# <name>' heading (after the line
    saying the results are partial, where they are), as CSV or markdown text."""
    if format == "json":
        return results
    if table:
        if table not in tables:
            raise NotFound(f"experiment {experiment.id} has no table {table}; it has: {', '.join(tables)}")
        text: str = tables[table][format]
        return text
    names = [name for name in PAPER_TABLES + ("sweep",) if name in tables]  # uploaded files: those they have
    return partial_line(results) + "\n".join(f"# {name}\n\n{tables[name]['md']}" for name in names)


def results_document(session: Session, experiment: Experiment, format: str,
                     table: str | None) -> dict[str, Any] | str:
    """The experiment's current results (its latest analysis's): ``tables_document``."""
    result = result_of(session, experiment)
    return tables_document(experiment, result.results, result.tables, format, table)


def analysis_results_document(session: Session, experiment: Experiment, analysis_id: str, format: str,
                              table: str | None) -> dict[str, Any] | str:
    """One re-analysis's results as it recorded them (``tables_document``), also after
    later ones replaced the experiment's: NotFound for an analysis of another
    experiment, Conflict until it has succeeded (or for one recorded before versions
    were kept)."""
    analysis = session.get(Analysis, analysis_id)
    if analysis is None or analysis.experiment_id != experiment.id:
        raise NotFound(f"experiment {experiment.id} has no analysis {analysis_id}")
    if analysis.status != "succeeded":
        raise Conflict(f"analysis {analysis_id} is {analysis.status}: its results exist once it has succeeded")
    if analysis.results is None or analysis.tables is None:
        raise Conflict(f"analysis {analysis_id} was recorded before each analysis's results were kept; "
                       "the experiment's results are its latest analysis's")
    return tables_document(experiment, analysis.results, analysis.tables, format, table)


def paper_comparison(session: Session, experiment: Experiment, format: str) -> PaperComparison | str:
    """Every number of the paper against the experiment's (a dict for JSON, else CSV
    or markdown text); Conflict until its results are ready."""
    result = result_of(session, experiment)
    if experiment_kind(experiment.spec) == REPRESENTATIONS_KIND:  # not trained by fflab: not judged
        if format == "md":
            return recorded.paper_comparison_markdown(experiment.id)
        comparison = recorded.paper_comparison_not_applicable(experiment.id)
        return comparison if format == "json" else paper.to_csv(comparison)
    partial = result.results.get("partial")
    note = partial_note(len(result.results.get("runs_included") or ()), len(result.results.get("runs_missing") or ()))
    comparison = paper.paper_comparison(  # of the runs there are: partial results say so
        ExperimentSpec.model_validate(experiment.spec), result.results["runs"],
        result.results.get("method_comparison"), experiment=experiment.id + (f" ({note})" if partial else ""),
    )
    if format == "json":
        return comparison
    return paper.to_markdown(comparison) if format == "md" else paper.to_csv(comparison)


def succeeded_runs(session: Session, experiment: Experiment, model: str | None, dataset: str | None,
                   run_id: str | None = None,
                   columns: tuple[InstrumentedAttribute[Any], ...] = ()) -> list[Run]:
    """The experiment's succeeded runs matching the filters; with ``columns``, only
    those are loaded (each run carries several JSON documents)."""
    query = select(Run).where(Run.experiment_id == experiment.id, Run.status == "succeeded")
    if columns:
        query = query.options(load_only(*columns))
    for column, value in ((Run.model, model), (Run.dataset, dataset), (Run.run_id, run_id)):
        if value is not None:
            query = query.where(column == value)
    return list(session.scalars(query.order_by(Run.id)))


@dataclass(frozen=True)
class EnsembleFilters:
    """What ``GET /ensembles`` keeps (None: any)."""

    model: str | None
    dataset: str | None
    layer: int | None
    class_index: int | None
    method: str | None
    quantile: float | None
    run_id: str | None
    old_class: str | None  # the class filter's old name, refused with its new one


def computed_quantiles(experiment: Experiment) -> list[float]:
    """The Method 1 quantiles of the experiment's current analysis (a re-analysis
    replaces them)."""
    return list((experiment.spec.get("analysis") or {}).get("quantiles") or [])


def ensembles_page(session: Session, experiment: Experiment, page: Page,
                   filters: EnsembleFilters) -> schemas.EnsemblesOut:
    """A page of the runs' ensembles matching ``filters``; Invalid for the old name of
    the class filter and for a quantile this experiment's analysis did not compute."""
    if filters.old_class is not None:  # the filter's old name: it must not be ignored silently
        raise Invalid([{"type": "extra_forbidden", "loc": ("query", "class"), "input": filters.old_class,
                        "msg": "the class filter is class_index (as in the ensembles' records)"}])
    quantiles = computed_quantiles(experiment)
    quantile = filters.quantile
    if quantile is not None and quantile not in quantiles:
        raise Invalid([{
            "type": "value_error", "loc": ("query", "quantile"), "input": quantile,
            "ctx": {"expected": " or ".join(map(str, quantiles))},
            "msg": f"quantile {quantile} was not computed for this experiment (its quantiles: "
                   f"{', '.join(map(str, quantiles))}); to get it, POST /v1/experiments/{experiment.id}/analyses "
                   f"with quantiles that include it"}])
    runs = {run.run_id: run for run in succeeded_runs(session, experiment, filters.model, filters.dataset,
                                                      filters.run_id, columns=(Run.run_id, Run.ensemble_summary))}
    fields = ("layer", "class_index", "class_name", "method", "quantile", "threshold", "epsilon", "rho_cut",
              "nh_cut", "n_images", "units", "size")
    # Plain rows, not ORM objects: an experiment has hundreds of ensembles per run.
    query = select(Ensemble.run_id, *(getattr(Ensemble, field) for field in fields)).where(
        Ensemble.experiment_id == experiment.id, Ensemble.run_id.in_(list(runs)))
    for column, value in ((Ensemble.layer, filters.layer), (Ensemble.class_index, filters.class_index),
                          (Ensemble.method, filters.method), (Ensemble.quantile, quantile)):
        if value is not None:
            query = query.where(column == value)
    found, next_token = page.cut(list(session.execute(query.order_by(Ensemble.id)
                                                      .limit(page.limit + 1).offset(page.offset))))
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run_id_, *values in found:
        rows[str(run_id_)].append(dict(zip(fields, values)))
    return schemas.EnsemblesOut(
        experiment_id=experiment.id, experiment_status=schemas.stored_status(experiment.status),
        quantiles=quantiles, next_page_token=next_token,
        runs=[RunEnsembles.model_validate({**summary, "ensembles": ensembles}) for name, ensembles in rows.items()
              if (summary := runs[name].ensemble_summary)],
    )


def artifacts_page(session: Session, experiment: Experiment, page: Page,
                   prefix: str = "") -> tuple[list[Artifact], str | None]:
    """The experiment's stored files by name (those starting with ``prefix``)."""
    query = select(Artifact).where(Artifact.experiment_id == experiment.id)
    if prefix:
        query = query.where(Artifact.name.startswith(prefix, autoescape=True))
    return page.cut(list(session.scalars(query.order_by(Artifact.name).limit(page.limit + 1).offset(page.offset))))


def check_artifact_name(name: str, field: str, encoded_slash: bool) -> None:
    """Names are relative paths inside the experiment: no '..', no absolute path, no
    backslash, no percent-encoded slash (Invalid, naming the path parameter ``field``)."""
    parts = name.split("/")
    control = any(ord(c) < 32 or ord(c) == 127 for c in name)
    if (encoded_slash or control or name.startswith("/") or "\\" in name or ":" in parts[0]
            or any(p in ("", ".", "..") for p in parts)):
        raise Invalid([{
            "type": "value_error", "loc": ("path", field), "input": name,
            "msg": "must be a relative artifact name such as runs/<run_id>/weights.pt or "
                   "figures/figure1a.png: no '..' or '.' segments, leading '/', drive letter, backslash, "
                   "control character (NUL) or encoded '/'",
        }])


def _stored(session: Session, experiment: Experiment, name: str) -> Artifact:
    artifact = session.scalar(
        select(Artifact).where(Artifact.experiment_id == experiment.id, Artifact.name == name)
    )
    if artifact is None:
        raise NotFound(f"experiment {experiment.id} has no artifact {name}")
    return artifact


def artifact_named(session: Session, experiment: Experiment, name: str, encoded_slash: bool) -> Artifact:
    """One stored file by name (checked as a name; NotFound if there is none)."""
    check_artifact_name(name, "name", encoded_slash)
    return _stored(session, experiment, name)


def figure_artifact(session: Session, experiment: Experiment, name: str, encoded_slash: bool) -> Artifact:
    """The artifact of the figure ``name`` (``figure1a.png`` or ``figure1a.svg``; without a
    suffix, the PNG), checked as a name."""
    file_name = name if name.endswith((".png", ".svg")) else f"{name}.png"
    check_artifact_name(file_name, "name", "/" in name or encoded_slash)
    return _stored(session, experiment, f"{FIGURES_PREFIX}{file_name}")
