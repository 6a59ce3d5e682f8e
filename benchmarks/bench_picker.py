"""Benchmark: the picker's responsiveness on a 100,000-image frame.

The frame is a seeded emulator fleet (``make_fleet(rows)``) built the faithful way: each
image's HEAD headers (``render_headers``) through ``frame_from_headers``, HTTP 200, plus
1% rows that failed to fetch (HTTP 404, metadata NA). The findings come from one
``audit()`` at ``FLEET_NOW``.

Then it drives a ``Picker`` as a user would, by setting widget values: each assignment
runs the change handler (rebuild a ``PickerFilter``, ``filter_images``, sort, render the
count, the page table and the row selector) synchronously, so the wall time of the
assignment is the time a change takes on the Python side (no browser: the frontend's
rendering of one 50-row page is not included). Prints milliseconds per change, best of
``--repeat``, and PASS/MISS against the goal: under 300 ms per change.
Figures, not a timed test.

Run: ``.venv/bin/python benchmarks/bench_picker.py [--rows N] [--repeat R]``.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from datetime import date

import pandas as pd

import imgframe
from imgframe.testing import FLEET_NOW, make_fleet, render_headers
from imgframe.widgets import Picker

GOAL_MS = 300.0


def fleet_frame(rows: int) -> pd.DataFrame:
    """``rows`` fetched images plus 1% that could not be read, as ``fetch_images`` returns."""
    fleet = make_fleet(rows)
    ok = imgframe.frame_from_headers(dict(render_headers(image)) for image in fleet.images)
    ok["http_status"] = pd.array([200] * len(ok), dtype="Int64")
    lost_ids = [f"00000000-0000-4000-8000-{n:012d}" for n in range(rows // 100)]
    lost = imgframe.frame_from_headers({"x-image-meta-id": i} for i in lost_ids)
    lost["http_status"] = pd.array([404] * len(lost), dtype="Int64")
    lost["error"] = "HTTP 404 Not Found"
    frame = pd.concat([ok, lost])
    return frame.astype({c: t for c, t in imgframe.dtypes().items() if c in frame})


def changes(p: Picker) -> list[tuple[str, Callable[[], object]]]:
    """The sequence of user actions to time, each as (what, action)."""
    top_owners = tuple(v for _, v in p.owners.options[:3])
    return [
        ("owner: the biggest", lambda: setattr(p.owners, "value", top_owners[:1])),
        ("owner: three", lambda: setattr(p.owners, "value", top_owners)),
        ("public: yes", lambda: setattr(p.is_public, "value", "yes")),
        ("public: no", lambda: setattr(p.is_public, "value", "no")),
        ("protected: no", lambda: setattr(p.protected, "value", "no")),
        ("status: active", lambda: setattr(p.statuses, "value", ("active",))),
        ("disk format: qcow2, raw", lambda: setattr(p.disk_formats, "value", ("qcow2", "raw"))),
        ("name contains 'ubu'", lambda: setattr(p.name_contains, "value", "ubu")),
        ("name contains 'ubuntu'", lambda: setattr(p.name_contains, "value", "ubuntu")),
        ("size from 1 GiB", lambda: setattr(p.size_min, "value", "1 GiB")),
        ("created from 2022-01-01", lambda: setattr(p.created_from, "value", date(2022, 1, 1))),
        ("sort: largest first", lambda: setattr(p.sort, "value", "largest first")),
        ("next page", p.next_page.click),
        ("select the page", p.select_page.click),
        ("clear: name", lambda: setattr(p.name_contains, "value", "")),
        ("clear: size", lambda: setattr(p.size_min, "value", "")),
        ("clear: created from", lambda: setattr(p.created_from, "value", None)),
        ("clear: status", lambda: setattr(p.statuses, "value", ())),
        ("clear: disk formats", lambda: setattr(p.disk_formats, "value", ())),
        ("protected: any", lambda: setattr(p.protected, "value", "any")),
        ("public: any", lambda: setattr(p.is_public, "value", "any")),
        ("clear: owners (all rows)", lambda: setattr(p.owners, "value", ())),
        ("rules: public_unprotected", lambda: setattr(p.rules, "value", ("public_unprotected",))),
        (
            "rules: + security_properties",
            lambda: setattr(p.rules, "value", ("public_unprotected", "security_properties")),
        ),
        ("rules: none (all rows)", lambda: setattr(p.rules, "value", ())),
        ("sort: name A-Z, all rows", lambda: setattr(p.sort, "value", "name A-Z")),
        ("sort: newest first, all rows", lambda: setattr(p.sort, "value", "newest first")),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3, help="best of R runs per change")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    print(f"building a {args.rows:,}-image fleet frame ...", flush=True)
    df = fleet_frame(args.rows)
    findings = imgframe.audit(df, now=FLEET_NOW)
    print(f"  {len(df):,} rows, {len(findings):,} findings in {time.perf_counter() - start:.1f} s")

    gc.collect()
    start = time.perf_counter()
    p = imgframe.picker(df, findings=findings)
    print(f"picker built in {(time.perf_counter() - start) * 1000:.0f} ms: {p.count.value}\n")

    best: dict[str, float] = {}
    counts: dict[str, str] = {}
    for _ in range(args.repeat):
        p.set_filter(imgframe.widgets.PickerFilter())
        p.sort.value = "newest first"
        for what, action in changes(p):
            gc.collect()
            began = time.perf_counter()
            action()
            took = (time.perf_counter() - began) * 1000
            best[what] = min(best.get(what, float("inf")), took)
            counts[what] = p.count.value

    width = max(map(len, best))
    misses = 0
    for what, ms in best.items():
        verdict = "PASS" if ms < GOAL_MS else "MISS"
        misses += verdict == "MISS"
        print(f"{what:<{width}}  {ms:7.1f} ms  {verdict}   {counts[what]}")
    print(
        f"\nslowest change: {max(best.values()):.1f} ms (goal < {GOAL_MS:.0f} ms); "
        f"{misses} of {len(best)} changes missed"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
