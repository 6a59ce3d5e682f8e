"""The HTML report: one offline file whose sections, links and numbers can be read back.

Frames are fetched from the emulator over HTTP on 127.0.0.1 and audited; the report is
parsed back (stdlib ``html.parser``) into a small tree, and every count it shows is
compared with the findings frame it was made from.
"""

from __future__ import annotations

import io
import re
import time
import warnings
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import imgframe
from imgframe import ImgframeParseWarning, Target
from imgframe.audits import audit, checksum_duplicates, owner_summary, rule_guidance
from imgframe.report_html import human_bytes, render_report, report
from imgframe.testing import ADMIN_TOKEN, FLEET_NOW, make_fleet

FLEET = {"n": 800, "seed": 4}
NOW = pd.Timestamp(FLEET_NOW, tz="UTC")
SCRIPT_NAME = "<script>alert(1)</script>"
UNKNOWN_IDS = [f"00000000-0000-4000-8000-{i:012d}" for i in range(3)]
SHOWN = 50  # the report's default rows per rule
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "wbr"}
#: Every element the report may contain: anything else came from a value not escaped.
TAGS = {
    "html", "head", "meta", "title", "style", "body", "div", "nav", "strong", "ol", "li",
    "a", "span", "main", "h1", "h2", "h3", "p", "section", "dl", "dt", "dd", "br", "table",
    "thead", "tbody", "tr", "th", "td", "figure", "figcaption", "svg", "g", "text", "rect",
}  # fmt: skip
HOSTILE = [SCRIPT_NAME, '"><img src=x onerror=alert(1)>', "</style><b>x</b>", "a\x00b\x1bc",
           "&amp;", "\u202eevil", "x" * 5000, "https://evil.example/x.css"]  # fmt: skip


# --------------------------------------------------------------------------- the parsed page
class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node | str] = []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.iter()

    def find_all(self, tag: str | None = None, cls: str | None = None) -> list[Node]:
        return [
            n
            for n in self.iter()
            if (tag is None or n.tag == tag)
            and (cls is None or cls in (n.attrs.get("class") or "").split())
        ]

    def find(self, tag: str | None = None, cls: str | None = None) -> Node:
        found = self.find_all(tag, cls)
        assert found, f"no <{tag} class={cls}> in <{self.tag} id={self.attrs.get('id')}>"
        return found[0]

    def rows(self) -> list[dict[str, str]]:
        """This table's body rows, keyed by header text."""
        header = [th.text().strip() for th in self.find("thead").find_all("th")]
        return [
            dict(zip(header, (td.text().strip() for td in tr.find_all("td")), strict=True))
            for tr in self.find("tbody").find_all("tr")
        ]


class Page(HTMLParser):
    """The report as a tree, with its CSS and its elements by id."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {}, None)
        self._at = self.root
        self.css = ""
        self.feed(text)
        self.close()
        self.ids = {n.attrs["id"]: n for n in self.root.iter() if n.attrs.get("id")}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, dict(attrs), self._at)
        self._at.children.append(node)
        if tag not in VOID:
            self._at = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._at.children.append(Node(tag, dict(attrs), self._at))

    def handle_endtag(self, tag: str) -> None:
        at: Node | None = self._at
        while at is not None and at.tag != tag:
            at = at.parent
        assert at is not None and at.parent is not None, f"</{tag}> closes nothing"
        self._at = at.parent

    def handle_data(self, data: str) -> None:
        if self._at.tag == "style":
            self.css += data
        self._at.children.append(data)

    def tags(self) -> list[Node]:
        return list(self.root.iter())[1:]

    def section(self, anchor: str) -> Node:
        return self.ids[anchor]

    def toc(self) -> dict[str, str]:
        """Link text -> anchor, for every link of the table of contents."""
        nav = self.root.find("nav", "toc")
        return {a.text().strip(): a.attrs["href"] or "" for a in nav.find_all("a")}

    def facts(self, anchor: str) -> dict[str, str]:
        dl = self.section(anchor).find("dl", "facts")
        terms = [n.text().strip() for n in dl.find_all("dt")]
        return dict(zip(terms, (n.text().strip() for n in dl.find_all("dd")), strict=True))

    def figures(self) -> dict[str, str]:
        return {
            f.find("span", "label").text(): f.find("span", "value").text()
            for f in self.section("summary").find_all("div", "figure")
        }

    def chart(self, caption: str) -> list[tuple[str, str]]:
        """(label, value text) per bar of the chart whose caption starts with ``caption``."""
        for figure in self.root.find_all("figure"):
            if figure.find("figcaption").text().startswith(caption):
                bars = []
                for g in figure.find("svg").find_all("g"):
                    label, value = (t.text() for t in g.find_all("text"))
                    bars.append((label, value))
                return bars
        raise AssertionError(f"no chart {caption!r}")


def rule_sections(page: Page) -> dict[str, Node]:
    return {n.attrs["data-rule"] or "": n for n in page.root.find_all("section", "rule")}


def number(text: str) -> int:
    return int(text.replace(",", ""))


# --------------------------------------------------------------------------- frames
@pytest.fixture(scope="module")
def df(fleet, module_servers) -> pd.DataFrame:
    # A tenant's hostile name on an image every audit reports (public, unprotected).
    image = next(i for i in fleet.images if i.status == "active")
    image.name, image.is_public, image.protected = SCRIPT_NAME, True, False
    emulator = module_servers.glance(fleet)
    ids = [image.id for image in fleet.images] + UNKNOWN_IDS + ["bad/id"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImgframeParseWarning)
        return imgframe.fetch_images(ids, endpoint=emulator.url, token=ADMIN_TOKEN, progress=False)


@pytest.fixture(scope="module")
def findings(df) -> pd.DataFrame:
    return audit(df, now=NOW, profile="all")  # every rule: each gets its section


@pytest.fixture(scope="module")
def written(df, findings, tmp_path_factory) -> tuple[Path, Page]:
    path = report(df, tmp_path_factory.mktemp("report") / "report.html", findings=findings, now=NOW)
    return path, Page(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def fleet_df(module_servers) -> pd.DataFrame:
    east = module_servers.glance(make_fleet(120, seed=5))
    west = module_servers.glance(make_fleet(70, seed=6))
    targets = [
        Target("lab", "east", endpoint=east.url, token=ADMIN_TOKEN),
        Target("lab", "west", endpoint=west.url, token=ADMIN_TOKEN),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImgframeParseWarning)
        return imgframe.fetch_fleet(targets, progress=False)


def provenance(url: str, rows: int) -> dict[str, Any]:
    """``df.attrs["imgframe"]`` as a fetch records it."""
    return {
        "fetched_at": "2026-10-31T23:00:00Z",
        "asked": {"endpoint": url, "api": "v1", "mode": "ids", "include_deleted": False},
        "counts": {"rows": rows, "read": rows - 4, "not_found": 3, "invalid": 1, "unread": 0},
        "complete": True,
        "imgframe_version": "0.0-test",
    }


# --------------------------------------------------------------------------- self-contained
def test_report_is_one_html_file_with_inline_css_and_svg(written) -> None:
    path, page = written
    assert path.suffix == ".html" and path.is_file()
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert "border-collapse" in page.css and "@media print" in page.css
    assert page.root.find_all("svg"), "no inline chart"


def test_report_loads_nothing_and_runs_nothing(written) -> None:
    _, page = written
    assert {n.tag for n in page.tags()} <= TAGS
    for node in page.tags():
        assert not {"src", "srcset", "action", "xmlns", "style"} & node.attrs.keys(), node.tag
        assert not any(a.startswith("on") for a in node.attrs), node.tag  # no event handlers
        href = node.attrs.get("href")
        assert href is None or re.fullmatch(r"#[A-Za-z0-9_-]+", href), href
        for value in node.attrs.values():
            assert not re.search(r"https?:|//", value or ""), (node.tag, node.attrs)
    assert "url(" not in page.css and "@import" not in page.css and "//" not in page.css


# --------------------------------------------------------------------------- rule sections
def test_every_rule_with_findings_has_a_section_linked_from_the_contents(findings, written):
    _, page = written
    counts = findings["rule"].astype(str).value_counts()
    sections = rule_sections(page)
    assert set(sections) == set(counts.index)
    # the rules that the old 200-per-severity cap hid are all there
    assert {"security_properties", "fetch_failed", "stale", "format_mismatch"} <= set(sections)
    toc = page.toc()
    for rule, section in sections.items():
        anchor = section.attrs["id"]
        assert toc[rule] == f"#{anchor}" and page.ids[anchor] is section
        assert section.attrs["data-count"] == str(counts[rule])
        assert f"{counts[rule]:,} finding" in section.find("h2").text()


def test_rules_are_listed_most_severe_first(findings, written) -> None:
    _, page = written
    order = [n.attrs["data-rule"] for n in page.root.find_all("section", "rule")]
    first = findings.groupby("rule", observed=True)["severity"].min()  # ordered category
    ranks = [first.cat.categories.get_loc(first[rule]) for rule in order]
    assert ranks == sorted(ranks)


def test_each_rule_shows_its_first_findings_and_says_how_many_more(findings, written) -> None:
    _, page = written
    for rule, section in rule_sections(page).items():
        these = findings[findings["rule"] == rule]
        rows = section.find("table", "wide").rows()
        assert [r["image id"] for r in rows] == these["image_id"].head(SHOWN).tolist(), rule
        more = section.find_all("p", "more")
        if len(these) > SHOWN:
            assert more[0].text() == f"{len(these) - SHOWN:,} more in findings.csv."
        else:
            assert not more, rule


def test_max_rows_sets_the_rows_per_rule(df, findings, tmp_path) -> None:
    page = Page(report(df, tmp_path / "r.html", now=NOW, max_rows=5).read_text())
    for rule, section in rule_sections(page).items():
        n = int((findings["rule"] == rule).sum())
        assert len(section.find("table", "wide").rows()) == min(n, 5)
        if n > 5:
            assert section.find("p", "more").text() == f"{n - 5:,} more in findings.csv."


def test_a_detail_every_shown_row_shares_is_said_once(findings, written) -> None:
    _, page = written
    sections = rule_sections(page)
    public = sections["public_unprotected"]
    sentence = findings.loc[findings["rule"] == "public_unprotected", "detail"].iloc[0]
    assert sentence in public.find("p", "detail").text()
    assert "detail" not in public.find("table", "wide").rows()[0]
    stale = sections["stale"]  # days differ per image: a column
    assert not stale.find_all("p", "detail") and "detail" in stale.find("table", "wide").rows()[0]


def test_a_rule_with_few_distinct_details_gets_a_breakdown(findings, written) -> None:
    _, page = written
    section = rule_sections(page)["security_properties"]
    breakdown = section.find("table").rows()
    expected = findings.loc[findings["rule"] == "security_properties", "detail"].value_counts()
    assert {r["detail"]: number(r["findings"]) for r in breakdown} == expected.to_dict()


def test_each_builtin_rule_says_what_it_means_and_what_to_do(written) -> None:
    _, page = written
    for rule, section in rule_sections(page).items():
        meaning, todo = rule_guidance(rule)
        assert meaning in section.find("p", "meaning").text()
        assert todo in section.find("p", "todo").text()


def test_findings_given_are_the_findings_shown_and_user_rules_get_a_generic_text(
    df, tmp_path
) -> None:
    mine = pd.DataFrame(
        {
            "rule": ["my_rule", 'x"><script>alert(2)</script>', "public_unprotected"],
            "severity": ["medium", "low", "high"],
            "image_id": [df.index[0], df.index[1], df.index[2]],
            "owner": [df["owner"].iloc[0]] * 3,
            "name": ["=HYPERLINK(1)", "n", "m"],
            "detail": ["chosen by hand", "d", "e"],
        }
    )
    raw = report(df, tmp_path / "r.html", findings=mine, now=NOW).read_text()
    page = Page(raw)
    assert "<script" not in raw
    sections = rule_sections(page)
    assert list(sections) == ["public_unprotected", "my_rule", 'x"><script>alert(2)</script>']
    assert sections["my_rule"].find("table", "wide").rows()[0]["name"] == "=HYPERLINK(1)"
    assert "register_rule" in sections["my_rule"].find("p", "meaning").text()
    toc = page.toc()
    for rule, section in sections.items():
        assert re.fullmatch(r"rule-[A-Za-z0-9_-]+", section.attrs["id"] or "")
        assert toc[rule] == f"#{section.attrs['id']}"


def test_a_frame_that_is_not_findings_is_refused_in_one_line(df) -> None:
    with pytest.raises(imgframe.InvalidInputError, match=r"missing columns \['rule'"):
        render_report(df, findings=df.head(3), now=NOW)


def test_no_findings_says_so(df, tmp_path) -> None:
    page = Page(report(df, tmp_path / "r.html", findings=audit(df.iloc[:0]), now=NOW).read_text())
    assert "No findings." in page.section("findings").text()
    assert not rule_sections(page) and page.toc()["Findings (none)"] == "#findings"


# --------------------------------------------------------------------------- escaping
def test_tenant_html_is_shown_as_text_not_run(written) -> None:
    path, page = written
    raw = path.read_text(encoding="utf-8")
    assert "<script" not in raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in raw
    rows = rule_sections(page)["public_unprotected"].find("table", "wide").rows()
    assert SCRIPT_NAME in {row["name"] for row in rows}


_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30),
    st.sampled_from(HOSTILE),
)  # fmt: skip
_values = st.recursive(
    _leaf,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=10) | st.sampled_from(HOSTILE), inner, max_size=4)
    ),
    max_leaves=12,
)
_provenance = st.one_of(
    _values,
    st.fixed_dictionaries(
        {},
        optional={
            "fetched_at": _values | st.sampled_from(["0001-01-01", "9999-12-31T00:00:00Z"]),
            "asked": _values
            | st.fixed_dictionaries(
                {}, optional={"endpoint": _values, "targets": st.lists(_values, max_size=3)}
            ),
            "counts": _values,
            "complete": _values,
            "imgframe_version": _values,
        },
    ),
)
_hostile_frame = st.builds(
    lambda text, n: pd.DataFrame(
        {
            "rule": [text] * n,
            "image_id": [text] * n,
            "owner": [text] * n,
            "reason": [text] * n,
            "expires": [text] * n,
        }
    ),
    st.sampled_from(HOSTILE) | st.text(max_size=20),
    st.integers(0, 3),
)
_findings_attrs = st.fixed_dictionaries(
    {},
    optional={
        "profile": _values,
        "allowed": _values | _hostile_frame,
        "resolved": _values | _hostile_frame,
        "notes": _values,
        "now": _values | st.sampled_from(["0001-01-01", "2026-13-01", "now"]),
        "baseline": _values,
    },
)


@pytest.fixture(scope="module")
def small(df) -> tuple[pd.DataFrame, pd.DataFrame]:
    part = df.iloc[:40]
    return part, audit(part, now=NOW)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(imgframe_attrs=_provenance, findings_attrs=_findings_attrs, with_now=st.booleans())
def test_hostile_attrs_never_break_the_page(small, imgframe_attrs, findings_attrs, with_now):
    part, found = small
    part, found = part.copy(), found.copy()
    part.attrs = {"imgframe": imgframe_attrs}
    found.attrs = dict(findings_attrs)
    # without now=, the report's clock comes from those attrs (or is the current time)
    text = render_report(part, findings=found, now=NOW if with_now else None)
    text.encode("utf-8")  # valid UTF-8: no lone surrogate reaches the file
    page = Page(text)
    assert {n.tag for n in page.tags()} <= TAGS
    for node in page.tags():
        assert not any(a.startswith("on") or a in ("src", "style") for a in node.attrs)
    assert "\x00" not in text and "<script" not in text and "<b>" not in text
    assert page.toc()  # still a working page: every TOC anchor exists
    for href in page.toc().values():
        assert href[1:] in page.ids


# --------------------------------------------------------------------------- what was audited
def test_provenance_is_shown_when_the_fetch_recorded_it(df, findings, tmp_path) -> None:
    df = df.copy()
    df.attrs["imgframe"] = provenance("http://127.0.0.1:9292", len(df))
    page = Page(report(df, tmp_path / "r.html", findings=findings, now=NOW).read_text())
    facts = page.facts("audited")
    assert facts["fetched at"] == "2026-10-31T23:00:00Z"
    assert facts["endpoint"] == "http://127.0.0.1:9292"  # text, not a link
    assert (facts["api"], facts["mode"], facts["include deleted"]) == ("v1", "ids", "no")
    assert (
        facts["counts"]
        == f"rows {len(df):,}, read {len(df) - 4:,}, not_found 3, invalid 1, unread 0"
    )
    assert facts["complete"] == "yes" and facts["imgframe version"] == "0.0-test"
    assert facts["audited as of"] == "2026-11-01 00:00 UTC"
    assert "unknown" not in page.section("audited").text().lower()


def test_without_a_recorded_time_the_audit_clock_is_the_fetch_time(df, findings) -> None:
    df = df.copy()
    df.attrs["imgframe"] = provenance("http://127.0.0.1:9292", len(df))
    page = Page(render_report(df, findings=findings))
    assert page.facts("audited")["audited as of"] == "2026-10-31 23:00 UTC"


def test_a_fleet_provenance_lists_its_targets(fleet_df, tmp_path) -> None:
    fleet_df = fleet_df.copy()
    targets = [
        {"cloud": "lab", "region": r, "api": "v1", "mode": "listing", "include_deleted": False}
        for r in ("east", "west")
    ]
    fleet_df.attrs["imgframe"] = {**provenance("", len(fleet_df)), "asked": {"targets": targets}}
    page = Page(report(fleet_df, tmp_path / "r.html", now=NOW).read_text())
    table = page.section("audited").find("table").rows()
    assert [(t["cloud"], t["region"], t["mode"]) for t in table] == [
        ("lab", "east", "listing"),
        ("lab", "west", "listing"),
    ]


def test_without_provenance_the_report_says_so_and_uses_the_frame(df, tmp_path) -> None:
    bare = df.copy()
    bare.attrs = {}  # a table from elsewhere: no record of its fetch
    page = Page(report(bare, tmp_path / "r.html", now=NOW).read_text(encoding="utf-8"))
    assert "provenance unknown" in page.section("audited").text().lower()
    facts = page.facts("audited")
    assert facts["rows"] == f"{len(df):,}"
    latest = pd.concat([df["updated_at"], df["created_at"]]).max()
    assert facts["latest timestamp in the data"] == latest.strftime("%Y-%m-%d %H:%M UTC")


def test_profile_allow_list_and_notes_are_shown(df, findings, tmp_path) -> None:
    kept, allowed = findings.iloc[10:].copy(), findings.iloc[:10]
    listed = allowed[["rule", "image_id", "owner"]].assign(
        reason=["ticket OPS-1 <accepted>"] * 6 + ["vendor image"] * 4,
        expires=["2027-01-01"] * 6 + [None] * 4,
    )
    kept.attrs = {"profile": "default", "allowed": listed, "notes": ["note <one>"]}
    page = Page(report(df, tmp_path / "r.html", findings=kept, now=NOW).read_text())
    facts = page.facts("audited")
    assert facts["profile"] == "default"
    assert facts["allow-list"].startswith("10 findings allowed (left out)")
    assert facts["notes"] == "note <one>"
    appendix = page.section("allowed")
    by_entry = appendix.find("table").rows()
    assert {(r["reason"], number(r["findings"])) for r in by_entry} == {
        ("ticket OPS-1 <accepted>", 6),
        ("vendor image", 4),
    }
    rows = appendix.find_all("table")[1].rows()
    assert [r["image id"] for r in rows] == listed["image_id"].tolist()
    assert page.toc()["Appendix: allowed findings"] == "#allowed"
    assert "10 allowed" in page.root.find("p", "lede").text()
    assert (
        "allowed" not in page.ids or sum(n.attrs.get("id") == "allowed" for n in page.tags()) == 1
    )


def test_with_a_baseline_new_and_resolved_findings_come_first(df, findings, tmp_path) -> None:
    # Back then fewer images were stale, and five more were public (since made private).
    before = df.copy()
    private = before.index[
        before["status"].eq("active").fillna(False)
        & ~before["is_public"].fillna(False)
        & ~before["protected"].fillna(False)
        & before["error"].isna()
    ][:5]
    before.loc[private, "is_public"] = True
    old = audit(before, now=NOW - pd.Timedelta(days=400))
    key = ["rule", "image_id"]
    new = findings.merge(old[key], on=key, how="left", indicator=True)
    new = findings[(new["_merge"] == "left_only").to_numpy()].reset_index(drop=True)
    gone = old.merge(findings[key], on=key, how="left", indicator=True)
    gone = old[(gone["_merge"] == "left_only").to_numpy()].reset_index(drop=True)
    assert len(new) > 1 and len(gone) >= 5
    new.attrs = {"resolved": gone}
    page = Page(report(df, tmp_path / "r.html", findings=new, now=NOW).read_text())
    order = [n.attrs.get("id") for n in page.root.find("main").children if isinstance(n, Node)]
    assert order.index("baseline") < min(
        order.index(s.attrs["id"]) for s in rule_sections(page).values()
    )
    baseline = page.section("baseline")
    per_rule = {r["rule"]: number(r["new"]) for r in baseline.find("table").rows()}
    assert per_rule == new["rule"].astype(str).value_counts().to_dict()
    assert f"{len(gone):,} finding" in baseline.find("p").text()
    for link in baseline.find("table").find_all("a"):
        assert (link.attrs["href"] or "")[1:] in page.ids
    assert page.facts("audited")["baseline"].startswith("only findings new since the baseline")
    lede = page.root.find("p", "lede").text()
    assert f"{len(new):,} findings new since the baseline, {len(gone):,} resolved" in lede
    # a count alone is fine too
    new.attrs = {"resolved": 7}
    page = Page(render_report(df, findings=new, now=NOW))
    assert "7 findings of the baseline resolved" in page.section("baseline").text()


# --------------------------------------------------------------------------- headline and charts
def test_headline_figures_count_requested_read_failed_and_findings(df, findings, written):
    _, page = written
    figures = page.figures()
    read = df["http_status"].eq(200).fillna(False) & df["error"].isna()
    assert figures["images requested"] == f"{len(df):,}"
    assert figures["images read"] == f"{int(read.sum()):,}"
    assert figures["not found (404)"] == str(len(UNKNOWN_IDS))
    assert figures["not read (failed)"] == f"{len(df) - int(read.sum()) - len(UNKNOWN_IDS):,}"
    assert figures["bytes of the images read"] == human_bytes(int(df.loc[read, "size"].sum()))
    assert figures["findings"] == f"{len(findings):,}"
    for severity, n in findings["severity"].astype(str).value_counts().items():
        assert figures[f"{severity} findings"] == f"{n:,}"


def test_failures_and_statuses_are_counted(df, written) -> None:
    _, page = written
    tables = page.section("summary").find_all("table")
    failures = {(r["HTTP status"], r["error"]): r["images"] for r in tables[0].rows()}
    assert failures[("404", "HTTP 404 Not Found")] == str(len(UNKNOWN_IDS))
    assert failures[("—", "invalid image id")] == "1"
    statuses = {r["status"]: number(r["images"]) for r in tables[1].rows()}
    read = df[df["http_status"].eq(200).fillna(False) & df["error"].isna()]
    assert statuses == {str(k): int(v) for k, v in read["status"].value_counts().items()}


def test_the_findings_chart_has_one_bar_per_rule(findings, written) -> None:
    _, page = written
    bars = dict(page.chart("Findings by rule"))
    counts = findings.groupby("rule", observed=True).agg(n=("rule", "size"), s=("severity", "min"))
    assert bars == {rule: f"{row.n:,} {row.s}" for rule, row in counts.iterrows()}


def test_the_owners_chart_shows_the_top_15_by_bytes(df, written) -> None:
    _, page = written
    bars = page.chart("Bytes by owner")
    owners = owner_summary(df).sort_values("bytes", ascending=False, kind="stable").head(15)
    assert len(bars) == min(15, len(owner_summary(df)))
    assert [v for _, v in bars] == [human_bytes(b) for b in owners["bytes"]]


def test_the_age_chart_buckets_every_image_read(df, written) -> None:
    _, page = written
    bars = dict(page.chart("Images read, by age"))
    assert list(bars) == ["< 30 days", "< 90 days", "< 1 year", "< 2 years", "older", "unknown"]
    read = df[df["http_status"].eq(200).fillna(False) & df["error"].isna()]
    assert sum(number(v) for v in bars.values()) == len(read)
    age = NOW - read["created_at"]
    assert number(bars["< 30 days"]) == int(
        ((age >= pd.Timedelta(0)) & (age < pd.Timedelta(days=30))).sum()
    )
    assert number(bars["older"]) == int((age >= pd.Timedelta(days=730)).sum())


def test_a_fleet_report_has_a_bar_per_cloud_region_and_their_columns(fleet_df, tmp_path) -> None:
    findings = audit(fleet_df, now=NOW)
    page = Page(report(fleet_df, tmp_path / "r.html", findings=findings, now=NOW).read_text())
    bars = dict(page.chart("Images per cloud/region"))
    per_target = fleet_df.groupby(["cloud", "region"], observed=True).size()
    assert {k: v.split(" (")[0] for k, v in bars.items()} == {
        f"{c}/{r}": f"{n:,}" for (c, r), n in per_target.items()
    }
    table = next(
        f.find("table") for f in page.root.find_all("figure")
        if f.find("figcaption").text() == "Per cloud/region"
    )  # fmt: skip
    found = findings.groupby(["cloud", "region"], observed=True).size()
    assert {
        r["cloud/region"]: (number(r["images"]), number(r["findings"])) for r in table.rows()
    } == {f"{c}/{r}": (n, int(found[(c, r)])) for (c, r), n in per_target.items()}
    rows = next(iter(rule_sections(page).values())).find("table", "wide").rows()
    assert {"cloud", "region", "image id"} <= set(rows[0])


# --------------------------------------------------------------------------- changes
def _diff(df: pd.DataFrame, per_change: dict[str, int]) -> pd.DataFrame:
    """A frame of ``imgframe.diff``'s shape, rows taken from ``df``."""
    rows, start = [], 0
    for change, n in per_change.items():
        part = df.iloc[start : start + n]
        start += n
        rows.append(
            pd.DataFrame(
                {
                    "image_id": part.index.astype(str),
                    "change": change,
                    "name": part["name"].astype("string").to_numpy(),
                    "owner": part["owner"].astype("string").to_numpy(),
                    "detail": "owner p1 -> p2" if change == "owner_changed" else
                    [f"{change} {i}" for i in range(n)],
                }
            )
        )  # fmt: skip
    out = pd.concat(rows, ignore_index=True)
    out["change"] = out["change"].astype("category")
    return out


def test_a_diff_adds_a_changes_section_with_counts_and_the_first_rows(df, tmp_path) -> None:
    diff = _diff(df, {"appeared": 70, "became_public": 3, "owner_changed": 5, "odd_new_kind": 1})
    page = Page(report(df, tmp_path / "r.html", now=NOW, diff=diff).read_text())
    section = page.section("changes")
    blocks = {n.attrs["data-change"]: n for n in section.find_all("div", "change")}
    assert list(blocks) == ["became_public", "owner_changed", "appeared", "odd_new_kind"]
    assert dict(page.chart("Changes by kind")) == {
        k: f"{n:,}" for k, n in diff["change"].value_counts().items() if n
    }
    for kind, block in blocks.items():
        these = diff[diff["change"] == kind]
        assert block.attrs["data-count"] == str(len(these))
        rows = block.find("table").rows()
        assert [r["image id"] for r in rows] == these["image_id"].head(SHOWN).tolist()
        assert page.toc()[kind] == f"#{block.attrs['id']}"
    assert blocks["appeared"].find("p", "more").text() == "20 more in the diff table."
    assert "owner p1 -> p2" in blocks["owner_changed"].find("p", "detail").text()
    assert "detail" not in blocks["owner_changed"].find("table").rows()[0]


# --------------------------------------------------------------------------- other sections
def test_duplicate_groups_are_listed_with_copies_and_reclaimable_bytes(df, fleet, written):
    _, page = written
    duplicates = checksum_duplicates(df)
    shown = {row["checksum"]: row for row in page.section("duplicates").find("table").rows()}
    assert len(shown) == min(SHOWN, duplicates["dup_group"].nunique())
    planted = {frozenset(group) for group in fleet.planted.duplicate_groups}
    listed = {frozenset(row["image ids"].split(", ")) for row in shown.values()}
    assert planted <= listed  # groups of up to 5 copies list every id
    for _, group in duplicates.groupby("dup_group"):
        row = shown[group["checksum"].iloc[0]]
        assert row["copies"] == str(len(group))
        assert row["reclaimable bytes"] == human_bytes(group["reclaimable_bytes"].iloc[0])


def test_owners_are_summarised_most_bytes_first(df, written) -> None:
    _, page = written
    owners = owner_summary(df).sort_values("bytes", ascending=False, kind="stable")
    rows = page.section("owners").find("table").rows()
    assert len(rows) == min(100, len(owners))
    for row, (owner, summary) in zip(rows, owners.iterrows(), strict=False):
        assert row["owner"] == ("—" if pd.isna(owner) else str(owner))
        assert row["images"] == f"{int(summary['images']):,}"
        assert row["bytes"] == human_bytes(summary["bytes"])


# --------------------------------------------------------------------------- the file
def test_same_frame_and_time_give_the_same_file(df, findings, written, tmp_path: Path) -> None:
    path, _ = written
    again = report(df, tmp_path / "again.html", findings=findings, now=NOW)
    assert again.read_bytes() == path.read_bytes()


def test_report_to_a_stream_is_the_same_document(df, findings, written) -> None:
    buffer = io.StringIO()
    assert report(df, buffer, findings=findings, now=NOW) is None
    assert buffer.getvalue() == written[0].read_text(encoding="utf-8")


def test_report_replaces_an_old_file_whole_and_leaves_no_temporary_file(df, tmp_path) -> None:
    target = tmp_path / "report.html"
    target.write_text("old report")
    report(df, target, now=NOW)
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_a_fleet_where_nothing_could_be_read_still_gets_a_report(servers, tmp_path) -> None:
    emulator = servers.glance(3, seed=1)
    df = imgframe.fetch_images(UNKNOWN_IDS, endpoint=emulator.url, token=ADMIN_TOKEN)
    page = Page(report(df, tmp_path / "r.html", now=NOW).read_text())
    figures = page.figures()
    assert figures["images read"] == "0" and figures["not found (404)"] == "3"
    assert figures["bytes of the images read"] == "0 B"
    assert "No duplicate groups." in page.section("duplicates").text()


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1_319_413_953_331, "1.2 TiB"), (None, "—")],
)
def test_sizes_read_as_binary_units(size: int | None, text: str) -> None:
    assert human_bytes(size) == text


def _many(findings: pd.DataFrame, n: int) -> pd.DataFrame:
    """``n`` findings over the same rules (rows repeated, ids made distinct)."""
    reps = -(-n // len(findings))
    many = pd.concat([findings] * reps, ignore_index=True).head(n)
    many["image_id"] = [f"{i}-{k}" for k, i in enumerate(many["image_id"])]
    return many.sort_values(["severity", "rule"], kind="stable").reset_index(drop=True)


def test_the_page_does_not_grow_with_the_findings_beyond_the_rows_shown(df, findings) -> None:
    def render(n: int, **options: Any) -> tuple[int, float]:
        started = time.perf_counter()
        text = render_report(df, findings=_many(findings, n), now=NOW, **options)
        return len(text.encode()), time.perf_counter() - started

    # With 5 rows a rule, every rule fills its table at both sizes: only counts differ.
    fewer, _ = render(5_000, max_rows=5)
    more, _ = render(15_000, max_rows=5)
    assert abs(more - fewer) < 0.01 * fewer
    size, seconds = render(15_000)
    print(f"15,000 findings: {size:,} bytes, rendered in {seconds:.2f} s")
    assert size < 1_000_000 and seconds < 20  # bounds with margin for a loaded machine


def test_the_accessor_and_the_io_module_write_the_same_report(df, findings, written, tmp_path):
    from imgframe.io import report as io_report

    a = df.img.report(tmp_path / "a.html", findings=findings, now=NOW)
    b = io_report(df, tmp_path / "b.html", findings=findings, now=NOW)
    assert a.read_bytes() == b.read_bytes() == written[0].read_bytes()


def test_a_registered_rule_brings_its_own_meaning_and_action(df) -> None:
    @imgframe.register_rule(
        "no_name_here",
        "info",
        describe=lambda row: "no name",
        meaning="Images nobody named <b>.",
        action="Name them.",
    )
    def no_name_here(frame):
        return frame[frame["name"].isna()]

    try:
        findings = imgframe.audit(df, rules=["no_name_here"], now=NOW)
        assert len(findings)
        page = render_report(df, findings=findings, now=NOW)
        assert "Images nobody named &lt;b&gt;." in page and "Name them." in page
    finally:
        imgframe.unregister_rule("no_name_here")
    assert imgframe.audits.rule_guidance("no_name_here") == imgframe.audits.rule_guidance("?")
