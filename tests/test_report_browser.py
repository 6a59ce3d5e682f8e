"""The HTML report in a real browser: Debian's Chromium opens the demo-sized report.

A 10,000-image fleet (the demo's size and faults) is fetched from the emulator, its
servers and volumes from the Nova/Cinder emulator, and audited with every rule; the
report (with a snapshot diff and an allow-list appendix) is opened from a file in
headless Chromium driven by Playwright (``/usr/bin/chromium``, as tests/test_browser.py
does; Playwright's own browser download is never used). The browser aborts every request
that is not for the file itself: the page must need nothing else.
"""

from __future__ import annotations

import dataclasses
import re
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from playwright.sync_api import Browser, Page, Route

import imgframe
from imgframe import ImgframeParseWarning, Target
from imgframe.audits import audit
from imgframe.report_html import report
from imgframe.testing import ADMIN_TOKEN, FLEET_NOW, Faults, make_fleet
from imgframe.testing.compute import ComputeEmulator, make_usage
from imgframe.usage import fetch_servers, fetch_volumes
from imgframe.usage_frame import image_usage

CHROMIUM = Path("/usr/bin/chromium")
DEMO_IMAGES, DEMO_SEED = 10_000, 2026  # imgframe demo's fleet
NOW = pd.Timestamp(FLEET_NOW, tz="UTC")
WIDTH, HEIGHT = 1400, 900
LOAD_TIMEOUT = 30_000  # ms
STEP_TIMEOUT = 5_000  # ms, for one link to scroll its target into view
#: The table boxes wider than their content area: (section id, scroll width, width).
OVERFLOWING = """els => els.filter(e => e.scrollWidth > e.clientWidth + 1)
    .map(e => [e.closest("section").id, e.scrollWidth, e.clientWidth])"""

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"{CHROMIUM} is missing (Debian's chromium package; .ci/run installs it)",
    ),
    pytest.mark.timeout(300),
]


@pytest.fixture(scope="module")
def demo(module_servers) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The demo's frame (its faults too) and its findings with every rule, usage included."""
    fleet = make_fleet(DEMO_IMAGES, seed=DEMO_SEED)
    faults = Faults(
        transient_rate=0.02,
        retry_after=0.01,
        malformed_rate=0.002,
        wrong_id_rate=0.001,
        no_metadata_rate=0.001,
        seed=DEMO_SEED,
    )
    glance = module_servers.glance(fleet, faults=faults)
    ids = [image.id for image in fleet.images] + [f"{n:032x}" for n in range(200)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImgframeParseWarning)
        df = imgframe.fetch_images(ids, endpoint=glance.url, token=ADMIN_TOKEN, progress=False)
    with ComputeEmulator(make_usage(fleet, seed=DEMO_SEED)) as nova:
        servers = fetch_servers(nova.compute_url, ADMIN_TOKEN)
        volumes = fetch_volumes(nova.volume_url, ADMIN_TOKEN)
    findings = audit(df, now=NOW, usage=image_usage(df, servers, volumes))
    assert {"unused", "only_stopped_servers", "fetch_failed"} <= set(findings["rule"].astype(str))
    return df, findings


@pytest.fixture(scope="module")
def demo_report(demo, tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    df, findings = demo
    kept = findings.iloc[25:].reset_index(drop=True)
    allowed = findings.iloc[:25][["rule", "image_id", "owner"]]
    kept.attrs = dict(findings.attrs) | {
        "profile": "all",
        "allowed": allowed.assign(reason="accepted: public base images", expires="2027-06-30"),
    }
    read = df[df["http_status"].eq(200).fillna(False)]
    diff = pd.DataFrame(
        {
            "image_id": read.index[:260].astype(str),
            "change": pd.Categorical(
                ["became_public"] * 12 + ["owner_changed"] * 48 + ["appeared"] * 200
            ),
            "name": read["name"].iloc[:260].astype("string").to_numpy(),
            "owner": read["owner"].iloc[:260].astype("string").to_numpy(),
            "detail": ["visibility private -> public"] * 12 + ["owner a -> b"] * 48 + [""] * 200,
        }
    )
    path = tmp_path_factory.mktemp("report") / "report.html"
    started = time.perf_counter()
    report(df, path, findings=kept, now=NOW, diff=diff)
    seconds = time.perf_counter() - started
    print(
        f"demo-sized report: {len(df):,} images, {len(kept):,} findings, "
        f"{path.stat().st_size:,} bytes, written in {seconds:.2f} s"
    )
    return path, kept


@pytest.fixture(scope="module")
def fleet_report(module_servers, tmp_path_factory) -> Path:
    """A two-region fleet with the longest id a cloud may have, names without a space to
    break at and an owner of 300 characters, audited against a baseline."""
    east, west = make_fleet(300, seed=41), make_fleet(200, seed=42)
    public = next(i for i in east.images if i.status == "active" and not i.deleted)
    odd = [
        dataclasses.replace(public, id="i" * 255, name="n" * 300),
        dataclasses.replace(public, id="j" * 40, name="<b>" * 100, owner="o" * 300),
    ]
    east = dataclasses.replace(east, images=[*east.images, *odd])
    targets = [
        Target("lab", region, endpoint=module_servers.glance(fleet).url, token=ADMIN_TOKEN)
        for region, fleet in (("east", east), ("west", west))
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImgframeParseWarning)
        df = imgframe.fetch_fleet(targets, progress=False)
    assert {"i" * 255, "j" * 40} <= set(df["id"])
    findings = audit(df, now=NOW)
    findings.attrs["resolved"] = (
        findings.iloc[:30].astype(object).to_dict("records")
    )  # as a baseline says
    path = tmp_path_factory.mktemp("fleet") / "fleet.html"
    report(df, path, findings=findings.iloc[30:].reset_index(drop=True), now=NOW)
    return path


class _OnlyTheFile:
    """Aborts every request but the report file's own, and remembers it."""

    def __init__(self, path: Path) -> None:
        self.url = path.as_uri()
        self.blocked: list[str] = []

    def __call__(self, route: Route) -> None:
        if route.request.url.split("#")[0] == self.url:
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort("blockedbyclient")


def _open(browser: Browser, path: Path) -> Iterator[tuple[Page, _OnlyTheFile]]:
    context = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT})
    only = _OnlyTheFile(path)
    context.route("**/*", only)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(only.url, wait_until="load", timeout=LOAD_TIMEOUT)
    try:
        yield page, only
    finally:
        context.close()
    assert not errors, errors


@pytest.fixture
def page(browser: Browser, demo_report) -> Iterator[tuple[Page, _OnlyTheFile]]:
    yield from _open(browser, demo_report[0])


def _follow_every_contents_link(page: Page) -> list[str]:
    """Click each link of the contents; each must scroll its target into view."""
    links = page.eval_on_selector_all("nav.toc a", "els => els.map(e => e.getAttribute('href'))")
    for number, href in enumerate(links):
        page.locator("nav.toc a").nth(number).click(timeout=STEP_TIMEOUT)
        page.wait_for_function(
            """href => {
                const target = document.getElementById(href.slice(1));
                if (!target || location.hash !== href) return false;
                const top = target.getBoundingClientRect().top;
                return top >= -1 && top < innerHeight;
            }""",
            arg=href,
            timeout=STEP_TIMEOUT,
        )
    return links


def test_the_demo_report_in_chromium(page, demo_report, tmp_path: Path) -> None:
    page, only = page
    _, findings = demo_report

    # Every rule with findings has a section, with the findings frame's count.
    sections = page.eval_on_selector_all(
        "section.rule", "els => els.map(e => [e.dataset.rule, Number(e.dataset.count), e.id])"
    )
    assert {rule: count for rule, count, _ in sections} == findings["rule"].astype(
        str
    ).value_counts().to_dict()

    # The page fits 1,400 px, and so does every table (each has a box of its own that
    # would scroll sideways, rather than the page, if one did not).
    assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH
    assert page.eval_on_selector_all(".scroll", OVERFLOWING) == []

    # Every link of the contents scrolls its target into view.
    links = _follow_every_contents_link(page)
    rules = {f"#{anchor}" for _, _, anchor in sections}
    assert rules <= set(links) and "#changes" in links and "#allowed" in links
    assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH

    page.evaluate("window.scrollTo(0, 0)")
    screenshot = tmp_path / "report.png"
    page.screenshot(path=screenshot, full_page=True, timeout=30_000)
    print(f"screenshot: {screenshot}")
    height = page.evaluate("document.documentElement.scrollHeight")
    print(f"page: {len(links)} contents links, {height:,} px tall at {WIDTH} px wide")
    assert not only.blocked, f"the report asked for {only.blocked}"


def test_the_demo_report_prints_each_section_on_its_own_pages(page, tmp_path: Path) -> None:
    page, _ = page
    page.emulate_media(media="print")
    sections = page.eval_on_selector_all("main > section", "els => els.length")
    pdf = tmp_path / "report.pdf"
    page.pdf(path=pdf, format="A4")
    pages = len(re.findall(rb"/Type\s*/Page[^s]", pdf.read_bytes()))
    print(f"printed: {pdf} ({pages} A4 pages, {sections} sections)")
    assert pages >= sections  # a page break before every section
    # Printed, nothing is wider than the paper either.
    assert page.evaluate("document.documentElement.scrollWidth <= innerWidth")


def test_a_fleet_report_with_long_ids_and_a_baseline_fits_too(browser, fleet_report, tmp_path):
    for page, only in _open(browser, fleet_report):
        assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH
        links = _follow_every_contents_link(page)
        assert "#baseline" in links
        # the long values wrap inside their cells: no table needs its own scroll bar either
        assert page.eval_on_selector_all(".scroll", OVERFLOWING) == []
        assert page.locator("td", has_text="i" * 255).count() >= 1
        page.evaluate("window.scrollTo(0, 0)")
        screenshot = tmp_path / "fleet.png"
        page.screenshot(path=screenshot, full_page=True, timeout=30_000)
        print(f"screenshot: {screenshot}")
        assert not only.blocked, f"the report asked for {only.blocked}"
