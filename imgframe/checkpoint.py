"""Durable fetches: finished rows on disk as they arrive, so an interrupted run resumes.

``fetch_images(..., checkpoint=FOLDER)`` keeps in ``FOLDER``:

``_imgframe_checkpoint.json``
    the manifest: what was asked (:class:`Manifest`: endpoint, or cloud/region and their
    endpoint; api; include_deleted; members; a digest of the ids or ``"listing"``; how many ids;
    the imgframe version and the time it was made). A later call with another request
    is refused with one :class:`~imgframe.CheckpointError` naming what differs.
``part-000001.parquet``, ``part-000002.parquet``, ...
    the rows with a definitive answer (200, 404, invalid id: :mod:`imgframe.outcome`),
    one part per batch of at most :data:`FLUSH_ROWS` rows, written at least every
    :data:`FLUSH_SECONDS` while rows arrive, by :func:`imgframe.io.to_parquet` (the
    frame's own columns and dtypes, ``id`` as a column). Each part is written under a
    temporary name and renamed (:func:`imgframe.atomic.atomic_path`), so ``kill -9`` at
    any moment leaves whole parts plus at most one temporary file, which readers skip
    (its name starts with ``.``) and the next run deletes.
``.lock``
    held (``flock``) by the run using the folder: a second run on the same folder at the
    same time is refused instead of doubling the work.

The folder is a plain Parquet dataset: ``pyarrow.dataset.dataset(FOLDER)`` and
``pandas.read_parquet(FOLDER)`` read the parts (they skip names starting with ``_`` or
``.``). A fleet checkpoint (``fetch_fleet(..., checkpoint=FOLDER)``) has one such
folder per target, ``cloud=<cloud>/region=<region>`` (Hive partitioning, values
URL-quoted, a missing region ``__HIVE_DEFAULT_PARTITION__``), so
``pyarrow.dataset.dataset(FOLDER, partitioning="hive")`` reads the whole fleet with
``cloud`` and ``region`` (``pandas.read_parquet`` too, unless a region is missing:
pyarrow cannot yet unify the dictionaries it infers for a partition with nulls).

Only definitive rows are stored: a transient failure is asked again by the next run.
A part that cannot be read (which renaming whole files rules out, unless the disk or a
person damaged it) is skipped with a :class:`~imgframe.CheckpointWarning`: its ids are
simply fetched again.

Examples
--------
>>> import tempfile
>>> folder = tempfile.mkdtemp() + "/ckpt"
>>> facts = Manifest.for_fetch(endpoint="http://127.0.0.1:9292", api="v1", ids=["a", "b"])
>>> with Checkpoint.open(folder, facts) as ckpt:
...     len(ckpt.load())
0
>>> read_manifest(folder).id_count, read_manifest(folder).rows
(2, 0)
>>> remove_checkpoint(folder)
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from imgframe.atomic import TEMP_SUFFIX, atomic_path
from imgframe.errors import CheckpointError, CheckpointWarning, InvalidInputError
from imgframe.outcome import definitive_mask

try:  # POSIX; without it (Windows) a folder is simply not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "FLUSH_ROWS",
    "FLUSH_SECONDS",
    "MANIFEST_NAME",
    "Checkpoint",
    "Manifest",
    "fleet_folder",
    "ids_digest",
    "read_manifest",
    "remove_checkpoint",
    "restored_positions",
    "target_folder",
]

MANIFEST_NAME = "_imgframe_checkpoint.json"
LOCK_NAME = ".lock"
FORMAT = 1
#: A part is written once this many rows are waiting (the fetch's batch size) ...
FLUSH_ROWS = 10_000
#: ... or when the oldest waiting row is this many seconds old.
FLUSH_SECONDS = 10.0
#: Folder of each target of a fleet checkpoint; a region of None is Hive's null.
_NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
_PART = re.compile(r"part-(\d{6,})\.parquet")
_LISTING = "listing"


def ids_digest(ids: Sequence[str]) -> str:
    """``sha256:<hex>`` of the distinct ids, whatever their order.

    The same ids in another order resume the same checkpoint: rows are matched by id,
    and the frame follows the order of the call that returns it.

    Examples
    --------
    >>> ids_digest(["b", "a"]) == ids_digest(["a", "b"]) != ids_digest(["a"])
    True
    """
    digest = hashlib.sha256()
    # JSON keeps the ids apart whatever characters they hold; in chunks, so a million
    # ids never make one 40 MB string.
    ordered = sorted(ids)
    for start in range(0, len(ordered), 65_536):
        digest.update(json.dumps(ordered[start : start + 65_536]).encode("ascii"))
        digest.update(b"\n")
    return "sha256:" + digest.hexdigest()


@dataclass(frozen=True)
class Manifest:
    """What a checkpoint was made for, as stored in its ``_imgframe_checkpoint.json``.

    ``kind`` is ``"fetch"`` (one endpoint) or ``"fleet"`` (a folder of targets).
    ``ids`` is ``"sha256:..."`` (:func:`ids_digest` of the requested ids) or
    ``"listing"`` (``ids=None``: every image listed); ``id_count`` is None for a listing.
    ``include_deleted`` is None with explicit ids (every id named is asked, deleted or
    not). ``members``: the members of each image were read too (a manifest written
    before it existed reads as False). ``rows`` and ``parts`` are not stored:
    :func:`read_manifest` counts them from the parts (a fleet's from all its targets).

    Examples
    --------
    >>> m = Manifest.for_fetch(endpoint="http://127.0.0.1:9292/v1", api="v1", ids=None)
    >>> m.endpoint, m.ids, m.include_deleted
    ('http://127.0.0.1:9292', 'listing', False)
    """

    kind: Literal["fetch", "fleet"]
    api: str
    ids: str
    id_count: int | None
    include_deleted: bool | None
    endpoint: str | None = None
    cloud: str | None = None
    region: str | None = None
    imgframe_version: str = ""
    created: str = ""
    format: int = FORMAT
    members: bool = False
    rows: int = dataclasses.field(default=0, compare=False)
    parts: int = dataclasses.field(default=0, compare=False)

    @classmethod
    def for_fetch(
        cls,
        *,
        endpoint: str | None,
        api: str,
        ids: Sequence[str] | None,
        include_deleted: bool = False,
        cloud: str | None = None,
        region: str | None = None,
        kind: Literal["fetch", "fleet"] = "fetch",
        digest: str | None = None,
        members: bool = False,
    ) -> Manifest:
        """The manifest of a call; ``ids`` are the normalized ids (None: the listing)."""
        from imgframe.glance import normalize_endpoint  # the parsers behind glance: only when used

        return cls(
            kind=kind,
            api=api,
            ids=_LISTING if ids is None else (digest or ids_digest(ids)),
            id_count=None if ids is None else len(ids),
            include_deleted=bool(include_deleted) if ids is None else None,
            endpoint=None if endpoint is None else normalize_endpoint(endpoint),
            cloud=cloud,
            region=region,
            imgframe_version=_version(),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            members=bool(members),
        )

    def for_target(self, *, endpoint: str, cloud: str, region: str | None) -> Manifest:
        """A fleet manifest narrowed to one of its targets."""
        from imgframe.glance import normalize_endpoint

        return dataclasses.replace(
            self,
            kind="fetch",
            endpoint=normalize_endpoint(endpoint),
            cloud=cloud,
            region=region,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        )

    def describe(self) -> str:
        """One line for people: what was asked, how much is stored.

        Examples
        --------
        >>> Manifest("fetch", "v1", "listing", None, False, endpoint="http://h").describe()
        'every listed image (deleted ones not listed) of http://h, api v1: 0 rows stored in 0 parts'
        """
        if self.ids == _LISTING:
            deleted = "included" if self.include_deleted else "not listed"
            what = f"every listed image (deleted ones {deleted})"
        else:
            what = f"{self.id_count:,} ids ({self.ids[:19]}...)"
        where = self.endpoint or "several targets"
        if self.cloud is not None:
            label = self.cloud if self.region is None else f"{self.cloud}/{self.region}"
            where = f"{label} ({self.endpoint})"
        made = f", made {self.created} by imgframe {self.imgframe_version}" if self.created else ""
        return (
            f"{what} of {where}, api {self.api}: {self.rows:,} rows stored in "
            f"{self.parts:,} parts{made}"
        )

    def _stored(self) -> dict[str, Any]:
        facts = dataclasses.asdict(self)
        del facts["rows"], facts["parts"]
        return facts

    def _differences(self, asked: Manifest) -> list[str]:
        """What in ``asked`` differs from this (stored) manifest, as short phrases."""
        out: list[str] = []
        if self.format != asked.format:
            out.append(f"format {self.format} (this imgframe writes format {asked.format})")
        if self.kind != asked.kind:
            out.append(f"it is a {self.kind} checkpoint, this call is a {asked.kind}")
        for name in ("endpoint", "cloud", "region", "api", "members"):
            mine, theirs = getattr(self, name), getattr(asked, name)
            if mine != theirs:
                out.append(f"{name} {mine!r} (this call: {theirs!r})")
        if self.ids != asked.ids:
            out.append(f"ids: it holds {_what_ids(self)}, this call asks {_what_ids(asked)}")
        elif self.include_deleted != asked.include_deleted:
            out.append(
                f"include_deleted={self.include_deleted} "
                f"(this call: include_deleted={asked.include_deleted})"
            )
        return out


def _what_ids(manifest: Manifest) -> str:
    if manifest.ids == _LISTING:
        return "the listing (ids=None)"
    return f"{manifest.id_count:,} ids with digest {manifest.ids[:19]}..."


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("imgframe")
    except PackageNotFoundError:  # pragma: no cover - a source tree without metadata
        return "unknown"


def _manifest_path(folder: Path) -> Path:
    return folder / MANIFEST_NAME


def _load_manifest(folder: Path) -> Manifest | None:
    path = _manifest_path(folder)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint manifest {str(path)!r}: {exc}") from None
    try:
        facts = json.loads(text)
        known = {f.name for f in dataclasses.fields(Manifest)} - {"rows", "parts"}
        return Manifest(**{k: v for k, v in facts.items() if k in known})
    except (ValueError, TypeError) as exc:
        raise CheckpointError(
            f"{str(path)!r} is not an imgframe checkpoint manifest ({exc}): "
            "delete that checkpoint folder or use another one"
        ) from None


def _write_manifest(folder: Path, manifest: Manifest) -> None:
    with atomic_path(_manifest_path(folder)) as tmp:
        tmp.write_text(json.dumps(manifest._stored(), indent=1) + "\n", encoding="utf-8")


def _parts(folder: Path) -> list[tuple[int, Path]]:
    found = []
    for entry in folder.iterdir():
        match = _PART.fullmatch(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def _open_folder(path: str | os.PathLike[str], asked: Manifest) -> Path:
    """Create ``path`` with ``asked`` as its manifest, or check that its manifest is it."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"checkpoint {str(folder)!r} is a file, not a folder")
    try:
        folder.mkdir(exist_ok=True)
    except FileNotFoundError:
        raise CheckpointError(
            f"cannot create checkpoint folder {str(folder)!r}: its parent folder does not exist"
        ) from None
    except OSError as exc:
        raise CheckpointError(f"cannot create checkpoint folder {str(folder)!r}: {exc}") from None
    stored = _load_manifest(folder)
    if stored is None:
        strangers = [
            e.name for e in folder.iterdir() if e.name != LOCK_NAME and not _is_temp(e.name)
        ]
        if strangers:
            raise CheckpointError(
                f"{str(folder)!r} is not empty and is not an imgframe checkpoint "
                f"(it holds {', '.join(sorted(strangers)[:3])}...): give a new or empty "
                "folder as the checkpoint"
            )
        _write_manifest(folder, asked)
        return folder
    differences = stored._differences(asked)
    if differences:
        raise CheckpointError(
            f"checkpoint {str(folder)!r} was made for another request: "
            + "; ".join(differences)
            + ". Use another checkpoint folder, or delete this one to start over"
        )
    return folder


def _is_temp(name: str) -> bool:
    return name.endswith(TEMP_SUFFIX)


class Checkpoint:
    """One fetch's checkpoint folder, open for reading its rows and appending parts.

    :meth:`open` creates the folder (its parent must exist) or checks that it was made
    for the same request (raising :class:`~imgframe.CheckpointError` otherwise), takes
    its lock and removes temporary files a killed run left. :meth:`load` returns the
    stored rows; :meth:`append` queues a part, written on a background thread so the
    event loop does not wait for Parquet and ``fsync``; :meth:`close` waits until every
    queued part is on disk and releases the lock. Use it as a context manager.

    Examples
    --------
    >>> import tempfile
    >>> from imgframe.frame import frame_from_headers
    >>> folder = tempfile.mkdtemp() + "/ckpt"
    >>> facts = Manifest.for_fetch(endpoint="http://127.0.0.1:1", api="v1", ids=["a", "b"])
    >>> rows = frame_from_headers([{"X-Image-Meta-Id": "a"}, {"X-Image-Meta-Id": "b"}])
    >>> rows["http_status"] = pd.array([200, 503], dtype="Int64")
    >>> with Checkpoint.open(folder, facts) as ckpt:
    ...     ckpt.append(rows)                     # 503 is not final: not stored
    >>> with Checkpoint.open(folder, facts) as ckpt:
    ...     ckpt.load().index.tolist()
    ['a']
    """

    def __init__(self, folder: Path, manifest: Manifest, lock: Any) -> None:
        self.path = folder
        self.manifest = manifest
        self._lock = lock
        self._next = max((n for n, _ in _parts(folder)), default=0) + 1
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: list[concurrent.futures.Future[None]] = []
        #: Rows queued by :meth:`append` in this run (written or on their way).
        self.rows_appended = 0

    @classmethod
    def open(cls, path: str | os.PathLike[str], manifest: Manifest) -> Checkpoint:
        """Open (or create) the checkpoint at ``path`` for the request ``manifest``."""
        folder = _open_folder(path, manifest)
        lock = _lock(folder)
        try:
            for entry in folder.iterdir():  # a killed run's half-written part
                if _is_temp(entry.name):
                    with contextlib.suppress(OSError):
                        entry.unlink()
            stored = _load_manifest(folder)
            return cls(folder, stored or manifest, lock)
        except BaseException:
            _unlock(lock)
            raise

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:  # an error is already on its way: do not hide it behind a write error
            with contextlib.suppress(CheckpointError):
                self.close()

    def load(self) -> pd.DataFrame:
        """The stored rows (definitive answers only), indexed by ``id``, one row per id."""
        from imgframe.frame import concat_frames, empty_frame
        from imgframe.io import read_parquet

        expected = list(empty_frame().columns)
        frames = []
        for _, part in _parts(self.path):
            try:
                frame = read_parquet(part)
            except (OSError, pa.ArrowException, InvalidInputError, ValueError) as exc:
                warnings.warn(
                    f"checkpoint part {str(part)!r} cannot be read ({type(exc).__name__}: "
                    f"{exc}); its images will be fetched again",
                    CheckpointWarning,
                    stacklevel=3,
                )
                continue
            if list(frame.columns) != expected:
                raise CheckpointError(
                    f"checkpoint part {str(part)!r} has other columns than this imgframe's "
                    f"frame (written by imgframe {self.manifest.imgframe_version}?): "
                    "delete the checkpoint folder to start over"
                )
            frames.append(frame)
        if not frames:
            return empty_frame()
        stored = concat_frames(frames)
        keep = definitive_mask(stored) & ~stored.index.duplicated(keep="last")
        return stored[keep] if not keep.all() else stored

    def append(self, frame: pd.DataFrame) -> None:
        """Queue ``frame``'s definitive rows as the next part (written in the background).

        Raises :class:`~imgframe.CheckpointError` if an earlier part could not be written.
        """
        self._raise_failed()
        final = definitive_mask(frame)
        if not final.any():
            return
        # A frame of its own: the caller goes on with ``frame`` (the fetch pops its
        # columns when reordering) while the writer thread reads these rows.
        rows = frame.copy(deep=False) if final.all() else frame[final]
        if self._writer is None:
            self._writer = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="imgframe-checkpoint"
            )
        part = self.path / f"part-{self._next:06d}.parquet"
        self._next += 1
        self.rows_appended += len(rows)
        self._pending.append(self._writer.submit(_write_part, rows, part))

    def _raise_failed(self) -> None:
        still = []
        for future in self._pending:
            if not future.done():
                still.append(future)
            elif future.exception() is not None:
                exc = future.exception()
                self._pending = [f for f in self._pending if f is not future]
                raise CheckpointError(
                    f"cannot write checkpoint part in {str(self.path)!r}: "
                    f"{type(exc).__name__}: {exc}"
                )
        self._pending = still

    def flush(self) -> None:
        """Wait until every queued part is on disk."""
        for future in list(self._pending):
            with contextlib.suppress(Exception):
                future.result()
        self._raise_failed()

    def close(self) -> None:
        """Wait for the queued parts, stop the writer thread and release the lock."""
        try:
            self.flush()
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None
            _unlock(self._lock)
            self._lock = None

    def remove(self) -> None:
        """Delete this checkpoint (closing it first); see :func:`remove_checkpoint`."""
        self.close()
        remove_checkpoint(self.path)


def _write_part(rows: pd.DataFrame, part: Path) -> None:
    from imgframe.io import to_parquet

    with atomic_path(part) as tmp:
        to_parquet(rows, tmp)


def _lock(folder: Path) -> Any:
    if fcntl is None:  # pragma: no cover
        return None
    handle = open(folder / LOCK_NAME, "a+b")  # noqa: SIM115 - held until close()
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise CheckpointError(
            f"checkpoint {str(folder)!r} is in use by another running fetch; wait for it "
            "to end, or use another checkpoint folder"
        ) from None
    return handle


def _unlock(handle: Any) -> None:
    if handle is not None:
        handle.close()  # closing the file releases the flock


# ----------------------------------------------------------------------------- fleets
def fleet_folder(path: str | os.PathLike[str], asked: Manifest) -> Path:
    """Create or check a fleet checkpoint's top folder; its targets get subfolders."""
    return _open_folder(path, asked)


def target_folder(root: Path, cloud: str, region: str | None) -> Path:
    """``root/cloud=<cloud>/region=<region>``: one target's checkpoint in a fleet's.

    Examples
    --------
    >>> target_folder(Path("ck"), "lab", "east/1").as_posix()
    'ck/cloud=lab/region=east%2F1'
    >>> target_folder(Path("ck"), "lab", None).as_posix()
    'ck/cloud=lab/region=__HIVE_DEFAULT_PARTITION__'
    """
    region_value = _NULL_PARTITION if region is None else quote(region, safe="")
    return root / f"cloud={quote(cloud, safe='')}" / f"region={region_value}"


def _target_folders(root: Path) -> list[Path]:
    return sorted(
        p for p in root.glob("cloud=*/region=*") if p.is_dir() and _manifest_path(p).exists()
    )


# ----------------------------------------------------------------------------- for the CLI
def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """What the checkpoint at ``path`` holds: its manifest, with ``rows`` and ``parts``
    counted from its parts (Parquet footers only: fast for any size).

    Raises :class:`~imgframe.CheckpointError` when ``path`` is not a checkpoint.

    Examples
    --------
    >>> read_manifest("/no/such/checkpoint")
    Traceback (most recent call last):
    ...
    imgframe.errors.CheckpointError: '/no/such/checkpoint' is not an imgframe checkpoint ...
    """
    folder = Path(path)
    manifest = _load_manifest(folder) if folder.is_dir() else None
    if manifest is None:
        raise CheckpointError(
            f"{str(folder)!r} is not an imgframe checkpoint (no {MANIFEST_NAME} in it)"
        )
    folders = _target_folders(folder) if manifest.kind == "fleet" else [folder]
    rows = parts = 0
    for one in folders:
        for _, part in _parts(one):
            with contextlib.suppress(OSError, pa.ArrowException):
                rows += pq.ParquetFile(part).metadata.num_rows
                parts += 1
    return dataclasses.replace(manifest, rows=rows, parts=parts)


def remove_checkpoint(path: str | os.PathLike[str]) -> None:
    """Delete the checkpoint at ``path``: its manifest, parts, lock and temporary files
    (and a fleet's target folders), then the folder if nothing else is left in it.

    Files imgframe did not write are left alone (and so is the folder holding them).
    A folder that does not exist is fine; one that is not a checkpoint raises
    :class:`~imgframe.CheckpointError` and is not touched.

    Examples
    --------
    >>> remove_checkpoint("/no/such/checkpoint")
    """
    folder = Path(path)
    if not folder.exists():
        return
    manifest = read_manifest(folder)
    targets = _target_folders(folder) if manifest.kind == "fleet" else []
    for one in [*targets, folder]:
        for entry in list(one.iterdir()):
            if _PART.fullmatch(entry.name) or _is_temp(entry.name) or entry.name == LOCK_NAME:
                entry.unlink(missing_ok=True)
        _manifest_path(one).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: someone else's files are in it
            one.rmdir()
        if one is not folder:
            with contextlib.suppress(OSError):
                one.parent.rmdir()  # the cloud=... folder, once its regions are gone


def restored_positions(
    stored: pd.DataFrame, requested: Sequence[str], start: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Which stored rows answer which requested ids: ``(rows, positions)``.

    ``rows`` index ``stored``; ``positions`` are those ids' positions in ``requested``
    (plus ``start``). Stored rows of ids not requested are left out.

    Examples
    --------
    >>> stored = pd.DataFrame({"x": [1, 2]}, index=pd.Index(["b", "z"], name="id"))
    >>> rows, positions = restored_positions(stored, ["a", "b", "c"], start=10)
    >>> rows.tolist(), positions.tolist()
    ([0], [11])
    """
    if not len(stored) or not len(requested):
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    found = stored.index.get_indexer(pd.Index(requested, dtype=stored.index.dtype))
    positions = np.flatnonzero(found >= 0)
    return found[positions].astype(np.int64), positions.astype(np.int64) + start
