"""The one-machine default: ``fflab serve`` with nothing configured (SQLite, the
SQLAlchemy broker on SQLite, local artifacts under var/), driven by the CLI's
client verbs and admin verbs."""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from fflab.cli import main
from fflab.settings import get_settings
from service_helpers import TINY, Process, base_env, free_port, http_ready, wait_for

SCHEMAS = Path(__file__).resolve().parents[1] / "shared" / "fflab" / "schemas"
TINY_SETS = [f"{key}={json.dumps(value)}" for key, value in TINY.items() if key != "preset"]


def fflab(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture()
def embedded(data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``fflab serve`` in an empty folder; the CLI here points at it through the
    same defaults (var/admin.key, 127.0.0.1:<port>)."""
    port = free_port()
    process = Process("serve", [sys.executable, "-m", "fflab", "serve"], base_env(api_port=str(port)),
                      tmp_path, tmp_path)
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("FFLAB_") and n != "FFLAB_DATA_ROOT"]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("FFLAB_API_PORT", str(port))
    get_settings.cache_clear()
    try:
        wait_for(lambda: process.check_alive() or http_ready(f"http://127.0.0.1:{port}/readyz")(), 60, "fflab serve")
        yield process
    finally:
        process.stop()
        get_settings.cache_clear()


def test_serve_with_nothing_configured(embedded: Process, tmp_path: Path) -> None:
    var = tmp_path / "var"
    key_file = var / "admin.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert f"its API key is in {key_file}" in embedded.log.read_text()

    submitted = fflab("submit", *[arg for s in TINY_SETS for arg in ("--set", s)], "--preset", "quick", "--wait")
    experiment_id = submitted.split()[0]
    assert f"{experiment_id}  tiny  succeeded  runs 2/2" in submitted
    assert "succeeded" in fflab("status", experiment_id)
    assert {"fflab.db", "broker.db"} <= {p.name for p in var.iterdir()}
    assert experiment_id in fflab("status")
    assert "succeeded" in fflab("wait", experiment_id)

    assert fflab("results", experiment_id, "--format", "csv", "--table", "table1").startswith("Model")
    assert "| FF |" in fflab("results", experiment_id)
    comparison = fflab("compare", "--experiment", experiment_id)  # GET .../paper-comparison
    assert "**Not a reproduction**" in comparison and "| table1/ff/mnist | Table 1 | 0.93 ± 0.001 (n 15) |" in comparison
    cells = json.loads(fflab("compare", "--experiment", experiment_id, "--format", "json"))["cells"]
    assert next(c for c in cells if c["id"] == "table1/ff/mnist")["n"] == 1
    jsonschema.validate(cells and json.loads(fflab("compare", "--experiment", experiment_id, "--format", "json")),
                        json.loads((SCHEMAS / "paper_comparison.schema.json").read_text()))
    ensembles = json.loads(fflab("ensembles", experiment_id, "--model", "ff", "--layer", "1", "--class", "0",
                                 "--method", "method2"))
    schema = json.loads((SCHEMAS / "ensembles.schema.json").read_text())
    for document in ensembles["runs"]:
        jsonschema.validate(document, schema)
    assert [(r["layer"], r["class_index"], r["method"]) for r in ensembles["runs"][0]["ensembles"]] == [(1, 0, "method2")]

    assert "figure1a.png" in fflab("figures", experiment_id)
    fflab("figures", experiment_id, "--download", str(tmp_path / "figs"))
    assert (tmp_path / "figs" / "figure2.png").read_bytes().startswith(b"\x89PNG")

    stored = var / "artifacts" / "experiments" / experiment_id
    assert (stored / "runs" / "ff-mnist-seed0" / "weights.pt").is_file()
    assert (stored / "figures" / "figure1a.png").is_file()
    fflab("delete", experiment_id)
    assert not stored.exists()
    result = CliRunner().invoke(main, ["status", experiment_id])
    assert result.exit_code == 1 and "404" in result.output


def test_cancel_and_admin_verbs_on_the_embedded_default(embedded: Process) -> None:
    slow = [arg for s in TINY_SETS for arg in ("--set", s)] + ["--set", "ff.epochs=5000"]
    experiment_id = fflab("submit", "--preset", "quick", *slow).split()[0]
    assert re.search(r"\bcancell(ing|ed)\b", fflab("cancel", experiment_id))  # cancelling while a run stops
    result = CliRunner().invoke(main, ["wait", experiment_id, "--timeout", "60"])
    assert result.exit_code == 1 and "cancelled" in result.output

    key = fflab("admin", "create-user", "dave").strip()
    assert re.fullmatch(r"fflab_[A-Za-z0-9_-]{43}", key)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FFLAB_API_KEY", key)
        get_settings.cache_clear()
        assert fflab("status") == ""  # dave sees only his own experiments: none
        refused = CliRunner().invoke(main, ["status", experiment_id])
        assert refused.exit_code == 1 and "404" in refused.output
        assert "revoked 1 key" in fflab("admin", "revoke-key", key[:14])
        denied = CliRunner().invoke(main, ["status"])
        assert denied.exit_code == 1 and "401" in denied.output
    get_settings.cache_clear()

    worker_pid = int(re.search(r"worker started \(pid (\d+)\)", embedded.log.read_text()).group(1))
    embedded.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(worker_pid, 0)  # serve stopped its worker
