"""The experiment page's tables: means with their errors in one cell, the data
sets as a header row over short column names (api.ui.tables)."""

from __future__ import annotations

from api.ui.tables import HeaderGroup, display_table

TABLE2 = {
    "title": "Table 2: ensemble size",
    "columns": ["Model", "MNIST Layer 1 mean", "MNIST Layer 1 se", "MNIST Layer 2 mean", "MNIST Layer 2 se",
                "MNIST runs", "FASHIONMNIST Layer 1 mean", "FASHIONMNIST Layer 1 se", "FASHIONMNIST runs"],
    "rows": [["FF", 2.25, 0.05, 2.45, 0.05, 2, 2.3, None, 1],
             ["BP", 6.0, 0.123456, float("nan"), None, 3, 5.5, 0.5, 3]],
}


def test_means_and_errors_share_a_cell_under_their_data_set() -> None:
    shown = display_table("table2", TABLE2)
    assert shown.groups == [HeaderGroup("", 1), HeaderGroup("MNIST", 3), HeaderGroup("FASHIONMNIST", 2)]
    assert shown.columns == ["Model", "Layer 1", "Layer 2", "runs", "Layer 1", "runs"]
    assert shown.rows == [["FF", "2.25 ± 0.05", "2.45 ± 0.05", "2", "2.3", "1"],
                          ["BP", "6 ± 0.1235", "-", "3", "5.5 ± 0.5", "3"]]
    assert sum(group.span for group in shown.groups) == len(shown.columns) == len(shown.rows[0])


def test_a_table_without_groups_keeps_its_columns() -> None:
    shown = display_table("sweep", {"title": "Sweep", "columns": ["point", "accuracy"], "rows": [[0, 0.5]]})
    assert shown.groups == [] and shown.columns == ["point", "accuracy"] and shown.rows == [["0", "0.5"]]
