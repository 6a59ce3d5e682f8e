"""The async HEAD engine: one session, a bounded connector, a fixed pool of workers.

:class:`HeadFetcher` sends ``HEAD {endpoint}/v1/images/{id}`` for every id it is given
and hands one :class:`FetchResult` per id to a callback, whatever happened: the headers
on a 200, otherwise the final HTTP status and an error sentence. It never decides what a
row looks like; :mod:`imgframe.api` does. With ``api="v2"`` (or ``"auto"`` after a 300
for /v1) it sends ``GET /v2/images/{id}`` instead and hands on the JSON document as the
v1 header pairs it stands for (:func:`imgframe.parse.v2_header_pairs`).

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

Throttling, both shared by all workers of one fetcher, i.e. per endpoint:

- ``max_rps`` caps the request rate with :class:`_Pacer`, which gives each request the
  next free time slot ``1 / max_rps`` after the previous one (no burst).
- ``adaptive`` (on by default) runs :class:`_ConcurrencyGate`, an AIMD limit on the
  requests in flight: a 429 or 503 halves it, a stretch of fine answers adds one back,
  up to ``concurrency``. Changes are logged at debug level on ``imgframe.fetch``.

When they are not throttling, they cost a few integer operations per request and no
timer: the pacer sleeps only when a request's slot is in the future, and the gate
queues a worker only when the limit is reached.

Hostile servers: nothing in an answer may end the run. Every failed attempt
becomes one fixed sentence of the ``error`` vocabulary (the constants below; details at
debug level on ``imgframe.fetch``); a 200 that is not the requested image's metadata
(another id, conflicting ids, no metadata, a broken HTTP answer) is a row with an error,
asked again once; any other exception while reading one answer is that id's row. The
run starts with one request (:class:`_Probe`) and opens up to ``concurrency`` at the
first HTTP answer; when the probe's id never connects, the endpoint is unreachable and
the remaining ids are not sent. In the steady state this costs one ``is not None``
test per request and an id comparison per 200.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import json
import logging
import math
import random
import re
import ssl
import time
from collections import deque
from collections.abc import AsyncIterable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from types import MappingProxyType
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit

import aiohttp
import aiohttp.http_exceptions
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from multidict import istr
from yarl import URL

from imgframe.auth import RequestSigner, TokenSource
from imgframe.errors import AuthError, ConfigError, FetchError, ImgframeError, NoV1ApiError
from imgframe.outcome import INVALID_ID
from imgframe.parse import v2_header_pairs

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

USER_AGENT = "imgframe/0.1 (+aiohttp)"
TOKEN_CHECK_SECONDS = 5.0  # how often a running fetch asks its token source again
logger = logging.getLogger("imgframe.fetch")
APIS = ("v1", "v2", "auto")
_REQUEST_ID = b"x-openstack-request-id"
# Pre-folded for multidict: a lookup per answer without lower-casing the name each time.
_META_ID = istr("X-Image-Meta-Id")
# Answers that say "too much, slow down": they shrink the adaptive concurrency limit.
THROTTLE_STATUSES = frozenset({429, 503})
# One path segment, nothing a server or proxy could reinterpret (docs/ARCHITECTURE.md):
# no / \ ? #, no ASCII or C1 control, no space or other Unicode separator, no "..", not
# ".". RE2 syntax: checked for all ids at once in pyarrow.
_UNSAFE_ID = r"[/\\?#\x{00}-\x{20}\x{7f}-\x{9f}\p{Z}]|\.\.|^\.$"
MAX_ID_LENGTH = 255
# RFC 3986 unreserved characters: such an id (every UUID) needs no percent-encoding.
_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]+")
# What a signer adds its headers to: the session's own (User-Agent) are not signed.
NO_HEADERS: Mapping[str, str] = MappingProxyType({})
TOKEN_REJECTED = "HTTP 401 Unauthorized: the token was rejected and could not be refreshed"
TOKEN_NOT_SENT = "not requested: the token was rejected (401) and the token source had no fresh one"
SIGNATURE_REJECTED = (
    "HTTP 401 Unauthorized: the access key signature was rejected (clock skew or wrong key)"
)
SIGNATURE_NOT_SENT = (
    "not requested: the access key signature was rejected (401): clock skew or wrong key"
)

# Parser limits of the client sessions (fetcher and listing). aiohttp's defaults (128
# headers, 8,190 bytes per header line) fail real images: Glance v1 sends one header per
# custom property, and a property value may be long. These take 1,000 properties and
# values of 64 KiB with room to spare.
MAX_HEADERS = 2048
MAX_FIELD_SIZE = 128 * 1024  # bytes of one header line, name and value together
MAX_LINE_SIZE = 8190  # the status line: aiohttp's default, nothing real is longer
# ClientSession keywords; max_headers is one only in recent aiohttp (3.13.4's changelog
# adds it), so each is passed only where it exists.
PARSER_LIMITS: Mapping[str, Any] = MappingProxyType(  # Any: ** into ClientSession
    {
        name: value
        for name, value in (
            ("max_headers", MAX_HEADERS),
            ("max_field_size", MAX_FIELD_SIZE),
            ("max_line_size", MAX_LINE_SIZE),
        )
        if name in inspect.signature(aiohttp.ClientSession.__init__).parameters
    }
)

# The ``error`` vocabulary: one fixed sentence per cause, so that 20,000 failed rows make
# a handful of categories. The details (URL, exception text, the server's bytes) go to the
# ``imgframe.fetch`` logger at debug level, never into a row.
WRONG_ID = "bad response: the answer is for another image (X-Image-Meta-Id differs)"
CONFLICTING_IDS = "bad response: conflicting X-Image-Meta-Id headers"
NO_METADATA = "bad response: a 200 answer without image metadata"
NO_ID = "bad response: a 200 answer without X-Image-Meta-Id"
V2_WRONG_ID = "bad response: the v2 image document is for another image"
V2_NO_ID = "bad response: the v2 image document has no id"
V2_NOT_JSON = "bad response: the v2 image document is not JSON"
V2_NOT_OBJECT = "bad response: the v2 image document is not a JSON object"
BROKE_HTTP_STATUS = (
    "bad response: the server broke HTTP (invalid status line, e.g. a body after a HEAD answer)"
)
BROKE_HTTP_HEADER = "bad response: the server broke HTTP (invalid header line)"
BROKE_HTTP_BODY = "bad response: the server broke HTTP (malformed or cut-short body)"
BROKE_HTTP = "bad response: the server broke HTTP (malformed answer)"
TOO_MANY_HEADERS = f"bad response: more than {MAX_HEADERS} headers"
HEADER_TOO_LONG = f"bad response: a header line over {MAX_FIELD_SIZE // 1024} KiB"
INTERNAL = "internal error while reading the answer (traceback in the imgframe.fetch debug log)"
#: How the rows not sent because the endpoint never answered begin (for summaries).
UNREACHABLE_PREFIX = "not requested: the endpoint was unreachable"
#: Those rows' error; ``{cause}`` is the probe's own, e.g. "connection failed: refused".
UNREACHABLE_NOT_SENT = UNREACHABLE_PREFIX + " ({cause})"
# Causes a connection-level failure is named by (errno names cover the rest).
_ERRNO_CAUSES = {
    errno.ECONNREFUSED: "refused",
    errno.ECONNRESET: "reset",
    errno.ECONNABORTED: "aborted",
    errno.ENETUNREACH: "network unreachable",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ETIMEDOUT: "timed out",
    errno.EPIPE: "broken pipe",
}
# Failure kinds (see _failure): only CONNECT counts towards "the endpoint is unreachable".
CONNECT, TRANSIENT, BROKEN, INTERNAL_KIND = "connect", "transient", "broken", "internal"
# How long workers wait for the first answer before they send anyway: the cold-token
# probe must never turn a slow server into a serial one (fraction of Timeout.total).
PROBE_PATIENCE = 0.5
# A run that had answers goes back to one request at a time after this many consecutive
# connection-level failures (at least; concurrency if larger), and stops sending if that
# probe fails at the connection level too.
BREAKER_FAILURES = 16


@dataclass(frozen=True, slots=True)
class Timeout:
    """Per-request time limits in seconds.

    ``total`` covers one attempt from asking for a connection to the end of the answer
    (enforced to within ``total / 10``, at most 1 s, by one watchdog for all workers);
    ``connect`` limits opening a new TCP (and TLS) connection.

    Examples
    --------
    >>> Timeout(total=10)
    Timeout(total=10, connect=10.0)
    """

    total: float = 30.0
    connect: float = 10.0

    def __post_init__(self) -> None:
        if not (self.total > 0 and self.connect > 0):
            raise ConfigError(f"timeouts must be positive seconds, got {self!r}")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How transient failures (429, 5xx, timeouts, dropped connections) are retried.

    ``attempts`` counts the first try. The wait before try ``n+1`` is ``Retry-After``
    when the server sent one (capped at ``max_retry_after``), else
    ``backoff * 2**(n-1)`` capped at ``max_backoff``, times a random factor in
    [0.5, 1] so that many workers do not retry in lock-step.

    Examples
    --------
    >>> RetryPolicy(attempts=3).delay(1, retry_after=None) <= 0.2
    True
    >>> RetryPolicy().delay(2, retry_after=5.0)
    5.0
    """

    attempts: int = 4
    backoff: float = 0.2
    max_backoff: float = 20.0
    max_retry_after: float = 60.0
    statuses: frozenset[int] = field(default=frozenset({429, 500, 502, 503, 504}))

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or self.attempts < 1:
            raise ConfigError(f"attempts must be an integer >= 1, got {self.attempts!r}")
        for value in (self.backoff, self.max_backoff, self.max_retry_after):
            if not (isinstance(value, int | float) and 0 <= value < math.inf):
                raise ConfigError(f"backoff times must be finite seconds >= 0, got {value!r}")

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based).

        A ``retry_after`` that is not a finite number >= 0 is treated as absent.

        Examples
        --------
        >>> RetryPolicy(backoff=1.0).delay(1, retry_after=float("nan")) <= 1.0
        True
        """
        if retry_after is not None and 0.0 <= retry_after < math.inf:
            return min(retry_after, self.max_retry_after)
        wait = min(self.backoff * 2 ** (attempt - 1), self.max_backoff)
        return wait * random.uniform(0.5, 1.0)


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


def invalid_ids(image_ids: Sequence[str]) -> np.ndarray:
    """Mask of the ids that must not be sent as one URL path segment (vectorized).

    Examples
    --------
    >>> invalid_ids(["3c3d1d01-b48a-4639-8a88-08be3b9b5d78", "../admin", "a b", "", "."]).tolist()
    [False, True, True, True, True]
    """
    try:
        ids = pa.array(image_ids, type=pa.large_string())
    except (UnicodeEncodeError, pa.ArrowInvalid, pa.ArrowTypeError):
        # Lone surrogates cannot be sent as UTF-8: make those ids fail the check below.
        ids = pa.array([_utf8_or_nul(i) for i in image_ids], type=pa.large_string())
    length = pc.utf8_length(ids)
    bad = pc.or_(
        pc.match_substring_regex(ids, _UNSAFE_ID),
        pc.or_(pc.equal(length, 0), pc.greater(length, MAX_ID_LENGTH)),
    )
    return bad.to_numpy(zero_copy_only=False)


def _utf8_or_nul(image_id: str) -> str:
    try:
        image_id.encode("utf-8")
    except UnicodeEncodeError:
        return "\x00"
    return image_id


def image_id_problem(image_id: str) -> str | None:
    """Why ``image_id`` must not be sent as one URL path segment, or None if it is safe.

    Examples
    --------
    >>> image_id_problem("3c3d1d01-b48a-4639-8a88-08be3b9b5d78") is None
    True
    >>> image_id_problem("../admin")
    'invalid image id'
    """
    return INVALID_ID if invalid_ids([image_id])[0] else None


def normalize_endpoint(endpoint: str) -> str:
    """The Glance endpoint without a trailing ``/`` or API version; checked for sanity.

    A last path segment ``v1``, ``v2`` or ``v1.0``, ``v2.1``... is the API version that
    users copy from a catalog or the vendor's docs: imgframe adds the one it uses, so
    ``.../v2`` must not become ``.../v2/v1/images/...`` (every answer a 404).

    Examples
    --------
    >>> normalize_endpoint("https://ims.example.com/v1/")
    'https://ims.example.com'
    >>> normalize_endpoint("https://glance.example.com:9292/image/v2.1")
    'https://glance.example.com:9292/image'
    """
    if not isinstance(endpoint, str) or not endpoint.strip():
        raise ConfigError("endpoint must be a URL such as https://glance.example.com:9292")
    endpoint = endpoint.strip().rstrip("/")
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"endpoint must be an http(s) URL with a host, got {endpoint!r}")
    if parts.query or parts.fragment:
        raise ConfigError(f"endpoint must not have a query or fragment: {endpoint!r}")
    if parts.username or parts.password:
        raise ConfigError("endpoint must not carry credentials; pass token=... instead")
    return _API_VERSION.sub("", endpoint)


_API_VERSION = re.compile(r"/v[12](?:\.[0-9]+)?$", re.IGNORECASE)
# delay-seconds of RFC 9110 (ASCII digits; a fraction tolerated): float() alone would
# also take "nan", "inf", "-5", "1_0" and Unicode digits.
_DELAY_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]*)?")


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds from now, or None when absent or not a valid value.

    A finite number of seconds >= 0 or an HTTP date; anything else (NaN, inf, negative,
    garbage) is treated as absent, i.e. the normal backoff applies. Capping is
    :meth:`RetryPolicy.delay`'s job.

    Examples
    --------
    >>> [_retry_after(v) for v in ("5", "0.5", "nan", "inf", "-1", "soon", "", None)]
    [5.0, 0.5, None, None, None, None, None, None]
    >>> _retry_after("Wed, 21 Oct 2015 07:28:00 GMT")  # in the past: retry now
    0.0
    """
    if not value:
        return None
    text = value.strip()
    if _DELAY_SECONDS.fullmatch(text):
        seconds = float(text)
        return seconds if seconds < math.inf else None
    try:
        when = parsedate_to_datetime(text)
        seconds = when.timestamp() - time.time()
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def _ssl_option(verify: bool | str) -> bool | ssl.SSLContext:
    if verify is True:
        return True
    if verify is False:
        return False
    if isinstance(verify, str):
        try:
            return ssl.create_default_context(cafile=verify)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load CA bundle {verify!r}: {exc}") from None
    raise ConfigError("verify must be True, False or a CA bundle path")


def tls_refused(endpoint: str, exc: aiohttp.ClientConnectorCertificateError) -> str:
    """The message for a server certificate that did not verify."""
    return (
        f"the TLS certificate of {endpoint} was not accepted ({exc.certificate_error}): "
        "pass verify='/path/to/ca.pem' (the CA that signed it) or, on a lab cloud, verify=False"
    )


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class IdFeed:
    """``(position, image_id)`` pages from an async source, for :meth:`HeadFetcher.run`.

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

    def __init__(
        self, pages: AsyncIterable[Iterable[tuple[int, str]]], *, max_pages_ahead: int = 3
    ) -> None:
        if not isinstance(max_pages_ahead, int) or max_pages_ahead < 1:
            raise ConfigError(f"max_pages_ahead must be an integer >= 1, got {max_pages_ahead!r}")
        self._pages = pages
        self.max_pages_ahead = max_pages_ahead
        #: The page the workers are draining now (shared: each item goes to one worker).
        self.current: Iterator[tuple[int, str]] = iter(())
        self._queued: deque[Iterator[tuple[int, str]]] = deque()
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

    async def next_page(
        self, finished: Iterator[tuple[int, str]]
    ) -> Iterator[tuple[int, str]] | None:
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
        concurrency: int = 32,
        timeout: Timeout = Timeout(),
        retry: RetryPolicy = RetryPolicy(),
        verify: bool | str = True,
        max_rps: float | None = None,
        adaptive: bool = True,
        api: str = "v1",
    ) -> None:
        if api not in APIS:
            raise ConfigError(f"api must be 'v1', 'v2' or 'auto', got {api!r}")
        if not isinstance(concurrency, int) or not 1 <= concurrency <= 10_000:
            raise ConfigError(
                f"concurrency must be an integer from 1 to 10000, got {concurrency!r}"
            )
        if max_rps is not None and (
            isinstance(max_rps, bool)
            or not isinstance(max_rps, int | float)
            or not 0 < max_rps < math.inf
        ):
            raise ConfigError(f"max_rps must be a positive number or None, got {max_rps!r}")
        self.endpoint = normalize_endpoint(endpoint)
        self._base = self.endpoint + "/v1/images/"
        self._base_v2 = self.endpoint + "/v2/images/"
        self.api = api
        #: True once the run uses ``GET /v2/images/{id}``: from the start with
        #: ``api="v2"``, after the first 300 for /v1 with ``api="auto"``.
        self.using_v2 = api == "v2"
        self._origin = _origin(self.endpoint)
        # A signer signs each request; a token source gives one header dict per token.
        self._signer: RequestSigner | None = None
        self._tokens: TokenSource | None = None
        if isinstance(tokens, RequestSigner):
            self._signer = tokens
        else:
            self._tokens = tokens
        self.concurrency = concurrency
        self.timeout = timeout
        self.retry = retry
        self._ssl = _ssl_option(verify)
        self._token: str | None = None
        self._auth: dict[str, str] = {}  # one dict per token, not one per request
        self._token_dead = False
        self._refresh_lock: asyncio.Lock | None = None
        self.max_rps = None if max_rps is None else float(max_rps)
        self.adaptive = bool(adaptive)
        self._gate: _ConcurrencyGate | None = None
        #: ``(seconds since the run started, new limit)`` for the latest changes of the
        #: adaptive concurrency limit, oldest first (bounded: a long run keeps the last).
        self.concurrency_changes: deque[tuple[float, int]] = deque(maxlen=1000)
        self.requests_sent = 0
        self._timed_out = f"timed out after {timeout.total:g} s"
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

    def use_v2(self, why: str) -> None:
        """Send ``GET /v2/images/{id}`` from now on (``api="auto"`` found no v1)."""
        if self.api != "auto":
            raise ConfigError(f"only api='auto' may switch to v2, this fetcher has {self.api!r}")
        if not self.using_v2:
            self.using_v2 = True
            logger.info("%s has no Glance v1 API (%s): using v2", self.endpoint, why)

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
        """
        self._refresh_lock = asyncio.Lock()
        if self._tokens is not None:
            try:
                self._token = await self._tokens.token()
                self._auth = {"X-Auth-Token": self._token}
            except AuthError:
                raise
            except Exception as exc:  # a token source's own failure, translated once here
                raise AuthError(f"could not get a token: {type(exc).__name__}: {exc}") from None
        connector = aiohttp.TCPConnector(
            limit=self.concurrency, ssl=self._ssl, ttl_dns_cache=300, enable_cleanup_closed=True
        )
        session = aiohttp.ClientSession(
            connector=connector,
            # No per-request total timeout in aiohttp: its timer per request cost ~15% of
            # the client's CPU at zero latency (measured). _Watchdog enforces `total` with
            # one periodic check instead. sock_connect times only new TCP connections.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout.connect),
            headers={"User-Agent": USER_AGENT},
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            **PARSER_LIMITS,
        )
        # The first request goes alone: a brand-new token presented by every worker at
        # once is validated once per request by a cache-less keystonemiddleware, and an
        # endpoint that refuses connections is found after one id, not a million.
        self._probe = _Probe(PROBE_PATIENCE * self.timeout.total)
        self._connect_failures = 0
        # The workers share one iterator: the event loop runs one task at a time, so each
        # item goes to exactly one worker, and a worker pulls the next id only when it is
        # free -- a queue with no producer task and no hand-off per id. A feed hands out
        # one such iterator per page.
        feed = items if isinstance(items, IdFeed) else None
        shared = items.current if isinstance(items, IdFeed) else iter(items)
        watchdog = _Watchdog(self.concurrency, self.timeout.total)
        # None when off, so that the unthrottled path pays one `is not None` test each.
        pacer = None if self.max_rps is None else _Pacer(self.max_rps)
        self._gate = gate = (
            _ConcurrencyGate(self.concurrency, self.endpoint, self.concurrency_changes)
            if self.adaptive
            else None
        )

        async def work(slot: int) -> None:
            watchdog.tasks[slot] = asyncio.current_task()  # type: ignore[assignment]
            page: Iterator[tuple[int, str]] | None = shared
            while page is not None:
                for position, image_id in page:
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
                page = None if feed is None else await feed.next_page(page)

        watching = asyncio.create_task(watchdog.watch())
        # A signer has no token to renew.
        renewing = (
            asyncio.create_task(self._keep_token_fresh()) if self._tokens is not None else None
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

    async def _keep_token_fresh(self, every: float = TOKEN_CHECK_SECONDS) -> None:
        """Ask the token source again now and then, so a source that renews before expiry
        (Keystone) is used before the server says 401; workers never wait for it."""
        assert self._tokens is not None
        while True:
            await asyncio.sleep(every)
            try:
                fresh = await self._tokens.token()
            except Exception:  # a failing source: the 401 path will ask refresh() anyway
                continue
            if fresh and fresh != self._token and not self._token_dead:
                self._token, self._auth = fresh, {"X-Auth-Token": fresh}

    async def _fetch_one(
        self,
        session: aiohttp.ClientSession,
        watchdog: _Watchdog,
        gate: _ConcurrencyGate | None,
        pacer: _Pacer | None,
        slot: int,
        position: int,
        image_id: str,
    ) -> FetchResult:
        segment = image_id if _UNRESERVED.fullmatch(image_id) else quote(image_id, safe="")
        signer = self._signer
        attempt = 0
        refreshed = False
        suspect_retried = False  # an answer that lied is asked again once
        status: int | None = None
        error = ""
        while True:
            if self._token_dead:
                return FetchResult(
                    position,
                    image_id,
                    None,
                    None,
                    TOKEN_NOT_SENT if signer is None else SIGNATURE_NOT_SENT,
                    attempt,
                )
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
            token, auth = self._token, self._auth
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
                    v2 = self.using_v2
                    # encoded=True: yarl sends the string as it is, so a signer signs
                    # exactly the path on the wire.
                    if v2:  # Glance v2 has no metadata HEAD: GET the image document
                        target = self._base_v2 + segment
                        if signer is not None:
                            auth = signer.sign("GET", target, NO_HEADERS)
                        url = URL(target, encoded=True)
                        request = session.get(url, headers=auth, allow_redirects=False)
                    else:
                        target = self._base + segment
                        if signer is not None:
                            auth = signer.sign("HEAD", target, NO_HEADERS)
                        url = URL(target, encoded=True)
                        request = session.head(url, headers=auth, allow_redirects=False)
                    async with request as response:
                        status = response.status
                        headers = response.headers
                        raw_headers: Sequence[tuple[bytes, bytes]] = response.raw_headers
                        body = await response.read() if v2 and status == 200 else b""
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
                error, kind = _failure(exc, self.timeout)
                # The URL and the exception (the server's bytes) go here, not in the row;
                # the token is in a header, never in either.
                logger.debug(
                    "%s %s: %s (%s)",
                    "GET" if self.using_v2 else "HEAD",
                    (self._base_v2 if self.using_v2 else self._base) + segment,
                    error,
                    _describe(exc),
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
                    if v2:
                        try:
                            raw_headers = _v2_headers(body, raw_headers, image_id)
                            problem = None
                        except _LyingAnswer as exc:
                            problem = exc.sentence
                    else:
                        ids = headers.getall(_META_ID, None)
                        problem = (
                            None
                            if ids is not None and len(ids) == 1 and ids[0] == image_id
                            else _identity_problem(headers, ids, image_id)
                        )
                    if problem is None:
                        return FetchResult(position, image_id, 200, raw_headers, None, attempt)
                    # An answer that lies is a row with an error, never a good row. The
                    # status received is kept, the headers are not.
                    logger.debug("%s %s: %s", self.endpoint, image_id, problem)
                    if suspect_retried or attempt >= self.retry.attempts:
                        return FetchResult(position, image_id, 200, None, problem, attempt)
                    suspect_retried = True
                    await asyncio.sleep(self.retry.delay(attempt, None))
                    continue
                error = f"HTTP {status} {_reason(status)}".rstrip()
                if status == 300 and not v2:
                    if self.api == "auto":
                        if not self.using_v2:
                            self.using_v2 = True
                            logger.info("%s has no Glance v1 API: using v2", self.endpoint)
                        attempt -= 1  # the 300 was version negotiation, not a failure
                        continue
                    raise NoV1ApiError(
                        f"{self.endpoint} answered 300 Multiple Choices for /v1: this cloud has "
                        "no Glance v1 API any more (Glance Rocky or later)",
                        url=self._base,
                        status=300,
                    )
                if status == 401:
                    if signer is not None:  # a new signature would be refused all the same
                        self._token_dead = True
                        return FetchResult(
                            position, image_id, 401, None, SIGNATURE_REJECTED, attempt
                        )
                    if not refreshed:
                        refreshed = True
                        assert token is not None
                        if await self._refresh(token):
                            continue
                    self._token_dead = True
                    return FetchResult(position, image_id, 401, None, TOKEN_REJECTED, attempt)
                if 300 < status < 400:
                    went = _origin(response.headers.get("Location", ""))
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
                retry_after = _retry_after(headers.get("Retry-After"))
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

    async def _refresh(self, rejected: str) -> bool:
        """Get a fresh token once for all workers that saw ``rejected`` fail."""
        assert self._refresh_lock is not None and self._tokens is not None
        async with self._refresh_lock:
            if self._token != rejected:  # another worker already refreshed it
                return True
            try:
                fresh = await self._tokens.refresh(rejected)
            except Exception:  # a failing token source is a rejected token, not a crash
                fresh = None
            if not fresh or fresh == rejected:
                return False
            self._token, self._auth = fresh, {"X-Auth-Token": fresh}
            return True


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


class _Pacer:
    """Spaces the requests of all workers ``1 / max_rps`` seconds apart.

    A virtual clock, not a timer: each request reserves the next free slot with one
    ``loop.time()`` read and sleeps only if that slot is in the future. Slots missed while
    nobody was asking (a slow server, a pause) are not saved up for a burst later, so the
    rate never exceeds ``max_rps`` over any stretch of time.

    Examples
    --------
    >>> async def three_reservations():
    ...     pacer = _Pacer(10.0)
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


class _ConcurrencyGate:
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


class _LyingAnswer(Exception):
    """A 200 answer that is not the requested image's metadata; ``sentence`` is the row's
    error (one of the module's fixed sentences, never the server's text)."""

    def __init__(self, sentence: str) -> None:
        super().__init__(sentence)
        self.sentence = sentence


def _v2_headers(
    body: bytes, raw_headers: Sequence[tuple[bytes, bytes]], image_id: str
) -> list[tuple[bytes, bytes]]:
    """A v2 image document (JSON) as v1 header pairs, with the answer's request id.

    Raises :class:`_LyingAnswer` for a document that is not an image object or is
    another image's (ids compared as :func:`same_image_id` does).
    """
    try:
        image = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise _LyingAnswer(V2_NOT_JSON) from None
    if not isinstance(image, dict):
        raise _LyingAnswer(V2_NOT_OBJECT)
    answered = image.get("id")
    if not isinstance(answered, str) or not answered:
        raise _LyingAnswer(V2_NO_ID)
    if not same_image_id(answered, image_id):
        raise _LyingAnswer(V2_WRONG_ID)
    pairs = v2_header_pairs(image)
    pairs.extend(pair for pair in raw_headers if pair[0].lower() == _REQUEST_ID)
    return pairs


def same_image_id(answered: str, requested: str) -> bool:
    """Whether an answer's image id names the requested image.

    Equal, or equal ignoring ASCII case: a MySQL-backed Glance (case-insensitive
    collation) finds an image by its id in upper case and answers with the stored one.
    Non-ASCII letters are compared exactly.

    Examples
    --------
    >>> same_image_id("3c3d1d01-b48a-4639-8a88", "3C3D1D01-B48A-4639-8A88")
    True
    >>> same_image_id("3c3d1d01-b48a", "3c3d1d01-b48b")
    False
    """
    if answered == requested:
        return True
    fold = _ascii_fold
    return fold(answered) == fold(requested)


def _ascii_fold(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape").lower()  # bytes.lower(): ASCII only


def _identity_problem(headers: Any, ids: list[str] | None, image_id: str) -> str | None:
    """Why a v1 200 answer is not this image's metadata, or None if it is (slow path)."""
    if ids is None:
        has_metadata = any(name.lower().startswith("x-image-meta-") for name in headers)
        return NO_ID if has_metadata else NO_METADATA
    if len({_ascii_fold(value) for value in ids}) > 1:
        return CONFLICTING_IDS
    return None if same_image_id(ids[0], image_id) else WRONG_ID


def _failure(exc: BaseException, timeout: Timeout) -> tuple[str, str]:
    """The row's error sentence for a failed attempt, and its kind.

    Kinds: ``CONNECT`` (no answer could start: refused, DNS, TLS, reset, connect
    timeout; counts towards "unreachable"), ``TRANSIENT`` (retried like a 503),
    ``BROKEN`` (the server broke HTTP), ``INTERNAL_KIND`` (a bug: one row, not a crash).

    Examples
    --------
    >>> _failure(aiohttp.ServerDisconnectedError(), Timeout())
    ('connection failed: closed by the server before an answer', 'connect')
    """
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "connection failed: DNS lookup failed", CONNECT
    if isinstance(exc, aiohttp.ClientSSLError):
        return "connection failed: TLS handshake failed", CONNECT
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return f"connection failed: timed out after {timeout.connect:g} s", CONNECT
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection failed: closed by the server before an answer", CONNECT
    if isinstance(exc, TimeoutError):  # a read timeout (aiohttp's own or the OS's)
        return f"timed out after {timeout.total:g} s", TRANSIENT
    if isinstance(exc, OSError):  # aiohttp's ClientOSError, ClientConnectorError too
        os_error = getattr(exc, "os_error", exc)
        number = getattr(os_error, "errno", None)
        cause = _ERRNO_CAUSES.get(number) if number is not None else None
        if cause is None:
            cause = errno.errorcode.get(number, "error") if number is not None else "error"
            if "refused" in str(exc).lower():  # happy eyeballs: several errors, no errno
                cause = "refused"
        return f"connection failed: {cause}", CONNECT
    if isinstance(exc, aiohttp.ClientConnectionError):
        return "connection failed: error", CONNECT
    if isinstance(exc, aiohttp.ClientPayloadError):
        return BROKE_HTTP_BODY, BROKEN
    if isinstance(exc, aiohttp.ClientError):
        return _broken_http(exc), BROKEN
    return INTERNAL, INTERNAL_KIND


def _broken_http(exc: BaseException) -> str:
    """Name what the client's HTTP parser refused, from the exception's causes."""
    seen: BaseException | None = exc
    message = ""
    for _ in range(8):  # a cause chain is short; never loop on a cycle
        if seen is None:
            break
        if isinstance(seen, aiohttp.http_exceptions.LineTooLong):
            return HEADER_TOO_LONG
        if isinstance(seen, aiohttp.http_exceptions.BadStatusLine):
            return BROKE_HTTP_STATUS
        if isinstance(seen, aiohttp.http_exceptions.InvalidHeader):
            return BROKE_HTTP_HEADER
        message += str(getattr(seen, "message", "") or "")
        seen = seen.__cause__
    if "Too many headers" in message:
        return TOO_MANY_HEADERS
    if "Got more than" in message:
        return HEADER_TOO_LONG
    if "status line" in message.lower():
        return BROKE_HTTP_STATUS
    if "header" in message.lower():
        return BROKE_HTTP_HEADER
    return BROKE_HTTP


def _request_id_only(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]] | None:
    """The answer's ``X-Openstack-Request-Id`` as the only header pair kept, if sent."""
    request_id = headers.get("X-Openstack-Request-Id")
    if request_id is None:
        return None
    return [(_REQUEST_ID, request_id.encode("utf-8", "surrogateescape"))]


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return (parts.scheme, (parts.hostname or "").lower(), port)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
