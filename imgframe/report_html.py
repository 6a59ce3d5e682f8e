"""One self-contained HTML report of a fleet audit, to mail, print or attach to a ticket.

The file has its CSS inline, its charts as inline SVG and no script, image, font or link
to anything but its own anchors: it opens offline and prints the same. It says what was
audited (the provenance a fetch left in ``df.attrs["imgframe"]``, or that it is unknown),
as of when, with which profile, allow-list and baseline; the headline figures and a few
bar charts; then one section per rule that has findings (what it means, what to do, the
first ``max_rows`` findings, and how many more are in the findings file), the changes of
a snapshot diff, duplicate groups, owners, and the allowed findings as an appendix.

Every piece of text is untrusted: image names and owners are chosen by tenants, and the
attrs of a frame read back from a file are whatever the file says. All of it goes through
:func:`_esc` (HTML-escaped, control characters shown as ``\\x..``, very long values cut),
and attrs of an unexpected shape are left out, never an exception.

Examples
--------
>>> human_bytes(1_319_413_953_331)
'1.2 TiB'
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd

from imgframe.atomic import atomic_path
from imgframe.audits import rule_guidance
from imgframe.errors import InvalidInputError
from imgframe.schema import FLEET_INDEX

__all__ = ["CHANGE_TEXT", "SEVERITIES", "human_bytes", "render_report", "report"]

#: Severities in the order the report lists them (most urgent first).
SEVERITIES = ("high", "medium", "low", "info")


#: Per ``imgframe.diff`` change, what it means; the report lists changes in this order
#: (the ones an auditor acts on first), then any other change in order of appearance.
CHANGE_TEXT: dict[str, str] = {
    "became_public": "now visible to every project",
    "protection_removed": "no longer protected against deletion",
    "signature_removed": "an img_signature property is gone",
    "owner_changed": "moved to another project",
    "checksum_changed": "its data is different",
    "status_changed": "its status changed",
    "disappeared": "answered 404: the image is gone",
    "appeared": "new since the older snapshot",
    "properties_changed": "custom properties added, removed or changed",
    "became_private": "no longer public",
    "protection_added": "now protected",
    "unknown": "could not be read in one of the snapshots: unknown, not gone",
}

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
_MISSING = "—"  # shown for NA: an empty cell reads as "nothing", NA means "unknown"
_DUPLICATE_IDS_SHOWN = 5
_OWNERS_SHOWN = 100
_OWNERS_CHARTED = 15
_ALLOWED_SHOWN = 200
_TEXT_LIMIT = 400  # characters of one untrusted value shown; the files keep it whole
_LABEL_LIMIT = 32  # characters of a chart label (the whole label is its SVG title)
_DETAIL_GROUPS = 8  # a rule with at most this many distinct details gets a breakdown
_AGE_BUCKETS = (
    ("< 30 days", pd.Timedelta(days=30)),
    ("< 90 days", pd.Timedelta(days=90)),
    ("< 1 year", pd.Timedelta(days=365)),
    ("< 2 years", pd.Timedelta(days=730)),
)
# C0 and C1 controls (tab and newline aside) and lone surrogates: shown as escapes, so that
# a name holding them is visible as such and the file stays valid UTF-8.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_SLUG = re.compile(r"[^A-Za-z0-9_-]+")
_LONG_WORD = re.compile(r"[^\s-]{37,}")  # longer than a UUID
# Columns kept wide enough for their usual values on one line (a UUID, a project id, an
# image name, the ids in a monospace font); longer values wrap inside the cell.
_COLUMN_KINDS = {"image_id": "uuid", "owner": "owner", "name": "name", "detail": "detail"}

_CSS = """
:root { --high: #b00020; --medium: #b35c00; --low: #6b7a00; --info: #5a5a5a; --line: #d5d5d5; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
  margin: 0 auto; padding: 1rem 1.5rem 3rem; max-width: 1400px; }
.page { display: grid; grid-template-columns: 14rem minmax(0, 1fr); gap: 2rem; }
nav.toc { position: sticky; top: 0; align-self: start; max-height: 100vh; overflow-y: auto;
  padding: 1rem 0; font-size: 13px; }
nav.toc ol { list-style: none; padding-left: 0; margin: 0; }
nav.toc ol ol { padding-left: 1rem; }
nav.toc li { margin: .15em 0; overflow-wrap: anywhere; }
nav.toc .n { color: #666; }
main { min-width: 0; }
h1 { margin: .6rem 0 .2rem; font-size: 1.7rem; }
h2 { margin: 0 0 .4rem; font-size: 1.3rem; }
h3 { margin: 1.2rem 0 .3rem; font-size: 1.05rem; }
.lede { color: #444; margin: 0 0 1rem; }
section { margin-top: 2.2rem; padding-top: .4rem; border-top: 1px solid var(--line);
  scroll-margin-top: .8rem; }
.change { scroll-margin-top: .8rem; }
section:target, section > div:target { outline: 3px solid #7aa7e0; outline-offset: 4px; }
a { color: #1a56a8; }
p, li, dd, figcaption, .detail { overflow-wrap: anywhere; }
td, th { overflow-wrap: break-word; }
.long { overflow-wrap: anywhere; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: .4rem 0 .8rem; max-width: 100%; font-size: 13px;
  line-height: 1.35; }
th, td { border: 1px solid var(--line); padding: .2em .55em; text-align: left;
  vertical-align: top; }
th { background: #f3f3f3; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.id { font: 12px/1.4 ui-monospace, "DejaVu Sans Mono", monospace; }
td.uuid { min-width: calc(36ch + 1.2em); } td.owner, td.hash { min-width: calc(32ch + 1.2em); }
td.name { min-width: 11em; } td.sentence { min-width: 12em; }
table.wide { width: 100%; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(10.5rem, 1fr));
  gap: .6rem; margin: .6rem 0 1rem; }
.figure { border: 1px solid var(--line); border-radius: 6px; padding: .5rem .7rem; }
.figure .value { display: block; font-size: 1.35rem; font-weight: 600; }
.figure .label { color: #555; font-size: 12px; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 30rem), 1fr));
  gap: 1rem 2rem; }
figure { margin: 0; min-width: 0; }
figcaption { font-weight: 600; margin-bottom: .3rem; }
svg.chart { width: 100%; height: auto; display: block; }
svg.chart text { font: 13px system-ui, sans-serif; fill: #222; }
svg.chart .bar { fill: #4f7fbf; }
.sev-high { fill: var(--high); color: var(--high); }
.sev-medium { fill: var(--medium); color: var(--medium); }
.sev-low { fill: var(--low); color: var(--low); }
.sev-info { fill: var(--info); color: var(--info); }
.badge { font-size: 12px; font-weight: 600; text-transform: uppercase; letter-spacing: .03em;
  padding: 0 .4em; border: 1px solid currentColor; border-radius: 3px; vertical-align: middle; }
.meaning { margin: .2rem 0; } .todo { margin: .2rem 0 .6rem; }
.detail { background: #f7f7f4; border-left: 3px solid var(--line); padding: .3rem .6rem; }
.more { color: #555; font-style: italic; }
.note { background: #fff6e0; border-left: 3px solid #e0a000; padding: .3rem .6rem; }
dl.facts { display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: .15rem 1rem;
  margin: .4rem 0 .8rem; }
dl.facts dt { color: #555; } dl.facts dd { margin: 0; }
@media (max-width: 60rem) {
  .page { display: block; }
  nav.toc { position: static; max-height: none; }
}
@media print {
  @page { margin: 14mm; }
  body { max-width: none; padding: 0; font-size: 11px; }
  .page { display: block; }
  nav.toc { position: static; max-height: none; overflow: visible; }
  section { break-before: page; border-top: none; }
  .scroll { overflow: visible; }
  table { width: 100%; }
  thead { display: table-header-group; }
  tr, figure, .figure { break-inside: avoid; }
  a { color: inherit; text-decoration: none; }
}
"""


# --------------------------------------------------------------------------- text
def human_bytes(size: Any) -> str:
    """A byte count as a person reads it: binary units, one decimal.

    Examples
    --------
    >>> human_bytes(512), human_bytes(1536), human_bytes(5 * 2**40), human_bytes(None)
    ('512 B', '1.5 KiB', '5.0 TiB', '—')
    """
    if size is None or pd.isna(size):
        return _MISSING
    value = float(size)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # the loop returns at the last unit


def _str(value: Any) -> str:
    """Any value as text, whatever its ``__str__`` does (untrusted attrs may hold anything)."""
    if isinstance(value, str):
        return value
    try:
        return str(value)
    except Exception:  # a hostile or broken object: its type is all that can be said
        return f"<{type(value).__name__}>"


def _esc(value: Any, limit: int = _TEXT_LIMIT) -> str:
    """``value`` as HTML text: escaped, unprintable characters as escapes, at most ``limit``
    characters (then an ellipsis).

    Examples
    --------
    >>> _esc('<b a="1">\\x00')
    '&lt;b a=&quot;1&quot;&gt;\\\\x00'
    """
    text = _str(value)
    if len(text) > limit:
        text = text[:limit] + "…"
    text = _UNPRINTABLE.sub(
        lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text
    )
    return html.escape(text, quote=True)


def _is_na(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    try:
        return bool(isinstance(value, float | np.floating) and np.isnan(value))
    except (TypeError, ValueError):
        return False


def _cell(value: Any) -> str:
    """A plain value as display text (NA as a dash, integers with thousands separators)."""
    if _is_na(value):
        return _MISSING
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, pd.Timestamp | datetime):
        try:
            return value.strftime("%Y-%m-%d %H:%M UTC")
        except ValueError:  # out of strftime's range
            return _str(value)
    return _str(value)


def _n(count: Any) -> str:
    return f"{int(count):,}"


def _plural(count: int, one: str, many: str | None = None) -> str:
    return f"{count:,} {one if count == 1 else (many or one + 's')}"


def _utc(now: Any) -> pd.Timestamp:
    """``now`` (None for the current time; naive means UTC) as an aware UTC timestamp."""
    stamp = pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _when(stamp: pd.Timestamp) -> str:
    return stamp.strftime("%Y-%m-%d %H:%M UTC")


# --------------------------------------------------------------------------- HTML pieces
class _Column:
    """How one column of a table is shown: header, CSS class, value -> text."""

    def __init__(self, name: str, header: str | None = None, kind: str = "text") -> None:
        self.name, self.header, self.kind = name, header or name.replace("_", " "), kind

    def render(self, value: Any) -> str:
        if self.kind == "bytes":
            return human_bytes(value) if not _is_na(value) else _MISSING
        return _cell(value)

    @property
    def css(self) -> str:
        return {
            "num": ' class="num"',
            "bytes": ' class="num"',
            "id": ' class="id"',
            "uuid": ' class="id uuid"',
            "owner": ' class="id owner"',
            "hash": ' class="id hash"',
            "name": ' class="name"',
            "detail": ' class="sentence"',
        }.get(self.kind, "")


def _table(frame: pd.DataFrame, columns: Sequence[_Column], *, wide: bool = False) -> str:
    """The rows of ``frame`` as an escaped table inside its own horizontal scroll box."""
    head = "".join(f"<th{c.css}>{_esc(c.header)}</th>" for c in columns)
    values = [frame[c.name].tolist() if c.name in frame else [None] * len(frame) for c in columns]
    rows = []
    for row in zip(*values, strict=True) if values else ():
        cells = "".join(
            f"<td{c.css}>{_shown(c.render(v))}</td>" for c, v in zip(columns, row, strict=True)
        )
        rows.append(f"<tr>{cells}</tr>")
    cls = ' class="wide"' if wide else ""
    return (
        f'<div class="scroll"><table{cls}><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _shown(text: str) -> str:
    """A cell's text, escaped; one with a word too long for a column may break anywhere
    (the others break between words only, so that short words such as a region's name
    never split)."""
    if _LONG_WORD.search(text) is None:
        return _esc(text)
    return f'<span class="long">{_esc(text)}</span>'


def _more(rest: int, where: str) -> str:
    return f'<p class="more">{_n(rest)} more in {_esc(where)}.</p>' if rest > 0 else ""


def _figures(items: Iterable[tuple[str, str]]) -> str:
    cards = "".join(
        f'<div class="figure"><span class="value">{_esc(value)}</span>'
        f'<span class="label">{_esc(label)}</span></div>'
        for label, value in items
    )
    return f'<div class="figures">{cards}</div>'


def _facts(items: Iterable[tuple[str, str]]) -> str:
    """Label/value pairs as a definition list (values already HTML)."""
    body = "".join(f"<dt>{_esc(label)}</dt><dd>{value}</dd>" for label, value in items)
    return f'<dl class="facts">{body}</dl>'


def _bars(title: str, items: Sequence[tuple[str, float, str, str]]) -> str:
    """A horizontal bar chart as inline SVG: ``(label, value, value text, bar class)`` per bar.

    Labels are cut to a width and keep the whole text in the bar's SVG title; every text
    is escaped. The SVG scales to its box (``viewBox``), so it never widens the page.
    """
    if not items:
        return ""
    row, label_w, bar_w, value_w = 22, 270, 230, 130
    width, height = label_w + bar_w + value_w, row * len(items) + 6
    top = max((value for _, value, _, _ in items), default=0) or 1
    parts = []
    for n, (label, value, value_text, cls) in enumerate(items):
        shown = label if len(label) <= _LABEL_LIMIT else label[: _LABEL_LIMIT - 1] + "…"
        y = n * row + 4
        length = max(1.0, bar_w * float(value) / top) if value else 0.0
        parts.append(
            f"<g><title>{_esc(label)}: {_esc(value_text)}</title>"
            f'<text x="{label_w - 8}" y="{y + 14}" text-anchor="end">{_esc(shown)}</text>'
            f'<rect class="{_esc(cls)}" x="{label_w}" y="{y + 2}" width="{length:.1f}" '
            f'height="15"/><text x="{label_w + length + 6:.1f}" y="{y + 14}">'
            f"{_esc(value_text)}</text></g>"
        )
    return (
        f"<figure><figcaption>{_esc(title)}</figcaption>"
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{_esc(title)}">{"".join(parts)}</svg></figure>'
    )


def _slug(text: str) -> str:
    return _SLUG.sub("-", _str(text)).strip("-")[:60] or "x"


class _Anchors:
    """Unique, safe ``id`` values for sections named by untrusted text (rule names, kinds
    of change). Each has a prefix and a dash (``rule-``, ``change-``), so it never equals
    a fixed section's id (``audited``, ``summary``, ``changes``...)."""

    def __init__(self) -> None:
        self._used: set[str] = set()

    def __call__(self, prefix: str, name: str) -> str:
        base = f"{prefix}-{_slug(name)}"
        anchor, n = base, 1
        while anchor in self._used:
            n += 1
            anchor = f"{base}-{n}"
        self._used.add(anchor)
        return anchor


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_esc(title)}</h2>{body}</section>'


# --------------------------------------------------------------------------- frames
def _read_rows(df: pd.DataFrame) -> np.ndarray:
    """Rows that were read: HTTP 200 without an error, or never fetched but with a status
    (the audit rules' definition; see imgframe/audits.py)."""
    http = df["http_status"] if "http_status" in df else pd.Series(pd.NA, index=df.index)
    error = df["error"] if "error" in df else pd.Series(pd.NA, index=df.index)
    status = df["status"] if "status" in df else pd.Series(pd.NA, index=df.index)
    answered = http.eq(200).fillna(False) & error.isna()
    return (answered | (http.isna() & status.notna())).to_numpy(dtype=bool)


def _is_fleet(frame: pd.DataFrame) -> bool:
    return frame.index.name == FLEET_INDEX and {"cloud", "region"} <= set(frame.columns)


def _severity_rank(severity: Any) -> int:
    text = _str(severity)
    return SEVERITIES.index(text) if text in SEVERITIES else len(SEVERITIES)


def _as_frame(value: Any) -> pd.DataFrame | None:
    """A frame, or audit's records (a list of dicts) as one; None for anything else."""
    if isinstance(value, pd.DataFrame):
        return value
    if isinstance(value, list) and all(isinstance(row, Mapping) for row in value):
        try:
            return pd.DataFrame.from_records(value)
        except (TypeError, ValueError):
            return None
    return None


def _frame_attr(attrs: Mapping[str, Any], key: str) -> pd.DataFrame | None:
    return _as_frame(attrs.get(key))


def _count_attr(value: Any) -> int | None:
    frame = _as_frame(value)
    if frame is not None:
        return len(frame)
    if isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= 0:
        return int(value)
    return None


def _attrs(frame: Any) -> Mapping[str, Any]:
    attrs = getattr(frame, "attrs", None)
    return attrs if isinstance(attrs, Mapping) else {}


# --------------------------------------------------------------------------- sections
def _provenance(df: pd.DataFrame, now: pd.Timestamp, info: Mapping[str, Any]) -> str:
    """What was audited: the fetch's provenance, or what the frame itself shows."""
    raw = _attrs(df).get("imgframe")
    items: list[tuple[str, str]] = []
    if isinstance(raw, Mapping):
        known = {"fetched_at", "asked", "counts", "complete", "imgframe_version"}
        if "fetched_at" in raw:
            items.append(("fetched at", _esc(raw["fetched_at"])))
        asked = raw.get("asked")
        if isinstance(asked, list | tuple):  # a fleet's targets, given as the list itself
            asked = {"targets": asked}
        if isinstance(asked, Mapping):
            items.extend(_asked(asked))
        elif asked is not None:
            items.append(("asked", _esc(asked)))
        counts = raw.get("counts")
        if isinstance(counts, Mapping):
            shown = ", ".join(f"{_esc(k)} {_esc(_cell(v))}" for k, v in list(counts.items())[:20])
            items.append(("counts", shown))
        elif counts is not None:
            items.append(("counts", _esc(counts)))
        if "complete" in raw:
            complete = raw["complete"]
            items.append(
                (
                    "complete",
                    "yes" if complete is True else "no" if complete is False else _esc(complete),
                )
            )
        if "imgframe_version" in raw:
            items.append(("imgframe version", _esc(raw["imgframe_version"])))
        for key, value in list(raw.items())[:20]:
            if key not in known:
                items.append((_str(key), _esc(value)))
        lead = "<p>As recorded by the fetch that made this table:</p>"
    else:
        lead = (
            '<p class="note">Provenance unknown: the table carries no record of where or '
            "when it was fetched (a table written before imgframe recorded it, or read from "
            "a file without its metadata). What the table itself shows:</p>"
        )
        items.extend(_shown_by_frame(df))
    items.append(("audited as of", _esc(_when(now))))
    items.extend(info.items())
    return lead + _facts(items)


def _asked(asked: Mapping[str, Any]) -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    for key in ("endpoint", "cloud", "region", "api", "mode", "include_deleted"):
        if key in asked:
            items.append((key.replace("_", " "), _esc(_cell(asked[key]))))
    targets = asked.get("targets")
    if isinstance(targets, list | tuple):
        rows = [t for t in targets if isinstance(t, Mapping)]
        frame = pd.DataFrame([{k: _str(v) for k, v in t.items()} for t in rows[:200]])
        if not frame.empty:
            columns = [_Column(_str(c)) for c in list(frame.columns)[:10]]
            extra = _more(len(rows) - 200, "the table's metadata") if len(rows) > 200 else ""
            items.append((f"targets ({len(rows):,})", _table(frame, columns) + extra))
    for key, value in list(asked.items())[:20]:
        if key not in {"endpoint", "cloud", "region", "api", "mode", "include_deleted", "targets"}:
            items.append((_str(key), _esc(value)))
    return items


def _shown_by_frame(df: pd.DataFrame) -> list[tuple[str, str]]:
    items = [("rows", _esc(_n(len(df))))]
    if _is_fleet(df):
        targets = df[["cloud", "region"]].astype("string").fillna(_MISSING).drop_duplicates()
        names = [f"{c}/{r}" for c, r in targets.itertuples(index=False)]
        items.append(
            ("clouds/regions", _esc(", ".join(names[:30]) + (" …" if len(names) > 30 else "")))
        )
    stamps = [df[c] for c in ("updated_at", "created_at") if c in df]
    if stamps:
        latest = pd.concat(stamps).max()
        if not _is_na(latest):
            items.append(("latest timestamp in the data", _esc(_cell(latest))))
    return items


def _audit_info(attrs: Mapping[str, Any]) -> dict[str, str]:
    """Profile, allow-list and baseline of the audit, from the findings' attrs."""
    info: dict[str, str] = {}
    profile = attrs.get("profile")
    if isinstance(profile, str) and profile:
        info["profile"] = _esc(profile)
    allowed = _count_attr(attrs.get("allowed"))
    if allowed is not None:
        info["allow-list"] = _esc(f"{_plural(allowed, 'finding')} allowed (left out)") + (
            ' — <a href="#allowed">appendix</a>'
            if allowed and _frame_attr(attrs, "allowed") is not None
            else ""
        )
    resolved = _count_attr(attrs.get("resolved"))
    if resolved is not None:
        baseline = attrs.get("baseline")
        said = f"; baseline {_esc(baseline)}" if isinstance(baseline, str) else ""
        info["baseline"] = (
            f"only findings new since the baseline; {_esc(_plural(resolved, 'finding'))} "
            f'resolved{said} — <a href="#baseline">see</a>'
        )
    notes = attrs.get("notes")
    if isinstance(notes, list | tuple) and notes:
        info["notes"] = "<br>".join(_esc(note) for note in list(notes)[:20])
    return info


def _headline(
    df: pd.DataFrame,
    findings: pd.DataFrame,
    duplicates: pd.DataFrame,
    owners: pd.DataFrame,
    now: pd.Timestamp,
) -> str:
    read = _read_rows(df)
    http = df["http_status"] if "http_status" in df else pd.Series(pd.NA, index=df.index)
    not_found = int(http.eq(404).fillna(False).sum())
    size = df["size"] if "size" in df else pd.Series(pd.NA, index=df.index, dtype="Int64")
    total = int(pd.to_numeric(size[read], errors="coerce").fillna(0).sum())
    reclaimable = _duplicate_groups(duplicates)["reclaimable_bytes"].sum()
    severities = findings["severity"].astype("string").value_counts() if len(findings) else {}
    figures = [
        ("images requested", _n(len(df))),
        ("images read", _n(read.sum())),
        ("not found (404)", _n(not_found)),
        ("not read (failed)", _n(len(df) - int(read.sum()) - not_found)),
        ("bytes of the images read", human_bytes(total)),
        ("reclaimable from duplicates", human_bytes(reclaimable)),
        ("findings", _n(len(findings))),
        *((f"{s} findings", _n(severities.get(s, 0))) for s in SEVERITIES),
    ]
    charts = [_findings_chart(findings), _owners_chart(owners), _age_chart(df[read], now)]
    if _is_fleet(df):
        charts += _per_target(df, read, findings)
    failures = _failures(df, read)
    statuses = df.loc[read, "status"].astype("string").fillna(_MISSING).value_counts()
    status_table = _table(
        statuses.rename("images").rename_axis("status").reset_index(),
        [_Column("status"), _Column("images", kind="num")],
    )
    return _section(
        "summary",
        "Fleet summary",
        _figures(figures)
        + f'<div class="charts">{"".join(charts)}</div>'
        + (
            '<div class="charts"><figure><figcaption>Images not read, by HTTP status and '
            f"error</figcaption>{failures}</figure><figure><figcaption>Images read, by "
            f"status</figcaption>{status_table}</figure></div>"
        ),
    )


def _failures(df: pd.DataFrame, read: np.ndarray) -> str:
    failed = df[~read]
    if failed.empty:
        return "<p>None: every image was read.</p>"
    frame = pd.DataFrame(
        {
            "http_status": failed["http_status"].astype("string").fillna(_MISSING).to_numpy(),
            "error": failed["error"].astype("string").fillna(_MISSING).to_numpy(),
        }
    )
    counts = (
        frame.groupby(["http_status", "error"], sort=False)
        .size()
        .rename("images")
        .reset_index()
        .sort_values("images", ascending=False, kind="stable")
    )
    shown = counts.head(20)
    return _table(
        shown,
        [_Column("http_status", "HTTP status"), _Column("error"), _Column("images", kind="num")],
    ) + (f'<p class="more">{_n(len(counts) - 20)} more kinds.</p>' if len(counts) > 20 else "")


def _rule_order(findings: pd.DataFrame) -> list[tuple[str, str, int]]:
    """``(rule, severity, count)`` per rule with findings, most severe first, then by name."""
    if findings.empty:
        return []
    frame = pd.DataFrame(
        {
            "rule": findings["rule"].astype("string").fillna(_MISSING).to_numpy(),
            "rank": [_severity_rank(s) for s in findings["severity"].tolist()],
        }
    )
    grouped = frame.groupby("rule", sort=True)["rank"].agg(["min", "size"])
    order = sorted(grouped.itertuples(), key=lambda r: (r.min, r.Index))
    return [
        (str(r.Index), SEVERITIES[r.min] if r.min < len(SEVERITIES) else "other", int(r.size))
        for r in order
    ]


def _findings_chart(findings: pd.DataFrame) -> str:
    rules = _rule_order(findings)
    return (
        _bars(
            "Findings by rule (bar colour: severity)",
            [
                (rule, count, f"{count:,} {severity}", f"sev-{_slug(severity)}")
                for rule, severity, count in rules
            ],
        )
        or "<figure><figcaption>Findings by rule</figcaption><p>No findings.</p></figure>"
    )


def _owners_chart(owners: pd.DataFrame) -> str:
    if owners.empty or "bytes" not in owners:
        return ""
    top = owners["bytes"].fillna(0).sort_values(ascending=False, kind="stable")
    top = top.head(_OWNERS_CHARTED)
    labels = [_MISSING if _is_na(o) else _str(o) for o in top.index]
    return _bars(
        f"Bytes by owner (top {min(len(owners), _OWNERS_CHARTED)} of {len(owners):,})",
        [
            (label, float(v), human_bytes(v), "bar")
            for label, v in zip(labels, top.tolist(), strict=True)
        ],
    )


def _age_buckets(read: pd.DataFrame, now: pd.Timestamp) -> list[tuple[str, int]]:
    """Images read, by the age of ``created_at`` at ``now``; a date in the future or none
    is unknown."""
    if "created_at" not in read:
        return [("unknown", len(read))]
    created = pd.to_datetime(read["created_at"], utc=True, errors="coerce")
    age = now - created
    known = age.notna() & (age >= pd.Timedelta(0))
    counts, below = [], pd.Series(False, index=read.index)
    for label, limit in _AGE_BUCKETS:
        inside = known & (age < limit) & ~below
        counts.append((label, int(inside.sum())))
        below |= inside
    counts.append(("older", int((known & ~below).sum())))
    counts.append(("unknown", int((~known).sum())))
    return counts


def _age_chart(read: pd.DataFrame, now: pd.Timestamp) -> str:
    return _bars(
        "Images read, by age (created_at)",
        [(label, n, f"{n:,}", "bar") for label, n in _age_buckets(read, now)],
    )


def _per_target(df: pd.DataFrame, read: np.ndarray, findings: pd.DataFrame) -> list[str]:
    """A fleet's chart of images per cloud/region, and a table of their figures."""

    def labels(frame: pd.DataFrame) -> pd.Series:
        cloud = frame["cloud"].astype("string").fillna(_MISSING)
        return cloud + "/" + frame["region"].astype("string").fillna(_MISSING)

    size = pd.to_numeric(df["size"], errors="coerce") if "size" in df else pd.Series(0, df.index)
    parts = pd.DataFrame(
        {
            "target": labels(df).to_numpy(),
            "read": read.astype(np.int64),
            "bytes": size.where(read, 0).fillna(0).to_numpy(),
        }
    )
    targets = parts.groupby("target", sort=True).agg(
        images=("read", "size"), read=("read", "sum"), bytes=("bytes", "sum")
    )
    if {"cloud", "region"} <= set(findings.columns) and len(findings):
        found = labels(findings).value_counts()
        targets["findings"] = found.reindex(targets.index).fillna(0).astype(np.int64)
    bars = [
        (str(name), int(row.images), f"{int(row.images):,} ({int(row.read):,} read)", "bar")
        for name, row in targets.iterrows()
    ]
    table = targets.rename_axis("cloud/region").reset_index()
    columns = [
        _Column("cloud/region", kind="id"),
        _Column("images", kind="num"),
        _Column("read", kind="num"),
        _Column("bytes", kind="bytes"),
        *([_Column("findings", kind="num")] if "findings" in table else []),
    ]
    return [
        _bars(f"Images per cloud/region ({len(targets):,})", bars),
        f"<figure><figcaption>Per cloud/region</figcaption>{_table(table, columns)}</figure>",
    ]


def _baseline(
    findings: pd.DataFrame,
    attrs: Mapping[str, Any],
    max_rows: int,
    anchors: Mapping[str, str],
    fleet: bool,
) -> str:
    resolved_value = attrs.get("resolved")
    resolved = _count_attr(resolved_value)
    if resolved is None:
        return ""
    new = _rule_order(findings)
    rows = "".join(
        f'<tr><td><a href="#{anchors[rule]}">{_esc(rule)}</a></td><td>{_esc(severity)}</td>'
        f'<td class="num">{count:,}</td></tr>'
        for rule, severity, count in new
    )
    body = (
        f"<p>{_esc(_plural(len(findings), 'finding'))} new since the baseline (same rule "
        f"and image not found in it) and {_esc(_plural(resolved, 'finding'))} of the "
        "baseline resolved. The rule sections below list the new findings only.</p>"
    )
    if rows:
        body += (
            '<h3>New, by rule</h3><div class="scroll"><table><thead><tr><th>rule</th>'
            f'<th>severity</th><th class="num">new</th></tr></thead><tbody>{rows}</tbody>'
            "</table></div>"
        )
    gone = _as_frame(resolved_value)
    if gone is not None and len(gone):
        if "rule" in gone:
            counts = gone["rule"].astype("string").fillna(_MISSING).value_counts()
            body += "<h3>Resolved, by rule</h3>" + _table(
                counts.rename("resolved").rename_axis("rule").reset_index(),
                [_Column("rule"), _Column("resolved", kind="num")],
            )
        columns = _finding_columns(gone, fleet, with_rule=True)
        body += "<h3>Resolved findings</h3>" + _table(gone.head(max_rows), columns, wide=True)
        body += _more(len(gone) - max_rows, "the baseline's findings")
    return _section("baseline", "Since the baseline", body)


def _finding_columns(
    frame: pd.DataFrame,
    fleet: bool,
    *,
    with_rule: bool = False,
    detail: bool = True,
    severity: bool = False,
) -> list[_Column]:
    names = [
        *(["rule"] if with_rule else []),
        *(["severity"] if severity else []),
        *(["cloud", "region"] if fleet else []),
        "image_id",
        "owner",
        "name",
        *(["detail"] if detail else []),
    ]
    return [_Column(n, kind=_COLUMN_KINDS.get(n, "text")) for n in names if n in frame]


def _shared(values: pd.Series) -> str | None:
    """The one value every row shows, or None."""
    distinct = values.astype("string").fillna(_MISSING).unique()
    return str(distinct[0]) if len(distinct) == 1 else None


def _rule_section(
    rule: str,
    severity: str,
    rows: pd.DataFrame,
    anchor: str,
    max_rows: int,
    findings_file: str,
    fleet: bool,
) -> str:
    meaning, todo = rule_guidance(rule)
    shown = rows.head(max_rows)
    mixed = rows["severity"].astype("string").nunique() > 1
    body = (
        f'<p class="meaning"><strong>What it means:</strong> {_esc(meaning)}</p>'
        f'<p class="todo"><strong>What to do:</strong> {_esc(todo)}</p>'
    )
    detail = _shared(shown["detail"]) if "detail" in shown and len(shown) else None
    if detail is None and "detail" in rows:
        counts = rows["detail"].astype("string").fillna(_MISSING).value_counts()
        if 1 < len(counts) <= _DETAIL_GROUPS:
            body += "<h3>By detail</h3>" + _table(
                counts.rename("findings").rename_axis("detail").reset_index(),
                [_Column("detail"), _Column("findings", kind="num")],
            )
    if detail is not None:
        every = "every finding" if len(shown) == len(rows) else f"the {len(shown):,} shown"
        body += f'<p class="detail"><strong>Detail ({_esc(every)}):</strong> {_esc(detail)}</p>'
    columns = _finding_columns(rows, fleet, detail=detail is None, severity=mixed)
    first = f"The first {len(shown):,}" if len(shown) < len(rows) else "All"
    body += f"<h3>{_esc(first)} of {_esc(_plural(len(rows), 'finding'))}</h3>"
    body += _table(shown, columns, wide=True) + _more(len(rows) - len(shown), findings_file)
    badge = f' <span class="badge sev-{_slug(severity)}">{_esc(severity)}</span>'
    return (
        f'<section id="{anchor}" class="rule" data-rule="{_esc(rule)}" '
        f'data-count="{len(rows)}"><h2>{_esc(rule)}{badge} '
        f'<span class="count">{_esc(_plural(len(rows), "finding"))}</span></h2>{body}</section>'
    )


def _change_order(changes: pd.Series) -> list[str]:
    present = list(dict.fromkeys(changes.astype("string").fillna("unknown").tolist()))
    return [c for c in CHANGE_TEXT if c in present] + [c for c in present if c not in CHANGE_TEXT]


def _changes(diff: pd.DataFrame, max_rows: int, anchors: _Anchors) -> tuple[str, list[tuple]]:
    """The changes section of a snapshot diff, and its TOC entries."""
    if "change" not in diff:
        return "", []
    fleet = {"cloud", "region"} <= set(diff.columns)
    change = diff["change"].astype("string").fillna("unknown")
    order = _change_order(change)
    counts = change.value_counts()
    toc: list[tuple] = []
    summary = _bars(
        "Changes by kind",
        [(c, int(counts[c]), f"{int(counts[c]):,}", "bar") for c in order],
    )
    parts = []
    for kind in order:
        rows = diff[(change == kind).to_numpy()]
        anchor = anchors("change", kind)
        toc.append((anchor, kind, len(rows)))
        shown = rows.head(max_rows)
        detail = _shared(shown["detail"]) if "detail" in shown and len(shown) else None
        names = [
            *(["cloud", "region"] if fleet else []),
            "image_id",
            "name",
            "owner",
            *(["detail"] if detail is None else []),
        ]
        columns = [_Column(n, kind=_COLUMN_KINDS.get(n, "text")) for n in names if n in rows]
        meaning = CHANGE_TEXT.get(kind, "")
        parts.append(
            f'<div id="{anchor}" class="change" data-change="{_esc(kind)}" '
            f'data-count="{len(rows)}"><h3>{_esc(kind)} ({len(rows):,})</h3>'
            + (f"<p>{_esc(meaning)}</p>" if meaning else "")
            + (f'<p class="detail"><strong>Detail:</strong> {_esc(detail)}</p>' if detail else "")
            + _table(shown, columns, wide=True)
            + _more(len(rows) - len(shown), "the diff table")
            + "</div>"
        )
    body = (
        f"<p>{_esc(_plural(len(diff), 'image'))} changed between the two snapshots.</p>"
        + f'<div class="charts">{summary}</div>'
        + "".join(parts)
    )
    return _section("changes", "Changes since the older snapshot", body), toc


def _duplicate_groups(duplicates: pd.DataFrame) -> pd.DataFrame:
    """One row per duplicate group, the most reclaimable first."""
    if duplicates.empty:
        return pd.DataFrame(
            columns=["dup_group", "copies", "checksum", "size", "reclaimable_bytes", "owners"]
        )
    rows = duplicates.reset_index()
    ident = "key" if "key" in rows else "id"
    grouped = rows.groupby("dup_group", sort=False, observed=True)

    def listed(values: pd.Series, limit: int | None = None) -> str:
        distinct = [str(v) for v in dict.fromkeys(values.dropna())]
        more = f", … {len(distinct) - limit} more" if limit and len(distinct) > limit else ""
        return ", ".join(distinct[:limit]) + more

    groups = pd.DataFrame(
        {
            "copies": grouped["group_size"].first(),
            "checksum": grouped["checksum"].first(),
            "size": grouped["size"].first(),
            "reclaimable_bytes": grouped["reclaimable_bytes"].first(),
            "owners": grouped["owner"].agg(listed),
            "image_ids": grouped[ident].agg(lambda ids: listed(ids, _DUPLICATE_IDS_SHOWN)),
        }
    ).reset_index()
    return groups.sort_values("reclaimable_bytes", ascending=False, kind="stable")


def _duplicates(duplicates: pd.DataFrame, max_rows: int) -> str:
    groups = _duplicate_groups(duplicates)
    if groups.empty:
        body = "<p>No duplicate groups.</p>"
    else:
        body = _table(
            groups.head(max_rows),
            [
                _Column("copies", kind="num"),
                _Column("checksum", kind="hash"),
                _Column("size", kind="bytes"),
                _Column("reclaimable_bytes", kind="bytes"),
                _Column("owners"),
                _Column("image_ids", "image ids", kind="id"),
            ],
            wide=True,
        ) + _more(len(groups) - max_rows, "findings.csv (rule checksum_duplicates)")
    return _section(
        "duplicates",
        "Duplicate groups",
        "<p>Images with the same data (hash and size), the most reclaimable group first: "
        "every copy but one could go.</p>" + body,
    )


def _owners(owners: pd.DataFrame) -> str:
    table = owners.sort_values("bytes", ascending=False, kind="stable").reset_index()
    columns = [
        _Column("owner", kind="id"),
        *(
            _Column(
                c, kind="bytes" if c.endswith("bytes") else "num" if c != "oldest_image" else "text"
            )
            for c in table.columns
            if c != "owner"
        ),
    ]
    return _section(
        "owners",
        "Owners",
        f"<p>{_esc(_plural(len(table), 'owner'))}, the most bytes first.</p>"
        + _table(table.head(_OWNERS_SHOWN), columns, wide=True)
        + _more(len(table) - _OWNERS_SHOWN, "imgframe.owner_summary(df)"),
    )


def _allowed(attrs: Mapping[str, Any]) -> str:
    allowed = _frame_attr(attrs, "allowed")
    if allowed is None:
        return ""
    body = (
        f"<p>{_esc(_plural(len(allowed), 'finding'))} matched an allow-list entry and are "
        "left out of the sections above: accepted risks, each with its reason.</p>"
    )
    if len(allowed) and "reason" in allowed:
        keys = [c for c in ("rule", "reason", "expires") if c in allowed]
        grouped = (
            allowed[keys]
            .astype("string")
            .fillna(_MISSING)
            .value_counts(sort=True)
            .rename("findings")
            .reset_index()
        )
        body += "<h3>By entry</h3>" + _table(
            grouped, [*(_Column(k) for k in keys), _Column("findings", kind="num")], wide=True
        )
    if len(allowed):
        names = [
            "rule",
            "severity",
            "cloud",
            "region",
            "image_id",
            "owner",
            "name",
            "reason",
            "expires",
        ]
        columns = [_Column(n, kind=_COLUMN_KINDS.get(n, "text")) for n in names if n in allowed]
        body += "<h3>Allowed findings</h3>" + _table(
            allowed.head(_ALLOWED_SHOWN), columns, wide=True
        )
        body += _more(len(allowed) - _ALLOWED_SHOWN, "imgframe.allowed_findings(findings)")
    return _section("allowed", "Appendix: allowed findings", body)


def _toc(entries: Sequence[tuple[str, str, str]]) -> str:
    """``(anchor, label, sub-list HTML)`` entries as the table of contents."""
    items = "".join(
        f'<li><a href="#{anchor}">{_esc(label)}</a>{sub}</li>' for anchor, label, sub in entries
    )
    return f'<nav class="toc" aria-label="Contents"><strong>Contents</strong><ol>{items}</ol></nav>'


def _sub_toc(items: Sequence[tuple[str, str, int]]) -> str:
    if not items:
        return ""
    return (
        "<ol>"
        + "".join(
            f'<li><a href="#{anchor}">{_esc(label)}</a> <span class="n">{count:,}</span></li>'
            for anchor, label, count in items
        )
        + "</ol>"
    )


# --------------------------------------------------------------------------- public
def report(
    df: pd.DataFrame,
    path: str | os.PathLike[str] | TextIO,
    *,
    findings: pd.DataFrame | None = None,
    now: Any = None,
    max_rows: int = 50,
    diff: pd.DataFrame | None = None,
    findings_file: str = "findings.csv",
) -> Path | None:
    """Write one self-contained HTML report of ``df`` (the contract frame) to ``path``.

    ``findings`` is :func:`imgframe.audit`'s frame (default: the audit of ``df`` as of
    ``now``); its attrs ``profile``, ``allowed`` (the allowed findings, listed in an
    appendix with their reasons), ``resolved`` (with a baseline: the resolved findings
    or their count; the new ones then come first) and ``notes`` are shown when present.
    ``df.attrs["imgframe"]`` (where and when the table was fetched) is shown, or the
    report says the provenance is unknown. One section per rule with findings lists the
    first ``max_rows`` and says how many more are in ``findings_file``; ``diff`` (an
    :func:`imgframe.diff` frame) adds a section of changes. No script, no external
    resource. The file is written to a temporary name and renamed, so an existing report
    is replaced whole or not at all. ``path`` may also be an open text stream (e.g.
    ``sys.stdout``); then None is returned.

    Examples
    --------
    >>> import tempfile, imgframe
    >>> df = imgframe.frame_from_headers([{"X-Image-Meta-Id": "a", "X-Image-Meta-Size": "1"}])
    >>> df["http_status"] = pd.array([200], dtype="Int64")
    >>> path = report(df, tempfile.mkdtemp() + "/report.html", now="2026-01-01")
    >>> "<h2>Fleet summary</h2>" in path.read_text()
    True
    """
    document = render_report(
        df, findings=findings, now=now, max_rows=max_rows, diff=diff, findings_file=findings_file
    )
    if hasattr(path, "write"):
        path.write(document)
        return None
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(document, encoding="utf-8")
    return path


def render_report(
    df: pd.DataFrame,
    *,
    findings: pd.DataFrame | None = None,
    now: Any = None,
    max_rows: int = 50,
    diff: pd.DataFrame | None = None,
    findings_file: str = "findings.csv",
) -> str:
    """The HTML document :func:`report` writes, as text.

    Examples
    --------
    >>> import imgframe
    >>> df = imgframe.frame_from_headers([{"X-Image-Meta-Id": "a", "X-Image-Meta-Size": "1"}])
    >>> render_report(df, now="2026-01-01").startswith("<!DOCTYPE html>")
    True
    """
    # Imported here, not at module level: audits depends on nothing here, and importing
    # imgframe must not pay for (or fail on) the audit rules until a report is wanted.
    from imgframe import audits

    if findings is None:
        findings = audits.audit(df, now=now)
    missing = [c for c in ("rule", "severity", "image_id") if c not in findings.columns]
    if missing:
        raise InvalidInputError(
            f"not a findings frame: missing columns {missing} (use imgframe.audit's frame)"
        )
    attrs = _attrs(findings)
    stamp = _utc(now if now is not None else _audit_clock(df, attrs))
    duplicates = audits.checksum_duplicates(df)
    owners = audits.owner_summary(df)
    fleet = _is_fleet(df)
    anchors = _Anchors()
    rules = _rule_order(findings)
    rule_anchors = {rule: anchors("rule", rule) for rule, _, _ in rules}
    rule_column = findings["rule"].astype("string").fillna(_MISSING).to_numpy()
    rule_sections = "".join(
        _rule_section(
            rule,
            severity,
            findings[rule_column == rule],
            rule_anchors[rule],
            max_rows,
            findings_file,
            fleet,
        )
        for rule, severity, _ in rules
    )
    baseline = _baseline(findings, attrs, max_rows, rule_anchors, fleet)
    changes, change_toc = (
        _changes(diff, max_rows, anchors) if isinstance(diff, pd.DataFrame) else ("", [])
    )
    allowed = _allowed(attrs)
    audited = _section("audited", "What was audited", _provenance(df, stamp, _audit_info(attrs)))
    toc = [
        ("audited", "What was audited", ""),
        ("summary", "Fleet summary", ""),
        *([("baseline", "Since the baseline", "")] if baseline else []),
        *([("changes", "Changes", _sub_toc(change_toc))] if changes else []),
    ]
    if rules:
        first = rule_anchors[rules[0][0]]
        items = [(rule_anchors[r], r, n) for r, _, n in rules]
        toc.append((first, f"Findings by rule ({len(findings):,})", _sub_toc(items)))
    else:
        toc.append(("findings", "Findings (none)", ""))
    toc += [("duplicates", "Duplicate groups", ""), ("owners", "Owners", "")]
    if allowed:
        toc.append(("allowed", "Appendix: allowed findings", ""))
    none = "" if rules else _section("findings", "Findings", "<p>No findings.</p>")
    lede = [f"{_n(len(df))} images", _plural(len(findings), "finding")]
    resolved = _count_attr(attrs.get("resolved"))
    if resolved is not None:
        lede[-1] += f" new since the baseline, {resolved:,} resolved"
    allowed_count = _count_attr(attrs.get("allowed"))
    if allowed_count:
        lede.append(f"{allowed_count:,} allowed")
    lede.append(f"audited as of {_when(stamp)}")
    main = (
        f'<h1>Image fleet audit</h1><p class="lede">{_esc(" · ".join(lede))}</p>'
        + audited
        + _headline(df, findings, duplicates, owners, stamp)
        + baseline
        + changes
        + rule_sections
        + none
        + _duplicates(duplicates, max_rows)
        + _owners(owners)
        + allowed
    )
    document = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Image fleet audit</title><style>{_CSS}</style></head>"
        f'<body><div class="page">{_toc(toc)}<main>{main}</main></div></body></html>\n'
    )
    return document


def _audit_clock(df: pd.DataFrame, attrs: Mapping[str, Any]) -> pd.Timestamp | None:
    """The time the audit judged against when the caller did not say: the findings' own
    ``now``, else the fetch time recorded in the table (what ``audit`` uses), else None
    (the current time). A value that is not a readable date in pandas' range is ignored.
    """
    for value in (attrs.get("now"), _provenance_time(df)):
        if not isinstance(value, str | datetime):
            continue
        try:
            stamp = pd.Timestamp(value).as_unit("ns")
        except (TypeError, ValueError, OverflowError):
            continue
        if not pd.isna(stamp):
            return stamp
    return None


def _provenance_time(df: pd.DataFrame) -> Any:
    raw = _attrs(df).get("imgframe")
    if isinstance(raw, Mapping) and isinstance(raw.get("fetched_at"), str):
        return raw["fetched_at"]
    return None
