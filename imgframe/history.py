"""A history of fetched frames on disk: one dated partition of a Parquet dataset per run.

``History(DIR).add(df)`` stores the frame of one run (:func:`imgframe.fetch_images`,
:func:`imgframe.fetch_fleet`, or one read back with its provenance) as::

    DIR/cloud=<cloud>/region=<region>/fetched=<YYYY-MM-DDTHHMMSSZ>/part-0.parquet

Hive partitioning, values URL-quoted, a missing value ``__HIVE_DEFAULT_PARTITION__``.
``fetched`` is the run's ``fetched_at`` (its start, :mod:`imgframe.provenance`) to the
second, without colons (a valid file name everywhere). A fleet frame has one part per
cloud and region of its rows, taken from its ``cloud`` and ``region`` columns (which the
part files then leave to the folder names, as any Hive dataset does). A single-endpoint
frame has one part: its cloud is the ``cloud=`` it was fetched with, else the
endpoint's host (and port), e.g. ``ims.example.com`` or ``127.0.0.1:9292``; its region
the ``region=`` it was fetched with, else missing. Each part's file metadata holds the
frame's provenance and how many parts its snapshot has.

Writing: every part is written under a temporary name in its folder, then all are
renamed; a snapshot is listed (:meth:`History.snapshots`) only when all of its parts
are there, so a reader of the history never sees half of one, whatever moment the
writer was killed. (A reader of the bare folder, such as DuckDB, could see a fleet
snapshot with some of its parts only if the writer died between two renames.)

Decisions: a frame without provenance is refused (a snapshot with no ``fetched_at``
would have no date, and guessing "now" would date old data as new:
:func:`imgframe.provenance.build` makes provenance for a frame of your own); a second
snapshot with the same ``fetched_at`` second (the same frame added twice, or two runs
started in one second) is refused with one line, and the first one is kept.

The folder is a plain dataset: ``duckdb.sql("SELECT ... FROM
read_parquet('DIR/*/*/*/*.parquet', hive_partitioning=true)")``,
``pyarrow.dataset.dataset(DIR, partitioning="hive")`` (:meth:`History.dataset` gives
the partition columns as text even where every region is missing) and
:func:`imgframe.read_parquet` (every snapshot, with ``fetched``) read it directly.

Examples
--------
>>> import tempfile, imgframe, pandas as pd
>>> from imgframe import provenance
>>> df = imgframe.frame_from_headers([{"X-Image-Meta-Id": "a", "X-Image-Meta-Status": "active"}])
>>> df["http_status"] = pd.array([200], dtype="Int64")  # as a fetch answered it
>>> df = provenance.attach(df, provenance.build(
...     df, fetched_at="2026-11-30T08:00:00Z", asked={"endpoint": "https://ims.example.com"}))
>>> history = History(tempfile.mkdtemp())
>>> [p.relative_to(history.folder).as_posix() for p in history.add(df)]
['cloud=ims.example.com/region=__HIVE_DEFAULT_PARTITION__/fetched=2026-11-30T080000Z/part-0.parquet']
>>> history.snapshots()[["fetched_at", "cloud", "rows", "complete"]]
                 fetched_at            cloud  rows  complete
0 2026-11-30 08:00:00+00:00  ims.example.com     1      True
>>> history.latest().attrs["imgframe"]["fetched_at"]
'2026-11-30T08:00:00Z'
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from imgframe import provenance
from imgframe.atomic import atomic_path
from imgframe.changes import diff
from imgframe.errors import ConfigError, ImgframeWarning, InvalidInputError
from imgframe.io import (
    PARTITIONING_KEY,
    arrow_table,
    dataset_files,
    partition_folder,
    read_dataset_files,
)
from imgframe.schema import FLEET_INDEX

try:  # POSIX; without it (Windows) adds are simply not serialised
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["HISTORY_KEY", "PARTITIONS", "History", "folder_stamp"]

#: The partition folders of a history, outermost first.
PARTITIONS = ("cloud", "region", "fetched")
#: Parquet metadata key of a part: its snapshot's stamp and how many parts it has.
HISTORY_KEY = b"imgframe.history"
_PART = "part-0.parquet"
_LOCK = "_imgframe.lock"  # "_": skipped by every dataset reader
_STAMP = re.compile(r"(\d{4}-\d\d-\d\d)T(\d\d)(\d\d)(\d\d)Z")
_DAY = re.compile(r"\d{4}-\d\d-\d\d")


def folder_stamp(fetched_at: str | pd.Timestamp) -> str:
    """The ``fetched=`` folder value of a fetch time: UTC, to the second, no colons.

    Examples
    --------
    >>> folder_stamp("2026-12-01T14:44:56Z")
    '2026-12-01T144456Z'
    """
    stamp = pd.Timestamp(fetched_at)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.strftime("%Y-%m-%dT%H%M%SZ")


def _stamp_time(stamp: str) -> pd.Timestamp | None:
    match = _STAMP.fullmatch(stamp)
    if match is None:
        return None
    day, hh, mm, ss = match.groups()
    try:
        return pd.Timestamp(f"{day}T{hh}:{mm}:{ss}", tz="UTC")
    except ValueError:
        return None


class History:
    """The snapshots of one fleet (or endpoint) over time, in the folder ``folder``.

    The folder is created by the first :meth:`add` (its parent must exist).
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise ConfigError(f"history {str(self.folder)!r} is a file, not a folder")

    def __repr__(self) -> str:
        return f"History({str(self.folder)!r})"

    # ------------------------------------------------------------------------ writing
    def check_writable(self) -> None:
        """Raise :class:`~imgframe.ConfigError` unless :meth:`add` could write here."""
        target = self.folder if self.folder.exists() else self.folder.parent
        if not target.is_dir():
            raise ConfigError(
                f"cannot write history {str(self.folder)!r}: '{target}' does not exist"
            )
        if not os.access(target, os.W_OK | os.X_OK):
            raise ConfigError(
                f"cannot write history {str(self.folder)!r}: '{target}' is not writable"
            )

    def add(self, df: pd.DataFrame) -> list[Path]:
        """Store ``df`` as one snapshot; return the paths of its parts.

        Refused (:class:`~imgframe.ConfigError`, nothing written): a frame without
        provenance, or a snapshot of the same ``fetched_at`` second already stored.
        """
        found = provenance.of(df)
        if found is None:
            raise ConfigError(
                "cannot add a frame without provenance (df.attrs['imgframe']) to a history: "
                "add the frame fetch_images or fetch_fleet returned, or one read back "
                "with imgframe.read_*"
            )
        stamp = folder_stamp(found["fetched_at"])
        fleet = _is_fleet(df)
        groups = _groups(df, found) if fleet else [(_labels(found), None)]
        self.check_writable()
        self.folder.mkdir(exist_ok=True)
        with self._locked():
            if stamp in {s for _, _, s in self._parts()}:
                raise ConfigError(
                    f"history {str(self.folder)!r} already has a snapshot fetched at "
                    f"{found['fetched_at']} (the same run added twice?); nothing added"
                )
            table = arrow_table(df)
            layout: dict[str, Any] = {
                "columns": ["cloud", "region"] if fleet else [],
                "order": [str(c) for c in df.columns],
            }
            if fleet:
                table = table.drop_columns(["cloud", "region"])
                layout["categories"] = {
                    c: [str(v) for v in df[c].cat.categories]
                    for c in ("cloud", "region")
                    if isinstance(df[c].dtype, pd.CategoricalDtype)
                }
            extra = {
                PARTITIONING_KEY: json.dumps(layout, ensure_ascii=False).encode("utf-8"),
                HISTORY_KEY: json.dumps({"stamp": stamp, "parts": len(groups)}).encode("utf-8"),
            }
            metadata = {**(table.schema.metadata or {}), **extra}
            paths = []
            with contextlib.ExitStack() as stack:
                # Every part written under its temporary name first; leaving the stack
                # renames them all (atomic_path), so the parts land together.
                for (cloud, region), rows in groups:
                    folder = self.folder / partition_folder(
                        [("cloud", cloud), ("region", region), ("fetched", stamp)]
                    )
                    folder.mkdir(parents=True, exist_ok=True)
                    part = table if rows is None else table.take(pa.array(rows, pa.int64()))
                    tmp = stack.enter_context(atomic_path(folder / _PART))
                    pq.write_table(part.replace_schema_metadata(metadata), tmp)
                    paths.append(folder / _PART)
        return paths

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One :meth:`add` at a time per folder (two would race for the same stamp)."""
        if fcntl is None:  # pragma: no cover
            yield
            return
        with open(self.folder / _LOCK, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    # ------------------------------------------------------------------------ reading
    def _parts(self) -> list[tuple[Path, dict[str, str | None], str]]:
        """Every part file with its partition values and its ``fetched`` stamp."""
        if not self.folder.is_dir():
            return []
        try:
            files = dataset_files(self.folder)
        except InvalidInputError as exc:
            raise InvalidInputError(f"history {str(self.folder)!r}: {exc}") from None
        parts = []
        for path, pairs in files:
            values = dict(pairs)
            if [name for name, _ in pairs] != list(PARTITIONS) or values["fetched"] is None:
                continue  # not one of ours: a history folder holds only its partitions
            parts.append((path, values, values["fetched"] or ""))
        return parts

    def snapshots(self) -> pd.DataFrame:
        """One row per stored part, oldest first: ``fetched_at`` (UTC), ``cloud``,
        ``region``, ``rows``, ``complete`` (the run's), ``path`` and ``stamp`` (the
        ``fetched=`` value naming the snapshot). A snapshot some of whose parts are
        missing or unreadable (a writer killed mid-way, a damaged file) is left out
        with one :class:`~imgframe.ImgframeWarning`.
        """
        rows: list[dict[str, Any]] = []
        expected: dict[str, int] = {}
        broken: dict[str, str] = {}
        for path, values, stamp in self._parts():
            try:
                meta = pq.read_metadata(path)
            except (pa.ArrowException, OSError) as exc:
                broken[stamp] = (
                    f"{path} cannot be read ({str(exc).splitlines()[0] if str(exc) else exc})"
                )
                continue
            kv = meta.metadata or {}
            try:
                found = provenance.loads(kv.get(provenance.PARQUET_KEY, b"null"))
                info = json.loads(kv.get(HISTORY_KEY, b"null"))
                parts = info["parts"] if isinstance(info, dict) else None
                if type(parts) is not int or parts < 1 or info.get("stamp") != stamp:
                    raise ValueError("it is not a part imgframe's History wrote")
            except (ValueError, TypeError, KeyError, RecursionError) as exc:
                broken[stamp] = f"{path}: {exc}"
                continue
            expected[stamp] = parts
            rows.append(
                {
                    "fetched_at": provenance.fetched_at(provenance.attach(pd.DataFrame(), found)),
                    "cloud": values["cloud"],
                    "region": values["region"],
                    "rows": meta.num_rows,
                    "complete": found["complete"],
                    "path": str(path),
                    "stamp": stamp,
                }
            )
        counted = pd.Series([r["stamp"] for r in rows], dtype=object).value_counts().to_dict()
        for stamp, parts in expected.items():
            if counted.get(stamp) != parts and stamp not in broken:
                broken[stamp] = f"{counted.get(stamp, 0)} of its {parts} parts are there"
        for stamp, why in sorted(broken.items()):
            warnings.warn(
                f"history {str(self.folder)!r}: snapshot {stamp} left out: {why}",
                ImgframeWarning,
                stacklevel=2,
            )
        rows = [r for r in rows if r["stamp"] not in broken]
        out = pd.DataFrame(
            rows, columns=["fetched_at", "cloud", "region", "rows", "complete", "path", "stamp"]
        )
        out = out.astype(
            {
                "fetched_at": "datetime64[ns, UTC]",
                "cloud": "string",
                "region": "string",
                "rows": "Int64",
                "complete": "boolean",
                "path": "string",
                "stamp": "string",
            }
        )
        return out.sort_values(["fetched_at", "cloud", "region"], kind="stable").reset_index(
            drop=True
        )

    def _stamps(self) -> list[str]:
        snapshots = self.snapshots()
        return list(dict.fromkeys(snapshots["stamp"].tolist()))

    def _read(self, stamp: str) -> pd.DataFrame:
        parts = [
            (path, pairs)
            for path, pairs in dataset_files(self.folder)
            if dict(pairs).get("fetched") == stamp
        ]
        # A fleet's parts in its target order (the provenance lists the targets), so the
        # frame comes back in the order it was fetched, not in folder-name order.
        first = pq.read_metadata(parts[0][0]).metadata or {}
        try:
            targets = provenance.loads(first.get(provenance.PARQUET_KEY, b"null"))["asked"]
            order = [(t.get("cloud"), t.get("region")) for t in targets.get("targets", [])]
        except ValueError:
            order = []
        rank = {pair: at for at, pair in enumerate(order)}
        parts.sort(key=lambda part: rank.get(_cloud_region(part[1]), len(rank)))
        return read_dataset_files(parts, self.folder, frame_columns_only=True)

    def latest(self) -> pd.DataFrame:
        """The newest snapshot, typed, with its provenance in ``attrs``."""
        stamps = self._stamps()
        if not stamps:
            raise ConfigError(f"history {str(self.folder)!r} has no snapshot")
        return self._read(stamps[-1])

    def get(self, when: str | dt.date | dt.datetime | pd.Timestamp) -> pd.DataFrame:
        """One snapshot, typed, with its provenance in ``attrs``.

        ``when`` is a fetch time (to the second; naive means UTC), a ``fetched=`` stamp
        (``2026-12-01T144456Z``) or a day (``"2026-12-01"``, a ``datetime.date``): the
        last snapshot fetched that UTC day.
        """
        stamps = self._stamps()
        wanted = _wanted(when)
        if isinstance(wanted, dt.date) and not isinstance(wanted, dt.datetime):
            day = [s for s in stamps if s.startswith(wanted.isoformat())]
            chosen = day[-1] if day else None
        else:
            chosen = folder_stamp(wanted) if folder_stamp(wanted) in stamps else None
        if chosen is None:
            shown = ", ".join(stamps[-5:]) or "none"
            raise ConfigError(
                f"history {str(self.folder)!r} has no snapshot fetched at {when}; "
                f"the last ones: {shown}"
            )
        return self._read(chosen)

    def pair(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The last two snapshots, ``(before, after)``: what a diff compares."""
        stamps = self._stamps()
        if len(stamps) < 2:
            raise ConfigError(
                f"history {str(self.folder)!r} has {len(stamps)} snapshot(s); a pair needs two"
            )
        return self._read(stamps[-2]), self._read(stamps[-1])

    def diff(self) -> pd.DataFrame:
        """What changed between the last two snapshots (:func:`imgframe.diff` of
        :meth:`pair`): one row per image and change.

        Examples
        --------
        >>> import tempfile
        >>> History(tempfile.mkdtemp()).diff()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        imgframe.errors.ConfigError: history '...' has 0 snapshot(s); a pair needs two
        """
        before, after = self.pair()
        return diff(before, after)

    def dataset(self) -> Any:
        """The folder as a ``pyarrow.dataset.Dataset``, its partition columns as text
        (so a history whose regions are all missing still reads)."""
        import pyarrow.dataset as ds

        partitioning = ds.partitioning(
            pa.schema([(name, pa.string()) for name in PARTITIONS]), flavor="hive"
        )
        return ds.dataset(self.folder, format="parquet", partitioning=partitioning)


def _wanted(when: Any) -> dt.date | pd.Timestamp:
    if isinstance(when, str):
        text = when.strip()
        if _DAY.fullmatch(text):
            return dt.date.fromisoformat(text)
        at = _stamp_time(text)
        if at is not None:
            return at
    elif isinstance(when, dt.date) and not isinstance(when, dt.datetime):
        return when
    try:
        return pd.Timestamp(when)
    except (ValueError, TypeError):
        raise ConfigError(
            f"cannot tell which snapshot {when!r} means: give a time, a day (YYYY-MM-DD) "
            "or a fetched= stamp"
        ) from None


def _cloud_region(pairs: Any) -> tuple[str | None, str | None]:
    values = dict(pairs)
    return values.get("cloud"), values.get("region")


def _is_fleet(df: pd.DataFrame) -> bool:
    return df.index.name == FLEET_INDEX and "cloud" in df.columns and "region" in df.columns


def _labels(found: dict[str, Any]) -> tuple[str | None, str | None]:
    """The cloud and region of a single-endpoint frame (see the module docstring)."""
    asked = found["asked"]
    cloud = asked.get("cloud")
    if not cloud:
        parts = urlsplit(asked.get("endpoint") or "")
        cloud = parts.netloc.rpartition("@")[2] or None
    return cloud or None, asked.get("region") or None


def _groups(
    df: pd.DataFrame, found: dict[str, Any]
) -> list[tuple[tuple[str | None, str | None], list[int] | None]]:
    """A fleet frame's rows by (cloud, region), in order of first appearance; a frame
    without rows is one empty part of its first target."""
    clouds = df["cloud"].astype("string").tolist()
    regions = df["region"].astype("string").tolist()
    groups: dict[tuple[str | None, str | None], list[int]] = {}
    for row, key in enumerate(zip(clouds, regions, strict=True)):
        clean = tuple(None if pd.isna(v) or v == "" else str(v) for v in key)
        groups.setdefault(clean, []).append(row)  # type: ignore[arg-type]
    if not groups:
        targets = found["asked"].get("targets") or [{}]
        first = targets[0] if isinstance(targets[0], dict) else {}
        return [((first.get("cloud") or None, first.get("region") or None), [])]
    return list(groups.items())
