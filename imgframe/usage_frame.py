"""Who uses each image, as frames: Nova server and Cinder volume records -> typed frames,
and :func:`image_usage`, the per-image counts the usage audit rules read.

The columns are :data:`imgframe.schema.SERVER_FIELDS` and
:data:`imgframe.schema.VOLUME_FIELDS`; values go through the parsers of
:mod:`imgframe.parse` (the same grammar as the image columns: a value that cannot be
read is NA and one :class:`~imgframe.ImgframeParseWarning` names it; nothing a server
sends raises, every record is one row).

Completeness travels with the frame: :func:`imgframe.fetch_servers` and
:func:`imgframe.fetch_volumes` set ``df.attrs[COMPLETE_ATTR]`` (False when the listing
saw only the token's own project) and ``df.attrs[INCOMPLETE_ATTR]`` (why). A frame
without the marker (built by hand, read from a file that kept no attrs) is taken as
complete: whoever built it vouches for it. :func:`image_usage` carries the verdict on;
a frame is complete only when servers and volumes both are.

Examples
--------
>>> servers = servers_frame([{"id": "s1", "status": "SHUTOFF", "image": {"id": "img"},
...                           "tenant_id": "p2"}])
>>> images = pd.DataFrame({"owner": ["p1"]}, index=pd.Index(["img"], name="id"))
>>> image_usage(images, servers)[["servers", "servers_stopped", "used_by_other_projects"]]
     servers  servers_stopped  used_by_other_projects
id
img        1                1                    True
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from imgframe.errors import ConfigError
from imgframe.parse import VECTOR_PARSERS, ParseProblems, text_array
from imgframe.schema import SERVER_FIELDS, VOLUME_FIELDS, Field, Kind

__all__ = [
    "ACTIVE_STATUSES",
    "COMPLETE_ATTR",
    "INCOMPLETE_ATTR",
    "SHELVED_STATUSES",
    "STOPPED_STATUSES",
    "TARGETS_ATTR",
    "USAGE_COLUMNS",
    "RecordColumns",
    "concat_usage_frames",
    "has_duplicates",
    "image_usage",
    "is_complete",
    "is_fleet",
    "servers_frame",
    "target_prefix",
    "volumes_frame",
]

#: ``df.attrs`` key: False when the servers / volumes listing is known to miss some.
COMPLETE_ATTR = "imgframe_complete"
#: ``df.attrs`` key: why the listing is not complete (None when it is).
INCOMPLETE_ATTR = "imgframe_incomplete"
#: ``df.attrs`` key of a fleet listing: the targets it listed, as ``cloud/region``
#: (region empty when None), those with no server or volume included.
TARGETS_ATTR = "imgframe_targets"
#: Nova statuses of a server that runs.
ACTIVE_STATUSES = frozenset({"ACTIVE"})
#: Nova statuses of a server that exists but does not run (it can be started again, so
#: its image is still used).
STOPPED_STATUSES = frozenset(
    {"SHUTOFF", "SUSPENDED", "SHELVED", "SHELVED_OFFLOADED", "PAUSED", "STOPPED"}
)
#: The columns of :func:`image_usage`, in order.
USAGE_COLUMNS = (
    "servers",
    "servers_active",
    "servers_stopped",
    "volumes",
    "projects_using",
    "used_by_other_projects",
)
_BAD = object()  # an extracted value of the wrong JSON type (NA, and warned about)
_STRING = pd.StringDtype("pyarrow")


def _wire(value: Any) -> Any:
    """A JSON value as the text the parsers read (None stays None, _BAD stays _BAD)."""
    if value is None or value is _BAD or value.__class__ is str:
        return value
    if value is True or value is False:
        return "true" if value else "false"
    try:
        if isinstance(value, int | float):
            return str(value)
        return json.dumps(value, ensure_ascii=False)
    except (ValueError, TypeError, RecursionError):  # a 4,300-digit int, a deep nest
        return _BAD


def _extractor(source: str) -> Callable[[list[Any]], list[Any]]:
    """The getter of one :attr:`Field.source` path, over a page of JSON records: one value
    per record (``None`` where there is none, :data:`_BAD` where it has the wrong type)."""
    if "[]." in source:
        name, key = source.split("[].", 1)

        def each(record: Any) -> Any:
            items = record.get(name) if isinstance(record, dict) else None
            if items is None:
                return None
            if not isinstance(items, list):
                return _BAD
            values = [item.get(key) if isinstance(item, dict) else _BAD for item in items]
            if not all(isinstance(v, str) for v in values):
                return _BAD
            return json.dumps(list(dict.fromkeys(values)), ensure_ascii=False)

        return lambda records: [each(record) for record in records]
    first, *rest = source.split(".")

    def path(records: list[Any]) -> list[Any]:
        # One comprehension per step of the path over the whole page, not one call per
        # record and field (what the listing spent most of its time in). Not an object
        # where one is expected (Nova's "image": "" of a server booted from a volume):
        # there is no value, which is not an error.
        values = [r.get(first) if isinstance(r, dict) else None for r in records]
        for part in rest:
            values = [v.get(part) if isinstance(v, dict) else None for v in values]
        return values

    return path


def _text_values(values: list[Any]) -> tuple[list[Any], np.ndarray | None]:
    """(the values as the parsers' text, mask of values of the wrong JSON type or None)."""
    if all(v is None or v.__class__ is str for v in values):  # the common case: as they are
        return values, None
    raw = [_wire(v) for v in values]
    bad = np.fromiter((v is _BAD for v in raw), dtype=bool, count=len(raw))
    if not bad.any():
        return raw, None
    return [None if v is _BAD else v for v in raw], bad


# The text a frame keeps is allocated by the system allocator, apart from the parsers'
# short-lived arrays (pyarrow's default pool): interleaved in mimalloc's segments, the
# freed temporaries kept ~55 MiB more resident for a million servers (0.5x the frame).
_KEPT = pa.system_memory_pool()


def _kept_text(values: list[Any]) -> pa.Array:
    """:func:`imgframe.parse.text_array` of ``values`` (text or None), in ``_KEPT``."""
    try:
        arr = pa.array(values, type=pa.large_string(), memory_pool=_KEPT)
    except (pa.ArrowTypeError, pa.ArrowInvalid, UnicodeEncodeError):
        return text_array(values)
    if not pc.all(pc.string_is_ascii(arr)).as_py():
        return text_array(values)  # text_array repairs what needs it, as for the images
    return arr


#: Rows of one block: pages are gathered as text and parsed together every this many rows
#: (few vector-parser calls per million rows, and one copy of each block, never of the
#: whole column).
BLOCK_ROWS = 8_192


class RecordColumns:
    """Nova or Cinder records, page by page, into one typed frame (:meth:`frame`).

    Each page is reduced at once to one Arrow text array per column (its JSON objects
    can go); every :data:`BLOCK_ROWS` rows the pending text is parsed into typed blocks.
    The frame is built from the blocks without a second copy of its text: each text
    column is one chunked Arrow array of the blocks, categories are codes against one
    sorted dictionary, and only the fixed-width columns (timestamps, integers) are
    concatenated, one column at a time. So a listing of a million servers peaks near
    the frame's own size, whatever its page size. ``fields`` is
    :data:`~imgframe.schema.SERVER_FIELDS` or :data:`~imgframe.schema.VOLUME_FIELDS`.

    Examples
    --------
    >>> columns = RecordColumns(VOLUME_FIELDS)
    >>> columns.add([{"id": "v1", "bootable": "true", "size": 10, "attachments": []}])
    >>> columns.add([{"id": "v2", "bootable": "false"}])
    >>> len(columns), columns.frame()["bootable"].tolist()
    (2, [True, False])
    """

    def __init__(self, fields: Sequence[Field], *, block_rows: int = BLOCK_ROWS) -> None:
        self.fields = tuple(fields)
        self.block_rows = block_rows
        self._get = [_extractor(f.source or f.column) for f in self.fields]
        self._text: list[list[Any]] = [[] for _ in self.fields]  # the pending pages' text
        self._wrong: list[list[tuple[int, np.ndarray]]] = [[] for _ in self.fields]
        self._pending = 0
        self._blocks: list[list[Any]] = [[] for _ in self.fields]  # typed blocks
        self._problems = ParseProblems()
        self._not_objects = 0
        self.rows = 0

    def __len__(self) -> int:
        return self.rows

    def add(self, records: Iterable[Any]) -> None:
        """Take one page of records (any JSON values: one that is not an object is a row
        of NA, warned about)."""
        records = records if isinstance(records, list) else list(records)
        self._not_objects += sum(1 for r in records if not isinstance(r, dict))
        for n, get in enumerate(self._get):
            text, wrong = _text_values(get(records))
            self._text[n].extend(text)
            if wrong is not None:
                self._wrong[n].append((self._pending, wrong))
        self._pending += len(records)
        self.rows += len(records)
        if self._pending >= self.block_rows:
            self._seal()

    def _seal(self) -> None:
        """Parse the pending pages into one typed block per column."""
        if not self._pending:
            return
        ids: pa.Array | None = None
        for n, f in enumerate(self.fields):
            pending, self._text[n] = self._text[n], []
            text = _kept_text(pending)
            del pending
            typed, bad = VECTOR_PARSERS[f.kind](text)
            for start, wrong in self._wrong[n]:
                bad[start : start + len(wrong)] |= wrong
            self._wrong[n] = []
            if ids is None:  # the first field is the id
                ids = text
            if bad.any():
                examples = ids.take(np.flatnonzero(bad)[:3]).to_pylist()
                self._problems.add(f.column, examples, int(bad.sum()))
            if f.kind is Kind.TEXT:
                typed = text  # _text_column's array is this text as it is
            elif f.kind is Kind.CATEGORY:
                typed = (typed.codes, typed.categories)
            self._blocks[n].append(typed)
        self._pending = 0

    def ids(self) -> pa.ChunkedArray:
        """The ids (the first field) of every record added so far, as Arrow text.

        Examples
        --------
        >>> columns = RecordColumns(SERVER_FIELDS)
        >>> columns.add([{"id": "s1"}, {"id": "s2"}])
        >>> columns.ids().to_pylist()
        ['s1', 's2']
        """
        self._seal()
        return pa.chunked_array(self._blocks[0], type=pa.large_string())

    def frame(self) -> pd.DataFrame:
        """The typed frame of every record added, in order, indexed by ``id``; one
        :class:`~imgframe.ImgframeParseWarning` for everything that became NA."""
        self._seal()
        values: dict[str, Any] = {}
        for n, f in enumerate(self.fields):
            blocks, self._blocks[n] = self._blocks[n], []  # each block goes once used
            values[f.column] = _column(f.kind, blocks)
            del blocks
        if self._not_objects:
            self._problems.add("record (not a JSON object)", [None], self._not_objects)
            self._not_objects = 0
        self._problems.warn(stacklevel=3)
        self._problems = ParseProblems()
        self.rows = 0
        index = pd.Index(values.pop(self.fields[0].column), name="id")
        return pd.DataFrame(values, index=index, copy=False)


def has_duplicates(values: pa.ChunkedArray | pa.Array, window: int = BLOCK_ROWS) -> bool:
    """Whether some value (an id; NA counts as a value) comes twice, in flat memory.

    Arrow's hash kernels (``count_distinct``, ``unique``), its ``sort_indices`` and
    pandas' ``is_unique`` each held 40-110 MiB more than the data for a million ids (up
    to a whole server frame's bytes, at its peak). Here each value's 64-bit hash is
    taken a window at a time (8 bytes a row), the hashes are sorted, and only values
    whose hashes meet are compared, exactly.

    Examples
    --------
    >>> has_duplicates(pa.array(["b", "a", "c"])), has_duplicates(pa.array(["b", "a", "b"]))
    (False, True)
    """

    def windows() -> Iterator[list[Any]]:
        chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
        for chunk in chunks:
            for start in range(0, len(chunk), window):
                yield chunk.slice(start, window).to_pylist()

    hashes = np.empty(len(values), dtype=np.int64)
    at = 0
    for part in windows():
        hashes[at : at + len(part)] = np.fromiter(map(hash, part), np.int64, len(part))
        at += len(part)
    hashes.sort()
    met = hashes[1:] == hashes[:-1]
    if not met.any():
        return False
    suspects = set(hashes[1:][met].tolist())
    del hashes, met
    seen: set[Any] = set()
    for part in windows():
        for value in part:
            if hash(value) in suspects:
                if value in seen:
                    return True
                seen.add(value)
    return False


def _column(kind: Kind, blocks: list[Any]) -> Any:
    """One typed column of a frame from its typed blocks, without copying the text."""
    if kind is Kind.TEXT:
        chunks = pa.chunked_array(blocks, type=pa.large_string())
        return _STRING.__from_arrow__(chunks)
    if kind is Kind.CATEGORY:
        # Sorted, like a single astype("category"): the same records give the same dtype
        # whatever the pages and blocks were.
        every = pd.Index([], dtype=_STRING)
        every = every.append([cats for _, cats in blocks]).unique().sort_values()
        # A block's code c is every's code recoded[c]; -1 (NA) picks the -1 appended.
        codes = [np.append(every.get_indexer(cats), -1)[c] for c, cats in blocks]
        return pd.Categorical.from_codes(
            np.concatenate(codes) if codes else np.zeros(0, dtype=np.int8), categories=every
        )
    if not blocks:
        return VECTOR_PARSERS[kind](pa.array([], type=pa.large_string()))[0]
    if len(blocks) == 1:
        return blocks[0]
    return pd.concat(map(pd.Series, blocks), ignore_index=True).array


def servers_frame(records: Iterable[Any]) -> pd.DataFrame:
    """Nova ``servers/detail`` records -> the typed servers frame, one row per record.

    Columns :data:`~imgframe.schema.SERVER_FIELDS` (``id`` the index). A server booted
    from a volume (Nova's ``"image": ""``) has ``image_id`` NA.

    Examples
    --------
    >>> df = servers_frame([
    ...     {"id": "s1", "name": "web", "status": "ACTIVE", "image": {"id": "img-1"},
    ...      "tenant_id": "p1", "created": "2026-01-02T03:04:05Z"},
    ...     {"id": "s2", "status": "SHUTOFF", "image": "", "tenant_id": "p1"},
    ... ])
    >>> df["image_id"].tolist(), str(df["created_at"].iloc[0])
    (['img-1', <NA>], '2026-01-02 03:04:05+00:00')
    """
    columns = RecordColumns(SERVER_FIELDS)
    columns.add(records)
    return columns.frame()


def volumes_frame(records: Iterable[Any]) -> pd.DataFrame:
    """Cinder ``volumes/detail`` records -> the typed volumes frame, one row per record.

    Columns :data:`~imgframe.schema.VOLUME_FIELDS` (``id`` the index): ``image_id`` from
    ``volume_image_metadata``, ``bootable`` from Cinder's ``"true"``/``"false"`` text,
    ``attached_servers`` a JSON array of the attached server ids.

    Examples
    --------
    >>> df = volumes_frame([{"id": "v1", "status": "in-use", "bootable": "true",
    ...     "volume_image_metadata": {"image_id": "img-1"}, "size": 20,
    ...     "attachments": [{"server_id": "s2", "device": "/dev/vda"}],
    ...     "os-vol-tenant-attr:tenant_id": "p1"}])
    >>> row = df.loc["v1"]
    >>> row["image_id"], bool(row["bootable"]), row["attached_servers"], int(row["size_gb"])
    ('img-1', True, '["s2"]', 20)
    """
    columns = RecordColumns(VOLUME_FIELDS)
    columns.add(records)
    return columns.frame()


def is_complete(df: pd.DataFrame | None) -> tuple[bool, str | None]:
    """(complete, why not) of a servers, volumes or usage frame (see the module docstring).

    Examples
    --------
    >>> is_complete(servers_frame([]))
    (True, None)
    >>> is_complete(None)
    (False, 'not given')
    """
    if df is None:
        return False, "not given"
    complete = df.attrs.get(COMPLETE_ATTR, True) is not False
    return complete, None if complete else str(df.attrs.get(INCOMPLETE_ATTR) or "incomplete")


def target_prefix(cloud: str, region: str | None) -> str:
    """``cloud/region`` as fleet keys begin (``key = cloud/region/id``; region empty when
    None).

    Examples
    --------
    >>> target_prefix("lab", "east"), target_prefix("lab", None)
    ('lab/east', 'lab/')
    """
    return f"{cloud}/{region or ''}"


def is_fleet(df: pd.DataFrame) -> bool:
    """A fleet frame: indexed by ``key`` (``cloud/region/id``), with ``cloud`` and ``region``.

    Examples
    --------
    >>> is_fleet(servers_frame([]))
    False
    """
    return df.index.name == "key" and "cloud" in df.columns and "region" in df.columns


def concat_usage_frames(frames: Sequence[pd.DataFrame], fields: Sequence[Field]) -> pd.DataFrame:
    """Servers (or volumes) frames one after another, category columns kept categorical
    (with the sorted union of their categories, as one listing would have them).

    Examples
    --------
    >>> a = servers_frame([{"id": "s1", "status": "ACTIVE"}])
    >>> b = servers_frame([{"id": "s2", "status": "SHUTOFF"}])
    >>> both = concat_usage_frames([a, b], SERVER_FIELDS)
    >>> both["status"].cat.categories.tolist(), both.index.tolist()
    (['ACTIVE', 'SHUTOFF'], ['s1', 's2'])
    """
    if len(frames) <= 1:
        return frames[0] if frames else pd.DataFrame()
    names = [f.column for f in fields if f.kind is Kind.CATEGORY] + ["cloud", "region"]
    frames = list(frames)
    for name in names:
        if name not in frames[0].columns:
            continue
        every = pd.Index([], dtype=_STRING).append(
            [pd.Index(f[name].cat.categories, dtype=_STRING) for f in frames]
        )
        union = every.unique().sort_values()
        frames = [f.assign(**{name: f[name].cat.set_categories(union)}) for f in frames]
    return pd.concat(frames)


def _prefixes(df: pd.DataFrame) -> pd.Series:
    """Each row's ``cloud/region/`` (fleet keys' start), as text, positionally."""
    cloud = pd.Series(df["cloud"].astype(_STRING).array).fillna("")
    region = pd.Series(df["region"].astype(_STRING).array).fillna("")
    return cloud + "/" + region + "/"


def _keyed(prefixes: pd.Series | None, ids: Any) -> Any:
    """Ids as fleet keys (``cloud/region/id``, NA stays NA), or as they are (one target)."""
    text = pd.Series(pd.array(ids, dtype=_STRING))
    return (text if prefixes is None else prefixes + text).array


def _fleet_frames(images: pd.DataFrame, servers: pd.DataFrame, volumes: Any) -> bool:
    """Whether the frames are fleet frames (all) or single-target ones (all); a mix is a
    ConfigError: an image id of one region is not used by a server of another."""
    given = {"images": images, "servers": servers, "volumes": volumes}
    kinds = {name: is_fleet(df) for name, df in given.items() if df is not None}
    if len(set(kinds.values())) > 1:
        fleet = ", ".join(name for name, yes in kinds.items() if yes)
        single = ", ".join(name for name, yes in kinds.items() if not yes)
        raise ConfigError(
            f"image_usage: {fleet} from a fleet (cloud, region, key) but {single} from one "
            "target: list them the same way (fetch_servers(cloud=[...]) for a fleet)"
        )
    return any(kinds.values())


def _unlisted(images: pd.DataFrame, listing: pd.DataFrame) -> list[str]:
    """The images' targets (``cloud/region``) a fleet listing did not list."""
    wanted = set(_prefixes(images).str[:-1].unique().tolist())
    listed = listing.attrs.get(TARGETS_ATTR)
    seen = set(listed) if listed is not None else set(_prefixes(listing).str[:-1].unique())
    return sorted(wanted - seen)


def _image_keys(images: pd.DataFrame) -> pd.Index:
    return pd.Index(images.index.astype(_STRING), name=images.index.name)


def image_usage(
    images: pd.DataFrame, servers: pd.DataFrame, volumes: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Per image: the servers and volumes that use it, and by how many projects.

    ``images`` is an images frame (its index and ``owner``), ``servers`` and ``volumes``
    the frames of :func:`imgframe.fetch_servers` / :func:`imgframe.fetch_volumes` of the
    same cloud and region. A server uses an image when it was booted from it
    (``image_id``), is attached to a volume made from it (a server booted from a
    volume, whose own ``image_id`` is NA), or is shelved (:data:`SHELVED_STATUSES`) and
    the image is its shelve snapshot (``properties["instance_uuid"]`` names it).
    Columns :data:`USAGE_COLUMNS`: ``servers`` (distinct, any status),
    ``servers_active`` (ACTIVE), ``servers_stopped`` (:data:`STOPPED_STATUSES`),
    ``volumes`` (made from it, any status),
    ``projects_using`` (distinct projects of those servers and volumes) and
    ``used_by_other_projects`` (one of them is not the image's owner; NA when the owner
    is unknown and someone uses it). Indexed like ``images``; one row per image. The
    result is complete (:func:`is_complete`) only when both listings are complete and
    ``volumes`` is given.

    Examples
    --------
    >>> images = pd.DataFrame({"owner": ["p1", "p1"]}, index=pd.Index(["a", "b"], name="id"))
    >>> servers = servers_frame([{"id": "s1", "status": "ACTIVE", "image": "", "tenant_id": "p1"}])
    >>> volumes = volumes_frame([{"id": "v1", "volume_image_metadata": {"image_id": "a"},
    ...     "attachments": [{"server_id": "s1"}], "os-vol-tenant-attr:tenant_id": "p1"}])
    >>> usage = image_usage(images, servers, volumes)
    >>> usage[["servers", "servers_active", "volumes", "projects_using"]]
       servers  servers_active  volumes  projects_using
    id
    a        1               1        1               1
    b        0               0        0               0
    >>> is_complete(usage)
    (True, None)
    """
    fleet = _fleet_frames(images, servers, volumes)
    keys = _image_keys(images)
    # In a fleet every id becomes its key (cloud/region/id): an image is used only by the
    # servers and volumes of its own cloud and region.
    server_prefix = _prefixes(servers) if fleet else None
    server_keys = servers.index.astype(_STRING)
    status = pd.Series(servers["status"].astype(_STRING).array, index=server_keys)
    server_project = pd.Series(servers["project_id"].astype(_STRING).array, index=server_keys)
    pairs = [pd.DataFrame({"image": _keyed(server_prefix, servers["image_id"]),
                           "server": server_keys})]  # fmt: skip
    volume_pairs = pd.DataFrame(
        {"image": pd.Series([], dtype=_STRING), "project": pd.Series([], dtype=_STRING)}
    )
    if volumes is not None:
        made = volumes[volumes["image_id"].notna()]
        volume_prefix = _prefixes(made) if fleet else None
        made_images = _keyed(volume_prefix, made["image_id"])
        volume_pairs = pd.DataFrame(
            {"image": made_images, "project": made["project_id"].astype(_STRING).array}
        )
        texts = made["attached_servers"].to_numpy(dtype=object, na_value=None)
        starts = [""] * len(made) if volume_prefix is None else volume_prefix.tolist()
        attached = [
            (image, start + server)
            for image, start, text in zip(made_images.astype(str), starts, texts, strict=True)
            if isinstance(text, str)
            for server in _server_ids(text)
        ]
        if attached:
            pairs.append(pd.DataFrame(attached, columns=["image", "server"]).astype(_STRING))
    shelved = _shelve_snapshots(images, keys, status, _prefixes(images) if fleet else None)
    if shelved is not None:
        pairs.append(shelved)
    uses = pd.concat(pairs, ignore_index=True).dropna(subset=["image"]).drop_duplicates()
    uses = uses[uses["image"].isin(keys)]
    uses["status"] = uses["server"].map(status).array
    uses["project"] = uses["server"].map(server_project).array
    uses["active"] = uses["status"].isin(ACTIVE_STATUSES).to_numpy(dtype=np.int64)
    uses["stopped"] = uses["status"].isin(STOPPED_STATUSES).to_numpy(dtype=np.int64)
    by_image = uses.groupby("image", sort=False)
    out = pd.DataFrame(index=keys)
    out["servers"] = by_image.size()
    out["servers_active"] = by_image["active"].sum()
    out["servers_stopped"] = by_image["stopped"].sum()
    volume_pairs = volume_pairs[volume_pairs["image"].isin(keys)]
    out["volumes"] = volume_pairs.groupby("image", sort=False).size()
    projects = pd.concat(
        [uses[["image", "project"]], volume_pairs[["image", "project"]]], ignore_index=True
    ).dropna()
    out["projects_using"] = projects.drop_duplicates().groupby("image", sort=False).size()
    out = out.fillna(0).astype("Int64")
    owner = pd.Series(images["owner"].astype(_STRING).array, index=keys)
    projects["owner"] = projects["image"].map(owner).array
    other = projects["project"].ne(projects["owner"]).groupby(projects["image"]).any()
    used = out["servers"].gt(0) | out["volumes"].gt(0)
    flag = pd.Series(other.reindex(keys).fillna(False).to_numpy(dtype=bool), index=keys)
    flag = flag.astype("boolean").mask(owner.isna() & used, pd.NA)
    out["used_by_other_projects"] = flag
    reasons = [
        f"{what}: {why}"
        for what, frame in (("servers", servers), ("volumes", volumes))
        for complete, why in [is_complete(frame)]
        if not complete
    ]
    if fleet:  # a target of the images that was not listed: its images are not known unused
        for what, frame in (("servers", servers), ("volumes", volumes)):
            missing = [] if frame is None else _unlisted(images, frame)
            if missing:
                reasons.append(f"{what}: {', '.join(missing)} not listed")
    out.attrs[COMPLETE_ATTR] = not reasons
    out.attrs[INCOMPLETE_ATTR] = "; ".join(reasons) or None
    return out


#: Nova statuses in which a server's disk lives only in a snapshot image (shelve): that
#: image names the server in its ``instance_uuid`` property and no server names it in
#: ``image``; deleting it makes the server impossible to unshelve.
SHELVED_STATUSES = frozenset({"SHELVED", "SHELVED_OFFLOADED"})


def _shelve_snapshots(
    images: pd.DataFrame, keys: pd.Index, status: pd.Series, prefixes: pd.Series | None
) -> Any:
    """(image, server) pairs of the snapshots that shelved servers need, or None; in a
    fleet (``prefixes``) the server is the image's cloud and region's."""
    if "properties" not in images.columns:
        return None
    on_shelf = set(status.index[status.isin(SHELVED_STATUSES).to_numpy(dtype=bool)])
    if not on_shelf:
        return None
    starts = [""] * len(images) if prefixes is None else prefixes.tolist()
    properties = images["properties"].to_numpy(dtype=object)
    pairs = [
        (image, start + props["instance_uuid"])
        for image, start, props in zip(keys, starts, properties, strict=True)
        if isinstance(props, dict)
        and isinstance(props.get("instance_uuid"), str)
        and start + props["instance_uuid"] in on_shelf
    ]
    return pd.DataFrame(pairs, columns=["image", "server"]).astype(_STRING) if pairs else None


def _server_ids(text: str) -> list[str]:
    try:
        ids = json.loads(text)
    except ValueError:
        return []
    return [i for i in ids if isinstance(i, str)] if isinstance(ids, list) else []
