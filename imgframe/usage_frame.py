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
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pandas.api.types import union_categoricals

from imgframe.parse import VECTOR_PARSERS, ParseProblems, text_array
from imgframe.schema import SERVER_FIELDS, VOLUME_FIELDS, Field, Kind

__all__ = [
    "ACTIVE_STATUSES",
    "COMPLETE_ATTR",
    "INCOMPLETE_ATTR",
    "SHELVED_STATUSES",
    "STOPPED_STATUSES",
    "USAGE_COLUMNS",
    "RecordColumns",
    "image_usage",
    "is_complete",
    "servers_frame",
    "volumes_frame",
]

#: ``df.attrs`` key: False when the servers / volumes listing is known to miss some.
COMPLETE_ATTR = "imgframe_complete"
#: ``df.attrs`` key: why the listing is not complete (None when it is).
INCOMPLETE_ATTR = "imgframe_incomplete"
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


def _extractor(source: str) -> Callable[[Any], Any]:
    """The getter of one :attr:`Field.source` path in a JSON record."""
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

        return each
    parts = source.split(".")

    def path(record: Any) -> Any:
        value = record
        for part in parts:
            # Not an object where one is expected (Nova's "image": "" of a server
            # booted from a volume): there is no value, which is not an error.
            if not isinstance(value, dict):
                return None
            value = value.get(part)
        return value

    return path


class RecordColumns:
    """Nova or Cinder records, page by page, into one typed frame (:meth:`frame`).

    Each page is typed at once (one typed array per column and page), so a listing of a
    million servers keeps neither its JSON pages nor their text: ids cost what they cost
    in the frame, timestamps 8 bytes, categories 1. ``fields`` is
    :data:`~imgframe.schema.SERVER_FIELDS` or :data:`~imgframe.schema.VOLUME_FIELDS`.

    Examples
    --------
    >>> columns = RecordColumns(VOLUME_FIELDS)
    >>> columns.add([{"id": "v1", "bootable": "true", "size": 10, "attachments": []}])
    >>> columns.add([{"id": "v2", "bootable": "false"}])
    >>> len(columns), columns.frame()["bootable"].tolist()
    (2, [True, False])
    """

    def __init__(self, fields: Sequence[Field]) -> None:
        self.fields = tuple(fields)
        self._get = [_extractor(f.source or f.column) for f in self.fields]
        self._parts: list[list[Any]] = [[] for _ in self.fields]
        self._problems = ParseProblems()
        self.rows = 0

    def __len__(self) -> int:
        return self.rows

    def add(self, records: Iterable[Any]) -> None:
        """Take one page of records (any JSON values: one that is not an object is a row
        of NA, warned about)."""
        records = list(records)
        not_objects = sum(1 for r in records if not isinstance(r, dict))
        ids: np.ndarray | None = None
        for n, (f, get) in enumerate(zip(self.fields, self._get, strict=True)):
            raw = [_wire(get(record)) for record in records]
            bad = np.fromiter((v is _BAD for v in raw), dtype=bool, count=len(raw))
            if bad.any():
                raw = [None if v is _BAD else v for v in raw]
            typed, unparsed = VECTOR_PARSERS[f.kind](text_array(raw))
            bad |= unparsed
            if ids is None:  # the first field is the id
                ids = np.asarray(pd.array(typed, dtype=_STRING).to_numpy(na_value=None))
            if bad.any():
                self._problems.add(f.column, list(ids[bad][:3]), int(bad.sum()))
            self._parts[n].append(typed)
        if not_objects:
            self._problems.add("record (not a JSON object)", [None], not_objects)
        self.rows += len(records)

    def frame(self) -> pd.DataFrame:
        """The typed frame of every record added, in order, indexed by ``id``; one
        :class:`~imgframe.ImgframeParseWarning` for everything that became NA."""
        values: dict[str, Any] = {}
        for n, f in enumerate(self.fields):
            parts = self._parts[n]
            if not parts:
                values[f.column] = VECTOR_PARSERS[f.kind](pa.array([], type=pa.large_string()))[0]
            elif f.kind is Kind.CATEGORY:  # pages have categories of their own: unite them
                values[f.column] = union_categoricals([pd.Categorical(p) for p in parts])
            else:
                values[f.column] = pd.concat(map(pd.Series, parts), ignore_index=True).array
            self._parts[n] = []  # each page's arrays go as soon as the column is built
        self._problems.warn(stacklevel=3)
        self._problems = ParseProblems()
        index = pd.Index(values.pop(self.fields[0].column), dtype=_STRING, name="id")
        return pd.DataFrame(values, index=index)


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
    keys = _image_keys(images)
    status = servers["status"].astype(_STRING)
    server_project = servers["project_id"].astype(_STRING)
    pairs = [pd.DataFrame({"image": servers["image_id"].astype(_STRING).array,
                           "server": servers.index.astype(_STRING)})]  # fmt: skip
    volume_pairs = pd.DataFrame(
        {"image": pd.Series([], dtype=_STRING), "project": pd.Series([], dtype=_STRING)}
    )
    if volumes is not None:
        made = volumes[volumes["image_id"].notna()]
        volume_pairs = pd.DataFrame(
            {
                "image": made["image_id"].astype(_STRING).array,
                "project": made["project_id"].astype(_STRING).array,
            }
        )
        texts = made["attached_servers"].to_numpy(dtype=object, na_value=None)
        attached = [
            (image, server)
            for image, text in zip(made["image_id"].astype(str), texts, strict=True)
            if isinstance(text, str)
            for server in _server_ids(text)
        ]
        if attached:
            pairs.append(pd.DataFrame(attached, columns=["image", "server"]).astype(_STRING))
    shelved = _shelve_snapshots(images, keys, status)
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
    out.attrs[COMPLETE_ATTR] = not reasons
    out.attrs[INCOMPLETE_ATTR] = "; ".join(reasons) or None
    return out


#: Nova statuses in which a server's disk lives only in a snapshot image (shelve): that
#: image names the server in its ``instance_uuid`` property and no server names it in
#: ``image``; deleting it makes the server impossible to unshelve.
SHELVED_STATUSES = frozenset({"SHELVED", "SHELVED_OFFLOADED"})


def _shelve_snapshots(images: pd.DataFrame, keys: pd.Index, status: pd.Series) -> Any:
    """(image, server) pairs of the snapshots that shelved servers need, or None."""
    if "properties" not in images.columns:
        return None
    on_shelf = set(status.index[status.isin(SHELVED_STATUSES).to_numpy(dtype=bool)])
    if not on_shelf:
        return None
    pairs = [
        (image, props.get("instance_uuid"))
        for image, props in zip(keys, images["properties"].to_numpy(dtype=object), strict=True)
        if isinstance(props, dict) and props.get("instance_uuid") in on_shelf
    ]
    return pd.DataFrame(pairs, columns=["image", "server"]).astype(_STRING) if pairs else None


def _server_ids(text: str) -> list[str]:
    try:
        ids = json.loads(text)
    except ValueError:
        return []
    return [i for i in ids if isinstance(i, str)] if isinstance(ids, list) else []
