"""The HTTP layer the image fetcher and the lister share.

One way to open a client session (connector, parser limits, TLS option, user agent),
one set of credentials per run (:class:`Credentials`: the first token, one refresh
after a 401 shared by every worker, a signature per request) and one translation of
aiohttp's exceptions into the ``error`` vocabulary (:func:`failure`): the same
failure reads the same in a row of :func:`imgframe.fetch_images` and in the
:class:`~imgframe.FetchError` of a listing. The details (URL, exception text, the
server's bytes) go to the ``imgframe.fetch`` logger at debug level, never into a row.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import logging
import math
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import aiohttp.http_exceptions
from yarl import URL

from imgframe.auth import RequestSigner, TokenSource
from imgframe.config import RetryPolicy, Timeout
from imgframe.errors import AuthError, ConfigError, FetchError

__all__ = [
    "Credentials",
    "body_too_big",
    "failure",
    "get_page",
    "new_session",
    "reason",
    "retry_after",
    "ssl_option",
    "status_sentence",
    "tls_refused",
]

USER_AGENT = "imgframe/0.1 (+aiohttp)"
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

# Sentences of the ``error`` vocabulary for answers that broke HTTP (see failure).
BROKE_HTTP_STATUS = (
    "bad response: the server broke HTTP (invalid status line, e.g. a body after a HEAD answer)"
)
BROKE_HTTP_HEADER = "bad response: the server broke HTTP (invalid header line)"
BROKE_HTTP_BODY = "bad response: the server broke HTTP (malformed or cut-short body)"
BROKE_HTTP = "bad response: the server broke HTTP (malformed answer)"
TOO_MANY_HEADERS = f"bad response: more than {MAX_HEADERS} headers"
HEADER_TOO_LONG = f"bad response: a header line over {MAX_FIELD_SIZE // 1024} KiB"
INTERNAL = "internal error while reading the answer (traceback in the imgframe.fetch debug log)"


# Causes a connection-level failure is named by (errno names cover the rest).
ERRNO_CAUSES = {
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

# delay-seconds of RFC 9110 (ASCII digits; a fraction tolerated): float() alone would
# also take "nan", "inf", "-5", "1_0" and Unicode digits.
DELAY_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]*)?")


def retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds from now, or None when absent or not a valid value.

    A finite number of seconds >= 0 or an HTTP date; anything else (NaN, inf, negative,
    garbage) is treated as absent, i.e. the normal backoff applies. Capping is
    :meth:`RetryPolicy.delay`'s job.

    Examples
    --------
    >>> [retry_after(v) for v in ("5", "0.5", "nan", "inf", "-1", "soon", "", None)]
    [5.0, 0.5, None, None, None, None, None, None]
    >>> retry_after("Wed, 21 Oct 2015 07:28:00 GMT")  # in the past: retry now
    0.0
    """
    if not value:
        return None
    text = value.strip()
    if DELAY_SECONDS.fullmatch(text):
        seconds = float(text)
        return seconds if seconds < math.inf else None
    try:
        when = parsedate_to_datetime(text)
        seconds = when.timestamp() - time.time()
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def ssl_option(verify: bool | str) -> bool | ssl.SSLContext:
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


def reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def failure(exc: BaseException, timeout: Timeout) -> tuple[str, str]:
    """The row's error sentence for a failed attempt, and its kind.

    Kinds: ``CONNECT`` (no answer could start: refused, DNS, TLS, reset, connect
    timeout; counts towards "unreachable"), ``TRANSIENT`` (retried like a 503),
    ``BROKEN`` (the server broke HTTP), ``INTERNAL_KIND`` (a bug: one row, not a crash).

    Examples
    --------
    >>> failure(aiohttp.ServerDisconnectedError(), Timeout())
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
        cause = ERRNO_CAUSES.get(number) if number is not None else None
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
        return broken_http(exc), BROKEN
    return INTERNAL, INTERNAL_KIND


def broken_http(exc: BaseException) -> str:
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


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return (parts.scheme, (parts.hostname or "").lower(), port)


def describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def status_sentence(status: int) -> str:
    """The ``error`` of a final answer that was not a 200.

    Examples
    --------
    >>> status_sentence(404), status_sentence(599)
    ('HTTP 404 Not Found', 'HTTP 599')
    """
    return f"HTTP {status} {reason(status)}".rstrip()


def new_session(
    tls: bool | ssl.SSLContext,
    *,
    limit: int,
    timeout: aiohttp.ClientTimeout,
    headers: Mapping[str, str] | None = None,
    connector_options: Mapping[str, Any] | None = None,
    **session_options: Any,
) -> aiohttp.ClientSession:
    """A client session as the fetcher and the lister open one: at most ``limit``
    sockets, TLS per :func:`ssl_option`, imgframe's user agent, no cookies (a token
    must not travel in a cookie jar) and :data:`PARSER_LIMITS` (real Glance answers
    have more and longer headers than aiohttp's defaults allow). Call it inside the
    run's event loop."""
    connector = aiohttp.TCPConnector(limit=limit, ssl=tls, **(connector_options or {}))
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        headers={"User-Agent": USER_AGENT, **(headers or {})},
        cookie_jar=aiohttp.DummyCookieJar(),
        **session_options,
        **PARSER_LIMITS,
    )


class Credentials:
    """What a run presents: the current token of a token source, or a request signer.

    :meth:`start` gets the first token (a source's own failure becomes an
    :class:`~imgframe.AuthError`, once, here); :meth:`headers` gives a request's
    authentication headers (one dict per token, or a fresh signature of the exact URL
    sent); :meth:`refresh` asks the source for a fresh token once for every request
    that saw the same token rejected; :meth:`keep_fresh` asks it again now and then, so
    a source that renews before expiry is used before the server answers 401. ``dead``
    is set by the caller once a rejected token (or any signature) cannot be renewed.
    No token is ever in the repr.

    Examples
    --------
    >>> from imgframe.auth import StaticToken
    >>> async def first_headers() -> dict[str, str]:
    ...     credentials = Credentials(StaticToken("s3cr3t"))
    ...     await credentials.start()
    ...     return dict(credentials.headers("HEAD", "https://glance.example.com/v1/images/x"))
    >>> asyncio.run(first_headers())
    {'X-Auth-Token': 's3cr3t'}
    >>> Credentials(StaticToken("s3cr3t"))
    Credentials(StaticToken(...))
    """

    __slots__ = ("_lock", "auth", "dead", "signer", "source", "token")

    def __init__(self, tokens: TokenSource | RequestSigner) -> None:
        self.signer: RequestSigner | None = None
        self.source: TokenSource | None = None
        if isinstance(tokens, RequestSigner):
            self.signer = tokens
        else:
            self.source = tokens
        self.token: str | None = None
        self.auth: dict[str, str] = {}  # one dict per token, not one per request
        self.dead = False
        self._lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        held = self.signer if self.signer is not None else self.source
        return f"Credentials({held!r})"

    @property
    def rejected(self) -> str:
        """The ``error`` of a request whose token (or signature) was rejected for good."""
        return TOKEN_REJECTED if self.signer is None else SIGNATURE_REJECTED

    @property
    def not_sent(self) -> str:
        """The ``error`` of the requests not sent after that."""
        return TOKEN_NOT_SENT if self.signer is None else SIGNATURE_NOT_SENT

    async def start(self) -> None:
        """Get the first token (a signer needs none)."""
        self._lock = asyncio.Lock()
        if self.source is None:
            return
        try:
            self._use(await self.source.token())
        except AuthError:
            raise
        except Exception as exc:  # a token source's own failure, translated once here
            raise AuthError(f"could not get a token: {type(exc).__name__}: {exc}") from None

    def _use(self, token: str) -> None:
        self.token, self.auth = token, {"X-Auth-Token": token}

    def headers(self, method: str, url: str) -> Mapping[str, str]:
        """The authentication headers of one request to ``url`` (as sent on the wire)."""
        if self.signer is not None:
            return self.signer.sign(method, url, NO_HEADERS)
        return self.auth

    async def refresh(self, rejected: str) -> bool:
        """Get a fresh token once for all requests that saw ``rejected`` fail."""
        assert self._lock is not None and self.source is not None
        async with self._lock:
            if self.token != rejected:  # another request already refreshed it
                return True
            try:
                fresh = await self.source.refresh(rejected)
            except Exception:  # a failing token source is a rejected token, not a crash
                fresh = None
            if not fresh or fresh == rejected:
                return False
            self._use(fresh)
            return True

    async def keep_fresh(self, every: float) -> None:
        """Ask the token source again every ``every`` seconds (until cancelled);
        requests never wait for it."""
        assert self.source is not None
        while True:
            await asyncio.sleep(every)
            try:
                fresh = await self.source.token()
            except Exception:  # a failing source: the 401 path will ask refresh() anyway
                continue
            if fresh and fresh != self.token and not self.dead:
                self._use(fresh)


async def get_page(
    session: aiohttp.ClientSession,
    url: str,
    credentials: Credentials,
    timeout: Timeout,
    retry: RetryPolicy,
    *,
    endpoint: str,
    log: logging.Logger,
    before_attempt: Callable[[], Awaitable[None]] | None = None,
    on_status: Callable[[int], None] | None = None,
    request_timeout: aiohttp.ClientTimeout | None = None,
    max_body: int | None = None,
    what: str = "listing",
    encoded: bool = False,
) -> tuple[bytes, bytes | None]:
    """GET one listing page: ``(body, X-Openstack-Request-Id or None)`` of its 200.

    The one page loop of every listing (Glance, Nova, Cinder) and of the image members
    calls: retries of the statuses and failures ``retry`` names with its backoff and
    ``Retry-After``, one token refresh after a 401, failures worded as fetch rows are
    (:func:`failure`) in a :class:`~imgframe.FetchError` (:class:`~imgframe.AuthError`
    for a rejected token) whose ``sentence`` is that wording alone and whose message
    starts with ``"{what} {url} failed: "``. ``before_attempt`` runs before each attempt
    (pacing); ``on_status`` sees each answer's status that is not 200 first and may raise
    (the lister's switch to v2 at a 300). ``request_timeout`` limits each attempt where
    the session has no limit of its own (the fetcher's); ``max_body`` refuses a body of
    more bytes (:func:`body_too_big`); ``encoded``: ``url`` is already percent-encoded
    (sent as it is, not parsed again). The URL is signed as yarl sends it (a server's
    next link may need quoting).

    Examples
    --------
    >>> import inspect
    >>> inspect.iscoroutinefunction(get_page)
    True
    """
    wire = URL(url, encoded=encoded)
    attempt = 0
    refreshed = False
    options: dict[str, Any] = {} if request_timeout is None else {"timeout": request_timeout}

    def failed(problem: str, status: int | None) -> FetchError:
        return FetchError(
            f"{what} {url} failed: {problem}", url=url, status=status, sentence=problem
        )

    while True:
        attempt += 1
        if before_attempt is not None:
            await before_attempt()
        token = credentials.token
        headers = credentials.headers("GET", str(wire))
        wait: str | None = None
        try:
            async with session.get(
                wire, headers=headers, allow_redirects=False, **options
            ) as response:
                status = response.status
                if status == 200:
                    body = await _read_body(response, max_body)
                    if body is None:
                        raise failed(body_too_big(max_body or 0), 200)
                    request_id = None
                    for name, value in response.raw_headers:
                        if name.lower() == b"x-openstack-request-id":
                            request_id = value
                    return body, request_id
                wait = response.headers.get("Retry-After")
                await response.read()  # keep the connection reusable
            problem = status_sentence(status)
        except aiohttp.ClientConnectorCertificateError as exc:
            raise FetchError(
                tls_refused(endpoint, exc),
                url=url,
                sentence="connection failed: TLS handshake failed",
            ) from None
        except (TimeoutError, aiohttp.ClientConnectionError) as exc:
            status, problem = None, failure(exc, timeout)[0]
            log.debug("GET %s: %s (%s)", url, problem, describe(exc))
        except aiohttp.ClientError as exc:  # a malformed answer: retrying will not help
            problem = failure(exc, timeout)[0]
            log.debug("GET %s: %s (%s)", url, problem, describe(exc))
            raise failed(problem, None) from None
        if status is not None and on_status is not None:
            on_status(status)
        if status == 401:
            if not refreshed and token is not None:
                refreshed = True
                if await credentials.refresh(token):
                    continue
            raise AuthError(
                f"{what} {url} failed: {credentials.rejected}",
                url=url,
                status=401,
                sentence=credentials.rejected,
            )
        if status is not None and status not in retry.statuses:
            raise failed(problem, status)
        if attempt >= retry.attempts:
            raise failed(f"{problem} (gave up after {attempt} attempts)", status)
        await asyncio.sleep(retry.delay(attempt, retry_after(wait)))


def body_too_big(max_body: int) -> str:
    """The ``error`` of a body over ``max_body`` bytes.

    Examples
    --------
    >>> body_too_big(4 * 1024 * 1024)
    'bad response: an answer over 4 MiB'
    """
    return f"bad response: an answer over {max_body / 1024**2:g} MiB"


async def _read_body(response: aiohttp.ClientResponse, max_body: int | None) -> bytes | None:
    """The whole body, or None once it is over ``max_body`` bytes (a hostile server must
    not make the client hold a body of any size)."""
    if max_body is None:
        return await response.read()
    length = response.content_length
    if length is not None:  # aiohttp reads no more than Content-Length
        return None if length > max_body else await response.read()
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > max_body:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
