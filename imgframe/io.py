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
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from imgframe.atomic import atomic_path
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
    with atomic_path(path) as tmp:
        out.to_csv(tmp, index=False, encoding="utf-8", lineterminator="\r\n")
    return path


def to_json(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write ``df`` as a JSON array of records, one per line (properties as objects, NA
    as null).

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
    with atomic_path(path) as tmp:
        tmp.write_text(f"[\n{lines}\n]\n" if records else "[]\n", encoding="utf-8")
    return path


def to_parquet(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write ``df`` as Parquet (pyarrow); ``properties`` becomes ``map<string, string>``.

    Examples
    --------
    >>> import tempfile, imgframe, pyarrow.parquet as pq
    >>> df = imgframe.frame_from_headers([{"X-Image-Meta-Id": "a", "X-Image-Meta-Size": "1"}])
    >>> pq.read_table(to_parquet(df, tempfile.mkdtemp() + "/i.parquet")).num_rows
    1
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
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


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
    them (use Parquet to keep them).

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
    return _unflat(flat, source)


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

    An empty array carries no column names: it reads as the empty contract frame.

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

        return empty_frame()
    # dtype=object: a column of ints with nulls must not pass through float64 (2**53).
    return _unflat(pd.DataFrame(records, dtype=object), path)


# Parquet columns straight to nullable pandas dtypes (the default turns int64 with nulls
# into float64, and strings into NaN-missing str).
_ARROW_TO_PANDAS = {
    pa.int64(): Kind.INT.dtype,
    pa.bool_(): Kind.BOOL.dtype,
    pa.string(): _TEXT,
    pa.large_string(): _TEXT,
}


def read_parquet(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a Parquet file written by :func:`to_parquet` back into the same typed frame.

    Examples
    --------
    >>> import tempfile, imgframe
    >>> df = imgframe.frame_from_headers([{"X-Image-Meta-Id": "a", "X-Image-Meta-Property-K": ""}])
    >>> read_parquet(to_parquet(df, tempfile.mkdtemp() + "/i.parquet"))["properties"].tolist()
    [{'k': ''}]
    """
    path = Path(path)
    # Without pandas' metadata the index is the plain ``id`` column, as in CSV and JSON,
    # and every column goes through the same _AS_KIND table.
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
            raise
        # Cut short, overwritten or not Parquet at all: pyarrow says ArrowInvalid for a
        # missing footer and plain OSError for a damaged page.
        raise InvalidInputError(
            f"cannot read {str(path)!r}: not a readable Parquet file ({_first_line(exc)})"
        ) from None
    flat = table.to_pandas(ignore_metadata=True, types_mapper=_ARROW_TO_PANDAS.get)
    return _unflat(flat, path)


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
