"""Typed frames out of parsed columns: the frame builder and the fetch's collector.

:class:`Columns` gathers many header mappings (or :func:`~imgframe.parse.pack_headers`
blobs) into one column of raw values per field; :func:`build_frame` turns them into the
typed frame with :mod:`imgframe.parse`'s vector parsers; :func:`frame_from_headers` is
the public entry point, :func:`empty_frame` the empty schema, :func:`concat_frames`
joins frames keeping their categories. :class:`Collector` receives a fetch's results in
completion order and turns them, batch by batch, into the frame in input order.

This module depends on :mod:`imgframe.parse`, never the reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import chain
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from imgframe.parse import (
    PACK_SEPARATOR,
    VECTOR_PARSERS,
    WARN_IDS,
    ParseProblems,
    binary_text_array,
    pack_headers,
    property_key,
    repair_text,
    text_array,
)
from imgframe.schema import FIELDS, FLEET_FIELDS, Kind

if TYPE_CHECKING:
    from imgframe.fetch import FetchResult

__all__ = [
    "Collector",
    "Columns",
    "FrameBuilder",
    "build_frame",
    "concat_frames",
    "empty_frame",
    "frame_from_headers",
    "gc_paused",
]


class PartWriter(Protocol):
    """Where a :class:`Collector` writes each batch's rows (a
    :class:`~imgframe.checkpoint.Checkpoint`)."""

    def append(self, frame: pd.DataFrame) -> None: ...


class Columns:
    """Many header mappings gathered into one column of raw values per field.

    All keys and values are flattened into two pyarrow arrays in one pass at C speed
    (``itertools.chain``), keys are lower-cased and dictionary-encoded there, and each
    field's values are picked with one ``take``; the only per-entry Python work left is
    filling the property dicts. This is what makes the frame builder several times
    faster than parsing each mapping on its own.

    Examples
    --------
    >>> columns = Columns.from_packed([b"X-Image-Meta-Size\\x0012", None])
    >>> columns.n, columns.raw("x-image-meta-size").to_pylist()
    (2, ['12', None])
    """

    def __init__(
        self, lengths: np.ndarray, codes: np.ndarray, names: Sequence[Any], values: pa.Array
    ) -> None:
        """``codes[i]`` is the position in ``names`` of the i-th header's name, as sent;
        a null value (``None`` in a mapping) is an absent header."""
        self.n = n = len(lengths)
        rows = np.repeat(np.arange(n, dtype=np.int64), lengths)
        if values.null_count:  # a value of None: the header is absent
            kept = values.is_valid()
            keep = kept.to_numpy(zero_copy_only=False)
            values, rows, codes = values.filter(kept), rows[keep], codes[keep]
        self.values = values
        self.rows = rows
        # Lower-case only the few distinct names (servers spell each header one way) and
        # merge the spellings that differ only in case (or only in their repair). A
        # property's name becomes ("property", key): it can never equal a plain header.
        canonical: dict[str | tuple[str, str], int] = {}
        remap = np.empty(len(names), dtype=np.int64)
        for i, name in enumerate(names):
            text = name if name.__class__ is str and name.isascii() else repair_text(name)
            prop = property_key(text)
            key = text.lower() if prop is None else ("property", prop)
            remap[i] = canonical.setdefault(key, len(canonical))
        self._codes = remap[codes] if len(codes) else codes.astype(np.int64)
        self._names: list[str | tuple[str, str]] = list(canonical)

    @classmethod
    def from_mappings(cls, headers: Iterable[Mapping[str, Any]]) -> Columns:
        """From header mappings (dicts, aiohttp's ``CIMultiDictProxy``...)."""
        mappings = headers if isinstance(headers, list | tuple) else list(headers)
        lengths = np.fromiter(map(len, mappings), dtype=np.int64, count=len(mappings))
        keys = list(chain.from_iterable(mappings))
        if len(keys) == lengths.sum():
            values = list(chain.from_iterable(m.values() for m in mappings))
        else:  # multidict 7 iterates a repeated name once (len and values() count each)
            pairs = list(chain.from_iterable(m.items() for m in mappings))
            keys = [key for key, _ in pairs]
            values = [value for _, value in pairs]
        # Header names are a few distinct strings repeated: a dict lookup per name (at C
        # speed through map) is 3x cheaper than converting them all to arrow and encoding.
        names = list(dict.fromkeys(keys))
        index = {name: i for i, name in enumerate(names)}
        codes = np.fromiter(map(index.__getitem__, keys), dtype=np.int64, count=len(keys))
        return cls(lengths, codes, names, text_array(values))

    @classmethod
    def from_packed(cls, packed: Sequence[bytes | None]) -> Columns:
        """From :func:`pack_headers` blobs (None for a response without headers).

        Splitting, decoding and lower-casing all happen in pyarrow, column-wise.
        """
        if b"" in packed:  # no pairs: split, b"" would be one part and shift every later pair
            packed = [blob or None for blob in packed]
        blobs = pa.array(packed, type=pa.binary())  # 5x faster to build than large_binary
        parts = pc.split_pattern(blobs, pattern=PACK_SEPARATOR)
        lengths = pc.list_value_length(parts).fill_null(0).to_numpy(zero_copy_only=False) // 2
        flat = pc.list_flatten(parts)
        even = np.arange(0, len(flat) - 1, 2)
        encoded = pc.dictionary_encode(flat.take(even))
        codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        values = binary_text_array(flat.take(even + 1))
        return cls(lengths, codes, encoded.dictionary.to_pylist(), values)

    def raw(self, header: str) -> pa.Array:
        """The raw text of ``header`` per row (null where absent; the last one wins)."""
        if header not in self._names:
            return pa.nulls(self.n, self.values.type)
        positions = np.flatnonzero(self._codes == self._names.index(header))
        where = np.full(self.n, -1, dtype=np.int64)
        where[self.rows[positions]] = positions
        mask = where < 0
        return self.values.take(pa.array(where, mask=mask))

    def properties(self) -> tuple[list[dict[str, str]], dict[str, list[int]]]:
        """One dict per row of its custom properties, and the collisions: for each key
        that had two different values in a row (the last one is kept), those rows."""
        result: list[dict[str, str]] = [{} for _ in range(self.n)]
        prop_codes = [i for i, name in enumerate(self._names) if name.__class__ is tuple]
        if not prop_codes:
            return result, {}
        positions = np.flatnonzero(np.isin(self._codes, prop_codes))
        keys = [name[1] if name.__class__ is tuple else "" for name in self._names]
        rows = self.rows[positions].tolist()
        codes = self._codes[positions].tolist()
        # One str per distinct value, shared by the rows that have it: values repeat
        # (os_distro, architecture...), and a million rows' copies were a fifth of a fetch's
        # memory (benchmarks/bench_million.py).
        encoded = pc.dictionary_encode(self.values.take(pa.array(positions)))
        distinct = encoded.dictionary.to_pylist()
        values = list(map(distinct.__getitem__, encoded.indices.to_numpy().tolist()))
        for row, code, value in zip(rows, codes, values, strict=True):
            result[row][keys[code]] = value
        if sum(map(len, result)) == len(positions):  # no key twice in a row: nothing lost
            return result, {}
        collided: dict[str, list[int]] = {}
        seen: dict[tuple[int, int], str] = {}
        for row, code, value in zip(rows, codes, values, strict=True):
            if seen.setdefault((row, code), value) != value:
                where = collided.setdefault(keys[code], [])
                if not where or where[-1] != row:
                    where.append(row)
            seen[(row, code)] = value
        return result, collided


def build_frame(
    columns: Columns,
    *,
    index: Sequence[Any] | None = None,
    http_status: Sequence[int | None] | None = None,
    error: Sequence[str | None] | None = None,
    problems: ParseProblems | None = None,
) -> pd.DataFrame:
    """Assemble the typed frame (shared by :func:`frame_from_headers` and the fetcher).

    Unparseable values are recorded in ``problems`` (the caller warns once).

    ``index`` overrides the ids read from the headers: the fetcher indexes by the
    *requested* id, so failed rows without headers keep theirs.

    Examples
    --------
    >>> df = build_frame(Columns.from_packed([b"X-Image-Meta-Size\\x0012", None]),
    ...                  index=["a", "b"], http_status=[200, None], error=[None, "timeout"])
    >>> df[["size", "http_status", "error"]].values.tolist()
    [[12, 200, <NA>], [<NA>, <NA>, 'timeout']]
    """
    n = columns.n
    fetched = {"http_status": http_status, "error": error}
    data: dict[str, Any] = {}
    bad_rows: dict[str, np.ndarray] = {}
    ids: Any = None
    collided: dict[str, list[int]] = {}
    for f in FIELDS:
        if f.kind is Kind.PROPERTIES:
            properties, collided = columns.properties()
            data[f.column] = _object_array(properties)
        elif f.header is None:  # filled by the fetcher, not read from headers
            given = fetched[f.column]
            values: Sequence[Any] = given if given is not None else [None] * n
            if f.kind is Kind.INT:
                data[f.column] = pd.array(list(values), dtype=f.dtype)
            else:
                data[f.column], _ = VECTOR_PARSERS[f.kind](text_array(values))
        else:
            converted, bad = VECTOR_PARSERS[f.kind](columns.raw(f.header))  # type: ignore[arg-type]
            if f.column == "id":
                ids = converted
                continue
            data[f.column] = converted
            if bad.any():
                bad_rows[f.column] = np.flatnonzero(bad)
    index_values = pd.array(index, dtype=Kind.TEXT.dtype) if index is not None else ids
    frame = pd.DataFrame(data, index=pd.Index(index_values, name="id"))
    if problems is not None:
        for column, rows in bad_rows.items():
            problems.add(column, [index_values[i] for i in rows[:WARN_IDS]], count=len(rows))
        for key, where in collided.items():
            problems.collide(key, [index_values[i] for i in where[:WARN_IDS]], len(where))
    return frame


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while building: the many small dicts and strings created here
    hold no cycles, and collections triggered by their allocation would rescan every
    header mapping the caller still holds (a third of the build time at 200k rows).

    Examples
    --------
    >>> with gc_paused():
    ...     gc.isenabled()
    False
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _object_array(items: Sequence[Any]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def frame_from_headers(headers: Iterable[Mapping[Any, Any]]) -> pd.DataFrame:
    """Build the typed fleet frame from many HEAD responses' headers.

    One row per mapping, indexed by ``X-Image-Meta-Id``, with the columns and dtypes of
    :func:`imgframe.schema.dtypes`; ``http_status`` and ``error`` are NA (no fetch
    happened here). Same rules and the same values as :func:`parse_headers`, applied
    column-wise; nothing a server can send raises.

    Examples
    --------
    >>> df = frame_from_headers([
    ...     {"X-Image-Meta-Id": "a", "X-Image-Meta-Size": "10", "X-Image-Meta-Is_public": "True"},
    ...     {"x-image-meta-id": "b", "x-image-meta-size": "None", "x-image-meta-is_public": "no"},
    ... ])
    >>> df[["size", "is_public"]]
       size  is_public
    id
    a    10       True
    b  <NA>      False
    >>> str(df["size"].dtype), str(df.index.dtype)
    ('Int64', 'string')
    """
    problems = ParseProblems()
    with gc_paused():
        frame = build_frame(Columns.from_mappings(headers), problems=problems)
    problems.warn()
    return frame


def empty_frame() -> pd.DataFrame:
    """A frame with no rows and the full typed schema."""
    return build_frame(Columns.from_mappings([]))


def concat_frames(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate typed frames, keeping category columns categorical.

    ``pd.concat`` turns categoricals with different categories into object columns;
    here each category column first gets the union of all categories.
    """
    if not frames:
        return empty_frame()
    if len(frames) == 1:
        return frames[0]
    frames = list(frames)
    for f in (*FIELDS, *FLEET_FIELDS):
        if f.kind is not Kind.CATEGORY or f.column not in frames[0]:
            continue
        # Sorted, like a single astype("category"): the same data always gets the same
        # dtype, whatever the batches were (and read-back from CSV gives it again).
        union = pd.api.types.union_categoricals(
            [frame[f.column].array for frame in frames], ignore_order=True
        ).categories.sort_values()
        frames = [
            frame.assign(**{f.column: frame[f.column].cat.set_categories(union)})
            for frame in frames
        ]
    return pd.concat(frames)


class Collector:
    """Receives results in completion order; turns them into typed frames in batches.

    With a checkpoint, each batch's definitive rows also go to it as one part: a batch
    ends at ``batch_size`` rows or, through :meth:`flush_every`, once its first row is
    ``checkpoint.FLUSH_SECONDS`` old. Rows restored from the checkpoint come in as stored
    rows plus their positions (:meth:`restore`) and are placed like fetched ones.

    With ``total`` (the number of rows, known for given ids) each batch is written into
    the final columns at once (:class:`FrameBuilder`); without it (a listing: the count
    comes page by page) the batch frames are concatenated and reordered at the end.

    Examples
    --------
    >>> collector = Collector(None, batch_size=2, total=3)
    >>> for position, image_id in [(2, "c"), (0, "a"), (1, "b")]:
    ...     collector.add_packed(position, image_id, 404, "HTTP 404 Not Found", None)
    >>> collector.frame().index.tolist(), collector.counts["not found"]
    (['a', 'b', 'c'], 3)
    """

    def __init__(
        self,
        progress: Any,
        store: PartWriter | None = None,
        *,
        batch_size: int,
        total: int | None = None,
    ) -> None:
        # One batch as parallel lists of small values: keeping FetchResults would keep
        # aiohttp's header tuples alive (see pack_headers).
        self.positions_batch: list[int] = []
        self.ids: list[str] = []
        self.statuses: list[int | None] = []
        self.errors: list[str | None] = []
        self.packed: list[bytes | None] = []
        self.frames: list[pd.DataFrame] = []
        self.positions: list[np.ndarray] = []
        self.problems = ParseProblems()
        self.counts = {"ok": 0, "not found": 0, "errors": 0}
        self._bar = progress
        self._pending_bar = 0
        self._last_bar = 0.0
        self._store = store
        self._batch_size = batch_size
        self._batch_started = 0.0
        self._stored: pd.DataFrame | None = None
        self._stored_status: np.ndarray | None = None
        self._restore_rows: list[np.ndarray] = []
        self._restore_positions: list[np.ndarray] = []
        self.restored = 0
        self._builder = None if total is None else FrameBuilder(total)

    def add(self, result: FetchResult) -> None:
        packed = pack_headers(result.raw_headers) if result.raw_headers else None
        self.add_packed(result.position, result.image_id, result.http_status, result.error, packed)

    def add_packed(
        self,
        position: int,
        image_id: str,
        http_status: int | None,
        error: str | None,
        packed: bytes | None,
    ) -> None:
        """:meth:`add` of a result whose headers are already :func:`pack_headers`'d."""
        if not self.ids:
            self._batch_started = time.monotonic()
        self.positions_batch.append(position)
        self.ids.append(image_id)
        self.statuses.append(http_status)
        self.errors.append(error)
        self.packed.append(packed)
        if http_status == 200 and error is None:
            self.counts["ok"] += 1
        elif http_status == 404:
            self.counts["not found"] += 1
        else:
            self.counts["errors"] += 1
        if self._bar is not None:
            self._pending_bar += 1
            now = time.monotonic()
            if now - self._last_bar > 0.2:  # batch bar updates: per-row refresh costs real CPU
                self._flush_bar(now)
        if len(self.ids) >= self._batch_size:
            self.flush()

    def use_stored(self, stored: pd.DataFrame) -> None:
        """The checkpoint's rows, from which :meth:`restore` takes the ids it is given."""
        self._stored = stored
        self._stored_status = stored["http_status"].to_numpy(dtype="float64", na_value=np.nan)

    def restore(self, rows: np.ndarray, positions: np.ndarray) -> None:
        """Stored rows ``rows`` answer the ids at ``positions``: they are not sent."""
        if not len(rows):
            return
        assert self._stored is not None and self._stored_status is not None
        if self._builder is not None:
            self._builder.put(self._stored.take(rows), positions)
        else:
            self._restore_rows.append(rows)
            self._restore_positions.append(positions)
        status = self._stored_status[rows]
        ok, not_found = int((status == 200).sum()), int((status == 404).sum())
        self.counts["ok"] += ok
        self.counts["not found"] += not_found
        self.counts["errors"] += len(rows) - ok - not_found
        self.restored += len(rows)
        if self._bar is not None:
            self._pending_bar += len(rows)
            self._flush_bar(time.monotonic())

    def expect(self, more: int) -> None:
        """``more`` rows are on their way (a listing page): grow the bar's total."""
        if self._bar is not None and more:
            self._bar.total = (self._bar.total or 0) + more
            self._bar.refresh()

    def _flush_bar(self, now: float) -> None:
        self._bar.update(self._pending_bar)
        # Strings, not ints: tqdm shows large ints as 4e+04.
        postfix = {name: f"{count:,}" for name, count in self.counts.items()}
        if self.restored:
            postfix["from checkpoint"] = f"{self.restored:,}"
        self._bar.set_postfix(postfix, refresh=False)
        self._pending_bar = 0
        self._last_bar = now

    def flush(self) -> None:
        if not self.ids:
            return
        with gc_paused():
            frame = build_frame(
                Columns.from_packed(self.packed),
                index=self.ids,
                http_status=self.statuses,
                error=self.errors,
                problems=self.problems,
            )
        positions = np.array(self.positions_batch, dtype=np.int64)
        self.positions_batch, self.ids, self.statuses, self.errors, self.packed = [], [], [], [], []
        if self._store is not None:
            self._store.append(frame)
        if self._builder is not None:
            self._builder.put(frame, positions)
        else:
            self.frames.append(frame)
            self.positions.append(positions)

    async def flush_every(self, seconds: float) -> None:
        """Flush a batch once its first row is ``seconds`` old (the checkpoint's clock)."""
        tick = min(max(seconds / 4, 0.01), 1.0)
        while True:
            await asyncio.sleep(tick)
            if self.ids and time.monotonic() - self._batch_started >= seconds:
                self.flush()

    def close(self) -> None:
        """Finish the progress bar (idempotent; also on errors)."""
        if self._bar is not None:
            self._flush_bar(time.monotonic())
            self._bar.close()
            self._bar = None

    def frame(self) -> pd.DataFrame:
        """The frame of every row received, in position order (flushes the last batch)."""
        self.flush()
        self.close()
        if self._builder is not None:
            self._stored = None
            builder, self._builder = self._builder, None
            return builder.frame()
        if self._restore_rows:
            assert self._stored is not None
            piece = self._stored.take(np.concatenate(self._restore_rows))
            self.frames.append(_only_used_categories(piece))
            self.positions.append(np.concatenate(self._restore_positions))
            self._restore_rows.clear()
            self._restore_positions.clear()
        self._stored = None
        frame = concat_frames(self.frames)
        self.frames.clear()
        if not self.positions:
            return frame
        positions = np.concatenate(self.positions)
        self.positions.clear()
        if bool((positions[1:] >= positions[:-1]).all()):
            # Already in order (a listing's rows arrive page by page, in listing order):
            # the stable sort would be the identity, its copy of every column ~0.1 s at 50k.
            return frame
        return _reordered(frame, np.argsort(positions, kind="stable"))


class FrameBuilder:
    """The frame of ``n`` rows, filled batch by batch at each row's final position.

    A fetch knows its rows' positions before it knows their values (one row per
    requested id, in input order), so each column is allocated once at its final size
    and every batch is written straight into it: numpy values and masks for the
    nullable integers, booleans and timestamps, category codes over a growing list of
    categories, one object array of ``properties``. Only text columns (and the index)
    are kept as the batches' arrow arrays and put in order at the end, one column at a
    time. The fetch thus holds about one frame's worth of memory, where concatenating
    the batches and then reordering held three (``benchmarks/bench_million.py``).

    The frame equals ``concat_frames`` of the batches reordered by position (categories
    sorted, as there); ``tests/test_frame.py`` checks it.

    Examples
    --------
    >>> batch = frame_from_headers([{"X-Image-Meta-Id": "b", "X-Image-Meta-Size": "2"}])
    >>> first = frame_from_headers([{"X-Image-Meta-Id": "a", "X-Image-Meta-Status": "active"}])
    >>> builder = FrameBuilder(2)
    >>> builder.put(batch, np.array([1]))
    >>> builder.put(first, np.array([0]))
    >>> df = builder.frame()
    >>> df.index.tolist(), df["size"].tolist(), df["status"].tolist()
    (['a', 'b'], [<NA>, 2], ['active', <NA>])
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self._filled = np.zeros(n, dtype=bool)
        self._template = empty_frame()
        self._columns: dict[str, Any] = {}
        self._kinds: dict[str, Kind] = {}
        kinds = {f.column: f.kind for f in FIELDS}
        for column in self._template.columns:
            kind = self._kinds[column] = kinds[column]
            if kind in (Kind.INT, Kind.BOOL):
                dtype = np.int64 if kind is Kind.INT else np.bool_
                self._columns[column] = (np.zeros(n, dtype=dtype), np.ones(n, dtype=bool))
            elif kind is Kind.TIMESTAMP:
                self._columns[column] = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
            elif kind is Kind.CATEGORY:
                self._columns[column] = (np.full(n, -1, dtype=np.int32), {})
            elif kind is Kind.PROPERTIES:
                self._columns[column] = np.empty(n, dtype=object)
            else:  # text: the batches' arrow chunks, put in order by frame()
                self._columns[column] = []
        self._index_chunks: list[pa.Array] = []
        self._chunk_positions: list[np.ndarray] = []

    def put(self, frame: pd.DataFrame, positions: np.ndarray) -> None:
        """Write ``frame``'s rows (the frame's columns, in any order of rows) at ``positions``."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) != len(frame):
            raise ValueError(f"{len(frame)} rows for {len(positions)} positions")
        if not len(positions):
            return
        if positions.min() < 0 or positions.max() >= self.n:
            raise ValueError(f"a position outside 0..{self.n - 1}")
        if self._filled[positions].any() or len(np.unique(positions)) != len(positions):
            raise ValueError("a position is filled twice: one row per requested id")
        self._filled[positions] = True
        for column, kind in self._kinds.items():
            series = frame[column]
            expected = self._template[column].dtype
            if kind is not Kind.CATEGORY and series.dtype != expected:
                series = series.astype(expected)  # e.g. another timestamp unit: not raw asi8
            array = series.array
            target = self._columns[column]
            if kind in (Kind.INT, Kind.BOOL):
                values, mask = target
                na = np.asarray(array.isna())
                values[positions] = array.to_numpy(dtype=values.dtype, na_value=0)
                mask[positions] = na
            elif kind is Kind.TIMESTAMP:
                target[positions] = array.asi8
            elif kind is Kind.CATEGORY:
                codes, categories = target
                codes[positions] = _global_codes(array, categories)
            elif kind is Kind.PROPERTIES:
                target[positions] = series.to_numpy(dtype=object)
            else:
                target.append(_arrow(array))
        self._index_chunks.append(_arrow(frame.index.array))
        self._chunk_positions.append(positions)

    @property
    def missing(self) -> int:
        """How many positions have no row yet."""
        return int(self.n - np.count_nonzero(self._filled))

    def frame(self) -> pd.DataFrame:
        """The frame (once: the builder gives its columns away); every position must be filled."""
        if self.missing:
            raise RuntimeError(
                f"{self.missing} of {self.n} rows were never filled: one row per requested id"
            )
        if not self.n:
            return self._template
        places = _TextPlaces(self._chunk_positions, self.n)
        self._chunk_positions = []
        data: dict[str, Any] = {}
        for column, kind in self._kinds.items():
            target = self._columns.pop(column)
            if kind is Kind.INT:
                data[column] = pd.arrays.IntegerArray(*target)
            elif kind is Kind.BOOL:
                data[column] = pd.arrays.BooleanArray(*target)
            elif kind is Kind.TIMESTAMP:
                data[column] = _utc_stamps(target)
            elif kind is Kind.CATEGORY:
                codes, categories = target
                data[column] = _categorical(
                    codes, categories, self._template[column].cat.categories
                )
            elif kind is Kind.PROPERTIES:
                data[column] = target
            else:
                data[column] = places.ordered(target)
        index = pd.Index(places.ordered(self._index_chunks), name="id")
        return pd.DataFrame(data, index=index, copy=False)


#: Rows per chunk of a text column put in order by :class:`_TextPlaces`.
TEXT_BLOCK = 65_536


def _arrow(array: Any) -> pa.Array:
    """A string extension array's arrow data as one large_string array (shared when it
    is one chunk already, as a batch's is)."""
    chunks = pa.chunked_array(pa.array(array)).cast(pa.large_string()).chunks
    if len(chunks) == 1:
        return chunks[0]
    return pa.concat_arrays(chunks) if chunks else pa.array([], type=pa.large_string())


class _TextPlaces:
    """Puts text chunks (in arrival order) in position order, block by block, letting
    each chunk go once its last row is written: the batches arrive nearly in order, so
    only a few chunks are alive twice at a time, where one ``take`` of the whole
    column held it twice."""

    def __init__(self, chunk_positions: list[np.ndarray], n: int) -> None:
        self.n = n
        self.offsets = np.cumsum([0, *map(len, chunk_positions)])
        # order[p]: the row, in the chunks concatenated, that belongs at position p.
        self.order = np.empty(n, dtype=np.int64)
        self.order[np.concatenate(chunk_positions)] = np.arange(n, dtype=np.int64)
        last_block = [int(p.max()) // TEXT_BLOCK for p in chunk_positions]
        self.done_after: dict[int, list[int]] = {}
        for chunk, block in enumerate(last_block):
            self.done_after.setdefault(block, []).append(chunk)

    def ordered(self, chunks: list[pa.Array]) -> Any:
        """The text column of ``chunks`` in position order (``chunks`` is emptied)."""
        out: list[pa.Array] = []
        held: list[pa.Array | None] = list(chunks)
        chunks.clear()
        for block, start in enumerate(range(0, self.n, TEXT_BLOCK)):
            rows = self.order[start : start + TEXT_BLOCK]
            # The chunks this block's rows are in (chunks between them may be gone).
            chunk_of = np.searchsorted(self.offsets, rows, side="right") - 1
            needed = np.unique(chunk_of)
            lengths = self.offsets[needed + 1] - self.offsets[needed]
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            local = rows - self.offsets[chunk_of] + starts[np.searchsorted(needed, chunk_of)]
            window = pa.chunked_array([held[j] for j in needed.tolist()], type=pa.large_string())
            out.extend(window.take(pa.array(local)).chunks)
            del window
            for chunk in self.done_after.get(block, ()):
                held[chunk] = None
        return Kind.TEXT.dtype.__from_arrow__(  # type: ignore[union-attr]
            pa.chunked_array(out, type=pa.large_string())
        )


def _global_codes(array: pd.Categorical, categories: dict[Any, int]) -> np.ndarray:
    """``array``'s codes in the builder's categories (``categories`` grows, in order of
    first appearance); only the categories a row uses are added."""
    codes = np.asarray(array.codes, dtype=np.int32)
    used = np.unique(codes[codes >= 0])
    lookup = np.full(len(array.categories) + 1, -1, dtype=np.int32)  # [-1] is NA
    for code, value in zip(used.tolist(), array.categories.take(used).tolist(), strict=True):
        lookup[code] = categories.setdefault(value, len(categories))
    return lookup[codes]


def _categorical(codes: np.ndarray, categories: dict[Any, int], empty: pd.Index) -> Any:
    """Codes over categories in first-seen order -> a Categorical with sorted categories,
    as :func:`concat_frames` gives (the same data always gets the same dtype)."""
    seen = pd.Index(pd.array(list(categories), dtype=empty.dtype))
    order = np.asarray(seen.argsort(), dtype=np.int64)
    rank = np.empty(len(order), dtype=np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    valid = codes >= 0
    codes[valid] = rank[codes[valid]]
    dtype = pd.CategoricalDtype(seen.take(order), ordered=False)
    return pd.Categorical.from_codes(codes, dtype=dtype)


def _utc_stamps(nanos: np.ndarray) -> Any:
    """int64 nanoseconds (NaT as int64 min) -> ``datetime64[ns, UTC]``, as the parser makes."""
    return pd.Series(nanos.view("datetime64[ns]"), copy=False).dt.tz_localize("UTC").array


def _only_used_categories(frame: pd.DataFrame) -> pd.DataFrame:
    """Stored rows with the categories of their own values, as a fetched batch has:
    the stored parts' other rows (not requested again) must not leave theirs behind."""
    changed = {
        column: frame[column].cat.remove_unused_categories()
        for column, dtype in frame.dtypes.items()
        if isinstance(dtype, pd.CategoricalDtype)
    }
    return frame.assign(**changed) if changed else frame


def _reordered(frame: pd.DataFrame, order: np.ndarray) -> pd.DataFrame:
    """``frame.iloc[order]``, one column at a time, each old column freed once copied.

    ``iloc`` on the whole frame holds the old and the new frame at once (the arrow string
    columns of the concatenation still share the batches' buffers): at a million rows that
    was the peak of a fetch, 2.6x the final frame's memory (benchmarks/bench_million.py).
    """
    index = frame.index.take(order)
    columns: dict[str, Any] = {}
    for name in list(frame.columns):
        columns[name] = frame.pop(name).array.take(order)
    return pd.DataFrame(columns, index=index, copy=False)
