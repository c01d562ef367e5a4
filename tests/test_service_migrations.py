"""Alembic migrations: they build the schema on an empty database, match the
models exactly, and can be applied by several processes at once."""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect
from sqlalchemy.pool import NullPool

from fflab.db import Base
from fflab.db.migrate import alembic_config, upgrade_database

pytest_plugins = ["service_support"]

TABLES = {"users", "api_keys", "experiments", "runs", "results", "ensembles", "analyses", "artifacts", "workers",
          "experiment_tags", "ui_sessions", "idempotency_keys", "run_losses", "run_logs"}


def differences(url: str) -> list:
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def tables(url: str) -> set[str]:
    return set(inspect(create_engine(url, poolclass=NullPool)).get_table_names())


def test_upgrade_head_on_empty_postgresql_matches_the_models(pg_database) -> None:
    url = pg_database()
    assert tables(url) == set()
    command.upgrade(alembic_config(url), "head")
    assert TABLES | {"alembic_version"} == tables(url)
    assert differences(url) == []


def test_concurrent_startups_migrate_once(pg_database) -> None:
    url = pg_database()
    errors: list[BaseException] = []

    def start() -> None:
        try:
            upgrade_database(url)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert differences(url) == []


def test_sqlite_upgrade_matches_the_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fflab.db'}"
    upgrade_database(url)
    upgrade_database(url)  # a second start is a no-op
    assert TABLES <= tables(url)
    assert differences(url) == []
    command.downgrade(alembic_config(url), "base")
    assert tables(url) == {"alembic_version"}
