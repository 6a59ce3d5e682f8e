"""Scoped allow-lists: accepted risks, each for one rule (or all), one image or owner, with
a reason and an optional expiry date.

An :class:`AllowList` is passed to :func:`imgframe.audit` as ``allow=``; the findings it
covers leave the findings frame and are kept aside in ``findings.attrs["allowed"]`` with
the reason of the entry that covered them (the HTML report lists them in an appendix).

Entries
-------
``rule``
    a rule name (:func:`imgframe.rule_names`) or ``*`` for every rule. Names are checked
    when the list is used by :func:`imgframe.audit` (the registry lives there, and a rule
    registered after the list was read is fine); an unknown one is a ``ConfigError``
    naming the entry's file and line.
``image_id`` / ``owner``
    what the entry covers: at least one. With both, the entry covers that image only while
    that owner owns it (an image that changed hands is judged again). For a fleet frame
    ``image_id`` may be the bare id (any cloud and region) or the ``cloud/region/id`` key.
    Neither may hold whitespace or ``#``: ``<id>  # ticket`` is an error, not an id that
    silently matches nothing (write the ticket in ``reason``).
``reason``
    required, non-empty: why the risk is accepted (the report shows it).
``expires``
    optional ``YYYY-MM-DD``. The entry applies up to the end of that day, UTC, judged on
    the audit's clock (``now``, or the fetch time of the frame), so auditing a saved
    snapshot gives the same answer as auditing it when it was fetched. An expired entry
    covers nothing and :func:`imgframe.audit` warns about it (:class:`AllowListWarning`).

An entry that covers no finding of a rule that ran is warned about too: the image was
fixed or deleted, and the entry can go. An entry whose rule did not run (another profile,
``rules=``) is not judged, nor are plain ids given in code (``allow=["id", ...]``, the
older form: each is an entry for every rule matching an image id or an owner, with the
reason "given in code"; it never warned).

Files (:meth:`AllowList.read`, chosen by extension)
---------------------------------------------------
- ``.csv``: a header row naming the columns, ``rule,image_id,owner,reason,expires`` (any
  order; ``rule`` and ``reason`` and one of ``image_id`` / ``owner`` required; ``expires``
  optional), then one entry per row. Commas, or the semicolons and tabs of spreadsheets in
  European locales. Lines starting with ``#`` and blank lines are skipped.
- ``.yaml`` / ``.yml``: a list of mappings with those keys (quote ``"*"``: a bare ``*`` is
  YAML syntax; ids must be text, quote an id made of digits).
- anything else (``.txt``...): the older plain list, one image or owner id per line, for
  every rule and without expiry. ``#`` starts a comment, on its own line or after the id;
  a comment after the id becomes the entry's reason (else ``listed in FILE``). A first
  line holding commas, semicolons or tabs (before any ``#``) makes it the CSV format.

A malformed entry is one :class:`~imgframe.ConfigError` line naming the file and the line
(YAML: the entry's line and index): unknown column, missing reason, no target, a bad date,
an id with whitespace or ``#``.

Examples
--------
>>> allow = AllowList.from_records([
...     {"rule": "public_unprotected", "image_id": "img-1", "reason": "golden image, CHG-42",
...      "expires": "2027-03-31"},
...     {"rule": "*", "owner": "p-lab", "reason": "lab project, wiped weekly"},
... ])
>>> len(allow), allow.entries[0].expires
(2, datetime.date(2027, 3, 31))
>>> AllowList.from_records([{"rule": "*", "image_id": "a", "reason": ""}])
Traceback (most recent call last):
...
imgframe.errors.ConfigError: record 1: missing reason (say why the risk is accepted)
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from imgframe.errors import AllowListWarning, ConfigError

__all__ = [
    "ALLOWED_COLUMNS",
    "ALLOW_COLUMNS",
    "CODE_REASON",
    "AllowEntry",
    "AllowList",
    "Split",
    "allowed_table",
]

#: The columns of an allow-list CSV file (the keys of a YAML entry), in their usual order.
ALLOW_COLUMNS: tuple[str, ...] = ("rule", "image_id", "owner", "reason", "expires")
#: The reason of entries made from plain ids given in code (``allow=["id", ...]``).
CODE_REASON = "given in code"
#: The columns of ``findings.attrs["allowed"]`` (fleet findings add cloud and region).
ALLOWED_COLUMNS: tuple[str, ...] = (
    "rule", "severity", "image_id", "owner", "reason", "expires", "entry",
)  # fmt: skip

_ANY_RULE = "*"
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# Whitespace, '#' (a comment that would silently become part of the id) and controls.
_BAD_TARGET = re.compile(r"[\s#\x00-\x1f\x7f-\x9f]")
_RULE_NAME = re.compile(r"[^\s#\x00-\x1f\x7f-\x9f]+")
_DELIMITERS = (",", ";", "\t")
_YAML_SUFFIXES = (".yaml", ".yml")
_STRING = pd.StringDtype("pyarrow")


@dataclass(frozen=True)
class AllowEntry:
    """One accepted risk. ``where`` says where it came from (``allow.csv line 3``).

    Examples
    --------
    >>> AllowEntry("stale", "golden image", image_id="img-1").covers("stale", "img-1", "p")
    True
    """

    rule: str
    reason: str
    image_id: str | None = None
    owner: str | None = None
    expires: date | None = None
    where: str = "code"
    #: The older plain ids: ``image_id`` and ``owner`` are one id that matches either.
    either: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        where = self.where
        if not isinstance(self.rule, str) or not _RULE_NAME.fullmatch(self.rule.strip()):
            raise ConfigError(f"{where}: rule must be a rule name or '*', got {self.rule!r}")
        object.__setattr__(self, "rule", self.rule.strip())
        if not isinstance(self.reason, str) or not self.reason.strip():
            raise ConfigError(f"{where}: missing reason (say why the risk is accepted)")
        object.__setattr__(self, "reason", self.reason.strip())
        for name in ("image_id", "owner"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, str):
                raise ConfigError(f"{where}: {name} must be text, got {value!r}")
            value = value.strip()
            if _BAD_TARGET.search(value):
                raise ConfigError(
                    f"{where}: {name} {value!r} holds whitespace or '#' (no id does; a note "
                    "belongs in reason)"
                )
            object.__setattr__(self, name, value or None)
        if self.image_id is None and self.owner is None:
            raise ConfigError(f"{where}: give image_id or owner (or both) for the entry")
        if self.expires is not None and (
            isinstance(self.expires, datetime) or not isinstance(self.expires, date)
        ):
            raise ConfigError(f"{where}: expires must be a date, got {self.expires!r}")

    def expired(self, now: pd.Timestamp) -> bool:
        """Past the end of ``expires`` (UTC) at ``now`` (an aware timestamp).

        Examples
        --------
        >>> e = AllowEntry("*", "r", owner="p", expires=date(2026, 11, 1))
        >>> e.expired(pd.Timestamp("2026-11-01T23:59", tz="UTC")), e.expired(
        ...     pd.Timestamp("2026-11-02", tz="UTC"))
        (False, True)
        """
        if self.expires is None:
            return False
        end = pd.Timestamp(self.expires, tz="UTC") + pd.Timedelta(days=1)
        return bool(now >= end)

    def covers(self, rule: str, image_id: str | None, owner: str | None) -> bool:
        """Whether the entry covers one finding (what :meth:`AllowList.split` does for a
        whole frame at once). Expiry is not judged here."""
        if self.rule not in (_ANY_RULE, rule):
            return False
        if self.either:
            return self.image_id in (image_id, owner)
        return (self.image_id is None or self.image_id == image_id) and (
            self.owner is None or self.owner == owner
        )

    def describe(self) -> str:
        """The entry in a few words, for warnings: where, rule and target."""
        if self.either:
            target = f"id {self.image_id}"
        else:
            target = " ".join(
                f"{name} {value}"
                for name, value in (("image", self.image_id), ("owner", self.owner))
                if value is not None
            )
        return f"{self.where} ({self.rule} for {target})"


@dataclass(frozen=True)
class Split:
    """What :meth:`AllowList.split` found: which findings are allowed and by what."""

    #: One boolean per finding: covered by an entry (to be kept aside).
    allowed: np.ndarray
    #: The allowed findings with the covering entry's reason (:data:`ALLOWED_COLUMNS`).
    frame: pd.DataFrame
    expired: tuple[AllowEntry, ...]
    unmatched: tuple[AllowEntry, ...]


class AllowList:
    """Accepted risks for :func:`imgframe.audit` (``allow=``); see the module docstring.

    Build one from a file (:meth:`read`), from records (:meth:`from_records`), from plain
    ids (:meth:`from_ids`, what ``allow=["id", ...]`` means) or from entries.

    Examples
    --------
    >>> import imgframe
    >>> df = imgframe.frame_from_headers([
    ...     {"x-image-meta-id": "a", "x-image-meta-status": "killed"},
    ...     {"x-image-meta-id": "b", "x-image-meta-status": "killed"},
    ... ])
    >>> allow = imgframe.AllowList.from_records(
    ...     [{"rule": "broken", "image_id": "a", "reason": "kept for the post-mortem"}])
    >>> findings = imgframe.audit(df, allow=allow)
    >>> findings["image_id"].tolist(), imgframe.allowed_findings(findings)["reason"].tolist()
    (['b'], ['kept for the post-mortem'])
    """

    def __init__(
        self,
        entries: Iterable[AllowEntry] = (),
        *,
        source: str = "code",
        warn_unmatched: bool = True,
    ) -> None:
        self.entries: tuple[AllowEntry, ...] = tuple(entries)
        self.source = source
        #: Warn about entries that covered nothing (not for plain ids given in code, which
        #: never warned: a standing list of trusted owners is not stale for having no
        #: findings today).
        self.warn_unmatched = warn_unmatched
        for entry in self.entries:
            if not isinstance(entry, AllowEntry):
                raise ConfigError(f"an AllowList holds AllowEntry objects, got {entry!r}")

    def __iter__(self) -> Iterator[AllowEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"AllowList({len(self.entries)} entries from {self.source})"

    # ------------------------------------------------------------------ building
    @classmethod
    def from_records(
        cls, records: Iterable[Mapping[str, Any]], *, source: str = "record"
    ) -> AllowList:
        """Entries from mappings with the keys of :data:`ALLOW_COLUMNS`; ``expires`` a
        ``YYYY-MM-DD`` text or a :class:`datetime.date`. Errors name ``record N``.

        Examples
        --------
        >>> AllowList.from_records([{"rule": "stale", "owner": "p1", "reason": "archive"}])
        AllowList(1 entries from record)
        """
        entries = []
        for number, record in enumerate(records, 1):
            where = f"{source} {number}"
            if not isinstance(record, Mapping):
                raise ConfigError(f"{where}: an entry is a mapping of {list(ALLOW_COLUMNS)}")
            entries.append(_entry(dict(record), where))
        return cls(entries, source=source)

    @classmethod
    def from_ids(
        cls, ids: Iterable[str], *, reason: str = CODE_REASON, source: str = "code"
    ) -> AllowList:
        """The older form: image or owner ids, each for every rule, without expiry (an id
        matches a finding's image id or its owner). Ids given in code (``source="code"``)
        are not warned about when they cover nothing; ids from a file are.

        Examples
        --------
        >>> [e.describe() for e in AllowList.from_ids(["p2"])]
        ['code (* for id p2)']
        """
        entries = []
        for n, value in enumerate(ids, 1):
            if not isinstance(value, str):
                raise ConfigError(f"allow ids must be text, got {value!r}")
            where = source if source == "code" else f"{source} {n}"
            entries.append(
                AllowEntry(_ANY_RULE, reason, image_id=value, owner=value, where=where, either=True)
            )
        return cls(entries, source=source, warn_unmatched=source != "code")

    @classmethod
    def read(cls, path: str | Path) -> AllowList:
        """Read an allow-list file: ``.csv``, ``.yaml``/``.yml``, or a plain list of ids
        (any other extension); see the module docstring for the formats.

        Examples
        --------
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "allow.csv"
        >>> _ = p.write_text("rule,image_id,reason,expires\\nstale,img-1,archive,2027-01-31\\n")
        >>> [e.where for e in AllowList.read(p)] == [f"{p} line 2"]
        True
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except OSError as exc:
            raise ConfigError(f"cannot read allow-list {str(path)!r}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"allow-list {str(path)!r} is not UTF-8 text") from None
        return cls.parse(text, str(path), path.suffix.lower())

    @classmethod
    def parse(cls, text: str, source: str, suffix: str = ".csv") -> AllowList:
        """Entries from the text of a file named ``source`` in the format of ``suffix``
        (what :meth:`read` does once the file is read).

        Examples
        --------
        >>> AllowList.parse("img-1  # CHG-7\\n", "allow.txt", ".txt").entries[0].reason
        'CHG-7'
        """
        text = text.removeprefix("\ufeff")
        if suffix in _YAML_SUFFIXES:
            return cls(_yaml_entries(text, source), source=source)
        first = next((line for line in _lines(text) if _significant(line)), None)
        if first is None:
            return cls((), source=source)
        # A comment after a plain id may well hold a comma: only the id part is looked at.
        if suffix == ".csv" or any(d in first.partition("#")[0] for d in _DELIMITERS):
            return cls(_csv_entries(text, source), source=source)
        return cls(_plain_entries(text, source), source=source)

    # ------------------------------------------------------------------ using
    def check_rules(self, known: Collection[str]) -> None:
        """Refuse an entry naming a rule not in ``known`` (``*`` is always fine).

        Examples
        --------
        >>> AllowList.from_records([{"rule": "stael", "owner": "p", "reason": "r"}]
        ...                        ).check_rules(["stale"])
        Traceback (most recent call last):
        ...
        imgframe.errors.ConfigError: record 1: unknown rule 'stael'; known: ['stale']
        """
        for entry in self.entries:
            if entry.rule != _ANY_RULE and entry.rule not in known:
                raise ConfigError(
                    f"{entry.where}: unknown rule {entry.rule!r}; known: {list(known)}"
                )

    def split(self, findings: pd.DataFrame, now: pd.Timestamp, rules_run: Collection[str]) -> Split:
        """Which of ``findings`` (an :func:`imgframe.audit` frame) the entries cover at
        ``now``; the first covering entry in list order gives the reason. Entries whose
        rule is not in ``rules_run`` are not judged for matching nothing."""
        expired = tuple(e for e in self.entries if e.expired(now))
        live = [(n, e) for n, e in enumerate(self.entries) if not e.expired(now)]
        # finding row -> the first covering entry's number; every entry that covered one
        rows, used = _covering(findings, live)
        allowed = np.zeros(len(findings), dtype=bool)
        allowed[rows.index.to_numpy(dtype=np.int64)] = True
        unmatched = tuple(
            e for n, e in live if n not in used and (e.rule == _ANY_RULE or e.rule in rules_run)
        )
        return Split(allowed, _allowed_frame(findings, rows, self.entries), expired, unmatched)

    def warn(self, result: Split, stacklevel: int = 2) -> None:
        """One :class:`AllowListWarning` per expired entry and per entry that matched
        nothing (what :func:`imgframe.audit` emits)."""
        for entry in result.expired:
            warnings.warn(
                f"allow-list entry {entry.describe()} expired on {entry.expires}: it no "
                "longer applies",
                AllowListWarning,
                stacklevel=stacklevel + 1,
            )
        for entry in result.unmatched if self.warn_unmatched else ():
            warnings.warn(
                f"allow-list entry {entry.describe()} matched no finding: remove it if the "
                "risk is gone",
                AllowListWarning,
                stacklevel=stacklevel + 1,
            )


# --------------------------------------------------------------------------- matching
def _covering(
    findings: pd.DataFrame, live: list[tuple[int, AllowEntry]]
) -> tuple[pd.Series, set[int]]:
    """Finding row number -> the number of the first live entry covering it, and the
    numbers of every entry that covered a finding."""
    if not live or findings.empty:
        return pd.Series([], dtype=np.int64), set()
    entries = pd.DataFrame(
        {
            "n": [n for n, _ in live],
            "e_rule": [e.rule for _, e in live],
            "e_image": pd.array([e.image_id for _, e in live], dtype=_STRING),
            "e_owner": pd.array([e.owner for _, e in live], dtype=_STRING),
            "either": [e.either for _, e in live],
        }
    )

    def text(column: str) -> Any:  # Arrow strings stay Arrow (no Python objects)
        return findings[column].astype(_STRING).array

    rows = pd.DataFrame(
        {
            "row": np.arange(len(findings)),
            "rule": text("rule"),
            "image": text("image_id"),
            "owner": text("owner"),
        }
    )
    # One join per way an entry can name its target; NA never joins NA (dropped first).
    joins = [("image", "e_image"), ("owner", "e_owner")]
    if "key" in findings.columns:
        rows["key"] = text("key")
        joins.append(("key", "e_image"))
    pairs = []
    for left, right in joins:
        named = entries[entries[right].notna()]
        # Only the findings an entry names go into the join (isin is vectorized; a
        # million findings against few entries would otherwise be a million-row merge).
        side = rows[rows[left].isin(named[right].unique()).to_numpy(dtype=bool)]
        pairs.append(side.merge(named, left_on=left, right_on=right, how="inner"))
    both = pd.concat(pairs, ignore_index=True)
    rule_ok = both["e_rule"].eq(_ANY_RULE) | both["e_rule"].eq(both["rule"])
    image_ok = both["e_image"].isna() | both["e_image"].eq(both["image"]).fillna(False)
    if "key" in both:
        image_ok |= both["e_image"].eq(both["key"]).fillna(False)
    owner_ok = both["e_owner"].isna() | both["e_owner"].eq(both["owner"]).fillna(False)
    keep = rule_ok & (both["either"] | (image_ok & owner_ok))
    hits = both[keep.to_numpy(dtype=bool)]
    return hits.groupby("row")["n"].min(), set(hits["n"].tolist())


def _allowed_frame(
    findings: pd.DataFrame, rows: pd.Series, entries: tuple[AllowEntry, ...]
) -> pd.DataFrame:
    chosen = [entries[n] for n in rows.to_numpy().tolist()]
    return allowed_table(
        findings,
        rows.index.to_numpy(dtype=np.int64),
        reasons=[e.reason for e in chosen],
        expires=[e.expires for e in chosen],
        entries=[e.where for e in chosen],
    )


def allowed_table(
    findings: pd.DataFrame,
    positions: Any,
    reasons: Sequence[str],
    expires: Sequence[date | None] | None = None,
    entries: Sequence[str | None] | None = None,
) -> pd.DataFrame:
    """The allowed findings at ``positions`` (row numbers of ``findings``) with why:
    :data:`ALLOWED_COLUMNS` (fleet findings add ``cloud`` and ``region``), the shape of
    ``findings.attrs["allowed"]``.

    Examples
    --------
    >>> f = pd.DataFrame({"rule": ["stale"], "severity": ["low"], "image_id": ["a"],
    ...                   "owner": ["p"]})
    >>> allowed_table(f, [0], ["archive"])[["rule", "image_id", "reason"]].values.tolist()
    [['stale', 'a', 'archive']]
    """
    picked = findings.iloc[np.asarray(positions, dtype=np.int64)]
    count = len(picked)
    where = [c for c in ("cloud", "region") if c in findings.columns]
    out = pd.DataFrame(
        {
            "rule": picked["rule"].astype(_STRING).to_numpy(),
            "severity": picked["severity"].to_numpy(),
            **{c: picked[c].astype(_STRING).to_numpy() for c in where},
            "image_id": picked["image_id"].astype(_STRING).to_numpy(),
            "owner": picked["owner"].astype(_STRING).to_numpy(),
            "reason": pd.array(reasons, dtype=_STRING),
            "expires": pd.array(
                [None if e is None else e.isoformat() for e in (expires or [None] * count)],
                dtype=_STRING,
            ),
            "entry": pd.array(entries or [None] * count, dtype=_STRING),
        }
    )
    if isinstance(findings["severity"].dtype, pd.CategoricalDtype):  # keep the order
        out["severity"] = pd.Categorical(out["severity"], dtype=findings["severity"].dtype)
    return out


# --------------------------------------------------------------------------- files
def _lines(text: str) -> list[str]:
    """The lines as an editor and the csv module count them (\\n, \\r\\n or \\r only)."""
    return io.StringIO(text, newline="").readlines()


def _significant(line: str) -> bool:
    text = line.strip()
    return bool(text) and not text.startswith("#")


def _date(value: Any, where: str) -> date | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, datetime):  # YAML reads 2027-01-31 12:00 as a datetime
        raise ConfigError(f"{where}: expires must be a date YYYY-MM-DD, got {value!r}")
    if isinstance(value, date):
        return value
    text = str(value).strip() if isinstance(value, str) else None
    if text is None or not _DATE.fullmatch(text):
        raise ConfigError(f"{where}: bad date {value!r} in expires (write YYYY-MM-DD)")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{where}: bad date {value!r} in expires (no such day)") from None


def _entry(record: dict[str, Any], where: str) -> AllowEntry:
    unknown = [str(k) for k in record if k not in ALLOW_COLUMNS]
    if unknown:
        raise ConfigError(
            f"{where}: unknown column {unknown[0]!r}; the columns are {','.join(ALLOW_COLUMNS)}"
        )

    def text(name: str) -> str | None:
        value = record.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {name} must be text, got {value!r} (quote it)")
        return value.strip() or None

    rule = text("rule")
    if rule is None:
        raise ConfigError(f"{where}: missing rule (a rule name, or '*' for every rule)")
    return AllowEntry(
        rule,
        text("reason") or "",
        image_id=text("image_id"),
        owner=text("owner"),
        expires=_date(record.get("expires"), where),
        where=where,
    )


def _csv_entries(text: str, source: str) -> list[AllowEntry]:
    lines = _lines(text)
    start = next(n for n, line in enumerate(lines) if _significant(line))
    header_line = lines[start].strip()
    delimiter = max(_DELIMITERS, key=header_line.count)
    where = f"{source} line {start + 1}"
    try:
        header = next(csv.reader([header_line], delimiter=delimiter, strict=True))
    except csv.Error as exc:
        raise ConfigError(f"{where}: not a CSV header ({_one_line(str(exc))})") from None
    names = [name.strip().lower() for name in header]
    unknown = [name for name in names if name not in ALLOW_COLUMNS]
    if unknown:
        raise ConfigError(
            f"{where}: unknown column {unknown[0]!r}; an allow-list CSV starts with the header "
            f"{','.join(ALLOW_COLUMNS)} (a plain list of ids goes in a .txt file)"
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"{where}: column {repeated[0]!r} is given twice")
    for required in ("rule", "reason"):
        if required not in names:
            raise ConfigError(f"{where}: the header has no {required!r} column")
    if "image_id" not in names and "owner" not in names:
        raise ConfigError(f"{where}: the header needs an 'image_id' or an 'owner' column")
    body = io.StringIO("".join(lines[start + 1 :]), newline="")
    reader = csv.reader(body, delimiter=delimiter, strict=True)
    entries = []
    done = start + 1  # lines before the record being read
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise ConfigError(
                f"{source} line {done + 1}: not a CSV row ({_one_line(str(exc))})"
            ) from None
        first_line = done + 1
        done = start + 1 + reader.line_num
        if not any(cell.strip() for cell in row) or row[0].lstrip().startswith("#"):
            continue
        where = f"{source} line {first_line}"
        if len(row) > len(names):
            raise ConfigError(
                f"{where}: {len(row)} fields, the header has {len(names)} ({','.join(names)})"
            )
        entries.append(_entry(dict(zip(names, row, strict=False)), where))
    return entries


def _plain_entries(text: str, source: str) -> list[AllowEntry]:
    entries = []
    for number, line in enumerate(_lines(text), 1):
        value, hash_, comment = line.partition("#")
        value = value.strip()
        if not value:
            continue
        where = f"{source} line {number}"
        if _BAD_TARGET.search(value):
            raise ConfigError(f"{where}: {value!r} is not one id (whitespace inside)")
        reason = comment.strip() if hash_ and comment.strip() else f"listed in {source}"
        entries.append(
            AllowEntry(_ANY_RULE, reason, image_id=value, owner=value, where=where, either=True)
        )
    return entries


def _yaml_entries(text: str, source: str) -> list[AllowEntry]:
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML comes with the openstack extra
        raise ConfigError(
            f"reading {source!r} needs PyYAML (pip install pyyaml), or write it as .csv"
        ) from None
    loader = None
    try:
        loader = yaml.SafeLoader(text)
        root = loader.get_single_node()
        if root is None:
            return []
        if not isinstance(root, yaml.SequenceNode):
            line = root.start_mark.line + 1
            raise ConfigError(f"{source} line {line}: an allow-list is a YAML list of entries")
        entries = []
        for index, item in enumerate(root.value, 1):
            where = f"{source} line {item.start_mark.line + 1} (entry {index})"
            if not isinstance(item, yaml.MappingNode):
                raise ConfigError(f"{where}: an entry is a mapping of {list(ALLOW_COLUMNS)}")
            record: dict[str, Any] = {}
            for key_node, value_node in item.value:
                key = _construct(loader, key_node, source)
                if not isinstance(key, str):
                    raise ConfigError(f"{where}: unknown column {key!r}")
                if key in record:
                    raise ConfigError(f"{where}: {key!r} is given twice")
                record[key] = _construct(loader, value_node, source)
            entries.append(_entry(record, where))
        return entries
    except ConfigError:
        raise
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        if mark is not None:
            line = f" line {mark.line + 1}"
        else:  # a ReaderError (a character YAML refuses) knows its position only
            position = getattr(exc, "position", 0)
            line = f" line {text[:position].count(chr(10)) + 1}"
        problem = _one_line(str(getattr(exc, "problem", None) or type(exc).__name__))
        hint = " (quote '*')" if "*" in text else ""
        raise ConfigError(f"{source}{line}: not YAML ({problem}){hint}") from None
    except RecursionError:
        raise ConfigError(
            f"{source} line 1: not a readable YAML allow-list (nested too deep)"
        ) from None
    finally:
        if loader is not None:
            loader.dispose()


def _construct(loader: Any, node: Any, source: str) -> Any:
    """One YAML value; the constructor's own failures (a timestamp that is no date, an
    unhashable key) name the node's line."""
    try:
        return loader.construct_object(node, deep=True)
    except (ValueError, TypeError, OverflowError) as exc:
        line = node.start_mark.line + 1
        raise ConfigError(
            f"{source} line {line}: not a readable YAML value ({_one_line(str(exc))})"
        ) from None


def _one_line(text: str) -> str:
    return " ".join(text.split())
