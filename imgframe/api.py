"""fetch -> parse -> frame: the functions most users call.

:func:`fetch_images` (blocking, notebook-safe) and :func:`fetch_images_async` return the
contract frame of DESIGN.md: one row per distinct requested id, in input order, indexed
by ``id``, failures included with ``http_status`` and ``error``.

With ``ids=None`` the cloud's listing is streamed into the fetch: a producer task reads
the listing page by page into an :class:`~imgframe.fetch.IdFeed` and the workers send
HEADs as soon as the first page arrives. Listed ids get their positions in listing
order, are checked (``invalid_ids``) page by page and deduplicated by the listing, so
the frame is the one ``list_image_ids`` followed by ``fetch_images`` gives. At most
``LISTING_PAGES_AHEAD`` pages wait in the feed (~3,000 ids with the default page size):
memory stays flat however large the cloud. A listing that fails midway ends the whole
call with its error (which names the listing URL); the rows fetched so far are not
returned, since a frame missing an unknown part of the cloud would look complete.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import itertools
import math
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator
from typing import Any, Literal

import numpy as np
import pandas as pd

from imgframe.auth import RequestSigner, TokenArg, TokenSource, token_source
from imgframe.errors import ConfigError, InvalidInputError, NoV1ApiError
from imgframe.fetch import (
    APIS,
    INVALID_ID,
    FetchResult,
    HeadFetcher,
    IdFeed,
    RetryPolicy,
    Timeout,
    invalid_ids,
)
from imgframe.parse import (
    ParseProblems,
    _Columns,
    _gc_paused,
    build_frame,
    concat_frames,
    pack_headers,
)

__all__ = ["fetch_images", "fetch_images_async", "normalize_ids"]

DEFAULT_CONCURRENCY = 32
BATCH_SIZE = 10_000
# ids=None: listing pages asked for, and how many may wait in the feed before the
# listing pauses (a page is drained in well under a second at usual concurrency, so
# three pages keep the workers fed across a slow listing page without hoarding ids).
LISTING_PAGE_SIZE = 1000
LISTING_PAGES_AHEAD = 3


def normalize_ids(ids: Iterable[Any]) -> list[str]:
    """Requested ids as distinct, stripped strings in first-seen order.

    Accepts any iterable (list, pandas Series or Index, numpy array, generator) of
    strings, bytes or ``uuid.UUID``. Refuses a bare string and missing values (None,
    NaN) with a message that says where they are, rather than dropping them.

    Examples
    --------
    >>> normalize_ids([" a ", "b", "a"])
    ['a', 'b']
    >>> normalize_ids("abc")
    Traceback (most recent call last):
    ...
    imgframe.errors.InvalidInputError: ids must be a collection of image ids, not one string; ...
    """
    if isinstance(ids, str | bytes):
        raise InvalidInputError(
            f"ids must be a collection of image ids, not one string; did you mean [{ids!r}]?"
        )
    if isinstance(ids, pd.DataFrame):
        raise InvalidInputError(
            "ids must be one column of ids: pass df['id'] or df.index, not a DataFrame"
        )
    if isinstance(ids, dict):
        ids = ids.keys()
    try:
        iterator = iter(ids)
    except TypeError:
        raise InvalidInputError(
            f"ids must be an iterable of image ids, not {type(ids).__name__}"
        ) from None
    seen: dict[str, None] = {}
    for position, value in enumerate(iterator):
        if isinstance(value, str):
            text = value
        elif isinstance(value, bytes):
            text = value.decode("utf-8", errors="replace")
        elif isinstance(value, uuid.UUID):
            text = str(value)
        elif value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            raise InvalidInputError(
                f"ids[{position}] is missing ({value!r}); every id must be a string"
            )
        else:
            raise InvalidInputError(
                f"ids[{position}] is a {type(value).__name__} ({value!r}), not a string image id"
            )
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidInputError(
                    f"ids[{position}] is not valid Unicode text ({value!r}): it has lone "
                    "surrogates, as left by a wrong decoding"
                ) from None
        seen.setdefault(text.strip(), None)
    return list(seen)


class _Collector:
    """Receives results in completion order; turns them into typed frames in batches."""

    def __init__(self, progress: Any) -> None:
        # One batch as parallel lists of small values: keeping FetchResults would keep
        # aiohttp's header tuples alive (see pack_headers).
        self.positions_batch: list[int] = []
        self.ids: list[str] = []
        self.statuses: list[int | None] = []
        self.errors: list[str | None] = []
        self.packed: list[bytes | None] = []
        self.frames: list[pd.DataFrame] = []
        self.positions: list[np.ndarray] = []
        self.problems = ParseProblems()
        self.counts = {"ok": 0, "not found": 0, "errors": 0}
        self._bar = progress
        self._pending_bar = 0
        self._last_bar = 0.0

    def add(self, result: FetchResult) -> None:
        self.positions_batch.append(result.position)
        self.ids.append(result.image_id)
        self.statuses.append(result.http_status)
        self.errors.append(result.error)
        self.packed.append(pack_headers(result.raw_headers) if result.raw_headers else None)
        if result.http_status == 200:
            self.counts["ok"] += 1
        elif result.http_status == 404:
            self.counts["not found"] += 1
        else:
            self.counts["errors"] += 1
        if self._bar is not None:
            self._pending_bar += 1
            now = time.monotonic()
            if now - self._last_bar > 0.2:  # batch bar updates: per-row refresh costs real CPU
                self._flush_bar(now)
        if len(self.ids) >= BATCH_SIZE:
            self.flush()

    def expect(self, more: int) -> None:
        """``more`` rows are on their way (a listing page): grow the bar's total."""
        if self._bar is not None and more:
            self._bar.total = (self._bar.total or 0) + more
            self._bar.refresh()

    def _flush_bar(self, now: float) -> None:
        self._bar.update(self._pending_bar)
        self._bar.set_postfix(self.counts, refresh=False)
        self._pending_bar = 0
        self._last_bar = now

    def flush(self) -> None:
        if not self.ids:
            return
        with _gc_paused():
            frame = build_frame(
                _Columns.from_packed(self.packed),
                index=self.ids,
                http_status=self.statuses,
                error=self.errors,
                problems=self.problems,
            )
        self.frames.append(frame)
        self.positions.append(np.array(self.positions_batch, dtype=np.int64))
        self.positions_batch, self.ids, self.statuses, self.errors, self.packed = [], [], [], [], []

    def close(self) -> None:
        """Finish the progress bar (idempotent; also on errors)."""
        if self._bar is not None:
            self._flush_bar(time.monotonic())
            self._bar.close()
            self._bar = None

    def frame(self) -> pd.DataFrame:
        self.flush()
        self.close()
        frame = concat_frames(self.frames)
        self.frames.clear()
        if not self.positions:
            return frame
        order = np.argsort(np.concatenate(self.positions), kind="stable")
        self.positions.clear()
        return _reordered(frame, order)


#: Put in front of the progress bar's description; :func:`imgframe.fetch_fleet` sets it
#: to ``cloud/region`` in each target's task (a context variable: each task has its own).
PROGRESS_LABEL: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "imgframe_progress_label", default=None
)


def _reordered(frame: pd.DataFrame, order: np.ndarray) -> pd.DataFrame:
    """``frame.iloc[order]``, one column at a time, each old column freed once copied.

    ``iloc`` on the whole frame holds the old and the new frame at once (the arrow string
    columns of the concatenation still share the batches' buffers): at a million rows that
    was the peak of a fetch, 2.6x the final frame's memory (benchmarks/bench_million.py).
    """
    index = frame.index.take(order)
    columns: dict[str, Any] = {}
    for name in list(frame.columns):
        columns[name] = frame.pop(name).array.take(order)
    return pd.DataFrame(columns, index=index, copy=False)


def _progress_bar(progress: bool | None, total: int | None, api: str = "v1") -> Any:
    if progress is None:
        progress = _someone_watching()
    if not progress:
        return None
    from tqdm.auto import tqdm

    desc = {"v1": "HEAD /v1/images", "v2": "GET /v2/images"}.get(api, "images")
    label = PROGRESS_LABEL.get()
    if label:
        desc = f"{label}: {desc}"
    return tqdm(total=total, unit="img", desc=desc, dynamic_ncols=True)


def _someone_watching() -> bool:
    """A notebook kernel or a terminal on stderr: never CI logs or pipes."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None  # type: ignore[attr-defined]
    if type(shell).__name__ == "ZMQInteractiveShell":  # a Jupyter kernel, not just imported
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _as_timeout(timeout: float | Timeout) -> Timeout:
    if isinstance(timeout, Timeout):
        return timeout
    if isinstance(timeout, int | float) and not isinstance(timeout, bool):
        return Timeout(total=float(timeout), connect=min(float(timeout), 10.0))
    raise ConfigError(f"timeout must be seconds or a Timeout, got {timeout!r}")


def _as_retry(retries: int | RetryPolicy) -> RetryPolicy:
    if isinstance(retries, RetryPolicy):
        return retries
    if isinstance(retries, int) and not isinstance(retries, bool) and retries >= 0:
        return RetryPolicy(attempts=retries + 1)
    raise ConfigError(f"retries must be a count >= 0 or a RetryPolicy, got {retries!r}")


async def fetch_images_async(
    ids: Iterable[Any] | None = None,
    *,
    endpoint: str | None = None,
    token: TokenArg = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    timeout: float | Timeout = Timeout(),
    retries: int | RetryPolicy = RetryPolicy(),
    progress: bool | None = None,
    verify: bool | str = True,
    max_rps: float | None = None,
    adaptive: bool = True,
    api: Literal["v1", "v2", "auto"] = "v1",
) -> pd.DataFrame:
    """Async form of :func:`fetch_images` (same arguments, same frame).

    Examples
    --------
    >>> import asyncio
    >>> from imgframe.testing import GlanceEmulator, make_fleet, ADMIN_TOKEN
    >>> fleet = make_fleet(3, seed=1)
    >>> with GlanceEmulator(fleet) as emu:
    ...     df = asyncio.run(fetch_images_async([i.id for i in fleet.images],
    ...                                         endpoint=emu.url, token=ADMIN_TOKEN))
    >>> len(df), df["http_status"].tolist() == [200, 200, 200]
    (3, True)
    """
    if api not in APIS:
        raise ConfigError(f"api must be 'v1', 'v2' or 'auto', got {api!r}")
    source = token_source(token)
    if endpoint is None:  # a Keystone token source finds the image endpoint in its catalog
        find = getattr(source, "endpoint", None)
        if not callable(find):
            raise ConfigError(
                "endpoint is required: the Glance/IMS URL (only a KeystoneToken can find it "
                "in its service catalog)"
            )
        endpoint = await find()
    requested = None if ids is None else normalize_ids(ids)
    fetcher = HeadFetcher(
        endpoint,
        source,
        concurrency=concurrency,
        timeout=_as_timeout(timeout),
        retry=_as_retry(retries),
        verify=verify,
        max_rps=max_rps,
        adaptive=adaptive,
        api=api,
    )
    items: Iterable[tuple[int, str]] | IdFeed
    if requested is None:  # the whole cloud: every image the token may list
        collector = _Collector(_progress_bar(progress, None, api))
        pages = _listed_pages(
            fetcher,
            collector,
            endpoint=endpoint,
            tokens=source,
            api=api,
            verify=verify,
            timeout=timeout,
            retries=retries,
        )
        items = IdFeed(pages, max_pages_ahead=LISTING_PAGES_AHEAD)
    else:
        collector = _Collector(_progress_bar(progress, len(requested), api))
        items = _sendable(collector, requested)
    try:
        await fetcher.run(items, collector.add)
    finally:
        collector.close()
    frame = collector.frame()
    collector.problems.warn(stacklevel=2)
    return frame


def _sendable(collector: _Collector, ids: list[str], start: int = 0) -> Iterator[tuple[int, str]]:
    """The ``(position, id)`` pairs to send, positions from ``start``; the ids that must
    not be sent get their 'invalid image id' rows in ``collector`` right away."""
    invalid = invalid_ids(ids)
    for index in np.flatnonzero(invalid).tolist():  # never sent: the row says why
        collector.add(FetchResult(start + index, ids[index], None, None, INVALID_ID, 0))
    # A lazy C-level iterator: workers pull ids as they free up, no Python frame per id.
    return itertools.compress(zip(itertools.count(start), ids), (~invalid).tolist())


async def _listed_pages(
    fetcher: HeadFetcher,
    collector: _Collector,
    *,
    endpoint: str,
    tokens: TokenSource | RequestSigner,
    api: str,
    verify: bool | str,
    timeout: float | Timeout,
    retries: int | RetryPolicy,
) -> AsyncIterator[Iterable[tuple[int, str]]]:
    """Each listing page as the ``(position, image_id)`` pairs to send, in listing order.

    Invalid ids become their rows here and are not sent. With ``api="auto"`` a v1
    listing answering 300 switches the listing and ``fetcher`` to v2 before any id.
    """
    from imgframe.listing import DEFAULT_MAX_PAGES, _Lister  # listing imports this module

    listing_api = "v2" if api == "v2" else "v1"
    position = 0
    while True:
        # Listed ids are taken as sent (not stripped): the listing dedupes them, and an
        # id with spaces is invalid and reported as such rather than silently changed.
        pages = _Lister(
            endpoint,
            tokens,
            api=listing_api,
            page_size=LISTING_PAGE_SIZE,
            verify=verify,
            include_deleted=False,
            timeout=timeout,
            retries=retries,
            max_pages=DEFAULT_MAX_PAGES,
        ).pages()
        try:
            async with contextlib.aclosing(pages):
                async for page in pages:
                    collector.expect(len(page))
                    sendable = _sendable(collector, page, position)
                    position += len(page)
                    yield sendable
            return
        except NoV1ApiError:
            if api != "auto" or listing_api == "v2" or position:
                raise
            listing_api = "v2"
            fetcher.use_v2("its v1 listing answered 300")


def fetch_images(
    ids: Iterable[Any] | None = None,
    *,
    endpoint: str | None = None,
    token: TokenArg = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    timeout: float | Timeout = Timeout(),
    retries: int | RetryPolicy = RetryPolicy(),
    progress: bool | None = None,
    verify: bool | str = True,
    max_rps: float | None = None,
    adaptive: bool = True,
    api: Literal["v1", "v2", "auto"] = "v1",
) -> pd.DataFrame:
    """HEAD every image id and return one typed row per distinct id, in input order.

    ``ids`` None fetches every image the token may list (:func:`imgframe.list_image_ids`),
    streaming the listing into the fetch; the rows are in listing order (newest first).
    A listing that fails midway raises its error and returns no rows.
    ``endpoint`` is the Glance (or Huawei IMS) URL, with or without ``/v1`` (None: taken
    from a :class:`~imgframe.auth.KeystoneToken`'s service catalog). ``token``
    is a string, a :class:`~imgframe.auth.TokenSource`, a function returning a token, or
    a :class:`~imgframe.auth.HuaweiAkSk` access key that signs each request; None reads
    ``OS_AUTH_TOKEN``. ``concurrency`` is the number of requests in flight
    (raise it for high-latency clouds). ``retries`` counts retries of transient
    failures. ``progress`` None shows a bar only in a notebook or on a terminal.
    ``verify`` is True, False or a CA bundle path. Works inside Jupyter's running event
    loop too (the fetch then runs on a helper thread).

    Throttling, per endpoint: ``max_rps`` caps the requests per second (retries
    included; None: no cap), for a cloud whose rate limit you know. ``adaptive`` (on by
    default) halves the requests in flight when the server answers 429 or 503 and adds
    them back one at a time (every half second at most) while answers are fine, up to
    ``concurrency``; changes are logged at debug level on the ``imgframe.fetch`` logger.
    At very low latency even one request in flight can outrun a rate limit: the
    ``Retry-After`` waits then do the throttling, and ``max_rps`` does it more gently.

    ``api`` picks the Glance API: ``"v1"`` (``HEAD /v1/images/{id}``; a cloud without v1
    raises :class:`~imgframe.NoV1ApiError`), ``"v2"`` (``GET /v2/images/{id}``, mapped
    into the same columns: ``is_public`` is ``visibility == "public"``, ``deleted``
    False, custom properties in ``properties``) or ``"auto"`` (v1, switching the whole
    run to v2 at the first 300 answer). The v2-only columns ``visibility``,
    ``os_hash_algo``, ``os_hash_value`` and ``tags`` are NA for v1 rows.

    Examples
    --------
    >>> from imgframe.testing import GlanceEmulator, make_fleet, ADMIN_TOKEN
    >>> fleet = make_fleet(5, seed=1)
    >>> ids = [image.id for image in fleet.images] + ["no-such-image", "../etc"]
    >>> with GlanceEmulator(fleet) as emu:
    ...     df = fetch_images(ids, endpoint=emu.url, token=ADMIN_TOKEN)
    >>> len(df), df["http_status"].tolist()[-2:], df["error"].tolist()[-2:]
    (7, [404, <NA>], ['HTTP 404 Not Found', 'invalid image id'])
    """
    coroutine = fetch_images_async(
        ids,
        endpoint=endpoint,
        token=token,
        concurrency=concurrency,
        timeout=timeout,
        retries=retries,
        progress=progress,
        verify=verify,
        max_rps=max_rps,
        adaptive=adaptive,
        api=api,
    )
    return run_sync(coroutine)


def run_sync(coroutine: Awaitable[Any]) -> Any:
    """Run ``coroutine`` to completion from blocking code, even inside a running loop.

    In a plain script it runs on a fresh event loop (uvloop when installed). Inside a
    running loop (a Jupyter cell) it runs on a helper thread with its own loop, because
    a loop cannot be re-entered and nest_asyncio patches asyncio globally.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_in_new_loop(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="imgframe") as pool:
        return pool.submit(_run_in_new_loop, coroutine).result()


def _run_in_new_loop(coroutine: Awaitable[Any]) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        factory = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coroutine)  # type: ignore[arg-type]
