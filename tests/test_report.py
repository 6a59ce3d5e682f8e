"""The HTML report: one offline file whose numbers and ids can be read back from its HTML."""

from __future__ import annotations

import warnings
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

import imgframe
from imgframe import ImgframeParseWarning
from imgframe.audits import audit, checksum_duplicates, owner_summary
from imgframe.report_html import human_bytes, report
from imgframe.testing import ADMIN_TOKEN, FLEET_NOW, GlanceEmulator, make_fleet

NOW = pd.Timestamp(FLEET_NOW, tz="UTC")
SCRIPT_NAME = "<script>alert(1)</script>"
UNKNOWN_IDS = [f"00000000-0000-4000-8000-{i:012d}" for i in range(3)]


class Document(HTMLParser):
    """The report as data: tags with their attributes, CSS, text, and each section's
    headings and tables (rows of cell texts)."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.css = ""
        self.text: list[str] = []
        self.sections: dict[str, dict[str, list]] = {}
        self._section: str | None = None
        self._stack: list[str] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag in ("meta",):  # void elements never close
            return
        self._stack.append(tag)
        if tag == "section":
            self._section = dict(attrs)["id"]
            self.sections[self._section] = {"headings": [], "tables": [], "text": []}
        elif tag == "table" and self._section:
            self.sections[self._section]["tables"].append([])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        self._stack.pop()
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._section:
            self.sections[self._section]["tables"][-1].append(self._row)
            self._row = None
        elif tag == "section":
            self._section = None

    def handle_data(self, data: str) -> None:
        where = self._stack[-1] if self._stack else ""
        if where == "style":
            self.css += data
            return
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._section:
            self.sections[self._section]["text"].append(data)
            if where in ("h2", "h3"):
                self.sections[self._section]["headings"].append(data.strip())

    def table(self, section: str, index: int = 0) -> list[dict[str, str]]:
        """Table ``index`` of ``section`` as one dict per body row, keyed by header."""
        header, *rows = self.sections[section]["tables"][index]
        return [dict(zip(header, row, strict=True)) for row in rows]

    def section_text(self, section: str) -> str:
        return "".join(self.sections[section]["text"])


@pytest.fixture(scope="module")
def fleet():
    fleet = make_fleet(800, seed=4)
    # A tenant's hostile name on an image every audit reports (public, unprotected).
    image = next(i for i in fleet.images if i.status == "active")
    image.name, image.is_public, image.protected = SCRIPT_NAME, True, False
    return fleet


@pytest.fixture(scope="module")
def df(fleet) -> pd.DataFrame:
    ids = [image.id for image in fleet.images] + UNKNOWN_IDS + ["bad/id"]
    with GlanceEmulator(fleet) as emu, warnings.catch_warnings():
        warnings.simplefilter("ignore", ImgframeParseWarning)
        return imgframe.fetch_images(ids, endpoint=emu.url, token=ADMIN_TOKEN, progress=False)


@pytest.fixture(scope="module")
def written(df, tmp_path_factory) -> tuple[Path, Document]:
    path = report(df, tmp_path_factory.mktemp("report") / "report.html", now=NOW)
    return path, Document(path.read_text(encoding="utf-8"))


def test_report_is_one_html_file_with_inline_css(written) -> None:
    path, doc = written
    assert path.suffix == ".html" and path.is_file()
    assert [tag for tag, _ in doc.tags][:1] == ["html"]
    assert "border-collapse" in doc.css


def test_report_loads_nothing_and_runs_nothing(written) -> None:
    _, doc = written
    tags = {tag for tag, _ in doc.tags}
    assert not tags & {"script", "link", "img", "iframe", "object", "embed", "base", "form"}
    for tag, attrs in doc.tags:
        assert not {"src", "href", "srcset", "action"} & attrs.keys(), tag
        assert not any(a.startswith("on") for a in attrs), tag  # no event handlers
        for value in attrs.values():
            assert "//" not in (value or ""), (tag, attrs)
    assert "url(" not in doc.css and "@import" not in doc.css and "//" not in doc.css


def test_tenant_html_is_shown_as_text_not_run(written) -> None:
    path, doc = written
    raw = path.read_text(encoding="utf-8")
    assert "<script" not in raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in raw
    high = doc.table("findings", 1)  # the first severity's table
    assert SCRIPT_NAME in {row["name"] for row in high}


def test_summary_counts_requested_fetched_failed_and_bytes(df, written) -> None:
    _, doc = written
    facts = {row[""]: row["value"] for row in doc.table("summary", 0)}
    fetched = df["http_status"].eq(200).fillna(False)
    assert facts["images requested"] == f"{len(df):,}"
    assert facts["images fetched"] == f"{int(fetched.sum()):,}"
    assert facts["images failed"] == f"{len(df) - int(fetched.sum()):,}"
    total = int(df.loc[fetched, "size"].sum())
    assert facts["total size of fetched images"] == f"{total:,} bytes ({human_bytes(total)})"


def test_failures_are_counted_by_http_status(written) -> None:
    _, doc = written
    failures = {(r["http status"], r["error"]): r["images"] for r in doc.table("summary", 1)}
    assert failures[("404", "HTTP 404 Not Found")] == str(len(UNKNOWN_IDS))
    assert failures[("—", "invalid image id")] == "1"


def test_fetched_images_are_counted_by_status(df, written) -> None:
    _, doc = written
    shown = {row["status"]: int(row["images"].replace(",", "")) for row in doc.table("summary", 2)}
    expected = df.loc[df["http_status"] == 200, "status"].value_counts()
    assert shown == {str(k): int(v) for k, v in expected.items()}


def test_findings_are_grouped_by_severity_with_counts(df, written) -> None:
    _, doc = written
    findings = audit(df, now=NOW)
    counts = findings["severity"].astype(str).value_counts()
    headings = [h for h in doc.sections["findings"]["headings"] if "(" in h]
    expected_order = [s for s in ("high", "medium", "low", "info") if s in counts]
    assert headings == [f"{s} ({counts[s]:,})" for s in expected_order]
    by_rule = {
        (r["severity"], r["rule"]): int(r["findings"].replace(",", ""))
        for r in doc.table("findings", 0)
    }
    expected = findings.groupby(["severity", "rule"], observed=True).size()
    assert by_rule == {(str(s), str(r)): int(n) for (s, r), n in expected.items()}


def test_long_findings_tables_stop_with_and_n_more(df, tmp_path: Path) -> None:
    findings = audit(df, now=NOW)
    doc = Document(report(df, tmp_path / "r.html", now=NOW, max_rows=5).read_text())
    text = doc.section_text("findings")
    for position, severity in enumerate(
        s for s in ("high", "medium", "low", "info") if (findings["severity"] == s).any()
    ):
        these = findings[findings["severity"] == severity]
        rows = doc.table("findings", position + 1)
        assert [r["image id"] for r in rows] == these["image_id"].head(5).tolist()
        if len(these) > 5:
            assert f"and {len(these) - 5:,} more {severity} findings" in text


def test_findings_given_are_the_findings_shown(df, tmp_path: Path) -> None:
    mine = pd.DataFrame(
        {
            "rule": ["my_rule"],
            "severity": ["medium"],
            "image_id": [df.index[0]],
            "owner": [df["owner"].iloc[0]],
            "name": ["=HYPERLINK(1)"],
            "detail": ["chosen by hand"],
        }
    )
    doc = Document(report(df, tmp_path / "r.html", findings=mine, now=NOW).read_text())
    assert doc.table("findings", 0) == [{"severity": "medium", "rule": "my_rule", "findings": "1"}]
    assert doc.table("findings", 1)[0]["name"] == "=HYPERLINK(1)"


def test_every_duplicate_group_is_listed_with_copies_and_reclaimable_bytes(
    df, fleet, written
) -> None:
    _, doc = written
    duplicates = checksum_duplicates(df)
    shown = {row["checksum"]: row for row in doc.table("duplicates", 0)}
    assert len(shown) == duplicates["dup_group"].nunique()
    planted = {frozenset(group) for group in fleet.planted.duplicate_groups}
    listed = {frozenset(row["image ids"].split(", ")) for row in shown.values()}
    assert planted <= listed  # groups of up to 5 copies list every id
    for _, group in duplicates.groupby("dup_group"):
        row = shown[group["checksum"].iloc[0]]
        assert row["copies"] == str(len(group))
        assert row["reclaimable bytes"] == human_bytes(group["reclaimable_bytes"].iloc[0])


def test_every_owner_is_summarised(df, written) -> None:
    _, doc = written
    owners = owner_summary(df)
    shown = {row["owner"]: row for row in doc.table("owners", 0)}

    def label(owner: object) -> str:  # images without an owner (failed rows): a dash
        return "—" if pd.isna(owner) else str(owner)

    assert set(shown) == {label(owner) for owner in owners.index}
    for owner, summary in owners.iterrows():
        row = shown[label(owner)]
        assert row["images"] == f"{int(summary['images']):,}"
        assert row["public images"] == f"{int(summary['public_images']):,}"
        assert row["bytes"] == human_bytes(summary["bytes"])


def test_same_frame_and_time_give_the_same_file(df, written, tmp_path: Path) -> None:
    path, _ = written
    again = report(df, tmp_path / "again.html", now=NOW)
    assert again.read_bytes() == path.read_bytes()


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1_319_413_953_331, "1.2 TiB"), (None, "—")],
)
def test_sizes_read_as_binary_units(size: int | None, text: str) -> None:
    assert human_bytes(size) == text


def test_a_fleet_where_nothing_could_be_read_still_gets_a_report(tmp_path: Path) -> None:
    with GlanceEmulator(make_fleet(3, seed=1)) as emu:
        df = imgframe.fetch_images(UNKNOWN_IDS, endpoint=emu.url, token=ADMIN_TOKEN)
    doc = Document(report(df, tmp_path / "r.html", now=NOW).read_text())
    facts = {row[""]: row["value"] for row in doc.table("summary", 0)}
    assert facts["images fetched"] == "0" and facts["images failed"] == "3"
    assert facts["total size of fetched images"] == "0 bytes (0 B)"
    assert "No duplicate groups." in doc.section_text("duplicates")


def test_report_to_a_stream_is_the_same_document(df, written) -> None:
    import io

    buffer = io.StringIO()
    assert report(df, buffer, now=NOW) is None
    assert buffer.getvalue() == written[0].read_text(encoding="utf-8")


def test_report_replaces_an_old_file_whole_and_leaves_no_temporary_file(df, tmp_path) -> None:
    target = tmp_path / "report.html"
    target.write_text("old report")
    report(df, target, now=NOW)
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
