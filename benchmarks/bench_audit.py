"""Benchmark: every audit rule, and ``audit()`` with all rules, on a 1,000,000-row frame.

The frame is a seeded emulator fleet (``make_fleet(rows)``, with its planted answers)
turned into the contract frame directly: one typed column per field from the
``FleetImage`` attributes, cast to ``imgframe.schema.dtypes()`` (no HTTP, no header
parsing: those are measured by ``bench_fetch.py`` and ``bench_parse.py``), with 1% extra
rows that failed to fetch (HTTP 404, metadata NA). ``--via-headers`` builds it the slow,
faithful way instead: ``render_headers`` per image, then ``frame_from_headers``.

Prints seconds per rule, the findings per rule, and ``audit()``'s total against the goal
(README.md, Benchmarks): all rules in under 10 s on this 2-core machine. Figures, not a
timed test.

Run: ``.venv/bin/python benchmarks/bench_audit.py [--rows N] [--repeat R] [--via-headers]``.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from typing import Any

import pandas as pd

import imgframe
from imgframe.schema import dtypes
from imgframe.testing import FLEET_NOW, Fleet, make_fleet, render_headers

GOAL_SECONDS = 10.0
_FIELDS = [c for c in dtypes() if c not in ("http_status", "error", "request_id")]


def frame_from_fleet(fleet: Fleet, failed: int) -> pd.DataFrame:
    """The contract frame of ``fleet`` as a fetch would return it, plus ``failed`` 404 rows."""
    images = fleet.images
    # v2-only columns (visibility, ...) are not FleetImage attributes: NA, as from v1.
    data: dict[str, Any] = {c: [getattr(i, c, None) for i in images] for c in _FIELDS}
    for column in ("created_at", "updated_at", "deleted_at"):
        data[column] = pd.to_datetime(pd.Series(data[column]), utc=True).array
    ok = pd.DataFrame(data, index=pd.Index([i.id for i in images], name="id"))
    ok["http_status"] = 200
    ok["request_id"] = [f"req-{n:036d}" for n in range(len(ok))]
    lost = pd.DataFrame(
        {"http_status": 404, "error": "HTTP 404 Not Found", "properties": [{}] * failed},
        index=pd.Index([f"00000000-0000-4000-8000-{n:012d}" for n in range(failed)], name="id"),
    )
    frame = pd.concat([ok, lost])
    return frame.reindex(columns=list(dtypes())).astype(dtypes())


def frame_via_headers(fleet: Fleet) -> pd.DataFrame:
    """The slower, faithful way: each image's HEAD headers through ``frame_from_headers``."""
    frame = imgframe.frame_from_headers(dict(render_headers(i)) for i in fleet.images)
    frame["http_status"] = pd.array([200] * len(frame), dtype="Int64")
    return frame


def timed(function: Callable[[], pd.DataFrame], repeat: int) -> tuple[float, pd.DataFrame]:
    best, out = float("inf"), pd.DataFrame()
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        out = function()
        best = min(best, time.perf_counter() - start)
    return best, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="best of R runs per line")
    parser.add_argument("--via-headers", action="store_true")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    print(f"building a {args.rows:,}-image fleet ...", flush=True)
    fleet = make_fleet(args.rows)
    if args.via_headers:
        df = frame_via_headers(fleet)
    else:
        df = frame_from_fleet(fleet, failed=args.rows // 100)
    print(f"frame of {len(df):,} rows built in {time.perf_counter() - start:.1f} s", flush=True)
    planted = fleet.planted
    del fleet
    gc.collect()

    now = FLEET_NOW
    expected = {
        "public_unprotected": planted.public_unprotected,
        "checksum_duplicates": frozenset().union(*planted.duplicate_groups),
        "stale": planted.stale,
        "broken": planted.broken,
        "format_mismatch": planted.format_mismatch,
        "requirements_missing": planted.requirements_missing,
        "security_properties": planted.security_properties,
    }
    lines: list[tuple[str, Callable[[], pd.DataFrame]]] = [
        ("public_unprotected", lambda: imgframe.public_unprotected(df)),
        ("checksum_duplicates", lambda: imgframe.checksum_duplicates(df)),
        ("stale", lambda: imgframe.stale(df, now=now)),
        ("broken", lambda: imgframe.broken(df, now=now)),
        ("format_mismatch", lambda: imgframe.format_mismatch(df)),
        ("requirements_missing", lambda: imgframe.requirements_missing(df)),
        ("security_properties", lambda: imgframe.security_properties(df)),
        ("owner_summary", lambda: imgframe.owner_summary(df)),
        ("audit() all rules", lambda: imgframe.audit(df, now=now, profile="all")),
    ]
    print(f"\n{'':24}{'seconds':>9}{'rows out':>12}  planted answer (best of {args.repeat})")
    total = 0.0
    for name, function in lines:
        seconds, out = timed(function, args.repeat)
        check = ""
        if name in expected:
            check = "exact" if set(out.index) == expected[name] else "DIFFERS"
        print(f"{name:24}{seconds:9.2f}{len(out):12,}  {check}", flush=True)
        total = seconds
    ok = total < GOAL_SECONDS
    print(f"\naudit() with all rules: {total:.2f} s (goal < {GOAL_SECONDS:.0f} s: "
          f"{'PASS' if ok else 'MISS'})")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
