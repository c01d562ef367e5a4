"""The record of FF's full-scale runs per setting and the comparison drawn from it
(benchmarks/full_scale_settings.py, docs/reproduction.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.full_scale_settings import CELLS, RUNS_FILE, compare_settings, main, to_markdown

PAPER_RUN = {"accuracy": 0.93, "ensemble_size": [2.69, 5.49, 1.47], "fraction_positive_weights": [0.63, 0.002, 0.035]}


def test_every_recorded_run_has_every_cell_in_range() -> None:
    settings = json.loads(RUNS_FILE.read_text())["settings"]
    assert len({s["label"] for s in settings}) == len(settings)
    for setting in settings:
        assert setting["runs"] and setting["set"] and setting["measured"]
        for seed, run in setting["runs"].items():
            assert int(seed) >= 0
            assert 0.1 < run["accuracy"] <= 1
            assert len(run["ensemble_size"]) == len(run["fraction_positive_weights"]) == 3
            assert all(0 <= size <= 784 for size in run["ensemble_size"])
            assert all(0 <= fraction <= 1 for fraction in run["fraction_positive_weights"])


def test_known_answers_the_paper_itself_is_consistent_and_a_far_setting_differs() -> None:
    far = {"accuracy": 0.80, "ensemble_size": [9.0, 40.0, 40.0], "fraction_positive_weights": [0.3, 0.2, 0.3]}
    settings = [
        {"label": "as published", "runs": {"0": PAPER_RUN, "1": PAPER_RUN | {"accuracy": 0.931}}},
        {"label": "far", "runs": {"0": far, "1": far | {"accuracy": 0.81}}},
    ]
    rows = compare_settings(settings)
    assert len(rows) == 2 * len(CELLS)
    published = {row["cell_id"]: row["verdict"].verdict for row in rows if row["setting"] == "as published"}
    assert set(published.values()) == {"consistent"}
    far_rows = [row for row in rows if row["setting"] == "far"]
    assert {row["verdict"].verdict for row in far_rows} == {"differs"}
    accuracy = next(row for row in far_rows if row["cell_id"] == "table1/ff/mnist")
    assert accuracy["mean"] == pytest.approx(0.805) and accuracy["se"] == pytest.approx(0.005)
    table = to_markdown(rows, settings)
    assert "| accuracy | 0.93 ± 0.001 | 0.93" in table and "(2 seeds)" in table


def test_the_command_prints_the_table_and_writes_a_png(tmp_path: Path, capsys) -> None:
    figure = tmp_path / "settings.png"
    main(["--figure", str(figure)])
    printed = capsys.readouterr().out
    for label in (s["label"] for s in json.loads(RUNS_FILE.read_text())["settings"]):
        assert label in printed
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 20_000
