"""The service layer (api.services) called as what it is: plain functions over a real
database session, without HTTP. The API's routes and the web UI's pages call these
same functions; their refusals are api.services.errors, which api.errors turns into
problem+json (tests/test_service_contract.py holds the bodies)."""

from __future__ import annotations

from pathlib import Path

import pytest

from api import schemas
from api.services import analyses, experiments, users
from api.services.errors import Forbidden, Invalid, LimitReached, NotFound
from fflab import accounts, jobs
from fflab.db import Analysis, Artifact, get_sessionmaker
from fflab.db.migrate import upgrade_database
from fflab.settings import Settings
from fflab.spec import AnalysisSpec, build_spec

SPEC = {"models": ["ff"], "seeds": [0], "data": {"train_subset": 200, "test_subset": 200}}


@pytest.fixture()
def database(tmp_path: Path):
    """A migrated SQLite database with alice (member), bob (member) and alice's succeeded
    experiment, which stores 1000 bytes."""
    settings = Settings(var_dir=tmp_path)
    upgrade_database(settings.resolved_database_url)
    sessions = get_sessionmaker(settings.resolved_database_url)
    with sessions() as session:
        alice, bob = accounts.create_user(session, "alice"), accounts.create_user(session, "bob")
        experiment = jobs.create_experiment(session, settings, alice, build_spec("quick", SPEC), "private")
        experiment.status = "succeeded"
        session.add(Artifact(experiment_id=experiment.id, name="results.json", key="k", size=1000, sha256="0" * 64,
                             content_type="application/json"))
        session.commit()
        ids = {"alice": alice.id, "bob": bob.id, "experiment": experiment.id}
    return settings, sessions, ids


def test_who_may_read_and_change_an_experiment(database) -> None:
    _settings, sessions, ids = database
    with sessions() as session:
        alice, bob = (session.get(accounts.User, ids[name]) for name in ("alice", "bob"))
        assert experiments.owned_experiment(session, alice, ids["experiment"]).id == ids["experiment"]
        with pytest.raises(NotFound, match=f"no experiment {ids['experiment']}"):  # private: not disclosed
            experiments.readable_experiment(session, bob, ids["experiment"])
        experiments.readable_experiment(session, alice, ids["experiment"]).visibility = "lab"
        assert experiments.readable_experiment(session, bob, ids["experiment"]).id == ids["experiment"]
        with pytest.raises(Forbidden, match="only the experiment's owner or an admin"):
            experiments.owned_experiment(session, bob, ids["experiment"])


def test_a_reanalysis_over_the_storage_quota_is_refused_and_nothing_is_sent(database) -> None:
    """The quota counts the owner's stored bytes (1000): at 1000 a re-analysis is
    refused with the retry hint, and nothing is created or sent (no dispatcher)."""
    settings, sessions, ids = database
    full = settings.model_copy(update={"storage_quota_bytes_per_user": 1000})
    with sessions() as session:
        with pytest.raises(LimitReached, match="storage quota") as refused:
            analyses.queue_analysis(session, ids["experiment"], AnalysisSpec(), full, dispatcher=None)
        assert refused.value.retry_after_s == settings.capacity_retry_after_s
        assert session.query(Analysis).count() == 0


def test_a_submission_past_this_servers_limits_names_each_field(database) -> None:
    settings, _sessions, _ids = database
    narrow = settings.model_copy(update={"max_width": 32, "max_seeds": 1})
    body = schemas.ExperimentSubmit.model_validate({"preset": "quick", "network": {"width": 64}, "seeds": [0, 1]})
    with pytest.raises(Invalid) as refused:
        experiments.checked_spec(body, narrow)
    assert [problem["loc"] for problem in refused.value.problems] == [("body", "network", "width"), ("body", "seeds")]


def test_admin_actions_find_a_user_however_the_name_is_written(database) -> None:
    _settings, sessions, _ids = database
    with sessions() as session:
        share = schemas.UserShareUpdate(share_weight=2.0, max_priority="high")
        assert users.set_share(session, "ALICE", share).name == "alice"
        assert users.issue_key(session, "\uff21lice")[0].share_weight == 2.0
        with pytest.raises(NotFound, match="no user carol"):
            users.set_share(session, "carol", share)
        with pytest.raises(Invalid):  # a whole key in a URL
            users.check_key_prefix(users.issue_key(session, "bob")[1])
