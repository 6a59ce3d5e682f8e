"""The one declaration of every column imgframe produces.

Each :class:`Field` names its column, the Glance v1 response header it comes from, its
:class:`Kind` (which fixes both the pandas dtype and the parser) and a one-line meaning.
Parsing (scalar and vectorized), dtypes, the :class:`~imgframe.ImageRecord` dataclass,
export and the README's column table are all derived from :data:`FIELDS`; adding a
header is a one-line change here.

Examples
--------
>>> [f.column for f in FIELDS][:4]
['id', 'name', 'status', 'size']
>>> field("is_public").header
'x-image-meta-is_public'
>>> str(dtypes()["size"])
'Int64'
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd

__all__ = [
    "FETCH_COLUMNS",
    "FIELDS",
    "FLEET_FIELDS",
    "FLEET_INDEX",
    "HEADER_FIELDS",
    "MEMBERS_HEADER",
    "OPTIONAL_COLUMNS",
    "PROPERTY_PREFIX",
    "SERVER_FIELDS",
    "V2_PREFIX",
    "VOLUME_FIELDS",
    "Field",
    "Kind",
    "columns",
    "dtypes",
    "field",
    "fields_markdown",
    "required_columns",
    "schema_markdown",
    "with_optional_columns",
]

#: Lower-cased prefix of custom-property headers; the rest of the name is the property key.
PROPERTY_PREFIX = "x-image-meta-property-"
#: Lower-cased prefix of the pseudo-headers that carry Glance v2-only attributes: a v2
#: answer is turned into v1-style header pairs (``imgframe.parse.v2_header_pairs``) so
#: that both APIs go through the same parser. No real server sends these.
V2_PREFIX = "x-imgframe-v2-"
#: Lower-cased name of the pseudo-header that carries an image's members (the
#: ``members`` column): the fetcher appends it to an answer's decoded header pairs after
#: its members call (``imgframe.members``). A v1 server's ``X-Imgframe-*`` headers are
#: dropped (``imgframe.glance``), so no server can set the column that way.
MEMBERS_HEADER = "x-imgframe-members"


class Kind(enum.Enum):
    """What a column holds; decides its dtype, its Python type and its parser."""

    TEXT = "text"  # free text: pandas string dtype (pyarrow-backed)
    CATEGORY = "category"  # low-cardinality text: pandas category
    INT = "int"  # nullable Int64
    BOOL = "bool"  # nullable boolean; unknown spellings become NA, never False
    TIMESTAMP = "timestamp"  # datetime64[ns, UTC]; naive input means UTC
    PROPERTIES = "properties"  # dict[str, str] per row

    @property
    def dtype(self) -> Any:
        """The pandas dtype of a column of this kind."""
        return _DTYPES[self]

    @property
    def python_type(self) -> Any:
        """The type of this kind's value in an :class:`~imgframe.ImageRecord`."""
        return _PY_TYPES[self]


_DTYPES: dict[Kind, Any] = {
    Kind.TEXT: pd.StringDtype("pyarrow"),
    Kind.CATEGORY: "category",
    Kind.INT: pd.Int64Dtype(),
    Kind.BOOL: pd.BooleanDtype(),
    Kind.TIMESTAMP: pd.DatetimeTZDtype("ns", "UTC"),
    Kind.PROPERTIES: object,
}
_PY_TYPES: dict[Kind, Any] = {
    Kind.TEXT: str | None,
    Kind.CATEGORY: str | None,
    Kind.INT: int | None,
    Kind.BOOL: bool | None,
    Kind.TIMESTAMP: datetime | None,
    Kind.PROPERTIES: dict[str, str],
}


@dataclass(frozen=True, slots=True)
class Field:
    """One column: where it comes from, what it holds, what it means."""

    column: str
    header: str | None  # lower-cased response header; None for columns the fetcher fills
    kind: Kind
    description: str
    #: The Glance v2 image attribute this column is read from (``GET /v2/images/{id}``);
    #: None when v2 has no such attribute (see ``imgframe.parse.v2_header_pairs``).
    v2: str | None = None
    #: Server and volume columns (:data:`SERVER_FIELDS`, :data:`VOLUME_FIELDS`): where
    #: the value is in the Nova / Cinder JSON record, a dotted path (``image.id``);
    #: ``name[].key`` takes ``key`` of each object of the list ``name`` (a JSON array).
    source: str | None = None

    @property
    def dtype(self) -> Any:
        """The pandas dtype of this column."""
        return self.kind.dtype


def _h(name: str) -> str:
    return f"x-image-meta-{name}"


def _v1(column: str, kind: Kind, description: str) -> Field:
    """A column of both APIs: v1 header ``X-Image-Meta-<column>``, v2 attribute ``<column>``."""
    return Field(column, _h(column), kind, description, v2=column)


def _v2only(column: str, kind: Kind, description: str) -> Field:
    """A Glance v2-only column (NA for v1 answers), carried by a ``V2_PREFIX`` pseudo-header."""
    return Field(column, V2_PREFIX + column, kind, description, v2=column)


# Order is the contract's column order (docs/ARCHITECTURE.md); `id` becomes the index.
FIELDS: tuple[Field, ...] = (
    _v1("id", Kind.TEXT, "image UUID (the index)"),
    _v1("name", Kind.TEXT, "image name; NA when null; may be non-ASCII"),
    _v1("status", Kind.CATEGORY, "queued, saving, active, killed, deleted, ..."),
    _v1("size", Kind.INT, "bytes; NA until data is uploaded"),
    _v1("virtual_size", Kind.INT, "virtual disk size in bytes"),
    _v1("checksum", Kind.TEXT, "MD5 hex of the image data"),
    _v1("container_format", Kind.CATEGORY, "bare, ovf, ami, ..."),
    _v1("disk_format", Kind.CATEGORY, "qcow2, raw, vhd, vmdk, iso, ..."),
    _v1("owner", Kind.CATEGORY, "owning project (tenant) id"),
    # v2 has no is_public/deleted/deleted_at: v2_header_pairs derives the first two.
    Field("is_public", _h("is_public"), Kind.BOOL, "visible to every project (v2: public)"),
    _v1("protected", Kind.BOOL, "cannot be deleted"),
    Field("deleted", _h("deleted"), Kind.BOOL, "soft-deleted (admins only see these; v2: False)"),
    _v1("min_ram", Kind.INT, "minimum RAM to boot, MB"),
    _v1("min_disk", Kind.INT, "minimum disk to boot, GB"),
    _v1("created_at", Kind.TIMESTAMP, "creation time, UTC"),
    _v1("updated_at", Kind.TIMESTAMP, "last update time, UTC"),
    Field("deleted_at", _h("deleted_at"), Kind.TIMESTAMP, "deletion time, UTC"),
    Field(
        "properties",
        None,
        Kind.PROPERTIES,
        "custom properties; keys lower-cased from v1, as sent from v2",
    ),
    Field("http_status", None, Kind.INT, "HTTP status of the final attempt; NA if none"),
    # category, not string: a run has a handful of distinct messages (1 byte/row, not 8+).
    Field("error", None, Kind.CATEGORY, "why the image could not be read; NA when fine"),
    Field("request_id", "x-openstack-request-id", Kind.TEXT, "request id for support tickets"),
    _v2only("visibility", Kind.CATEGORY, "public, private, shared, community; NA from v1"),
    _v2only("os_hash_algo", Kind.CATEGORY, "multihash algorithm, e.g. sha512; NA from v1"),
    # category, not string: NA in every v1 row, where an all-NA string column still costs
    # 8 bytes/row of offsets (it kept v1 frames over the 250-byte budget); for v2 rows it
    # costs about what a string column does.
    _v2only("os_hash_value", Kind.CATEGORY, "multihash hex digest of the data; NA from v1"),
    # category: a fleet has few distinct tag sets (1 byte/row where text costs 8+).
    _v2only("tags", Kind.CATEGORY, 'tags as a JSON array, e.g. `["gold"]`; NA from v1'),
    # No v2 attribute: a v2 document's own "members" key stays a custom property.
    # category, not string: NA wherever members were not asked or cannot exist, and a
    # fleet shares images with a few projects, so lists repeat (benchmarks/bench_members.py).
    Field(
        "members",
        MEMBERS_HEADER,
        Kind.CATEGORY,
        'members as a JSON array sorted by member_id, e.g. `[{"member_id":"p2",'
        '"status":"accepted","can_share":null}]` (v1: can_share, v2: status); `[]` when '
        "none; NA when not asked (members=True) or the image cannot have members",
    ),
)

_BY_COLUMN = {f.column: f for f in FIELDS}

#: Fields read from a plain response header (everything but properties and fetch results).
HEADER_FIELDS: tuple[Field, ...] = tuple(f for f in FIELDS if f.header is not None)

#: Columns the fetcher fills, not the headers.
FETCH_COLUMNS: tuple[str, ...] = ("http_status", "error")

# The columns the audit rules (imgframe.audits, df.img) read, the index aside.
_RULE_COLUMNS = frozenset(
    ("name", "status", "size", "virtual_size", "checksum", "container_format", "disk_format",
     "owner", "is_public", "protected", "deleted", "min_ram", "min_disk", "created_at",
     "updated_at", "properties", "http_status", "error")
)  # fmt: skip
# Columns added to the contract after tables were first written (and v2-only ones): a
# table saved before they existed lacks them, and NA is what they would have held.
_LATER_COLUMNS = frozenset(
    ("virtual_size", "error", "request_id", "members",
     *(f.column for f in FIELDS if f.header and f.header.startswith(V2_PREFIX)))
)  # fmt: skip

#: Contract columns a table may lack: :func:`with_optional_columns` adds them as NA.
OPTIONAL_COLUMNS: tuple[str, ...] = tuple(
    f.column for f in FIELDS if f.column != "id" and f.column not in _RULE_COLUMNS - _LATER_COLUMNS
)

#: The columns :func:`imgframe.fetch_fleet` puts first, before ``id`` and the contract
#: columns. A fleet frame's index is :data:`FLEET_INDEX`, not ``id``: the same image id
#: can answer in two regions (a Glance shared by both), so ``id`` alone is not unique.
FLEET_FIELDS: tuple[Field, ...] = (
    Field("cloud", None, Kind.CATEGORY, "fleet frames: the cloud (clouds.yaml name) asked"),
    Field("region", None, Kind.CATEGORY, "fleet frames: the region asked; NA if none"),
)
#: Name of a fleet frame's index: ``"{cloud}/{region}/{id}"``, unique per row.
FLEET_INDEX = "key"


#: The columns of :func:`imgframe.fetch_servers`, one row per Nova server, ``id`` the
#: index; read from ``GET {compute}/servers/detail`` records.
SERVER_FIELDS: tuple[Field, ...] = (
    Field("id", None, Kind.TEXT, "server UUID (the index)", source="id"),
    Field("name", None, Kind.TEXT, "server name", source="name"),
    Field("status", None, Kind.CATEGORY, "ACTIVE, SHUTOFF, SHELVED_OFFLOADED, ERROR, ...",
          source="status"),
    # Nova sends "image": "" for a server booted from a volume: its image is only in the
    # volume's volume_image_metadata (VOLUME_FIELDS), so image_id is NA here.
    Field("image_id", None, Kind.TEXT, "image it was booted from; NA when booted from a volume",
          source="image.id"),
    Field("project_id", None, Kind.CATEGORY, "owning project (Nova tenant_id)", source="tenant_id"),
    Field("created_at", None, Kind.TIMESTAMP, "creation time, UTC", source="created"),
    Field("updated_at", None, Kind.TIMESTAMP, "last update time, UTC", source="updated"),
)  # fmt: skip

#: The columns of :func:`imgframe.fetch_volumes`, one row per Cinder volume, ``id`` the
#: index; read from ``GET {volumev3}/volumes/detail`` records.
VOLUME_FIELDS: tuple[Field, ...] = (
    Field("id", None, Kind.TEXT, "volume UUID (the index)", source="id"),
    Field("status", None, Kind.CATEGORY, "available, in-use, error, ...", source="status"),
    Field("image_id", None, Kind.TEXT, "image it was created from; NA when none",
          source="volume_image_metadata.image_id"),
    # Cinder sends the text "true"/"false"; the boolean grammar reads it (garbage is NA).
    Field("bootable", None, Kind.BOOL, "marked bootable", source="bootable"),
    # The ids, not a count: a server booted from this volume uses the volume's image,
    # which imgframe.image_usage finds only by the server id.
    Field("attached_servers", None, Kind.TEXT,
          'servers it is attached to, a JSON array of ids, e.g. `["s1"]`; `[]` when none',
          source="attachments[].server_id"),
    # Cinder shows it to admins only (policy volume_extension:volume_tenant_attribute).
    Field("project_id", None, Kind.CATEGORY, "owning project; NA when not shown to the token",
          source="os-vol-tenant-attr:tenant_id"),
    Field("size_gb", None, Kind.INT, "size in GiB", source="size"),
)  # fmt: skip


def field(column: str) -> Field:
    """Return the :class:`Field` of ``column``.

    Examples
    --------
    >>> field("owner").kind
    <Kind.CATEGORY: 'category'>
    """
    try:
        return _BY_COLUMN[column]
    except KeyError:
        raise KeyError(f"imgframe has no column {column!r}") from None


def columns() -> list[str]:
    """The frame's columns in contract order (without the ``id`` index).

    Examples
    --------
    >>> columns()[-8:-5]
    ['http_status', 'error', 'request_id']
    """
    return [f.column for f in FIELDS if f.column != "id"]


def dtypes() -> dict[str, Any]:
    """Column name -> pandas dtype, in contract order (without the ``id`` index).

    Examples
    --------
    >>> str(dtypes()["created_at"])
    'datetime64[ns, UTC]'
    """
    return {f.column: f.dtype for f in FIELDS if f.column != "id"}


def required_columns() -> list[str]:
    """The columns a table must have to be audited (``imgframe.audit``, ``df.img``), in
    contract order: those the rules read, except :data:`OPTIONAL_COLUMNS`.

    Examples
    --------
    >>> required_columns()[:4]
    ['name', 'status', 'size', 'checksum']
    >>> "virtual_size" in required_columns() or "tags" in required_columns()
    False
    """
    return [c for c in columns() if c not in OPTIONAL_COLUMNS]


def with_optional_columns(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with every missing :data:`OPTIONAL_COLUMNS` column added as NA of its schema
    dtype (a table written before that column existed); ``df`` itself when none is
    missing. The given frame is never changed.

    Examples
    --------
    >>> old = pd.DataFrame({"status": ["active"]}, index=pd.Index(["a"], name="id"))
    >>> full = with_optional_columns(old)
    >>> str(full["virtual_size"].dtype), bool(full["virtual_size"].isna().all()), list(old.columns)
    ('Int64', True, ['status'])
    """
    missing = [c for c in OPTIONAL_COLUMNS if c not in df.columns]
    if not missing:
        return df
    out = df.copy(deep=False)
    for column in missing:
        kind = _BY_COLUMN[column].kind
        values: list[Any] = [{} if kind is Kind.PROPERTIES else None for _ in range(len(df))]
        out[column] = pd.Series(values, index=df.index, dtype=kind.dtype)
    return out


def schema_markdown() -> str:
    """The column table as Markdown (the README's table is generated from this).

    Examples
    --------
    >>> schema_markdown().splitlines()[0]
    '| column | header | dtype | meaning |'
    """
    rows = ["| column | header | dtype | meaning |", "|---|---|---|---|"]
    for f in FIELDS:
        if f.kind is Kind.PROPERTIES:
            header = "`X-Image-Meta-Property-*`"
        elif f.header is None:
            header = "(fetcher)"
        elif f.header.startswith(V2_PREFIX):
            header = f"(v2 only: `{f.v2}`)"
        elif f.header == MEMBERS_HEADER:
            header = "(`GET .../images/{id}/members`)"
        else:
            header = f"`{_title(f.header)}`"
        dtype = "dict" if f.kind is Kind.PROPERTIES else str(f.dtype)
        rows.append(f"| `{f.column}` | {header} | {dtype} | {f.description} |")
    for f in FLEET_FIELDS:
        rows.append(f"| `{f.column}` | (fetch_fleet) | {f.dtype} | {f.description} |")
    return "\n".join(rows)


def fields_markdown(fields: tuple[Field, ...]) -> str:
    """The column table of :data:`SERVER_FIELDS` or :data:`VOLUME_FIELDS` as Markdown
    (the README's tables are generated from this).

    Examples
    --------
    >>> fields_markdown(SERVER_FIELDS).splitlines()[2]
    '| `id` | `id` | string | server UUID (the index) |'
    """
    rows = ["| column | from the record | dtype | meaning |", "|---|---|---|---|"]
    for f in fields:
        rows.append(f"| `{f.column}` | `{f.source}` | {f.dtype} | {f.description} |")
    return "\n".join(rows)


def _title(header: str) -> str:
    # Glance's own rendering: each dash-separated word capitalised, underscores kept.
    return "-".join(part.capitalize() for part in header.split("-"))
