"""The experiment page's tables, shaped for reading: a result table's columns
(``"MNIST Layer 1 mean"``, ``"MNIST Layer 1 se"``, ``"MNIST runs"``, ...) become
one header row of groups (the data sets) over one of short column names, and each
mean with its standard error one cell, ``"2.25 ± 0.05"``. The CSV download keeps
the table's own columns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from api.ui.html import cell


@dataclass(frozen=True)
class HeaderGroup:
    label: str  # "" over columns of no group (the first column)
    span: int


@dataclass(frozen=True)
class DisplayTable:
    name: str
    title: str
    groups: list[HeaderGroup]
    columns: list[str]
    rows: list[list[str]]


def display_table(name: str, table: dict[str, Any]) -> DisplayTable:
    """``table`` (a results document's table: title, columns, rows) for the page.

    The first column stays as it is. Every other column is read as "<group>
    <label>" (the group is its first word); a column "<group> <x> mean" followed
    by "<group> <x> se" becomes the one column "<x>" holding "mean ± se"."""
    columns: list[str] = table["columns"]
    # (group, label, index of the value, index of its standard error or None)
    shaped: list[tuple[str, str, int, int | None]] = [("", columns[0], 0, None)] if columns else []
    index = 1
    while index < len(columns):
        group, _, label = columns[index].partition(" ")
        if not label:
            group, label = "", group
        following = columns[index + 1] if index + 1 < len(columns) else ""
        if label.endswith(" mean") and following == f"{group} {label.removesuffix(' mean')} se".strip():
            shaped.append((group, label.removesuffix(" mean"), index, index + 1))
            index += 2
        else:
            shaped.append((group, label, index, None))
            index += 1
    groups: list[HeaderGroup] = []
    for group, *_ in shaped:
        if groups and groups[-1].label == group:
            groups[-1] = HeaderGroup(group, groups[-1].span + 1)
        else:
            groups.append(HeaderGroup(group, 1))
    rows = [[cell(row[value]) if error is None else mean_with_error(row[value], row[error])
             for _, _, value, error in shaped] for row in table["rows"]]
    return DisplayTable(name, table.get("title", name), groups if any(g.label for g in groups) else [],
                        [label for _, label, _, _ in shaped], rows)


def mean_with_error(mean: Any, error: Any) -> str:
    """``2.25 ± 0.05``; the mean alone where there is no error (one run)."""
    if cell(error) == "-":
        return cell(mean)
    return f"{cell(mean)} ± {cell(error)}"
