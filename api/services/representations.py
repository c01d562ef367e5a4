"""Uploaded representations (``POST /v1/representations``): a representations file
(docs/representations.md) received as it streams, held to FFLAB_REPRESENTATIONS_MAX_BYTES
while it arrives, validated (``fflab.representations.read_representations``), stored
under its new experiment's prefix and made into an experiment of kind
``representations``, owned by the caller and queued for a worker, which analyses it
as a recorded run (``worker.service.claim_and_analyse``).

A refused upload leaves nothing: the file lives in a temporary folder until it has
passed every check; once stored, a refusal by the caps and quotas (checked under the
lock on the owner's row, as a submission's) or a database failure removes it again."""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from sqlalchemy.orm import Session

from api.services.errors import Invalid, LimitReached, TooLarge, UnsupportedMediaType
from api.services.experiments import Submitted, dispatch, set_tags
from fflab import jobs
from fflab.db import Artifact, User, utcnow
from fflab.pipeline.recorded import representations_spec
from fflab.representations import (
    NotAnNpz,
    Representations,
    RepresentationsError,
    limits_from_settings,
    read_representations,
)
from fflab.settings import Settings
from fflab.storage import UPLOADED_REPRESENTATIONS, Storage, StoredObject, experiment_prefix

if TYPE_CHECKING:
    from api.deps import Database, Files

log = logging.getLogger(__name__)

SETTING = "FFLAB_REPRESENTATIONS_MAX_BYTES"
# Content types a representations file may be sent as (none at all: taken as the file too).
FILE_TYPES = ("application/octet-stream", "application/zip", "application/x-npz", "application/x-zip-compressed")


def too_large(limit: int) -> TooLarge:
    return TooLarge(f"request body too large: the limit is {limit} bytes ({SETTING})")


def check_content_type(content_type: str | None) -> None:
    """UnsupportedMediaType unless the body is sent as a file (``FILE_TYPES``, or no
    Content-Type): a multipart form or a JSON body is not read."""
    if content_type is None:
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media and media not in FILE_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type {media} is not read here: send the .npz file itself as the body, with "
            f"Content-Type: application/octet-stream (name, tags and visibility go in the query string)")


async def receive(chunks: AsyncIterator[bytes], target: Path, limit: int) -> tuple[int, str]:
    """Write the body to ``target`` as it arrives, counting its bytes: TooLarge as
    soon as they pass ``limit`` (nothing beyond it is kept). Returns the size and
    sha256."""
    digest, size = hashlib.sha256(), 0
    with target.open("wb") as out:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            digest.update(chunk)
            out.write(chunk)
    return size, digest.hexdigest()


def refusal_of(error: RepresentationsError) -> Invalid | UnsupportedMediaType:
    """A file that breaks a rule of the format, as the service says it: 415 for one
    that is not an npz archive at all, 422 naming the key and what is allowed."""
    problem = {"type": "not_an_npz" if isinstance(error, NotAnNpz) else "representations",
               "loc": ("body", error.key), "msg": str(error), "ctx": {"expected": error.allowed}}
    if isinstance(error, NotAnNpz):
        return UnsupportedMediaType(f"the body is not a representations file: {error}", [problem])
    return Invalid([problem], f"{error}")


def validated(path: Path, settings: Settings) -> Representations:
    try:
        return read_representations(path, limits_from_settings(settings))
    except RepresentationsError as error:
        raise refusal_of(error) from None


async def upload(db: Database, files: Files, settings: Settings, dispatcher: jobs.Dispatcher, user: User,
                 chunks: AsyncIterator[bytes], declared_length: int | None, content_type: str | None,
                 name: str | None, tags: Sequence[str], visibility: str) -> Submitted:
    """Receive, check, store and queue an uploaded representations file (see the
    module's docstring). TooLarge (413) past FFLAB_REPRESENTATIONS_MAX_BYTES, said by
    Content-Length or counted while the body arrives; UnsupportedMediaType (415) for a
    form or JSON body and for a file that is not an npz; Invalid (422) for an empty
    body and for every other broken rule of the format, naming the key; LimitReached
    (429) past the owner's caps and quotas."""
    limit = settings.representations_max_bytes
    if declared_length is not None and declared_length > limit:
        raise too_large(limit)
    check_content_type(content_type)
    with tempfile.TemporaryDirectory(prefix="fflab-upload-") as tmp:
        path = Path(tmp) / "representations.npz"
        size, sha256 = await receive(chunks, path, limit)
        if size == 0:
            raise Invalid([{"type": "missing", "loc": ("body",), "msg": "the body is empty: send the .npz file"}],
                          "the body is empty: send a representations .npz file as the body")
        representations = await anyio.to_thread.run_sync(validated, path, settings)
        experiment_id = jobs.new_id()
        spec = representations_spec(representations, name or default_name(experiment_id), size, sha256)
        del representations
        key = f"{experiment_prefix(experiment_id)}/{UPLOADED_REPRESENTATIONS}"
        stored = await files.run(lambda storage: storage.put_file(key, path))
    try:
        return await db.write(lambda session: create(session, settings, dispatcher, user.id, experiment_id,
                                                     spec.model_dump(mode="json"), stored, tags, visibility))
    except BaseException:  # refused (quota, cap) or failed: the stored file goes too
        try:
            await files.run(lambda storage: forget(storage, experiment_id))
        except Exception:
            log.warning("could not remove the refused upload of experiment %s", experiment_id, exc_info=True)
        raise


def forget(storage: Storage, experiment_id: str) -> None:
    try:
        storage.delete_prefix(experiment_prefix(experiment_id))
    except Exception:
        log.warning("could not remove the refused upload of experiment %s", experiment_id, exc_info=True)


def default_name(experiment_id: str) -> str:
    """``representations-<UTC minute>-<the id's first characters>``."""
    return f"representations-{utcnow().strftime('%Y%m%dT%H%M')}-{experiment_id[:6]}"


def create(session: Session, settings: Settings, dispatcher: jobs.Dispatcher, user_id: int, experiment_id: str,
           spec: dict[str, Any], stored: StoredObject, tags: Sequence[str], visibility: str) -> Submitted:
    """The write unit of an upload: the experiment, its run, tags and the uploaded
    file's artifact, committed, then dispatched (LimitReached past the owner's caps)."""
    user = session.get(User, user_id)
    assert user is not None  # authenticated in an earlier unit
    try:
        experiment = jobs.create_representations_experiment(session, settings, user, experiment_id, spec,
                                                            visibility, stored.size)
    except jobs.CapacityError as error:
        raise LimitReached(str(error), error.retry_after_s) from None
    set_tags(session, experiment.id, tags)
    session.add(Artifact(experiment_id=experiment.id, name=UPLOADED_REPRESENTATIONS, key=stored.key,
                         size=stored.size, sha256=stored.sha256, content_type="application/octet-stream",
                         created_at=utcnow()))
    created = Submitted(experiment.id, experiment.status, experiment.runs_total, experiment.name)
    session.commit()
    dispatch(session, settings, dispatcher)
    return created
