"""Shared fixtures. The data sets must be in $FFLAB_DATA_ROOT (default ./data):
`make test` runs `fflab fetch-data` first."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fflab import data

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("FFLAB_DATA_ROOT", str(ROOT / "data"))


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = data.data_root()
    for dataset in data.PAPER_DATASETS:  # the others are tested on small files (test_data_sets.py)
        if not data.has_files(dataset, root):
            pytest.fail(data.missing_data_message(dataset, root))
    return root
