"""What changed between two snapshots of a fleet: :func:`diff` (``imgframe.diff``).

The module is ``changes`` and the function ``diff``, so that ``imgframe.diff`` (the
function, re-exported) never shadows a submodule of the same name.

Each image is in one of these states in each snapshot: **absent** (no row), **read and
live** (a definitive 200, ``imgframe/outcome.py``, not deleted), **read but deleted**
(``deleted`` true or status ``deleted``/``pending_delete``: what an admin token sees of a
deleted image), **not found** (a definitive 404), an **invalid id** (never sent), or
**unread** (any other row: a timeout, a 5xx, a 401, an answer that lied, a row never
sent). A frame built from headers and never fetched (no ``http_status``, no ``error``)
counts as read, as in :mod:`imgframe.audits`. Then, per image:

- unread in either snapshot: ``unknown`` (never ``disappeared``, never a field change);
- live only in the newer one: ``appeared``; live in the older one and absent, 404 or
  deleted in the newer: ``disappeared`` (so a deleted image disappears whether the newer
  snapshot lists without deleted images, asks by id with a project token (404) or with an
  admin token (a deleted row));
- an invalid id is neither; an image gone in both is nothing;
- live in both: one row per field change, in :data:`CHANGES` order.

Field changes compare only what both rows have: the Glance v2-only columns (``os_hash_*``,
``visibility``) only when both rows came from v2 (``visibility`` known), optional columns
a table lacks are NA on both sides (``schema.with_optional_columns``), and property keys
case-insensitively when one row came from v1 (lower-cased keys) and the other from v2.
NA equals NA; ``is_public`` and ``protected`` NA count as false, as the audit rules read
them. ``request_id``, ``http_status``/``error`` of two read rows, the timestamps, names,
sizes, formats and boot requirements are not changes in this vocabulary.

Examples
--------
>>> import imgframe
>>> def snapshot(**fields):
...     headers = {"x-image-meta-id": "a", "x-image-meta-status": "active",
...                "x-image-meta-owner": "p1", "x-image-meta-is_public": "False"}
...     headers |= {f"x-image-meta-{k}": v for k, v in fields.items()}
...     return imgframe.frame_from_headers([headers])
>>> changes = diff(snapshot(), snapshot(owner="p2", is_public="True"))
>>> changes[["image_id", "change", "owner", "detail"]]
  image_id          change owner                 detail
0        a   became_public    p2  is_public False -> True
1        a   owner_changed    p2          owner p1 -> p2
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from imgframe.audits import SIGNATURE_KEYS
from imgframe.errors import ConfigError, InvalidInputError
from imgframe.outcome import DEFINITIVE_STATUSES, INVALID_ID, definitive_mask
from imgframe.schema import FLEET_INDEX, field, required_columns, with_optional_columns

__all__ = ["CHANGES", "CHANGE_COLUMNS", "CHANGE_DTYPE", "change_columns", "diff", "summary"]

#: Every change :func:`diff` reports, in the order its rows are sorted.
CHANGES: tuple[str, ...] = (
    "appeared",
    "disappeared",
    "became_public",
    "became_private",
    "protection_removed",
    "protection_added",
    "owner_changed",
    "status_changed",
    "checksum_changed",
    "signature_removed",
    "properties_changed",
    # Last: not a change but a row that could not be compared; listed after what to act on.
    "unknown",
)
#: The ``change`` column's dtype: a category over :data:`CHANGES`, ordered so.
CHANGE_DTYPE = pd.CategoricalDtype(list(CHANGES), ordered=True)
#: The columns of :func:`diff`'s frame for single-endpoint snapshots, in order.
CHANGE_COLUMNS: list[str] = ["image_id", "change", "name", "owner", "detail", "before", "after"]

_STRING = pd.StringDtype("pyarrow")
_FLEET_COLUMNS = ("cloud", "region", "id")
_GONE_STATUSES = ("deleted", "pending_delete")
# How many property keys one list of a detail names before "and N more".
_KEYS_SHOWN = 5
# Longest property value quoted in before/after (signatures, 64 KiB values...).
_VALUE_SHOWN = 100
_DIGEST_SHOWN = 16  # characters of an os_hash_value quoted in a detail

# An image's state in one snapshot.
_ABSENT, _LIVE, _GONE, _NOT_FOUND, _INVALID, _UNREAD = range(6)
_MISSING = (_ABSENT, _NOT_FOUND, _GONE)  # what "not there any more" means


def change_columns(df: pd.DataFrame) -> list[str]:
    """The columns :func:`diff` returns for snapshots like ``df``: :data:`CHANGE_COLUMNS`,
    and for fleet frames ``cloud`` and ``region`` first and ``key`` last.

    Examples
    --------
    >>> from imgframe.frame import empty_frame
    >>> change_columns(empty_frame()) == CHANGE_COLUMNS
    True
    """
    if not _is_fleet(df):
        return CHANGE_COLUMNS
    return ["cloud", "region", *CHANGE_COLUMNS, FLEET_INDEX]


def _is_fleet(df: pd.DataFrame) -> bool:
    # The audits' definition (imgframe/audits.py): indexed by key, with cloud/region/id.
    return df.index.name == FLEET_INDEX and all(c in df.columns for c in _FLEET_COLUMNS)


def _snapshot(df: pd.DataFrame, which: str) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise InvalidInputError(f"the {which} snapshot is a {type(df).__name__}, not a DataFrame")
    missing = [c for c in required_columns() if c not in df.columns]
    if missing:
        raise InvalidInputError(
            f"the {which} snapshot is not an imgframe images table: missing columns {missing}"
        )
    if not df.index.is_unique:
        raise InvalidInputError(
            f"the {which} snapshot has {int(df.index.duplicated().sum()):,} repeated "
            f"{df.index.name or 'index'} values: one row per image is needed"
        )
    return with_optional_columns(df)


def _states(df: pd.DataFrame) -> np.ndarray:
    """Each row's state (``_LIVE``, ``_GONE``, ...), by ``imgframe/outcome.py``'s rule."""
    status = df["http_status"]
    error = df["error"]
    no_error = error.isna().to_numpy(dtype=bool)
    # outcome's rule, asked only about the rows with an error (usually few): a row without
    # one is definitive exactly when it is a 200 or a 404, and the rule reads error as
    # text, which costs a Python string per row of a million-row category column.
    definitive = status.isin(DEFINITIVE_STATUSES).fillna(False).to_numpy(dtype=bool) & no_error
    with_error = np.flatnonzero(~no_error)
    definitive[with_error] = definitive_mask(df[["http_status", "error"]].iloc[with_error])
    invalid = np.zeros(len(df), dtype=bool)
    text = error.iloc[with_error].astype(_STRING)
    invalid[with_error] = text.eq(INVALID_ID).fillna(False).to_numpy(dtype=bool)
    http_200 = status.eq(200).fillna(False).to_numpy(dtype=bool)
    http_404 = status.eq(404).fillna(False).to_numpy(dtype=bool)
    never_fetched = (
        status.isna().to_numpy(dtype=bool) & no_error & df["status"].notna().to_numpy(dtype=bool)
    )
    read = (definitive & http_200) | never_fetched
    gone = df["deleted"].fillna(False).to_numpy(dtype=bool) | df["status"].isin(
        _GONE_STATUSES
    ).to_numpy(dtype=bool)
    state = np.full(len(df), _UNREAD, dtype=np.int8)
    state[read & ~gone] = _LIVE
    state[read & gone] = _GONE
    state[definitive & http_404 & ~invalid] = _NOT_FOUND
    state[invalid] = _INVALID
    return state


def _taken(df: pd.DataFrame, column: str, rows: np.ndarray) -> pd.Series:
    """``df[column]`` at positions ``rows`` (-1: NA), on a fresh 0..n-1 index."""
    values = df[column]
    if not (rows >= 0).all():
        text = pd.Series(pd.NA, index=range(len(rows)), dtype=_STRING)
        inside = rows >= 0
        text[inside] = values.take(rows[inside]).astype(_STRING).to_numpy()
        return text
    return values.take(rows).reset_index(drop=True)


def _as_text(values: pd.Series) -> pd.Series:
    return values.astype(_STRING).reset_index(drop=True)


def _codes(values: pd.Series, categories: pd.Index) -> np.ndarray:
    """Category codes of ``values`` in ``categories`` (-1 for NA)."""
    codes = values.cat.codes.to_numpy()
    # One more slot for NA's code -1, so the lookup needs no mask.
    mapped = np.append(categories.get_indexer(values.cat.categories.astype(object)), -1)
    return mapped[codes]


def _differs(before: pd.Series, after: pd.Series, column: str) -> np.ndarray:
    """Row-wise "not the same value", NA equal to NA, by the column's schema dtype;
    categories with different category sets compare by value."""
    if isinstance(before.dtype, pd.CategoricalDtype) or isinstance(
        after.dtype, pd.CategoricalDtype
    ):
        before, after = (s if isinstance(s.dtype, pd.CategoricalDtype) else s.astype("category")
                         for s in (before, after))  # fmt: skip
        categories = pd.Index(before.cat.categories.astype(object)).union(
            pd.Index(after.cat.categories.astype(object))
        )
        return _codes(before, categories) != _codes(after, categories)
    dtype = field(column).dtype
    try:
        before, after = before.astype(dtype), after.astype(dtype)
        unequal = before.ne(after)
    except (TypeError, ValueError):  # a user's column of another type: compare as text
        before, after = _as_text(before), _as_text(after)
        unequal = before.ne(after)
    both_na = before.isna().to_numpy(dtype=bool) & after.isna().to_numpy(dtype=bool)
    return unequal.fillna(True).to_numpy(dtype=bool) & ~both_na


def _flag(values: pd.Series) -> np.ndarray:
    """A boolean column as the audit rules read it: NA is false."""
    return values.astype("boolean").fillna(False).to_numpy(dtype=bool)


def _shown(values: pd.Series, none: str = "(none)") -> pd.Series:
    return _as_text(values).fillna(none)


def _names(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_KEYS_SHOWN])
    more = len(keys) - _KEYS_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


def _quoted(values: dict[str, Any]) -> Any:
    if not values:
        return pd.NA
    short = {
        key: text if len(text := str(value)) <= _VALUE_SHOWN else text[:_VALUE_SHOWN] + "..."
        for key, value in values.items()
    }
    return json.dumps(short, ensure_ascii=False, sort_keys=True)


def _properties(values: pd.Series) -> np.ndarray:
    out = values.to_numpy(dtype=object, copy=True)
    out[pd.isna(out)] = None  # pd.NA cannot be compared with ==
    return out


class _Changes:
    """The rows found so far, one part per change: the rows' positions in both frames
    (-1: not in that one) and their ``detail``, ``before`` and ``after`` texts."""

    def __init__(self) -> None:
        self.parts: list[tuple[str, np.ndarray, np.ndarray, Any, Any, Any]] = []

    def add(
        self, change: str, rows_b: np.ndarray, rows_a: np.ndarray, detail: Any, old: Any, new: Any
    ) -> None:
        if len(rows_b):
            self.parts.append((change, rows_b, rows_a, detail, old, new))


def _state_text(df: pd.DataFrame, rows: np.ndarray, states: np.ndarray) -> pd.Series:
    """One word or phrase per row for ``before``/``after``: the status of a read row,
    ``absent``, ``deleted``, ``not found (404)``, or why it could not be read."""
    out = pd.Series(pd.NA, index=range(len(rows)), dtype=_STRING)
    out[states == _ABSENT] = "absent"
    out[states == _NOT_FOUND] = "not found (404)"
    out[states == _INVALID] = INVALID_ID
    inside = rows >= 0
    status = _as_text(_taken(df, "status", np.where(inside, rows, -1)))
    out = out.mask(states == _LIVE, status.fillna("read"))
    out = out.mask(states == _GONE, "deleted (status " + status.fillna("(none)") + ")")
    unread = states == _UNREAD
    if unread.any():
        error = _as_text(_taken(df, "error", np.where(inside, rows, -1)))
        http = _as_text(_taken(df, "http_status", np.where(inside, rows, -1)))
        reason = error.fillna(("HTTP " + http).fillna("no HTTP answer"))
        out = out.mask(unread, reason)
    return out


def _presence(
    changes: _Changes,
    rows: tuple[np.ndarray, np.ndarray],
    states: tuple[np.ndarray, np.ndarray],
    before: pd.DataFrame,
    after: pd.DataFrame,
) -> None:
    """appeared, disappeared and unknown rows (``rows``: positions in both frames, -1 for
    none; ``states``: each side's state)."""
    (rb, ra), (sb, sa) = rows, states
    unknown = (sb == _UNREAD) | (sa == _UNREAD)
    appeared = ~unknown & (sa == _LIVE) & np.isin(sb, _MISSING)
    disappeared = ~unknown & (sb == _LIVE) & np.isin(sa, _MISSING)
    for change, mask in (("appeared", appeared), ("disappeared", disappeared)):
        rows_b, rows_a, state_b, state_a = rb[mask], ra[mask], sb[mask], sa[mask]
        old = _state_text(before, rows_b, state_b)
        new = _state_text(after, rows_a, state_a)
        side, state = ("older", state_b) if change == "appeared" else ("newer", state_a)
        text = old if change == "appeared" else new
        where = f" the {side} snapshot"
        detail = pd.Series(f"not in{where}", index=range(len(rows_b)), dtype=_STRING)
        detail = detail.mask(state == _NOT_FOUND, f"answered 404 in{where}")
        detail = detail.mask(state == _GONE, text + " in" + where)
        changes.add(change, rows_b, rows_a, detail, old, new)
    rows_b, rows_a, state_b, state_a = rb[unknown], ra[unknown], sb[unknown], sa[unknown]
    old = _state_text(before, rows_b, state_b)
    new = _state_text(after, rows_a, state_a)
    unread_b, unread_a = state_b == _UNREAD, state_a == _UNREAD
    detail = ("could not be read in the older snapshot (" + old + ")").where(
        ~unread_a, ("could not be read in the newer snapshot (" + new + ")")
    )
    both = "could not be read in either snapshot (older: " + old + "; newer: " + new + ")"
    detail = detail.mask(unread_b & unread_a, both)
    changes.add("unknown", rows_b, rows_a, detail, old, new)


def _fields(
    changes: _Changes, rb: np.ndarray, ra: np.ndarray, before: pd.DataFrame, after: pd.DataFrame
) -> None:
    """The field changes of images live in both snapshots (positions ``rb``, ``ra``):
    which rows changed is found over all of them, the sentences only for those rows."""

    def pair(column: str, at: np.ndarray | None = None) -> tuple[pd.Series, pd.Series]:
        rows_b, rows_a = (rb, ra) if at is None else (rb[at], ra[at])
        return _taken(before, column, rows_b), _taken(after, column, rows_a)

    v2 = pair("visibility")
    both_v2 = v2[0].notna().to_numpy(dtype=bool) & v2[1].notna().to_numpy(dtype=bool)
    masks: dict[str, np.ndarray] = {"visibility": both_v2 & _differs(*v2, "visibility")}
    public, protected = pair("is_public"), pair("protected")
    old_public, new_public = _flag(public[0]), _flag(public[1])
    old_protected, new_protected = _flag(protected[0]), _flag(protected[1])
    masks |= {
        "became_public": ~old_public & new_public,
        "became_private": old_public & ~new_public,
        "protection_removed": old_protected & ~new_protected,
        "protection_added": ~old_protected & new_protected,
        "owner_changed": _differs(*pair("owner"), "owner"),
        "status_changed": _differs(*pair("status"), "status"),
        "checksum": _differs(*pair("checksum"), "checksum"),
    }
    for column in ("os_hash_algo", "os_hash_value"):
        masks[column] = both_v2 & _differs(*pair(column), column)
    masks["checksum_changed"] = masks["checksum"] | masks["os_hash_algo"] | masks["os_hash_value"]
    changed = [c for c in CHANGES if c in masks]
    at = np.flatnonzero(np.logical_or.reduce([masks[c] for c in changed]))
    if len(at):
        masks = {name: mask[at] for name, mask in masks.items()}
        _field_sentences(changes, (rb[at], ra[at]), masks, lambda column: pair(column, at))
    _property_rows(changes, rb, ra, (before, after), v2)


def _field_sentences(
    changes: _Changes,
    rows: tuple[np.ndarray, np.ndarray],
    masks: dict[str, np.ndarray],
    pair: Callable[[str], tuple[pd.Series, pd.Series]],
) -> None:
    """The rows of :func:`_fields`' changes (``rows``: the changed images only)."""
    rb, ra = rows

    def add(change: str, detail: pd.Series, old: pd.Series, new: pd.Series) -> None:
        mask = masks[change]
        changes.add(change, rb[mask], ra[mask], detail[mask].reset_index(drop=True),
                    old[mask].reset_index(drop=True), new[mask].reset_index(drop=True))  # fmt: skip

    v2 = pair("visibility")
    public = pair("is_public")
    old, new = _shown(public[0], "unknown"), _shown(public[1], "unknown")
    detail = "is_public " + old + " -> " + new
    with_visibility = detail + "; visibility " + _shown(v2[0]) + " -> " + _shown(v2[1])
    detail = detail.where(~masks["visibility"], with_visibility)
    add("became_public", detail, old, new)
    add("became_private", detail, old, new)

    protected = pair("protected")
    old, new = _shown(protected[0], "unknown"), _shown(protected[1], "unknown")
    detail = "protected " + old + " -> " + new
    add("protection_removed", detail, old, new)
    add("protection_added", detail, old, new)

    for change, column in (("owner_changed", "owner"), ("status_changed", "status")):
        values = pair(column)
        old, new = _shown(values[0]), _shown(values[1])
        add(change, column + " " + old + " -> " + new, old, new)

    checksum = pair("checksum")
    detail = pd.Series("", index=range(len(rb)), dtype=_STRING)
    piece = "checksum " + _shown(checksum[0]) + " -> " + _shown(checksum[1])
    detail = detail.mask(masks["checksum"], piece)
    for column in ("os_hash_algo", "os_hash_value"):
        old_text, new_text = (_shown(v).str.slice(0, _DIGEST_SHOWN) for v in pair(column))
        if column == "os_hash_value":
            old_text, new_text = old_text + "...", new_text + "..."
        piece = column + " " + old_text + " -> " + new_text
        detail = detail.mask(masks[column], (detail + "; ").where(detail.ne(""), "") + piece)
    size = pair("size")
    resized = masks["checksum_changed"] & _differs(*size, "size")
    detail = detail.mask(resized, detail + "; size " + _shown(size[0]) + " -> " + _shown(size[1]))
    add("checksum_changed", detail, _shown(checksum[0]), _shown(checksum[1]))


def _property_rows(
    changes: _Changes,
    rb: np.ndarray,
    ra: np.ndarray,
    frames: tuple[pd.DataFrame, pd.DataFrame],
    visibility: tuple[pd.Series, pd.Series],
) -> None:
    """signature_removed and properties_changed: a Python loop over the rows whose
    properties differ only (dict equality is compared row-wise by numpy first)."""
    old_all = _properties(frames[0]["properties"].take(rb))
    new_all = _properties(frames[1]["properties"].take(ra))
    candidates = np.flatnonzero(old_all != new_all)
    # One row from v1 (keys lower-cased by the parser), the other from v2 (keys as sent).
    one_v1 = (visibility[0].isna() ^ visibility[1].isna()).to_numpy(dtype=bool)
    found: dict[str, tuple[list[int], list[str], list[Any], list[Any]]] = {
        "signature_removed": ([], [], [], []),
        "properties_changed": ([], [], [], []),
    }
    for row in candidates.tolist():
        old = old_all[row] if isinstance(old_all[row], dict) else {}
        new = new_all[row] if isinstance(new_all[row], dict) else {}
        if one_v1[row]:
            old = {str(k).lower(): v for k, v in old.items()}
            new = {str(k).lower(): v for k, v in new.items()}
        signature = [k for k in SIGNATURE_KEYS if old.get(k) and not new.get(k)]
        removed = sorted(k for k in old if k not in new and k not in signature)
        added = sorted(k for k in new if k not in old)
        changed = sorted(k for k in old if k in new and old[k] != new[k] and k not in signature)
        if signature:
            rows, details, olds, news = found["signature_removed"]
            rows.append(row)
            details.append("signature properties removed: " + ", ".join(signature))
            olds.append(_quoted({k: old[k] for k in signature}))
            news.append(_quoted({k: new[k] for k in signature if k in new}))
        if removed or added or changed:
            pieces = [
                f"{verb} {_names(keys)}"
                for verb, keys in (("added", added), ("removed", removed), ("changed", changed))
                if keys
            ]
            rows, details, olds, news = found["properties_changed"]
            rows.append(row)
            details.append("properties: " + "; ".join(pieces))
            olds.append(_quoted({k: old[k] for k in (*removed, *changed)}))
            news.append(_quoted({k: new[k] for k in (*added, *changed)}))
    for change, (rows, details, olds, news) in found.items():
        at = np.asarray(rows, dtype=np.int64)
        text = [pd.array(values, dtype=_STRING) for values in (details, olds, news)]
        changes.add(change, rb[at], ra[at], *text)


def diff(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """What changed from the ``before`` snapshot to the ``after`` one: one row per image
    and change (an image can have several), sorted by change (:data:`CHANGES` order),
    then image.

    Columns :data:`CHANGE_COLUMNS` (fleet frames: :func:`change_columns`): ``image_id``,
    ``change`` (category, :data:`CHANGE_DTYPE`), ``name`` and ``owner`` (the newer where
    known), ``detail`` (a sentence: ``owner p1 -> p2``, ``properties: added a; removed
    b``), ``before`` and ``after`` (the values, or the image's state: ``absent``, ``not
    found (404)``, the error of a row that could not be read). The module docstring says
    what each change means; two fleet frames are matched by ``key`` (cloud/region/id), a
    fleet frame and a single-endpoint frame cannot be compared (``ConfigError``).

    Examples
    --------
    >>> import imgframe
    >>> old = imgframe.frame_from_headers([
    ...     {"x-image-meta-id": "a", "x-image-meta-status": "active",
    ...      "x-image-meta-property-img_signature": "c2ln", "x-image-meta-property-os": "x"},
    ...     {"x-image-meta-id": "b", "x-image-meta-status": "active"},
    ... ])
    >>> new = imgframe.frame_from_headers([
    ...     {"x-image-meta-id": "a", "x-image-meta-status": "deactivated",
    ...      "x-image-meta-property-os": "y", "x-image-meta-property-arch": "arm"},
    ...     {"x-image-meta-id": "c", "x-image-meta-status": "active"},
    ... ])
    >>> diff(old, new)[["image_id", "change", "detail"]].to_string(index=False)
    ... # doctest: +NORMALIZE_WHITESPACE
    'image_id change detail\\n
           c appeared not in the older snapshot\\n
           b disappeared not in the newer snapshot\\n
           a status_changed status active -> deactivated\\n
           a signature_removed signature properties removed: img_signature\\n
           a properties_changed properties: added arch; changed os'
    """
    before = _snapshot(before, "older")
    after = _snapshot(after, "newer")
    fleet = _is_fleet(before)
    if fleet != _is_fleet(after):
        raise ConfigError(
            "cannot diff a fleet frame (fetch_fleet, indexed by cloud/region/id) with a "
            "single-endpoint frame (fetch_images, indexed by id): compare snapshots of one kind"
        )
    # Positions of each image in both frames (-1: not in that one): before's rows in its
    # order, then the images only the newer one has.
    index_b, index_a = before.index, after.index
    if index_b.dtype != index_a.dtype:
        index_b, index_a = index_b.astype(object), index_a.astype(object)
    if len(index_b) == len(index_a) and index_b.equals(index_a):
        in_after = np.arange(len(index_b))  # the same ids in the same order: no hash join
    else:
        in_after = index_a.get_indexer(index_b)
    only_after = np.ones(len(after), dtype=bool)
    only_after[in_after[in_after >= 0]] = False
    new_rows = np.flatnonzero(only_after)
    rb = np.concatenate([np.arange(len(before)), np.full(len(new_rows), -1)])
    ra = np.concatenate([in_after, new_rows])
    states_b, states_a = _states(before), _states(after)
    sb = np.where(rb >= 0, states_b[np.maximum(rb, 0)] if len(before) else _ABSENT, _ABSENT)
    sa = np.where(ra >= 0, states_a[np.maximum(ra, 0)] if len(after) else _ABSENT, _ABSENT)

    changes = _Changes()
    _presence(changes, (rb, ra), (sb, sa), before, after)
    live = (sb == _LIVE) & (sa == _LIVE)
    _fields(changes, rb[live], ra[live], before, after)
    return _frame(changes, before, after, fleet)


def _frame(changes: _Changes, before: pd.DataFrame, after: pd.DataFrame, fleet: bool) -> Any:
    columns = change_columns(before)
    if not changes.parts:
        empty = {c: pd.array([], dtype=_STRING) for c in columns}
        out = pd.DataFrame(empty)
        return out.astype(_types(fleet))[columns]
    rb = np.concatenate([part[1] for part in changes.parts])
    ra = np.concatenate([part[2] for part in changes.parts])
    change = np.concatenate(
        [np.full(len(part[1]), part[0], dtype=object) for part in changes.parts]
    )

    def text(position: int) -> pd.Series:
        pieces = [pd.Series(part[position], dtype=_STRING) for part in changes.parts]
        return pd.concat(pieces, ignore_index=True)

    def newer(column: str) -> pd.Series:
        return (
            _taken(after, column, ra)
            .astype(_STRING)
            .fillna(_taken(before, column, rb).astype(_STRING))
        )

    index_b = pd.Series(before.index.take(np.maximum(rb, 0)).astype(object) if len(before)
                        else np.full(len(rb), None, dtype=object))  # fmt: skip
    index_a = pd.Series(after.index.take(np.maximum(ra, 0)).astype(object) if len(after)
                        else np.full(len(ra), None, dtype=object))  # fmt: skip
    key = index_a.where(ra >= 0, index_b).astype(_STRING)
    data: dict[str, Any] = {
        "image_id": newer("id") if fleet else key,
        "change": pd.Categorical(change, dtype=CHANGE_DTYPE),
        "name": newer("name"),
        "owner": newer("owner"),
        "detail": text(3),
        "before": text(4),
        "after": text(5),
    }
    if fleet:
        data |= {"cloud": newer("cloud"), "region": newer("region"), FLEET_INDEX: key}
    out = pd.DataFrame(data).astype(_types(fleet))
    order = ["change", FLEET_INDEX if fleet else "image_id"]
    return out.sort_values(order, kind="stable").reset_index(drop=True)[columns]


def _types(fleet: bool) -> dict[str, Any]:
    types: dict[str, Any] = {
        "image_id": _STRING, "change": CHANGE_DTYPE, "name": _STRING, "owner": "category",
        "detail": _STRING, "before": _STRING, "after": _STRING,
    }  # fmt: skip
    if fleet:
        types |= {"cloud": "category", "region": "category", FLEET_INDEX: _STRING}
    return types


def summary(changes: pd.DataFrame) -> str:
    """One line: how many changes of each kind, in :data:`CHANGES` order.

    Examples
    --------
    >>> import pandas as pd
    >>> summary(pd.DataFrame({"change": pd.Categorical(
    ...     ["appeared", "owner_changed", "appeared"], dtype=CHANGE_DTYPE)}))
    '3 changes: appeared 2, owner_changed 1'
    >>> summary(pd.DataFrame({"change": pd.Categorical([], dtype=CHANGE_DTYPE)}))
    'no changes'
    """
    if changes.empty:
        return "no changes"
    counts = changes["change"].astype(CHANGE_DTYPE).value_counts(sort=False)
    shown = ", ".join(f"{change} {count:,}" for change, count in counts.items() if count)
    return f"{len(changes):,} changes: {shown}"
