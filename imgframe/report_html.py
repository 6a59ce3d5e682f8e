"""One self-contained HTML report of a fleet: summary, findings, duplicates, owners.

The file has its CSS inline and no script, image, font or link to anything: an auditor
can mail it, open it offline, or attach it to a ticket. Every table is rendered by
``DataFrame.to_html(escape=True)``, and every other piece of text goes through
:func:`html.escape` — image names and owners are chosen by tenants, and a name such as
``<script>alert(1)</script>`` must show as text.

Examples
--------
>>> human_bytes(1_319_413_953_331)
'1.2 TiB'
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from imgframe.atomic import atomic_path

__all__ = ["SEVERITIES", "human_bytes", "render_report", "report"]

#: Severities in the order the report lists them (most urgent first).
SEVERITIES = ("high", "medium", "low", "info")

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
_MISSING = "—"  # shown for NA: an empty cell reads as "nothing", NA means "unknown"
_DUPLICATE_IDS_SHOWN = 5

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 80em; color: #222; }
h1 { margin-bottom: 0; } .generated { color: #666; margin-top: .2em; }
section { margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0 1em; }
th, td { border: 1px solid #ccc; padding: .2em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.more { color: #666; font-style: italic; }
h3.severity-high { color: #b00020; } h3.severity-medium { color: #b35c00; }
h3.severity-low { color: #5c6b00; } h3.severity-info { color: #555; }
"""


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


def _cell(value: Any) -> str:
    """A plain value as display text (NA as a dash, integers with thousands separators)."""
    if value is None or (not isinstance(value, dict | list) and pd.isna(value)):
        return _MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, pd.Timestamp | datetime):
        return value.strftime("%Y-%m-%d %H:%M UTC")
    return str(value)


def _table(frame: pd.DataFrame, *, byte_columns: Iterable[str] = ()) -> str:
    """``frame`` as an escaped HTML table; byte columns in human units."""
    shown = pd.DataFrame(index=range(len(frame)))
    byte_columns = set(byte_columns)
    for column in frame.columns:
        values = frame[column].tolist()
        render = human_bytes if column in byte_columns else _cell
        shown[str(column).replace("_", " ")] = [render(v) for v in values]
    return shown.to_html(index=False, escape=True, border=0)


def _capped(frame: pd.DataFrame, max_rows: int, *, what: str, **table: Any) -> str:
    """The first ``max_rows`` rows as a table, then an "and N more" line."""
    if frame.empty:
        return f"<p>No {html.escape(what)}.</p>"
    out = _table(frame.head(max_rows), **table)
    if len(frame) > max_rows:
        rest = len(frame) - max_rows
        out += f'<p class="more">… and {rest:,} more {html.escape(what)}.</p>'
    return out


def _summary(df: pd.DataFrame, duplicates: pd.DataFrame) -> str:
    fetched = (df["http_status"] == 200).fillna(False)
    failed = df[~fetched]
    total = int(df.loc[fetched, "size"].sum())
    reclaimable = _duplicate_groups(duplicates)["reclaimable_bytes"].sum()
    facts = pd.DataFrame(
        {
            "": [
                "images requested",
                "images fetched",
                "images failed",
                "total size of fetched images",
                "reclaimable by removing duplicate copies",
            ],
            "value": [
                f"{len(df):,}",
                f"{int(fetched.sum()):,}",
                f"{len(failed):,}",
                f"{total:,} bytes ({human_bytes(total)})",
                f"{int(reclaimable):,} bytes ({human_bytes(reclaimable)})",
            ],
        }
    )
    failures = (
        failed.groupby(["http_status", "error"], dropna=False, observed=True)
        .size()
        .rename("images")
        .reset_index()
        .sort_values("images", ascending=False, kind="stable")
    )
    statuses = (
        df.loc[fetched, "status"]
        .value_counts(dropna=False)
        .rename("images")
        .rename_axis("status")
        .reset_index()
    )
    return (
        '<section id="summary"><h2>Fleet summary</h2>'
        + facts.to_html(index=False, escape=True, border=0, classes="facts")
        + "<h3>Failed images by HTTP status</h3>"
        + _capped(failures, 50, what="failed images")
        + "<h3>Fetched images by status</h3>"
        + _capped(statuses, 50, what="fetched images")
        + "</section>"
    )


def _severity_order(severities: pd.Series) -> list[str]:
    present = [str(s) for s in severities.dropna().unique()]
    return [s for s in SEVERITIES if s in present] + sorted(set(present) - set(SEVERITIES))


def _findings(findings: pd.DataFrame, max_rows: int) -> str:
    parts = ['<section id="findings"><h2>Findings</h2>']
    if findings.empty:
        return parts[0] + "<p>No findings.</p></section>"
    order = _severity_order(findings["severity"])
    counts = (
        findings.groupby(["severity", "rule"], observed=True)
        .size()
        .rename("findings")
        .reset_index()
    )
    counts["rank"] = counts["severity"].astype(str).map(order.index)
    counts = counts.sort_values(["rank", "findings"], ascending=[True, False], kind="stable")
    parts.append(_table(counts.drop(columns="rank")))
    for severity in order:
        these = findings[findings["severity"].astype(str) == severity]
        parts.append(
            f'<h3 class="severity-{html.escape(severity)}" id="severity-{html.escape(severity)}">'
            f"{html.escape(severity)} ({len(these):,})</h3>"
        )
        parts.append(_capped(these.drop(columns="severity"), max_rows, what=f"{severity} findings"))
    parts.append("</section>")
    return "".join(parts)


def _duplicate_groups(duplicates: pd.DataFrame) -> pd.DataFrame:
    """One row per duplicate group, the most reclaimable first."""
    if duplicates.empty:
        return pd.DataFrame(
            columns=["dup_group", "copies", "checksum", "size", "reclaimable_bytes", "owners"]
        )
    rows = duplicates.reset_index()
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
            "image_ids": grouped["id"].agg(lambda ids: listed(ids, _DUPLICATE_IDS_SHOWN)),
        }
    ).reset_index()
    return groups.sort_values("reclaimable_bytes", ascending=False, kind="stable")


def _duplicates(duplicates: pd.DataFrame, max_rows: int) -> str:
    groups = _duplicate_groups(duplicates)
    return (
        '<section id="duplicates"><h2>Duplicate groups</h2>'
        "<p>Images with the same checksum (and size): all copies but one could go.</p>"
        + _capped(
            groups, max_rows, what="duplicate groups", byte_columns=("size", "reclaimable_bytes")
        )
        + "</section>"
    )


def _owners(owners: pd.DataFrame, max_rows: int) -> str:
    table = owners.sort_values("bytes", ascending=False, kind="stable").reset_index()
    return (
        '<section id="owners"><h2>Owners</h2>'
        + _capped(table, max_rows, what="owners", byte_columns=("bytes",))
        + "</section>"
    )


def _allowed(findings: pd.DataFrame, max_rows: int) -> str:
    """The appendix of findings an allow-list covered, with each entry's reason; empty
    when the audit had no allow-list (``findings.attrs["allowed"]``)."""
    allowed = findings.attrs.get("allowed")
    if not isinstance(allowed, pd.DataFrame):
        return ""
    return (
        '<section id="allowed"><h2>Appendix: allowed findings '
        f"({len(allowed):,})</h2>"
        "<p>Findings an allow-list entry accepted, left out of the findings above, with the "
        "entry's reason and expiry.</p>"
        + _capped(allowed, max_rows, what="allowed findings")
        + "</section>"
    )


def _utc(now: Any) -> pd.Timestamp:
    """``now`` (None for the current time; naive means UTC) as an aware UTC timestamp."""
    stamp = pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def report(
    df: pd.DataFrame,
    path: str | os.PathLike[str] | TextIO,
    *,
    findings: pd.DataFrame | None = None,
    now: Any = None,
    max_rows: int = 200,
) -> Path | None:
    """Write one self-contained HTML report of ``df`` (the contract frame) to ``path``.

    Sections: fleet summary (requested, fetched, failed by HTTP status, total bytes,
    images by status), findings by severity (``findings``, or
    :func:`imgframe.audits.audit` of ``df`` as of ``now``), duplicate groups
    (:func:`imgframe.audits.checksum_duplicates`), the owner summary
    (:func:`imgframe.audits.owner_summary`) and, when the audit had an allow-list, an
    appendix of the allowed findings with their reasons. Long tables stop after ``max_rows`` rows
    with an "and N more" line. No script, no external resource. The file is written to a
    temporary name and renamed, so an existing report is replaced whole or not at all.
    ``path`` may also be an open text stream (e.g. ``sys.stdout``); then None is returned.

    Examples
    --------
    >>> import tempfile, imgframe
    >>> df = imgframe.frame_from_headers([{"X-Image-Meta-Id": "a", "X-Image-Meta-Size": "1"}])
    >>> df["http_status"] = pd.array([200], dtype="Int64")
    >>> path = report(df, tempfile.mkdtemp() + "/report.html", now="2026-01-01")
    >>> "<h2>Fleet summary</h2>" in path.read_text()
    True
    """
    document = render_report(df, findings=findings, now=now, max_rows=max_rows)
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
    max_rows: int = 200,
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
    duplicates = audits.checksum_duplicates(df)
    owners = audits.owner_summary(df)
    generated = _utc(now)
    body = (
        f"<h1>Image fleet report</h1>"
        f'<p class="generated">{html.escape(generated.strftime("%Y-%m-%d %H:%M UTC"))}'
        f" · {len(df):,} images</p>"
        + _summary(df, duplicates)
        + _findings(findings, max_rows)
        + _duplicates(duplicates, max_rows)
        + _owners(owners, max_rows)
        + _allowed(findings, max_rows)
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Image fleet report</title><style>{_CSS}</style></head>"
        f"<body>{body}</body></html>\n"
    )
