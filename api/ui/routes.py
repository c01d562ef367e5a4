"""The pages of the web UI (see the package's docstring for the design).

Reads go through the API's dependencies and route functions; writes call the
API's route functions (submit, cancel, delete, re-analyse) with the same
session, settings and dispatcher, so that a form does exactly what the JSON
request does. Validation errors are read from the body the API would have sent
(``api_error_body``) and shown next to the form's fields.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, load_only
from starlette.exceptions import HTTPException

from api import schemas, views
from api.deps import (
    DispatcherDep,
    ExperimentId,
    SessionDep,
    SettingsDep,
    StorageDep,
    authenticated_user,
    get_owned_experiment,
    readable_experiment,
)
from api.paging import Page
from api.routes import analyses as analyses_routes
from api.routes import experiments as experiment_routes
from api.routes import results as results_routes
from api.ui import forms, queries, security
from api.ui.charts import loss_chart
from api.ui.explorer import ClassMeansCache, unit_grid
from api.ui.html import SIGN_IN, HTMLRoute, render
from api.ui.security import CsrfChecked, UIUser
from fflab.analysis import METHOD1_THRESHOLDS
from fflab.db import FINAL_STATUSES, STATUSES, Artifact, Experiment, Result, Run
from fflab.figures import class_names
from fflab.results import PAPER_TABLES, TABLES
from fflab.data import DATASETS
from fflab.models import MODELS
from fflab.spec import PRESETS, AnalysisSpec
from fflab.storage import StorageError

router = APIRouter(prefix="/ui", route_class=HTMLRoute, include_in_schema=False)
class_means = ClassMeansCache()
StatusFilter = Annotated[schemas.Status | Literal[""], Query(alias="status")]
ScopeFilter = Annotated[queries.Scope, Query()]


def get_ui_readable_experiment(experiment_id: ExperimentId, session: SessionDep, user: UIUser) -> Experiment:
    return readable_experiment(session, user, experiment_id)


UIReadableExperiment = Annotated[Experiment, Depends(get_ui_readable_experiment)]


async def get_ui_owned_experiment(experiment: UIReadableExperiment, user: UIUser) -> Experiment:
    return await get_owned_experiment(experiment, user)


UIOwnedExperiment = Annotated[Experiment, Depends(get_ui_owned_experiment)]


def validated(model: type[BaseModel], body: dict[str, Any]) -> Any:
    """``model`` from ``body``; its errors as FastAPI raises them for a JSON body."""
    try:
        return model.model_validate(body)
    except ValidationError as error:
        raise RequestValidationError([{**problem, "loc": ("body", *problem["loc"])}
                                      for problem in error.errors(include_url=False)]) from None


async def api_error_body(request: Request, error: Exception) -> dict[str, Any]:
    """The JSON body the API answers ``error`` with (its installed exception handler)."""
    handlers = request.app.exception_handlers
    handler = next(handlers[cls] for cls in type(error).__mro__ if cls in handlers)
    response = await handler(request, error)
    return json.loads(response.body)


def safe_next(target: str) -> str:
    """Where to go after signing in: a path of the UI, never another site."""
    if target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/"


# ----------------------------------------------------------------------------- sign in


@router.get("/sign-in")
def sign_in_page(request: Request, next: str = "/ui/") -> Response:
    return render(request, "sign_in.html", {"next": safe_next(next), "error": None})


@router.post("/sign-in", dependencies=[CsrfChecked])
async def sign_in(request: Request, session: SessionDep) -> Response:
    form = await request.form()
    key, target = str(form.get("api_key") or "").strip(), safe_next(str(form.get("next") or "/ui/"))
    try:
        credentials = HTTPAuthorizationCredentials(scheme="Bearer", credentials=key) if key else None
        await run_in_threadpool(authenticated_user, session, credentials)
    except HTTPException as error:
        return render(request, "sign_in.html", {"next": target, "error": error.detail}, 401)
    response = RedirectResponse(target, status_code=303)
    security.sign_in(request, response, key)
    return response


@router.post("/sign-out", dependencies=[CsrfChecked])
def sign_out() -> Response:
    response = RedirectResponse(SIGN_IN, status_code=303)
    security.sign_out(response)
    return response


# ----------------------------------------------------------------------------- experiments


def experiments_context(session: Session, request: Request, user, status: str, scope: str) -> dict[str, Any]:
    items = queries.visible_experiments(session, request, user, scope, status or None)
    queued = [item.id for item in items if item.status == "queued"]
    return {"items": items, "status": status, "scope": scope, "statuses": STATUSES, "scopes": queries.SCOPES,
            "ahead": queries.runs_ahead(session, queued) if queued else {},
            "active": any(item.status not in FINAL_STATUSES for item in items)}


@router.get("/")
def experiments_page(request: Request, session: SessionDep, user: UIUser, status: StatusFilter = "",
                     scope: ScopeFilter = "visible") -> Response:
    return render(request, "experiments.html", experiments_context(session, request, user, status, scope))


@router.get("/fragments/experiments")
def experiments_fragment(request: Request, session: SessionDep, user: UIUser, status: StatusFilter = "",
                         scope: ScopeFilter = "visible") -> Response:
    """The experiments table alone, polled by the list page while any is active."""
    return render(request, "_experiments_table.html", experiments_context(session, request, user, status, scope))


def experiment_context(request: Request, session: Session, experiment: Experiment, user) -> dict[str, Any]:
    detail = views.experiment_detail(request, experiment)
    runs = queries.runs_with_metrics(session, experiment)
    result = session.get(Result, experiment.id)
    tables = comparison = None
    if result is not None:
        tables = [result.results["tables"][name] | {"name": name} for name in PAPER_TABLES + ("sweep",)
                  if name in result.results.get("tables", {})]
        comparison = results_routes.get_paper_comparison(experiment=experiment, session=session, format="json")
    figures = [artifact.name.removeprefix("figures/") for artifact in
               results_routes.list_figures(experiment=experiment, request=request, session=session,
                                           page=Page.first()).items]
    analyses = analyses_routes.list_analyses(experiment=experiment, request=request, session=session,
                                             page=Page.first()).items
    return {
        "experiment": detail,
        "may_change": experiment.owner_id == user.id or user.role == "admin",
        "ahead": queries.runs_ahead(session, [experiment.id]).get(experiment.id),
        "runs": [(views.run_out(run), loss_chart((run.metrics or {}).get("loss_history", [])))
                 for run in runs],
        "tables": tables, "comparison": comparison, "figures": figures, "analyses": analyses,
        "analysis_form": forms.AnalysisForm.from_spec(experiment.spec.get("analysis", {})),
        "analysis_errors": {}, "method1_thresholds": list(METHOD1_THRESHOLDS),
    }


@router.get("/experiments/{experiment_id}")
def experiment_page(request: Request, experiment: UIReadableExperiment, session: SessionDep,
                    user: UIUser) -> Response:
    return render(request, "experiment.html", experiment_context(request, session, experiment, user))


@router.get("/experiments/{experiment_id}/progress")
def progress_fragment(request: Request, experiment: UIReadableExperiment, session: SessionDep) -> Response:
    """The progress of an active experiment, polled by its page; once it has ended,
    the page reloads (HX-Refresh) to show its results."""
    if experiment.status in FINAL_STATUSES:
        return Response(status_code=200, headers={"HX-Refresh": "true"})
    detail = views.experiment_detail(request, experiment)
    ahead = queries.runs_ahead(session, [experiment.id]).get(experiment.id)
    return render(request, "_progress.html", {"experiment": detail, "ahead": ahead})


@router.get("/experiments/{experiment_id}/tables/{table}.csv")
def table_csv(experiment: UIReadableExperiment, session: SessionDep,
              table: Literal[TABLES]) -> Response:  # type: ignore[valid-type]
    response = results_routes.get_results(experiment=experiment, session=session, format="csv", table=table)
    response.headers["Content-Disposition"] = f'attachment; filename="{experiment.name}-{table}.csv"'
    return response


@router.get("/experiments/{experiment_id}/paper-comparison.csv")
def paper_comparison_csv(experiment: UIReadableExperiment, session: SessionDep) -> Response:
    response = results_routes.get_paper_comparison(experiment=experiment, session=session, format="csv")
    response.headers["Content-Disposition"] = f'attachment; filename="{experiment.name}-paper-comparison.csv"'
    return response


@router.get("/experiments/{experiment_id}/figures/{name}")
def figure(name: str, request: Request, experiment: UIReadableExperiment, session: SessionDep,
           storage: StorageDep) -> Response:
    return results_routes.get_figure(name=name, request=request, experiment=experiment, session=session,
                                     storage=storage)


@router.post("/experiments/{experiment_id}/cancel", dependencies=[CsrfChecked])
def cancel(request: Request, experiment: UIOwnedExperiment, session: SessionDep, settings: SettingsDep,
           dispatcher: DispatcherDep) -> Response:
    experiment_routes.cancel_experiment(experiment=experiment, request=request, session=session,
                                        settings=settings, dispatcher=dispatcher)
    return RedirectResponse(f"/ui/experiments/{experiment.id}", status_code=303)


@router.post("/experiments/{experiment_id}/delete", dependencies=[CsrfChecked])
def delete(request: Request, experiment: UIOwnedExperiment, session: SessionDep, settings: SettingsDep,
           dispatcher: DispatcherDep, storage: StorageDep) -> Response:
    experiment_routes.delete_experiment(experiment=experiment, request=request, session=session,
                                        settings=settings, dispatcher=dispatcher, storage=storage)
    return RedirectResponse("/ui/", status_code=303)


@router.post("/experiments/{experiment_id}/analyses", dependencies=[CsrfChecked])
async def reanalyse(request: Request, experiment: UIOwnedExperiment, session: SessionDep, settings: SettingsDep,
                    dispatcher: DispatcherDep, user: UIUser) -> Response:
    """Queue a re-analysis; invalid values or a conflict (409) are shown next to
    the form's fields."""
    form = forms.AnalysisForm.from_form(await request.form())

    def queue() -> None:
        body = validated(AnalysisSpec, form.body())
        analyses_routes.create_analysis(body=body, experiment=experiment, request=request, response=Response(),
                                        session=session, settings=settings, dispatcher=dispatcher)

    try:
        await run_in_threadpool(queue)
    except (RequestValidationError, HTTPException) as error:
        if isinstance(error, HTTPException) and error.status_code in (401, 403, 404):
            raise
        errors = forms.form_errors(forms.field_errors(await api_error_body(request, error)), forms.ANALYSIS_FIELDS)
        context = await run_in_threadpool(experiment_context, request, session, experiment, user)
        context.update(analysis_form=form, analysis_errors=errors)
        return render(request, "experiment.html", context, 409 if isinstance(error, HTTPException) else 422)
    return RedirectResponse(f"/ui/experiments/{experiment.id}#analyses", status_code=303)


# ----------------------------------------------------------------------------- submit


def model_names() -> dict[str, str]:
    return {name: model.display_name for name, model in MODELS.items()}


def submit_context(form: forms.SubmitForm, errors: dict[str, list[str]], preview: dict | None) -> dict[str, Any]:
    return {"form": form, "errors": errors, "preview": preview, "hints": form.preset_hints(),
            "presets": list(PRESETS), "models": list(MODELS), "datasets": list(DATASETS),
            "model_names": model_names()}


def spec_preview(form: forms.SubmitForm, settings) -> dict[str, Any]:
    """The spec the form would submit and its run count; the API's validation
    errors (and this server's limits) as exceptions."""
    body = validated(schemas.ExperimentSubmit, form.body())
    spec = experiment_routes.spec_from_body(body)
    experiment_routes.check_limits(spec, settings)
    return {"spec": spec.model_dump(mode="json"), "runs": len(spec.runs())}


async def form_errors_of(request: Request, error: Exception) -> dict[str, list[str]]:
    return forms.form_errors(forms.field_errors(await api_error_body(request, error)), forms.SUBMIT_FIELDS)


@router.get("/submit")
def submit_page(request: Request, settings: SettingsDep, _user: UIUser,
                preset: Annotated[Literal[tuple(PRESETS)], Query()] = "quick") -> Response:  # type: ignore[valid-type]
    form = forms.SubmitForm.for_preset(preset)
    return render(request, "submit.html", submit_context(form, {}, spec_preview(form, settings)))


@router.post("/submit/preview", dependencies=[CsrfChecked])
async def submit_preview(request: Request, settings: SettingsDep, _user: UIUser) -> Response:
    """The submit form again, with the spec it stands for or its errors inline."""
    form = forms.SubmitForm.from_form(await request.form())
    try:
        preview, errors = spec_preview(form, settings), {}
    except (RequestValidationError, HTTPException) as error:
        preview, errors = None, await form_errors_of(request, error)
    return render(request, "_submit_form.html", submit_context(form, errors, preview))


@router.post("/submit", dependencies=[CsrfChecked])
async def submit(request: Request, session: SessionDep, settings: SettingsDep, dispatcher: DispatcherDep,
                 user: UIUser) -> Response:
    form = forms.SubmitForm.from_form(await request.form())

    def create() -> schemas.ExperimentCreated:
        body = validated(schemas.ExperimentSubmit, form.body())
        return experiment_routes.submit_experiment(body=body, request=request, response=Response(),
                                                   session=session, settings=settings, dispatcher=dispatcher,
                                                   user=user)

    try:
        created = await run_in_threadpool(create)
    except (RequestValidationError, HTTPException) as error:
        if isinstance(error, HTTPException) and error.status_code == 401:
            raise
        status_code = error.status_code if isinstance(error, HTTPException) else 422
        context = submit_context(form, await form_errors_of(request, error), None)
        return render(request, "submit.html", context, status_code)
    return RedirectResponse(f"/ui/experiments/{created.id}", status_code=303)


# ----------------------------------------------------------------------------- ensembles


def _first(choices: list[Any], wanted: Any) -> Any:
    return wanted if wanted in choices else (choices[0] if choices else None)


@router.get("/experiments/{experiment_id}/ensembles")
def explorer(
    request: Request, experiment: UIReadableExperiment, session: SessionDep, storage: StorageDep,
    model: Annotated[str | None, Query()] = None, dataset: Annotated[str | None, Query()] = None,
    run_id: Annotated[str | None, Query(alias="run")] = None,
    layer: Annotated[int, Query(ge=1, le=results_routes.MAX_LAYER)] = 1,
    class_index: Annotated[int, Query(alias="class", ge=0, le=9)] = 0,
    method: Annotated[results_routes.Method, Query()] = "method2",
    quantile: Annotated[float | None, Query(gt=0, lt=1)] = None,
    other: Annotated[int | None, Query(ge=0, le=9)] = None,
) -> Response:
    """A run's ensemble of one class in one layer by one method: its units on the
    layer's grid, shaded by their mean activity over the class's analysed images,
    and the units it shares with another class's ensemble."""
    spec = experiment.spec
    analysis = spec.get("analysis", {})
    runs = list(session.scalars(
        select(Run).options(load_only(Run.run_id, Run.model, Run.dataset, Run.seed, Run.unseen_class))
        .where(Run.experiment_id == experiment.id, Run.status == "succeeded").order_by(Run.id)
    ))
    context: dict[str, Any] = {"experiment": experiment, "runs": [], "found": False}
    models = [m for m in MODELS if any(run.model == m for run in runs)]
    model = _first(models, model)
    datasets = [d for d in DATASETS if any(run.model == model and run.dataset == d for run in runs)]
    dataset = _first(datasets, dataset)
    choices = [run for run in runs if run.model == model and run.dataset == dataset]
    run = next((r for r in choices if r.run_id == run_id), choices[0] if choices else None)
    quantiles = analysis.get("quantiles", [])
    if method == "method1":
        quantile = _first(quantiles, quantile if quantile is not None else analysis.get("figure_quantile"))
    else:
        quantile = None
    context.update(models=models, model=model, datasets=datasets, dataset=dataset, runs=choices,
                   run=run, layers=list(range(1, spec.get("network", {}).get("layers", 1) + 1)), layer=layer,
                   class_index=class_index, method=method, quantiles=quantiles, quantile=quantile,
                   names=class_names(dataset) if dataset else [str(c) for c in range(10)],
                   model_names=model_names())
    if run is None:
        return render(request, "explorer.html", context)
    documents = results_routes.ensembles_of(session, experiment, Page.first(), results_routes.EnsembleFilters(
        model=None, dataset=None, layer=layer, class_index=None, method=method, quantile=quantile,
        run_id=run.run_id, old_class=None)).runs
    if not documents:
        return render(request, "explorer.html", context)
    document = documents[0]
    units = {record.class_index: record.units for record in document.ensembles}
    chosen = units.get(class_index, [])
    overlaps = {c: len(set(chosen) & set(u)) for c, u in units.items() if c != class_index}
    if other is None or other == class_index:
        other = max(overlaps, key=lambda c: (overlaps[c], -c)) if overlaps else None
    mean, mean_error = None, None
    artifact = session.scalar(select(Artifact).where(
        Artifact.experiment_id == experiment.id, Artifact.name == f"runs/{run.run_id}/representations.npz"))
    if artifact is None:
        mean_error = "this run's representations are not stored"
    else:
        try:
            means = class_means.get(storage, artifact.key, artifact.sha256, run.unseen_class,
                                    bool(analysis.get("correct_only", True)))
            mean = means[layer][class_index] if layer in means else None
        except (StorageError, FileNotFoundError, OSError, KeyError, ValueError) as error:
            mean_error = f"the stored representations could not be read: {error}"
    side, cells = unit_grid(document.n_units, chosen, units.get(other, []) if other is not None else [], mean)
    inside = [c.mean for c in cells if c.in_ensemble and c.mean is not None]
    outside = [c.mean for c in cells if not c.in_ensemble and c.mean is not None]
    context.update(
        found=True, n_units=document.n_units, side=side, cells=cells, units=sorted(chosen), other=other,
        shared=sorted(set(chosen) & set(units.get(other, []))) if other is not None else [],
        overlaps=overlaps, mean_error=mean_error, has_class=class_index in units,
        mean_inside=sum(inside) / len(inside) if inside else None,
        mean_outside=sum(outside) / len(outside) if outside else None,
    )
    return render(request, "explorer.html", context)
