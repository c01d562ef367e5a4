"""Database models, sessions and migrations of the service."""

from fflab.db.models import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    ROLES,
    STATUSES,
    VISIBILITIES,
    Analysis,
    ApiKey,
    Artifact,
    Base,
    Ensemble,
    Experiment,
    Result,
    Run,
    User,
    Worker,
    utcnow,
)
from fflab.db.session import get_engine, get_sessionmaker, session_scope

__all__ = [
    "ACTIVE_STATUSES",
    "FINAL_STATUSES",
    "ROLES",
    "STATUSES",
    "VISIBILITIES",
    "Analysis",
    "ApiKey",
    "Artifact",
    "Base",
    "Ensemble",
    "Experiment",
    "Result",
    "Run",
    "User",
    "Worker",
    "get_engine",
    "get_sessionmaker",
    "session_scope",
    "utcnow",
]
