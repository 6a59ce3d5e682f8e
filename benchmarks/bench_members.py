"""Members for every image: ``fetch_images(ids, members=True)`` vs ``members=False``.

A fleet of ``--images`` images (default 100,000; ``--quick``: 5,000) that can all have
members (every one non-public and not deleted, so v1 asks each one; each with 1-5
members, so v2 shows each as ``shared``) is served by the project's emulator
(``imgframe/testing/emulator.py``) in a child process (this script with ``--serve``,
warmed before the clock starts; it prints its request counts on exit), as a real Glance
is another process. For each ``--api`` (default v1 and v2), ``--rounds`` rounds (default
3; 1 with ``--quick``) run both ways back to back in this process, each against a fresh
emulator: ``plain`` (one HEAD, v2 GET, per id) and ``members`` (the same plus one
``GET .../images/{id}/members`` per image, by the same worker).

Printed per way: the median wall time and CPU seconds of this process, the requests
the emulator served (image and members requests), the peak memory growth of this
process during the call (Linux ``VmHWM``, reset just before it, minus the RSS before)
and the frame's bytes; then the ratio of the medians (the members way costs about one
more request per image: the goal is <= 2.2x the time at zero latency) and whether the
members column holds one text per image. ``--latency`` adds seconds per request
(members calls included). Only 127.0.0.1 is contacted; figures are printed, not
asserted; the script exits 0. Run it as ``python benchmarks/bench_members.py``
(``--help`` for the options).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

import imgframe
from imgframe.testing import ADMIN_TOKEN, Faults, Fleet, make_fleet
from imgframe.testing.emulator import GlanceEmulator, run_forever
from imgframe.testing.fleet import FleetMember

sys.path.insert(0, str(Path(__file__).parent))
# The memory probe of a sibling script, found through the line above.
from bench_million import reset_high_water_mark

MiB = 1024**2
GOAL = 2.2  # members=True at most this many times the time of members=False (0 latency)


def shared_fleet(images: int) -> Fleet:
    """``make_fleet(images, seed=1)`` with every image non-public, not deleted and with
    members: each one is asked in v1 and shared in v2."""
    fleet = make_fleet(images, seed=1, public_unprotected=0, shared=1.0)
    for image in fleet.images:
        image.is_public = False
        if image.deleted:
            image.deleted, image.deleted_at, image.status = False, None, "active"
        if not image.members:
            image.members = (FleetMember(fleet.projects[0], "accepted", False),)
    return fleet


def serve(images: int, latency: float) -> None:
    """The child process: serve the shared fleet, print the URL, then the counts."""

    def summary(emulator: GlanceEmulator) -> None:
        log = emulator.request_log
        members = sum(1 for r in log if r.path.endswith("/members"))
        print(json.dumps({"members": members, "image": len(log) - members}), flush=True)

    run_forever(
        shared_fleet(images),
        faults=Faults(latency=latency),
        on_ready=lambda url: print(url, flush=True),
        use_uvloop=sys.platform != "win32",
        warm=True,
        on_exit=summary,
    )


class Counts:
    members = 0
    image = 0


@contextlib.contextmanager
def emulator_process(images: int, latency: float) -> Iterator[tuple[str, Counts]]:
    argv = [sys.executable, __file__, "--serve", "--images", str(images)]
    argv += ["--latency", str(latency)]
    counts = Counts()
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        try:
            yield process.stdout.readline().strip(), counts
        finally:
            process.terminate()
            summary = json.loads(process.stdout.readline() or "{}")
            process.wait(30)
            counts.members, counts.image = summary.get("members", -1), summary.get("image", -1)


def status_bytes(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) * 1024 if match else None


@dataclass
class Run:
    seconds: float
    cpu: float
    members_requests: int
    image_requests: int
    peak: int | None
    frame_bytes: int
    texts: int


def one(ids: list[str], images: int, latency: float, api: str, members: bool) -> Run:
    with emulator_process(images, latency) as (url, counts):
        before = status_bytes("VmRSS")
        reset = reset_high_water_mark()
        started, cpu = time.perf_counter(), time.process_time()
        df = imgframe.fetch_images(
            ids, endpoint=url, token=ADMIN_TOKEN, api=api, members=members, progress=False
        )
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        hwm = status_bytes("VmHWM") if reset else None
    peak = None if hwm is None or before is None else hwm - before
    texts = int(df["members"].notna().sum())
    frame = int(df.memory_usage(deep=True).sum())
    return Run(seconds, cpu, counts.members, counts.image, peak, frame, texts)


def describe(name: str, runs: list[Run]) -> str:
    first = runs[0]
    peak = "n/a" if first.peak is None else f"{first.peak / MiB:,.0f} MiB"
    return (
        f"{name:>8} {statistics.median(r.seconds for r in runs):7.2f} s "
        f"(cpu {statistics.median(r.cpu for r in runs):6.2f} s; rounds "
        f"{', '.join(f'{r.seconds:.2f}' for r in runs)}), {first.image_requests:,} image + "
        f"{first.members_requests:,} members requests, peak growth {peak}, frame "
        f"{first.frame_bytes / MiB:,.0f} MiB, {first.texts:,} members texts"
    )


def column_memory(df: pd.DataFrame) -> str:
    """The members column as category (the schema's) and as pyarrow string."""
    as_category = df["members"].memory_usage(deep=True, index=False)
    as_string = df["members"].astype("string[pyarrow]").memory_usage(deep=True, index=False)
    return f"members column: category {as_category / MiB:.2f} MiB, string {as_string / MiB:.2f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=None, help="fleet size (100,000)")
    parser.add_argument(
        "--quick", action="store_true", help="5,000 images, 1 round (about a minute)"
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--api", nargs="+", choices=["v1", "v2"], default=["v1", "v2"])
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    images = args.images or (5_000 if args.quick else 100_000)
    if args.serve:
        serve(images, args.latency)
        return
    rounds = args.rounds or (1 if args.quick else 3)
    ids = [image.id for image in shared_fleet(images).images]
    print(
        f"{images:,} images (all can have members), concurrency 32 (default), emulator in a "
        f"child process, latency {args.latency * 1000:g} ms, {rounds} round(s) (medians)"
    )
    verdicts = []
    for api in args.api:
        plain: list[Run] = []
        with_members: list[Run] = []
        for _ in range(rounds):
            plain.append(one(ids, images, args.latency, api, False))
            with_members.append(one(ids, images, args.latency, api, True))
        print(f"{api}:")
        print(describe("plain", plain))
        print(describe("members", with_members))
        ratio = statistics.median(r.seconds for r in with_members) / statistics.median(
            r.seconds for r in plain
        )
        complete = with_members[0].texts == images and with_members[0].members_requests == images
        ok = complete and (ratio <= GOAL or args.latency > 0)
        verdict = "PASS" if ok else "MISS"
        print(
            f"{api}: members/plain {ratio:.2f}x the time (goal <= {GOAL}x at 0 latency), one "
            f"members text per image: {complete}  {verdict}"
        )
        verdicts.append(f"{api} {ratio:.2f}x {verdict}")
    print("summary: " + "; ".join(verdicts))


if __name__ == "__main__":
    main()
