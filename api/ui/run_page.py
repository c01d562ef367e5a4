"""A run's page in the web UI: its facts, every registered run document and the
analyses beyond the paper, each with whether the run has it, a link to it and
to the experiment's figure of it. The lists come from the run-document registry
(``fflab.pipeline.documents``), so that a registered analysis appears here with
nothing else to write."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException

from api.services.experiments import experiment_run
from fflab.db import Artifact, Experiment
from fflab.pipeline.documents import RUN_DOCUMENTS, run_analyses


def run_context(session: Session, experiment: Experiment, run_id: str) -> dict[str, Any]:
    """What run.html shows: the run, the paper's documents and the analyses, each
    ``{"name", "path", "description", "available", "figure", "layer_fields"}``."""
    run = experiment_run(session, experiment, run_id)
    stored = set(session.scalars(select(Artifact.name).where(
        Artifact.experiment_id == experiment.id,
        (Artifact.name.startswith(f"runs/{run_id}/", autoescape=True)) | Artifact.name.startswith("figures/"))))
    analyses = run_analyses()

    def entry(name: str) -> dict[str, Any]:
        document = RUN_DOCUMENTS[name]
        analysis = analyses.get(name)
        return {"name": name, "path": analysis.path if analysis else name,
                "description": analysis.summary if analysis else document.description,
                "available": f"runs/{run_id}/{document.file}" in stored,
                "figure": f"{name}.png" if f"figures/{name}.png" in stored else None,
                "layer_fields": analysis.layer_fields if analysis else ()}

    return {"experiment": experiment, "run": run,
            "documents": [entry(name) for name in RUN_DOCUMENTS if name not in analyses],
            "analyses": [entry(name) for name in analyses]}


def document_artifact(session: Session, experiment: Experiment, run_id: str, name: str) -> Artifact:
    """The stored document ``name`` of the run; 404 naming the registered ones."""
    experiment_run(session, experiment, run_id)
    if name not in RUN_DOCUMENTS:
        raise HTTPException(404, f"no run document {name}; the registered ones: {', '.join(RUN_DOCUMENTS)}")
    artifact = session.scalar(select(Artifact).where(
        Artifact.experiment_id == experiment.id, Artifact.name == f"runs/{run_id}/{RUN_DOCUMENTS[name].file}"))
    if artifact is None:
        raise HTTPException(404, f"run {run_id} has no {name} document yet")
    return artifact
