"""Export the fleet frame to CSV (spreadsheet-safe), Parquet and JSON, and read it back.

Every writer takes the contract frame (:func:`imgframe.fetch_images`'s result) and keeps
the ``id`` index as a column. ``properties`` (a dict per row) is written as a JSON object
(CSV, JSON) or as a Parquet ``map<string, string>``. Timestamps are ISO 8601 in UTC with
a ``Z`` (microseconds always, nanoseconds only when there are some).

Each reader turns the file back into exactly the frame that was written: the ``id``
index, the same columns in the same order, each contract column with its dtype from
:mod:`imgframe.schema` (the conversion per :class:`~imgframe.schema.Kind` is one table,
:data:`_AS_KIND`, shared by all three formats), NA where there was NA. Two things a file
cannot carry are documented where they matter: a CSV written with ``safe=False`` cannot
tell ``""`` from NA, and CSV/JSON keep only the categories that occur (Parquet keeps them
all) — see :func:`read_csv`. Columns that are not in the schema (a user's own) come back
as the format gives them: text from CSV, Python objects from JSON, their Parquet type.
A frame without ids (an unnamed 0, 1, 2 ... index, e.g. findings) is written without it.

Examples
--------
>>> import tempfile, imgframe
>>> df = imgframe.frame_from_headers([
...     {"X-Image-Meta-Id": "a", "X-Image-Meta-Name": "=1+1", "X-Image-Meta-Size": "10"},
...     {"X-Image-Meta-Id": "b", "X-Image-Meta-Name": "", "X-Image-Meta-Property-Os": ""},
... ])
>>> folder = tempfile.mkdtemp()
>>> for suffix in (".csv", ".parquet", ".json"):
...     pd.testing.assert_frame_equal(read(write(df, folder + "/images" + suffix)), df)
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote, unquote

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from imgframe import provenance
from imgframe.atomic import TEMP_SUFFIX, atomic_path
from imgframe.errors import ConfigError, InvalidInputError
from imgframe.report_html import report  # the HTML export lives in its own module
from imgframe.schema import FIELDS, FLEET_FIELDS, FLEET_INDEX, Kind

__all__ = [
    "FORMATS",
    "READERS",
    "read",
    "read_csv",
    "read_json",
    "read_parquet",
    "report",
    "to_csv",
    "to_json",
    "to_parquet",
    "write",
]

# A cell starting with one of these is run as a formula by Excel/LibreOffice/Sheets;
# image names are chosen by tenants, so they must not reach an auditor's sheet as formulas.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

_KINDS = {f.column: f.kind for f in (*FIELDS, *FLEET_FIELDS)} | {FLEET_INDEX: Kind.TEXT}
_TEXT = Kind.TEXT.dtype
_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%f"

# Kinds whose cells are written as text that a tenant may choose (or JSON that could hold
# it): these, and any column imgframe does not know that is not numeric, are neutralised.
_NEUTRALISED_KINDS = (Kind.TEXT, Kind.CATEGORY, Kind.PROPERTIES)


# ----------------------------------------------------------------------------- writers
def _iso(stamps: pd.Series) -> pd.Series:
    """ISO 8601 text with ``Z``: microseconds always (as before), the three nanosecond
    digits only when a value has them (``strftime`` stops at ``%f``; dropping them would
    break the round-trip of a ``datetime64[ns]`` column)."""
    text = stamps.dt.strftime(_TIMESTAMP_FORMAT).astype(_TEXT)
    nanos = stamps.dt.nanosecond.astype("Int64")
    has_nanos = (nanos != 0).fillna(False)
    if has_nanos.any():
        text = text.mask(has_nanos, text + nanos.astype(_TEXT).str.zfill(3))
    return text + "Z"


def _index_holds_data(df: pd.DataFrame) -> bool:
    """False for an unnamed default index (a findings table's 0, 1, 2, ...): not written."""
    return not (isinstance(df.index, pd.RangeIndex) and df.index.name is None)


def _flat(df: pd.DataFrame, *, properties_as_json: bool = True) -> pd.DataFrame:
    """Frame with the index as a column, properties as JSON and timestamps as ISO text."""
    out = df.reset_index(drop=not _index_holds_data(df))
    if "properties" in out and properties_as_json:
        out["properties"] = [
            json.dumps(p, ensure_ascii=False, sort_keys=True) if isinstance(p, dict) else None
            for p in out["properties"]
        ]
    for f in FIELDS:
        if f.kind is Kind.TIMESTAMP and f.column in out:
            out[f.column] = _iso(out[f.column])
    return out


def _is_neutralised(column: str, dtype: Any) -> bool:
    """Whether the CSV writer neutralises ``column`` (and the reader undoes it)."""
    kind = _KINDS.get(column)
    if kind is not None:
        return kind in _NEUTRALISED_KINDS
    # Columns imgframe does not know (a findings frame's ``detail``, a user's own column)
    # may quote tenant text too; only numbers, booleans and dates cannot start a formula.
    return not (
        pd.api.types.is_numeric_dtype(dtype)
        or pd.api.types.is_bool_dtype(dtype)
        or pd.api.types.is_datetime64_any_dtype(dtype)
    )


def neutralise_formulas(values: pd.Series) -> pd.Series:
    """Prefix ``'`` to text that a spreadsheet would run as a formula, to text that
    already starts with ``'`` (so reading back can strip exactly one) and to the empty
    string (CSV writes NA as an empty cell; ``'`` keeps ``""`` apart from NA).

    Examples
    --------
    >>> neutralise_formulas(pd.Series(["=HYPERLINK(1)", "ok", "'quoted", "", None])).tolist()
    ["'=HYPERLINK(1)", 'ok', "''quoted", "'", <NA>]
    """
    text = values.astype("string")
    starts = text.str.startswith((*FORMULA_STARTS, "'")).fillna(False).to_numpy(bool)
    risky = starts | (text == "").fillna(False).to_numpy(bool)
    return text.mask(risky, "'" + text)


def restore_formulas(values: pd.Series) -> pd.Series:
    """Undo :func:`neutralise_formulas`: strip exactly one leading ``'``.

    Examples
    --------
    >>> restore_formulas(pd.Series(["'=HYPERLINK(1)", "ok", "''quoted", "'", None])).tolist()
    ['=HYPERLINK(1)', 'ok', "'quoted", '', <NA>]
    """
    text = values.astype(_TEXT)
    quoted = text.str.startswith("'").fillna(False)
    return text.mask(quoted, text.str.slice(1))


def to_csv(
    df: pd.DataFrame, path: str | os.PathLike[str] | TextIO, *, safe: bool = True
) -> Path | None:
    """Write ``df`` as UTF-8 CSV; with ``safe`` (default) no cell can run as a formula.

    Safe means: every text cell that starts with ``=``, ``+``, ``-``, ``@``, tab, CR or
    ``'`` — and every empty string — gets one leading ``'``; :func:`read_csv` strips it.
    Numbers, booleans and timestamps are never touched (``-5`` stays a number); columns
    that are not in the schema get the same care unless they are numbers, booleans or
    dates. Rows end with CRLF (RFC 4180), so a CR inside a name is always quoted.
    ``path`` may also be an open text stream (e.g. ``sys.stdout``); then None is returned.
    The frame's provenance goes to the sidecar ``path + ".meta.json"``
    (:mod:`imgframe.provenance`; none for a stream, and an old sidecar is removed when
    the frame has none).

    Examples
    --------
    >>> import tempfile, imgframe
    >>> df = imgframe.frame_from_headers([{"X-Image-Meta-Id": "a", "X-Image-Meta-Name": "=1+1"}])
    >>> p = to_csv(df, tempfile.mkdtemp() + "/images.csv")
    >>> p.read_text().splitlines()[1].split(",")[:2]
    ['a', "'=1+1"]
    """
    out = _flat(df)
    if safe:
        for column in out.columns:
            if _is_neutralised(column, df.dtypes.get(column, out[column].dtype)):
                out[column] = neutralise_formulas(out[column])
    # CRLF rows, as RFC 4180 has them: Python's csv writer quotes a cell only for the
    # characters of the line terminator, so with "\n" alone a name holding a bare CR
    # went out unquoted and split its row in two for every reader.
    if hasattr(path, "write"):
        out.to_csv(path, index=False, lineterminator="\r\n")
        return None
    path = Path(path)
    described = provenance.usable(df, str(path))
    with atomic_path(path) as tmp:
        out.to_csv(tmp, index=False, encoding="utf-8", lineterminator="\r\n")
        provenance.write_sidecar(described, tmp, path)
    return path


def to_json(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write ``df`` as a JSON array of records, one per line (properties as objects, NA
    as null); its provenance goes to the sidecar ``path + ".meta.json"`` (the table
    stays a plain array of records; :mod:`imgframe.provenance`).

    Examples
    --------
    >>> import tempfile, imgframe
    >>> df = imgframe.frame_from_headers([{"X-Image-Meta-Id": "a", "X-Image-Meta-Size": "1"}])
    >>> import json; json.loads(to_json(df, tempfile.mkdtemp() + "/i.json").read_text())[0]["size"]
    1
    """
    out = _flat(df, properties_as_json=False)  # dicts stay dicts: JSON objects
    path = Path(path)
    records = json.loads(out.to_json(orient="records", force_ascii=False))
    # One record per line: readable and diffable like indent=1, but json.dumps with an
    # indent runs the pure-Python encoder (~5x slower: 14 s for 200k rows).
    lines = ",\n".join(json.dumps(record, ensure_ascii=False) for record in records)
    described = provenance.usable(df, str(path))
    with atomic_path(path) as tmp:
        tmp.write_text(f"[\n{lines}\n]\n" if records else "[]\n", encoding="utf-8")
        provenance.write_sidecar(described, tmp, path)
    return path


def arrow_table(df: pd.DataFrame) -> pa.Table:
    """``df`` as the Arrow table :func:`to_parquet` writes: pandas' metadata (dtypes,
    index), ``properties`` as ``map<string, string>``, and the frame's provenance under
    :data:`imgframe.provenance.PARQUET_KEY` when it has some.

    Examples
    --------
    >>> import imgframe
    >>> df = imgframe.frame_from_headers([{"X-Image-Meta-Id": "a"}])
    >>> arrow_table(df).schema.field("properties").type
    MapType(map<string, string>)
    """
    table = pa.Table.from_pandas(
        df.drop(columns=["properties"], errors="ignore"), preserve_index=_index_holds_data(df)
    )
    if "properties" in df:
        props = pa.array(
            [list(p.items()) if isinstance(p, dict) else None for p in df["properties"]],
            type=pa.map_(pa.string(), pa.string()),
        )
        position = list(df.columns).index("properties")
        table = table.add_column(position, "properties", props)
    described = provenance.usable(df, "the Parquet file")
    if described is not None:
        metadata = dict(table.schema.metadata or {})
        metadata[provenance.PARQUET_KEY] = provenance.dumps(described).encode("utf-8")
        table = table.replace_schema_metadata(metadata)
    return table


def to_parquet(
    df: pd.DataFrame,
    path: str | os.PathLike[str],
    *,
    partition_cols: Sequence[str] | None = None,
) -> Path:
    """Write ``df`` as Parquet (pyarrow); ``properties`` becomes ``map<string, string>``
    and the frame's provenance goes into the file's key-value metadata.

    With ``partition_cols`` ``path`` is a folder holding a Hive-partitioned dataset,
    ``col=value/.../part-0.parquet`` (values URL-quoted, NA as
    ``__HIVE_DEFAULT_PARTITION__``), which :func:`read_parquet` reads back into the same
    frame: every column with its dtype, the index, the categories (those of the
    partition columns are kept in each part's metadata), the provenance; the rows come
    back grouped by partition (sorted by the folder names), each group in its written
    order. The folder is written whole beside ``path`` and renamed into place: a reader
    sees the old dataset or the new one. An existing ``path`` is replaced only if it
    holds nothing but a dataset (``name=value`` folders, ``.parquet`` files).
    Partition columns are the frame's text, category, integer or boolean columns.

    Examples
    --------
    >>> import tempfile, imgframe, pyarrow.parquet as pq
    >>> df = imgframe.frame_from_headers([{"X-Image-Meta-Id": "a", "X-Image-Meta-Size": "1"}])
    >>> pq.read_table(to_parquet(df, tempfile.mkdtemp() + "/i.parquet")).num_rows
    1
    >>> folder = to_parquet(df, tempfile.mkdtemp() + "/ds", partition_cols=["status"])
    >>> sorted(p.name for p in folder.iterdir())
    ['status=__HIVE_DEFAULT_PARTITION__']
    """
    path = Path(path)
    if partition_cols is not None:
        return _to_dataset(df, path, _partition_columns(df, partition_cols))
    table = arrow_table(df)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


#: A Hive partition folder of a missing value (pyarrow's and Spark's name).
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
#: Parquet metadata key of a dataset part: the partition columns, the frame's column
#: order and the categories of partition columns (the folders hold only used values).
PARTITIONING_KEY = b"imgframe.partitioning"
_PARTITION_KINDS = (Kind.TEXT, Kind.CATEGORY, Kind.INT, Kind.BOOL)


def _partition_columns(df: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    names = [columns] if isinstance(columns, str) else list(columns)
    if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise ConfigError(f"partition_cols must be distinct column names, got {columns!r}")
    for name in names:
        if name not in df.columns:
            raise ConfigError(f"cannot partition by {name!r}: the frame has no such column")
        kind = _KINDS.get(name)
        dtype = df[name].dtype
        fits = (
            kind in _PARTITION_KINDS
            if kind is not None
            else (
                isinstance(dtype, pd.CategoricalDtype)
                or pd.api.types.is_string_dtype(dtype)
                or pd.api.types.is_integer_dtype(dtype)
                or pd.api.types.is_bool_dtype(dtype)
            )
        )
        if not fits:
            raise ConfigError(
                f"cannot partition by {name!r} ({dtype}): use text, category, integer or "
                "boolean columns"
            )
    if len(names) == len(df.columns):
        raise ConfigError("partition_cols cannot be every column: the parts would hold none")
    return names


def _partition_text(values: pd.Series) -> list[str | None]:
    """Each value as its folder name would hold it (before quoting); None for NA."""
    if pd.api.types.is_bool_dtype(values.dtype):
        text = values.astype("boolean").map({True: "true", False: "false"}, na_action="ignore")
    else:
        text = values.astype(_TEXT)
    out = [None if pd.isna(v) else str(v) for v in text.tolist()]
    if "" in out:
        raise ConfigError(
            f"cannot partition by {values.name!r}: it holds an empty string, which a "
            "folder name cannot tell from a missing value"
        )
    return out


def partition_folder(pairs: Sequence[tuple[str, str | None]]) -> Path:
    """The Hive folder of one partition: ``name=value`` segments, values URL-quoted.

    Examples
    --------
    >>> partition_folder([("cloud", "prod/eu"), ("region", None)]).as_posix()
    'cloud=prod%2Feu/region=__HIVE_DEFAULT_PARTITION__'
    """
    return Path(
        *(
            f"{name}={HIVE_NULL if value is None else quote(value, safe='')}"
            for name, value in pairs
        )
    )


def write_part(table: pa.Table, file: Path, extra: dict[bytes, bytes] | None = None) -> None:
    """Write one Parquet file atomically (:func:`imgframe.atomic.atomic_path`), with
    ``extra`` key-value metadata added to the table's."""
    if extra:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
    with atomic_path(file) as tmp:
        pq.write_table(table, tmp)


def _to_dataset(df: pd.DataFrame, path: Path, columns: list[str]) -> Path:
    if path.exists() and not path.is_dir():
        raise ConfigError(f"cannot write the dataset {str(path)!r}: it is a file")
    if path.is_dir() and not _only_dataset(path):
        raise ConfigError(
            f"cannot write the dataset {str(path)!r}: the folder holds other files "
            "(only a folder of name=value parts is replaced)"
        )
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"cannot write {str(path)!r}: folder '{parent}' does not exist")
    table = arrow_table(df)
    values = [_partition_text(df[c]) for c in columns]
    layout = {
        "columns": columns,
        "order": [str(c) for c in df.columns],
        "categories": {
            c: [str(v) for v in df[c].cat.categories]
            for c in columns
            if isinstance(df[c].dtype, pd.CategoricalDtype)
        },
    }
    extra = {PARTITIONING_KEY: json.dumps(layout, ensure_ascii=False).encode("utf-8")}
    groups = _row_groups(values)
    kept = table.drop_columns(columns)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=parent))
    try:
        if not groups:  # no rows: one empty part keeps the schema
            write_part(table.slice(0, 0), staging / "part-0.parquet", extra)
        for key, rows in groups.items():
            folder = staging / partition_folder(list(zip(columns, key, strict=True)))
            folder.mkdir(parents=True)
            write_part(kept.take(pa.array(rows, pa.int64())), folder / "part-0.parquet", extra)
        _swap_in(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def _row_groups(values: list[list[str | None]]) -> dict[tuple[str | None, ...], Any]:
    """Row numbers per distinct tuple of partition values, in order of first appearance
    (one vectorized group-by instead of a Python step per row)."""
    if not values or not values[0]:
        return {}
    keys = pd.DataFrame({n: pd.array(v, dtype=object) for n, v in enumerate(values)})
    found = keys.groupby(list(keys.columns), sort=False, dropna=False).indices
    return {
        tuple(None if pd.isna(v) else v for v in (key if isinstance(key, tuple) else (key,))): rows
        for key, rows in found.items()
    }


def _only_dataset(folder: Path) -> bool:
    for entry in folder.iterdir():
        if entry.is_dir():
            if "=" not in entry.name or not _only_dataset(entry):
                return False
        elif not (entry.suffix == ".parquet" or entry.name.endswith(TEMP_SUFFIX)):
            return False
    return True


def _swap_in(staging: Path, path: Path) -> None:
    """Rename the finished ``staging`` folder to ``path``; an old ``path`` is renamed
    aside first and removed after (a folder cannot be renamed over a full one)."""
    if not path.exists():
        os.rename(staging, path)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", suffix=TEMP_SUFFIX, dir=path.parent))
    os.rename(path, old / path.name)
    os.rename(staging, path)
    shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- readers
def _as_text(values: pd.Series) -> Any:
    return values.astype(_TEXT).array


def _as_category(values: pd.Series) -> Any:
    if isinstance(values.dtype, pd.CategoricalDtype):
        # Parquet keeps the dictionary, unused categories included: keep them, as text.
        categories = pd.Index(values.cat.categories.astype(_TEXT))
        return pd.Categorical.from_codes(values.cat.codes, categories=categories)
    # Built the way the frame builder builds it: sorted categories of the values present.
    return values.astype(_TEXT).astype("category").array


def _as_timestamp(values: pd.Series) -> Any:
    stamps = pd.to_datetime(values, format="ISO8601", utc=True)
    return stamps.astype(Kind.TIMESTAMP.dtype).array


def _as_properties(values: pd.Series) -> Any:
    def one(value: Any) -> dict[str, str] | None:
        if isinstance(value, str):  # CSV: the JSON text
            return json.loads(value)
        if isinstance(value, dict):  # JSON: already an object
            return value
        if isinstance(value, list):  # Parquet map: (key, value) pairs
            return dict(value)
        return None  # NA stays NA (the contract frame has none, but a file may)

    out = pd.Series(index=values.index, dtype=object)
    out[:] = [one(v) for v in values.tolist()]
    return out.array


#: How a column read from any of the three files becomes its contract dtype. The input is
#: what the format yields: text (CSV, JSON for text and timestamps), Python or nullable
#: ints and booleans (all three), arrow-backed values (Parquet).
_AS_KIND: dict[Kind, Callable[[pd.Series], Any]] = {
    Kind.TEXT: _as_text,
    Kind.CATEGORY: _as_category,
    Kind.INT: lambda values: values.astype(Kind.INT.dtype).array,
    Kind.BOOL: lambda values: values.astype(Kind.BOOL.dtype).array,
    Kind.TIMESTAMP: _as_timestamp,
    Kind.PROPERTIES: _as_properties,
}

#: How the CSV reader parses a cell of each kind before :data:`_AS_KIND` (pandas' own
#: nullable parsers for ints and booleans, so no int passes through float; all else text).
_CSV_DTYPES: dict[Kind, Any] = {Kind.INT: Kind.INT.dtype, Kind.BOOL: Kind.BOOL.dtype}


def _unflat(flat: pd.DataFrame, source: Path) -> pd.DataFrame:
    """Undo :func:`_flat`: the ``id`` column (a fleet frame's ``key``) becomes the index,
    each known column gets its contract dtype; columns imgframe does not know are kept as
    the format gave them."""
    index_column = FLEET_INDEX if FLEET_INDEX in flat.columns else "id"
    data: dict[str, Any] = {}
    for column in flat.columns:
        kind = _KINDS.get(column)
        if kind is None or column == index_column:
            data[column] = flat[column].array
            continue
        try:
            data[column] = _AS_KIND[kind](flat[column])
        except (ValueError, TypeError) as exc:  # pandas' and json's parse errors, once
            raise InvalidInputError(
                f"cannot read {str(source)!r}: column {column!r} does not hold "
                f"{kind.value} values ({exc})"
            ) from None
    index = None
    if index_column in flat.columns:
        data.pop(index_column)
        index = pd.Index(_as_text(flat[index_column]), name=index_column)
    return pd.DataFrame(data, index=index if index is not None else flat.index)


def read_csv(path: str | os.PathLike[str] | TextIO, *, safe: bool = True) -> pd.DataFrame:
    """Read a CSV written by :func:`to_csv` back into the same typed frame.

    With ``safe`` (default, as :func:`to_csv`) one leading ``'`` is stripped from each
    text cell that has one, undoing the writer's neutralisation: ``'=1+1`` is ``=1+1``
    again, ``''x`` is ``'x``, ``'`` is ``""``; an empty cell is NA. Pass ``safe=False``
    for a file written with ``safe=False``.

    What cannot round-trip (the file has no place for it): with ``safe=False`` an empty
    string and NA are both an empty cell and both read as NA; categories that no row uses
    (a frame filtered after fetching keeps them) are not in the file — the read frame has
    the sorted categories of the values present, as :func:`imgframe.fetch_images` makes
    them (use Parquet to keep them). The provenance in the sidecar ``path +
    ".meta.json"``, if any, becomes ``df.attrs["imgframe"]`` (one warning, and none, if
    it cannot be believed).

    Examples
    --------
    >>> import io
    >>> text = "id,name,size,is_public\\na,'=1+1,10,True\\nb,',,\\nc,,-1,False\\n"
    >>> df = read_csv(io.StringIO(text))
    >>> df["name"].tolist(), df["size"].tolist(), df["is_public"].tolist()
    (['=1+1', '', <NA>], [10, <NA>, -1], [True, <NA>, False])
    >>> str(df.index.dtype), str(df["size"].dtype)
    ('string', 'Int64')
    """
    dtypes = defaultdict(lambda: _TEXT, {c: _CSV_DTYPES.get(k, _TEXT) for c, k in _KINDS.items()})
    source = Path("<stream>") if hasattr(path, "read") else Path(path)
    try:
        flat = pd.read_csv(
            path,
            dtype=dtypes,
            # Only an empty cell is NA: a name may well be "NA", "null" or "None".
            keep_default_na=False,
            na_values=[""],
            encoding="utf-8",
        )
    except ValueError as exc:  # a cell that does not parse, a quote left open, not UTF-8
        raise InvalidInputError(
            f"cannot read {str(source)!r}: not a readable CSV file ({_first_line(exc)})"
        ) from None
    if not hasattr(path, "read"):
        _check_last_row(source, len(flat.columns))
    if safe:
        for column in flat.columns:
            if _is_neutralised(column, _TEXT):
                flat[column] = restore_formulas(flat[column])
    df = _unflat(flat, source)
    if not hasattr(path, "read"):
        _restore_provenance(df, provenance.read_sidecar(source))
    return df


def _restore_provenance(df: pd.DataFrame, found: dict[str, Any] | None) -> pd.DataFrame:
    if found is not None:
        provenance.attach(df, found)
    return df


def _first_line(exc: BaseException) -> str:
    """An exception's message as one line (pandas and pyarrow write several)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_last_row(path: Path, columns: int) -> None:
    """Refuse a CSV cut short inside its last row, which pandas would fill with NA.

    :func:`to_csv` ends every row with CRLF, so only a file that does not end with a line
    break can have lost the end of a row; only then is the last row counted.
    """
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() == 0:
            return
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return
    with open(path, encoding="utf-8", newline="") as handle:
        last: list[str] = []
        for last in csv.reader(handle):  # noqa: B007 - only the last row is wanted
            pass
    if 0 < len(last) < columns:
        raise InvalidInputError(
            f"cannot read {str(path)!r}: not a readable CSV file (it ends inside a row: "
            f"{len(last)} of {columns} fields; was it cut short?)"
        )


def read_json(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a JSON file written by :func:`to_json` back into the same typed frame.

    An empty array carries no column names: it reads as the empty contract frame. The
    sidecar's provenance is restored as by :func:`read_csv`.

    Examples
    --------
    >>> import tempfile, imgframe
    >>> df = imgframe.frame_from_headers([{"X-Image-Meta-Id": "a", "X-Image-Meta-Size": "1"}])
    >>> read_json(to_json(df, tempfile.mkdtemp() + "/i.json"))["size"].tolist()
    [1]
    """
    path = Path(path)
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError: cut short or not JSON
        raise InvalidInputError(
            f"cannot read {str(path)!r}: not a readable JSON file ({_first_line(exc)})"
        ) from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise InvalidInputError(
            f"cannot read {str(path)!r}: not an images table (a JSON array of records)"
        )
    if not records:
        from imgframe.frame import empty_frame  # the one place that knows the empty schema

        return _restore_provenance(empty_frame(), provenance.read_sidecar(path))
    # dtype=object: a column of ints with nulls must not pass through float64 (2**53).
    df = _unflat(pd.DataFrame(records, dtype=object), path)
    return _restore_provenance(df, provenance.read_sidecar(path))


# Parquet columns straight to nullable pandas dtypes (the default turns int64 with nulls
# into float64, and strings into NaN-missing str).
_ARROW_TO_PANDAS = {
    pa.int64(): Kind.INT.dtype,
    pa.bool_(): Kind.BOOL.dtype,
    pa.string(): _TEXT,
    pa.large_string(): _TEXT,
}


def read_parquet(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a Parquet file written by :func:`to_parquet` back into the same typed frame,
    its provenance (``df.attrs["imgframe"]``) included.

    A folder is read as a Hive-partitioned dataset (``name=value`` folders, as
    :func:`to_parquet` with ``partition_cols`` and pandas write them): each part is
    read on its own and the partition columns are added from the folder names as text
    and typed by the schema like every other column, so a missing value
    (``__HIVE_DEFAULT_PARTITION__``) is NA rather than pyarrow's "Cannot yet unify
    dictionaries with nulls". Files and folders whose names start with ``.`` or ``_``
    are skipped. The dataset's provenance is kept when every part carries the same.

    Examples
    --------
    >>> import tempfile, imgframe
    >>> df = imgframe.frame_from_headers([{"X-Image-Meta-Id": "a", "X-Image-Meta-Property-K": ""}])
    >>> read_parquet(to_parquet(df, tempfile.mkdtemp() + "/i.parquet"))["properties"].tolist()
    [{'k': ''}]
    """
    path = Path(path)
    if path.is_dir():
        return _read_dataset(path)
    table = _read_table(path)
    flat = table.to_pandas(ignore_metadata=True, types_mapper=_ARROW_TO_PANDAS.get)
    return _restore_provenance(_unflat(flat, path), _parquet_provenance(table, path))


def _read_table(path: Path) -> pa.Table:
    # Without pandas' metadata the index is the plain ``id`` column, as in CSV and JSON,
    # and every column goes through the same _AS_KIND table.
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
            raise
        # Cut short, overwritten or not Parquet at all: pyarrow says ArrowInvalid for a
        # missing footer and plain OSError for a damaged page.
        raise InvalidInputError(
            f"cannot read {str(path)!r}: not a readable Parquet file ({_first_line(exc)})"
        ) from None


def _parquet_provenance(table: pa.Table, path: Path) -> dict[str, Any] | None:
    raw = (table.schema.metadata or {}).get(provenance.PARQUET_KEY)
    if raw is None:
        return None
    try:
        return provenance.loads(raw)
    except ValueError as exc:
        provenance.ignored(path, str(exc))
        return None


def dataset_files(folder: Path) -> list[tuple[Path, list[tuple[str, str | None]]]]:
    """The ``.parquet`` files of a Hive dataset folder, sorted by path, each with its
    partition ``(name, value)`` pairs (values unquoted, ``__HIVE_DEFAULT_PARTITION__``
    None). Names starting with ``.`` or ``_`` are skipped (temporary files, metadata)."""
    found: list[tuple[Path, list[tuple[str, str | None]]]] = []

    def walk(at: Path, pairs: list[tuple[str, str | None]]) -> None:
        for entry in sorted(at.iterdir(), key=lambda e: e.name):
            if entry.name.startswith((".", "_")):
                continue
            if entry.is_dir():
                name, equals, value = entry.name.partition("=")
                if not equals or not name:
                    raise InvalidInputError(
                        f"cannot read the dataset {str(folder)!r}: {entry} is not a "
                        "name=value partition folder"
                    )
                walk(
                    entry, [*pairs, (unquote(name), None if value == HIVE_NULL else unquote(value))]
                )
            elif entry.suffix == ".parquet":
                found.append((entry, pairs))

    walk(folder, [])
    return found


def _read_dataset(folder: Path) -> pd.DataFrame:
    files = dataset_files(folder)
    if not files:
        raise InvalidInputError(f"cannot read the dataset {str(folder)!r}: it has no .parquet file")
    return read_dataset_files(files, folder)


def read_dataset_files(
    files: Sequence[tuple[Path, Sequence[tuple[str, str | None]]]],
    source: Path,
    *,
    frame_columns_only: bool = False,
) -> pd.DataFrame:
    """One typed frame of dataset parts (:func:`dataset_files`' pairs), in that order.

    Partition values become columns: those :func:`to_parquet` took out of the frame
    (named in each part's :data:`PARTITIONING_KEY` metadata) go back in their place with
    their dtype and categories; any other partition (a History's ``fetched``, a folder
    of pandas' partitioned write) is added as text after them, unless
    ``frame_columns_only``. The provenance is kept when every part has the same.
    """
    names = [name for name, _ in files[0][1]]
    tables = []
    layout: dict[str, Any] = {}
    provenances = []
    for file, pairs in files:
        if [name for name, _ in pairs] != names:
            raise InvalidInputError(
                f"cannot read the dataset {str(source)!r}: {file} is partitioned by "
                f"{[n for n, _ in pairs]}, other parts by {names}"
            )
        table = _read_table(file)
        metadata = table.schema.metadata or {}
        if not layout and PARTITIONING_KEY in metadata:
            layout = _layout(metadata[PARTITIONING_KEY])
        provenances.append(_parquet_provenance(table, file))
        table = table.replace_schema_metadata(None)
        own = (
            _layout(metadata[PARTITIONING_KEY]).get("columns")
            if PARTITIONING_KEY in metadata
            else None
        )
        for name, value in pairs:
            if name in table.column_names:  # the part holds it too: its own column wins
                continue
            if frame_columns_only and (own is None or name not in own):
                continue
            table = table.append_column(name, _partition_array(name, value, table.num_rows))
        tables.append(table)
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowException as exc:
        raise InvalidInputError(
            f"cannot read the dataset {str(source)!r}: its parts do not share one schema "
            f"({_first_line(exc)})"
        ) from None
    flat = table.to_pandas(ignore_metadata=True, types_mapper=_ARROW_TO_PANDAS.get)
    order = [c for c in layout.get("order", []) if c in flat.columns]
    flat = flat[
        [
            *(c for c in flat.columns if c not in order and c in _INDEX_COLUMNS),
            *order,
            *(c for c in flat.columns if c not in order and c not in _INDEX_COLUMNS),
        ]
    ]
    df = _unflat(flat, source)
    for column, categories in layout.get("categories", {}).items():
        if column in df.columns and isinstance(df[column].dtype, pd.CategoricalDtype):
            present = set(df[column].cat.categories)
            if present <= set(categories):
                df[column] = df[column].cat.set_categories(pd.Index(categories, dtype=_TEXT))
    same = provenances[0] if all(p == provenances[0] for p in provenances) else None
    return _restore_provenance(df, same)


_INDEX_COLUMNS = ("id", FLEET_INDEX)


def _kind_name(kind: Kind | None) -> str:
    return "text" if kind is None else kind.value


_BOOL_TEXT = {"true": True, "false": False}


def _partition_array(name: str, value: str | None, n: int) -> pa.Array:
    """A partition column of one part: its folder value ``n`` times, as text, except
    the schema's integer and boolean columns (as :func:`_partition_text` wrote them)."""
    kind = _KINDS.get(name)
    try:
        if value is not None and kind is Kind.BOOL:
            return pa.array([_BOOL_TEXT[value.lower()]] * n, pa.bool_())
        if value is not None and kind is Kind.INT:
            return pa.array([int(value)] * n, pa.int64())
    except (KeyError, ValueError):
        raise InvalidInputError(
            f"a partition folder says {name}={value!r}, which is not a {_kind_name(kind)} value"
        ) from None
    if kind in (Kind.BOOL, Kind.INT):
        return pa.nulls(n, pa.bool_() if kind is Kind.BOOL else pa.int64())
    return pa.array([value] * n, pa.string())


def _layout(raw: bytes) -> dict[str, Any]:
    """The partitioning metadata of a part, or {} when it is not what we wrote."""
    try:
        layout = json.loads(raw)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(layout, dict):
        return {}
    order = layout.get("order")
    categories = layout.get("categories")
    columns = layout.get("columns")
    clean: dict[str, Any] = {}
    if isinstance(columns, list) and all(isinstance(c, str) for c in columns):
        clean["columns"] = columns
    if isinstance(order, list) and all(isinstance(c, str) for c in order):
        clean["order"] = order
    if isinstance(categories, dict) and all(
        isinstance(v, list) and all(isinstance(x, str) for x in v) for v in categories.values()
    ):
        clean["categories"] = categories
    return clean


FORMATS = {".csv": to_csv, ".parquet": to_parquet, ".json": to_json}
READERS: dict[str, Callable[[Path], pd.DataFrame]] = {
    ".csv": read_csv,
    ".parquet": read_parquet,
    ".json": read_json,
}


def write(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path | None:
    """Write ``df`` in the format its extension names (``.csv``, ``.parquet``, ``.json``).

    Examples
    --------
    >>> write(pd.DataFrame(), "images.xlsx")
    Traceback (most recent call last):
    ...
    imgframe.errors.ConfigError: cannot write 'images.xlsx': use a .csv, .parquet or .json file name
    """
    writer: Any = FORMATS.get(Path(path).suffix.lower())
    if writer is None:
        raise ConfigError(f"cannot write {str(path)!r}: use a .csv, .parquet or .json file name")
    return writer(df, path)


def read(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a file written by :func:`write`, choosing the reader by extension.

    Examples
    --------
    >>> read("images.xlsx")
    Traceback (most recent call last):
    ...
    imgframe.errors.ConfigError: cannot read 'images.xlsx': use a .csv, .parquet or .json file name
    """
    reader = READERS.get(Path(path).suffix.lower())
    if reader is None:
        raise ConfigError(f"cannot read {str(path)!r}: use a .csv, .parquet or .json file name")
    return reader(Path(path))
