"""No API key in any log: a filter that cuts key-like strings to their public prefix
(fflab.accounts.redact_keys) in every record of uvicorn's access and error logs and of
the app's own loggers, whatever handlers the server configured."""

from __future__ import annotations

import logging

from fflab.accounts import KEY_PREFIX, redact_keys

LOGGER_PREFIXES = ("uvicorn", "api", "fflab", "worker", "celery", "fastapi", "starlette")


class RedactKeys(logging.Filter):
    """Redacts the message and its arguments (the access log's request line is one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and KEY_PREFIX in record.msg:
            record.msg = redact_keys(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {name: _redact(arg) for name, arg in record.args.items()}
        return True


def _redact(arg: object) -> object:
    if isinstance(arg, (int, float)) or arg is None:
        return arg
    text = arg if isinstance(arg, str) else str(arg)
    if KEY_PREFIX in text or "%" in text:
        redacted = redact_keys(text)
        if redacted != text:
            return redacted
    return arg


REDACT_KEYS = RedactKeys()


def install_key_redaction() -> None:
    """Add the filter to the loggers of uvicorn and the app (records are filtered by the
    logger that makes them) and to every handler of the root and uvicorn loggers.
    Idempotent; call it once logging is configured (uvicorn configures it before it
    starts the app)."""
    manager = logging.Logger.manager
    names = [name for name in list(manager.loggerDict) if name.split(".")[0] in LOGGER_PREFIXES]
    loggers = [logging.getLogger(name) for name in {*names, "uvicorn", "uvicorn.access", "uvicorn.error"}]
    for logger in [logging.getLogger(), *loggers]:
        if REDACT_KEYS not in logger.filters:
            logger.addFilter(REDACT_KEYS)
        for handler in logger.handlers:
            if REDACT_KEYS not in handler.filters:
                handler.addFilter(REDACT_KEYS)
