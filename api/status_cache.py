"""Rendered status bodies, shared for a moment by the status polls of one process."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import LRUCache, TTLCache


@dataclass(frozen=True)
class CachedStatus:
    """One rendered ``GET /v1/experiments/{id}`` body and what deciding who may read
    it needs (``api.services.experiments.may_read``)."""

    owner_id: int
    visibility: str
    body: bytes
    rendered_at: float


class StatusCache:
    """The JSON body of an experiment's status, reused for ``ttl_s``
    (``Settings.status_cache_ttl_s``) by every poll of it in this process.

    Many clients poll one experiment (a researcher's scripts, the web page, a lab
    dashboard), and every poll would otherwise read and render the same rows. Each
    poll still authenticates its key, and a reused body is served only to a user who
    may read it (its owner, anyone for ``visibility == "lab"``, an admin). Bodies are
    keyed by the experiment and the base URL they were rendered for, since their links
    are absolute. A write through this process (rename, tags, visibility, cancel,
    delete) forgets the experiment at once (``forget``); what workers and other API
    processes change shows within ``ttl_s``. ``ttl_s = 0`` renders every poll.
    """

    def __init__(self, ttl_s: float, max_experiments: int = 4096, max_base_urls: int = 8,
                 clock: Callable[[], float] = time.monotonic):
        self.ttl_s, self.clock = ttl_s, clock
        # Bounded both ways (the least recently used go first): the base URL comes from the
        # client's Host header. Per experiment, its bodies by base URL, each expiring after ttl_s.
        self.max_base_urls = max_base_urls
        self._bodies: LRUCache[str, TTLCache[str, CachedStatus]] = LRUCache(maxsize=max_experiments)
        self._lock = threading.Lock()  # cachetools' caches are not thread-safe
        self._forgets = 0  # how many times ``forget`` ran: a body read before one is not kept

    def epoch(self) -> int:
        """Take before reading the rows of a body to ``put``."""
        return self._forgets

    def get(self, experiment_id: str, base_url: str) -> CachedStatus | None:
        """The body rendered less than ``ttl_s`` ago, or None."""
        with self._lock:
            bodies = self._bodies.get(experiment_id)
            return bodies.get(base_url) if bodies is not None else None

    def put(self, experiment_id: str, base_url: str, owner_id: int, visibility: str, body: bytes,
            epoch: int) -> None:
        """Keep a body whose rows were read after ``epoch()`` returned ``epoch``, unless a
        write was forgotten since: its body could predate the write."""
        if self.ttl_s <= 0:
            return
        with self._lock:
            if epoch != self._forgets:
                return
            bodies = self._bodies.get(experiment_id)
            if bodies is None:
                bodies = self._bodies[experiment_id] = TTLCache(self.max_base_urls, self.ttl_s, timer=self.clock)
            bodies[base_url] = CachedStatus(owner_id, visibility, body, self.clock())

    def forget(self, experiment_id: str) -> None:
        """Drop every body of this experiment (after a write to it through this process)."""
        with self._lock:
            self._forgets += 1
            self._bodies.pop(experiment_id, None)
