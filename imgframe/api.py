"""fetch -> parse -> frame: the functions most users call.

:func:`fetch_images` (blocking, notebook-safe) and :func:`fetch_images_async` return the
contract frame of docs/ARCHITECTURE.md: one row per distinct requested id, in input
order, indexed by ``id``, failures included with ``http_status`` and ``error``.

With ``ids=None`` the rows are made from the listing's own records (v1
``images/detail``, v2 ``/v2/images``: every field and property of up to 1,000 images per
request), through the same parser as a HEAD answer (``parse.v1_detail_header_pairs``,
``parse.v2_header_pairs``), so the frame is the one ``list_image_ids`` followed by
``fetch_images`` gives, ``request_id`` being the listing page's. The next page is asked
for while the current one becomes rows. With ``verify_with_head=True`` the listing is
instead streamed into the fetch: a producer task reads it page by page into an
:class:`~imgframe.fetch.IdFeed` and the workers send HEADs (v2: GETs) as soon as the
first page arrives; at most ``LISTING_PAGES_AHEAD`` pages wait in the feed, so memory
stays flat however large the cloud. Either way listed ids get their positions in listing
order and are checked (``invalid_ids``) and deduplicated page by page. A listing that
fails midway ends the whole call with its error (which names the listing URL); the rows
read so far are not returned (a frame missing an unknown part of the cloud would look
complete) but stay in the checkpoint, if there is one.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import itertools
import math
import os
import sys
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import pandas as pd

from imgframe import checkpoint as checkpoint_module
from imgframe.auth import RequestSigner, TokenArg, TokenSource, image_endpoint, token_source
from imgframe.checkpoint import Checkpoint, Manifest, restored_positions
from imgframe.errors import CheckpointError, ConfigError, InvalidInputError, NoV1ApiError
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
    PACK_SEPARATOR,
    ParseProblems,
    _Columns,
    _gc_paused,
    build_frame,
    concat_frames,
    pack_headers,
    v1_detail_packed,
    v2_packed,
)

if TYPE_CHECKING:  # listing imports this module at run time
    from imgframe.listing import DetailPage

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
    """Receives results in completion order; turns them into typed frames in batches.

    With a checkpoint, each batch's definitive rows also go to it as one part: a batch
    ends at ``BATCH_SIZE`` rows or, through :meth:`flush_every`, once its first row is
    ``checkpoint.FLUSH_SECONDS`` old. Rows restored from the checkpoint come in as stored
    rows plus their positions (:meth:`restore`) and join the same final reorder.
    """

    def __init__(self, progress: Any, store: Checkpoint | None = None) -> None:
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
        self._store = store
        self._batch_started = 0.0
        self._stored: pd.DataFrame | None = None
        self._stored_status: np.ndarray | None = None
        self._restore_rows: list[np.ndarray] = []
        self._restore_positions: list[np.ndarray] = []
        self.restored = 0

    def add(self, result: FetchResult) -> None:
        packed = pack_headers(result.raw_headers) if result.raw_headers else None
        self.add_packed(result.position, result.image_id, result.http_status, result.error, packed)

    def add_packed(
        self,
        position: int,
        image_id: str,
        http_status: int | None,
        error: str | None,
        packed: bytes | None,
    ) -> None:
        """:meth:`add` of a result whose headers are already :func:`pack_headers`'d."""
        if not self.ids:
            self._batch_started = time.monotonic()
        self.positions_batch.append(position)
        self.ids.append(image_id)
        self.statuses.append(http_status)
        self.errors.append(error)
        self.packed.append(packed)
        if http_status == 200 and error is None:
            self.counts["ok"] += 1
        elif http_status == 404:
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

    def use_stored(self, stored: pd.DataFrame) -> None:
        """The checkpoint's rows, from which :meth:`restore` takes the ids it is given."""
        self._stored = stored
        self._stored_status = stored["http_status"].to_numpy(dtype="float64", na_value=np.nan)

    def restore(self, rows: np.ndarray, positions: np.ndarray) -> None:
        """Stored rows ``rows`` answer the ids at ``positions``: they are not sent."""
        if not len(rows):
            return
        self._restore_rows.append(rows)
        self._restore_positions.append(positions)
        assert self._stored_status is not None
        status = self._stored_status[rows]
        ok, not_found = int((status == 200).sum()), int((status == 404).sum())
        self.counts["ok"] += ok
        self.counts["not found"] += not_found
        self.counts["errors"] += len(rows) - ok - not_found
        self.restored += len(rows)
        if self._bar is not None:
            self._pending_bar += len(rows)
            self._flush_bar(time.monotonic())

    def expect(self, more: int) -> None:
        """``more`` rows are on their way (a listing page): grow the bar's total."""
        if self._bar is not None and more:
            self._bar.total = (self._bar.total or 0) + more
            self._bar.refresh()

    def _flush_bar(self, now: float) -> None:
        self._bar.update(self._pending_bar)
        # Strings, not ints: tqdm shows large ints as 4e+04.
        postfix = {name: f"{count:,}" for name, count in self.counts.items()}
        if self.restored:
            postfix["from checkpoint"] = f"{self.restored:,}"
        self._bar.set_postfix(postfix, refresh=False)
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
        if self._store is not None:
            self._store.append(frame)

    async def flush_every(self, seconds: float) -> None:
        """Flush a batch once its first row is ``seconds`` old (the checkpoint's clock)."""
        tick = min(max(seconds / 4, 0.01), 1.0)
        while True:
            await asyncio.sleep(tick)
            if self.ids and time.monotonic() - self._batch_started >= seconds:
                self.flush()

    def close(self) -> None:
        """Finish the progress bar (idempotent; also on errors)."""
        if self._bar is not None:
            self._flush_bar(time.monotonic())
            self._bar.close()
            self._bar = None

    def frame(self) -> pd.DataFrame:
        self.flush()
        self.close()
        if self._restore_rows:
            assert self._stored is not None
            piece = self._stored.take(np.concatenate(self._restore_rows))
            self.frames.append(_only_used_categories(piece))
            self.positions.append(np.concatenate(self._restore_positions))
            self._restore_rows.clear()
            self._restore_positions.clear()
        self._stored = None
        frame = concat_frames(self.frames)
        self.frames.clear()
        if not self.positions:
            return frame
        order = np.argsort(np.concatenate(self.positions), kind="stable")
        self.positions.clear()
        return _reordered(frame, order)


def _only_used_categories(frame: pd.DataFrame) -> pd.DataFrame:
    """Stored rows with the categories of their own values, as a fetched batch has:
    the stored parts' other rows (not requested again) must not leave theirs behind."""
    changed = {
        column: frame[column].cat.remove_unused_categories()
        for column, dtype in frame.dtypes.items()
        if isinstance(dtype, pd.CategoricalDtype)
    }
    return frame.assign(**changed) if changed else frame


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

    desc = {"v1": "HEAD /v1/images", "v2": "GET /v2/images", "listing": "listing"}.get(
        api, "images"
    )
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
    checkpoint: str | os.PathLike[str] | None = None,
    include_deleted: bool = False,
    verify_with_head: bool = False,
    cloud: str | None = None,
    region: str | None = None,
) -> pd.DataFrame:
    """Async form of :func:`fetch_images` (same arguments, same frame).

    Cancelling the task stops the sending at once (requests in flight are abandoned),
    writes every row received so far to the checkpoint, closes the session and
    re-raises ``CancelledError``.

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
    token = cloud_token(token, cloud, region)
    requested = None if ids is None else normalize_ids(ids)
    manifest = None
    if checkpoint is not None:
        manifest = _checkpoint_facts(requested, api, include_deleted)
    return await _fetch(
        requested,
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
        checkpoint=checkpoint,
        manifest=manifest,
        include_deleted=include_deleted,
        verify_with_head=verify_with_head,
    )


def cloud_token(token: TokenArg, cloud: str | None, region: str | None = None) -> TokenArg:
    """``token``, or for ``cloud`` (a ``clouds.yaml`` name) its
    :meth:`~imgframe.auth.KeystoneToken.from_cloud` token: the ``cloud=`` shorthand.

    ``cloud`` with ``token`` is refused (which one should win?); ``region`` needs
    ``cloud``. An ``endpoint=`` given with ``cloud=`` is used instead of the catalog's.

    Examples
    --------
    >>> cloud_token("t", None)
    't'
    >>> cloud_token("t", "prod")
    Traceback (most recent call last):
    ...
    imgframe.errors.ConfigError: give cloud= or token=, not both: cloud='prod' logs in ...
    """
    if cloud is None:
        if region is not None:
            raise ConfigError(
                f"region={region!r} needs cloud=: a region picks an endpoint from a "
                "clouds.yaml cloud's catalog"
            )
        return token
    if not isinstance(cloud, str) or not cloud:
        raise ConfigError(f"cloud must be a clouds.yaml cloud name, got {cloud!r}")
    if region is not None and (not isinstance(region, str) or not region):
        raise ConfigError(f"region must be a region name or None, got {region!r}")
    if token is not None:
        raise ConfigError(
            f"give cloud= or token=, not both: cloud={cloud!r} logs in with its "
            "clouds.yaml credentials"
        )
    from imgframe.auth import KeystoneToken

    return KeystoneToken.from_cloud(cloud, region=region)


def _checkpoint_facts(
    requested: list[str] | None, api: str, include_deleted: bool, kind: str = "fetch"
) -> Manifest:
    """The request a checkpoint is made for, before its endpoint is known."""
    if not isinstance(include_deleted, bool):
        raise ConfigError(f"include_deleted must be True or False, got {include_deleted!r}")
    return Manifest.for_fetch(
        endpoint=None,
        api=api,
        ids=requested,
        include_deleted=include_deleted,
        kind=kind,  # type: ignore[arg-type]
    )


async def _fetch(
    requested: list[str] | None,
    *,
    endpoint: str | None,
    token: TokenArg,
    concurrency: int,
    timeout: float | Timeout,
    retries: int | RetryPolicy,
    progress: bool | None,
    verify: bool | str,
    max_rps: float | None,
    adaptive: bool,
    api: Literal["v1", "v2", "auto"],
    include_deleted: bool,
    checkpoint: str | os.PathLike[str] | None = None,
    manifest: Manifest | None = None,
    labels: tuple[str, str | None] | None = None,
    verify_with_head: bool = False,
) -> pd.DataFrame:
    """:func:`fetch_images_async` on normalized ids; ``manifest`` (with ``checkpoint``)
    is the request's checkpoint facts, completed here with the endpoint and ``labels``
    (a fleet target's cloud and region)."""
    if api not in APIS:
        raise ConfigError(f"api must be 'v1', 'v2' or 'auto', got {api!r}")
    if not isinstance(include_deleted, bool):
        raise ConfigError(f"include_deleted must be True or False, got {include_deleted!r}")
    if not isinstance(verify_with_head, bool):
        raise ConfigError(f"verify_with_head must be True or False, got {verify_with_head!r}")
    source = token_source(token)
    endpoint = await image_endpoint(source, endpoint)
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
    store = None
    if checkpoint is not None:
        if manifest is None:
            manifest = _checkpoint_facts(requested, api, include_deleted)
        if labels is not None:
            facts = manifest.for_target(
                endpoint=fetcher.endpoint, cloud=labels[0], region=labels[1]
            )
        else:
            facts = dataclasses.replace(manifest, endpoint=fetcher.endpoint)
        # Opened (and a checkpoint made for another request refused) before anything is
        # sent; the rows it holds are read once, here.
        store = Checkpoint.open(checkpoint, facts)
        try:
            stored = store.load()
        except BaseException:
            store.close()
            raise
    else:
        stored = None
    from_listing = requested is None and not verify_with_head
    collector = _Collector(
        _progress_bar(
            progress,
            None if requested is None else len(requested),
            "listing" if from_listing else api,
        ),
        store,
    )
    try:
        if stored is not None and len(stored):
            collector.use_stored(stored)
        items: Iterable[tuple[int, str]] | IdFeed | None = None
        rows: Callable[[], Awaitable[None]] | None = None
        if requested is not None:
            items = _sendable(collector, requested, stored=stored)
        else:  # the whole cloud
            listing = _listing(
                fetcher,
                endpoint=endpoint,
                tokens=source,
                api=api,
                verify=verify,
                timeout=timeout,
                retries=retries,
                include_deleted=include_deleted,
            )
            if from_listing:  # each row made from its listing record
                rows = functools.partial(_listed_rows, fetcher, collector, listing, stored)
            else:  # one request per listed image
                pages = _listed_pages(collector, listing, stored)
                items = IdFeed(pages, max_pages_ahead=LISTING_PAGES_AHEAD)
        stored = None  # the collector keeps it until the frame is made, then lets it go
        ticker = None
        if store is not None:
            ticker = asyncio.create_task(collector.flush_every(checkpoint_module.FLUSH_SECONDS))
        try:
            if rows is not None:
                await rows()
            else:
                assert items is not None
                await fetcher.run(items, collector.add)
        finally:
            if ticker is not None:
                ticker.cancel()
            collector.close()
        frame = collector.frame()
    except BaseException:
        if store is not None:
            # Interrupted or failed: every row received so far goes to the checkpoint,
            # synchronously (a second cancellation must not cut it short). The error on
            # its way wins over a checkpoint that could not be written.
            with contextlib.suppress(CheckpointError):
                collector.flush()
            with contextlib.suppress(CheckpointError):
                store.close()
        raise
    if store is not None:
        store.close()  # every part on disk before the frame is returned
    collector.problems.warn(stacklevel=3)
    return frame


def _sendable(
    collector: _Collector,
    ids: list[str],
    start: int = 0,
    stored: pd.DataFrame | None = None,
) -> Iterator[tuple[int, str]]:
    """The ``(position, id)`` pairs to send, positions from ``start``; the ids that must
    not be sent get their 'invalid image id' rows in ``collector`` right away, and those
    answered in ``stored`` (a checkpoint) get their stored rows."""
    invalid = invalid_ids(ids)
    if stored is not None and len(stored):
        rows, positions = restored_positions(stored, ids, start)
        collector.restore(rows, positions)
        invalid[positions - start] = False  # their rows are restored, not made again
        send = ~invalid
        send[positions - start] = False
    else:
        send = ~invalid
    for index in np.flatnonzero(invalid).tolist():  # never sent: the row says why
        collector.add(FetchResult(start + index, ids[index], None, None, INVALID_ID, 0))
    # A lazy C-level iterator: workers pull ids as they free up, no Python frame per id.
    return itertools.compress(zip(itertools.count(start), ids), send.tolist())


async def _listing(
    fetcher: HeadFetcher,
    *,
    endpoint: str,
    tokens: TokenSource | RequestSigner,
    api: str,
    verify: bool | str,
    timeout: float | Timeout,
    retries: int | RetryPolicy,
    include_deleted: bool,
) -> AsyncGenerator[DetailPage, None]:
    """The cloud's listing, page by page (ids with their records), for both ways of
    making rows from it. With ``api="auto"`` a v1 listing answering 300 before its
    first page switches the listing and ``fetcher`` to v2."""
    from imgframe.listing import DEFAULT_MAX_PAGES, _Lister  # listing imports this module

    listing_api = "v2" if api == "v2" else "v1"
    listed = False
    while True:
        # Listed ids are taken as sent (not stripped): the listing dedupes them, and an
        # id with spaces is invalid and reported as such rather than silently changed.
        pages = _Lister(
            endpoint,
            tokens,
            api=listing_api,
            page_size=LISTING_PAGE_SIZE,
            verify=verify,
            include_deleted=include_deleted,
            timeout=timeout,
            retries=retries,
            max_pages=DEFAULT_MAX_PAGES,
        ).detail_pages()
        try:
            async with contextlib.aclosing(pages):
                async for page in pages:
                    listed = True
                    yield page
            return
        except NoV1ApiError:
            if api != "auto" or listing_api == "v2" or listed:
                raise
            listing_api = "v2"
            fetcher.use_v2("its v1 listing answered 300")


async def _listed_pages(
    collector: _Collector,
    pages: AsyncGenerator[DetailPage, None],
    stored: pd.DataFrame | None,
) -> AsyncIterator[Iterable[tuple[int, str]]]:
    """Each page of :func:`_listing` as the ``(position, image_id)`` pairs to send, in
    listing order.

    Invalid ids become their rows here and are not sent, and so do ids with a stored
    row (a checkpoint).
    """
    position = 0
    async with contextlib.aclosing(pages):
        async for page in pages:
            collector.expect(len(page.ids))
            sendable = _sendable(collector, page.ids, position, stored)
            position += len(page.ids)
            yield sendable


async def _listed_rows(
    fetcher: HeadFetcher,
    collector: _Collector,
    listing: AsyncGenerator[DetailPage, None],
    stored: pd.DataFrame | None,
) -> None:
    """Every listed image's row made from its listing record, no request per image.

    A v1 ``images/detail`` record (:func:`~imgframe.parse.v1_detail_header_pairs`) or a
    v2 image document (:func:`~imgframe.parse.v2_header_pairs`, built in one pass by
    :func:`~imgframe.parse.v2_packed`) becomes the header
    pairs its own HEAD (or v2 GET) would have answered, as a 200 result, so the rows are
    those of :func:`_listed_pages` + HEAD; ``request_id`` is the listing page's. Ids are
    deduplicated, checked and restored from ``stored`` exactly as there. The image's own
    URL is not asked: a project token's row of a deleted image it may list is a 200 here
    (``deleted`` True) where its HEAD would answer 404. ``listing`` is :func:`_listing`.
    """
    # The next page is asked for while this one becomes rows: at 50 ms a page, the
    # listing's own latency is then the run's only cost.
    pages = _read_ahead(listing, LISTING_PAGES_AHEAD)
    position = 0
    add = collector.add_packed
    async with contextlib.aclosing(pages):
        async for page in pages:
            # The page was listed after any api="auto" switch: the fetcher says which API.
            packed_of = v2_packed if fetcher.using_v2 else v1_detail_packed
            collector.expect(len(page.ids))
            start = position
            position += len(page.ids)
            records = page.records
            rid = page.request_id
            tail = b"" if rid is None else PACK_SEPARATOR.join((b"", _REQUEST_ID, rid))
            for at, image_id in _sendable(collector, page.ids, start, stored):
                add(at, image_id, 200, None, packed_of(records[at - start]) + tail)
            await asyncio.sleep(0)  # a page's work done: let the checkpoint ticker run


_REQUEST_ID = b"X-Openstack-Request-Id"


_T = TypeVar("_T")


async def _read_ahead(source: AsyncIterator[_T], ahead: int) -> AsyncGenerator[_T, None]:
    """``source``'s items, read by a task of their own up to ``ahead`` items ahead.

    ``source``'s error is raised here, after the items before it; closing (or
    cancelling) this generator cancels the reading task, which closes ``source``.
    """
    queue: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue(maxsize=ahead)

    async def read() -> None:
        try:
            async with contextlib.aclosing(source):  # type: ignore[type-var]
                async for item in source:
                    await queue.put((True, item))
        except Exception as exc:  # handed to the reader; CancelledError is not
            await queue.put((False, exc))
        else:
            await queue.put((False, None))

    task = asyncio.create_task(read())
    try:
        while True:
            ok, item = await queue.get()
            if ok:
                yield item
            elif item is None:
                return
            else:
                raise item
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


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
    checkpoint: str | os.PathLike[str] | None = None,
    include_deleted: bool = False,
    verify_with_head: bool = False,
    cloud: str | None = None,
    region: str | None = None,
) -> pd.DataFrame:
    """HEAD every image id and return one typed row per distinct id, in input order.

    ``ids`` None fetches every image the token may list (:func:`imgframe.list_image_ids`);
    the rows are in listing order (newest first). Each row is made from the listing's
    own record of the image (v1 ``images/detail``, v2 ``/v2/images``: every field and
    property, ~1 request per 1,000 images), the same row its HEAD would give, except
    ``request_id``, which is the listing page's. ``verify_with_head=True`` instead sends
    one HEAD (v2: GET) per listed id, streamed as the pages arrive: the answers of the
    image's own URL, and a project token's HEAD of a deleted image answering 404.
    A listing that fails midway raises its error and returns no rows.
    ``endpoint`` is the Glance (or Huawei IMS) URL, with or without ``/v1`` (None: taken
    from a :class:`~imgframe.auth.KeystoneToken`'s service catalog). ``cloud`` (and
    ``region``) is the ``clouds.yaml`` shorthand for
    ``token=KeystoneToken.from_cloud(cloud, region=region)``; not with ``token``. ``token``
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

    ``include_deleted`` (``ids=None`` only) keeps deleted images in the listing (admin
    tokens, v1). With explicit ids it changes nothing: every id named is asked, deleted
    or not.

    ``checkpoint`` is a folder (created if missing; see :mod:`imgframe.checkpoint`)
    that receives every row with a definitive answer (200, 404, invalid id) at least
    every 10,000 rows or 10 s. Calling again with the same request and folder sends only
    the ids without one (transient failures are asked again) and returns the whole frame,
    in input order, as one uninterrupted run would; with ``ids=None`` the cloud is listed
    again and the stored rows of listed ids are used. A folder made for other ids,
    another endpoint, api or include_deleted is refused with a
    :class:`~imgframe.CheckpointError`. The folder is never deleted for you:
    ``imgframe.checkpoint.remove_checkpoint(folder)`` once the frame is safe.

    Interrupting (Ctrl-C, a Jupyter kernel interrupt) stops the sending within a moment,
    writes the rows received so far to the checkpoint and raises ``KeyboardInterrupt``.

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
        checkpoint=checkpoint,
        include_deleted=include_deleted,
        verify_with_head=verify_with_head,
        cloud=cloud,
        region=region,
    )
    return run_sync(coroutine)


#: How long an interrupted :func:`run_sync` waits for its helper thread's fetch to stop
#: and write its checkpoint before raising ``KeyboardInterrupt`` anyway.
INTERRUPT_WAIT_SECONDS = 30.0


def run_sync(coroutine: Awaitable[Any]) -> Any:
    """Run ``coroutine`` to completion from blocking code, even inside a running loop.

    In a plain script it runs on a fresh event loop (uvloop when installed); Ctrl-C
    cancels it (asyncio.Runner's own handling) and raises ``KeyboardInterrupt`` once
    it has unwound. Inside a running loop (a Jupyter cell) it runs on a helper thread
    with its own loop, because a loop cannot be re-entered and nest_asyncio patches
    asyncio globally; a ``KeyboardInterrupt`` in the waiting thread (a kernel interrupt)
    cancels the helper's task, waits up to :data:`INTERRUPT_WAIT_SECONDS` for it to
    unwind (a fetch writes its checkpoint) and is then raised.

    Examples
    --------
    >>> async def answer() -> int:
    ...     return 42
    >>> run_sync(answer())
    42
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_in_new_loop(coroutine)
    helper = _HelperLoop(coroutine)
    helper.thread.start()
    try:
        helper.done.wait()
    except KeyboardInterrupt:
        helper.cancel()
        # A second interrupt while waiting gives up on the wait, not on the cancel.
        helper.done.wait(INTERRUPT_WAIT_SECONDS)
        raise
    return helper.result()


class _HelperLoop:
    """``coroutine`` as the main task of a fresh event loop on a daemon thread, which
    another thread can cancel (a daemon: an abandoned fetch never blocks exiting)."""

    def __init__(self, coroutine: Awaitable[Any]) -> None:
        self._coroutine = coroutine
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._cancelled = False
        self._lock = threading.Lock()
        self.done = threading.Event()
        self._outcome: tuple[bool, Any] = (False, None)
        self.thread = threading.Thread(target=self._run, name="imgframe-fetch", daemon=True)

    async def _main(self) -> Any:
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()
            cancelled = self._cancelled
        if cancelled:  # interrupted before the task existed
            close = getattr(self._coroutine, "close", None)
            if close is not None:
                close()
            raise asyncio.CancelledError
        return await self._coroutine

    def _run(self) -> None:
        try:
            self._outcome = (True, _run_in_new_loop(self._main()))
        except BaseException as exc:
            self._outcome = (False, exc)
        finally:
            self.done.set()

    def cancel(self) -> None:
        """Cancel the task from any thread (before it started: it will not start)."""
        with self._lock:
            self._cancelled = True
            loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(task.cancel)

    def result(self) -> Any:
        ok, value = self._outcome
        if ok:
            return value
        raise value


def _run_in_new_loop(coroutine: Awaitable[Any]) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        factory = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coroutine)  # type: ignore[arg-type]
