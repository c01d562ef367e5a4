"""A run's log as the service keeps it: what the worker logged while it held the
run (its records, warnings, the traceback of a failure), with API keys, the
settings' secret values and the passwords of URLs redacted, and capped in size
(its head and its tail kept, the middle cut, saying how much).

``RunLogCapture`` is a logging handler attached to the root logger for the time
a delivery holds the run; it keeps only the records of the thread that attached
it (a worker training several runs at once keeps each run's own)."""

from __future__ import annotations

import logging
import re
import threading
from collections import deque

from fflab.accounts import REDACTED, redact_keys
from fflab.settings import Settings

# scheme://user:password@host: the password goes (database, broker and S3 URLs).
URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)(?P<password>[^@\s/]+)(?=@)")
SECRET_SETTINGS = ("s3_secret_access_key", "s3_access_key_id", "secret_key", "metrics_token", "api_key")
MIN_SECRET_LENGTH = 4  # shorter values would cut ordinary words out of the log
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def settings_secrets(settings: Settings) -> list[str]:
    """The secret values of ``settings``: keys and tokens, and the passwords in its URLs."""
    values = [getattr(settings, name) for name in SECRET_SETTINGS]
    for url in (settings.database_url, settings.broker_url, settings.result_backend, settings.s3_endpoint_url):
        values += [match.group("password") for match in URL_PASSWORD.finditer(url or "")]
    return sorted({value for value in values if value and len(value) >= MIN_SECRET_LENGTH}, key=len, reverse=True)


class Redactor:
    """Text without API keys (fflab.accounts.redact_keys), the given secret values,
    and the passwords of URLs."""

    def __init__(self, secrets: list[str] | tuple[str, ...] = ()):
        self.secrets = sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        text = redact_keys(text)
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return URL_PASSWORD.sub(rf"\g<head>{REDACTED}", text)


class CappedText:
    """Text kept up to ``max_bytes`` (UTF-8): its first half and its last half, and
    how many bytes were cut between them."""

    def __init__(self, max_bytes: int):
        self.head_budget = max_bytes // 2
        self.tail_budget = max_bytes - self.head_budget
        self.head: list[str] = []
        self.head_bytes = 0
        self.tail: deque[tuple[str, int]] = deque()
        self.tail_bytes = 0
        self.dropped_bytes = 0

    def write(self, text: str) -> None:
        if not text:
            return
        size = len(text.encode())
        room = self.head_budget - self.head_bytes
        if not self.tail and size <= room:
            self.head.append(text)
            self.head_bytes += size
            return
        if not self.tail and room > 0:  # fill the head to its budget, the rest goes on
            part = text.encode()[:room].decode(errors="ignore")
            self.head.append(part)
            self.head_bytes += len(part.encode())
            text = text[len(part):]
            size = len(text.encode())
        self.tail.append((text, size))
        self.tail_bytes += size
        while self.tail_bytes > self.tail_budget and self.tail:
            first, first_size = self.tail.popleft()
            excess = self.tail_bytes - self.tail_budget
            if first_size > excess:  # keep the end of the oldest piece
                kept = first.encode()[excess:].decode(errors="ignore")
                self.tail.appendleft((kept, len(kept.encode())))
                self.tail_bytes += len(kept.encode()) - first_size
                self.dropped_bytes += first_size - len(kept.encode())
            else:
                self.tail_bytes -= first_size
                self.dropped_bytes += first_size

    def text(self) -> str:
        head = "".join(self.head)
        tail = "".join(piece for piece, _ in self.tail)
        if self.dropped_bytes:
            return f"{head}\n[... {self.dropped_bytes} bytes cut (FFLAB_RUN_LOG_MAX_BYTES) ...]\n{tail}"
        return head + tail


_WARNINGS_ROUTING = threading.Lock()


class RunLogCapture(logging.Handler):
    """The log records of this thread, formatted (tracebacks included), redacted
    and capped, while it is attached (``with RunLogCapture(...) as capture:``).
    Warnings go through logging while it is attached (logging.captureWarnings)."""

    lock: threading.Lock  # logging.Handler.__init__ creates it (createLock)

    def __init__(self, redactor: Redactor, max_bytes: int, earlier: str = "", earlier_dropped: int = 0,
                 level: int = logging.INFO):
        super().__init__(level)
        self.redactor = redactor
        self.log = CappedText(max_bytes)
        self.log.write(earlier)
        self.log.dropped_bytes += earlier_dropped
        self.thread = threading.get_ident()
        self.setFormatter(logging.Formatter(LOG_FORMAT))
        self.writes = 0  # how many pieces were added: a reader writes the log again only when it grew

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread:
            return
        try:
            line = self.redactor(self.format(record)) + "\n"
        except Exception:  # a record that cannot be formatted is not worth the run
            return
        with self.lock:
            self.log.write(line)
            self.writes += 1

    def write(self, text: str) -> None:
        """Add text of the service's own (a line between deliveries), redacted."""
        with self.lock:
            self.log.write(self.redactor(text))
            self.writes += 1

    def text(self) -> tuple[str, int, int]:
        """The log so far, the bytes cut from it, and ``writes`` (its version)."""
        with self.lock:
            return self.log.text(), self.log.dropped_bytes, self.writes

    def __enter__(self) -> RunLogCapture:
        with _WARNINGS_ROUTING:
            # captureWarnings(True) does nothing when it was on before, even where something put its
            # own warnings.showwarning back since (catch_warnings, a test harness): route them afresh.
            logging.captureWarnings(False)
            logging.captureWarnings(True)
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *_exc: object) -> None:
        logging.getLogger().removeHandler(self)
