"""Benchmark: ``imgframe.diff`` of two 1,000,000-image snapshots with 1% of them changed.

The older snapshot is a seeded emulator fleet turned into the contract frame directly
(typed columns from the ``FleetImage`` attributes, as ``bench_audit.py`` builds its frame;
no HTTP). The newer one is a copy in which ``--changed`` (1%) of the live images are
changed, in equal shares: made public, unprotected, given another owner, deactivated, a
property added, dropped from the table (disappeared), made unreadable (HTTP 503: unknown),
and as many new images appended (appeared). Each share is planted on distinct images, so
the expected count of every change is known and checked.

Prints the best wall time of ``--repeat`` runs and the peak memory growth during one run
(``VmHWM`` reset just before the call, minus the RSS before it; Linux) against the two
frames' bytes. Goal (README.md, Benchmarks): vectorised, i.e. seconds for a million rows,
with Python loops only over the changed rows. Figures, not a timed test.

Run: ``.venv/bin/python benchmarks/bench_diff.py [--rows N] [--changed F] [--repeat R]``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

import imgframe
from imgframe.schema import dtypes
from imgframe.testing import Fleet, make_fleet

sys.path.insert(0, str(Path(__file__).parent))
# The memory probes of a sibling script, found through the line above.
from bench_million import high_water_mark, reset_high_water_mark

MiB = 1024**2
KINDS = (
    "became_public",
    "protection_removed",
    "owner_changed",
    "status_changed",
    "properties_changed",
    "disappeared",
    "unknown",
    "appeared",
)


def frame_from_fleet(fleet: Fleet) -> pd.DataFrame:
    """The contract frame of ``fleet`` as a v1 fetch returns it (every row a 200)."""
    images = fleet.images
    columns = [c for c in dtypes() if c not in ("http_status", "error", "request_id")]
    # v2-only columns are NA from v1 (a FleetImage has no such attribute).
    data = {c: [getattr(i, c, None) for i in images] for c in columns}
    for column in ("created_at", "updated_at", "deleted_at"):
        data[column] = pd.to_datetime(pd.Series(data[column]), utc=True).array
    frame = pd.DataFrame(data, index=pd.Index([i.id for i in images], name="id"))
    frame["http_status"] = 200
    frame["request_id"] = [f"req-{n:036d}" for n in range(len(frame))]
    frame = frame.reindex(columns=list(dtypes())).astype(dtypes())
    frame.index = frame.index.astype(dtypes()["name"])
    return frame


def rss() -> int:
    gc.collect()
    with contextlib.suppress(OSError):
        match = re.search(r"^VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
        if match:
            return int(match.group(1)) * 1024
    return 0


def changed_copy(before: pd.DataFrame, share: float, seed: int) -> tuple[pd.DataFrame, dict]:
    """``before`` with ``share`` of its live rows changed, one kind per row."""
    rng = np.random.default_rng(seed)
    live = (
        before["http_status"].eq(200).fillna(False)
        & before["status"].eq("active").fillna(False)
        & ~before["deleted"].fillna(False)
    ).to_numpy(dtype=bool)
    per_kind = int(len(before) * share / len(KINDS))
    public = before["is_public"].fillna(False).to_numpy(dtype=bool)
    protected = before["protected"].fillna(False).to_numpy(dtype=bool)
    taken = np.zeros(len(before), dtype=bool)

    def rows(wanted: np.ndarray) -> np.ndarray:
        free = np.flatnonzero(wanted & ~taken)
        chosen = rng.choice(free, size=min(per_kind, len(free)), replace=False)
        taken[chosen] = True
        return chosen

    after = before.copy()
    planted: dict[str, int] = {}
    at = rows(live & ~public)
    after.iloc[at, after.columns.get_loc("is_public")] = True
    planted["became_public"] = len(at)
    at = rows(live & protected)
    after.iloc[at, after.columns.get_loc("protected")] = False
    planted["protection_removed"] = len(at)
    at = rows(live)
    after["owner"] = after["owner"].cat.add_categories(["project-new"])
    after.iloc[at, after.columns.get_loc("owner")] = "project-new"
    planted["owner_changed"] = len(at)
    at = rows(live)
    if "deactivated" not in after["status"].cat.categories:
        after["status"] = after["status"].cat.add_categories(["deactivated"])
    after.iloc[at, after.columns.get_loc("status")] = "deactivated"
    planted["status_changed"] = len(at)
    at = rows(live)
    column = after.columns.get_loc("properties")
    after.iloc[at, column] = pd.Series([{**p, "env": "prod"} for p in after.iloc[at, column]])
    planted["properties_changed"] = len(at)
    unread = rows(live)
    after["error"] = after["error"].cat.add_categories(["HTTP 503 Service Unavailable"])
    after.iloc[unread, after.columns.get_loc("http_status")] = 503
    after.iloc[unread, after.columns.get_loc("error")] = "HTTP 503 Service Unavailable"
    planted["unknown"] = len(unread)
    dropped = rows(live)
    planted["disappeared"] = len(dropped)
    new = after.iloc[rows(live)].copy()
    new.index = pd.Index([f"new-{n:030d}" for n in range(len(new))], name="id").astype(
        before.index.dtype
    )
    planted["appeared"] = len(new)
    after = pd.concat([after.drop(after.index[dropped]), new])
    return after, planted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--changed", type=float, default=0.01, help="share of images changed")
    parser.add_argument("--repeat", type=int, default=3, help="best of R runs")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    print(f"building a {args.rows:,}-image snapshot and a changed copy ...", flush=True)
    before = frame_from_fleet(make_fleet(args.rows))
    after, planted = changed_copy(before, args.changed, seed=1)
    frames = sum(int(f.memory_usage(deep=True).sum()) for f in (before, after))
    print(f"built in {time.perf_counter() - start:.1f} s; the two frames {frames / MiB:,.0f} MiB")

    base = rss()
    peak_known = reset_high_water_mark()
    changes = imgframe.diff(before, after)
    growth = (high_water_mark() or 0) - base if peak_known else None
    best = float("inf")
    for _ in range(args.repeat):
        gc.collect()
        started = time.perf_counter()
        imgframe.diff(before, after)
        best = min(best, time.perf_counter() - started)

    found = changes["change"].value_counts()
    right = all(int(found.get(kind, 0)) == count for kind, count in planted.items()) and len(
        changes
    ) == sum(planted.values())
    print(f"\n{'change':20}{'planted':>10}{'found':>10}")
    for kind in KINDS:
        print(f"{kind:20}{planted[kind]:10,}{int(found.get(kind, 0)):10,}")
    shown = "n/a" if growth is None else f"{growth / MiB:,.0f} MiB ({growth / frames:.2f}x frames)"
    print(
        f"\ndiff of {len(before):,} vs {len(after):,} rows: best {best:.2f} s of {args.repeat}; "
        f"{len(changes):,} changes ({'exact' if right else 'DIFFERS'}); peak growth {shown}"
    )
    return 0 if right else 1


if __name__ == "__main__":
    sys.exit(main())
