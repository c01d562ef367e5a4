"""The per-run analyses beyond the paper: one endpoint per document.

Each answers, per finished run matching the filters, the run's document
(``fflab.analysis_results``; schemas in fflab/schemas/<name>.schema.json) with
only the entries of the asked layer. The documents are read from artifact
storage (runs/<run_id>/<name>.json); a run trained before the analyses existed
has none and is left out.
"""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Query, status
from pydantic import BaseModel, Field, create_model
from sqlalchemy.orm import Session

from api.deps import Credentials, DatabaseDep, ExperimentId, StorageDep, authenticated_user, readable_experiment
from api.errors import api_error, problem_responses
from api.schemas import Status
from api.routes.results import DatasetFilter, LayerFilter, ModelFilter, _runs
from fflab.analysis_results import RUN_ANALYSIS_DOCUMENTS, only_layer
from fflab.db import Run
from fflab.storage import StorageError, experiment_prefix

router = APIRouter(prefix="/v1/experiments/{experiment_id}", tags=["analyses beyond the paper"],
                   responses=problem_responses(401, 404, 422, 503))

# Per document: what it answers (the path is its name with dashes).
ENDPOINTS = {
    "layer_accuracy": "Accuracy per layer: from its goodness alone, from the layers up to it (FF, BP/FF), "
                      "and a linear probe (every model).",
    "dynamics": "Ensemble size, overlap with the final ensemble, accuracy and fraction of positive weights at "
                "the training snapshots.",
    "lesions": "Accuracy lost on a class and on the others when its ensemble is silenced, against as many "
               "random and most active non-ensemble units.",
    "selectivity": "Activity of each class's ensemble with the true label vs each wrong label (FF, BP/FF; not "
                   "applicable to BP).",
    "intrinsic_dimension": "TwoNN intrinsic dimension per layer and class, with the ensemble sizes to set it "
                           "against.",
    "subensembles": "Each class's images clustered by their sets of active units: the number of sub-ensembles "
                    "and their sizes.",
}


def read_documents(storage, experiment_id: str, run_ids: list[str], name: str) -> list[dict]:
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


def _add_route(name: str, summary: str) -> None:
    out = create_model(f"{RUN_ANALYSIS_DOCUMENTS[name].__name__}Out", __base__=BaseModel,
                       experiment_id=(str, ...),
                       experiment_status=(Status, Field(description="While queued or running, more runs may come.")),
                       runs=(list[RUN_ANALYSIS_DOCUMENTS[name]], ...))

    async def endpoint(experiment_id: ExperimentId, db: DatabaseDep, credentials: Credentials,
                       storage: StorageDep, model: ModelFilter = None, dataset: DatasetFilter = None,
                       layer: LayerFilter = None, run_id: Annotated[str | None, Query()] = None):
        def runs(session: Session) -> tuple[str, list[str]]:
            experiment = readable_experiment(session, authenticated_user(session, credentials), experiment_id)
            found = _runs(session, experiment, model, dataset, run_id, columns=(Run.run_id,))
            return experiment.status, [run.run_id for run in found]

        experiment_status, run_ids = await db.read(runs)
        # The session is closed: the documents are read from storage without it.
        documents = await storage.run(read_documents, experiment_id, run_ids, name)
        return {"experiment_id": experiment_id, "experiment_status": experiment_status,
                "runs": [only_layer(d, name, layer) for d in documents]}

    endpoint.__name__ = f"get_{name}"
    endpoint.__doc__ = f"{summary} Per finished run (schema: fflab/schemas/{name}.schema.json)."
    router.add_api_route("/" + name.replace("_", "-"), endpoint, methods=["GET"], response_model=out, name=f"get_{name}")


for _name, _summary in ENDPOINTS.items():
    _add_route(_name, _summary)
