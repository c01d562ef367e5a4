"""The embedded defaults' files, readable by their owner only.

``var/`` holds the admin key and the SQLite databases (users, key hashes,
experiments, the broker's messages). Every process creates a SQLite file through
``private_sqlite_file`` before SQLite opens it: its folder with mode 0700 and the
file, empty, with mode 0600. SQLite gives its journal, WAL and shared-memory files
the database file's mode.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import make_url

DIR_MODE, FILE_MODE = 0o700, 0o600


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (also kombu's ``sqla+sqlite`` and Celery's
    ``db+sqlite``), or None for another database, a broker or an in-memory database."""
    try:
        parsed = make_url(url)
    except Exception:  # a broker URL that is no database URL (amqp://, memory://)
        return None
    if "sqlite" not in parsed.drivername or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def private_dir(path: Path) -> None:
    """Create ``path`` (mode 0700) and its missing parents, if it does not exist."""
    if not path.is_dir():
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        path.chmod(DIR_MODE)


def private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 (and its folder, 0700), if it does not exist."""
    private_dir(path.parent)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return
    os.close(descriptor)


def private_sqlite_file(url: str) -> None:
    """For a SQLite URL, create its file as ``private_file`` does; else nothing."""
    path = sqlite_path(url)
    if path is not None:
        private_file(path)
