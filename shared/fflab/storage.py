"""Artifact storage: a local folder by default, an S3 bucket when configured.

Keys are relative POSIX paths such as ``experiments/<id>/runs/<run_id>/weights.pt``.
The database keeps each artifact's key, size and sha256 (fflab.db.Artifact);
this module only moves bytes.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from fflab.settings import Settings

CHUNK = 1 << 20


class StorageError(RuntimeError):
    """The storage backend is unreachable or refused an operation."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    sha256: str


def check_key(key: str) -> str:
    """Reject keys that could leave the storage root: absolute, ``..``, backslashes, empty parts."""
    parts = key.split("/")
    control = any(ord(c) < 32 or ord(c) == 127 for c in key)
    if (not key or control or key.startswith("/") or "\\" in key or ":" in parts[0]
            or any(p in ("", ".", "..") for p in parts)):
        raise ValueError(f"invalid storage key {key!r}: must be a relative path without '..'")
    return key


def file_digest(path: Path) -> StoredObject:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return StoredObject("", size, digest.hexdigest())


class LocalStorage:
    def __init__(self, root: Path):
        self.root = root

    def _path(self, key: str) -> Path:
        path = self.root / PurePosixPath(check_key(key))
        # Defence in depth: a symlink inside the folder must not lead out of it either.
        root = self.root.resolve()
        if not path.resolve().is_relative_to(root):
            raise ValueError(f"invalid storage key {key!r}: leaves the storage root")
        return path

    def describe(self) -> str:
        return f"folder {self.root}"

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StorageError(f"artifact folder {self.root} is not usable: {error}") from error

    def put_file(self, key: str, source: Path) -> StoredObject:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(source, partial)
        partial.replace(target)
        stored = file_digest(target)
        return StoredObject(key, stored.size, stored.sha256)

    def download(self, key: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._path(key), target)

    def iter_bytes(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The object's bytes, or those from ``start`` to ``end`` inclusive."""
        with self._path(key).open("rb") as handle:
            handle.seek(start)
            left = None if end is None else end - start + 1
            while (left is None or left > 0) and (chunk := handle.read(CHUNK if left is None else min(CHUNK, left))):
                if left is not None:
                    left -= len(chunk)
                yield chunk

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix.rstrip("/"))
        if not base.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix.rstrip("/")), ignore_errors=True)


class S3Storage:
    def __init__(self, settings: Settings):
        import boto3
        from botocore.config import Config

        self.bucket = str(settings.s3_bucket)
        self.endpoint = settings.s3_endpoint_url
        self.client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=settings.s3_secret_access_key,
            region_name=settings.s3_region,
            config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5),
        )

    def describe(self) -> str:
        return f"s3://{self.bucket}" + (f" at {self.endpoint}" if self.endpoint else "")

    def _call(self, what: str, function: Callable[..., Any], **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return function(Bucket=self.bucket, **kwargs)
        except (BotoCoreError, ClientError) as error:
            raise StorageError(f"{what} on {self.describe()} failed: {error}") from error

    def check(self) -> None:
        self._call("head_bucket", self.client.head_bucket)

    def put_file(self, key: str, source: Path) -> StoredObject:
        stored = file_digest(source)
        with source.open("rb") as body:
            self._call("put_object", self.client.put_object, Key=check_key(key), Body=body,
                       Metadata={"sha256": stored.sha256})
        return StoredObject(key, stored.size, stored.sha256)

    def download(self, key: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as handle:
            for chunk in self.iter_bytes(key):
                handle.write(chunk)

    def iter_bytes(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The object's bytes, or those from ``start`` to ``end`` inclusive."""
        ranged = {} if start == 0 and end is None else {"Range": f"bytes={start}-{'' if end is None else end}"}
        response = self._call("get_object", self.client.get_object, Key=check_key(key), **ranged)
        yield from response["Body"].iter_chunks(CHUNK)

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        token: dict[str, str] = {}
        while True:
            page = self._call("list_objects_v2", self.client.list_objects_v2,
                              Prefix=prefix, **token)
            keys += [item["Key"] for item in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return sorted(keys)
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def exists(self, key: str) -> bool:
        return key in self.list(check_key(key))

    def delete(self, key: str) -> None:
        self._call("delete_object", self.client.delete_object, Key=check_key(key))

    def delete_prefix(self, prefix: str) -> None:
        keys = self.list(prefix.rstrip("/") + "/")
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            self._call("delete_objects", self.client.delete_objects,
                       Delete={"Objects": batch, "Quiet": True})


# --------------------------------------------------------------------------- disk space
#
# A full disk must fail a run while there is still room to record why: SQLite (the
# embedded default) and the broker live in the var dir, local artifacts in the
# artifact folder, and runs train in the temporary folder. Each must keep
# FFLAB_MIN_FREE_DISK_BYTES free: below it /readyz answers 503, a run does not start,
# and a running run fails at its next free-space check (between epochs, before its
# upload) with a LowDisk error.


class LowDisk(RuntimeError):
    """A folder the service writes to has less free space than FFLAB_MIN_FREE_DISK_BYTES
    (or cannot be written). Fails a run for good: retrying fills the disk again."""


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (a folder not created yet)."""
    path = Path(path).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_folders(settings: Settings) -> dict[str, Path]:
    """The folders of this machine the service writes to, by role: one per file
    system (the first role named keeps it)."""
    folders = {"var dir": settings.var_dir, "temporary folder": Path(tempfile.gettempdir())}
    if not settings.s3_bucket:
        folders["artifact folder"] = settings.resolved_artifacts_dir
    seen: dict[int, str] = {}
    kept: dict[str, Path] = {}
    for role, folder in folders.items():
        device = _existing(folder).stat().st_dev
        if device in seen:
            continue
        seen[device] = role
        kept[role] = Path(folder).resolve()
    return kept


def free_bytes(folder: Path) -> int:
    """Bytes free to this (unprivileged-or-not) process on ``folder``'s file system."""
    return shutil.disk_usage(_existing(folder)).free


def _mib(count: int) -> str:
    return f"{count / 2**20:.1f} MiB"


def disk_problems(settings: Settings) -> list[str]:
    """Why a folder of ``disk_folders`` is short of space, one line each; [] when
    all keep FFLAB_MIN_FREE_DISK_BYTES free (or the floor is 0)."""
    floor = settings.min_free_disk_bytes
    if floor <= 0:
        return []
    problems = []
    for role, folder in disk_folders(settings).items():
        free = free_bytes(folder)
        if free < floor:
            problems.append(f"the {role} {folder} has {_mib(free)} free, below the floor of {_mib(floor)} "
                            f"(FFLAB_MIN_FREE_DISK_BYTES)")
    return problems


def check_disk(settings: Settings, when: str) -> None:
    """Raise LowDisk, saying ``when`` (\"before it started\"), if a folder is short of space."""
    problems = disk_problems(settings)
    if problems:
        raise LowDisk(f"low disk space {when}: " + "; ".join(problems) + ". Free space (delete experiments "
                      "or files) and submit again")


def write_probe(folder: Path, size: int = 4096) -> None:
    """Write, fsync and remove a small file in ``folder``: OSError (ENOSPC, EROFS,
    EACCES) when the folder cannot take a write now."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(prefix=".fflab-probe-", dir=folder)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(b"\0" * size)
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        os.unlink(name)


def disk_report(settings: Settings) -> tuple[bool, dict[str, dict[str, Any]]]:
    """For /readyz: each folder's free bytes and whether a write probe succeeded;
    False when one is below the floor or refused the probe."""
    report: dict[str, dict[str, Any]] = {}
    ok = True
    for role, folder in disk_folders(settings).items():
        entry: dict[str, Any] = {"path": str(folder), "free_bytes": free_bytes(folder),
                       "min_free_bytes": settings.min_free_disk_bytes, "write": "ok"}
        try:
            write_probe(folder)
        except OSError as error:
            entry["write"] = f"failed: {errno.errorcode.get(error.errno or 0, 'error')}: {error.strerror or error}"
            ok = False
        if settings.min_free_disk_bytes and entry["free_bytes"] < settings.min_free_disk_bytes:
            ok = False
        report[role] = entry
    return ok, report


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) is "No space left on device" / over quota."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "database or disk is full" in str(cause):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


Storage = LocalStorage | S3Storage


def get_storage(settings: Settings) -> Storage:
    if settings.s3_bucket:
        return S3Storage(settings)
    return LocalStorage(settings.resolved_artifacts_dir)


CONTENT_TYPES = {
    ".png": "image/png", ".svg": "image/svg+xml", ".json": "application/json", ".csv": "text/csv; charset=utf-8",
    ".md": "text/markdown; charset=utf-8", ".txt": "text/plain; charset=utf-8",
}


def content_type(name: str) -> str:
    """The media type of a stored file by its name; application/octet-stream for
    anything else (weights.pt, representations.npz, checkpoint.pt: Python's
    mimetypes would call .pt an SNES page table)."""
    base = name.rsplit("/", 1)[-1]
    suffix = base[base.rfind("."):].lower() if "." in base else ""
    return CONTENT_TYPES.get(suffix, "application/octet-stream")


def experiment_prefix(experiment_id: str) -> str:
    return f"experiments/{experiment_id}"


# An uploaded representations file (POST /v1/representations), under its experiment's
# prefix and an artifact of it by this name.
UPLOADED_REPRESENTATIONS = "upload/representations.npz"
