"""Apply the Alembic migrations, safely when several processes start at once."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from filelock import FileLock
from sqlalchemy import text
from sqlalchemy.engine import make_url

from fflab.db.session import get_engine
from fflab.var_dir import private_file, private_sqlite_file

REPO_ROOT = Path(__file__).resolve().parents[3]
# Any constant shared by every process of the deployment; "FFLAB" in ASCII.
ADVISORY_LOCK_ID = 0x4646_4C41_42


def alembic_config(url: str | None = None) -> Config:
    """The repository's alembic.ini, pointed at ``url`` (default: the settings' database)."""
    config = Config(str(REPO_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(REPO_ROOT / "migrations"))
    config.attributes["configure_logging"] = False  # leave the host process's logging alone
    if url is not None:
        config.attributes["url"] = url
    return config


def upgrade_database(url: str) -> None:
    """``alembic upgrade head``. PostgreSQL: under an advisory lock, so that API and
    worker processes starting together migrate one after the other; SQLite: under a
    file lock beside the database file."""
    config = alembic_config(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        with get_engine(url).connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": ADVISORY_LOCK_ID})
            connection.commit()
            try:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
                connection.commit()
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": ADVISORY_LOCK_ID})
                connection.commit()
        return
    private_sqlite_file(url)  # owner only, before SQLite creates it
    get_engine(url)
    lock_path = Path(f"{parsed.database}.migrate.lock") if parsed.database else None
    if lock_path is None or parsed.database == ":memory:":
        command.upgrade(config, "head")
        return
    private_file(lock_path)
    with FileLock(lock_path, mode=0o600):  # the API and workers starting at once migrate one at a time
        command.upgrade(config, "head")
