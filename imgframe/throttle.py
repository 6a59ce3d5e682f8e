"""Throttling of one fetcher (one endpoint): a request rate cap and an adaptive limit.

- ``max_rps`` caps the request rate with :class:`Pacer`, which gives each request the
  next free time slot ``1 / max_rps`` after the previous one (no burst).
- ``adaptive`` (on by default) runs :class:`ConcurrencyGate`, an AIMD limit on the
  requests in flight: a 429 or 503 halves it, a stretch of fine answers adds one back,
  up to ``concurrency``. Changes are logged at debug level on ``imgframe.fetch``.

When they are not throttling, they cost a few integer operations per request and no
timer: the pacer sleeps only when a request's slot is in the future, and the gate
queues a worker only when the limit is reached.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque

__all__ = ["THROTTLE_STATUSES", "ConcurrencyGate", "Pacer"]

# The fetch engine's logger: throttling is part of what a fetch reports.
logger = logging.getLogger("imgframe.fetch")
# Answers that say "too much, slow down": they shrink the adaptive concurrency limit.
THROTTLE_STATUSES = frozenset({429, 503})


class Pacer:
    """Spaces the requests of all workers ``1 / max_rps`` seconds apart.

    A virtual clock, not a timer: each request reserves the next free slot with one
    ``loop.time()`` read and sleeps only if that slot is in the future. Slots missed while
    nobody was asking (a slow server, a pause) are not saved up for a burst later, so the
    rate never exceeds ``max_rps`` over any stretch of time.

    Examples
    --------
    >>> async def three_reservations():
    ...     pacer = Pacer(10.0)
    ...     return [round(pacer.reserve(), 2) for _ in range(3)]
    >>> asyncio.run(three_reservations())
    [0.0, 0.1, 0.2]
    """

    __slots__ = ("_loop", "_next", "interval")

    def __init__(self, max_rps: float) -> None:
        self.interval = 1.0 / max_rps
        self._loop = asyncio.get_running_loop()
        self._next = -math.inf

    def reserve(self) -> float:
        """Reserve the next slot; seconds to wait before sending (0.0: send now)."""
        now = self._loop.time()
        slot = self._next if self._next > now else now
        self._next = slot + self.interval
        return slot - now


class ConcurrencyGate:
    """An AIMD limit on requests in flight, shared by all workers of one run.

    A worker takes a place (``in_flight += 1``) while ``in_flight < limit``, else queues
    in :meth:`wait_turn`; :meth:`leave` hands the place to the next in line.

    - Multiplicative decrease: a 429 or 503 halves ``limit`` (floor 1), but only if the
      request was sent after the last decrease (same ``epoch``). The answers to requests
      sent at the old limit say nothing about the new one, so a burst of 429s from one
      round of requests halves the limit once, not down to 1.
    - Additive increase: while below ``maximum``, ``limit`` grows by one after at least
      ``limit`` fine answers (a round of requests) *and* ``GROW_SECONDS`` without a change.
      The time floor makes it probe slowly: at low latency a round lasts milliseconds,
      and growing once per round would overshoot a rate limit many times a second.
    """

    GROW_SECONDS = 0.5

    __slots__ = (
        "_changed_at",
        "_changes",
        "_endpoint",
        "_fine",
        "_loop",
        "_started",
        "_waiters",
        "epoch",
        "in_flight",
        "limit",
        "maximum",
    )

    def __init__(self, maximum: int, endpoint: str, changes: deque[tuple[float, int]]) -> None:
        self.maximum = self.limit = maximum
        self.in_flight = 0
        self.epoch = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._fine = 0
        self._loop = asyncio.get_running_loop()
        self._started = self._changed_at = self._loop.time()
        self._endpoint = endpoint
        self._changes = changes

    async def wait_turn(self) -> None:
        """Queue until :meth:`leave` hands this worker a place in flight."""
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if not waiter.cancelled():  # a place was handed over as we were cancelled
                self.leave()
            raise

    def leave(self) -> None:
        """A request finished: free its place, or hand it to the next queued worker."""
        self.in_flight -= 1
        if self._waiters:
            self._admit()

    def _admit(self) -> None:
        waiters = self._waiters
        while waiters and self.in_flight < self.limit:
            waiter = waiters.popleft()
            if not waiter.done():  # skip workers cancelled while queued
                self.in_flight += 1
                waiter.set_result(None)

    def throttled(self, epoch: int, status: int) -> None:
        """A 429/503 answered a request sent in ``epoch``: halve the limit once per round."""
        if epoch != self.epoch:
            return
        self.epoch += 1
        self._fine = 0
        self._changed_at = self._loop.time()
        if self.limit > 1:
            self._change(max(1, self.limit // 2), f"after HTTP {status}")

    def answered(self) -> None:
        """A fine answer while throttled: grow the limit by one now and then."""
        self._fine += 1
        if self._fine >= self.limit:
            now = self._loop.time()
            if now - self._changed_at >= self.GROW_SECONDS:
                self._fine = 0
                self._changed_at = now
                self._change(self.limit + 1, "after fine answers")
                self._admit()

    def _change(self, limit: int, why: str) -> None:
        # The endpoint carries no credentials (normalize_endpoint refuses them) and the
        # token is never passed here, so this line is safe to log.
        logger.debug("%s: concurrency %d -> %d %s", self._endpoint, self.limit, limit, why)
        self.limit = limit
        self._changes.append((self._changed_at - self._started, limit))
