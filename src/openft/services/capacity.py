"""Bounded, fairly shared capacity for work that is heavy per request:
python grader runs and checks (a sandbox each), merged exports (a child
process that loads the model) and estimates (a child process that trains a
few steps).

Each kind of work has a :class:`Capacity`: at most ``total`` requests of it
run at once in the whole server, at most ``per_org`` of them for any one
organisation, so one organisation can never take it all. A request past
either bound is not queued: it gets a 429 (``rate_limit_exceeded``) with
``Retry-After``, in the OpenAI envelope. Blocking work runs on the
capacity's own worker threads (:meth:`Capacity.run_sync`), never on the
thread pool that serves uploads, downloads and chat. Settings:
``OPENFT_GRADER_CONCURRENCY`` / ``OPENFT_GRADER_CONCURRENCY_PER_ORG``,
``OPENFT_EXPORT_CONCURRENCY`` / ``..._PER_ORG``, ``OPENFT_ESTIMATE_CONCURRENCY``
/ ``..._PER_ORG``.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import anyio

from openft.errors import RateLimited

T = TypeVar("T")


class Capacity:
    def __init__(self, what: str, total: int, per_org: int, *, retry_after_seconds: int = 5):
        self.what, self.total, self.per_org = what, total, min(per_org, total)
        self.retry_after_seconds = retry_after_seconds
        self._busy: Counter[str] = Counter()
        self._threads = anyio.CapacityLimiter(total)

    @property
    def in_use(self) -> int:
        return sum(self._busy.values())

    @contextlib.asynccontextmanager
    async def slot(self, org_id: str) -> AsyncIterator[None]:
        """Hold one slot for ``org_id`` for the block; RateLimited when there is none."""
        if self._busy[org_id] >= self.per_org:
            raise RateLimited(
                f"Too many {self.what} at once for your organisation (at most {self.per_org}); "
                f"retry after {self.retry_after_seconds} s.", retry_after=self.retry_after_seconds)
        if self.in_use >= self.total:
            raise RateLimited(
                f"The server is running as many {self.what} as it can ({self.total}); "
                f"retry after {self.retry_after_seconds} s.", retry_after=self.retry_after_seconds)
        self._busy[org_id] += 1
        try:
            yield
        finally:
            self._busy[org_id] -= 1
            if not self._busy[org_id]:
                del self._busy[org_id]

    async def run_sync(self, function: Callable[[], T]) -> T:
        """Run blocking ``function`` on this capacity's own threads."""
        return await anyio.to_thread.run_sync(function, limiter=self._threads)
