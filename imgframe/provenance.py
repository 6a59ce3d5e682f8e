"""Where a frame came from: ``df.attrs["imgframe"]``, set by every fetch, kept by every file.

:func:`imgframe.fetch_images` and :func:`imgframe.fetch_fleet` (and their async forms)
return a frame whose ``attrs[ATTR]`` is one JSON-able dict:

``fetched_at``
    when the run **started** (UTC, ISO 8601 with ``Z``, to the second). The start, not
    the end: every answer is at least that recent, so an age measured from it ("stale",
    "stuck in queued") is never longer than it was when the image was read; it is also
    known before the first row, which names the run (a History partition) whatever
    happens next. ``finished_at`` is when the frame was made.
``asked``
    what was asked, never how (no concurrency, no token): ``endpoint`` (scheme, host,
    port and path only: no user info, query or fragment) or, for the ``cloud=``
    shorthand, ``cloud``/``region`` too; ``api`` asked and ``api_used`` (``"auto"``
    that switched to v2 says ``"v2"``); ``mode`` ``"ids"`` or ``"listing"`` (with
    ``verify_with_head``); ``include_deleted``. A fleet lists its ``targets`` (cloud,
    region, endpoint, api_used, rows, complete, failed) instead of one endpoint.
``counts``
    ``rows``, ``read``, ``not_found``, ``invalid``, ``unread`` of the run, from
    :func:`imgframe.outcome.run_outcome` (the one definition; they add up to ``rows``).
    They describe the run: a frame filtered afterwards keeps them.
``complete``
    every id got a definitive answer (and, for a fleet, no target failed).
``imgframe_version``, ``provenance_version``
    the writer, and the layout of this dict (:data:`VERSION`).
``resumed``
    only when the run resumed from a checkpoint: ``{"checkpoint_rows": N}``, the rows it
    held (read by an earlier, interrupted run; ``fetched_at`` is this run's start).

Keys this module does not know are kept as they are (later keys: members, profile).

The files: Parquet keeps the dict in the file's key-value metadata under
:data:`PARQUET_KEY` (beside pandas' own); CSV and JSON get a small sidecar
``NAME.meta.json`` next to the file (:func:`sidecar_path`: ``images.csv.meta.json``),
which also holds the size and SHA-256 of the file it describes, so a sidecar left next
to another version of the file is not believed. JSON uses a sidecar rather than an
embedded object so that the table stays a plain array of records that ``jq``,
``pandas.read_json`` and DuckDB read as before.

Provenance read from a file is data, not trusted: :func:`validated` checks every field
and a bad one is dropped with one :class:`~imgframe.ImgframeWarning` naming the file.

Examples
--------
>>> import imgframe
>>> df = imgframe.frame_from_headers([{"X-Image-Meta-Id": "a", "X-Image-Meta-Status": "active"}])
>>> df["http_status"] = pd.array([200], dtype="Int64")  # as a fetch answered it
>>> df = attach(df, build(df, fetched_at="2026-11-30T08:00:00Z",
...                       asked={"endpoint": "https://u:p@glance.example.com/?t=1"}))
>>> of(df)["asked"]["endpoint"], of(df)["counts"]["read"], of(df)["complete"]
('https://glance.example.com/', 1, True)
>>> fetched_at(df)
Timestamp('2026-11-30 08:00:00+0000', tz='UTC')
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import warnings
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pandas as pd

from imgframe.atomic import atomic_path
from imgframe.errors import ImgframeWarning
from imgframe.outcome import INVALID_ID, run_outcome

__all__ = [
    "ATTR",
    "COUNT_KEYS",
    "PARQUET_KEY",
    "SIDECAR_SUFFIX",
    "VERSION",
    "attach",
    "build",
    "counts",
    "fetched_at",
    "now_stamp",
    "of",
    "public_endpoint",
    "read_sidecar",
    "sidecar_path",
    "validated",
    "write_sidecar",
]

#: ``df.attrs`` key of the provenance dict.
ATTR = "imgframe"
#: Parquet key-value metadata key holding the provenance as JSON.
PARQUET_KEY = b"imgframe"
#: CSV and JSON files: the provenance is in ``NAME + SIDECAR_SUFFIX`` beside them.
SIDECAR_SUFFIX = ".meta.json"
#: The layout of the dict (``provenance_version``); a later layout gets a new number.
VERSION = 1
#: The keys of ``counts``, in the order they are shown.
COUNT_KEYS = ("rows", "read", "not_found", "invalid", "unread")

# A sidecar larger than this is not provenance imgframe wrote (a fleet of 1,000 targets
# is ~200 KB): refused before parsing, so a hostile file cannot make the reader hoard.
_MAX_SIDECAR_BYTES = 8 * 1024 * 1024
_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?Z")
_MAX_TEXT = 4096  # longest string a known field may hold (an endpoint URL, a label)


def now_stamp() -> str:
    """The current UTC time as provenance writes it: ISO 8601 to the second, with ``Z``.

    Examples
    --------
    >>> bool(_STAMP.fullmatch(now_stamp()))
    True
    """
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def public_endpoint(url: str | None) -> str | None:
    """``url`` with only scheme, host, port and path: user info, query and fragment are
    dropped (never a credential in provenance, whatever the caller passed).

    Examples
    --------
    >>> public_endpoint("https://admin:s3cret@ims.example.com:8443/v1?token=x#y")
    'https://ims.example.com:8443/v1'
    """
    if url is None:
        return None
    parts = urlsplit(str(url))
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:  # a port that is not a number: not a URL worth keeping
        port = None
    netloc = host if port is None else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def counts(df: pd.DataFrame) -> dict[str, int]:
    """``rows``, ``read``, ``not_found``, ``invalid`` and ``unread`` of a fetched frame
    (:func:`imgframe.outcome.run_outcome`'s definitions; they add up to ``rows``).

    Examples
    --------
    >>> df = pd.DataFrame({"http_status": pd.array([200, 404, None, 503], dtype="Int64"),
    ...                    "error": [None, "HTTP 404 Not Found", "invalid image id", "HTTP 503"]})
    >>> counts(df)
    {'rows': 4, 'read': 1, 'not_found': 1, 'invalid': 1, 'unread': 1}
    """
    outcome = run_outcome(df)
    status = df["http_status"]
    error = df["error"].astype("string")
    read = int((status.eq(200) & error.isna()).fillna(False).sum())
    not_found = int(status.eq(404).fillna(False).sum())
    invalid = int(error.eq(INVALID_ID).fillna(False).sum())
    return {
        "rows": outcome.rows,
        "read": read,
        "not_found": not_found,
        "invalid": invalid,
        "unread": outcome.unread,
    }


def build(
    df: pd.DataFrame,
    *,
    fetched_at: str,
    asked: Mapping[str, Any],
    finished_at: str | None = None,
    complete: bool | None = None,
    **more: Any,
) -> dict[str, Any]:
    """The provenance dict of ``df``, fetched from ``fetched_at`` on as ``asked`` says.

    ``complete`` None means :func:`imgframe.outcome.run_outcome`'s; ``more`` are further
    keys (``resumed``, ...). Endpoints in ``asked`` (and in its ``targets``) are reduced
    to :func:`public_endpoint`.
    """
    tally = counts(df)
    asked = dict(asked)
    if "endpoint" in asked:
        asked["endpoint"] = public_endpoint(asked["endpoint"])
    if "targets" in asked:
        asked["targets"] = [
            {**t, "endpoint": public_endpoint(t.get("endpoint"))} for t in asked["targets"]
        ]
    return {
        "provenance_version": VERSION,
        "fetched_at": fetched_at,
        "finished_at": finished_at or now_stamp(),
        "asked": asked,
        "counts": tally,
        "complete": tally["unread"] == 0 if complete is None else bool(complete),
        "imgframe_version": _version(),
        **more,
    }


def _version() -> str:
    # From the installed metadata, not ``imgframe.__version__``: importing the package
    # from here would make every module that records provenance import all of imgframe.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("imgframe")
    except PackageNotFoundError:  # pragma: no cover - a source tree without metadata
        return "unknown"


def attach(df: pd.DataFrame, provenance: Mapping[str, Any]) -> pd.DataFrame:
    """Set ``df.attrs[ATTR]`` (in place) and return ``df``."""
    df.attrs[ATTR] = dict(provenance)
    return df


def of(df: pd.DataFrame) -> dict[str, Any] | None:
    """The frame's provenance if it has one that :func:`validated` accepts, else None.

    Examples
    --------
    >>> of(pd.DataFrame()) is None, of(pd.DataFrame().pipe(attach, {"fetched_at": 1})) is None
    (True, True)
    """
    value = df.attrs.get(ATTR)
    if value is None:
        return None
    try:
        return validated(value)
    except ValueError:
        return None


def fetched_at(df: pd.DataFrame) -> pd.Timestamp | None:
    """When the run that made ``df`` started (UTC), from its provenance; None without one."""
    provenance = of(df)
    return None if provenance is None else _timestamp(provenance["fetched_at"])


def _timestamp(text: str) -> pd.Timestamp:
    return pd.Timestamp(text).tz_convert("UTC")


# ---------------------------------------------------------------------------- checking
def validated(value: Any) -> dict[str, Any]:
    """A deep copy of ``value`` if it is provenance as :func:`build` makes it; otherwise
    ``ValueError`` saying what is wrong (one line).

    Checked: a JSON object of JSON values (no NaN, no infinity, nesting at most 32 deep);
    ``fetched_at`` (and ``finished_at``, if present) an ISO 8601 UTC time with ``Z`` that
    pandas can hold; ``asked`` an object whose ``endpoint``, ``api``, ``mode``, ``cloud``
    and ``region`` are short strings or null; ``counts`` the five non-negative integers
    adding up to ``rows``; ``complete`` a boolean; ``imgframe_version`` a short string.
    Unknown keys are kept.

    Examples
    --------
    >>> validated({"fetched_at": "yesterday"})
    Traceback (most recent call last):
    ...
    ValueError: fetched_at must be an ISO 8601 UTC time ending in Z, got 'yesterday'
    """
    if not isinstance(value, Mapping):
        raise ValueError(f"provenance must be a JSON object, got {type(value).__name__}")
    _check_json(value, depth=0)
    out = copy.deepcopy(dict(value))
    for key in ("fetched_at", "finished_at"):
        if key == "finished_at" and key not in out:
            continue
        stamp = out.get(key)
        if not isinstance(stamp, str) or not _STAMP.fullmatch(stamp):
            raise ValueError(f"{key} must be an ISO 8601 UTC time ending in Z, got {_short(stamp)}")
        try:
            _timestamp(stamp)
        except (ValueError, OverflowError):
            raise ValueError(f"{key} is not a time pandas can hold: {_short(stamp)}") from None
    asked = out.get("asked")
    if not isinstance(asked, dict):
        raise ValueError("asked must be a JSON object")
    for key in ("endpoint", "api", "api_used", "mode", "cloud", "region"):
        if key in asked and not _is_short_text_or_none(asked[key]):
            raise ValueError(f"asked.{key} must be a short string or null")
    if "targets" in asked and not (
        isinstance(asked["targets"], list) and all(isinstance(t, dict) for t in asked["targets"])
    ):
        raise ValueError("asked.targets must be a list of objects")
    tally = out.get("counts")
    if not isinstance(tally, dict) or any(
        type(tally.get(k)) is not int or tally[k] < 0 for k in COUNT_KEYS
    ):
        raise ValueError(f"counts must hold the non-negative integers {list(COUNT_KEYS)}")
    if sum(tally[k] for k in COUNT_KEYS[1:]) != tally["rows"]:
        raise ValueError("counts do not add up to rows")
    if not isinstance(out.get("complete"), bool):
        raise ValueError("complete must be true or false")
    if (
        not _is_short_text_or_none(out.get("imgframe_version"))
        or out.get("imgframe_version") is None
    ):
        raise ValueError("imgframe_version must be a short string")
    return out


def _is_short_text_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, str) and len(value) <= _MAX_TEXT)


def _check_json(value: Any, depth: int) -> None:
    if depth > 32:
        raise ValueError("provenance is nested too deeply")
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("provenance holds a number that is not finite")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError("provenance keys must be strings")
            _check_json(item, depth + 1)
        return
    if isinstance(value, list | tuple):
        for item in value:
            _check_json(item, depth + 1)
        return
    raise ValueError(f"provenance holds a {type(value).__name__}, which JSON cannot")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def loads(text: str | bytes) -> dict[str, Any]:
    """Provenance from JSON text (a sidecar, Parquet metadata): :func:`validated` of it;
    ``ValueError`` (one line) for anything else, never an error from deep inside json.

    Examples
    --------
    >>> loads('{"fetched_at": NaN}')
    Traceback (most recent call last):
    ...
    ValueError: not JSON: NaN is not JSON
    """

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        value = json.loads(text, parse_constant=no_constant)
    except RecursionError:
        raise ValueError("not JSON: nested too deeply") from None
    except (ValueError, TypeError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"not JSON: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    return validated(value)


def dumps(provenance: Mapping[str, Any]) -> str:
    """JSON text of provenance (checked first: ``ValueError`` if it is not)."""
    return json.dumps(validated(provenance), ensure_ascii=False, sort_keys=True, allow_nan=False)


def usable(df: pd.DataFrame, where: str) -> dict[str, Any] | None:
    """What a writer stores: ``df``'s provenance, None if it has none; provenance that
    :func:`validated` refuses (attrs changed by hand) is not written, with one warning."""
    value = df.attrs.get(ATTR)
    if value is None:
        return None
    try:
        return validated(value)
    except ValueError as exc:
        warnings.warn(
            f"df.attrs[{ATTR!r}] is not provenance imgframe can write ({exc}); "
            f"{where} is written without it",
            ImgframeWarning,
            stacklevel=3,
        )
        return None


def ignored(source: str | os.PathLike[str], why: str) -> None:
    """One warning: the provenance of ``source`` is not used."""
    warnings.warn(
        f"ignoring the provenance of {str(source)!r}: {why}", ImgframeWarning, stacklevel=3
    )


# ------------------------------------------------------------------------------ sidecar
def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """Where the provenance of a CSV or JSON file is kept: the file name + ``.meta.json``.

    Examples
    --------
    >>> sidecar_path("out/images.csv")
    PosixPath('out/images.csv.meta.json')
    """
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _digest(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_sidecar(
    provenance: Mapping[str, Any] | None, data: Path, target: str | os.PathLike[str]
) -> None:
    """Write (atomically) the sidecar of ``target``, whose content is the finished file
    ``data`` (its temporary name, before the rename); None removes a sidecar left by an
    earlier write, which would describe other rows.

    Called between writing ``data`` and renaming it over ``target``: a crash after the
    sidecar's rename leaves a sidecar whose digest names the new file beside the old
    one, and :func:`read_sidecar` does not believe it.
    """
    side = sidecar_path(target)
    if provenance is None:
        side.unlink(missing_ok=True)
        return
    document = {
        "imgframe": validated(provenance),
        "file": {"name": Path(target).name, "size": data.stat().st_size, "sha256": _digest(data)},
    }
    with atomic_path(side) as tmp:
        tmp.write_text(
            json.dumps(document, ensure_ascii=False, sort_keys=True, indent=1) + "\n",
            encoding="utf-8",
        )


def read_sidecar(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The provenance in the sidecar of ``path``; None when there is none (silently) or
    when it cannot be believed (one :class:`~imgframe.ImgframeWarning` naming it): not
    readable, not provenance, or written for another version of the file."""
    path = Path(path)
    side = sidecar_path(path)
    try:
        size = side.stat().st_size
        if size > _MAX_SIDECAR_BYTES:
            ignored(side, f"{size:,} bytes is too large for provenance")
            return None
        raw = side.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        ignored(side, exc.strerror or type(exc).__name__)
        return None
    try:
        document = _sidecar_document(raw)
        if document["file"]["size"] != path.stat().st_size or document["file"]["sha256"] != _digest(
            path
        ):
            raise ValueError(f"it was written for another version of {path.name}")
        return document["imgframe"]
    except ValueError as exc:
        ignored(side, str(exc))
        return None


def _sidecar_document(raw: bytes) -> dict[str, Any]:
    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        document = json.loads(raw.decode("utf-8"), parse_constant=no_constant)
    except RecursionError:
        raise ValueError("not JSON: nested too deeply") from None
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not JSON ({str(exc).splitlines()[0] if str(exc) else exc})") from None
    if not isinstance(document, dict):
        raise ValueError("not a provenance sidecar (a JSON object)")
    described = document.get("file")
    if not (
        isinstance(described, dict)
        and type(described.get("size")) is int
        and isinstance(described.get("sha256"), str)
    ):
        raise ValueError("it does not say which file it describes (file.size, file.sha256)")
    return {"imgframe": validated(document.get("imgframe")), "file": described}
