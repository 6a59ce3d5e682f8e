"""One frame for many clouds and regions: :func:`fetch_fleet`.

Each cloud/region is a :class:`Target`: a label pair (``cloud``, ``region``), an image
endpoint and its credentials. Cloud names given as strings are read from ``clouds.yaml``
(one :class:`~imgframe.KeystoneToken` per region, each finding its own image endpoint in
the service catalog). All targets run at once in one event loop, each with its own
:class:`~imgframe.fetch.HeadFetcher` — so ``concurrency`` and ``max_rps`` are per endpoint,
as a cloud's rate limits are.

The result is the contract frame of :func:`imgframe.fetch_images` with two columns in
front, ``cloud`` and ``region`` (categories), then ``id`` as a column; the index is
``key`` = ``"{cloud}/{region}/{id}"``, unique per row even when one image id answers in
two regions (a Glance shared by both). Rows keep target order, then each target's own
order. Every audit works on it unchanged; :func:`imgframe.audit` adds the ``cloud`` and
``region`` of each finding.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import os
import warnings
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd

from imgframe import provenance
from imgframe.api import checkpoint_facts, fetch_target
from imgframe.auth import TokenArg
from imgframe.checkpoint import fleet_folder, target_folder
from imgframe.config import (
    DEFAULT_CONCURRENCY,
    DEFAULT_RETRY,
    DEFAULT_TIMEOUT,
    FetchOptions,
    RetryPolicy,
    Timeout,
)
from imgframe.errors import ConfigError, FleetWarning, ImgframeError
from imgframe.frame import Columns, build_frame, concat_frames, empty_frame
from imgframe.ids import normalize_ids
from imgframe.progress import PROGRESS_LABEL
from imgframe.runner import run_sync
from imgframe.schema import FLEET_INDEX, Kind

__all__ = [
    "FleetWarning",
    "Target",
    "expand_targets",
    "fetch_fleet",
    "fetch_fleet_async",
    "fleet_targets",
    "labelled",
    "relabel",
    "run_targets",
    "warn_failed_targets",
]


@dataclass(frozen=True, slots=True)
class Target:
    """One cloud/region to fetch from: labels, an image endpoint and credentials.

    ``endpoint`` None asks ``token`` for it (a :class:`~imgframe.KeystoneToken` reads its
    service catalog). ``token`` is anything :func:`imgframe.fetch_images` takes; it is
    never shown in the repr.

    Examples
    --------
    >>> Target("prod", "RegionOne", endpoint="https://glance.example.com", token="s3cr3t")
    Target(cloud='prod', region='RegionOne', endpoint='https://glance.example.com')
    """

    cloud: str
    region: str | None = None
    endpoint: str | None = None
    token: TokenArg = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.cloud, str) or not self.cloud:
            raise ConfigError(f"a target's cloud must be a non-empty name, got {self.cloud!r}")
        if self.region is not None and (not isinstance(self.region, str) or not self.region):
            raise ConfigError(f"a target's region must be a non-empty name or None: {self!r}")

    @property
    def label(self) -> str:
        """``cloud/region`` (or just ``cloud``), as messages name the target."""
        return self.cloud if self.region is None else f"{self.cloud}/{self.region}"


def fleet_targets(
    clouds: Iterable[str | Target], regions: Sequence[str] | None = None
) -> list[Target]:
    """The targets :func:`fetch_fleet` runs: one per cloud and region.

    A cloud name (``clouds.yaml``) becomes one target per region: each of ``regions``,
    or, when None, each region the cloud's configuration lists (``regions:`` or
    ``region_name``; none at all gives one target with region None). :class:`Target`
    objects are taken as they are. The same cloud/region twice is a ConfigError.

    Examples
    --------
    >>> fleet_targets([Target("a", endpoint="http://127.0.0.1:1"),
    ...                Target("b", "r1", endpoint="http://127.0.0.1:2")])
    [Target(cloud='a', region=None, endpoint='http://127.0.0.1:1'), Target(cloud='b', region='r1', endpoint='http://127.0.0.1:2')]
    """
    if isinstance(clouds, str | Target):
        clouds = [clouds]
    if regions is not None:
        if isinstance(regions, str):
            regions = [regions]
        if not regions or not all(isinstance(r, str) and r for r in regions):
            raise ConfigError(f"regions must be a list of region names or None, got {regions!r}")
    targets: list[Target] = []
    for cloud in clouds:
        if isinstance(cloud, Target):
            targets.append(cloud)
        elif isinstance(cloud, str) and cloud:
            targets.extend(_cloud_targets(cloud, regions))
        else:
            raise ConfigError(
                f"clouds must be clouds.yaml names or imgframe.Target objects, got {cloud!r}"
            )
    if not targets:
        raise ConfigError("no clouds given: pass clouds=['name', ...] or Target objects")
    _check_unique(targets)
    return targets


def _check_unique(targets: list[Target]) -> None:
    seen: set[tuple[str, str | None]] = set()
    for target in targets:
        pair = (target.cloud, target.region)
        if pair in seen:
            raise ConfigError(f"{target.label} is given twice")
        seen.add(pair)


def _cloud_targets(cloud: str, regions: Sequence[str] | None) -> list[Target]:
    from imgframe.auth import KeystoneToken, region_entries

    entries = region_entries(cloud)
    listed = [entry.get("name") or None for entry in entries]
    chosen: list[str | None] = list(regions) if regions is not None else listed or [None]
    first = KeystoneToken.from_cloud(cloud, region=chosen[0])
    # One login for all regions (a token is scoped to a project, not a region), unless
    # clouds.yaml gives a region settings of its own or pins the image endpoint.
    shared = not any(entry.get("values") for entry in entries) and first.endpoint_override is None
    targets = [Target(cloud, chosen[0], token=first)]
    for region in chosen[1:]:
        token = (
            first.for_region(region) if shared else KeystoneToken.from_cloud(cloud, region=region)
        )
        targets.append(Target(cloud, region, token=token))
    return targets


async def _catalog_targets(target: Target) -> list[Target]:
    """A Keystone target without a region: one target per region of its catalog."""
    from imgframe.auth import KeystoneToken

    token = target.token
    if (
        target.region is not None
        or target.endpoint is not None
        or not isinstance(token, KeystoneToken)
        or token.region is not None
        or token.endpoint_override is not None
    ):
        return [target]
    regions = await token.catalog_regions()
    if not regions:
        return [target]  # its endpoint() will say what the catalog lacks
    return [Target(target.cloud, r, token=token.for_region(r)) for r in regions]


async def expand_targets(
    targets: Sequence[Target], *, errors: Literal["raise", "warn"] = "raise"
) -> tuple[list[Target], list[tuple[Target, ImgframeError]]]:
    """The targets of :func:`fleet_targets` a fleet call runs, and those that failed.

    Keystone targets without a region become one per region of their catalog (a login
    first): what a cloud name without regions in clouds.yaml means. The logins of several
    clouds run at once, not one after another. A target whose login fails raises
    (``errors="raise"``, the message starting with its label) or is returned with its
    error (``errors="warn"``). What :func:`fetch_fleet` and the fleet forms of
    :func:`imgframe.fetch_servers` / :func:`imgframe.fetch_volumes` share.

    Examples
    --------
    >>> lab = Target("lab", "east", endpoint="http://127.0.0.1:1", token="t")
    >>> asyncio.run(expand_targets([lab]))
    ([Target(cloud='lab', region='east', endpoint='http://127.0.0.1:1')], [])
    """
    found = await asyncio.gather(*(_catalog_targets(t) for t in targets), return_exceptions=True)
    expanded: list[Target] = []
    failed: list[tuple[Target, ImgframeError]] = []
    for target, result in zip(targets, found, strict=True):
        if isinstance(result, ImgframeError):
            if errors == "raise":
                raise relabel(result, target) from None
            failed.append((target, relabel(result, target)))
        elif isinstance(result, BaseException):
            raise result
        else:
            expanded.extend(result)
    _check_unique(expanded)
    return expanded, failed


async def fetch_fleet_async(
    clouds: Iterable[str | Target],
    regions: Sequence[str] | None = None,
    *,
    ids: Iterable[Any] | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    timeout: float | Timeout = DEFAULT_TIMEOUT,
    retries: int | RetryPolicy = DEFAULT_RETRY,
    progress: bool | None = None,
    verify: bool | str = True,
    max_rps: float | None = None,
    adaptive: bool = True,
    api: Literal["v1", "v2", "auto"] = "v1",
    errors: Literal["raise", "warn"] = "raise",
    checkpoint: str | os.PathLike[str] | None = None,
    include_deleted: bool = False,
    verify_with_head: bool = False,
    members: bool = False,
) -> pd.DataFrame:
    """Async form of :func:`fetch_fleet` (same arguments, same frame).

    Examples
    --------
    >>> from imgframe.testing import GlanceEmulator, make_fleet, ADMIN_TOKEN
    >>> with GlanceEmulator(make_fleet(2, seed=3)) as emu:
    ...     lab = Target("lab", endpoint=emu.url, token=ADMIN_TOKEN)
    ...     df = asyncio.run(fetch_fleet_async([lab]))
    >>> df.index.tolist() == ["lab//" + i for i in df["id"]]
    True
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
    return await fleet_with_options(clouds, regions, options, ids=ids, errors=errors)


async def fleet_with_options(
    clouds: Iterable[str | Target],
    regions: Sequence[str] | None,
    options: FetchOptions,
    *,
    ids: Iterable[Any] | None = None,
    errors: Literal["raise", "warn"] = "raise",
) -> pd.DataFrame:
    """:func:`fetch_fleet_async` with its options made: what both forms run.
    ``options.checkpoint`` is the fleet's folder; each target gets its own inside it."""
    if errors not in ("raise", "warn"):
        raise ConfigError(f"errors must be 'raise' or 'warn', got {errors!r}")
    started = provenance.now_stamp()  # before the logins: the run starts here
    targets = fleet_targets(clouds, regions)
    requested = None if ids is None else normalize_ids(ids)
    manifest = root = None
    if options.checkpoint is not None:
        # The fleet's own manifest (ids, api, include_deleted) is checked before any
        # login; each target's folder then checks its endpoint.
        manifest = checkpoint_facts(requested, options, kind="fleet")
        root = fleet_folder(options.checkpoint, manifest)

    async def one(target: Target) -> pd.DataFrame:
        PROGRESS_LABEL.set(target.label)  # this task's own context: one label per bar
        own = options
        if root is not None:
            folder = target_folder(root, target.cloud, target.region)
            folder.parent.mkdir(exist_ok=True)
            own = dataclasses.replace(options, checkpoint=folder)
        try:
            return await fetch_target(
                requested,
                own,
                endpoint=target.endpoint,
                token=target.token,
                manifest=manifest,
                labels=(target.cloud, target.region),
                started=started,
            )
        except ImgframeError as exc:
            raise relabel(exc, target) from None

    expanded, refused = await expand_targets(targets, errors=errors)
    outcomes = await run_targets(expanded, refused, one, errors)

    frames: list[pd.DataFrame] = []
    failures: list[str] = []
    asked_targets: list[dict[str, Any]] = []
    for target, result in outcomes:
        facts: dict[str, Any] = {"cloud": target.cloud, "region": target.region}
        if isinstance(result, ImgframeError):
            failures.append(str(result))
            # Whether it failed, not why: the message is for the person watching.
            facts |= {"endpoint": target.endpoint, "failed": True}
            if requested is not None:
                # Nothing lost: each requested id gets a row saying why it was not read.
                result = _not_fetched(requested, f"not fetched: {result}")
                facts["rows"] = len(result)
        elif isinstance(result, BaseException):
            raise result
        else:
            own = result.attrs.get(provenance.ATTR, {})
            asked = own.get("asked", {})
            facts |= {
                "endpoint": asked.get("endpoint"),
                "api_used": asked.get("api_used"),
                "rows": len(result),
                "complete": own.get("complete"),
                "failed": False,
            }
            if "resumed" in own:
                facts["checkpoint_rows"] = own["resumed"].get("checkpoint_rows", 0)
        asked_targets.append(facts)
        if isinstance(result, pd.DataFrame):
            frames.append(labelled(result, target))
    frame = _combine(frames)
    asked_fleet = {
        "targets": asked_targets,
        "api": options.api,
        "mode": "ids" if requested is not None else "listing",
        "include_deleted": options.include_deleted,
        "verify_with_head": options.verify_with_head,
    }
    complete = provenance.counts(frame)["unread"] == 0 and not failures
    resumed = sum(t.get("checkpoint_rows", 0) for t in asked_targets)
    more: dict[str, Any] = {"resumed": {"checkpoint_rows": resumed}} if resumed else {}
    provenance.attach(
        frame,
        provenance.build(frame, fetched_at=started, asked=asked_fleet, complete=complete, **more),
    )
    warn_failed_targets(frame, failures, len(outcomes), stacklevel=2)
    return frame


async def run_targets(
    targets: list[Target],
    refused: Iterable[tuple[Target, BaseException]],
    one: Callable[[Target], Coroutine[Any, Any, pd.DataFrame]],
    errors: str,
) -> list[tuple[Target, pd.DataFrame | BaseException]]:
    """Run ``one(target)`` for every target at once: ``(target, frame or exception)``
    each, the ``refused`` ones (targets that could not even be resolved) first. With
    ``errors="raise"`` the first target that fails cancels the others and its exception
    is raised (one error, not a group); otherwise each failure is its target's outcome.

    Examples
    --------
    >>> async def one(target):
    ...     return pd.DataFrame({"n": [1]})
    >>> [t.cloud for t, _ in asyncio.run(run_targets([Target("a")], [], one, "warn"))]
    ['a']
    """
    outcomes: list[tuple[Target, pd.DataFrame | BaseException]] = list(refused)
    if errors == "raise":
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(target)) for target in targets]
        except* Exception as failed:
            raise failed.exceptions[0] from None
        outcomes += [(t, task.result()) for t, task in zip(targets, tasks, strict=True)]
    else:
        results = await asyncio.gather(*(one(t) for t in targets), return_exceptions=True)
        outcomes += list(zip(targets, results, strict=True))
    return outcomes


def warn_failed_targets(
    frame: pd.DataFrame, failures: list[str], targets: int, *, stacklevel: int
) -> None:
    """Under ``errors="warn"``: the targets that failed, in ``frame.attrs["failed_targets"]``
    and one :class:`~imgframe.FleetWarning` (nothing when none failed).

    Examples
    --------
    >>> frame = pd.DataFrame()
    >>> warn_failed_targets(frame, [], 2, stacklevel=2)
    >>> "failed_targets" in frame.attrs
    False
    """
    if failures:
        frame.attrs["failed_targets"] = failures
        warnings.warn(
            f"{len(failures)} of {targets} targets failed: " + "; ".join(failures),
            FleetWarning,
            stacklevel=stacklevel + 1,
        )


def fetch_fleet(
    clouds: Iterable[str | Target],
    regions: Sequence[str] | None = None,
    *,
    ids: Iterable[Any] | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    timeout: float | Timeout = DEFAULT_TIMEOUT,
    retries: int | RetryPolicy = DEFAULT_RETRY,
    progress: bool | None = None,
    verify: bool | str = True,
    max_rps: float | None = None,
    adaptive: bool = True,
    api: Literal["v1", "v2", "auto"] = "v1",
    errors: Literal["raise", "warn"] = "raise",
    checkpoint: str | os.PathLike[str] | None = None,
    include_deleted: bool = False,
    verify_with_head: bool = False,
    members: bool = False,
) -> pd.DataFrame:
    """Fetch several clouds and regions at once into one frame with ``cloud`` and ``region``.

    ``clouds`` are ``clouds.yaml`` names (each expanded into ``regions``, or the regions
    its configuration lists, or, when it lists none, every region with an ``image``
    endpoint in its service catalog; the regions of one cloud share one Keystone login)
    and/or :class:`Target` objects for endpoints configured by hand (a static token,
    Huawei AK/SK...). ``ids`` None lists every image each target can
    see (:func:`imgframe.list_image_ids`); a list of ids is asked of every target (which
    regions hold these images?). ``concurrency`` and ``max_rps`` apply to each endpoint;
    the other options are :func:`imgframe.fetch_images`'s.

    ``errors="raise"`` (default): the first target that cannot be fetched as a whole (a
    login refused, no v1 API, the listing failing) cancels the others and raises, its
    message starting with ``cloud/region``. ``errors="warn"``: the other targets are
    returned, a :class:`FleetWarning` names the failures (also in
    ``frame.attrs["failed_targets"]``), and with explicit ``ids`` each id of a failed
    target still gets its row, ``error`` saying why.

    The frame: ``cloud``, ``region``, ``id``, then the contract columns, indexed by
    ``key`` = ``"{cloud}/{region}/{id}"`` (unique; region empty when None).

    ``checkpoint`` is a folder holding one checkpoint per target (see
    :func:`imgframe.fetch_images`), in ``cloud=<cloud>/region=<region>`` subfolders:
    the same call again fetches only what each target still lacks, and
    ``pyarrow.dataset.dataset(folder, partitioning="hive")`` reads every stored row with
    its cloud and region.
    Interrupting stops every target's sending and writes each one's rows.
    ``include_deleted`` applies to each target's listing (``ids=None``), and so does
    ``verify_with_head`` (one HEAD per listed id instead of rows from the listing).
    ``df.attrs["imgframe"]`` is the run's provenance (:mod:`imgframe.provenance`): its
    ``asked["targets"]`` lists each target (cloud, region, endpoint, rows, complete,
    failed), and ``complete`` is False when a target failed.
    ``members`` reads each target's image members (see :func:`imgframe.fetch_images`).

    Examples
    --------
    >>> from imgframe.testing import GlanceEmulator, make_fleet, ADMIN_TOKEN
    >>> east, west = make_fleet(3, seed=2), make_fleet(2, seed=3)
    >>> with GlanceEmulator(east) as e, GlanceEmulator(west) as w:
    ...     df = fetch_fleet([Target("lab", "east", endpoint=e.url, token=ADMIN_TOKEN),
    ...                       Target("lab", "west", endpoint=w.url, token=ADMIN_TOKEN)])
    >>> df.groupby("region", observed=True).size().to_dict(), df.index.is_unique
    ({'east': 3, 'west': 2}, True)
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
    return run_sync(fleet_with_options(clouds, regions, options, ids=ids, errors=errors))


def relabel(exc: ImgframeError, target: Target) -> ImgframeError:
    """The same error (type and attributes kept), its message prefixed with the target.

    Examples
    --------
    >>> relabel(ConfigError("no endpoint"), Target("lab", "east"))
    ConfigError('lab/east: no endpoint')
    """
    relabelled = copy.copy(exc)
    relabelled.args = (f"{target.label}: {exc}", *exc.args[1:])
    return relabelled


def _not_fetched(ids: list[str], error: str) -> pd.DataFrame:
    return build_frame(Columns.from_packed([None] * len(ids)), index=ids, error=[error] * len(ids))


def labelled(frame: pd.DataFrame, target: Target) -> pd.DataFrame:
    """``frame`` with ``cloud``, ``region`` and ``id`` columns in front, indexed by key
    (``cloud/region/id``, region empty when None): a fleet frame's rows of one target.

    Examples
    --------
    >>> one = pd.DataFrame({"name": ["web"]}, index=pd.Index(["s1"], name="id"))
    >>> labelled(one, Target("lab", "east")).reset_index().iloc[0].tolist()
    ['lab/east/s1', 'lab', 'east', 's1', 'web']
    """
    n = len(frame)
    ids = frame.index.astype("string[pyarrow]")
    region = "" if target.region is None else target.region
    key = pd.Index(target.cloud + "/" + region + "/" + ids, name=FLEET_INDEX)
    front = pd.DataFrame(
        {
            "cloud": _repeated(target.cloud, n),
            "region": _repeated(target.region, n),
            "id": ids.array,
        },
        index=key,
    )
    return pd.concat([front, frame.set_axis(key)], axis=1)


def _repeated(value: str | None, n: int) -> Any:
    # Via the string dtype, as the frame builder makes categories: concatenating frames
    # needs the same categories dtype even when a region is None everywhere.
    return pd.array([value] * n, dtype=Kind.TEXT.dtype).astype("category")


def _combine(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frame = concat_frames(frames) if frames else labelled(empty_frame(), Target("-"))
    if not frame.index.is_unique:  # only a cloud or region name containing "/" can do this
        dupes = frame.index[frame.index.duplicated()].unique()[:3].tolist()
        raise ConfigError(f"fleet keys are not unique (a '/' in a cloud or region name?): {dupes}")
    return frame
