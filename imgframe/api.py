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
import dataclasses
import functools
import itertools
import os
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any, Literal, TypeVar

import numpy as np
import pandas as pd

from imgframe import checkpoint as checkpoint_module
from imgframe import provenance
from imgframe.auth import RequestSigner, TokenArg, TokenSource, image_endpoint, token_source
from imgframe.auth import cloud_token as cloud_token
from imgframe.checkpoint import Checkpoint, Manifest, restored_positions
from imgframe.config import DEFAULT_CONCURRENCY as DEFAULT_CONCURRENCY
from imgframe.config import (
    DEFAULT_RETRY,
    DEFAULT_TIMEOUT,
    FetchOptions,
    RetryPolicy,
    Timeout,
)
from imgframe.errors import CheckpointError
from imgframe.fetch import FetchResult, HeadFetcher, IdFeed
from imgframe.frame import Collector
from imgframe.ids import invalid_ids
from imgframe.ids import normalize_ids as normalize_ids
from imgframe.listing import DetailPage, Lister
from imgframe.members import HEADER as MEMBERS_PAIR_NAME
from imgframe.members import may_have_members_packed
from imgframe.outcome import INVALID_ID
from imgframe.parse import PACK_SEPARATOR
from imgframe.progress import PROGRESS_LABEL as PROGRESS_LABEL
from imgframe.progress import progress_bar
from imgframe.runner import run_sync as run_sync

__all__ = ["fetch_images", "fetch_images_async", "normalize_ids"]

BATCH_SIZE = 10_000
# ids=None: how many listing pages may wait in the feed before the listing pauses (a
# page is drained in well under a second at usual concurrency, so three pages keep the
# workers fed across a slow listing page without hoarding ids).
LISTING_PAGES_AHEAD = 3


async def fetch_images_async(
    ids: Iterable[Any] | None = None,
    *,
    endpoint: str | None = None,
    token: TokenArg = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    timeout: float | Timeout = DEFAULT_TIMEOUT,
    retries: int | RetryPolicy = DEFAULT_RETRY,
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
    members: bool = False,
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
    options = FetchOptions.build(
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
        members=members,
    )
    return await fetch_with_options(
        ids, options, endpoint=endpoint, token=token, cloud=cloud, region=region
    )


async def fetch_with_options(
    ids: Iterable[Any] | None,
    options: FetchOptions,
    *,
    endpoint: str | None = None,
    token: TokenArg = None,
    cloud: str | None = None,
    region: str | None = None,
) -> pd.DataFrame:
    """:func:`fetch_images_async` with its options made: what both forms run.

    Examples
    --------
    >>> import asyncio
    >>> from imgframe.testing import GlanceEmulator, make_fleet, ADMIN_TOKEN
    >>> fleet = make_fleet(2, seed=1)
    >>> with GlanceEmulator(fleet) as emu:
    ...     df = asyncio.run(fetch_with_options(["no-such-image"], FetchOptions(api="v2"),
    ...                                         endpoint=emu.url, token=ADMIN_TOKEN))
    >>> df["error"].tolist()
    ['HTTP 404 Not Found']
    """
    started = provenance.now_stamp()  # before the login: the run starts here
    token = cloud_token(token, cloud, region)
    requested = None if ids is None else normalize_ids(ids)
    manifest = None
    if options.checkpoint is not None:
        manifest = checkpoint_facts(requested, options)
    frame = await fetch_target(
        requested, options, endpoint=endpoint, token=token, manifest=manifest, started=started
    )
    if cloud is not None:  # the clouds.yaml shorthand: say which cloud was asked
        asked = frame.attrs[provenance.ATTR]["asked"]
        asked["cloud"], asked["region"] = cloud, region
    return frame


def checkpoint_facts(
    requested: list[str] | None, options: FetchOptions, kind: Literal["fetch", "fleet"] = "fetch"
) -> Manifest:
    """The request a checkpoint is made for, before its endpoint is known."""
    return Manifest.for_fetch(
        endpoint=None,
        api=options.api,
        ids=requested,
        include_deleted=options.include_deleted,
        kind=kind,
        members=options.members,
    )


async def fetch_target(
    requested: list[str] | None,
    options: FetchOptions,
    *,
    endpoint: str | None,
    token: TokenArg,
    manifest: Manifest | None = None,
    labels: tuple[str, str | None] | None = None,
    started: str | None = None,
) -> pd.DataFrame:
    """One endpoint's frame of normalized ids (None: its listing); ``manifest`` (with
    ``options.checkpoint``) is the request's checkpoint facts, completed here with the
    endpoint and ``labels`` (a fleet target's cloud and region). The frame carries its
    provenance (:mod:`imgframe.provenance`), ``fetched_at`` being ``started`` (default:
    now)."""
    started = started or provenance.now_stamp()
    source = token_source(token)
    endpoint = await image_endpoint(source, endpoint)
    fetcher = HeadFetcher(endpoint, source, options=options)
    checkpoint = options.checkpoint
    store = None
    if checkpoint is not None:
        if manifest is None:
            manifest = checkpoint_facts(requested, options)
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
    restored = 0 if stored is None else len(stored)
    from_listing = requested is None and not options.verify_with_head
    collector = Collector(
        progress_bar(
            options.progress,
            None if requested is None else len(requested),
            "listing" if from_listing else options.api,
        ),
        store,
        batch_size=BATCH_SIZE,
        total=None if requested is None else len(requested),
    )
    try:
        if stored is not None and len(stored):
            collector.use_stored(stored)
        items: Iterable[tuple[int, str]] | IdFeed | None = None
        rows: Callable[[], Awaitable[None]] | None = None
        if requested is not None:
            items = _sendable(collector, requested, stored=stored)
        else:  # the whole cloud
            listing = _listing(fetcher, endpoint=endpoint, tokens=source, options=options)
            if from_listing:  # each row made from its listing record
                rows = functools.partial(
                    _listed_rows, fetcher, collector, listing, stored, options.members
                )
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
    asked = {
        "endpoint": fetcher.endpoint,
        "api": options.api,
        "api_used": fetcher.glance.name,
        "mode": "ids" if requested is not None else "listing",
        "include_deleted": options.include_deleted,
        "verify_with_head": options.verify_with_head,
    }
    more: dict[str, Any] = {"resumed": {"checkpoint_rows": restored}} if restored else {}
    return provenance.attach(
        frame, provenance.build(frame, fetched_at=started, asked=asked, **more)
    )


def _sendable(
    collector: Collector,
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
    options: FetchOptions,
) -> AsyncGenerator[DetailPage, None]:
    """The cloud's listing, page by page (ids with their records), for both ways of
    making rows from it. With ``api="auto"`` a v1 listing answering 300 before its
    first page switches to v2 (the lister does), and so does ``fetcher``."""
    # Listed ids are taken as sent (not stripped): the listing dedupes them, and an id
    # with spaces is invalid and reported as such rather than silently changed.
    # From both ends at once when rows are made from the listing (it is then the run's
    # cost); one page at a time for HEADs, which then hold the listing back.
    pages = Lister(
        endpoint, tokens, options, concurrent=not options.verify_with_head
    ).detail_pages()
    async with contextlib.aclosing(pages):
        async for page in pages:
            if page.api is not fetcher.glance:
                fetcher.use_v2("its v1 listing answered 300")
            yield page


async def _listed_pages(
    collector: Collector,
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
    collector: Collector,
    listing: AsyncGenerator[DetailPage, None],
    stored: pd.DataFrame | None,
    members: bool = False,
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
    With ``members``, the images that can have members (:mod:`imgframe.members`) get
    their row once their members are read, by ``fetcher``'s pool while the listing goes
    on (:meth:`~imgframe.fetch.HeadFetcher.read_members`); the others at once.
    """
    # The next page is asked for while this one becomes rows: at 50 ms a page, the
    # listing's own latency is then the run's only cost.
    pages = _read_ahead(listing, LISTING_PAGES_AHEAD)
    if members:
        feed = IdFeed(_members_asked(collector, pages, stored), max_pages_ahead=LISTING_PAGES_AHEAD)
        await fetcher.read_members(feed, functools.partial(_with_members, collector))
        return
    position = 0
    add = collector.add_packed
    async with contextlib.aclosing(pages):
        async for page in pages:
            for at, image_id, packed in _page_rows(collector, page, position, stored):
                add(at, image_id, 200, None, packed)
            position += len(page.ids)
            await asyncio.sleep(0)  # a page's work done: let the checkpoint ticker run


def _page_rows(
    collector: Collector, page: DetailPage, start: int, stored: pd.DataFrame | None
) -> Iterator[tuple[int, str, bytes]]:
    """``(position, image_id, packed)`` of each listed image of ``page`` to make a row of,
    positions from ``start`` (invalid and stored ids get theirs in ``collector`` here)."""
    # The API that listed the page (after any api="auto" switch) reads its records.
    packed_of = page.api.pack_record
    collector.expect(len(page.ids))
    records = page.records
    rid = page.request_id
    tail = b"" if rid is None else PACK_SEPARATOR.join((b"", _REQUEST_ID, rid))
    for at, image_id in _sendable(collector, page.ids, start, stored):
        yield at, image_id, packed_of(records[at - start]) + tail


async def _members_asked(
    collector: Collector,
    pages: AsyncGenerator[DetailPage, None],
    stored: pd.DataFrame | None,
) -> AsyncIterator[list[tuple[int, str, bytes]]]:
    """Per listing page, the images whose members are to be read; the rows of the others
    go to ``collector`` at once (members NA: they cannot have any)."""
    position = 0
    async with contextlib.aclosing(pages):
        async for page in pages:
            asked = []
            api = page.api.name
            start, position = position, position + len(page.ids)
            for item in _page_rows(collector, page, start, stored):
                if may_have_members_packed(api, item[2]):
                    asked.append(item)
                else:
                    collector.add_packed(item[0], item[1], 200, None, item[2])
            yield asked


def _with_members(
    collector: Collector,
    position: int,
    image_id: str,
    packed: bytes,
    text: str | None,
    error: str | None,
) -> None:
    """A listed image's row once its members call ended: the members pair appended, or
    the call's error (the row keeps its metadata and is unread)."""
    if text is not None:
        pair = MEMBERS_PAIR_NAME + PACK_SEPARATOR + text.encode()
        packed = packed + PACK_SEPARATOR + pair if packed else pair
    collector.add_packed(position, image_id, 200, error, packed)


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
    timeout: float | Timeout = DEFAULT_TIMEOUT,
    retries: int | RetryPolicy = DEFAULT_RETRY,
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
    members: bool = False,
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

    ``members=True`` also reads who each image is shared with, into the ``members``
    column (:mod:`imgframe.members`): after an image's 200 the same worker asks
    ``GET .../images/{id}/members`` when the image can have members (v1: not public,
    not deleted; v2: ``visibility == "shared"``); the others get no request and NA. A
    members call that fails is that row's ``error`` (the row keeps its metadata, is
    unread and asked again on resume). With ``ids=None`` the listed images that can have
    members are asked through the same pool.

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

    ``df.attrs["imgframe"]`` says what was fetched and when (``fetched_at``: the start of
    the call; what was asked, counts, ``complete``; never a token): see
    :mod:`imgframe.provenance`. The files of :mod:`imgframe.io` keep it, and the audits
    judge ages against its ``fetched_at``.

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
    options = FetchOptions.build(
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
        members=members,
    )
    coroutine = fetch_with_options(
        ids, options, endpoint=endpoint, token=token, cloud=cloud, region=region
    )
    return run_sync(coroutine)
