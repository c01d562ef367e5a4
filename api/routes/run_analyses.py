"""The per-run analyses beyond the paper: one endpoint per registered analysis,
generated from the registry (``fflab.pipeline.documents.run_analyses()``) when
the app is created, so that an analysis registered there is served here with
nothing else to write.

``GET /v1/experiments/{id}/<name with dashes>`` answers, per finished run
matching the filters, a page of runs at a time (``limit``, ``page_token``), the
run's document (its module in ``fflab.pipeline.run_analyses``; schemas in
fflab/schemas/<name>.schema.json) with only the entries of the asked layer. A
layer the experiment's networks do not have, or a layer filter on an analysis
that is not per layer, is a 422 naming ``query.layer`` and the allowed layers.
The documents are read from artifact storage (runs/<run_id>/<name>.json); a run
trained before an analysis existed has none and is left out of its page.
"""

from __future__ import annotations

import json
from types import GenericAlias
from typing import Annotated, Any

from fastapi import APIRouter, Query, status
from pydantic import BaseModel, Field, create_model
from sqlalchemy.orm import Session

from api.deps import Credentials, DatabaseDep, ExperimentId, StorageDep, authenticated_user
from api.errors import api_error, problem_responses
from api.paging import Page, page_params
from api.per_run import check_layer_filter, page_of_runs
from api.routes.results import DatasetFilter, LayerFilter, ModelFilter
from api.schemas import Status
from api.services.experiments import readable_experiment
from fflab.pipeline.documents import RunAnalysis, run_analyses
from fflab.storage import Storage, StorageError, experiment_prefix

TAG = "analyses beyond the paper"
RunIdFilter = Annotated[str | None, Query(max_length=128)]


def read_documents(storage: Storage, experiment_id: str, run_ids: list[str], name: str) -> list[dict[str, Any]]:
    documents = []
    for run_id in run_ids:
        key = f"{experiment_prefix(experiment_id)}/runs/{run_id}/{name}.json"
        try:
            if not storage.exists(key):
                continue
            documents.append(json.loads(b"".join(storage.iter_bytes(key))))
        except (StorageError, FileNotFoundError):
            raise api_error(status.HTTP_503_SERVICE_UNAVAILABLE,
                            f"the {name} document of run {run_id} is recorded but storage cannot deliver it",
                            "unavailable", headers={"Retry-After": "5"}) from None
    return documents


def response_model(analysis: RunAnalysis) -> type[BaseModel]:
    runs: Any = GenericAlias(list, (analysis.model,))  # list[analysis.model], a model known at run time
    return create_model(
        f"{analysis.model.__name__}Out", __base__=BaseModel,
        experiment_id=(str, ...),
        experiment_status=(Status, Field(description="While queued or running, more runs may come.")),
        runs=(runs, ...),
        next_page_token=(str | None, Field(description="Pass it as page_token for the next page; null on the last.")),
    )


def add_route(router: APIRouter, analysis: RunAnalysis) -> None:
    name = analysis.name

    async def endpoint(experiment_id: ExperimentId, db: DatabaseDep, credentials: Credentials,
                       storage: StorageDep, page: Annotated[Page, page_params()], model: ModelFilter = None,
                       dataset: DatasetFilter = None, layer: LayerFilter = None,
                       run_id: RunIdFilter = None) -> dict[str, Any]:
        def runs(session: Session) -> tuple[str, list[str], str | None]:
            experiment = readable_experiment(session, authenticated_user(session, credentials), experiment_id)
            check_layer_filter(experiment, layer, analysis)
            runs, next_token = page_of_runs(session, experiment, page, model, dataset, run_id)
            return experiment.status, [run.run_id for run in runs], next_token

        experiment_status, run_ids, next_token = await db.read(runs)
        # The session is closed: the documents are read from storage without it.
        documents = await storage.run(read_documents, experiment_id, run_ids, name)
        return {"experiment_id": experiment_id, "experiment_status": experiment_status,
                "runs": [analysis.only_layer(d, layer) for d in documents], "next_page_token": next_token}

    layers = (f" The layer filter keeps the entries of {', '.join(analysis.layer_fields)} of that layer."
              if analysis.per_layer else " Not per layer: no layer filter.")
    endpoint.__name__ = f"get_{name}"
    endpoint.__doc__ = (f"{analysis.summary} Per finished run, a page of runs at a time (schema: "
                        f"fflab/schemas/{name}.schema.json).{layers}")
    router.add_api_route("/" + analysis.path, endpoint, methods=["GET"], response_model=response_model(analysis),
                         name=f"get_{name}")


def analysis_router() -> APIRouter:
    """The endpoints of every analysis registered now (``create_app`` calls it)."""
    router = APIRouter(prefix="/v1/experiments/{experiment_id}", tags=[TAG],
                       responses=problem_responses(401, 404, 422, 503))
    for analysis in run_analyses().values():
        add_route(router, analysis)
    return router
