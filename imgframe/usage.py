"""Every Nova server and Cinder volume the credentials can see, as typed frames.

:func:`fetch_servers` pages ``GET {compute}/servers/detail`` and :func:`fetch_volumes`
``GET {volumev3}/volumes/detail``, both with ``all_tenants=1``, ``limit`` and
``marker`` (the marker is taken from the ``rel=next`` link of ``servers_links`` /
``volumes_links``, the URL is always built on the endpoint: a next link never sends the
token elsewhere). Endpoints come from the Keystone catalog (``compute``; ``volumev3``,
else ``block-storage``) through :func:`imgframe.auth.service_endpoint`, or are given.
The HTTP layer is the fetcher's (:mod:`imgframe.http`: session, credentials with one
refresh after a 401, the error vocabulary), the options are
:class:`~imgframe.FetchOptions` (timeouts, retries of 429/5xx/timeouts, ``max_rps``).
Each page is reduced to Arrow text columns as it arrives
(:class:`imgframe.usage_frame.RecordColumns`): the JSON pages are not kept.

Completeness. A listing that could not be read to its end raises
:class:`~imgframe.FetchError` (never a short frame). A listing that was read to its end
but saw only the token's own project is returned marked incomplete
(``df.attrs[COMPLETE_ATTR]`` False, the reason in ``df.attrs[INCOMPLETE_ATTR]``, and an
:class:`~imgframe.IncompleteListingWarning`): Nova answered 403 to ``all_tenants``
(then the project's own servers are listed), or Cinder did not show the volumes'
projects (``os-vol-tenant-attr:tenant_id`` is shown to admins only, and Cinder ignores
``all_tenants`` from other tokens without saying so). The usage audit rules read the
marker: :func:`imgframe.audits.unused` flags nothing from an incomplete listing.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import orjson
import pandas as pd

from imgframe.auth import TokenArg, cloud_token, service_endpoint, token_source
from imgframe.config import DEFAULT_MAX_PAGES, DEFAULT_PAGE_SIZE, FetchOptions, RetryPolicy, Timeout
from imgframe.errors import (
    ConfigError,
    FetchError,
    ImgframeError,
    IncompleteListingWarning,
)
from imgframe.fleet import (
    Target,
    expand_targets,
    fleet_targets,
    labelled,
    relabel,
    run_targets,
    warn_failed_targets,
)
from imgframe.glance import loads
from imgframe.http import (
    Credentials,
    get_page,
    new_session,
    ssl_option,
)
from imgframe.runner import run_sync
from imgframe.schema import SERVER_FIELDS, VOLUME_FIELDS, Field
from imgframe.throttle import Pacer
from imgframe.usage_frame import (
    COMPLETE_ATTR,
    INCOMPLETE_ATTR,
    TARGETS_ATTR,
    RecordColumns,
    concat_usage_frames,
    has_duplicates,
    is_complete,
    target_prefix,
)

__all__ = [
    "COMPUTE_SERVICES",
    "VOLUME_SERVICES",
    "fetch_servers",
    "fetch_servers_async",
    "fetch_volumes",
    "fetch_volumes_async",
]

logger = logging.getLogger("imgframe.fetch")

#: Catalog service types of Nova, and of Cinder v3 (first found wins).
COMPUTE_SERVICES = ("compute",)
VOLUME_SERVICES = ("volumev3", "block-storage")
DEFAULT_TIMEOUT = Timeout(total=60.0)  # a page of 1,000 servers is a big answer
DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True, slots=True)
class _Service:
    name: str  # Nova, Cinder
    path: str  # appended to the endpoint
    key: str  # the records' key in a page
    links: str  # the page's links key
    fields: tuple[Field, ...]
    catalog: tuple[str, ...]


NOVA = _Service("Nova", "/servers/detail", "servers", "servers_links", SERVER_FIELDS,
                COMPUTE_SERVICES)  # fmt: skip
CINDER = _Service("Cinder", "/volumes/detail", "volumes", "volumes_links", VOLUME_FIELDS,
                  VOLUME_SERVICES)  # fmt: skip

NOT_ALL_TENANTS = (
    "{service} refused all_tenants (HTTP 403: the token is not an admin): only the token's "
    "own project's {records} were listed"
)
NO_VOLUME_PROJECTS = (
    "Cinder did not show the volumes' projects (os-vol-tenant-attr:tenant_id, shown to "
    "admins only): it ignores all_tenants from such a token, so only the token's own "
    "project's volumes were listed"
)


_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19


def _loads(body: bytes) -> Any:
    """:func:`imgframe.glance.loads` of a page, its check for long numbers done faster.

    ``glance.loads`` leaves a body with 19 digits in a row to ``json.loads`` (orjson
    reads such an integer as a float); its regular expression took longer than orjson
    itself on a page of 1,000 servers (6.5 ms of ~12). Mapping every digit to ``0`` and
    looking for 19 zeros finds the same bodies in ~0.4 ms; the others go to orjson
    through ``glance.loads`` with a body it checks in no time.
    """
    if _LONG_NUMBER in body.translate(_DIGITS_AS_ZERO):
        return loads(body)  # json.loads, after glance.loads' own check finds it too
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return loads(body)  # NaN, a byte order mark, ...: what json.loads reads


class _Pages:
    """One listing run of one service: session, credentials, pacing, retries."""

    def __init__(
        self, service: _Service, endpoint: str, credentials: Credentials, options: FetchOptions
    ) -> None:
        self.service = service
        self.endpoint = endpoint
        self.credentials = credentials
        self.options = options
        self.pacer = Pacer(options.max_rps) if options.max_rps else None
        self.pages = 0

    async def get(self, session: aiohttp.ClientSession, params: dict[str, str]) -> Any:
        """GET one page (retries, one token refresh) and return its JSON document."""
        self.pages += 1
        url = f"{self.endpoint}{self.service.path}?{urlencode(params)}"
        if self.pages > self.options.max_pages:
            raise FetchError(
                f"{self.service.name} listing needed more than "
                f"max_pages={self.options.max_pages} pages",
                url=url,
            )
        body, _ = await get_page(
            session,
            url,
            self.credentials,
            self.options.timeout,
            self.options.retries,
            endpoint=self.endpoint,
            log=logger,
            before_attempt=None if self.pacer is None else self._paced,
        )
        return self._document(url, body)

    async def _paced(self) -> None:
        assert self.pacer is not None
        wait_for = self.pacer.reserve()
        if wait_for > 0:
            await asyncio.sleep(wait_for)

    def _document(self, url: str, body: bytes) -> tuple[list[Any], str | None]:
        """(records, next marker or None) of one page; FetchError if it is not a list."""
        try:
            document = _loads(body)
            records = document[self.service.key]
        except (ValueError, TypeError, KeyError):
            records = None
        if not isinstance(records, list):
            raise FetchError(
                f"listing {url} failed: the answer is not a {self.service.name} "
                f"{self.service.key} list",
                url=url,
            )
        links = document.get(self.service.links)
        marker = None
        if isinstance(links, list):
            for link in links:
                if isinstance(link, dict) and link.get("rel") == "next":
                    href = link.get("href")
                    query = parse_qs(urlsplit(href).query) if isinstance(href, str) else {}
                    found = query.get("marker", [None])[-1]
                    if not found and records and isinstance(records[-1], dict):
                        found = records[-1].get("id")  # a next link without a marker
                    if not isinstance(found, str) or not found:
                        raise FetchError(
                            f"listing {url} failed: a next link without a marker", url=url
                        )
                    marker = found
        return records, marker


async def _listing(
    service: _Service,
    options: FetchOptions,
    *,
    endpoint: str | None,
    token: TokenArg,
    cloud: str | None,
    region: str | None,
    all_tenants: bool,
) -> pd.DataFrame:
    source = token_source(cloud_token(token, cloud, region))
    base = await service_endpoint(source, endpoint, service.catalog)
    credentials = Credentials(source)
    await credentials.start()
    pages = _Pages(service, base, credentials, options)
    columns = RecordColumns(service.fields)
    reasons: list[str] = []
    params = {"limit": str(options.page_size)}
    if all_tenants:
        params = {"all_tenants": "1", **params}
    timeout = aiohttp.ClientTimeout(
        total=options.timeout.total, sock_connect=options.timeout.connect
    )
    session = new_session(
        ssl_option(options.verify), limit=1, timeout=timeout,
        headers={"Accept": "application/json"},
    )  # fmt: skip
    markers: set[str] = set()
    async with session:
        ahead = asyncio.ensure_future(pages.get(session, dict(params)))
        try:
            while True:
                try:
                    records, marker = await ahead
                except FetchError as exc:
                    if exc.status == 403 and "all_tenants" in params and "marker" not in params:
                        del params["all_tenants"]  # a member token: its own project, say so
                        reasons.append(
                            NOT_ALL_TENANTS.format(service=service.name, records=service.key)
                        )
                        ahead = asyncio.ensure_future(pages.get(session, dict(params)))
                        continue
                    raise
                more = marker is not None and bool(records)  # an empty page ends it
                if more:
                    if marker in markers:
                        raise FetchError(
                            f"{base} repeated the page ending at marker {marker!r}: "
                            "stopped instead of listing forever",
                            url=base + service.path,
                        )
                    markers.add(marker)
                    params["marker"] = str(marker)
                    # The next page is asked for before this one is typed: the server
                    # renders it while the client reads this one.
                    ahead = asyncio.ensure_future(pages.get(session, dict(params)))
                columns.add(records)
                del records
                if not more:
                    break
        finally:
            if not ahead.done():  # an error or an interrupt: the page asked ahead is not wanted
                ahead.cancel()
                await asyncio.wait([ahead])
            if not ahead.cancelled():
                ahead.exception()  # retrieved: asyncio would log a failure nobody awaited
    # A record that moved between pages while listing comes twice; the check runs in Arrow
    # on the id column (pandas' duplicated() of a million ids held ~90 MiB more).
    duplicated = has_duplicates(columns.ids())
    df = columns.frame()
    if duplicated:
        df = df[~df.index.duplicated()]
    if service is CINDER and all_tenants and len(df) and df["project_id"].isna().any():
        reasons.append(NO_VOLUME_PROJECTS)
    if not all_tenants:
        reasons.append(f"all_tenants=False: only the token's own project's {service.key}")
    for reason in reasons:
        logger.warning("%s: %s", base, reason)
        warnings.warn(f"{base}: {reason}", IncompleteListingWarning, stacklevel=3)
    df.attrs[COMPLETE_ATTR] = not reasons
    df.attrs[INCOMPLETE_ATTR] = "; ".join(reasons) or None
    return df


Clouds: TypeAlias = "str | Target | Iterable[str | Target] | None"
Regions: TypeAlias = "str | Sequence[str] | None"


def _is_fleet_call(cloud: Any, region: Any) -> bool:
    """A fleet form: ``cloud`` a list of names or :class:`~imgframe.Target` objects (or
    one Target), or ``region`` a list of names; a name and a region name is one target."""
    many = isinstance(cloud, Target) or (cloud is not None and not isinstance(cloud, str))
    return many or (region is not None and not isinstance(region, str))


async def _fleet_listing(
    service: _Service,
    options: FetchOptions,
    clouds: Any,
    regions: Any,
    *,
    endpoint: str | None,
    token: TokenArg,
    all_tenants: bool,
    errors: Literal["raise", "warn"],
) -> pd.DataFrame:
    """Every target's listing at once, labelled and combined as fetch_fleet's frames are."""
    if endpoint is not None or token is not None:
        raise ConfigError(
            "a fleet (cloud=[...] or region=[...]) takes each target's endpoint and token from "
            "clouds.yaml or its imgframe.Target: not endpoint= or token="
        )
    if errors not in ("raise", "warn"):
        raise ConfigError(f"errors must be 'raise' or 'warn', got {errors!r}")
    names = None if regions is None else [regions] if isinstance(regions, str) else list(regions)
    clouds = [clouds] if isinstance(clouds, str | Target) else clouds
    targets = fleet_targets(clouds, names)
    expanded, refused = await expand_targets(targets, errors=errors)

    async def one(target: Target) -> pd.DataFrame:
        try:
            return await _listing(
                service, options, endpoint=target.endpoint, token=target.token, cloud=None,
                region=None, all_tenants=all_tenants,
            )  # fmt: skip
        except ImgframeError as exc:
            raise relabel(exc, target) from None

    outcomes = await run_targets(expanded, refused, one, errors)
    frames: list[pd.DataFrame] = []
    listed: list[str] = []
    reasons: list[str] = []
    failures: list[str] = []
    for target, result in outcomes:
        if isinstance(result, ImgframeError):
            failures.append(str(result))
            reasons.append(f"not listed: {result}")
            continue
        if isinstance(result, BaseException):
            raise result
        complete, why = is_complete(result)
        if not complete:
            reasons.append(f"{target.label}: {why}")
        listed.append(target_prefix(target.cloud, target.region))
        frames.append(labelled(result, target))
    frame = concat_usage_frames(frames, service.fields)
    if not frames:
        frame = labelled(RecordColumns(service.fields).frame(), Target("-"))
    frame.attrs[COMPLETE_ATTR] = not reasons
    frame.attrs[INCOMPLETE_ATTR] = "; ".join(reasons) or None
    frame.attrs[TARGETS_ATTR] = listed
    warn_failed_targets(frame, failures, len(outcomes), stacklevel=3)
    return frame


async def _either(
    service: _Service,
    options: FetchOptions,
    *,
    endpoint: str | None,
    token: TokenArg,
    cloud: Any,
    region: Any,
    all_tenants: bool,
    errors: Literal["raise", "warn"],
) -> pd.DataFrame:
    if _is_fleet_call(cloud, region):
        return await _fleet_listing(
            service, options, cloud, region, endpoint=endpoint, token=token,
            all_tenants=all_tenants, errors=errors,
        )  # fmt: skip
    return await _listing(
        service, options, endpoint=endpoint, token=token, cloud=cloud, region=region,
        all_tenants=all_tenants,
    )  # fmt: skip


def _options(
    timeout: float | Timeout,
    retries: int | RetryPolicy,
    max_rps: float | None,
    verify: bool | str,
    page_size: int,
    max_pages: int,
) -> FetchOptions:
    return FetchOptions.build(
        timeout=timeout, retries=retries, max_rps=max_rps, verify=verify,
        page_size=page_size, max_pages=max_pages,
    )  # fmt: skip


async def fetch_servers_async(
    endpoint: str | None = None,
    token: TokenArg = None,
    *,
    cloud: Clouds = None,
    region: Regions = None,
    all_tenants: bool = True,
    page_size: int = DEFAULT_PAGE_SIZE,
    timeout: float | Timeout = DEFAULT_TIMEOUT,
    retries: int | RetryPolicy = DEFAULT_RETRY,
    max_rps: float | None = None,
    verify: bool | str = True,
    max_pages: int = DEFAULT_MAX_PAGES,
    errors: Literal["raise", "warn"] = "raise",
) -> pd.DataFrame:
    """:func:`fetch_servers` in a running event loop.

    Examples
    --------
    >>> from imgframe.testing import ADMIN_TOKEN, make_fleet
    >>> from imgframe.testing.compute import ComputeEmulator, make_usage
    >>> usage = make_usage(make_fleet(20, seed=4), seed=4)
    >>> with ComputeEmulator(usage) as nova:
    ...     df = asyncio.run(fetch_servers_async(nova.compute_url, ADMIN_TOKEN))
    >>> len(df) == len(usage.servers)
    True
    """
    options = _options(timeout, retries, max_rps, verify, page_size, max_pages)
    return await _either(
        NOVA, options, endpoint=endpoint, token=token, cloud=cloud, region=region,
        all_tenants=all_tenants, errors=errors,
    )  # fmt: skip


def fetch_servers(
    endpoint: str | None = None,
    token: TokenArg = None,
    *,
    cloud: Clouds = None,
    region: Regions = None,
    all_tenants: bool = True,
    page_size: int = DEFAULT_PAGE_SIZE,
    timeout: float | Timeout = DEFAULT_TIMEOUT,
    retries: int | RetryPolicy = DEFAULT_RETRY,
    max_rps: float | None = None,
    verify: bool | str = True,
    max_pages: int = DEFAULT_MAX_PAGES,
    errors: Literal["raise", "warn"] = "raise",
) -> pd.DataFrame:
    """Every Nova server the credentials can see: one row per server, indexed by ``id``.

    Columns :data:`imgframe.schema.SERVER_FIELDS` (``image_id`` NA for a server booted
    from a volume). ``endpoint`` is the ``compute`` URL as the catalog gives it (e.g.
    ``https://nova:8774/v2.1``; None: from the catalog of a
    :class:`~imgframe.KeystoneToken` or ``cloud=``); ``token``, ``cloud``, ``region``,
    ``timeout``, ``retries``, ``max_rps`` and ``verify`` as for
    :func:`imgframe.fetch_images`. ``all_tenants`` (default) asks for every project's
    servers; when Nova refuses it (403) the token's own project's servers are listed and
    the frame is marked incomplete (module docstring). ``page_size`` is the ``limit``
    asked for. Raises :class:`~imgframe.FetchError` when a page cannot be read.

    Fleets: ``cloud`` a list of ``clouds.yaml`` names and/or :class:`~imgframe.Target`
    objects (whose ``endpoint`` is then the compute URL), or ``region`` a list of names,
    lists every target at once, as :func:`imgframe.fetch_fleet` resolves them (each
    cloud's ``region`` list, else its clouds.yaml regions, else its catalog's; one login
    per cloud). The rows start with ``cloud``, ``region`` and ``id``, indexed by ``key``
    (``cloud/region/id``); the frame is complete only when every target is, its reasons
    named by target. ``errors="raise"``: the first target that fails raises (its message
    starts with ``cloud/region``); ``"warn"``: the others are returned, marked incomplete,
    with a :class:`~imgframe.FleetWarning` and ``df.attrs["failed_targets"]``.

    Examples
    --------
    >>> from imgframe.testing import ADMIN_TOKEN, make_fleet
    >>> from imgframe.testing.compute import ComputeEmulator, make_usage
    >>> usage = make_usage(make_fleet(50, seed=3), seed=3)
    >>> with ComputeEmulator(usage) as nova:
    ...     df = fetch_servers(nova.compute_url, ADMIN_TOKEN, page_size=10)
    >>> len(df) == len(usage.servers), list(df.columns[:3])
    (True, ['name', 'status', 'image_id'])
    >>> from imgframe import Target
    >>> with ComputeEmulator(usage) as east, ComputeEmulator(make_usage(make_fleet(9))) as west:
    ...     fleet = fetch_servers(cloud=[Target("lab", "east", east.compute_url, ADMIN_TOKEN),
    ...                                  Target("lab", "west", west.compute_url, ADMIN_TOKEN)])
    >>> list(fleet.columns[:3]), fleet.index.name, sorted(set(fleet["region"]))
    (['cloud', 'region', 'id'], 'key', ['east', 'west'])
    """
    result: pd.DataFrame = run_sync(
        fetch_servers_async(
            endpoint,
            token,
            cloud=cloud,
            region=region,
            all_tenants=all_tenants,
            page_size=page_size,
            timeout=timeout,
            retries=retries,
            max_rps=max_rps,
            verify=verify,
            max_pages=max_pages,
            errors=errors,
        )
    )
    return result


async def fetch_volumes_async(
    endpoint: str | None = None,
    token: TokenArg = None,
    *,
    cloud: Clouds = None,
    region: Regions = None,
    all_tenants: bool = True,
    page_size: int = DEFAULT_PAGE_SIZE,
    timeout: float | Timeout = DEFAULT_TIMEOUT,
    retries: int | RetryPolicy = DEFAULT_RETRY,
    max_rps: float | None = None,
    verify: bool | str = True,
    max_pages: int = DEFAULT_MAX_PAGES,
    errors: Literal["raise", "warn"] = "raise",
) -> pd.DataFrame:
    """:func:`fetch_volumes` in a running event loop.

    Examples
    --------
    >>> from imgframe.testing import ADMIN_TOKEN, make_fleet
    >>> from imgframe.testing.compute import ComputeEmulator, make_usage
    >>> usage = make_usage(make_fleet(20, seed=4), seed=4)
    >>> with ComputeEmulator(usage) as cinder:
    ...     df = asyncio.run(fetch_volumes_async(cinder.volume_url, ADMIN_TOKEN))
    >>> len(df) == len(usage.volumes)
    True
    """
    options = _options(timeout, retries, max_rps, verify, page_size, max_pages)
    return await _either(
        CINDER, options, endpoint=endpoint, token=token, cloud=cloud, region=region,
        all_tenants=all_tenants, errors=errors,
    )  # fmt: skip


def fetch_volumes(
    endpoint: str | None = None,
    token: TokenArg = None,
    *,
    cloud: Clouds = None,
    region: Regions = None,
    all_tenants: bool = True,
    page_size: int = DEFAULT_PAGE_SIZE,
    timeout: float | Timeout = DEFAULT_TIMEOUT,
    retries: int | RetryPolicy = DEFAULT_RETRY,
    max_rps: float | None = None,
    verify: bool | str = True,
    max_pages: int = DEFAULT_MAX_PAGES,
    errors: Literal["raise", "warn"] = "raise",
) -> pd.DataFrame:
    """Every Cinder volume the credentials can see: one row per volume, indexed by ``id``.

    Columns :data:`imgframe.schema.VOLUME_FIELDS`. ``endpoint`` is the ``volumev3``
    (or ``block-storage``) URL as the catalog gives it (e.g.
    ``https://cinder:8776/v3/<project_id>``); the other arguments as for
    :func:`fetch_servers`. A listing without the volumes' projects (a token that is not
    an admin) is marked incomplete (module docstring). The fleet forms (``cloud`` or
    ``region`` a list, ``errors``) as for :func:`fetch_servers` (a
    :class:`~imgframe.Target`'s ``endpoint`` is the volumev3 URL).

    Examples
    --------
    >>> from imgframe.testing import ADMIN_TOKEN, make_fleet
    >>> from imgframe.testing.compute import ComputeEmulator, make_usage
    >>> usage = make_usage(make_fleet(50, seed=3), seed=3)
    >>> with ComputeEmulator(usage) as cinder:
    ...     df = fetch_volumes(cinder.volume_url, ADMIN_TOKEN, page_size=5)
    >>> len(df) == len(usage.volumes), str(df["bootable"].dtype)
    (True, 'boolean')
    """
    result: pd.DataFrame = run_sync(
        fetch_volumes_async(
            endpoint,
            token,
            cloud=cloud,
            region=region,
            all_tenants=all_tenants,
            page_size=page_size,
            timeout=timeout,
            retries=retries,
            max_rps=max_rps,
            verify=verify,
            max_pages=max_pages,
            errors=errors,
        )
    )
    return result
