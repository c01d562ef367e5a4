"""Alembic environment: the fflab models' metadata and the settings' database URL.

A caller may pass an open connection (``config.attributes["connection"]``, used
by fflab.db.migrate under its lock) or a URL (``config.attributes["url"]``).
"""

from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

from fflab.db.models import Base
from fflab.settings import get_settings

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def database_url() -> str:
    return config.attributes.get("url") or get_settings().resolved_database_url


def run_migrations(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif (connection := config.attributes.get("connection")) is not None:
    run_migrations(connection)
else:
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        run_migrations(connection)
