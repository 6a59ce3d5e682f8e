"""The ``df.img`` namespace: the audit rules and exporters as methods of a fleet frame.

Registered on ``import imgframe``. Stateless (pandas builds a new accessor on every
attribute access) and thin: every method calls the plain function of
:mod:`imgframe.audits` or an exporter (``imgframe.to_csv``, ...) with the frame first,
so ``df.img.stale(now=t)`` is ``imgframe.stale(df, now=t)``. A frame without the image
columns has no ``img`` namespace (``AttributeError``).

Examples
--------
>>> import imgframe
>>> df = imgframe.frame_from_headers([{"x-image-meta-id": "a", "x-image-meta-status": "killed"}])
>>> df.img.broken()["problem"].tolist()
['killed']
>>> import pandas as pd
>>> hasattr(pd.DataFrame({"x": [1]}), "img")
False
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from imgframe import audits, changes
from imgframe.io import to_csv, to_json, to_parquet
from imgframe.report_html import report
from imgframe.schema import required_columns

__all__ = ["REQUIRED_COLUMNS", "ImageAccessor"]

#: The columns a frame must have for ``df.img`` (what the rules read; one list, in the
#: schema). Optional columns a table may lack (``virtual_size``, ...) are added as NA.
REQUIRED_COLUMNS: tuple[str, ...] = tuple(required_columns())


def _register(cls: type) -> type:
    # Importing this file a second time (pytest's doctest collection, importlib.reload)
    # re-registers the same class: pandas would warn about overriding, so we say it is ours.
    existing = getattr(pd.DataFrame, "img", None)
    ours = (getattr(existing, "__module__", None), getattr(existing, "__qualname__", None)) == (
        cls.__module__,
        cls.__qualname__,
    )
    with warnings.catch_warnings():
        if ours:
            warnings.filterwarnings("ignore", "registration of accessor", UserWarning)
        return pd.api.extensions.register_dataframe_accessor("img")(cls)


@_register
class ImageAccessor:
    """Audits and exports of an imgframe fleet frame, as ``df.img.<name>(...)``."""

    def __init__(self, df: pd.DataFrame) -> None:
        missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
        if missing:
            raise AttributeError(
                f"df.img needs an imgframe fleet frame (from imgframe.fetch_images); "
                f"this frame lacks the columns {missing}"
            )
        self._df = df

    # audits
    def public_unprotected(self) -> pd.DataFrame:
        """:func:`imgframe.audits.public_unprotected` of this frame."""
        return audits.public_unprotected(self._df)

    def checksum_duplicates(self) -> pd.DataFrame:
        """:func:`imgframe.audits.checksum_duplicates` of this frame."""
        return audits.checksum_duplicates(self._df)

    def stale(self, older_than: audits.Span = "365D", now: audits.Timeish = None) -> pd.DataFrame:
        """:func:`imgframe.audits.stale` of this frame."""
        return audits.stale(self._df, older_than=older_than, now=now)

    def broken(self, stuck_after: audits.Span = "1D", now: audits.Timeish = None) -> pd.DataFrame:
        """:func:`imgframe.audits.broken` of this frame."""
        return audits.broken(self._df, stuck_after=stuck_after, now=now)

    def format_mismatch(self) -> pd.DataFrame:
        """:func:`imgframe.audits.format_mismatch` of this frame."""
        return audits.format_mismatch(self._df)

    def requirements_missing(self) -> pd.DataFrame:
        """:func:`imgframe.audits.requirements_missing` of this frame."""
        return audits.requirements_missing(self._df)

    def security_properties(self, checks: Any = audits.SECURITY_CHECKS) -> pd.DataFrame:
        """:func:`imgframe.audits.security_properties` of this frame."""
        return audits.security_properties(self._df, checks=checks)

    def owner_summary(self) -> pd.DataFrame:
        """:func:`imgframe.audits.owner_summary` of this frame."""
        return audits.owner_summary(self._df)

    def audit(
        self, rules: Any = None, allow: Any = None, now: audits.Timeish = None, **options: Any
    ) -> pd.DataFrame:
        """:func:`imgframe.audits.audit` of this frame (``usage=``, ``profile=``,
        ``baseline=`` ... as that function takes them)."""
        return audits.audit(self._df, rules=rules, allow=allow, now=now, **options)

    # snapshots
    def diff(self, old: pd.DataFrame) -> pd.DataFrame:
        """:func:`imgframe.diff` from ``old`` to this frame (``new.img.diff(old)``)."""
        return changes.diff(old, self._df)

    # exports: the same writers as imgframe.to_csv & co.
    def to_csv(self, path: str | Path, **options: Any) -> Any:
        """:func:`imgframe.to_csv` of this frame."""
        return to_csv(self._df, path, **options)

    def to_parquet(self, path: str | Path, **options: Any) -> Any:
        """:func:`imgframe.to_parquet` of this frame (``partition_cols=[...]`` writes a
        Hive-partitioned folder that :func:`imgframe.read_parquet` reads back)."""
        return to_parquet(self._df, path, **options)

    def to_json(self, path: str | Path, **options: Any) -> Any:
        """:func:`imgframe.to_json` of this frame."""
        return to_json(self._df, path, **options)

    def report(self, path: str | Path, **options: Any) -> Any:
        """:func:`imgframe.report` of this frame."""
        return report(self._df, path, **options)

    # notebook
    def picker(self, **options: Any) -> Any:
        """:func:`imgframe.picker` of this frame (needs ``imgframe[notebook]``)."""
        from imgframe.widgets import picker

        return picker(self._df, **options)
