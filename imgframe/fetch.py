"""The async HEAD engine: one session, a bounded connector, a fixed pool of workers.

:class:`HeadFetcher` sends ``HEAD {endpoint}/v1/images/{id}`` for every id it is given
and hands one :class:`FetchResult` per id to a callback, whatever happened: the headers
on a 200, otherwise the final HTTP status and an error sentence. It never decides what a
row looks like; :mod:`imgframe.api` does. With ``api="v2"`` (or ``"auto"`` after a 300
for /v1) it sends ``GET /v2/images/{id}`` instead and hands on the JSON document as the
v1 header pairs it stands for (:class:`imgframe.glance.GlanceV2`).

Why it is built this way (docs/ARCHITECTURE.md): a fixed pool of workers fed from one iterator
keeps memory flat for a million ids (one task per id costs ~0.75 KB each); one
``ClientSession`` reuses keep-alive connections; retries back off exponentially with
jitter and honour ``Retry-After``.

Where the ids come from: a sync iterable that all workers share (the fast path: no
queue, no hand-off per id), or an :class:`IdFeed` filled page by page from an async
source such as a listing while the workers already send requests. The workers drain a
feed's pages with the same shared sync iteration and wait only when no page is left;
the feed holds at most ``max_pages_ahead`` pages nobody has started, so a fast listing
never runs far ahead of a slow fetch.

Throttling (``max_rps``, ``adaptive``) is shared by all workers of one fetcher, i.e.
per endpoint (:mod:`imgframe.throttle`). What differs between v1 and v2 (the request,
reading the answer, the ``auto`` switch) is :mod:`imgframe.glance`'s; the session, the
credentials and the translation of aiohttp's errors are :mod:`imgframe.http`'s, shared
with the lister.

Hostile servers: nothing in an answer may end the run. Every failed attempt
becomes one fixed sentence of the ``error`` vocabulary (held by :mod:`imgframe.http`
and :mod:`imgframe.glance`, re-exported here; details at debug level on
``imgframe.fetch``); a 200 that is not the requested image's metadata
(another id, conflicting ids, no metadata, a broken HTTP answer) is a row with an error,
asked again once; any other exception while reading one answer is that id's row. The
run starts with one request (:class:`_Probe`) and opens up to ``concurrency`` at the
first HTTP answer; when the probe's id never connects, the endpoint is unreachable and
the remaining ids are not sent. In the steady state this costs one ``is not None``
test per request and an id comparison per 200.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections import deque
from collections.abc import (
    AsyncIterable,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any, Generic, NamedTuple, TypeVar
from urllib.parse import quote

import aiohttp
from yarl import URL

from imgframe.auth import RequestSigner, TokenSource
from imgframe.config import APIS as APIS
from imgframe.config import DEFAULT_CONCURRENCY, DEFAULT_RETRY, DEFAULT_TIMEOUT, FetchOptions
from imgframe.config import RetryPolicy as RetryPolicy
from imgframe.config import Timeout as Timeout
from imgframe.errors import AuthError, ConfigError, FetchError, ImgframeError
from imgframe.glance import CONFLICTING_IDS as CONFLICTING_IDS
from imgframe.glance import NO_ID as NO_ID
from imgframe.glance import NO_METADATA as NO_METADATA
from imgframe.glance import REQUEST_ID, V1, V2, GlanceApi, LyingAnswer, after_300, glance_api
from imgframe.glance import V2_NO_ID as V2_NO_ID
from imgframe.glance import V2_NOT_JSON as V2_NOT_JSON
from imgframe.glance import V2_NOT_OBJECT as V2_NOT_OBJECT
from imgframe.glance import V2_WRONG_ID as V2_WRONG_ID
from imgframe.glance import WRONG_ID as WRONG_ID
from imgframe.glance import normalize_endpoint as normalize_endpoint
from imgframe.glance import same_image_id as same_image_id
from imgframe.http import BROKE_HTTP as BROKE_HTTP
from imgframe.http import BROKE_HTTP_BODY as BROKE_HTTP_BODY
from imgframe.http import BROKE_HTTP_HEADER as BROKE_HTTP_HEADER
from imgframe.http import BROKE_HTTP_STATUS as BROKE_HTTP_STATUS
from imgframe.http import (
    BROKEN,
    CONNECT,
    INTERNAL_KIND,
    Credentials,
    body_too_big,
    describe,
    failure,
    get_page,
    new_session,
    origin,
    ssl_option,
    status_sentence,
)
from imgframe.http import HEADER_TOO_LONG as HEADER_TOO_LONG
from imgframe.http import INTERNAL as INTERNAL
from imgframe.http import MAX_FIELD_SIZE as MAX_FIELD_SIZE
from imgframe.http import MAX_HEADERS as MAX_HEADERS
from imgframe.http import NO_HEADERS as NO_HEADERS
from imgframe.http import PARSER_LIMITS as PARSER_LIMITS
from imgframe.http import SIGNATURE_NOT_SENT as SIGNATURE_NOT_SENT
from imgframe.http import SIGNATURE_REJECTED as SIGNATURE_REJECTED
from imgframe.http import TOKEN_NOT_SENT as TOKEN_NOT_SENT
from imgframe.http import TOKEN_REJECTED as TOKEN_REJECTED
from imgframe.http import TOO_MANY_HEADERS as TOO_MANY_HEADERS
from imgframe.http import USER_AGENT as USER_AGENT
from imgframe.http import retry_after as retry_after_of
from imgframe.http import tls_refused as tls_refused
from imgframe.ids import MAX_ID_LENGTH as MAX_ID_LENGTH
from imgframe.ids import image_id_problem as image_id_problem
from imgframe.ids import invalid_ids as invalid_ids
from imgframe.members import HEADER as MEMBERS_PAIR_NAME
from imgframe.members import (
    MAX_MEMBERS_BYTES,
    MEMBERS_NOT_READ,
    MembersProblem,
    may_have_members,
    members_text,
)
from imgframe.members import TOO_BIG as MEMBERS_TOO_BIG
from imgframe.throttle import THROTTLE_STATUSES as THROTTLE_STATUSES
from imgframe.throttle import ConcurrencyGate, Pacer

__all__ = [
    "FetchResult",
    "HeadFetcher",
    "IdFeed",
    "RetryPolicy",
    "Timeout",
    "image_id_problem",
    "normalize_endpoint",
    "same_image_id",
]

TOKEN_CHECK_SECONDS = 5.0  # how often a running fetch asks its token source again
logger = logging.getLogger("imgframe.fetch")
# RFC 3986 unreserved characters: such an id (every UUID) needs no percent-encoding.
_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]+")

#: How the rows not sent because the endpoint never answered begin (for summaries).
UNREACHABLE_PREFIX = "not requested: the endpoint was unreachable"
#: Those rows' error; ``{cause}`` is the probe's own, e.g. "connection failed: refused".
UNREACHABLE_NOT_SENT = UNREACHABLE_PREFIX + " ({cause})"
# How long workers wait for the first answer before they send anyway: the cold-token
# probe must never turn a slow server into a serial one (fraction of Timeout.total).
PROBE_PATIENCE = 0.5
# A run that had answers goes back to one request at a time after this many consecutive
# connection-level failures (at least; concurrency if larger), and stops sending if that
# probe fails at the connection level too.
BREAKER_FAILURES = 16


class FetchResult(NamedTuple):
    """What happened to one image id: headers on success, status and error otherwise.

    ``raw_headers`` are aiohttp's undecoded ``(name, value)`` byte pairs; decoding them is
    the frame builder's job. A NamedTuple, not a dataclass: one is made per request, and
    a frozen dataclass costs several times more to build.
    """

    position: int
    image_id: str
    http_status: int | None
    raw_headers: Sequence[tuple[bytes, bytes]] | None
    error: str | None
    attempts: int = 1


_Item = TypeVar("_Item")


class IdFeed(Generic[_Item]):
    """``(position, image_id)`` pages from an async source, for :meth:`HeadFetcher.run`
    (``(position, image_id, packed)`` ones for :meth:`HeadFetcher.read_members`).

    The run starts :meth:`fill` as one more task next to its workers: it appends each
    page the source yields and wakes the idle workers. A worker iterates the current
    page (one iterator shared by all, as for a list), takes the next page when it is
    exhausted and waits only when none is left; all of them return once the source is
    done and every page drained. ``fill`` waits while ``max_pages_ahead`` pages are
    queued and not yet started, so the source is never more than that many pages, plus
    the one being drained and the one it is producing, ahead of the requests. An error
    in the source ends the run with that error (the run's task group cancels the
    workers); cancelling the run cancels ``fill``, which closes the source.

    Examples
    --------
    >>> async def pages():
    ...     yield [(0, "a"), (1, "b")]
    ...     yield [(2, "c")]
    >>> async def drain(feed: IdFeed) -> list[str]:
    ...     filling = asyncio.create_task(feed.fill())
    ...     ids, page = [], feed.current
    ...     while page is not None:
    ...         ids += [image_id for _, image_id in page]
    ...         page = await feed.next_page(page)
    ...     await filling
    ...     return ids
    >>> asyncio.run(drain(IdFeed(pages())))
    ['a', 'b', 'c']
    """

    def __init__(self, pages: AsyncIterable[Iterable[_Item]], *, max_pages_ahead: int = 3) -> None:
        if not isinstance(max_pages_ahead, int) or max_pages_ahead < 1:
            raise ConfigError(f"max_pages_ahead must be an integer >= 1, got {max_pages_ahead!r}")
        self._pages = pages
        self.max_pages_ahead = max_pages_ahead
        #: The page the workers are draining now (shared: each item goes to one worker).
        self.current: Iterator[_Item] = iter(())
        self._queued: deque[Iterator[_Item]] = deque()
        self._idle: list[asyncio.Future[None]] = []
        self._room: asyncio.Future[None] | None = None
        self._done = False
        #: Pages received from the source so far.
        self.pages_received = 0

    async def fill(self) -> None:
        """Move the source's pages into the feed, pausing while it is full."""
        loop = asyncio.get_running_loop()
        pages = self._pages
        try:
            async for page in pages:
                while len(self._queued) >= self.max_pages_ahead:
                    self._room = loop.create_future()
                    await self._room
                self._queued.append(iter(page))
                self.pages_received += 1
                self._wake_idle()
            self._done = True
            self._wake_idle()
        finally:
            # Closes a listing's session whether it ended, failed or was cancelled.
            aclose = getattr(pages, "aclose", None)
            if aclose is not None:
                await aclose()

    async def next_page(self, finished: Iterator[_Item]) -> Iterator[_Item] | None:
        """The page to drain after ``finished`` is exhausted; None when all are done."""
        while True:
            if self.current is not finished:  # another worker already moved on
                return self.current
            if self._queued:
                self.current = self._queued.popleft()
                room = self._room
                if room is not None and not room.done():
                    room.set_result(None)
                return self.current
            if self._done:
                return None
            waiter = asyncio.get_running_loop().create_future()
            self._idle.append(waiter)
            await waiter

    def _wake_idle(self) -> None:
        idle, self._idle = self._idle, []
        for waiter in idle:
            if not waiter.done():  # skip workers cancelled while waiting
                waiter.set_result(None)


class HeadFetcher:
    """HEADs many image ids concurrently and reports one :class:`FetchResult` each.

    ``tokens`` is a :class:`~imgframe.auth.TokenSource` (an ``X-Auth-Token`` on every
    request, refreshed once after a 401) or a :class:`~imgframe.auth.RequestSigner`,
    which signs each request (every retry too) with the exact URL sent; a 401 for a
    signed request stops the sending, since no fresh signature would do better.

    ``max_rps`` caps the requests per second sent to this endpoint (retries included);
    None sends as fast as ``concurrency`` allows. ``adaptive`` lets 429 and 503 answers
    shrink the number of requests in flight (halved, at most once per round of requests)
    and fine answers grow it back by one at a time up to ``concurrency``; the current
    limit is :attr:`concurrency_limit` and its recent changes :attr:`concurrency_changes`.

    Examples
    --------
    >>> from imgframe.auth import StaticToken
    >>> HeadFetcher("http://127.0.0.1:9292/v1", StaticToken("t"), concurrency=8)
    HeadFetcher('http://127.0.0.1:9292', concurrency=8)
    """

    def __init__(
        self,
        endpoint: str,
        tokens: TokenSource | RequestSigner,
        *,
        options: FetchOptions | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        timeout: Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy = DEFAULT_RETRY,
        verify: bool | str = True,
        max_rps: float | None = None,
        adaptive: bool = True,
        api: str = "v1",
    ) -> None:
        # ``options`` is what the public functions pass; the keywords are for direct use.
        if options is None:
            options = FetchOptions(
                api=api,  # type: ignore[arg-type]  # checked by FetchOptions
                concurrency=concurrency,
                timeout=timeout,
                retries=retry,
                verify=verify,
                max_rps=max_rps,
                adaptive=adaptive,
            )
        self.options = options
        self.endpoint = normalize_endpoint(endpoint)
        self.api = options.api
        #: The API requests use now: V2 from the start with ``api="v2"``, after the
        #: first 300 for /v1 with ``api="auto"`` (:func:`imgframe.glance.after_300`).
        self.glance: GlanceApi = glance_api(options.api)
        self._base = self.glance.image_url(self.endpoint, "")
        self._origin = origin(self.endpoint)
        self.credentials = Credentials(tokens)
        self.concurrency = options.concurrency
        self.timeout = options.timeout
        self.retry = options.retries
        self._ssl = ssl_option(options.verify)
        self.max_rps = options.max_rps
        self.adaptive = options.adaptive
        self._gate: ConcurrencyGate | None = None
        #: ``(seconds since the run started, new limit)`` for the latest changes of the
        #: adaptive concurrency limit, oldest first (bounded: a long run keeps the last).
        self.concurrency_changes: deque[tuple[float, int]] = deque(maxlen=1000)
        self.requests_sent = 0
        #: Whether the members of each image read are asked too (``options.members``).
        self.members = options.members
        #: Members requests sent (attempts included).
        self.member_requests = 0
        self._pacer: Pacer | None = None
        self._members_timeout = aiohttp.ClientTimeout(
            total=self.timeout.total, sock_connect=self.timeout.connect
        )
        self._timed_out = f"timed out after {self.timeout.total:g} s"
        # Set while requests go one at a time (see run); None in the steady state.
        self._probe: _Probe | None = None
        self._connect_failures = 0  # in a row, across workers; reset by any answer

    def __repr__(self) -> str:
        extra = "" if self.max_rps is None else f", max_rps={self.max_rps:g}"
        return f"HeadFetcher({self.endpoint!r}, concurrency={self.concurrency}{extra})"

    @property
    def concurrency_limit(self) -> int:
        """How many requests may be in flight now (``concurrency`` unless throttled)."""
        return self.concurrency if self._gate is None else self._gate.limit

    @property
    def using_v2(self) -> bool:
        """True once the run uses ``GET /v2/images/{id}``."""
        return self.glance is V2

    def use_v2(self, why: str) -> None:
        """Send ``GET /v2/images/{id}`` from now on (``api="auto"`` found no v1)."""
        if self.api != "auto":
            raise ConfigError(f"only api='auto' may switch to v2, this fetcher has {self.api!r}")
        self._use(V2, why)

    def _use(self, glance: GlanceApi, why: str) -> None:
        if glance is not self.glance:
            self.glance = glance
            self._base = glance.image_url(self.endpoint, "")
            detail = f" ({why})" if why else ""
            logger.info("%s has no Glance v1 API%s: using v2", self.endpoint, detail)

    async def run(
        self,
        items: Iterable[tuple[int, str]] | IdFeed,
        on_result: Callable[[FetchResult], Any],
    ) -> None:
        """HEAD each ``(position, image_id)`` and call ``on_result`` once per item.

        ``items`` is a sync iterable, or an :class:`IdFeed` whose source is read while
        the requests go out. Raises :class:`~imgframe.NoV1ApiError` on a 300 answer,
        :class:`~imgframe.AuthError` when no first token can be had, and whatever
        error a feed's source raises (nothing is reported for the items not yet done).
        With ``options.members``, the members of each image read that can have them
        are asked by the same worker right after its answer (:meth:`_read_members`).
        """

        async def one(
            session: aiohttp.ClientSession,
            watchdog: _Watchdog,
            gate: ConcurrencyGate | None,
            pacer: Pacer | None,
            slot: int,
            item: tuple[int, str],
        ) -> None:
            position, image_id = item
            try:
                result = await self._fetch_one(
                    session, watchdog, gate, pacer, slot, position, image_id
                )
            except ImgframeError:
                raise  # run-level on purpose: TLS, no v1, the token source
            except Exception:
                # Nothing in an answer may crash the run: the id gets a row.
                logger.debug("%s: %s failed", self.endpoint, image_id, exc_info=True)
                watchdog.deadlines[slot] = math.inf
                result = FetchResult(position, image_id, None, None, INTERNAL, 1)
            if self._probe is not None:
                self._probe_done(slot)
            on_result(result)

        await self._pool(items, one, probe=True)

    async def read_members(
        self,
        items: Iterable[tuple[int, str, bytes]] | IdFeed,
        on_result: Callable[[int, str, bytes, str | None, str | None], Any],
    ) -> None:
        """Ask the members of images read some other way (a listing's records), through
        the same pool, session, credentials, pacing and retries as :meth:`run`.

        ``items`` are ``(position, image_id, packed)`` (``packed``: the image's
        :func:`~imgframe.parse.pack_headers` pairs, handed back untouched);
        ``on_result(position, image_id, packed, text, error)`` gets the ``members``
        text or the row's error, once per item. Uses the API the fetcher uses now.
        """

        async def one(
            session: aiohttp.ClientSession,
            watchdog: _Watchdog,
            gate: ConcurrencyGate | None,
            pacer: Pacer | None,
            slot: int,
            item: tuple[int, str, bytes],
        ) -> None:
            position, image_id, packed = item
            segment = image_id if _UNRESERVED.fullmatch(image_id) else quote(image_id, safe="")
            try:
                text, error = await self._read_members(session, self.glance, segment, image_id)
            except ImgframeError:
                raise
            except Exception:
                logger.debug("%s: members of %s failed", self.endpoint, image_id, exc_info=True)
                text, error = None, INTERNAL
            on_result(position, image_id, packed, text, error)

        await self._pool(items, one, probe=False)

    async def _pool(
        self,
        items: Iterable[Any] | IdFeed,
        one: Callable[..., Awaitable[None]],
        *,
        probe: bool,
    ) -> None:
        """Run ``one(session, watchdog, gate, pacer, slot, item)`` for every item on
        ``concurrency`` workers (see :meth:`run`); ``probe``: the first request goes
        alone (:class:`_Probe`)."""
        credentials = self.credentials
        await credentials.start()
        session = new_session(
            self._ssl,
            limit=self.concurrency,
            # No per-request total timeout in aiohttp: its timer per request cost ~15% of
            # the client's CPU at zero latency (measured). _Watchdog enforces `total` with
            # one periodic check instead. sock_connect times only new TCP connections.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout.connect),
            connector_options={"ttl_dns_cache": 300, "enable_cleanup_closed": True},
            auto_decompress=False,
        )
        # The first request goes alone: a brand-new token presented by every worker at
        # once is validated once per request by a cache-less keystonemiddleware, and an
        # endpoint that refuses connections is found after one id, not a million.
        self._probe = _Probe(PROBE_PATIENCE * self.timeout.total) if probe else None
        self._connect_failures = 0
        # The workers share one iterator: the event loop runs one task at a time, so each
        # item goes to exactly one worker, and a worker pulls the next id only when it is
        # free -- a queue with no producer task and no hand-off per id. A feed hands out
        # one such iterator per page.
        feed = items if isinstance(items, IdFeed) else None
        shared = items.current if isinstance(items, IdFeed) else iter(items)
        watchdog = _Watchdog(self.concurrency, self.timeout.total)
        # None when off, so that the unthrottled path pays one `is not None` test each.
        pacer = None if self.max_rps is None else Pacer(self.max_rps)
        self._pacer = pacer
        self._gate = gate = (
            ConcurrencyGate(self.concurrency, self.endpoint, self.concurrency_changes)
            if self.adaptive
            else None
        )

        async def work(slot: int) -> None:
            watchdog.tasks[slot] = asyncio.current_task()  # type: ignore[assignment]
            page: Iterator[Any] | None = shared
            while page is not None:
                for item in page:
                    await one(session, watchdog, gate, pacer, slot, item)
                page = None if feed is None else await feed.next_page(page)

        watching = asyncio.create_task(watchdog.watch())
        # A signer has no token to renew.
        renewing = (
            asyncio.create_task(credentials.keep_fresh(TOKEN_CHECK_SECONDS))
            if credentials.source is not None
            else None
        )
        try:
            async with asyncio.TaskGroup() as group:
                if feed is not None:
                    group.create_task(feed.fill())
                for slot in range(self.concurrency):
                    group.create_task(work(slot))
        except* ImgframeError as errors:
            raise errors.exceptions[0] from None
        finally:
            watching.cancel()
            if renewing is not None:
                renewing.cancel()
            await session.close()

    async def _read_members(
        self, session: aiohttp.ClientSession, glance: GlanceApi, segment: str, image_id: str
    ) -> tuple[str | None, str | None]:
        """``GET {image URL}/members`` through :func:`imgframe.http.get_page` (retries,
        one token refresh, pacing): ``(members text, None)`` or ``(None, the row's
        error)``. A token rejected for good stops the sending, as a HEAD's does."""
        credentials = self.credentials
        if credentials.dead:
            return None, MEMBERS_NOT_READ + credentials.not_sent
        url = glance.image_url(self.endpoint, segment) + "/members"
        try:
            body, _ = await get_page(
                session,
                url,
                credentials,
                self.timeout,
                self.retry,
                endpoint=self.endpoint,
                log=logger,
                before_attempt=self._member_attempt,
                # The watchdog times the image requests; a members call is rarer, and
                # one timer each is affordable.
                request_timeout=self._members_timeout,
                max_body=MAX_MEMBERS_BYTES,
                what="members of",
                encoded=True,  # the id is quoted as one path segment already
            )
        except FetchError as exc:
            if isinstance(exc, AuthError):
                credentials.dead = True
            sentence = exc.sentence or INTERNAL
            if sentence == body_too_big(MAX_MEMBERS_BYTES):
                return None, MEMBERS_TOO_BIG
            return None, MEMBERS_NOT_READ + sentence
        try:
            return members_text(glance.name, body, image_id), None
        except MembersProblem as problem:
            logger.debug("%s: members of %s: %s", self.endpoint, image_id, problem.sentence)
            return None, problem.sentence

    async def _member_attempt(self) -> None:
        self.member_requests += 1
        pacer = self._pacer
        if pacer is not None:
            delay = pacer.reserve()
            if delay > 0.0:
                await asyncio.sleep(delay)

    async def _fetch_one(
        self,
        session: aiohttp.ClientSession,
        watchdog: _Watchdog,
        gate: ConcurrencyGate | None,
        pacer: Pacer | None,
        slot: int,
        position: int,
        image_id: str,
    ) -> FetchResult:
        segment = image_id if _UNRESERVED.fullmatch(image_id) else quote(image_id, safe="")
        credentials = self.credentials
        signer = credentials.signer
        attempt = 0
        refreshed = False
        suspect_retried = False  # an answer that lied is asked again once
        status: int | None = None
        error = ""
        while True:
            if credentials.dead:
                return FetchResult(position, image_id, None, None, credentials.not_sent, attempt)
            probe = self._probe
            if probe is not None:  # one request at a time until the endpoint answers
                if probe.unreachable is not None:
                    if attempt == 0:
                        return FetchResult(position, image_id, None, None, probe.unreachable, 0)
                    return FetchResult(position, image_id, status, None, error, attempt)
                if probe.prober is None:
                    probe.prober = slot
                if probe.prober != slot:
                    if not await probe.wait():
                        self._open_probe("no answer yet: sending at full concurrency anyway")
                    continue
                probe.begin()
            attempt += 1
            token, auth = credentials.token, credentials.auth
            retry_after: float | None = None
            epoch = 0
            if gate is not None:
                # Take a place in flight: a counter on the fast path, a queue when full.
                if gate.in_flight < gate.limit:
                    gate.in_flight += 1
                else:
                    await gate.wait_turn()
                epoch = gate.epoch
            try:
                try:
                    if pacer is not None:
                        # After the gate: a time slot is never reserved and then left
                        # unused while waiting for a place in flight.
                        delay = pacer.reserve()
                        if delay > 0.0:
                            await asyncio.sleep(delay)
                    self.requests_sent += 1
                    watchdog.arm(slot)
                    # One read of both: an api="auto" switch may change them meanwhile.
                    glance, target = self.glance, self._base + segment
                    if signer is not None:
                        auth = signer.sign(glance.method, target, NO_HEADERS)
                    # encoded=True: yarl sends the string as it is, so a signer signs
                    # exactly the path on the wire.
                    url = URL(target, encoded=True)
                    request = session.request(
                        glance.method, url, headers=auth, allow_redirects=False
                    )
                    async with request as response:
                        status = response.status
                        headers = response.headers
                        raw_headers: Sequence[tuple[bytes, bytes]] = response.raw_headers
                        # v2 has no metadata HEAD: the image document is the body.
                        body = await response.read() if glance.reads_body and status == 200 else b""
                finally:
                    if gate is not None:
                        gate.leave()
            except asyncio.CancelledError:
                if not watchdog.fired(slot):
                    raise  # the run itself is being cancelled
                status, error = None, self._timed_out
                if probe is not None:
                    probe.cause = None
            except ImgframeError:
                raise  # a signer's own failure: run-level
            except aiohttp.ClientConnectorCertificateError as exc:
                # Every request would fail the same way: a setting to fix, not 1M rows.
                raise FetchError(tls_refused(self.endpoint, exc), url=self.endpoint) from None
            except Exception as exc:  # anything else an attempt raises is this id's row
                await watchdog.disarm(slot)
                status = None
                error, kind = failure(exc, self.timeout)
                # The URL and the exception (the server's bytes) go here, not in the row;
                # the token is in a header, never in either.
                logger.debug(
                    "%s %s: %s (%s)",
                    self.glance.method,
                    self._base + segment,
                    error,
                    describe(exc),
                    exc_info=kind == INTERNAL_KIND,
                )
                if kind == CONNECT:
                    self._connect_failed(slot, error)
                elif kind == BROKEN and self._probe is not None:
                    self._open_probe("")  # broken, but an answer: the endpoint is there
                elif probe is not None:
                    probe.cause = None
                if kind == INTERNAL_KIND:
                    return FetchResult(position, image_id, None, None, error, attempt)
                if kind == BROKEN:
                    # Retried once: a broken answer may have been another request's
                    # leftovers on a reused connection.
                    if suspect_retried or attempt >= self.retry.attempts:
                        return FetchResult(position, image_id, None, None, error, attempt)
                    suspect_retried = True
            else:
                await watchdog.disarm(slot)
                if self._probe is not None:
                    self._open_probe("")
                self._connect_failures = 0
                if gate is not None:
                    if status in THROTTLE_STATUSES:
                        gate.throttled(epoch, status)
                    elif gate.limit < gate.maximum:  # only counted while throttled
                        gate.answered()
                if status == 200:
                    try:
                        raw_headers = glance.decode(headers, raw_headers, body, image_id)
                        problem = None
                    except LyingAnswer as exc:
                        problem = exc.sentence
                    if problem is None:
                        if self.members and may_have_members(glance.name, raw_headers):
                            text, problem = await self._read_members(
                                session, glance, segment, image_id
                            )
                            if text is not None:
                                raw_headers = [*raw_headers, (MEMBERS_PAIR_NAME, text.encode())]
                        # A members call that failed: the row keeps its metadata, and
                        # its error makes it unread (asked again on resume).
                        return FetchResult(position, image_id, 200, raw_headers, problem, attempt)
                    # An answer that lies is a row with an error, never a good row. The
                    # status received is kept, the headers are not.
                    logger.debug("%s %s: %s", self.endpoint, image_id, problem)
                    if suspect_retried or attempt >= self.retry.attempts:
                        return FetchResult(position, image_id, 200, None, problem, attempt)
                    suspect_retried = True
                    await asyncio.sleep(self.retry.delay(attempt, None))
                    continue
                error = status_sentence(status)
                if status == 300 and glance is V1:
                    # Raises NoV1ApiError unless the run may switch (api="auto").
                    self._use(after_300(self.api, self.endpoint, target), "")
                    attempt -= 1  # the 300 was version negotiation, not a failure
                    continue
                if status == 401:
                    if signer is not None:  # a new signature would be refused all the same
                        credentials.dead = True
                        return FetchResult(
                            position, image_id, 401, None, SIGNATURE_REJECTED, attempt
                        )
                    if not refreshed:
                        refreshed = True
                        assert token is not None
                        if await credentials.refresh(token):
                            continue
                    credentials.dead = True
                    return FetchResult(position, image_id, 401, None, TOKEN_REJECTED, attempt)
                if 300 < status < 400:
                    went = origin(response.headers.get("Location", ""))
                    where = "another origin" if went != self._origin else "same origin"
                    return FetchResult(
                        position,
                        image_id,
                        status,
                        None,
                        f"{error}: redirect to {where} not followed (Glance never redirects HEAD)",
                        attempt,
                    )
                if status not in self.retry.statuses:
                    # A 404 or 403 keeps the server's request id: what support asks for.
                    return FetchResult(
                        position, image_id, status, _request_id_only(headers), error, attempt
                    )
                retry_after = retry_after_of(headers.get("Retry-After"))
            if attempt >= self.retry.attempts:
                suffix = f" (gave up after {attempt} attempts)" if attempt > 1 else ""
                return FetchResult(position, image_id, status, None, error + suffix, attempt)
            if probe is not None:
                probe.rest()
            await asyncio.sleep(self.retry.delay(attempt, retry_after))

    def _connect_failed(self, slot: int, error: str) -> None:
        """Count a connection-level failure; the breaker for an endpoint that died."""
        self._connect_failures += 1
        probe = self._probe
        if probe is not None:
            if probe.prober == slot:
                probe.cause = error
        elif self._connect_failures >= max(BREAKER_FAILURES, self.concurrency):
            logger.info(
                "%s: %d connection failures in a row (%s): one request at a time until it "
                "answers again",
                self.endpoint,
                self._connect_failures,
                error,
            )
            self._probe = _Probe(PROBE_PATIENCE * self.timeout.total)

    def _open_probe(self, why: str) -> None:
        """The endpoint answered (or the probe waited long enough): full concurrency."""
        probe, self._probe = self._probe, None
        if probe is not None:
            if self._gate is not None:
                # A new round: a 429 to the lone probe says nothing about the limit.
                self._gate.epoch += 1
            if why:
                logger.debug("%s: %s", self.endpoint, why)
            probe.changed()

    def _probe_done(self, slot: int) -> None:
        """The probing worker's id is finished: without any answer, decide what next."""
        probe = self._probe
        if probe is None or probe.prober != slot or probe.unreachable is not None:
            return
        if probe.cause is not None:  # every attempt failed to connect: stop sending
            probe.unreachable = UNREACHABLE_NOT_SENT.format(cause=probe.cause)
            logger.info("%s is unreachable (%s): no more requests", self.endpoint, probe.cause)
            probe.changed()
        else:  # timed out, say: not an endpoint to give up on; the next id probes
            probe.prober = None
            probe.changed()


class _Probe:
    """One request at a time until the endpoint gives an HTTP answer (any status).

    The first worker to ask becomes the prober; the others wait in :meth:`wait`. Any
    answer opens the run to full concurrency. When the prober's id ends with every
    attempt failing at the connection level, the endpoint is unreachable: the ids not
    yet sent get a row saying so. When the prober's current attempt has gone on for
    ``patience`` seconds without an answer (a slow or hanging server, not a dead one),
    the waiters send anyway, so probing never makes a slow server a serial one.
    """

    __slots__ = ("_changed", "_loop", "cause", "patience", "prober", "started", "unreachable")

    def __init__(self, patience: float) -> None:
        self._loop = asyncio.get_running_loop()
        self.patience = patience
        self.prober: int | None = None  # the worker slot sending alone
        self.cause: str | None = None  # its last failure, when connection-level
        self.unreachable: str | None = None  # the row of the ids not sent, once decided
        self.started = self._loop.time()
        self._changed: asyncio.Future[None] = self._loop.create_future()

    def begin(self) -> None:
        """The prober sends an attempt now (waiters restart their patience from here)."""
        self.started = self._loop.time()
        self.changed()

    def rest(self) -> None:
        """The prober waits before its next attempt: nobody's patience runs meanwhile."""
        self.started = math.inf

    async def wait(self) -> bool:
        """Wait until the probe changes; False when the prober's attempt outlasted patience."""
        remaining = self.started + self.patience - self._loop.time()
        if remaining <= 0:
            return False
        await asyncio.wait((self._changed,), timeout=None if remaining == math.inf else remaining)
        return True

    def changed(self) -> None:
        """Wake every waiter (they look at the probe again)."""
        if not self._changed.done():
            self._changed.set_result(None)
        self._changed = self._loop.create_future()


class _Watchdog:
    """Enforces the per-request ``total`` timeout for all workers with one periodic check.

    A timer per request (what aiohttp's ``ClientTimeout(total=...)`` does) cost ~15% of
    the client's CPU at zero latency. Here a worker writes its deadline into its slot
    before each request; :meth:`watch` wakes every ``total / 10`` seconds (at most 1 s)
    and cancels the workers whose deadline has passed, so a request times out between
    ``total`` and ``total + tick`` seconds after it started.
    """

    def __init__(self, workers: int, total: float) -> None:
        self.total = total
        self.tick = min(1.0, total / 10)
        self.deadlines = [math.inf] * workers
        self.cancelled = [False] * workers
        self.tasks: list[asyncio.Task[None] | None] = [None] * workers
        self._loop = asyncio.get_running_loop()

    def arm(self, slot: int) -> None:
        self.deadlines[slot] = self._loop.time() + self.total

    def fired(self, slot: int) -> bool:
        """After a CancelledError: True (and the cancellation absorbed) if it was ours."""
        self.deadlines[slot] = math.inf
        if not self.cancelled[slot]:
            return False
        self.cancelled[slot] = False
        task = self.tasks[slot]
        if task is not None:
            task.uncancel()
        return True

    async def disarm(self, slot: int) -> None:
        """The request finished; absorb a cancellation that raced with its answer."""
        self.deadlines[slot] = math.inf
        if self.cancelled[slot]:  # cancelled after the answer arrived, not yet delivered
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                if not self.fired(slot):
                    raise
            else:  # the cancellation was consumed elsewhere: reset the slot all the same
                self.fired(slot)

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            now = self._loop.time()
            for slot, deadline in enumerate(self.deadlines):
                task = self.tasks[slot]
                if deadline <= now and not self.cancelled[slot] and task is not None:
                    self.cancelled[slot] = True
                    task.cancel()


def _request_id_only(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]] | None:
    """The answer's ``X-Openstack-Request-Id`` as the only header pair kept, if sent."""
    request_id = headers.get("X-Openstack-Request-Id")
    if request_id is None:
        return None
    return [(REQUEST_ID, request_id.encode("utf-8", "surrogateescape"))]
