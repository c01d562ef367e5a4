"""The scheduling simulation (benchmarks/fair_share_simulation.py): the real
dispatcher against the real database (SQLite and PostgreSQL), fake runs on a
virtual clock. Three users: alice submits 120 runs of 10 minutes, bob and carol
4-run experiments a little later; then weights 2:1:1 with every user backlogged."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.fair_share_simulation import SCENARIOS, backlogged_window, shares, simulate, wait_table

pytest_plugins = ["service_support"]

RUN_LENGTH_S = 600  # alice's runs: the time a busy slot takes to free


def database(backend: str, tmp_path: Path, pg_database, name: str) -> str:
    return f"sqlite:///{tmp_path / name}.db" if backend == "sqlite" else pg_database()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_small_experiments_start_within_a_run_length_and_usage_follows_the_weights(
        backend: str, tmp_path: Path, pg_database) -> None:
    sweep = simulate(database(backend, tmp_path, pg_database, "sweep"), SCENARIOS["sweep"])
    table = wait_table(sweep)
    for user in ("bob", "carol"):  # every run of theirs, not only the first
        assert table[user]["runs"] == 4
        assert table[user]["max"] <= RUN_LENGTH_S, table
    # Nothing starves and no slot idles while work waits: alice's sweep ends within
    # the total work over the 4 workers, plus one run.
    total_work = sum(r.finished_s - r.started_s for r in sweep)
    assert table["alice"]["runs"] == 120 and table["alice"]["done"] <= total_work / 4 + RUN_LENGTH_S

    weighted = simulate(database(backend, tmp_path, pg_database, "weights"), SCENARIOS["weights"])
    start, end = backlogged_window(weighted)
    assert end - start >= 5 * 300  # long enough to measure
    got = shares(weighted, start, end)
    assert got == pytest.approx({"alice": 0.5, "bob": 0.25, "carol": 0.25}, abs=0.03)
    assert all(r.finished_s > 0 for r in weighted)  # every run of every user ran
