"""Whole-cloud fetch: rows from the listing's detail pages vs listing + one HEAD per image.

``fetch_images(ids=None)`` against the project's emulator (``imgframe/testing/emulator.py``)
serving ``--images`` images (default 50,000; pages of 1,000, the emulator's and Glance's
default ``api_limit_max``), for each ``--api`` (default v1 and v2), two ways:

``detail``
    the default: every row is made from the listing's own record (v1
    ``/v1/images/detail``, v2 ``/v2/images``), no request per image.
``head``
    ``verify_with_head=True``: the listing streamed into one ``HEAD /v1/images/{id}``
    (v2: ``GET /v2/images/{id}``) per listed image, at the default concurrency (32).

Each at zero latency and with the emulator's latency fault (``--latency``, default 50 ms
per request, listing pages included). At that latency the HEAD way takes about
``images x latency / concurrency`` (~75 s for 50,000): with ``--head-images N`` (default
10,000) it is measured on an N-image fleet and its time scaled by ``images / N``
(printed as "scaled"); ``--head-images 0`` measures the whole fleet.

``--rounds`` (default 3) rounds, each running both ways back to back (so a busy machine
slows both alike); the figures are the medians of the rounds' wall times, and the
speed-up is the ratio of those medians. CPU seconds of this process are shown too.
Requests are the emulator's count; both frames are compared (``request_id`` aside)
where both ways ran on the same fleet. The goals: detail >= 10x faster at zero latency
and >= 30x at 50 ms, with at most ``images / 1000 + 5`` requests, no request per image
and equal frames; each line says PASS or MISS.

``--server thread`` (default) runs the emulator in a thread of this process, as the test
suite does: its request handling then shares the CPU and the GIL with the client, for
both ways. ``--server process`` runs ``python -m imgframe.testing.emulator`` in a child
process (one per run, warmed before the clock starts; it prints its request count on
exit), as a real Glance is another process. Each emulator renders every image once
before timing (``GlanceEmulator.warm``). Only 127.0.0.1 is contacted; figures are
printed, not asserted; the script exits 0. Run it as
``python benchmarks/bench_listing.py`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd

import imgframe
from imgframe.testing import ADMIN_TOKEN, Faults, Fleet, GlanceEmulator, make_fleet

LIST_PATHS = ("/v1/images/detail", "/v2/images")
PAGE = 1000
GOALS = {0.0: 10.0}  # zero latency; any other latency: LATENCY_GOAL
LATENCY_GOAL = 30.0


@dataclass
class Run:
    seconds: float
    cpu: float
    listing: int
    other: int
    frame: pd.DataFrame


class Counts:
    listing = 0
    other = 0


@contextlib.contextmanager
def emulator_process(images: int, latency: float) -> Iterator[tuple[str, Counts]]:
    """``python -m imgframe.testing.emulator`` serving ``make_fleet(images, seed=1)``;
    the counts are filled in when it has exited."""
    argv = [sys.executable, "-m", "imgframe.testing.emulator", "--images", str(images)]
    argv += ["--seed", "1", "--latency", str(latency), "--warm", "--summary"]
    counts = Counts()
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        try:
            yield process.stdout.readline().strip(), counts
        finally:
            process.terminate()
            summary = json.loads(process.stdout.readline() or "{}")
            process.wait(10)
            counts.listing, counts.other = summary.get("listing", -1), summary.get("other", -1)


def fetch(url: str, api: str, head: bool) -> pd.DataFrame:
    return imgframe.fetch_images(
        endpoint=url, token=ADMIN_TOKEN, api=api, progress=False, verify_with_head=head
    )


def timed(url: str, api: str, head: bool) -> tuple[float, float, pd.DataFrame]:
    started, cpu = time.perf_counter(), time.process_time()
    df = fetch(url, api, head)
    return time.perf_counter() - started, time.process_time() - cpu, df


class Servers:
    """One warmed thread emulator per (fleet size, latency), reused by every run."""

    def __init__(self) -> None:
        self.stack = contextlib.ExitStack()
        self.emulators: dict[tuple[int, float], GlanceEmulator] = {}

    def run(self, fleet: Fleet, latency: float, api: str, head: bool, server: str) -> Run:
        if server == "process":
            with emulator_process(len(fleet.images), latency) as (url, counts):
                seconds, cpu, df = timed(url, api, head)
            return Run(seconds, cpu, counts.listing, counts.other, df)
        key = (len(fleet.images), latency)
        if key not in self.emulators:
            emu = GlanceEmulator(fleet, faults=Faults(latency=latency))
            emu.warm()
            self.emulators[key] = self.stack.enter_context(emu)
        emu = self.emulators[key]
        emu.reset_log()
        seconds, cpu, df = timed(emu.url, api, head)
        log = emu.request_log
        listing = sum(1 for r in log if r.path in LIST_PATHS)
        return Run(seconds, cpu, listing, len(log) - listing, df)


def same_rows(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    try:
        pd.testing.assert_frame_equal(a.drop(columns="request_id"), b.drop(columns="request_id"))
    except AssertionError:
        return False
    return True


def median(runs: list[Run], what: str = "seconds") -> float:
    return statistics.median(getattr(run, what) for run in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per request")
    parser.add_argument(
        "--head-images",
        type=int,
        default=10_000,
        help="fleet size for the HEAD way at --latency (0: --images), scaled linearly",
    )
    parser.add_argument("--api", nargs="+", choices=["v1", "v2"], default=["v1", "v2"])
    parser.add_argument("--server", choices=["thread", "process"], default="thread")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    fleet = make_fleet(args.images, seed=1)
    small = 0 < args.head_images < args.images
    head_fleet = make_fleet(args.head_images, seed=1) if small else fleet
    most = -(-args.images // PAGE) + 5
    print(
        f"{args.images:,} images, pages of {PAGE:,}, concurrency 32 (default), emulator in "
        f"a {args.server}, {args.rounds} rounds (medians), at most {most} requests allowed"
    )
    servers = Servers()
    verdicts = []
    with servers.stack:
        for api in args.api:
            for latency in sorted({0.0, args.latency}):
                scaled = latency > 0 and small
                detail: list[Run] = []
                head: list[Run] = []
                for _ in range(args.rounds):
                    detail.append(servers.run(fleet, latency, api, False, args.server))
                    head.append(
                        servers.run(
                            head_fleet if scaled else fleet, latency, api, True, args.server
                        )
                    )
                scale = args.images / args.head_images if scaled else 1.0
                d, h = median(detail), median(head) * scale
                ms = f"{api} {latency * 1000:g} ms"
                print(
                    f"{ms:>9}  detail {d:6.2f} s (cpu {median(detail, 'cpu'):5.2f} s, rounds "
                    f"{', '.join(f'{r.seconds:.2f}' for r in detail)}), "
                    f"{detail[0].listing} listing + {detail[0].other} image requests, "
                    f"{len(detail[0].frame):,} rows"
                )
                how = "measured"
                if scaled:
                    how = f"scaled x{scale:g} from {args.head_images:,} images"
                print(
                    f"{ms:>9}  head   {h:6.2f} s (cpu {median(head, 'cpu') * scale:5.2f} s, "
                    f"{how}; rounds {', '.join(f'{r.seconds:.2f}' for r in head)}), "
                    f"{head[0].listing} listing + {head[0].other} image requests"
                )
                goal = GOALS.get(latency, LATENCY_GOAL)
                ratio = h / d
                requests = detail[0].listing + detail[0].other
                ok = ratio >= goal and 0 <= requests <= most and detail[0].other == 0
                equal = ""
                if not scaled:
                    same = same_rows(detail[0].frame, head[0].frame)
                    ok = ok and same
                    equal = f", frames equal: {same}"
                verdict = "PASS" if ok else "MISS"
                print(
                    f"{ms:>9}  speed-up {ratio:5.1f}x (goal >= {goal:g}x), {requests} requests"
                    f"{equal}  {verdict}"
                )
                verdicts.append(f"{ms}: {ratio:.1f}x {verdict}")
    print("summary: " + "; ".join(verdicts))


if __name__ == "__main__":
    main()
