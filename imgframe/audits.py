"""Audit rules over the fleet frame: plain functions ``rule(df, ...) -> DataFrame``.

Every rule takes the contract frame of :func:`imgframe.fetch_images` (or of
:func:`imgframe.frame_from_headers`), never mutates it, and returns the offending rows
with all their columns, sometimes with a column or three added (``dup_group``,
``problem``, ``missing``...). :func:`audit` runs them all and returns one tidy findings
frame; :func:`register_rule` adds a rule of your own to it.

Which rows a rule looks at
--------------------------
Only rows that were *read*: ``http_status == 200`` with no ``error`` (a 200 whose answer
lied, e.g. another image's id, carries an error and is not read), or, where ``http_status`` is NA (a
frame built from headers, never fetched), rows whose ``status`` is known. A row that
failed to fetch is never returned by a rule, neither as passing nor as failing: its
metadata is unknown. :func:`audit` reports each such row as a ``fetch_failed`` finding,
whatever rules are selected. On top of that, "live" means not deleted: ``deleted`` is not
true and ``status`` is neither ``deleted`` nor ``pending_delete``.

========================  ========  ===================================================
rule                      severity  flags
========================  ========  ===================================================
``public_unprotected``    high      public, ``protected`` not true, active and live
``shared_outside``        high      live, with a member (any status) outside ``trusted``
                                    (needs ``members``)
``member_can_share``      medium    live, a member may share it on (v1 ``can_share``;
                                    needs ``members``)
``community_visible``     medium    v2 ``visibility`` community, active and live
``broken``                medium    killed; queued/saving for longer than ``stuck_after``;
                                    active without checksum or size; deleted or
                                    pending_delete and still listed
``format_mismatch``       medium    ami/aki/ari container or disk whose partner differs
                                    (Glance's own rule); ``virtual_size < size``; live
``security_properties``   medium    active, live, missing a signature, secure boot or
                                    memory encryption (one finding lists all missing);
                                    profile ``hardening``, not ``default``
``fetch_failed``          medium    rows that could not be read (``audit`` only)
``checksum_duplicates``   low       live images sharing a data hash (multihash, else MD5)
                                    and size; placeholder hashes and size 0 never
``stale``                 low       active, live, not updated within ``older_than``
``requirements_missing``  low       active, live, bootable, ``min_ram`` or ``min_disk`` 0
``unused``                low       active, live, no server in any state and no volume
                                    uses it (needs ``usage``; nothing when incomplete)
``only_stopped_servers``  info      active, live, used by servers, none of them running
                                    (needs ``usage``)
========================  ========  ===================================================

Profiles
--------
Each rule belongs to profiles; :func:`audit` runs the ``default`` profile unless told
otherwise: every rule above but ``security_properties``, which is in ``hardening`` (on a
typical fleet it flags most images, for properties few clouds set, and its findings
drowned the ones an operator acts on). ``profile="all"`` runs every rule, a list of
profiles their union; :func:`register_rule` puts a rule in ``default`` unless given
``profiles=``. ``rules=`` and ``profile=`` together are an error: one says which rules.

Allow-lists and baselines
-------------------------
``allow=`` takes an :class:`imgframe.AllowList` (scoped entries with a reason and an
expiry, :mod:`imgframe.allow`), plain image or owner ids, a file path (``os.PathLike``)
or a function of the findings. Covered findings are kept aside:
:func:`allowed_findings`. ``baseline=`` takes an older findings frame or images
table: only findings new since then are returned, the resolved ones are
:func:`resolved_findings`.

The usage rules need ``usage=``: the :func:`imgframe.image_usage` frame, or a
``(servers, volumes)`` pair of :func:`imgframe.fetch_servers` /
:func:`imgframe.fetch_volumes` frames it is computed from. Without it :func:`audit`
skips them with a note (``findings.attrs["notes"]``, also logged). Deleting a used image
is the incident to prevent: when servers or volumes were not read completely (a token
that saw only its own project, or no volumes given) ``unused`` flags nothing and says so
(a note in :func:`audit`, an :class:`~imgframe.IncompleteListingWarning` when called
alone).

Decisions: ``protected`` NA counts as unprotected and ``is_public`` NA as not public
(only a known ``True`` is flagged); a format pair with an NA side is unknown, not a
mismatch; ``min_ram``/``min_disk`` NA count as 0 (Glance's default when not set);
secure boot passes only with ``os_secure_boot=required`` (``optional`` may boot without
it); an empty property value counts as missing.

Examples
--------
>>> import imgframe
>>> df = imgframe.frame_from_headers([
...     {"x-image-meta-id": "a", "x-image-meta-status": "active",
...      "x-image-meta-is_public": "True", "x-image-meta-protected": "False",
...      "x-image-meta-checksum": "c1", "x-image-meta-size": "5"},
...     {"x-image-meta-id": "b", "x-image-meta-status": "killed"},
... ])
>>> audit(df, rules=["public_unprotected", "broken"])[["rule", "severity", "image_id"]]
                 rule severity image_id
0  public_unprotected     high        a
1              broken   medium        b
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

import numpy as np
import pandas as pd

from imgframe import provenance
from imgframe.allow import ALLOWED_COLUMNS, AllowList, allowed_table
from imgframe.errors import ConfigError, IncompleteListingWarning, InvalidInputError
from imgframe.outcome import definitive_mask
from imgframe.schema import FLEET_INDEX, required_columns, with_optional_columns
from imgframe.usage_frame import USAGE_COLUMNS, image_usage, is_complete

__all__ = [
    "ALLOWED_ATTR",
    "ALL_PROFILE",
    "COUNTS_ATTR",
    "DEFAULT_PROFILE",
    "FINDING_COLUMNS",
    "IMAGE_SIZE_PROPERTY",
    "NOTES_ATTR",
    "PLACEHOLDER_CHECKSUMS",
    "RESOLVED_ATTR",
    "SECURITY_CHECKS",
    "SEVERITIES",
    "SIGNATURE_KEYS",
    "allowed_findings",
    "audit",
    "broken",
    "checksum_duplicates",
    "community_visible",
    "data_size",
    "finding_columns",
    "format_mismatch",
    "member_can_share",
    "only_stopped_servers",
    "owner_summary",
    "profile_names",
    "public_unprotected",
    "register_rule",
    "requirements_missing",
    "resolved_findings",
    "rule_guidance",
    "rule_names",
    "security_properties",
    "shared_outside",
    "stale",
    "unregister_rule",
    "unused",
]

#: Severities from most to least urgent; ``audit()``'s ``severity`` column is ordered so.
SEVERITIES: tuple[str, ...] = ("high", "medium", "low", "info")
#: The columns of :func:`audit`'s findings frame, in order.
FINDING_COLUMNS: list[str] = ["rule", "severity", "image_id", "owner", "name", "detail"]
#: ``findings.attrs`` key of :func:`audit`'s notes (rules skipped, rules that flagged
#: nothing on purpose); each note is also logged on ``imgframe.audits`` at warning level.
NOTES_ATTR = "notes"
#: ``findings.attrs`` key (with ``allow=``): the findings the allow-list covered, with the
#: reason of the entry that covered each (:data:`imgframe.allow.ALLOWED_COLUMNS`).
ALLOWED_ATTR = "allowed"
#: ``findings.attrs`` key (with ``baseline=``): the baseline's findings that are gone.
RESOLVED_ATTR = "resolved"
#: ``findings.attrs`` key: counts, ``{"findings": N}`` plus ``allowed`` with ``allow=`` and
#: ``new``, ``unchanged``, ``resolved`` with ``baseline=``.
COUNTS_ATTR = "counts"
#: The profile :func:`audit` runs when neither ``rules`` nor ``profile`` is given: the
#: rules whose findings an operator acts on.
DEFAULT_PROFILE = "default"
#: The profile of every rule, whatever profiles it names.
ALL_PROFILE = "all"
logger = logging.getLogger(__name__)
#: The checks :func:`security_properties` knows.
SECURITY_CHECKS: tuple[str, ...] = ("signature", "secure_boot", "mem_encryption")

#: The properties of a signed image (Glance's image signature verification): the
#: ``signature`` check of :func:`security_properties` wants all four, non-empty.
SIGNATURE_KEYS: tuple[str, ...] = (
    "img_signature",
    "img_signature_hash_method",
    "img_signature_key_type",
    "img_signature_certificate_uuid",
)
# The boolean spellings imgframe's parser accepts as true (imgframe.parse); kept here
# because audits depend on frames and the schema only.
_TRUE_SPELLINGS = ("true", "1", "yes", "on", "t", "y")
_AMI_FORMATS = ("ami", "aki", "ari")
_KERNEL_FORMATS = ("aki", "ari")
_GONE_STATUSES = ("deleted", "pending_delete")
_SEVERITY_DTYPE = pd.CategoricalDtype(list(SEVERITIES), ordered=True)
_STRING = pd.StringDtype("pyarrow")
_FLEET_COLUMNS = ("cloud", "region", "id")

Timeish: TypeAlias = str | datetime | pd.Timestamp | None
Span: TypeAlias = str | pd.Timedelta


# --------------------------------------------------------------------------- row masks
def _table(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` checked and completed for the rules: every rule starts here, so a frame that is
    not an images table gets one clear error instead of a KeyError from deep inside pandas,
    and a table written before the optional columns existed gets them as NA (audited, not
    refused). ``df`` itself is never changed.
    """
    missing = [c for c in required_columns() if c not in df.columns]
    if missing:
        raise InvalidInputError(
            f"not an imgframe images table: missing columns {missing} "
            "(use the frame from imgframe.fetch_images or imgframe.read_csv)"
        )
    return with_optional_columns(df)


def _fetched(df: pd.DataFrame) -> np.ndarray:
    """Rows that were read: HTTP 200 without an error, or no HTTP status at all but a
    known ``status`` (``df`` has been through :func:`_table`).
    """
    http = df["http_status"]
    # a 200 with an error is an answer that lied: nothing was read
    answered = http.eq(200).fillna(False) & df["error"].isna()
    ok = answered | (http.isna() & df["status"].notna())
    return ok.to_numpy(dtype=bool)


def _live(df: pd.DataFrame) -> np.ndarray:
    gone = df["deleted"].fillna(False).to_numpy(dtype=bool)
    return ~(gone | df["status"].isin(_GONE_STATUSES).to_numpy(dtype=bool))


def _active(df: pd.DataFrame) -> np.ndarray:
    return df["status"].eq("active").to_numpy(dtype=bool)


def _now(now: Timeish, df: pd.DataFrame | None = None) -> pd.Timestamp:
    """The audit clock: ``now`` if given (naive means UTC), else when ``df`` was fetched
    (its provenance's ``fetched_at``), else the current time. Judging a saved table by
    its fetch time makes its audit the same whatever day it is run."""
    if now is None and df is not None:
        fetched = provenance.fetched_at(df)
        if fetched is not None:
            return fetched
    stamp = pd.Timestamp.now("UTC") if now is None else pd.Timestamp(now)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _last_change(df: pd.DataFrame) -> pd.Series:
    return df["updated_at"].fillna(df["created_at"])


def _labels(flags: Sequence[np.ndarray], names: Sequence[str]) -> np.ndarray:
    """Per row, the names whose flag is set, joined by ``", "`` (vectorized by bit code)."""
    code = np.zeros(len(flags[0]), dtype=np.int64)
    for bit, flag in enumerate(flags):
        code |= flag.astype(np.int64) << bit
    table = np.array(
        [
            ", ".join(n for bit, n in enumerate(names) if c >> bit & 1)
            for c in range(1 << len(names))
        ],
        dtype=object,
    )
    return table[code]


def _text(values: Any) -> pd.Series:
    """Any column as pyarrow-backed strings (numbers via Arrow's cast, not Python)."""
    return pd.Series(values).astype(_STRING).reset_index(drop=True)


# --------------------------------------------------------------------------- the rules
def public_unprotected(df: pd.DataFrame) -> pd.DataFrame:
    """Active, live images that are public and not protected (``protected`` NA counts).

    Examples
    --------
    >>> import imgframe
    >>> df = imgframe.frame_from_headers([
    ...     {"x-image-meta-id": "a", "x-image-meta-status": "active",
    ...      "x-image-meta-is_public": "True", "x-image-meta-protected": "False"},
    ...     {"x-image-meta-id": "b", "x-image-meta-status": "active",
    ...      "x-image-meta-is_public": "True", "x-image-meta-protected": "True"},
    ...     {"x-image-meta-id": "c", "x-image-meta-status": "active",
    ...      "x-image-meta-is_public": "True"},
    ... ])
    >>> public_unprotected(df).index.tolist()
    ['a', 'c']
    """
    df = _table(df)
    public = df["is_public"].fillna(False).to_numpy(dtype=bool)
    protected = df["protected"].fillna(False).to_numpy(dtype=bool)
    mask = _fetched(df) & _active(df) & _live(df) & public & ~protected
    return df[mask].copy()


# Checksums of no data at all, which real clouds put on images that have none of their own:
# volume-backed snapshots carry the MD5 (and Glance the SHA-512) of zero bytes, some
# tools the MD5 of "{}". Thousands of such images are not byte-identical copies.
PLACEHOLDER_CHECKSUMS = frozenset(
    {
        "d41d8cd98f00b204e9800998ecf8427e",  # MD5 of b""
        "99914b932bd37a50b983c5e7c90ae93b",  # MD5 of b"{}"
        "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"
        "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e",  # SHA-512 of b""
    }
)
IMAGE_SIZE_PROPERTY = "__image_size"  # Huawei IMS: the real size, where `size` is unused
_WHOLE_BYTES = re.compile(r"[0-9]{1,18}")  # what fits an Int64, as the integer parser reads


def data_size(df: pd.DataFrame) -> pd.Series:
    """Each image's size in bytes: ``size``, or the ``__image_size`` property where set.

    Huawei Cloud IMS documents ``size`` (and ``checksum``) as not used; it keeps the real
    size in the ``__image_size`` property. A property that is not a whole number >= 0 is
    ignored.

    Examples
    --------
    >>> import imgframe
    >>> df = imgframe.frame_from_headers([
    ...     {"x-image-meta-id": "a", "x-image-meta-size": "0",
    ...      "x-image-meta-property-__image_size": "4096"},
    ...     {"x-image-meta-id": "b", "x-image-meta-size": "10"},
    ... ])
    >>> data_size(df).tolist()
    [4096, 10]
    """
    size = df["size"].astype("Int64").copy()
    overrides = {
        n: int(text)
        for n, props in enumerate(df["properties"].to_numpy(dtype=object))
        if isinstance(props, dict)
        and isinstance(text := props.get(IMAGE_SIZE_PROPERTY), str)
        and _WHOLE_BYTES.fullmatch(text.strip()) is not None
    }
    if overrides:
        size.iloc[list(overrides)] = list(overrides.values())
    return size


def _hex_key(values: pd.Series, prefix: pd.Series | str) -> np.ndarray:
    """``prefix:value`` lower-cased (hex case means nothing), NA for no value or a placeholder."""
    text = values.astype("string").str.strip().str.lower()
    text = text.mask(text.isin(PLACEHOLDER_CHECKSUMS) | text.eq(""))
    key = (prefix if isinstance(prefix, str) else prefix.astype("string").str.lower()) + ":" + text
    return key.to_numpy(dtype=object, na_value=None)


def checksum_duplicates(df: pd.DataFrame, usage: Usage | None = None) -> pd.DataFrame:
    """Live images whose data is byte-identical: same hash of the data, and same size.

    The key is the v2 multihash (``os_hash_algo:os_hash_value``) where known, the MD5
    ``checksum`` only where it is not; an MD5-only image joins the multihash group whose
    images share its MD5 when there is exactly one such group. Placeholder checksums
    (:data:`PLACEHOLDER_CHECKSUMS`: the hashes of no data, ``{}``) and every image of size
    0 are never duplicates. The size is :func:`data_size` (``__image_size`` where set).

    Adds ``dup_group`` (0, 1, ... in order of first appearance; rows are returned grouped,
    in frame order within a group), ``group_size``, ``reclaimable_bytes`` (the group's
    size times copies beyond the first, on every row of the group) and ``dup_key`` (the
    hash the group shares, e.g. ``md5:...`` or ``sha512:...``). Within one key, images of
    a different known size are separate groups; an image of unknown size joins the group
    when the key's known sizes agree.

    With ``usage`` (as :func:`audit` takes it) each row also gets ``unused`` (the
    :func:`unused` rule flags it), and ``reclaimable_bytes`` counts only what can go: the
    group's unused copies, one kept when every copy is unused (deleting all of them is
    the ``unused`` rule's business; deleting duplicates leaves one). Both NA when the
    usage is not complete (which copies are used is then unknown).

    Examples
    --------
    >>> import imgframe
    >>> df = imgframe.frame_from_headers([
    ...     {"x-image-meta-id": i, "x-image-meta-status": "active",
    ...      "x-image-meta-checksum": c, "x-image-meta-size": "100"}
    ...     for i, c in [("a", "c1"), ("b", "c2"), ("c", "c1"), ("d", "c1")]
    ... ])
    >>> checksum_duplicates(df)[["dup_group", "group_size", "reclaimable_bytes"]]
        dup_group  group_size  reclaimable_bytes
    id
    a           0           3                200
    c           0           3                200
    d           0           3                200
    """
    df = _table(df)
    sizes_all = data_size(df)
    empty = sizes_all.eq(0).fillna(False).to_numpy(dtype=bool)
    md5 = _hex_key(df["checksum"], "md5")
    multihash = _hex_key(df["os_hash_value"], df["os_hash_algo"].astype("string").fillna("hash"))
    key = np.where(pd.isna(multihash), md5, multihash)
    candidates = np.flatnonzero(_fetched(df) & _live(df) & ~empty & ~pd.isna(key))
    key, md5, multihash = key[candidates], md5[candidates], multihash[candidates]
    # An MD5-only row (a v1 answer) is the same data as the v2 rows with its MD5 when they
    # all agree on one multihash; with several, which one is unknown, so it stays apart.
    pairs = pd.DataFrame({"md5": md5, "multihash": multihash}).dropna().drop_duplicates()
    one = pairs[~pairs["md5"].duplicated(keep=False)].set_index("md5")["multihash"]
    md5_only = pd.isna(multihash) & ~pd.isna(md5)
    adopted = pd.Series(md5[md5_only]).map(one).to_numpy(dtype=object)
    key[md5_only] = np.where(pd.isna(adopted), key[md5_only], adopted)

    sub = df.iloc[candidates]
    codes, uniques = pd.factorize(key)
    sizes = sizes_all.iloc[candidates].to_numpy(dtype="float64", na_value=np.nan)
    known = pd.DataFrame({"c": codes, "s": sizes}).dropna().drop_duplicates()
    single = known[~known["c"].duplicated(keep=False)]  # keys with one known size
    fill = np.full(codes.max() + 1 if len(codes) else 0, np.nan)
    fill[single["c"].to_numpy()] = single["s"].to_numpy()
    group_sizes = np.where(np.isnan(sizes), fill[codes], sizes)

    keys = pd.DataFrame({"c": codes, "s": np.nan_to_num(group_sizes, nan=-1.0)})
    group = keys.groupby(["c", "s"], sort=False).ngroup().to_numpy()
    counts = np.bincount(group) if len(group) else np.zeros(0, dtype=np.int64)
    in_group = counts[group] > 1
    dup_group, _ = pd.factorize(group[in_group])
    order = np.argsort(dup_group, kind="stable")
    rows = np.flatnonzero(in_group)[order]

    out = sub.iloc[rows].copy()
    group_size = counts[group[rows]]
    out["dup_group"] = pd.array(dup_group[order], dtype="Int64")
    out["group_size"] = pd.array(group_size, dtype="Int64")
    out["reclaimable_bytes"] = pd.array(group_sizes[rows], dtype="Int64") * (out["group_size"] - 1)
    out["dup_key"] = pd.Categorical(np.asarray(uniques, dtype=object)[codes[rows]])
    if usage is not None:
        used = _usage_of(df, usage)
        if is_complete(used)[0]:
            idle = out.index.isin(unused(df, used).index)
            count = pd.Series(idle.astype(np.int64)).groupby(dup_group[order]).transform("sum")
            n_idle = count.to_numpy()
            keep = (n_idle == group_size).astype(np.int64)  # all unused: one copy stays
            out["unused"] = pd.array(idle, dtype="boolean")
            size = pd.array(group_sizes[rows], dtype="Int64")
            out["reclaimable_bytes"] = size * pd.array(n_idle - keep, dtype="Int64")
        else:
            out["unused"] = pd.array([pd.NA] * len(out), dtype="boolean")
            out["reclaimable_bytes"] = pd.array([pd.NA] * len(out), dtype="Int64")
    return out


def stale(df: pd.DataFrame, older_than: Span = "365D", now: Timeish = None) -> pd.DataFrame:
    """Active, live images not updated (``updated_at``, else ``created_at``) within ``older_than``.

    ``now`` defaults to when ``df`` was fetched (its provenance's ``fetched_at``), else
    the current time; a naive time means UTC. Images with neither
    timestamp are not judged. Deleted and not-yet-usable images are :func:`broken`'s job.

    Examples
    --------
    >>> import imgframe
    >>> df = imgframe.frame_from_headers([
    ...     {"x-image-meta-id": "old", "x-image-meta-status": "active",
    ...      "x-image-meta-updated_at": "2024-01-01T00:00:00"},
    ...     {"x-image-meta-id": "new", "x-image-meta-status": "active",
    ...      "x-image-meta-created_at": "2026-06-01T00:00:00"},
    ... ])
    >>> stale(df, now="2026-11-01").index.tolist()
    ['old']
    """
    cutoff = _now(now, df) - pd.Timedelta(older_than)
    df = _table(df)
    old = (_last_change(df) < cutoff).to_numpy(dtype=bool)
    return df[_fetched(df) & _active(df) & _live(df) & old].copy()


_BROKEN_PROBLEMS = (
    "killed",
    "stuck in queued",
    "stuck in saving",
    "active without checksum and size",
    "active without checksum",
    "active without size",
    "pending_delete",
    "deleted",
)


def broken(df: pd.DataFrame, stuck_after: Span = "1D", now: Timeish = None) -> pd.DataFrame:
    """Images that cannot be used, with the reason in an added ``problem`` column.

    ``killed``; ``stuck in queued``/``stuck in saving`` when not updated within
    ``stuck_after`` of ``now`` (default: the frame's ``fetched_at``, else the current
    time); ``active without checksum``
    (and/or ``size``); ``deleted``/``pending_delete`` images still listed.

    Examples
    --------
    >>> import imgframe
    >>> df = imgframe.frame_from_headers([
    ...     {"x-image-meta-id": "a", "x-image-meta-status": "killed"},
    ...     {"x-image-meta-id": "b", "x-image-meta-status": "queued",
    ...      "x-image-meta-updated_at": "2026-10-01T00:00:00"},
    ...     {"x-image-meta-id": "c", "x-image-meta-status": "active",
    ...      "x-image-meta-checksum": "c1", "x-image-meta-size": "5"},
    ... ])
    >>> broken(df, now="2026-11-01")["problem"].to_dict()
    {'a': 'killed', 'b': 'stuck in queued'}
    """
    clock = _now(now, df)
    df = _table(df)
    status = df["status"]
    old = (_last_change(df) < clock - pd.Timedelta(stuck_after)).to_numpy(dtype=bool)
    active = _active(df)
    no_checksum = active & df["checksum"].isna().to_numpy()
    no_size = active & df["size"].isna().to_numpy()
    conditions = [
        status.eq("killed").to_numpy(dtype=bool),
        status.eq("queued").to_numpy(dtype=bool) & old,
        status.eq("saving").to_numpy(dtype=bool) & old,
        no_checksum & no_size,
        no_checksum,
        no_size,
        status.eq("pending_delete").to_numpy(dtype=bool),
        ~_live(df),
    ]
    mask = _fetched(df) & np.logical_or.reduce(conditions)
    problem = np.select([c[mask] for c in conditions], _BROKEN_PROBLEMS, default="")
    out = df[mask].copy()
    out["problem"] = pd.array(problem, dtype=_STRING)
    return out


def format_mismatch(df: pd.DataFrame) -> pd.DataFrame:
    """Live images whose formats cannot boot together, with an added ``problem`` column.

    Glance's own rule: when the container or the disk format is ``ami``, ``aki`` or
    ``ari``, the other must be the same. Also flags ``virtual_size`` smaller than
    ``size``. A pair with an NA side is unknown, not a mismatch.

    Examples
    --------
    >>> import imgframe
    >>> df = imgframe.frame_from_headers([
    ...     {"x-image-meta-id": "a", "x-image-meta-status": "active",
    ...      "x-image-meta-disk_format": "ami", "x-image-meta-container_format": "bare"},
    ...     {"x-image-meta-id": "b", "x-image-meta-status": "active",
    ...      "x-image-meta-disk_format": "aki", "x-image-meta-container_format": "aki"},
    ...     {"x-image-meta-id": "c", "x-image-meta-status": "active",
    ...      "x-image-meta-size": "10", "x-image-meta-virtual_size": "5"},
    ... ])
    >>> format_mismatch(df)["problem"].to_dict()
    {'a': 'disk_format ami in container_format bare', 'c': 'virtual_size 5 < size 10'}
    """
    df = _table(df)
    container, disk = df["container_format"], df["disk_format"]
    known = (container.notna() & disk.notna()).to_numpy()
    ami_like = (container.isin(_AMI_FORMATS) | disk.isin(_AMI_FORMATS)).to_numpy(dtype=bool)
    pair_rows = np.flatnonzero(known & ami_like)
    pair_bad = np.zeros(len(df), dtype=bool)
    pair_bad[pair_rows] = (
        container.iloc[pair_rows].astype(_STRING) != disk.iloc[pair_rows].astype(_STRING)
    ).to_numpy(dtype=bool)
    size_bad = (df["virtual_size"] < df["size"]).fillna(False).to_numpy(dtype=bool)
    mask = _fetched(df) & _live(df) & (pair_bad | size_bad)

    out = df[mask].copy()
    pair_text = (
        "disk_format " + _text(out["disk_format"]) + " in container_format "
        + _text(out["container_format"])
    )  # fmt: skip
    size_text = "virtual_size " + _text(out["virtual_size"]) + " < size " + _text(out["size"])
    pair, size = pair_bad[mask], size_bad[mask]
    problem = pair_text.where(pair, size_text)
    problem = problem.where(~(pair & size), pair_text + "; " + size_text)
    out["problem"] = pd.array(problem.to_numpy(), dtype=_STRING)
    return out


def requirements_missing(df: pd.DataFrame) -> pd.DataFrame:
    """Active, live, bootable images with ``min_ram`` or ``min_disk`` 0 (or NA).

    Kernels and ramdisks (``aki``/``ari`` disk or container) are not booted on their own
    and are skipped. The added ``missing`` column says which: ``min_ram``, ``min_disk``
    or ``min_ram, min_disk``.

    Examples
    --------
    >>> import imgframe
    >>> df = imgframe.frame_from_headers([
    ...     {"x-image-meta-id": "a", "x-image-meta-status": "active",
    ...      "x-image-meta-min_ram": "0", "x-image-meta-min_disk": "10"},
    ...     {"x-image-meta-id": "k", "x-image-meta-status": "active",
    ...      "x-image-meta-disk_format": "aki", "x-image-meta-container_format": "aki",
    ...      "x-image-meta-min_ram": "0", "x-image-meta-min_disk": "0"},
    ... ])
    >>> requirements_missing(df)["missing"].to_dict()
    {'a': 'min_ram'}
    """
    df = _table(df)
    kernel = (
        df["disk_format"].isin(_KERNEL_FORMATS) | df["container_format"].isin(_KERNEL_FORMATS)
    ).to_numpy(dtype=bool)
    no_ram = df["min_ram"].fillna(0).eq(0).to_numpy(dtype=bool)
    no_disk = df["min_disk"].fillna(0).eq(0).to_numpy(dtype=bool)
    mask = _fetched(df) & _active(df) & _live(df) & ~kernel & (no_ram | no_disk)
    out = df[mask].copy()
    out["missing"] = pd.array(_labels([no_ram[mask], no_disk[mask]], ("min_ram", "min_disk")),
                              dtype=_STRING)  # fmt: skip
    return out


def _property(properties: pd.Series, key: str) -> pd.Series:
    # The properties column holds one dict per row: reading it is Python work by nature.
    values = properties.tolist()
    try:
        got = [p.get(key) for p in values]
    except AttributeError:  # NA or something else where a dict was expected
        got = [p.get(key) if isinstance(p, dict) else None for p in values]
    return pd.Series(got, dtype=_STRING)


def security_properties(
    df: pd.DataFrame, checks: Iterable[str] | str = SECURITY_CHECKS
) -> pd.DataFrame:
    """Active, live images missing security properties; an added ``missing`` lists which.

    Checks (choose with ``checks``): ``signature`` — all four of ``img_signature``,
    ``img_signature_hash_method``, ``img_signature_key_type`` and
    ``img_signature_certificate_uuid`` are set and non-empty; ``secure_boot`` —
    ``os_secure_boot`` is ``required``; ``mem_encryption`` — ``hw_mem_encryption`` is true.

    Examples
    --------
    >>> import imgframe
    >>> df = imgframe.frame_from_headers([
    ...     {"x-image-meta-id": "a", "x-image-meta-status": "active",
    ...      "x-image-meta-property-os_secure_boot": "required",
    ...      "x-image-meta-property-hw_mem_encryption": "True"},
    ...     {"x-image-meta-id": "b", "x-image-meta-status": "active",
    ...      "x-image-meta-property-os_secure_boot": "optional"},
    ... ])
    >>> security_properties(df)["missing"].to_dict()
    {'a': 'signature', 'b': 'signature, secure_boot, mem_encryption'}
    >>> security_properties(df, checks=["secure_boot"]).index.tolist()
    ['b']
    """
    df = _table(df)
    wanted = [checks] if isinstance(checks, str) else list(checks)
    unknown = sorted(set(wanted) - set(SECURITY_CHECKS))
    if unknown or not wanted:
        raise ConfigError(
            f"unknown security checks {unknown}; choose from {list(SECURITY_CHECKS)}"
            if unknown
            else f"no security checks given; choose from {list(SECURITY_CHECKS)}"
        )
    rows = np.flatnonzero(_fetched(df) & _active(df) & _live(df))
    properties = df["properties"].iloc[rows]
    failing: dict[str, np.ndarray] = {}
    if "signature" in wanted:
        signed = np.ones(len(rows), dtype=bool)
        for key in SIGNATURE_KEYS:
            signed &= _property(properties, key).str.len().fillna(0).gt(0).to_numpy(dtype=bool)
        failing["signature"] = ~signed
    if "secure_boot" in wanted:
        value = _property(properties, "os_secure_boot").str.strip().str.lower()
        failing["secure_boot"] = ~value.eq("required").fillna(False).to_numpy(dtype=bool)
    if "mem_encryption" in wanted:
        value = _property(properties, "hw_mem_encryption").str.strip().str.lower()
        failing["mem_encryption"] = ~value.isin(_TRUE_SPELLINGS).to_numpy(dtype=bool)
    names = [c for c in SECURITY_CHECKS if c in failing]
    flags = [failing[c] for c in names]
    hit = np.logical_or.reduce(flags)
    out = df.iloc[rows[hit]].copy()
    out["missing"] = pd.array(_labels([f[hit] for f in flags], names), dtype=_STRING)
    return out


# --------------------------------------------------------------------------- usage rules
Usage: TypeAlias = "pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame | None]"


def _usage_of(df: pd.DataFrame, usage: Any) -> pd.DataFrame:
    """The image_usage frame of ``usage`` (given, or computed from (servers, volumes)),
    one row per row of ``df``; NA where an image is not in it."""
    if usage is None:
        raise ConfigError(
            "this rule needs usage=: imgframe.image_usage(images, servers, volumes), or the "
            "(servers, volumes) frames of imgframe.fetch_servers / fetch_volumes"
        )
    if isinstance(usage, tuple):
        if len(usage) != 2:
            raise ConfigError("usage=(servers, volumes): two frames (volumes may be None)")
        usage = image_usage(df, usage[0], usage[1])
    if not isinstance(usage, pd.DataFrame) or not set(USAGE_COLUMNS) <= set(usage.columns):
        raise ConfigError("usage must be an imgframe.image_usage frame or (servers, volumes)")
    aligned = usage.reindex(df.index.astype(_STRING))
    aligned.index = df.index
    aligned.attrs = dict(usage.attrs)
    return aligned


def _candidates(df: pd.DataFrame) -> np.ndarray:
    return _fetched(df) & _active(df) & _live(df)


def unused(df: pd.DataFrame, usage: Usage | None = None) -> pd.DataFrame:
    """Active, live images that no server in any state and no volume uses.

    ``usage`` as :func:`audit` takes it. Adds ``bytes`` (:func:`data_size`: what
    deleting it would free). An image missing from ``usage`` is not flagged (unknown).
    When the usage is not complete (:func:`imgframe.usage_frame.is_complete`: servers
    of one project only, volumes not given or not all shown) nothing is flagged and an
    :class:`~imgframe.IncompleteListingWarning` says why.

    Examples
    --------
    >>> import imgframe
    >>> from imgframe.usage_frame import servers_frame, volumes_frame
    >>> df = imgframe.frame_from_headers([
    ...     {"x-image-meta-id": i, "x-image-meta-status": "active", "x-image-meta-size": "7"}
    ...     for i in ("a", "b")])
    >>> servers = servers_frame([{"id": "s1", "status": "SHUTOFF", "image": {"id": "a"}}])
    >>> unused(df, usage=(servers, volumes_frame([])))[["bytes"]]
        bytes
    id
    b       7
    """
    df = _table(df)
    used = _usage_of(df, usage)
    complete, why = is_complete(used)
    if not complete:
        warnings.warn(_incomplete_note(why), IncompleteListingWarning, stacklevel=2)
        return df.iloc[:0].assign(bytes=pd.Series([], dtype="Int64"))
    idle = used["servers"].eq(0) & used["volumes"].eq(0)
    found = df[_candidates(df) & idle.fillna(False).to_numpy(dtype=bool)]
    return found.assign(bytes=data_size(found))


def _incomplete_note(why: str | None) -> str:
    return (
        f"unused flagged nothing: servers or volumes were not read completely ({why}); "
        "an image they do not show may still be used"
    )


def only_stopped_servers(df: pd.DataFrame, usage: Usage | None = None) -> pd.DataFrame:
    """Active, live images used by servers none of which runs (all SHUTOFF, SUSPENDED,
    SHELVED, SHELVED_OFFLOADED, PAUSED or STOPPED): candidates to retire with their
    servers, not to delete (a stopped server can start again). Servers booted from a
    volume made from the image count. Adds ``servers`` (how many). An incomplete usage
    may miss a running server elsewhere: the rule still reports what it saw.

    Examples
    --------
    >>> import imgframe
    >>> from imgframe.usage_frame import servers_frame
    >>> df = imgframe.frame_from_headers([
    ...     {"x-image-meta-id": i, "x-image-meta-status": "active"} for i in ("a", "b")])
    >>> servers = servers_frame([{"id": "s1", "status": "SHUTOFF", "image": {"id": "a"}},
    ...                          {"id": "s2", "status": "ACTIVE", "image": {"id": "b"}}])
    >>> only_stopped_servers(df, usage=(servers, None)).index.tolist()
    ['a']
    """
    df = _table(df)
    used = _usage_of(df, usage)
    stopped = used["servers"].gt(0) & used["servers_stopped"].eq(used["servers"])
    found = df[_candidates(df) & stopped.fillna(False).to_numpy(dtype=bool)]
    return found.assign(servers=used["servers"][found.index])


def _reclaimable(df: pd.DataFrame, usage: Any) -> pd.Series | None:
    """Per row of ``df``: the bytes of an :func:`unused` image (0 when its size is
    unknown), NA for the others; None when the usage is not complete."""
    used = _usage_of(df, usage)
    if not is_complete(used)[0]:
        return None
    found = unused(df, used)
    return found["bytes"].fillna(0).reindex(df.index).astype("Int64")


def owner_summary(df: pd.DataFrame, usage: Usage | None = None) -> pd.DataFrame:
    """Per owner: images, public images, bytes, duplicate images and the oldest image.

    With ``usage`` (as :func:`audit` takes it) also ``unused`` (the owner's
    :func:`unused` images) and ``reclaimable_bytes`` (their bytes, what deleting them
    would free); both NA when the usage is not complete.

    Counts every row that was read (failed rows are excluded), deleted images included;
    ``duplicates`` counts the owner's images in :func:`checksum_duplicates` groups. Images
    without an owner form one row with an NA owner. Sorted by images, most first.

    Examples
    --------
    >>> import imgframe
    >>> df = imgframe.frame_from_headers([
    ...     {"x-image-meta-id": "a", "x-image-meta-status": "active", "x-image-meta-owner": "p1",
    ...      "x-image-meta-size": "10", "x-image-meta-created_at": "2020-01-01T00:00:00"},
    ...     {"x-image-meta-id": "b", "x-image-meta-status": "active", "x-image-meta-owner": "p1",
    ...      "x-image-meta-size": "5", "x-image-meta-is_public": "True"},
    ... ])
    >>> owner_summary(df)[["images", "public_images", "bytes", "duplicates"]]
           images  public_images  bytes  duplicates
    owner
    p1          2              1     15           0
    """
    df = _table(df)
    fetched = _fetched(df)
    read = df[fetched]
    duplicate = read.index.isin(checksum_duplicates(df).index)
    parts = pd.DataFrame(
        {
            "owner": read["owner"].astype(_STRING).array,
            "public_images": read["is_public"].fillna(False).to_numpy(dtype=np.int64),
            "bytes": read["size"].array,
            "duplicates": duplicate.astype(np.int64),
            "oldest_image": read["created_at"].array,
        }
    )
    grouped = parts.groupby("owner", dropna=False, sort=True)
    out = grouped.agg(
        images=("public_images", "size"),
        public_images=("public_images", "sum"),
        bytes=("bytes", "sum"),
        duplicates=("duplicates", "sum"),
        oldest_image=("oldest_image", "min"),
    )
    out = out.astype({"images": "Int64", "public_images": "Int64", "bytes": "Int64",
                      "duplicates": "Int64"})  # fmt: skip
    out["oldest_image"] = out["oldest_image"].astype("datetime64[ns, UTC]")
    out.index = pd.Index(out.index, dtype=_STRING, name="owner")
    if usage is not None:
        reclaim = _reclaimable(df, usage)
        if reclaim is None:
            out["unused"] = pd.Series(pd.NA, index=out.index, dtype="Int64")
            out["reclaimable_bytes"] = pd.Series(pd.NA, index=out.index, dtype="Int64")
        else:
            owners = df["owner"].astype(_STRING).array[fetched]
            per_owner = pd.DataFrame(
                {"owner": owners, "unused": reclaim.notna().to_numpy()[fetched].astype(np.int64),
                 "bytes": reclaim.fillna(0).array[fetched]}
            ).groupby("owner", dropna=False, sort=True).sum()  # fmt: skip
            per_owner.index = pd.Index(per_owner.index, dtype=_STRING, name="owner")
            out["unused"] = per_owner["unused"].reindex(out.index).fillna(0).astype("Int64")
            out["reclaimable_bytes"] = per_owner["bytes"].reindex(out.index).astype("Int64")
    return out.sort_values("images", ascending=False, kind="stable")


# --------------------------------------------------------------------------- sharing rules
#: How many members a finding's detail names before "and N more".
MEMBERS_SHOWN = 3


def _member_lists(df: pd.DataFrame) -> list[list[dict[str, Any]] | None]:
    """Each row's members (the ``members`` column's JSON) as a list, None where NA or
    not a members text (a hand-edited table); each distinct text is read once."""
    column = df["members"].astype("category")
    parsed: list[list[dict[str, Any]] | None] = []
    for text in column.cat.categories:
        try:
            value = json.loads(text)
        except (TypeError, ValueError, RecursionError):
            value = None
        ok = isinstance(value, list) and all(
            isinstance(m, dict) and isinstance(m.get("member_id"), str) for m in value
        )
        parsed.append(value if ok else None)
    return [None if code < 0 else parsed[code] for code in column.cat.codes.tolist()]


def _named(members: list[dict[str, Any]], with_status: bool) -> str:
    def one(member: dict[str, Any]) -> str:
        status = member.get("status")
        return (
            f"{member['member_id']} ({status})" if with_status and status else member["member_id"]
        )

    shown = ", ".join(one(m) for m in members[:MEMBERS_SHOWN])
    more = len(members) - MEMBERS_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def _trusted_set(trusted: Iterable[str] | str | None) -> frozenset[str]:
    if trusted is None:
        return frozenset()
    items = [trusted] if isinstance(trusted, str) else list(trusted)
    if not all(isinstance(item, str) for item in items):
        raise ConfigError("trusted must be project ids (strings)")
    return frozenset(item.strip() for item in items if item.strip())


def shared_outside(df: pd.DataFrame, trusted: Iterable[str] | str | None = None) -> pd.DataFrame:
    """Live images read with a member outside the ``trusted`` project ids (None: every
    member counts), whatever the member's status: Glance's status only affects its
    listings, and a pending or rejected member can still boot the image by id.

    Needs the ``members`` column (``fetch_images(..., members=True)``); rows whose
    members were not read are not judged. Adds ``outside`` (how many) and
    ``outside_members`` (the first few, with their v2 status).

    Examples
    --------
    >>> import imgframe
    >>> df = imgframe.frame_from_headers([
    ...     {"x-image-meta-id": "a", "x-image-meta-status": "active", "x-imgframe-members":
    ...      '[{"member_id":"p2","status":"rejected","can_share":null}]'},
    ...     {"x-image-meta-id": "b", "x-image-meta-status": "active", "x-imgframe-members": "[]"},
    ... ])
    >>> shared_outside(df)[["outside", "outside_members"]]
       outside outside_members
    id
    a        1   p2 (rejected)
    >>> len(shared_outside(df, trusted=["p2"]))
    0
    """
    df = _table(df)
    allowed = _trusted_set(trusted)
    lists = _member_lists(df)
    candidates = _fetched(df) & _live(df)
    rows: list[int] = []
    counts: list[int] = []
    names: list[str] = []
    for row in np.flatnonzero(candidates).tolist():
        members = lists[row]
        if not members:
            continue
        outside = [m for m in members if m["member_id"] not in allowed]
        if outside:
            rows.append(row)
            counts.append(len(outside))
            names.append(_named(outside, with_status=True))
    out = df.iloc[rows].copy()
    out["outside"] = pd.array(counts, dtype="Int64")
    out["outside_members"] = pd.array(names, dtype=_STRING)
    return out


def member_can_share(df: pd.DataFrame) -> pd.DataFrame:
    """Live images read with a member whose ``can_share`` is true (Glance v1): that
    project may share the image on with any other, beyond the owner's control. Adds
    ``sharers`` (those members, the first few).

    Examples
    --------
    >>> import imgframe
    >>> df = imgframe.frame_from_headers([
    ...     {"x-image-meta-id": "a", "x-image-meta-status": "active", "x-imgframe-members":
    ...      '[{"member_id":"p2","status":null,"can_share":true}]'},
    ... ])
    >>> member_can_share(df)["sharers"].tolist()
    ['p2']
    """
    df = _table(df)
    lists = _member_lists(df)
    rows: list[int] = []
    names: list[str] = []
    for row in np.flatnonzero(_fetched(df) & _live(df)).tolist():
        members = lists[row]
        sharers = [m for m in members or () if m.get("can_share") is True]
        if sharers:
            rows.append(row)
            names.append(_named(sharers, with_status=False))
    out = df.iloc[rows].copy()
    out["sharers"] = pd.array(names, dtype=_STRING)
    return out


def community_visible(df: pd.DataFrame) -> pd.DataFrame:
    """Active, live images whose v2 ``visibility`` is ``community``: every project can
    boot them by id (only listings leave them out), the sibling of
    :func:`public_unprotected`. Needs only ``visibility`` (NA from v1: never flagged).

    Examples
    --------
    >>> import imgframe
    >>> df = imgframe.frame_from_headers([
    ...     {"x-image-meta-id": "a", "x-image-meta-status": "active",
    ...      "x-imgframe-v2-visibility": "community"},
    ...     {"x-image-meta-id": "b", "x-image-meta-status": "active",
    ...      "x-imgframe-v2-visibility": "shared"},
    ... ])
    >>> community_visible(df).index.tolist()
    ['a']
    """
    df = _table(df)
    community = df["visibility"].eq("community").fillna(False).to_numpy(dtype=bool)
    return df[_fetched(df) & _active(df) & _live(df) & community].copy()


# --------------------------------------------------------------------------- audit()
Details = Callable[[pd.DataFrame, pd.Timestamp], Any]


@dataclass(frozen=True)
class _Rule:
    name: str
    function: Callable[..., pd.DataFrame]
    severity: str
    details: Details  # vectorized: rule output -> one sentence per row
    builtin: bool
    takes_now: bool = False
    needs_usage: bool = False  # reads the usage= of audit(); skipped with a note without
    profiles: frozenset[str] = frozenset({DEFAULT_PROFILE})
    takes_usage: bool = False  # given audit()'s usage= when there is one; runs without
    needs_members: bool = False  # reads the members column; skipped with a note without
    takes_trusted: bool = False  # takes the trusted= of audit()


_RULES: dict[str, _Rule] = {}


def _profiles(profiles: Collection[str] | str) -> frozenset[str]:
    """Checked profile names of one rule (``all`` needs no naming: every rule is in it)."""
    names = [profiles] if isinstance(profiles, str) else list(profiles)
    bad = [p for p in names if not isinstance(p, str) or not re.fullmatch(r"[\w.-]+", p)]
    if bad:
        raise ConfigError(f"profile names are words (letters, digits, _ . -), got {bad[0]!r}")
    return frozenset(names) - {ALL_PROFILE}


def _check_severity(severity: str) -> None:
    if severity not in SEVERITIES:
        raise ConfigError(f"unknown severity {severity!r}; choose from {list(SEVERITIES)}")


def _builtin(
    severity: str,
    details: Details,
    takes_now: bool = False,
    needs_usage: bool = False,
    profiles: Collection[str] = (DEFAULT_PROFILE,),
    takes_usage: bool = False,
) -> Callable:
    def register(function: Callable[..., pd.DataFrame]) -> Callable[..., pd.DataFrame]:
        name = function.__name__
        _RULES[name] = _Rule(
            name,
            function,
            severity,
            details,
            True,
            takes_now,
            needs_usage,
            _profiles(profiles),
            takes_usage,
        )
        return function

    return register


# Per rule: what a finding means and what to do about it (the report's text for each
# rule's section); register_rule adds a user rule's own, or the generic text.
_GUIDANCE: dict[str, tuple[str, str]] = {
    "shared_outside": (
        "Images shared with projects outside the trusted ones. A member can boot the image "
        "whatever its member status: pending and rejected only hide it from the member's "
        "listing.",
        "Remove the members that should not have it (glance member-delete); add the "
        "projects that should to the trusted list (--trusted).",
    ),
    "member_can_share": (
        "Images whose member may share them further (v1 can_share): the owner no longer "
        "decides who can boot them.",
        "Re-add the member without can_share, or remove it.",
    ),
    "community_visible": (
        "Active community images (v2): any project can boot them by id and list them "
        "with --visibility community, and no member list limits who.",
        "Make each one private or shared with named projects, unless it is meant for "
        "everyone; then protect it as a public image.",
    ),
    "public_unprotected": (
        "Active images every project can see and boot, and that are not protected: "
        "their owner (or a script of theirs) can delete them under everyone who uses them.",
        "Make each one private or share it with named projects; if it is meant to be "
        "public, set protected=True.",
    ),
    "broken": (
        "Images that cannot be used: killed uploads, uploads stuck in queued or saving, "
        "active images without checksum or size, deleted images still listed.",
        "Delete killed and stuck images once the owner agrees; re-upload active images "
        "without a checksum, whose data cannot be verified.",
    ),
    "format_mismatch": (
        "Formats that cannot boot together (an ami, aki or ari container or disk whose "
        "partner differs, Glance's own rule) or a virtual size smaller than the data.",
        "Correct the formats (glance image-update) or upload the image again with the right ones.",
    ),
    "security_properties": (
        "Active images without an image signature (img_signature*), without "
        "os_secure_boot=required or without hw_mem_encryption.",
        "Sign the images your clouds verify at boot and set the properties your policy "
        "requires; where the policy does not ask for them, leave this rule to the "
        "hardening profile.",
    ),
    "fetch_failed": (
        "Rows that could not be read: ids the cloud does not know (404), timeouts, server "
        "errors, 403, answers that lied. Their metadata is unknown and no other rule "
        "judged them.",
        "Drop the ids that answer 404 from your list (no such image); fetch the others "
        "again (the same command resumes and asks only those); a lasting 403 means the "
        "token cannot see the image.",
    ),
    "checksum_duplicates": (
        "Live images holding the same data (same hash and size): every copy but one "
        "takes storage for nothing.",
        "Keep one image per duplicate group (the detail names the group) and retire the "
        "others once nothing uses them.",
    ),
    "stale": (
        "Active images not updated for more than a year: old base images miss years of "
        "security updates.",
        "Ask the owners whether they are still needed; rebuild or retire them.",
    ),
    "requirements_missing": (
        "Bootable images with min_ram or min_disk 0: Nova boots them on flavors too "
        "small for them, and the servers fail at boot.",
        "Set min_ram and min_disk to what the image needs.",
    ),
    "unused": (
        "Active images that no server in any state and no volume uses.",
        "Confirm with the owner, then delete them: the detail gives the bytes that frees.",
    ),
    "only_stopped_servers": (
        "Images used only by stopped servers (shut off, suspended, shelved, paused).",
        "Retire them together with those servers; do not delete them while the servers "
        "exist, as a stopped server can start again.",
    ),
}
_GENERIC_GUIDANCE = (
    "A rule added with imgframe.register_rule; its detail column says what it found.",
    "See the rule's own documentation.",
)


def rule_guidance(name: str) -> tuple[str, str]:
    """``(what a finding of the rule means, what to do about it)``: the built-in rules'
    own text, a registered rule's ``meaning``/``action``, else a generic pair.

    Examples
    --------
    >>> rule_guidance("public_unprotected")[1].startswith("Make each one private")
    True
    """
    return _GUIDANCE.get(name, _GENERIC_GUIDANCE)


def register_rule(
    name: str,
    severity: str,
    describe: Callable[[pd.Series], str],
    *,
    profiles: Collection[str] | str = (DEFAULT_PROFILE,),
    meaning: str | None = None,
    action: str | None = None,
) -> Callable[[Callable[[pd.DataFrame], pd.DataFrame]], Callable[[pd.DataFrame], pd.DataFrame]]:
    """Decorator: make ``f(df) -> DataFrame`` (offending rows) part of :func:`audit`.

    ``describe(row) -> str`` writes each finding's ``detail``. The rule sees only rows
    that were read (failed rows are ``fetch_failed`` findings already). ``profiles``: the
    profiles it runs in (default: ``default``, so a plain ``audit(df)`` runs it; a new
    name makes a new profile; ``()`` runs it only by name or with ``profile="all"``).
    ``meaning`` and ``action`` (what a finding means, what to do) head the rule's section
    of the HTML report (:func:`rule_guidance`). Registering a name again replaces your
    earlier rule (re-running a notebook cell works); built-in names are refused. The
    function is returned unchanged.

    Examples
    --------
    >>> import imgframe
    >>> @register_rule("unnamed", "info", describe=lambda row: "image has no name")
    ... def unnamed(df):
    ...     return df[df["name"].isna()]
    >>> df = imgframe.frame_from_headers([
    ...     {"x-image-meta-id": "a", "x-image-meta-status": "saving"}
    ... ])
    >>> audit(df, rules=["unnamed"])[["rule", "severity", "detail"]].iloc[0].tolist()
    ['unnamed', 'info', 'image has no name']
    >>> unregister_rule("unnamed")
    """
    _check_severity(severity)
    in_profiles = _profiles(profiles)
    existing = _RULES.get(name)
    if (existing is not None and existing.builtin) or name == "fetch_failed":
        raise ConfigError(f"{name!r} is a built-in rule; choose another name")

    def details(found: pd.DataFrame, now: pd.Timestamp) -> list[str]:
        return [str(describe(row)) for _, row in found.iterrows()]

    def register(
        function: Callable[[pd.DataFrame], pd.DataFrame],
    ) -> Callable[[pd.DataFrame], pd.DataFrame]:
        _RULES[name] = _Rule(name, function, severity, details, builtin=False, profiles=in_profiles)
        if meaning is None and action is None:
            _GUIDANCE.pop(name, None)  # an earlier registration's text is not this one's
        else:
            _GUIDANCE[name] = (meaning or _GENERIC_GUIDANCE[0], action or _GENERIC_GUIDANCE[1])
        return function

    return register


def unregister_rule(name: str) -> None:
    """Remove a rule added with :func:`register_rule` (built-ins cannot be removed).

    Examples
    --------
    >>> unregister_rule("public_unprotected")
    Traceback (most recent call last):
    ...
    imgframe.errors.ConfigError: 'public_unprotected' is a built-in rule and cannot be removed
    """
    rule = _RULES.get(name)
    if rule is None:
        raise ConfigError(f"no rule named {name!r}; known: {rule_names()}")
    if rule.builtin:
        raise ConfigError(f"{name!r} is a built-in rule and cannot be removed")
    del _RULES[name]
    _GUIDANCE.pop(name, None)


def rule_names(profile: str | None = None) -> list[str]:
    """The names :func:`audit` accepts in ``rules``, built-ins first; with ``profile``,
    the rules that profile runs (``fetch_failed`` is reported whatever runs).

    Examples
    --------
    >>> rule_names()[:3]
    ['fetch_failed', 'public_unprotected', 'checksum_duplicates']
    >>> rule_names("hardening")
    ['fetch_failed', 'security_properties']
    """
    if profile is None:
        return ["fetch_failed", *_RULES]
    return ["fetch_failed", *(rule.name for rule in _select(None, profile))]


def profile_names() -> list[str]:
    """The profiles :func:`audit` knows: ``default`` first, ``all`` last.

    Examples
    --------
    >>> profile_names()
    ['default', 'hardening', 'all']
    """
    named = set().union(*(rule.profiles for rule in _RULES.values())) - {DEFAULT_PROFILE}
    return [DEFAULT_PROFILE, *sorted(named), ALL_PROFILE]


def _select(rules: Collection[str] | str | None, profile: Collection[str] | str | None) -> list:
    """The rules to run: by name, else by profile (``default`` when neither is given)."""
    if rules is not None and profile is not None:
        raise ConfigError(
            "give rules= or profile=, not both (rules= names the rules to run, profile= "
            "a set of them)"
        )
    if rules is not None:
        names = [rules] if isinstance(rules, str) else list(rules)
        unknown = [name for name in names if name not in _RULES and name != "fetch_failed"]
        if unknown:
            raise ConfigError(f"unknown rules {unknown}; known: {rule_names()}")
        return [_RULES[name] for name in dict.fromkeys(names) if name != "fetch_failed"]
    if profile is None:
        profile = DEFAULT_PROFILE
    wanted = [profile] if isinstance(profile, str) else list(profile)
    known = profile_names()
    unknown = [name for name in wanted if name not in known]
    if unknown or not wanted:
        shown = f"unknown profile {unknown[0]!r}" if unknown else "no profile given"
        raise ConfigError(f"{shown}; known: {', '.join(known)}")
    if ALL_PROFILE in wanted:
        return list(_RULES.values())
    return [rule for rule in _RULES.values() if rule.profiles & set(wanted)]


def _days(delta: pd.Series) -> pd.Series:
    return _text((delta // pd.Timedelta("1D")).astype("Int64"))


def _describe_public(found: pd.DataFrame, now: pd.Timestamp) -> Any:
    return "public and not protected: every project can boot it and its owner can delete it"


def _describe_duplicates(found: pd.DataFrame, now: pd.Timestamp) -> Any:
    gib = _text((found["reclaimable_bytes"].astype("Float64") / 1024**3).round(2))
    same = (
        "one of " + _text(found["group_size"]) + " images with the same data ("
        + _text(found["dup_key"]) + ", duplicate group " + _text(found["dup_group"]) + "); "
    )  # fmt: skip
    if "unused" not in found.columns:  # no usage given
        return (
            same + "keeping one copy would reclaim " + gib.fillna("an unknown number of") + " GiB"
        )
    idle = found["unused"].astype("Int64").groupby(found["dup_group"]).transform("sum")
    known = (
        same + _text(idle) + " of them unused: deleting those (one copy kept) would reclaim "
        + gib.fillna("an unknown number of") + " GiB"
    )  # fmt: skip
    unknown = same + "which copies are unused is not known (servers or volumes not read completely)"
    return known.where(found["unused"].notna().to_numpy(), unknown)


def _describe_stale(found: pd.DataFrame, now: pd.Timestamp) -> Any:
    return "not updated for " + _days(now - _last_change(found)) + " days"


_BROKEN_SENTENCES = {
    "killed": "status killed: the upload failed and the image cannot be used",
    "stuck in queued": ": no data was ever uploaded",
    "stuck in saving": ": the upload never finished",
    "active without checksum and size": "active but has neither checksum nor size",
    "active without checksum": "active but has no checksum: its data cannot be verified",
    "active without size": "active but has no size",
    "pending_delete": "pending_delete: deleted, its data not yet scrubbed",
    "deleted": "deleted but still listed",
}


def _describe_broken(found: pd.DataFrame, now: pd.Timestamp) -> Any:
    problem = _text(found["problem"])
    sentence = _text(found["problem"].map(_BROKEN_SENTENCES))
    stuck = problem.str.startswith("stuck").to_numpy(dtype=bool)
    since = problem + " for " + _days(now - _last_change(found)) + " days" + sentence
    return sentence.where(~stuck, since)


def _describe_formats(found: pd.DataFrame, now: pd.Timestamp) -> Any:
    return _text(found["problem"]) + ": the image cannot boot as described"


def _describe_requirements(found: pd.DataFrame, now: pd.Timestamp) -> Any:
    return _text(found["missing"]) + " not set (0): Nova will boot it on a flavor too small for it"


def _describe_security(found: pd.DataFrame, now: pd.Timestamp) -> Any:
    return "missing security properties: " + _text(found["missing"])


_builtin("high", _describe_public)(public_unprotected)
_builtin("low", _describe_duplicates, takes_usage=True)(checksum_duplicates)
_builtin("low", _describe_stale, takes_now=True)(stale)
_builtin("medium", _describe_broken, takes_now=True)(broken)
_builtin("medium", _describe_formats)(format_mismatch)
_builtin("low", _describe_requirements)(requirements_missing)
# Few clouds set these properties: on most fleets this flags most images, so it is its
# own profile rather than drowning the findings an operator acts on.
_builtin("medium", _describe_security, profiles=("hardening",))(security_properties)


def _describe_unused(found: pd.DataFrame, now: pd.Timestamp) -> Any:
    gib = _text((found["bytes"].astype("Float64") / 1024**3).round(2))
    return (
        "no server in any state and no volume uses it; deleting it would reclaim "
        + gib.fillna("an unknown number of") + " GiB"
    )  # fmt: skip


def _describe_only_stopped(found: pd.DataFrame, now: pd.Timestamp) -> Any:
    return (
        "used only by " + _text(found["servers"]) + " stopped server(s), none running: "
        "retire it with them, do not delete it while they exist"
    )


_builtin("low", _describe_unused, needs_usage=True)(unused)
_builtin("info", _describe_only_stopped, needs_usage=True)(only_stopped_servers)


def _describe_shared_outside(found: pd.DataFrame, now: pd.Timestamp) -> Any:
    return (
        "shared with " + _text(found["outside"]) + " project(s) outside the trusted ones, "
        "who can boot it whatever their member status: " + _text(found["outside_members"])
    )


def _describe_can_share(found: pd.DataFrame, now: pd.Timestamp) -> Any:
    return "members that may share it on with any project (can_share): " + _text(found["sharers"])


def _describe_community(found: pd.DataFrame, now: pd.Timestamp) -> Any:
    return "community image: every project can boot it by id (listings just leave it out)"


# Registered by hand: the sharing rules read the members column (skipped by audit()
# with a note without it), shared_outside also audit()'s trusted=.
_RULES["shared_outside"] = _Rule(
    "shared_outside", shared_outside, "high", _describe_shared_outside, True,
    needs_members=True, takes_trusted=True,
)  # fmt: skip
_RULES["member_can_share"] = _Rule(
    "member_can_share", member_can_share, "medium", _describe_can_share, True, needs_members=True
)
_builtin("medium", _describe_community)(community_visible)


def _findings(
    rule: str, severity: str, found: pd.DataFrame, details: Any, source: pd.DataFrame
) -> pd.DataFrame:
    keys = found.index
    fleet = _is_fleet(source)
    wanted = ["owner", "name", *(_FLEET_COLUMNS if fleet else ())]
    if all(column in found for column in wanted):
        columns = {column: found[column] for column in wanted}
    else:  # a user rule may return fewer columns: take them from the audited frame
        columns = {column: source[column].reindex(keys) for column in wanted}
    out = {
        "rule": rule,
        "severity": severity,
        "image_id": _text(columns["id"] if fleet else keys),
        "owner": _text(columns["owner"]),
        "name": _text(columns["name"]),
        "detail": details if isinstance(details, str) else _text(details),
    }
    if fleet:
        out |= {"cloud": _text(columns["cloud"]), "region": _text(columns["region"])}
        out[FLEET_INDEX] = _text(keys)
    return pd.DataFrame(out)


def _is_fleet(df: pd.DataFrame) -> bool:
    """A :func:`imgframe.fetch_fleet` frame: indexed by ``key``, with cloud/region/id."""
    return df.index.name == FLEET_INDEX and all(c in df.columns for c in _FLEET_COLUMNS)


def finding_columns(df: pd.DataFrame) -> list[str]:
    """The columns :func:`audit` returns for ``df``: :data:`FINDING_COLUMNS`, and for a
    fleet frame ``cloud`` and ``region`` after ``severity`` and its ``key`` last.

    Examples
    --------
    >>> from imgframe.frame import empty_frame
    >>> finding_columns(empty_frame()) == FINDING_COLUMNS
    True
    """
    if not _is_fleet(df):
        return FINDING_COLUMNS
    return ["rule", "severity", "cloud", "region", *FINDING_COLUMNS[2:], FLEET_INDEX]


def _fetch_failed(df: pd.DataFrame, failed: np.ndarray) -> pd.DataFrame:
    rows = df[failed]
    status = ("HTTP " + _text(rows["http_status"])).fillna("no HTTP answer")
    said = "could not be read (" + status + ")"
    details = said.where(rows["error"].isna().to_numpy(), said + ": " + _text(rows["error"]))
    return _findings("fetch_failed", "medium", rows, details, df)


# Set while a baseline images table is audited inside audit(): that audit logs nothing.
_QUIET: contextvars.ContextVar[bool] = contextvars.ContextVar("imgframe_audit_quiet", default=False)
AllowArg: TypeAlias = (
    "AllowList | Iterable[str] | str | os.PathLike[str] | Callable[[pd.DataFrame], Any]"
)
_FUNCTION_REASON = "allowed by the allow= function"


def _allow_list(allow: Any) -> AllowList | Callable[[pd.DataFrame], Any]:
    """``allow=`` as an :class:`AllowList`, or the function it is. A plain str is one id
    (never a path: a file is named by a ``pathlib.Path``), ids are entries for every rule
    with the reason "given in code", mappings are records."""
    if isinstance(allow, AllowList) or callable(allow):
        return allow
    if isinstance(allow, os.PathLike):
        return AllowList.read(os.fspath(allow))
    items: list[Any] = [allow] if isinstance(allow, str) else list(allow)
    if all(isinstance(item, Mapping) for item in items) and items:
        return AllowList.from_records(items)
    if all(isinstance(item, str) for item in items):
        return AllowList.from_ids(items)
    raise ConfigError(
        "allow= takes an imgframe.AllowList, image or owner ids, a file path or a function"
    )


def _allowed(
    findings: pd.DataFrame, allow: Any, now: pd.Timestamp, ran: Collection[str]
) -> tuple[np.ndarray, pd.DataFrame, str]:
    """Which findings ``allow`` covers (one boolean each), those findings with the reason
    (``findings.attrs["allowed"]``), and where the entries came from. Expired entries and
    entries that covered nothing are warned about."""
    if isinstance(allow, AllowList):
        split = allow.split(findings, now, ran)
        allow.warn(split, stacklevel=3)
        return split.allowed, split.frame, allow.source
    drop = allow(findings)
    drop = drop.to_numpy(dtype=bool) if isinstance(drop, pd.Series) else np.asarray(drop)
    if drop.dtype != bool or drop.shape != (len(findings),):
        raise ConfigError("allow(findings) must return one boolean per finding")
    rows = np.flatnonzero(drop)
    frame = allowed_table(findings, rows, [_FUNCTION_REASON] * len(rows))
    return drop, frame, "the allow= function"


def _clock_of(frame: pd.DataFrame, now: Timeish) -> Timeish:
    """The clock to audit ``frame`` by: the fetch time it carries
    (``frame.attrs["imgframe"]["fetched_at"]``), else ``now``. A baseline is judged as of
    its own fetch, not as of the newer frame's."""
    provenance = frame.attrs.get("imgframe")
    fetched = provenance.get("fetched_at") if isinstance(provenance, Mapping) else None
    return now if fetched is None else fetched


def _match_keys(findings: pd.DataFrame, fleet: bool) -> pd.Series:
    """What makes a finding "the same" across runs: its image (for fleets
    cloud/region/id)."""
    if not fleet:
        return findings["image_id"].astype(_STRING).reset_index(drop=True)
    if FLEET_INDEX in findings.columns:
        return findings[FLEET_INDEX].astype(_STRING).reset_index(drop=True)
    cloud, region, image = (
        findings[c].astype(_STRING).fillna("").reset_index(drop=True)
        for c in (*_FLEET_COLUMNS[:2], "image_id")
    )
    return cloud + "/" + region + "/" + image  # the fleet index, as fleet.py builds it


def _places(frame: pd.DataFrame) -> pd.Series:
    """``cloud/region`` of each row of a fleet frame or its findings (a region may be NA:
    none named)."""
    cloud, region = (frame[c].astype(_STRING).fillna("") for c in _FLEET_COLUMNS[:2])
    return (cloud + "/" + region).reset_index(drop=True)


def _baseline_findings(
    baseline: pd.DataFrame,
    fleet: bool,
    rules: list[str],
    now: Timeish,
    usage: Any,
    trusted: Iterable[str] | str | None,
) -> pd.DataFrame:
    """``baseline`` as findings: a findings frame as it is, an images table audited with
    the same rules, usage and trusted projects on its own clock."""
    if not isinstance(baseline, pd.DataFrame):
        raise ConfigError("baseline= takes a findings frame or an images table")
    columns = set(baseline.columns)
    if set(required_columns()) <= columns:
        base_fleet = _is_fleet(baseline)
        token = _QUIET.set(True)  # its notes are not this audit's: not logged
        try:
            found = audit(
                baseline, rules=rules, now=_clock_of(baseline, now), usage=usage, trusted=trusted
            )
        finally:
            _QUIET.reset(token)
    elif {"rule", "image_id"} <= columns:
        base_fleet = {"cloud", "region"} <= columns
        found = baseline
    else:
        raise ConfigError(
            "baseline is neither an images table nor findings imgframe wrote (it has no "
            f"'rule' and 'image_id' columns, nor {required_columns()})"
        )
    if base_fleet != fleet:
        what = ("a fleet's", "one cloud's") if base_fleet else ("one cloud's", "a fleet's")
        raise ConfigError(f"baseline= holds {what[0]} images but the frame {what[1]}")
    return found


def _against_baseline(
    every: pd.DataFrame,
    kept: pd.DataFrame,
    baseline: pd.DataFrame,
    df: pd.DataFrame,
    ran: list[str],
) -> tuple[np.ndarray, pd.DataFrame, int]:
    """(which of ``kept`` are new, the resolved baseline findings, how many unchanged).

    The same finding is the same rule on the same image. A baseline finding is resolved
    when no current finding (allowed ones included: allowed is not fixed) matches it and
    its image was not left unread this time (unknown is not resolved); an image no longer
    in the frame is resolved (deleted), unless, in a fleet, its cloud/region has no row at
    all (a target that failed). Only the rules run now are compared."""
    fleet = _is_fleet(df)
    base = baseline[baseline["rule"].astype(_STRING).isin(ran).to_numpy(dtype=bool)]
    base = base.reset_index(drop=True)
    base_keys = base["rule"].astype(_STRING) + "\x1f" + _match_keys(base, fleet)
    once = ~base_keys.duplicated().to_numpy(dtype=bool)  # one finding per rule and image
    base, base_keys = base[once].reset_index(drop=True), base_keys[once].reset_index(drop=True)
    every_keys = (
        every["rule"].astype(_STRING).reset_index(drop=True) + "\x1f" + _match_keys(every, fleet)
    )
    kept_keys = (
        kept["rule"].astype(_STRING).reset_index(drop=True) + "\x1f" + _match_keys(kept, fleet)
    )
    new = ~kept_keys.isin(base_keys).to_numpy(dtype=bool)
    unread = ~(_fetched(df) | definitive_mask(df))
    unknown = pd.Index(df.index[unread]).astype(_STRING)
    gone = ~base_keys.isin(every_keys) & ~_match_keys(base, fleet).isin(unknown)
    if fleet:  # a cloud/region with no row now (a target that failed): unknown, not gone
        gone &= _places(base).isin(_places(df).unique())
    resolved = base[gone.to_numpy(dtype=bool)].reset_index(drop=True)
    columns = [c for c in finding_columns(df) if c in resolved.columns]
    return new, resolved[columns], int((~new).sum())


def audit(
    df: pd.DataFrame,
    rules: Collection[str] | str | None = None,
    allow: AllowArg | None = None,
    now: Timeish = None,
    usage: Usage | None = None,
    profile: Collection[str] | str | None = None,
    baseline: pd.DataFrame | None = None,
    trusted: Iterable[str] | str | None = None,
) -> pd.DataFrame:
    """Run the audit rules and return one tidy findings frame, most severe first.

    Columns :data:`FINDING_COLUMNS`: ``rule`` (category), ``severity`` (ordered category
    over :data:`SEVERITIES`), ``image_id``, ``owner``, ``name``, ``detail`` (a sentence);
    sorted by severity, rule, image id; one finding per image per rule. ``rules``: names
    to run; ``profile``: a profile (or several) to run instead (:func:`profile_names`;
    default ``"default"``, every rule but ``security_properties``; ``"all"`` every rule,
    your registered ones included); giving both is an error. Rows that could not be read
    are always reported as ``fetch_failed``.

    ``allow``: accepted risks to leave out — an :class:`imgframe.AllowList` (entries
    scoped to a rule and an image or owner, with a reason and an expiry; expired entries
    and entries that cover nothing are warned about, :class:`imgframe.AllowListWarning`),
    a ``pathlib.Path`` of an allow-list file, image and/or owner ids (each for every rule,
    reason "given in code"), or a callable ``allow(findings) -> boolean mask`` of the
    findings to drop. The covered findings are :func:`allowed_findings`
    (records in ``findings.attrs["allowed"]``) with their reasons.

    ``baseline``: an older findings frame (or images table, then audited with the same
    rules and usage, as of its own fetch time when it carries one): only the findings new
    since then are returned (same rule and image; for fleets the same cloud, region and
    image); the baseline's findings that are gone are :func:`resolved_findings`
    (records in ``findings.attrs["resolved"]``). A finding the allow-list covers is
    neither; an image that could not be read now leaves its old findings unresolved.

    ``now`` is the clock of the time-based rules (``stale``, ``broken``'s stuck uploads)
    and of the allow-list's expiry: by default when ``df`` was fetched (its provenance's
    ``fetched_at``, :mod:`imgframe.provenance`), so a saved table audited any day gives
    the findings of the day it was fetched; the current time for a frame without one.
    ``usage``: the :func:`imgframe.image_usage` frame, or ``(servers, volumes)``, for the
    usage rules (``unused``, ``only_stopped_servers``); without it they are skipped.
    ``trusted``: the project ids :func:`shared_outside` accepts as members (None: every
    member is reported); the sharing rules need the ``members`` column and are skipped
    without it (a frame fetched without ``members=True``).
    Notes (rules skipped, ``unused`` flagging nothing because the usage is incomplete,
    what was allowed, new and resolved) are in ``findings.attrs["notes"]``
    (:data:`NOTES_ATTR`) and logged; the counts in ``findings.attrs["counts"]``.

    Examples
    --------
    >>> import imgframe
    >>> df = imgframe.frame_from_headers([
    ...     {"x-image-meta-id": "a", "x-image-meta-status": "killed", "x-image-meta-owner": "p1"},
    ...     {"x-image-meta-id": "b", "x-image-meta-status": "killed", "x-image-meta-owner": "p2"},
    ... ])
    >>> audit(df, allow=["p2"])[["rule", "image_id", "detail"]]
         rule image_id                                             detail
    0  broken        a  status killed: the upload failed and the image...
    >>> audit(df, rules=["nope"])
    Traceback (most recent call last):
    ...
    imgframe.errors.ConfigError: unknown rules ['nope']; known: ['fetch_failed', ...]
    >>> older = df.iloc[:1]
    >>> new = audit(df, baseline=older)
    >>> new["image_id"].tolist(), new.attrs["counts"]
    (['b'], {'findings': 1, 'new': 1, 'unchanged': 1, 'resolved': 0})
    """
    selected = _select(rules, profile)
    allow_given = None if allow is None else _allow_list(allow)
    if isinstance(allow_given, AllowList):
        allow_given.check_rules(rule_names())  # before the work: a typo is a usage error
    usage_given = usage
    stamp = _now(now, df)
    df = _table(df)
    fetched = _fetched(df)
    read = None
    parts = [_fetch_failed(df, ~fetched)]
    notes: list[str] = []
    if usage is not None and any(rule.needs_usage for rule in selected):
        usage = _usage_of(df, usage)  # computed once for every rule that reads it
    skipped = [rule.name for rule in selected if rule.needs_usage and usage is None]
    if skipped:
        notes.append(
            f"skipped {', '.join(skipped)}: no usage given (usage=imgframe.image_usage(...) "
            "or the (servers, volumes) frames)"
        )
    has_members = bool(df["members"].notna().any())
    no_members = [rule.name for rule in selected if rule.needs_members and not has_members]
    if no_members:
        notes.append(
            f"skipped {', '.join(no_members)}: no members read (fetch with members=True, "
            "imgframe fetch --members)"
        )
    for rule in selected:
        if rule.needs_members:
            if not has_members:
                continue
            found = rule.function(df, trusted=trusted) if rule.takes_trusted else rule.function(df)
        elif rule.needs_usage:
            if usage is None:
                continue
            complete, why = is_complete(usage)
            if rule.name == "unused" and not complete:
                notes.append(_incomplete_note(why))
                continue
            found = rule.function(df, usage=usage)
        elif rule.builtin:
            found = rule.function(
                df,
                **({"now": stamp} if rule.takes_now else {}),
                **({"usage": usage} if rule.takes_usage and usage is not None else {}),
            )
        else:
            read = df[fetched] if read is None else read
            found = rule.function(read)
            found = found[found.index.isin(read.index)]
        parts.append(_findings(rule.name, rule.severity, found, rule.details(found, stamp), df))

    findings = pd.concat(parts, ignore_index=True)
    ran = sorted({"fetch_failed", *(rule.name for rule in selected)})
    findings["rule"] = pd.Categorical(findings["rule"], categories=ran)
    findings["severity"] = findings["severity"].astype(_SEVERITY_DTYPE)
    types = {"image_id": _STRING, "owner": "category", "name": _STRING, "detail": _STRING}
    order = ["severity", "rule", "image_id"]
    if _is_fleet(df):
        types |= {"cloud": "category", "region": "category", FLEET_INDEX: _STRING}
        order.append(FLEET_INDEX)
    findings = findings.astype(types).sort_values(order, kind="stable")
    findings = findings.reset_index(drop=True)[finding_columns(df)]
    every = findings
    # Said once each, after the audit: what the options changed (logged at info level).
    told: list[str] = []
    counts: dict[str, int] = {}
    allowed_frame = resolved = None
    if allow_given is not None:
        covered, allowed_frame, source = _allowed(findings, allow_given, stamp, ran)
        findings = findings[~covered].reset_index(drop=True)
        counts["allowed"] = int(covered.sum())
        told.append(
            f"allowed {counts['allowed']:,} findings ({source}): "
            "imgframe.allowed_findings(findings)"
        )
    if baseline is not None:
        names = [rule.name for rule in selected] or ["fetch_failed"]
        old = _baseline_findings(baseline, _is_fleet(df), names, now, usage_given, trusted)
        new, resolved, unchanged = _against_baseline(every, findings, old, df, ran)
        findings = findings[new].reset_index(drop=True)
        counts |= {"new": int(new.sum()), "unchanged": unchanged, "resolved": len(resolved)}
        told.append(
            f"baseline: {counts['new']:,} new findings returned, {unchanged:,} unchanged, "
            f"{len(resolved):,} resolved (imgframe.resolved_findings(findings))"
        )
    if rules is None and profile is None:
        left_out = [rule.name for rule in _RULES.values() if DEFAULT_PROFILE not in rule.profiles]
        if left_out:
            told.append(
                f"profile {DEFAULT_PROFILE!r}: not run {', '.join(left_out)} "
                "(profile='all' runs every rule)"
            )
    # Asked for by name: a warning; skipped from the default set: not every audit is
    # about usage, so only an info line.
    level = (
        logging.INFO if rules is None and (usage is None or not has_members) else logging.WARNING
    )
    for note in notes if not _QUIET.get() else ():
        logger.log(level, "%s", note)
    for note in told if not _QUIET.get() else ():
        logger.info("%s", note)
    findings.attrs[NOTES_ATTR] = notes + told
    findings.attrs[COUNTS_ATTR] = {"findings": len(findings), **counts}
    if allowed_frame is not None:
        findings.attrs[ALLOWED_ATTR] = _records(allowed_frame)
    if resolved is not None:
        findings.attrs[RESOLVED_ATTR] = _records(resolved)
    return findings


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """``frame`` as plain JSON-able records (NA as None). attrs hold no DataFrame:
    ``pd.concat`` compares the attrs of the frames it joins, and comparing two DataFrames
    raises; records compare, pickle and serialise."""
    plain = frame.astype(object)
    return plain.where(frame.notna(), None).to_dict("records")  # type: ignore[return-value]


def _aside(findings: pd.DataFrame, key: str, columns: Sequence[str]) -> pd.DataFrame:
    records = findings.attrs.get(key)
    rows = records if isinstance(records, list) else []
    frame = pd.DataFrame.from_records(rows, columns=None if rows else list(columns))
    types: dict[str, Any] = {c: _STRING for c in frame.columns if c not in ("severity", "rule")}
    if "severity" in frame.columns:
        types["severity"] = _SEVERITY_DTYPE
    if "rule" in frame.columns:
        types["rule"] = "category"
    return frame.astype(types)


def allowed_findings(findings: pd.DataFrame) -> pd.DataFrame:
    """The findings an allow-list covered in the audit that made ``findings``, with each
    entry's ``reason`` and ``expires`` (empty when there was no allow-list).

    Examples
    --------
    >>> import imgframe
    >>> df = imgframe.frame_from_headers(
    ...     [{"x-image-meta-id": "a", "x-image-meta-status": "killed"}])
    >>> found = audit(df, allow=imgframe.AllowList.from_records(
    ...     [{"rule": "broken", "image_id": "a", "reason": "lab"}]))
    >>> allowed_findings(found)[["rule", "image_id", "reason"]].values.tolist()
    [['broken', 'a', 'lab']]
    """
    return _aside(findings, ALLOWED_ATTR, ALLOWED_COLUMNS)


def resolved_findings(findings: pd.DataFrame) -> pd.DataFrame:
    """The baseline's findings that the audit that made ``findings`` no longer has
    (empty without a baseline).

    Examples
    --------
    >>> import imgframe
    >>> old = imgframe.frame_from_headers(
    ...     [{"x-image-meta-id": "a", "x-image-meta-status": "killed"}])
    >>> new = imgframe.frame_from_headers(
    ...     [{"x-image-meta-id": "a", "x-image-meta-status": "active",
    ...       "x-image-meta-checksum": "c", "x-image-meta-size": "1"}])
    >>> resolved_findings(audit(new, rules=["broken"], baseline=old))["image_id"].tolist()
    ['a']
    """
    return _aside(findings, RESOLVED_ATTR, FINDING_COLUMNS)
