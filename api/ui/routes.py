"""The pages of the web UI (see the package's docstring for the design).

Pages call the service layer (``api.services``), as the API's routes do, never a
route handler: reads, and the writes (submit, cancel, delete, re-analyse, sign in
and out) with the same settings and dispatcher, so that a form does exactly what
the JSON request does. What a service refuses is read from the body the API would
have sent (``api_error_body``) and shown next to the form's fields.

Like the API's routes (``api.deps``), a page does its database work in units: one
trip to the threadpool with a session opened and closed there, rendering
included where the page shows rows; stored files are read after the unit.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, load_only
from starlette.exceptions import HTTPException

from api import schemas, views
from api.deps import (
    DatabaseDep,
    DispatcherDep,
    ExperimentId,
    SettingsDep,
    StatusCacheDep,
    StorageDep,
    authenticated_user,
)
from api.files import encoded_slash, file_response
from api.paging import Page
from api.schemas import Priority
from api.services import analyses as analysis_service
from api.services import experiments as experiment_service
from api.services import results as result_service
from api.services import users as user_service
from api.services.errors import Conflict, Invalid, ServiceError
from api.services.experiments import owned_experiment, readable_experiment
from api.ui import compare as compare_pages
from api.ui import forms, live, queries, security
from api.ui.explorer import ClassMeansCache, unit_grid
from api.ui.html import SIGN_IN, HTMLRoute, render
from api.ui.security import CsrfChecked, UICredentials, UIUser, ui_user
from api.ui.tables import display_table
from fflab.analysis import METHOD1_THRESHOLDS, METHOD2_CUTS
from fflab.data import DATASETS, n_classes
from fflab.db import FINAL_STATUSES, STATUSES, Artifact, Experiment, Result, Run, User
from fflab.figures import class_names
from fflab.models import MODELS
from fflab.pipeline.recorded import PAPER_COMPARISON_NOTE
from fflab.representations import REPRESENTATIONS_KIND, experiment_kind
from fflab.results import PAPER_TABLES, TABLES
from fflab.settings import Settings
from fflab.spec import PRESETS, AnalysisSpec, sweepable_fields
from fflab.storage import StorageError

router = APIRouter(prefix="/ui", route_class=HTMLRoute, include_in_schema=False)
class_means = ClassMeansCache()
# The largest class index of any data set (EMNIST balanced: 46); a run's own is checked by its ensembles.
MAX_CLASS = max(entry.n_classes for entry in DATASETS.values()) - 1
StatusFilter = Annotated[schemas.Status | Literal[""], Query(alias="status")]
ScopeFilter = Annotated[queries.Scope, Query()]


def ui_readable(session: Session, request: Request, credentials: str | None, experiment_id: str) -> Experiment:
    """The signed-in user's readable experiment (inside a unit)."""
    return readable_experiment(session, ui_user(session, request, credentials), experiment_id)


def ui_owned(session: Session, request: Request, credentials: str | None, experiment_id: str) -> Experiment:
    """The experiment if the signed-in user may change it (inside a unit)."""
    return owned_experiment(session, ui_user(session, request, credentials), experiment_id)


async def get_ui_owned_experiment(experiment_id: ExperimentId, request: Request, db: DatabaseDep,
                                  credentials: UICredentials) -> Experiment:
    """``ui_owned`` in a unit of its own, before a form is read (detached)."""
    return await db.read(lambda session: ui_owned(session, request, credentials, experiment_id))


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
    body: dict[str, Any] = json.loads(response.body)
    return body


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
async def sign_in(request: Request, db: DatabaseDep, settings: SettingsDep) -> Response:
    """Check the key, then open a server-side session for it (``security``): the
    browser's cookie holds the session's id, never the key."""
    form = await request.form()
    key, target = str(form.get("api_key") or "").strip(), safe_next(str(form.get("next") or "/ui/"))
    try:
        credentials = HTTPAuthorizationCredentials(scheme="Bearer", credentials=key) if key else None
        await db.read(lambda session: authenticated_user(session, credentials))
    except HTTPException as error:
        if error.status_code != 401:
            raise
        return render(request, "sign_in.html", {"next": target, "error": error.detail}, 401)

    session_id = await db.write(lambda session: user_service.open_ui_session(session, key, settings))
    if session_id is None:  # revoked meanwhile
        raise HTTPException(401, "invalid or revoked API key")
    response = RedirectResponse(target, status_code=303)
    security.sign_in(request, response, session_id)
    return response


@router.post("/sign-out", dependencies=[CsrfChecked])
async def sign_out(request: Request, db: DatabaseDep, credentials: UICredentials) -> Response:
    """End the session: its row is deleted, so its id no longer signs anyone in."""
    if credentials:
        await db.write(lambda session: user_service.close_ui_session(session, credentials))
    response = RedirectResponse(SIGN_IN, status_code=303)
    security.sign_out(request, response)
    return response


# ----------------------------------------------------------------------------- experiments


def experiments_context(session: Session, request: Request, user: User, status: str, scope: queries.Scope, q: str = "",
                        sort: str = "-created_at") -> dict[str, Any]:
    items = queries.visible_experiments(session, request, user, scope, status or None,
                                        extra=compare_pages.search_clauses(q), order=compare_pages.list_order(sort))
    queued = [item.id for item in items if item.status == "queued"]
    return {"items": items, "status": status, "scope": scope, "statuses": STATUSES, "scopes": queries.SCOPES,
            "ahead": queries.runs_ahead(session, queued) if queued else {},
            "active": any(item.status not in FINAL_STATUSES for item in items),
            **compare_pages.list_columns(session, items, q, sort)}


@router.get("/")
async def experiments_page(request: Request, db: DatabaseDep, credentials: UICredentials,
                           status: StatusFilter = "", scope: ScopeFilter = "visible",
                           q: compare_pages.ListSearch = "", sort: compare_pages.ListSort = "-created_at") -> Response:
    return await db.read(lambda session: render(request, "experiments.html", experiments_context(
        session, request, ui_user(session, request, credentials), status, scope, q, sort)))


@router.get("/fragments/experiments")
async def experiments_fragment(request: Request, db: DatabaseDep, credentials: UICredentials,
                               status: StatusFilter = "", scope: ScopeFilter = "visible",
                               q: compare_pages.ListSearch = "", sort: compare_pages.ListSort = "-created_at") -> Response:
    """The experiments table alone, polled by the list page while any is active."""
    return await db.read(lambda session: render(request, "_experiments_table.html", experiments_context(
        session, request, ui_user(session, request, credentials), status, scope, q, sort)))


def experiment_context(request: Request, session: Session, experiment: Experiment, user: User) -> dict[str, Any]:
    detail = views.experiment_detail(request, experiment)
    runs, live_charts = live.run_rows(session, experiment)
    result = session.get(Result, experiment.id)
    tables = comparison = partial = None
    if result is not None:
        tables = [display_table(name, result.results["tables"][name]) for name in PAPER_TABLES + ("sweep",)
                  if name in result.results.get("tables", {})]
        if result.results.get("partial"):  # a cancelled experiment, or one with failed runs: what is in, what not
            partial = {"included": result.results.get("runs_included") or [],
                       "missing": result.results.get("runs_missing") or []}
        comparison = result_service.paper_comparison(session, experiment, "json")
    stored_figures = [views.figure_out(request, artifact).name for artifact in result_service.artifacts_page(
        session, experiment, Page.first(), result_service.FIGURES_PREFIX)[0]]
    vectors = {name for name in stored_figures if name.endswith(".svg")}
    figures = [{"name": name, "svg": svg if (svg := name.removesuffix(".png") + ".svg") in vectors else None}
               for name in stored_figures if not name.endswith(".svg")]
    analyses = [views.analysis_out(request, analysis)
                for analysis in analysis_service.analyses_page(session, experiment, Page.first())[0]]
    return {
        "experiment": detail,
        "may_change": experiment_service.may_change(user, experiment.owner_id),
        "edit_form": forms.EditForm.of(detail.name, detail.tags, detail.visibility), "edit_errors": {},
        "ahead": queries.runs_ahead(session, [experiment.id]).get(experiment.id),
        "runs": runs, "live_charts": live_charts,
        "tables": tables, "partial": partial, "comparison": comparison, "figures": figures, "analyses": analyses,
        "analysis_form": forms.AnalysisForm.from_spec(experiment.spec.get("analysis", {})),
        "paper_comparison_note": PAPER_COMPARISON_NOTE,
        "analysis_errors": {}, "method1_thresholds": list(METHOD1_THRESHOLDS),
        "method2_cuts": list(METHOD2_CUTS),
    }


@router.get("/experiments/{experiment_id}")
async def experiment_page(experiment_id: ExperimentId, request: Request, db: DatabaseDep,
                          credentials: UICredentials) -> Response:
    def page(session: Session) -> Response:
        experiment = ui_readable(session, request, credentials, experiment_id)
        return render(request, "experiment.html",
                      experiment_context(request, session, experiment, request.state.ui_user))

    return await db.read(page)


@router.get("/experiments/{experiment_id}/progress")
async def progress_fragment(experiment_id: ExperimentId, request: Request, db: DatabaseDep,
                            credentials: UICredentials) -> Response:
    """The progress of an active experiment, polled by its page; once it has ended,
    the page reloads (HX-Refresh) to show its results."""

    def fragment(session: Session) -> Response:
        experiment = ui_readable(session, request, credentials, experiment_id)
        if experiment.status in FINAL_STATUSES:
            return Response(status_code=200, headers={"HX-Refresh": "true"})
        detail = views.experiment_detail(request, experiment)
        ahead = queries.runs_ahead(session, [experiment.id]).get(experiment.id)
        runs, live_charts = live.run_rows(session, experiment)  # the title's status and the runs table, oob
        return render(request, "_progress.html", {"experiment": detail, "ahead": ahead, "fragment": True,
                                                  "runs": runs, "live_charts": live_charts})

    return await db.read(fragment)


@router.get("/experiments/{experiment_id}/runs/{run_id}/log")
async def run_log_page(experiment_id: ExperimentId, run_id: str, request: Request, db: DatabaseDep,
                       credentials: UICredentials) -> Response:
    """A run's log (GET /v1/.../runs/{run_id}/log) and the code version that trained it."""

    def page(session: Session) -> Response:
        experiment = ui_readable(session, request, credentials, experiment_id)
        run, run_log = live.run_and_log(session, experiment, run_id)
        return render(request, "run_log.html", {"experiment": experiment, "run": run, "log": run_log})

    return await db.read(page)


def csv_response(text: str) -> Response:
    return PlainTextResponse(text, media_type="text/csv; charset=utf-8")


@router.get("/experiments/{experiment_id}/tables/{table}.csv")
async def table_csv(experiment_id: ExperimentId, request: Request, db: DatabaseDep, credentials: UICredentials,
                    table: Literal[TABLES]) -> Response:  # type: ignore[valid-type]
    def download(session: Session) -> Response:
        experiment = ui_readable(session, request, credentials, experiment_id)
        text = result_service.results_document(session, experiment, "csv", table)
        assert isinstance(text, str)  # CSV: text, not the JSON document
        response = csv_response(text)
        response.headers["Content-Disposition"] = f'attachment; filename="{experiment.name}-{table}.csv"'
        return response

    return await db.read(download)


@router.get("/experiments/{experiment_id}/paper-comparison.csv")
async def paper_comparison_csv(experiment_id: ExperimentId, request: Request, db: DatabaseDep,
                               credentials: UICredentials) -> Response:
    def download(session: Session) -> Response:
        experiment = ui_readable(session, request, credentials, experiment_id)
        text = result_service.paper_comparison(session, experiment, "csv")
        assert isinstance(text, str)  # CSV: text, not the JSON document
        response = csv_response(text)
        response.headers["Content-Disposition"] = f'attachment; filename="{experiment.name}-paper-comparison.csv"'
        return response

    return await db.read(download)


@router.get("/experiments/{experiment_id}/figures/{name}")
async def figure(name: str, experiment_id: ExperimentId, request: Request, db: DatabaseDep,
                 credentials: UICredentials, storage: StorageDep) -> Response:
    artifact = await db.read(lambda session: result_service.figure_artifact(
        session, ui_readable(session, request, credentials, experiment_id), name, encoded_slash(request)))
    return await file_response(request, storage, artifact)


@router.post("/experiments/{experiment_id}/cancel", dependencies=[CsrfChecked])
async def cancel(experiment_id: ExperimentId, request: Request, db: DatabaseDep, credentials: UICredentials,
                 settings: SettingsDep, dispatcher: DispatcherDep, cache: StatusCacheDep) -> Response:
    await db.write(lambda session: experiment_service.cancel(
        session, ui_user(session, request, credentials), experiment_id, settings, dispatcher, cache))
    return RedirectResponse(f"/ui/experiments/{experiment_id}", status_code=303)


@router.post("/experiments/{experiment_id}/delete", dependencies=[CsrfChecked])
async def delete(experiment_id: ExperimentId, db: DatabaseDep, user: UIUser, settings: SettingsDep,
                 dispatcher: DispatcherDep, storage: StorageDep, cache: StatusCacheDep) -> Response:
    await experiment_service.remove(db, storage, user, experiment_id, settings, dispatcher, cache)
    return RedirectResponse("/ui/", status_code=303)


@router.post("/experiments/{experiment_id}/edit", dependencies=[CsrfChecked])
async def edit(request: Request, experiment: UIOwnedExperiment, db: DatabaseDep,
               cache: StatusCacheDep) -> Response:
    """Rename it, replace its tags or change its visibility: what PATCH
    /v1/experiments/{id} does (owner or admin); a refused value (422) is shown next
    to its field."""
    form = forms.EditForm.from_form(await request.form())
    try:
        body = validated(schemas.ExperimentPatch, form.body())
        experiment_service.check_patch(body)
        await db.write(lambda session: experiment_service.update(session, experiment.id, body, cache))
    except (RequestValidationError, Invalid) as error:
        errors = form.errors(forms.field_errors(await api_error_body(request, error)))

        def page(session: Session) -> Response:
            current = readable_experiment(session, request.state.ui_user, experiment.id)
            context = experiment_context(request, session, current, request.state.ui_user)
            context.update(edit_form=form, edit_errors=errors)
            return render(request, "experiment.html", context, 422)

        return await db.read(page)
    return RedirectResponse(f"/ui/experiments/{experiment.id}", status_code=303)


@router.post("/experiments/{experiment_id}/analyses", dependencies=[CsrfChecked])
async def reanalyse(request: Request, experiment: UIOwnedExperiment, db: DatabaseDep, settings: SettingsDep,
                    dispatcher: DispatcherDep) -> Response:
    """Queue a re-analysis; invalid values or a conflict (409) are shown next to
    the form's fields."""
    form = forms.AnalysisForm.from_form(await request.form())
    try:
        body = validated(AnalysisSpec, form.body())
        await db.write(lambda session: analysis_service.queue_analysis(session, experiment.id, body, settings,
                                                                       dispatcher))
    except (RequestValidationError, Invalid, Conflict) as error:
        errors = forms.form_errors(forms.field_errors(await api_error_body(request, error)), forms.ANALYSIS_FIELDS)
        status = 409 if isinstance(error, Conflict) else 422

        def page(session: Session) -> Response:
            current = readable_experiment(session, request.state.ui_user, experiment.id)
            context = experiment_context(request, session, current, request.state.ui_user)
            context.update(analysis_form=form, analysis_errors=errors)
            return render(request, "experiment.html", context, status)

        return await db.read(page)
    return RedirectResponse(f"/ui/experiments/{experiment.id}#analyses", status_code=303)


# ----------------------------------------------------------------------------- submit


def model_names() -> dict[str, str]:
    return {name: model.display_name for name, model in MODELS.items()}


def submit_context(form: forms.SubmitForm, errors: dict[str, list[str]],
                   preview: dict[str, Any] | None) -> dict[str, Any]:
    return {"form": form, "errors": errors, "preview": preview, "hints": form.preset_hints(),
            "presets": list(PRESETS), "models": list(MODELS), "datasets": list(DATASETS),
            "model_names": model_names(), "sweepable": sweepable_fields(), "priorities": list(get_args(Priority))}


PREVIEW_RUNS = 60  # run ids listed in the preview; more are counted


def spec_preview(form: forms.SubmitForm, settings: Settings) -> dict[str, Any]:
    """The spec the form would submit and the runs it would make (each with its sweep
    point's values); the API's validation errors (and this server's limits), or a
    pasted JSON that is no object, as exceptions."""
    spec = experiment_service.checked_spec(validated(schemas.ExperimentSubmit, form.body()), settings)
    runs, points = spec.runs(), {point.index: point.values for point in spec.points()}
    listed = [{"id": key.run_id, "point": points.get(key.point) if key.point is not None else None}
              for key in runs[:PREVIEW_RUNS]]
    return {"spec": spec.model_dump(mode="json"), "runs": len(runs), "run_list": listed,
            "more_runs": max(0, len(runs) - PREVIEW_RUNS)}


async def form_errors_of(request: Request, form: forms.SubmitForm, error: Exception) -> dict[str, list[str]]:
    if isinstance(error, forms.SpecJsonError):
        return {forms.SPEC_JSON: [str(error)]}
    return form.errors(forms.field_errors(await api_error_body(request, error)))


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
    except (RequestValidationError, ServiceError, forms.SpecJsonError) as error:
        preview, errors = None, await form_errors_of(request, form, error)
    return render(request, "_submit_form.html", submit_context(form, errors, preview))


@router.post("/submit", dependencies=[CsrfChecked])
async def submit(request: Request, db: DatabaseDep, settings: SettingsDep, dispatcher: DispatcherDep,
                 user: UIUser) -> Response:
    form = forms.SubmitForm.from_form(await request.form())
    try:
        body = validated(schemas.ExperimentSubmit, form.body())
        created = await experiment_service.submit(db, settings, dispatcher, user, body)
    except (RequestValidationError, ServiceError, forms.SpecJsonError) as error:
        status_code = error.status if isinstance(error, ServiceError) else 422
        context = submit_context(form, await form_errors_of(request, form, error), None)
        return render(request, "submit.html", context, status_code)
    return RedirectResponse(f"/ui/experiments/{created.id}", status_code=303)


# ----------------------------------------------------------------------------- ensembles


def _first(choices: list[Any], wanted: Any) -> Any:
    return wanted if wanted in choices else (choices[0] if choices else None)


@router.get("/experiments/{experiment_id}/ensembles")
async def explorer(
    experiment_id: ExperimentId, request: Request, db: DatabaseDep, credentials: UICredentials,
    storage: StorageDep,
    model: Annotated[str | None, Query()] = None, dataset: Annotated[str | None, Query()] = None,
    run_id: Annotated[str | None, Query()] = None,
    layer: Annotated[int, Query(ge=1, le=result_service.MAX_LAYER)] = 1,
    class_index: Annotated[int, Query(ge=0, le=MAX_CLASS)] = 0,
    method: Annotated[result_service.Method, Query()] = "method1",  # the paper's tables are Method 1's
    quantile: Annotated[float | None, Query(gt=0, lt=1)] = None,
    other: Annotated[int | None, Query(ge=0, le=MAX_CLASS)] = None,
) -> Response:
    """A run's ensemble of one class in one layer by one method: its units on the
    layer's grid, shaded by their mean activity over the class's analysed images,
    and the units it shares with another class's ensemble. The query parameters
    are the ensembles endpoint's (run_id, layer, class_index, method, quantile),
    so an address of one works on the other. The rows are read in a unit; the
    stored representations after it, under a storage slot."""

    def rows(session: Session) -> tuple[dict[str, Any], Any, Artifact | None]:
        experiment = ui_readable(session, request, credentials, experiment_id)
        return explorer_rows(session, experiment, model, dataset, run_id, layer, class_index, method, quantile,
                             other)

    context, document, artifact = await db.read(rows)
    if document is None:
        return render(request, "explorer.html", context)
    units = {record.class_index: record.units for record in document.ensembles}
    chosen = units.get(class_index, [])
    overlaps = {c: len(set(chosen) & set(u)) for c, u in units.items() if c != class_index}
    if other is None or other == class_index:
        other = max(overlaps, key=lambda c: (overlaps[c], -c)) if overlaps else None
    mean, mean_error = None, None
    if artifact is None:
        mean_error = "this run's representations are not stored"
    else:
        run, analysis = context["run"], context["experiment"].spec.get("analysis", {})
        try:
            means = await storage.run(class_means.get, artifact.key, artifact.sha256, run.unseen_class,
                                      bool(analysis.get("correct_only", True)), n_classes(run.dataset))
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
    return await run_in_threadpool(render, request, "explorer.html", context)


def class_labels(names: list[str]) -> list[str]:
    """A class's label in the explorer: its index, and its name where that is not
    the index again (MNIST's "3", Fashion-MNIST's "3 · Dress")."""
    return [name if name == str(index) else f"{index} · {name}" for index, name in enumerate(names)]


def explorer_rows(session: Session, experiment: Experiment, model: str | None, dataset: str | None,
                  run_id: str | None, layer: int, class_index: int, method: str,
                  quantile: float | None, other: int | None = None) -> tuple[dict[str, Any], Any, Artifact | None]:
    """The explorer's page context, the chosen run's ensembles document (None: no
    run, or none for this layer and method) and its representations' artifact.
    Raises Invalid (422) for a class the data set lacks or a layer the network lacks."""
    spec = experiment.spec
    analysis = spec.get("analysis", {})
    runs = list(session.scalars(
        select(Run).options(load_only(Run.run_id, Run.model, Run.dataset, Run.seed, Run.unseen_class))
        .where(Run.experiment_id == experiment.id, Run.status == "succeeded").order_by(Run.id)
    ))
    context: dict[str, Any] = {"experiment": experiment, "runs": [], "found": False,
                               "uploaded": experiment_kind(spec) == REPRESENTATIONS_KIND}
    if context["uploaded"]:  # no run of fflab's own to draw: the page says where to read them
        return context, None, None
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
    labels = class_labels(class_names(dataset) if dataset else [str(c) for c in range(10)])
    layers = list(range(1, spec.get("network", {}).get("layers", 1) + 1))
    problems = [{"loc": ("query", name), "msg": f"{dataset} has classes 0 to {len(labels) - 1}", "type": "less_than",
                 "ctx": {"lt": len(labels)}, "input": given}
                for name, given in (("class_index", class_index), ("other", other))
                if given is not None and given >= len(labels)]
    if layer > len(layers):
        problems.append({"loc": ("query", "layer"), "msg": f"the network has layers 1 to {len(layers)}",
                         "type": "less_than_equal", "ctx": {"le": len(layers)}, "input": layer})
    if problems:  # a class the data set lacks, or a layer the network lacks: said, not shown empty
        raise Invalid(problems)
    context.update(models=models, model=model, datasets=datasets, dataset=dataset, runs=choices,
                   run=run, layers=layers, layer=layer,
                   class_index=class_index, method=method, quantiles=quantiles, quantile=quantile,
                   class_labels=labels, model_names=model_names())
    if run is None:
        return context, None, None
    documents = result_service.ensembles_page(session, experiment, Page.first(), result_service.EnsembleFilters(
        model=None, dataset=None, layer=layer, class_index=None, method=method, quantile=quantile,
        run_id=run.run_id, old_class=None)).runs
    if not documents:
        return context, None, None
    artifact = session.scalar(select(Artifact).where(
        Artifact.experiment_id == experiment.id, Artifact.name == f"runs/{run.run_id}/representations.npz"))
    return context, documents[0], artifact


# ----------------------------------------------------------------------------- a run


@router.get("/experiments/{experiment_id}/runs/{run_id}")
async def run_page(experiment_id: ExperimentId, run_id: str, request: Request, db: DatabaseDep,
                   credentials: UICredentials) -> Response:
    """A run: its documents and the analyses beyond the paper (api.ui.run_page)."""
    from api.ui import run_page as pages

    return await db.read(lambda session: render(request, "run.html", pages.run_context(
        session, ui_readable(session, request, credentials, experiment_id), run_id)))


@router.get("/experiments/{experiment_id}/runs/{run_id}/documents/{document}")
async def run_document(experiment_id: ExperimentId, run_id: str, document: str, request: Request,
                       db: DatabaseDep, credentials: UICredentials, storage: StorageDep) -> Response:
    """A run's stored document, as the API serves it."""
    from api.ui import run_page as pages

    artifact = await db.read(lambda session: pages.document_artifact(
        session, ui_readable(session, request, credentials, experiment_id), run_id, document))
    return await file_response(request, storage, artifact)
