"""Overload: a bounded number of units of work at once, and 503 with Retry-After
for the requests that find no room within a short wait.

An API process has a fixed number of threads (Starlette's threadpool: 40) and of
pooled database connections (``fflab.db.session``). Every piece of blocking work a
request does — its database reads or its transaction, opening a stored file — is
one *unit*: it takes a slot of a ``Gate``, then a thread, then (inside the thread)
a connection, and gives all three back before the request waits for anything else
(another unit, the client). Nothing is held while waiting, so no request can hold a
connection while it waits for a thread that is itself waiting for a connection (the
deadlock this replaces: every thread waiting for the pool while the requests that
held the pool's connections waited for threads).

A request waits for a slot on the event loop, at most ``wait_s``
(``FFLAB_API_QUEUE_WAIT_S``); then it is shed with ``503 Service Unavailable``, code
``unavailable`` and ``Retry-After: FFLAB_API_RETRY_AFTER_S``, instead of queueing
until every client times out. The database gate has ``FFLAB_API_DB_CONCURRENCY``
slots (at most the pool's connections), the storage gate
``FFLAB_API_STORAGE_CONCURRENCY``. /healthz takes no slot.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio
from fastapi import HTTPException
from fastapi.concurrency import run_in_threadpool

T = TypeVar("T")


class Overloaded(HTTPException):
    """503 with Retry-After: the server is busy; the request did nothing."""

    def __init__(self, what: str, retry_after_s: int):
        self.message = f"the server is busy ({what}); retry in {retry_after_s} s"
        super().__init__(503, {"message": self.message,
                               "code": "unavailable", "retry_after_seconds": retry_after_s},
                         headers={"Retry-After": str(retry_after_s)})


class Gate:
    """At most ``limit`` units of one kind (``what``) at once in this process; a
    request waits at most ``wait_s`` for a slot, then ``Overloaded`` (503)."""

    def __init__(self, what: str, limit: int, wait_s: float, retry_after_s: int,
                 on_shed: Callable[[str], None] | None = None):
        self.what, self.limit, self.wait_s, self.retry_after_s = what, limit, wait_s, retry_after_s
        self.on_shed = on_shed
        self._slots = anyio.Semaphore(limit)

    @property
    def busy(self) -> int:
        """Slots in use now."""
        return self.limit - self._slots.value

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        """``work(*args)`` in a thread of the threadpool, once a slot is free."""
        try:
            self._slots.acquire_nowait()
        except anyio.WouldBlock:
            await self._wait_for_slot()
        try:
            return await run_in_threadpool(work, *args)
        finally:
            self._slots.release()

    async def _wait_for_slot(self) -> None:
        try:
            with anyio.fail_after(self.wait_s):
                await self._slots.acquire()
        except TimeoutError:
            if self.on_shed is not None:
                self.on_shed(self.what)
            raise Overloaded(self.what, self.retry_after_s) from None
