"""Enumerate the image ids a token can see, page by page, from Glance v1 or v2.

:func:`list_image_ids_async` yields ids as each page arrives, so a fetch can start before
the listing ends; :func:`list_image_ids` is the blocking form and returns a list.

Paging rules, and why:

* v1 (``GET /v1/images/detail?limit=N&marker=M``) has no ``next`` link. The next page is
  asked for with the last id as ``marker`` until a page comes back **empty**. A page
  shorter than ``limit`` does not mean the end: servers clamp ``limit`` to their
  ``api_limit_max`` (stopping there is a known bug of other clients).
* v2 (``GET /v2/images``) follows the ``next`` link (relative to the endpoint) until the
  body has none.
* A marker (or v2 ``next`` link) seen before means the server is going round in circles:
  :class:`~imgframe.FetchError`, never an endless loop. ``max_pages`` bounds the rest.
* An id listed twice (the fleet changed between pages, or v2's passes overlap) is
  yielded once, with its first record.
* Read from both ends (``Lister(concurrent=True)``, the default; HEAD verification pages
  one walk at a time): Glance sorts by (sort_key, created_at, id) with one ``sort_dir``
  for all keys, so a ``sort_dir=asc`` walk lists the same images from the oldest while
  the default walk lists from the newest, each page's request sent as the other's is
  in flight. They stop where they meet, which is checked (the ids both listed come in
  reverse order, or, when that is one id, the page after the oldest is empty); the
  images come in the default walk's order either way, and a server that ignores
  ``sort_dir`` (or anything else inconsistent) is listed by the default walk alone.
  v2's passes run side by side, their pages handed on in pass order.
* v2 lists in the passes of :data:`V2_PASSES` (Glance's default leaves out hidden images,
  other projects' community images and pending or rejected shares); a pass whose first
  page answers 400 to its filters is skipped with an
  :class:`~imgframe.IncompleteListingWarning` (the first falls back to the default).

Killed images and v1's ``changes-since`` (Glance Queens, read from its source):
the v1 API passes on only its ``SUPPORTED_FILTERS`` (``glance/api/v1/__init__.py``;
``deleted`` is not one of them, so ``deleted=true`` is silently dropped). The registry
(``glance/registry/api/v1/images.py`` ``Controller._get_filters``) then sets
``deleted=False`` unless ``changes-since`` was given, and the database
(``glance/db/sqlalchemy/api.py`` ``_make_conditions_from_filters``) answers
``deleted=False`` with "not deleted **and status is not killed**". So a default v1
listing hides killed images -- exactly the broken uploads an audit looks for -- and a
``status=killed`` filter does not bring them back (it is ANDed with that rule). Only
``changes-since`` skips both conditions: it lists killed *and* deleted images (also a
project token's own and public deleted ones). imgframe therefore always lists v1 with
``changes-since=1970-01-01T00:00:00`` and drops the images whose detail says
``"deleted": true`` on the client, unless ``include_deleted=True``. The marker is still
the last id of the raw page, deleted or not (Glance looks markers up with
``force_show_deleted`` when ``changes-since`` is set). A server that answers 400 to the
first page with ``changes-since`` (an IMS deployment that is not Glance, say) is listed
without it, and an :class:`~imgframe.IncompleteListingWarning` says killed images may lack.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp

from imgframe.auth import (
    RequestSigner,
    TokenArg,
    TokenSource,
    cloud_token,
    image_endpoint,
    token_source,
)
from imgframe.config import DEFAULT_MAX_PAGES as DEFAULT_MAX_PAGES
from imgframe.config import DEFAULT_PAGE_SIZE as DEFAULT_PAGE_SIZE
from imgframe.config import DEFAULT_RETRY, DEFAULT_TIMEOUT, FetchOptions, RetryPolicy, Timeout
from imgframe.errors import ConfigError, FetchError, IncompleteListingWarning
from imgframe.glance import V1, V2, GlanceApi, Page, after_300, glance_api, normalize_endpoint
from imgframe.http import (
    Credentials,
    get_page,
    new_session,
    ssl_option,
)
from imgframe.runner import run_sync

__all__ = ["list_image_ids", "list_image_ids_async"]

logger = logging.getLogger("imgframe.listing")


async def list_image_ids_async(
    *,
    endpoint: str | None = None,
    token: TokenArg = None,
    api: Literal["v1", "v2", "auto"] = "v1",
    page_size: int = DEFAULT_PAGE_SIZE,
    verify: bool | str = True,
    include_deleted: bool = False,
    timeout: float | Timeout = DEFAULT_TIMEOUT,
    retries: int | RetryPolicy = DEFAULT_RETRY,
    max_pages: int = DEFAULT_MAX_PAGES,
    cloud: str | None = None,
    region: str | None = None,
) -> AsyncIterator[str]:
    """Yield every image id the token can see, page by page, each id once.

    ``endpoint`` is the Glance URL with or without ``/v1`` (or ``/v2``; None: the
    catalog's, with a :class:`~imgframe.auth.KeystoneToken`); ``token`` is what
    :func:`imgframe.fetch_images` takes (None reads ``OS_AUTH_TOKEN``), ``cloud`` and
    ``region`` its ``clouds.yaml`` shorthand (not with ``token``); a 401 asks the
    token source for a fresh token once per page. A :class:`~imgframe.HuaweiAkSk` (any
    :class:`~imgframe.auth.RequestSigner`) signs each page's URL, query string included.
    ``api="v1"`` pages ``/v1/images/detail``
    with ``is_public=None``, without which Glance v1 shows an admin only public images,
    and ``changes-since``, without which it hides killed images (see the module
    docstring); ``api="v2"`` follows ``/v2/images`` ``next`` links in two passes,
    every visibility and share status, then the hidden images (:data:`V2_PASSES`; Glance's
    default listing has neither; never deleted ones); ``api="auto"`` lists v1 and, when
    its first page answers 300 (no v1 API), v2. ``page_size`` is the
    ``limit`` asked for (the server may clamp it). ``include_deleted`` (v1) also lists
    soft-deleted images: all of them for an admin, a project's own and public ones for
    a project token (whose HEADs of them then answer 404). Transient failures (429,
    5xx, timeouts) are retried like :func:`imgframe.fetch_images` does.

    Raises :class:`~imgframe.NoV1ApiError` when v1 answers 300, :class:`~imgframe.AuthError`
    when the token is rejected and cannot be refreshed, and :class:`~imgframe.FetchError`
    (with ``url``, never the token) for any other failure, a repeated marker or more than
    ``max_pages`` pages. Stop early with ``contextlib.aclosing``, which closes the session.

    Examples
    --------
    >>> import asyncio
    >>> from imgframe.testing import GlanceEmulator, make_fleet, ADMIN_TOKEN
    >>> fleet = make_fleet(30, seed=1)
    >>> async def first_ids(url: str) -> list[str]:
    ...     return [i async for i in list_image_ids_async(endpoint=url, token=ADMIN_TOKEN,
    ...                                                  api="v2", page_size=7)]
    >>> with GlanceEmulator(fleet) as emu:
    ...     ids = asyncio.run(first_ids(emu.url))
    >>> sorted(ids) == sorted(i.id for i in fleet.images if not i.deleted)
    True
    """
    options = FetchOptions.build(
        api=api,
        page_size=page_size,
        verify=verify,
        include_deleted=include_deleted,
        timeout=timeout,
        retries=retries,
        max_pages=max_pages,
    )
    ids = listed_ids(options, endpoint=endpoint, token=token, cloud=cloud, region=region)
    async with contextlib.aclosing(ids):
        async for image_id in ids:
            yield image_id


async def listed_ids(
    options: FetchOptions,
    *,
    endpoint: str | None,
    token: TokenArg,
    cloud: str | None = None,
    region: str | None = None,
) -> AsyncGenerator[str, None]:
    """:func:`list_image_ids_async` with its options made (the one both forms share)."""
    source = token_source(cloud_token(token, cloud, region))
    endpoint = await image_endpoint(source, endpoint)
    ids = Lister(endpoint, source, options).ids()
    async with contextlib.aclosing(ids):
        async for image_id in ids:
            yield image_id


def list_image_ids(
    *,
    endpoint: str | None = None,
    token: TokenArg = None,
    api: Literal["v1", "v2", "auto"] = "v1",
    page_size: int = DEFAULT_PAGE_SIZE,
    verify: bool | str = True,
    include_deleted: bool = False,
    timeout: float | Timeout = DEFAULT_TIMEOUT,
    retries: int | RetryPolicy = DEFAULT_RETRY,
    max_pages: int = DEFAULT_MAX_PAGES,
    cloud: str | None = None,
    region: str | None = None,
) -> list[str]:
    """Every image id the token can see, in listing order (newest first), each once.

    Blocks until the whole listing is read (works in a Jupyter cell too); the arguments
    are those of :func:`list_image_ids_async`, the streaming form.

    Examples
    --------
    >>> from imgframe.testing import GlanceEmulator, make_fleet, ADMIN_TOKEN
    >>> fleet = make_fleet(30, seed=1)
    >>> with GlanceEmulator(fleet, api_limit_max=4) as emu:    # every page is clamped
    ...     ids = list_image_ids(endpoint=emu.url + "/v1", token=ADMIN_TOKEN,
    ...                          include_deleted=True)
    >>> sorted(ids) == sorted(image.id for image in fleet.images)
    True
    """
    options = FetchOptions.build(
        api=api,
        page_size=page_size,
        verify=verify,
        include_deleted=include_deleted,
        timeout=timeout,
        retries=retries,
        max_pages=max_pages,
    )

    async def collect() -> list[str]:
        ids = listed_ids(options, endpoint=endpoint, token=token, cloud=cloud, region=region)
        async with contextlib.aclosing(ids):
            return [image_id async for image_id in ids]

    result: list[str] = run_sync(collect())
    return result


# v1 listings ask for everything changed since the epoch: the only way Glance v1 lists
# killed images (module docstring). Deleted ones come too and are dropped client-side.
V1_CHANGES_SINCE = "1970-01-01T00:00:00"


# Glance v2's default listing (glance/api/v2/images.py index, glance/db/sqlalchemy/api.py
# _image_get_all) leaves out hidden images (os_hidden is always a filter, false unless
# "true" is asked), other projects' community images (even for an admin: only
# visibility=community or =all lists them) and shares not accepted (member_status
# defaults to accepted). So v2 lists in two passes, in this order, each paged on its own:
# every visibility and share status, not hidden; then the same, hidden. An id listed by
# both (an image hidden between them) keeps its first record.
V2_PASSES: tuple[dict[str, str], ...] = (
    {"visibility": "all", "member_status": "all"},
    {"visibility": "all", "member_status": "all", "os_hidden": "true"},
)


class _FilterRefused(Exception):
    """A v2 listing pass's first page answered 400 to its filters."""


@dataclass(frozen=True, slots=True)
class DetailPage:
    """One listing page's images not listed before: ids, their records (v1 detail
    records or v2 image documents, as sent), the page's request id (raw bytes) and the
    API that listed them (``api="auto"`` may have switched to v2)."""

    ids: list[str]
    records: list[dict[str, Any]]
    request_id: bytes | None
    api: GlanceApi = V1


class _Switched(Exception):
    """``api="auto"``: the first v1 page answered 300; list again with v2."""


class Lister:
    """One listing run: one session, the credentials, the pages asked for so far.

    ``options`` gives the API (``"auto"``: v1, switching to v2 when the first page
    answers 300), the page size and bound, TLS, timeouts, retries and
    ``include_deleted``. ``concurrent``: read each listing from both ends at once (and
    v2's passes side by side), the same pages in the same order; off, one request at a
    time (plus the next page asked for ahead), which lets a slow consumer hold back the
    listing page by page (the HEAD of each listed id is then the run's cost anyway).
    """

    def __init__(
        self,
        endpoint: str,
        tokens: TokenSource | RequestSigner,
        options: FetchOptions,
        *,
        concurrent: bool = True,
    ) -> None:
        self.endpoint = normalize_endpoint(endpoint)  # also drops a trailing /v1, /v2.1...
        self.api = options.api
        self.glance = glance_api(options.api)
        self.include_deleted = options.include_deleted
        self._check_deleted()
        self.page_size = options.page_size
        self.max_pages = options.max_pages
        self.credentials = Credentials(tokens)
        self._timeout = options.timeout
        self._retry = options.retries
        self._ssl = ssl_option(options.verify)
        self._read = 0
        self.concurrent = concurrent  # pages answered: api="auto" switches only before the first

    def _check_deleted(self) -> None:
        if self.include_deleted and self.glance is V2:
            raise ConfigError(
                "include_deleted needs api='v1': Glance v2 never lists deleted images"
            )

    async def ids(self) -> AsyncGenerator[str, None]:
        pages = self.pages()
        async with contextlib.aclosing(pages):
            async for page in pages:
                for image_id in page:
                    yield image_id

    async def pages(self) -> AsyncGenerator[list[str], None]:
        """The ids of each page not listed before (never an empty list), page by page."""
        pages = self.detail_pages()
        async with contextlib.aclosing(pages):
            async for page in pages:
                yield page.ids

    async def detail_pages(self) -> AsyncGenerator[DetailPage, None]:
        """Each page's images not listed before (never an empty page), with their
        records: an id listed twice keeps its first record."""
        await self.credentials.start()
        seen: set[str] = set()
        session = new_session(
            self._ssl,
            # Up to two walks per pass (both ends), two passes at once (v2), each with a
            # request sent ahead, and the check of the page after the last.
            limit=_CONNECTIONS,
            timeout=aiohttp.ClientTimeout(
                total=self._timeout.total, sock_connect=self._timeout.connect
            ),
            headers={"Accept": "application/json"},
        )
        async with session:
            while True:
                glance = self.glance
                pages = self._v2_pages(session) if glance is V2 else self._v1_pages(session)
                try:
                    async with contextlib.aclosing(pages):
                        async for page in pages:
                            first: dict[str, dict[str, Any]] = {}
                            for image_id, record in zip(page.ids, page.records, strict=True):
                                if image_id not in seen and image_id not in first:
                                    first[image_id] = record
                            if first:
                                seen.update(first)
                                yield DetailPage(
                                    list(first), list(first.values()), page.request_id, glance
                                )
                    return
                except _Switched:  # a new listing
                    self._check_deleted()

    async def _v1_pages(self, session: aiohttp.ClientSession) -> AsyncGenerator[Page, None]:
        # is_public=None: without it Glance v1 lists only public images to an admin
        # (registry _get_is_public); other tokens see their own, shared and public
        # images either way. changes-since: see V1_CHANGES_SINCE.
        params = {
            "is_public": "None",
            "changes-since": V1_CHANGES_SINCE,
            "limit": str(self.page_size),
        }
        desc_stream = _Stream()
        desc = self._v1_walk(session, params, desc_stream, first=True)

        def asc(stream: _Stream) -> AsyncGenerator[Page, None]:
            # params as the first page left them (without a refused changes-since).
            return self._v1_walk(session, {**params, "sort_dir": "asc"}, stream)

        async def after(marker: str, stream: _Stream) -> Page:
            return await self._get(session, V1.page_path({**params, "marker": marker}), stream)

        pages = self._both_ends(desc, asc, after, desc_stream)
        async with contextlib.aclosing(pages):
            async for page in pages:
                if page.deleted and not self.include_deleted:
                    kept = [
                        (i, r)
                        for i, r in zip(page.ids, page.records, strict=True)
                        if i not in page.deleted
                    ]
                    yield dataclasses.replace(
                        page, ids=[i for i, _ in kept], records=[r for _, r in kept]
                    )
                else:
                    yield page

    async def _v1_walk(
        self,
        session: aiohttp.ClientSession,
        params: dict[str, str],
        stream: _Stream,
        *,
        first: bool = False,
    ) -> AsyncGenerator[Page, None]:
        """The raw v1 pages (deleted images included) in ``params``' order, each page
        not empty, until an empty one. ``first``: the listing's first walk, which
        drops a refused ``changes-since`` from ``params`` (in place)."""
        refused = False
        ahead: tuple[str, asyncio.Task[_Body]] | None = None
        try:
            while True:
                path = V1.page_path(params)
                try:
                    page, ahead = await self._get_ahead(session, path, ahead, stream)
                except FetchError as exc:
                    if (
                        not first
                        or exc.status != 400
                        or "marker" in params
                        or "changes-since" not in params
                    ):
                        raise
                    # A server that refuses changes-since (not every IMS deployment is
                    # Glance Queens): list without it rather than not at all, and say
                    # what may lack.
                    del params["changes-since"]
                    refused = True
                    continue
                if refused:  # said only once the listing without it works
                    refused = False
                    message = (
                        f"{self.endpoint} refused changes-since in its v1 listing (HTTP 400): "
                        "listed without it, so killed (and deleted) images may be missing"
                    )
                    logger.warning("%s", message)
                    warnings.warn(message, IncompleteListingWarning, stacklevel=2)
                if not page.ids:  # only an empty raw page ends it, not one of deleted images
                    return
                marker = page.ids[-1]  # deleted or not: the server pages by the raw listing
                if marker in stream.markers:
                    raise FetchError(
                        f"{self.endpoint} repeated the page ending at marker {marker!r}: "
                        "stopped instead of listing forever",
                        url=self.endpoint + V1.listing_path,
                    )
                stream.markers.add(marker)
                yield page
                params = {**params, "marker": marker}
        finally:
            await _cancelled(ahead)

    async def _both_ends(
        self,
        desc: AsyncGenerator[Page, None],
        make_asc: Callable[[_Stream], AsyncGenerator[Page, None]],
        after: Callable[[str, _Stream], Coroutine[Any, Any, Page]],
        desc_stream: _Stream,
    ) -> AsyncGenerator[Page, None]:
        """The pages of the walk ``desc`` (the listing's own order), read from both ends.

        Once ``desc``'s first page is in, ``make_asc()`` walks the same listing from its
        other end (``sort_dir=asc``: Glance sorts by (sort_key, created_at, id) with one
        direction for all keys, ``glance/db/sqlalchemy/api.py`` ``_paginate_query``).
        The walks stop when one lists an id the other has: ``desc``'s pages are
        yielded as they come, then the ``asc`` pages reversed (without the ids ``desc``
        listed), the order one ``desc`` walk gives. Where they meet, the last ids
        ``desc`` listed must be the last ``asc`` listed, reversed; when that is one id
        only, ``after(oldest, stream)`` (``desc``'s page after the ``asc`` walk's first
        id) must be empty too. Anything inconsistent (an ``asc`` walk that fails or
        repeats an id, a server ignoring ``sort_dir``, walks that disagree where they
        meet) drops the ``asc`` walk and finishes with ``desc`` alone: no image is lost
        or listed twice either way.
        """
        tasks: list[asyncio.Task[Any]] = []
        asc: AsyncGenerator[Page, None] | None = None
        if not self.concurrent:
            async with contextlib.aclosing(desc):
                async for plain in desc:
                    yield plain
            return
        try:
            first = await _next_page(desc)
            if first is None:
                return
            yield first
            listed = list(first.ids)
            listed_set = set(listed)
            if len(first.ids) < self.page_size:
                # A short first page: most likely the whole listing (or a server that
                # clamps limit). Its other end is walked only once a second page shows
                # there is more, so a small cloud costs no more requests than before.
                second = await _next_page(desc)
                if second is None:
                    return
                yield second
                if len(set(second.ids)) != len(second.ids) or not listed_set.isdisjoint(second.ids):
                    async for rest in desc:  # the listing changed under desc: desc alone
                        yield rest
                    return
                listed += second.ids
                listed_set.update(second.ids)
            stream = _Stream(other=listed_set)
            asc = make_asc(stream)
            first_tasks = (_task(_next_page(desc)), _task(_next_page(asc)))
            tasks[:] = first_tasks
            desc_task: asyncio.Task[Page | None] | None = first_tasks[0]
            asc_task: asyncio.Task[Page | None] | None = first_tasks[1]
            backward: list[Page] = []
            backward_set = desc_stream.other  # filled as the asc walk lists
            met = False
            paused = False  # the asc walk holds _FROM_THE_END pages: desc walks on alone
            while desc_task is not None and (asc_task is not None or paused) and not met:
                running = [task for task in (desc_task, asc_task) if task is not None]
                await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                if desc_task.done():
                    page = desc_task.result()
                    if page is None:  # desc listed everything on its own
                        desc_task = None
                        break
                    yield page
                    if len(set(page.ids)) != len(page.ids) or not listed_set.isdisjoint(page.ids):
                        asc_task = None  # the listing changed under desc: desc alone
                        desc_task = _task(_next_page(desc))
                        tasks.append(desc_task)
                        break
                    listed += page.ids
                    listed_set.update(page.ids)
                    met = not backward_set.isdisjoint(page.ids)
                    desc_task = _task(_next_page(desc))
                    tasks.append(desc_task)
                if asc_task is not None and asc_task.done() and not met:
                    try:
                        page = asc_task.result()
                    except Exception as exc:  # the other end cannot be walked: desc alone
                        logger.debug("%s: listing from the end failed (%s)", self.endpoint, exc)
                        asc_task = None
                        break
                    if (
                        page is None
                        or len(set(page.ids)) != len(page.ids)
                        or not backward_set.isdisjoint(page.ids)
                    ):
                        asc_task = None  # walked to the end without meeting: inconsistent
                        break
                    backward.append(page)
                    backward_set.update(page.ids)
                    met = not listed_set.isdisjoint(page.ids)
                    if not met and len(backward) < _FROM_THE_END:
                        asc_task = _task(_next_page(asc))
                        tasks.append(asc_task)
                    elif not met:
                        asc_task, paused = None, True
            if met:
                ascending = [i for back in backward for i in back.ids]
                overlap = len(listed_set & backward_set)
                beyond = None
                if listed[-overlap:] == ascending[::-1][:overlap]:
                    if overlap > 1:
                        # Two ids or more met in reversed order: the server honoured
                        # sort_dir (one that ignores it sends them in the same order).
                        beyond = Page([], None)
                    else:  # one id: as well a server ignoring sort_dir with 1-id pages
                        try:
                            beyond = await after(ascending[0], stream)
                        except Exception as exc:
                            logger.debug(
                                "%s: the page after the last failed (%s)", self.endpoint, exc
                            )
                if beyond is not None and not beyond.ids:
                    for back in reversed(backward):
                        kept = [
                            (i, r)
                            for i, r in zip(back.ids[::-1], back.records[::-1], strict=True)
                            if i not in listed_set
                        ]
                        if kept:
                            yield dataclasses.replace(
                                back, ids=[i for i, _ in kept], records=[r for _, r in kept]
                            )
                    return
                logger.debug("%s: the listing's two ends disagree: read on", self.endpoint)
            # desc alone, from where it is: the listing in its own order, nothing lost.
            desc_stream.other = set()  # its pages are asked for ahead again
            for task in tasks:
                if task is not desc_task:
                    await _cancelled_task(task)
            while desc_task is not None:
                page = await desc_task
                if page is None:
                    return
                yield page
                desc_task = _task(_next_page(desc))
                tasks.append(desc_task)
        finally:
            for task in tasks:
                await _cancelled_task(task)
            await desc.aclose()
            if asc is not None:
                await asc.aclose()

    async def _v2_pages(self, session: aiohttp.ClientSession) -> AsyncGenerator[Page, None]:
        # Two passes (V2_PASSES), each paged on its own; detail_pages dedupes across them.
        # The later passes are read while the first is (their pages kept until then).
        each = [
            self._v2_pass_or_default(session, number, extra)
            for number, extra in enumerate(V2_PASSES)
        ]
        passes: list[AsyncGenerator[Page, None] | _Buffered] = list(each)
        later: list[_Buffered] = []
        if self.concurrent:
            later = [_Buffered(pages) for pages in each[1:]]
            passes[1:] = later
        try:
            for pages in passes:
                async with contextlib.aclosing(pages):
                    async for page in pages:
                        yield page
        finally:
            for buffered in later:
                await buffered.aclose()

    async def _v2_pass_or_default(
        self, session: aiohttp.ClientSession, number: int, extra: dict[str, str]
    ) -> AsyncGenerator[Page, None]:
        try:
            pages = self._v2_pass(session, extra)
            async with contextlib.aclosing(pages):
                async for page in pages:
                    yield page
        except _FilterRefused:
            # An older Glance, or a v2 server that is not Glance, may refuse these
            # filters: list what it can rather than nothing, and say what may lack.
            what = "hidden images" if "os_hidden" in extra else "community images, shares"
            message = (
                f"{self.endpoint} refused {urlencode(extra)} in its v2 listing (HTTP 400): "
                f"{what} may be missing"
            )
            logger.warning("%s", message)
            warnings.warn(message, IncompleteListingWarning, stacklevel=2)
            if number == 0:  # at least Glance's default listing
                pages = self._v2_pass(session, {})
                async with contextlib.aclosing(pages):
                    async for page in pages:
                        yield page

    def _v2_pass(
        self, session: aiohttp.ClientSession, extra: dict[str, str]
    ) -> AsyncGenerator[Page, None]:
        """One listing pass with the ``extra`` filters, read from both ends."""
        params = {"limit": str(self.page_size), **extra}

        def asc(stream: _Stream) -> AsyncGenerator[Page, None]:
            return self._v2_walk(session, {**params, "sort_dir": "asc"}, stream)

        async def after(marker: str, stream: _Stream) -> Page:
            return await self._get(session, V2.page_path({**params, "marker": marker}), stream)

        desc_stream = _Stream()
        desc = self._v2_walk(session, params, desc_stream, first=bool(extra))
        return self._both_ends(desc, asc, after, desc_stream)

    async def _v2_walk(
        self,
        session: aiohttp.ClientSession,
        params: dict[str, str],
        stream: _Stream,
        *,
        first: bool = False,
    ) -> AsyncGenerator[Page, None]:
        """The pages of ``params``' listing, following ``next`` links; each not empty.
        ``first``: a 400 to the first page is :class:`_FilterRefused`."""
        path: str | None = V2.page_path(params)
        ahead: tuple[str, asyncio.Task[_Body]] | None = None
        try:
            while path is not None:
                try:
                    page, ahead = await self._get_ahead(session, path, ahead, stream)
                except FetchError as exc:
                    if first and exc.status == 400:
                        raise _FilterRefused from None
                    raise
                first = False
                if not page.ids:
                    return
                yield page
                path = page.next_path
                if path is None:
                    return
                marker = parse_qs(urlsplit(path).query).get("marker", [None])[-1]
                if path in stream.followed or (marker is not None and marker in stream.markers):
                    raise FetchError(
                        f"{self.endpoint} sent the same next link twice ({path!r}): "
                        "stopped instead of listing forever",
                        url=self.endpoint + V2.listing_path,
                    )
                stream.followed.add(path)
                if marker is not None:
                    stream.markers.add(marker)
        finally:
            await _cancelled(ahead)

    async def _get(self, session: aiohttp.ClientSession, path: str, stream: _Stream) -> Page:
        """GET one page (with retries and one token refresh) and read its ids."""
        return self._parse(*await self._fetch(session, path, stream))

    async def _get_ahead(
        self,
        session: aiohttp.ClientSession,
        path: str,
        ahead: tuple[str, asyncio.Task[_Body]] | None,
        stream: _Stream,
    ) -> tuple[Page, tuple[str, asyncio.Task[_Body]] | None]:
        """:meth:`_get` of ``path`` (the answer of ``ahead``'s request if it was for
        ``path``), and the next page's request, already sent when its path can be read
        from the raw body (:func:`_next_guess`): the next round trip then overlaps this
        page's decoding and whatever the caller does with it until it asks for the next.
        A wrong guess (checked against the decoded page by the caller) costs one
        cancelled request, never a wrong page. A path ``stream`` asked for before is
        never guessed again: a server going round in circles is caught by the caller
        without one more request."""
        asked = stream.asked
        asked.add(path)
        if ahead is not None and ahead[0] == path:
            body = await ahead[1]
        else:
            await _cancelled(ahead)
            body = await self._fetch(session, path, stream)
        guess = _next_guess(body[1], self.glance.name, path)
        following = None
        if (
            guess is not None
            and guess not in asked
            and (
                not stream.other
                or parse_qs(urlsplit(guess).query).get("marker", [""])[-1] not in stream.other
            )
        ):
            following = (guess, asyncio.create_task(self._fetch(session, guess, stream)))
            await asyncio.sleep(0)  # the task runs until its request is on the wire
        try:
            return self._parse(*body), following
        except BaseException:
            await _cancelled(following)
            raise

    async def _fetch(self, session: aiohttp.ClientSession, path: str, stream: _Stream) -> _Body:
        """GET one page (with retries and one token refresh): its URL, body, request id.
        ``max_pages`` bounds each walk of the listing (``stream``)."""
        stream.pages += 1
        if stream.pages > self.max_pages:
            raise FetchError(
                f"{self.endpoint} listing needed more than max_pages={self.max_pages} pages",
                url=self.endpoint + path,
            )
        url = self.endpoint + path

        def switch_at_300(status: int) -> None:
            if status == 300 and self.glance is V1:
                # NoV1ApiError, unless api="auto" and nothing was listed yet.
                self.glance = after_300(self.api if not self._read else "v1", self.endpoint, url)
                logger.info(
                    "%s has no Glance v1 API (its listing answered 300): using v2", self.endpoint
                )
                raise _Switched

        body, request_id = await get_page(
            session,
            url,
            self.credentials,
            self._timeout,
            self._retry,
            endpoint=self.endpoint,
            log=logger,
            on_status=switch_at_300,
        )
        self._read += 1
        return url, body, request_id

    def _parse(self, url: str, body: bytes, request_id: bytes | None = None) -> Page:
        return self.glance.parse_page(self.endpoint, url, body, request_id)


_CONNECTIONS = 10

# The most pages the walk from the other end holds (they are handed on only when the
# walks meet): ~200 MB of v1 detail records at 1,000 images a page. A listing of up to
# twice that many pages is read in half the round trips; a longer one saves these.
_FROM_THE_END = 64


@dataclass(slots=True)
class _Stream:
    """One walk of a listing: its pages asked for, paths and markers seen."""

    pages: int = 0
    asked: set[str] = dataclasses.field(default_factory=set)
    markers: set[str] = dataclasses.field(default_factory=set)
    followed: set[str] = dataclasses.field(default_factory=set)
    # The ids the walk from the other end has listed: a page past one of them is not
    # asked for ahead (the walks have met; it would be thrown away).
    other: set[str] = dataclasses.field(default_factory=set)


async def _next_page(pages: AsyncIterator[Page]) -> Page | None:
    """``pages``' next page, None at its end (a task's result, never StopAsyncIteration)."""
    return await anext(pages, None)


def _task(awaitable: Coroutine[Any, Any, _R]) -> asyncio.Task[_R]:
    return asyncio.create_task(awaitable)


_R = TypeVar("_R")


async def _cancelled_task(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` (if still running) and wait until it is gone; its failure, if
    it failed unawaited, is retrieved (the caller has given up on it)."""
    if task.done():
        if not task.cancelled():
            task.exception()
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


class _Buffered:
    """An async generator's items read by a task of their own from the start, handed
    on in order when asked for (its error at its place)."""

    def __init__(self, source: AsyncGenerator[Page, None]) -> None:
        self._source = source
        self._queue: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue()
        self._task = asyncio.create_task(self._read())
        self._over = False

    async def _read(self) -> None:
        try:
            async with contextlib.aclosing(self._source):
                async for item in self._source:
                    self._queue.put_nowait((True, item))
        except Exception as exc:  # handed to the reader; CancelledError is not
            self._queue.put_nowait((False, exc))
        else:
            self._queue.put_nowait((False, None))

    def __aiter__(self) -> _Buffered:
        return self

    async def __anext__(self) -> Page:
        if self._over:
            raise StopAsyncIteration
        ok, item = await self._queue.get()
        if ok:
            return item  # type: ignore[no-any-return]
        self._over = True
        if item is None:
            raise StopAsyncIteration
        raise item

    async def aclose(self) -> None:
        self._over = True
        await _cancelled_task(self._task)


# A page's URL, body and X-Openstack-Request-Id (undecoded), as Lister._fetch reads them.
_Body = tuple[str, bytes, bytes | None]

_V1_ID = b'"id": "'
_V2_NEXT = b'"next": "'


def _next_guess(body: bytes, api: str, path: str) -> str | None:
    r"""The next page's path as the raw ``body`` of the page at ``path`` seems to give
    it, read without decoding the JSON; None when it cannot be read that simply.

    v1: the page's last ``"id"`` as ``marker`` (Glance renders with ``json.dumps``:
    ``"id": "..."``; the last one is the last image's unless that image has an ``id``
    property, which the caller's check of the decoded page catches). v2: the
    ``"next"`` link, which Glance writes after the images. An empty page has neither.

    Examples
    --------
    >>> _next_guess(b'{"images": [{"id": "a"}, {"id": "b"}]}', "v1", "/v1/images/detail?limit=2")
    '/v1/images/detail?limit=2&marker=b'
    >>> _next_guess(b'{"images": [{"id": "b"}], "next": "/v2/images?marker=b"}', "v2", "/v2/images")
    '/v2/images?marker=b'
    >>> _next_guess(b'{"images": [], "next": "/v2/images?marker=b"}', "v2", "/v2/images") is None
    True
    >>> _next_guess(b'{"images": []}', "v1", "/v1/images/detail?limit=2") is None
    True
    """
    key = _V1_ID if api == "v1" else _V2_NEXT
    at = body.rfind(key)
    if at < 0 or (api == "v2" and _V1_ID not in body):  # an empty page ends a v2 pass
        return None
    start = at + len(key)
    end = body.find(b'"', start)
    value = body[start:end]
    if end < 0 or not value or b"\\" in value or not value.isascii():
        return None
    text = value.decode("ascii")
    if api == "v2":
        return text if text.startswith("/v2/") else None
    base, _, query = path.partition("?")
    params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    params["marker"] = text
    return base + "?" + urlencode(params)


async def _cancelled(ahead: tuple[str, asyncio.Task[Any]] | None) -> None:
    """Cancel a request sent ahead (if still running) and wait until it is gone."""
    if ahead is None:
        return
    task = ahead[1]
    if task.done():
        if not task.cancelled():
            task.exception()  # retrieved: an unused guess's failure is not an error
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
