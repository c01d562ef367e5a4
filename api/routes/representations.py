"""Upload a representations file recorded elsewhere, to be analysed as an experiment
of kind ``representations``: HTTP in and out; the rules are
``api.services.representations``'s."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from api import schemas, views
from api.deps import CurrentUser, DatabaseDep, DispatcherDep, SettingsDep, StorageDep
from api.errors import problem_responses
from api.services import representations

router = APIRouter(prefix="/v1/representations", tags=["representations"], responses=problem_responses(401, 422))

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=schemas.ExperimentCreated,
             responses=problem_responses(401, 413, 415, 422, 429, 503),
             openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": {
                 "schema": {"type": "string", "format": "binary"}}},
                 "description": "The representations file (.npz, docs/representations.md) itself as the body."}})
async def upload_representations(
    request: Request, response: Response, db: DatabaseDep, settings: SettingsDep, dispatcher: DispatcherDep,
    storage: StorageDep, user: CurrentUser,
    name: Annotated[str | None, Query(min_length=1, max_length=64, pattern=NAME_PATTERN, description=(
        "The experiment's name (default: representations-<UTC minute>-<id>)."))] = None,
    tag: Annotated[list[schemas.Tag] | None, Query(max_length=schemas.MAX_TAGS, description=(
        "A tag (repeat the parameter for several)."))] = None,
    visibility: Annotated[schemas.Visibility, Query(description="lab: every user may read and list it.")] = "private",
) -> schemas.ExperimentCreated:
    """Analyse a network's representations recorded elsewhere (a representations
    file, docs/representations.md): the .npz file is the raw body
    (``Content-Type: application/octet-stream``), at most FFLAB_REPRESENTATIONS_MAX_BYTES
    (413 past it, counted as it arrives); 415 for a body that is not an npz archive
    (or a form or JSON body), 422 naming the key and what is allowed for any other
    broken rule of the format (shapes, N, NaN, the server's limits on units and
    images, a class without an image, object arrays); 429 past the caller's caps and
    storage quota. It becomes an experiment of kind ``representations`` with one run
    that a worker analyses (no training): follow and read it with the experiment
    routes."""
    length = request.headers.get("content-length")
    created = await representations.upload(
        db, storage, settings, dispatcher, user, request.stream(),
        int(length) if length is not None and length.isascii() and length.isdigit() else None,
        request.headers.get("content-type"),
        name, tuple(tag or ()), visibility)
    url = views.experiment_url(request, created.id)
    response.headers["Location"] = url
    return schemas.ExperimentCreated(id=created.id, url=url, status=schemas.stored_status(created.status),
                                     runs_total=created.runs_total, name=created.name)
