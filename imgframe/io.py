"""Export the fleet frame: CSV (spreadsheet-safe), Parquet and JSON records.

Every writer takes the contract frame (:func:`imgframe.fetch_images`'s result) and keeps
the ``id`` index as the first column. ``properties`` (a dict per row) is written as a
JSON object (CSV, JSON) or as a Parquet ``map<string, string>``. Timestamps are ISO
8601 in UTC with a ``Z``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TextIO

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from imgframe.errors import ConfigError
from imgframe.schema import FIELDS, Kind

__all__ = ["FORMATS", "to_csv", "to_json", "to_parquet", "write"]

# A cell starting with one of these is run as a formula by Excel/LibreOffice/Sheets;
# image names are chosen by tenants, so they must not reach an auditor's sheet as formulas.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _text_columns(df: pd.DataFrame) -> list[str]:
    return [f.column for f in FIELDS if f.kind in (Kind.TEXT, Kind.CATEGORY) and f.column in df]


def _flat(df: pd.DataFrame) -> pd.DataFrame:
    """Frame with the index as a column, properties as JSON and timestamps as ISO text."""
    out = df.reset_index()
    if "properties" in out:
        out["properties"] = [
            json.dumps(p, ensure_ascii=False, sort_keys=True) if isinstance(p, dict) else None
            for p in out["properties"]
        ]
    for f in FIELDS:
        if f.kind is Kind.TIMESTAMP and f.column in out:
            out[f.column] = out[f.column].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return out


def neutralise_formulas(values: pd.Series) -> pd.Series:
    """Prefix ``'`` to text that a spreadsheet would run as a formula (and to text that
    already starts with ``'``, so reading back can strip exactly one).

    Examples
    --------
    >>> neutralise_formulas(pd.Series(["=HYPERLINK(1)", "ok", "'quoted"])).tolist()
    ["'=HYPERLINK(1)", 'ok', "''quoted"]
    """
    text = values.astype("string")
    risky = text.str.startswith((*FORMULA_STARTS, "'")).fillna(False)
    return text.mask(risky, "'" + text)


def to_csv(
    df: pd.DataFrame, path: str | os.PathLike[str] | TextIO, *, safe: bool = True
) -> Path | None:
    """Write ``df`` as UTF-8 CSV; with ``safe`` (default) no cell can run as a formula.

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
        for column in ["id", *_text_columns(df), "properties"]:
            if column in out:
                out[column] = neutralise_formulas(out[column])
    if hasattr(path, "write"):
        out.to_csv(path, index=False)
        return None
    path = Path(path)
    out.to_csv(path, index=False, encoding="utf-8")
    return path


def to_json(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write ``df`` as a JSON array of records (properties as objects, NA as null).

    Examples
    --------
    >>> import tempfile, imgframe
    >>> df = imgframe.frame_from_headers([{"X-Image-Meta-Id": "a", "X-Image-Meta-Size": "1"}])
    >>> import json; json.loads(to_json(df, tempfile.mkdtemp() + "/i.json").read_text())[0]["size"]
    1
    """
    out = _flat(df)
    if "properties" in out:
        out["properties"] = df["properties"].to_numpy()
    path = Path(path)
    records = json.loads(out.to_json(orient="records", force_ascii=False))
    path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
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
        df.drop(columns=["properties"], errors="ignore"), preserve_index=True
    )
    if "properties" in df:
        props = pa.array(
            [list(p.items()) if isinstance(p, dict) else None for p in df["properties"]],
            type=pa.map_(pa.string(), pa.string()),
        )
        position = list(df.columns).index("properties")
        table = table.add_column(position, "properties", props)
    path = Path(path)
    pq.write_table(table, path)
    return path


FORMATS = {".csv": to_csv, ".parquet": to_parquet, ".json": to_json}


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
