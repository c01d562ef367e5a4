"""Docs and code agree: every setting is in docs/service.md's settings table, every
error code a client can get is documented, and api/protocol.py's override of a
uvicorn class still overrides what uvicorn calls (a uvicorn upgrade that renames it
fails here, not silently in production)."""

from __future__ import annotations

import inspect
import re
import typing
from pathlib import Path

from fflab.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SERVICE_DOC = (ROOT / "docs" / "service.md").read_text()


def test_every_setting_is_in_the_settings_table() -> None:
    first_cells = re.findall(r"^\| (`FFLAB_[^|]+)\|", SERVICE_DOC, flags=re.M)  # a row may name several
    table_rows = {name for cell in first_cells for name in re.findall(r"`(FFLAB_[A-Z0-9_]+)`", cell)}
    settings = {f"FFLAB_{name.upper()}" for name in Settings.model_fields}
    assert not settings - table_rows, f"settings missing from docs/service.md's table: {sorted(settings - table_rows)}"
    assert not table_rows - settings, f"docs/service.md documents settings that do not exist: {sorted(table_rows - settings)}"


def test_every_error_code_is_documented() -> None:
    from api import errors

    codes = set(typing.get_args(errors.Code)) | set(errors.CODE_BY_STATUS.values())
    undocumented = {code for code in codes if f"`{code}`" not in SERVICE_DOC}
    assert not undocumented, f"error codes missing from docs/service.md: {sorted(undocumented)}"


def test_the_protocol_override_still_overrides_what_uvicorn_calls() -> None:
    """api.protocol.HttpProtocol replaces httptools' send_400_response (a method of a
    uvicorn class that is not public API): the method must still exist with the same
    signature, and the parser's error path must still call it."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from api.protocol import HttpProtocol

    assert list(inspect.signature(HttpToolsProtocol.send_400_response).parameters) == ["self", "msg"]
    assert "send_400_response" in inspect.getsource(HttpToolsProtocol.data_received)
    assert HttpProtocol.send_400_response is not HttpToolsProtocol.send_400_response
