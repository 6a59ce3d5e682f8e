"""Listing a million Nova servers: ``fetch_servers`` time, peak memory and requests.

``imgframe.fetch_servers(compute_url, ADMIN_TOKEN, page_size=1000)`` against the
project's Nova emulator (``imgframe/testing/compute.py``, ``ComputeEmulator``) serving
``--servers`` servers (default 1,000,000) in a child process, as a real Nova is another
process: building a million servers and rendering their pages does not weigh on this
process's memory or GIL. The child builds the servers directly (one project, one image
for nine servers in ten, the tenth booted from a volume), renders nothing before the
clock starts, and prints how many listing requests it served when it exits.

What is measured, per round (``--rounds``, default 1):

``seconds``
    wall time of the ``fetch_servers`` call, frame included; servers/s.
``peak``
    this process's memory growth during the call: the kernel's high-water mark
    (``VmHWM``, reset just before the call; Linux only) minus the RSS before it, and
    ``ru_maxrss`` growth (which cannot be reset: it shows only a peak above every
    earlier one, so it is exact in the first round only).
``cpu``
    this process's CPU seconds during the call (``time.process_time``: the client's own
    work, whatever else runs on the machine) and the emulator child's (``psutil``), per
    server in microseconds; on a loaded machine the wall time measures the neighbours,
    the CPU figures do not.
``frame``
    the final frame's ``memory_usage(deep=True)``; the ratio ``peak / frame`` is the
    figure to watch: the pages are reduced to Arrow columns as they arrive
    (``imgframe/usage.py``), so the peak should be near the frame, not a multiple of the
    JSON.
``requests``
    listing requests the emulator served: ``servers // 1000 + 1`` expected (Nova sends a
    next link after every full page, so a count that is a multiple of the page size
    ends with one empty page).

The goal printed: peak <= 2x the frame's bytes, and the frame has every server exactly
once. The script exits 0 unless the frame is wrong (a missing or repeated server), and
with ``--check`` also when the goal is missed. Only 127.0.0.1 is contacted; the child is
stopped when the script ends, also on error or Ctrl-C. Run it as
``python benchmarks/bench_servers.py`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil

import imgframe
from imgframe.testing import ADMIN_TOKEN

sys.path.insert(0, str(Path(__file__).parent))
# The memory probes of a sibling script, found through the line above.
from bench_million import high_water_mark, reset_high_water_mark, rss

GOAL_PEAK_VS_FRAME = 2.0
PAGE = 1000
MiB = 1 << 20
REPO = Path(__file__).resolve().parent.parent

# The child: n servers, served until its stdin closes, then its request count on stdout.
CHILD = """
import sys, uuid, json
from datetime import timedelta
from imgframe.testing.compute import ComputeEmulator, FakeServer, Usage, UsagePlanted
from imgframe.testing.fleet import FLEET_NOW
n = int(sys.argv[1])
image = str(uuid.UUID(int=1, version=4))
servers = [
    FakeServer(str(uuid.UUID(int=10**6 + i, version=4)), f"vm-{i}",
               "ACTIVE" if i % 3 else "SHUTOFF", None if i % 10 == 0 else image, "p0",
               FLEET_NOW - timedelta(seconds=i), FLEET_NOW - timedelta(seconds=i // 2))
    for i in range(n)
]
empty = frozenset()
usage = Usage(servers, [], UsagePlanted(empty, empty, empty, empty), ("p0",))
del servers
with ComputeEmulator(usage, max_limit=PAGE) as nova:
    print(nova.compute_url, flush=True)
    sys.stdin.read()
    print(json.dumps({"requests": len(nova.requests)}), flush=True)
""".replace("PAGE", str(PAGE))


@contextlib.contextmanager
def nova_child(servers: int) -> Iterator[tuple[str, dict[str, int]]]:
    """A ComputeEmulator in a child process; the dict gets its request count at exit."""
    counts: dict[str, int] = {}
    argv = [sys.executable, "-c", CHILD, str(servers)]
    with subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO
    ) as child:
        assert child.stdin is not None and child.stdout is not None
        try:
            url = child.stdout.readline().strip()
            if not url.startswith("http://127.0.0.1:"):
                raise RuntimeError(f"the emulator child did not start: {url!r}")
            counts["pid"] = child.pid
            yield url, counts
        finally:
            with contextlib.suppress(OSError):
                child.stdin.close()
            with contextlib.suppress(ValueError):
                counts.update(json.loads(child.stdout.readline() or "{}"))
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()


def max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def one_round(url: str, servers: int, child: psutil.Process) -> dict[str, float]:
    before, before_max = rss(), max_rss()
    hwm_reset = reset_high_water_mark()
    child_before = sum(child.cpu_times()[:2])
    cpu_before = time.process_time()
    started = time.perf_counter()
    df = imgframe.fetch_servers(url, ADMIN_TOKEN, page_size=PAGE)
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    child_cpu = sum(child.cpu_times()[:2]) - child_before
    hwm = high_water_mark() if hwm_reset else None
    frame = int(df.memory_usage(deep=True).sum())
    peak = (hwm if hwm is not None else max_rss()) - before
    right = len(df) == servers and df.index.is_unique
    print(
        f"  {len(df):,} rows in {seconds:.1f} s ({len(df) / seconds:,.0f} servers/s); "
        f"peak growth {peak / MiB:,.0f} MiB ({'VmHWM' if hwm is not None else 'ru_maxrss'}), "
        f"ru_maxrss growth {(max_rss() - before_max) / MiB:,.0f} MiB; "
        f"frame {frame / MiB:,.0f} MiB ({frame / max(len(df), 1):.0f} B/row); "
        f"peak/frame {peak / frame:.2f}; client CPU {cpu:.1f} s "
        f"({cpu / max(len(df), 1) * 1e6:.1f} µs/server), emulator CPU {child_cpu:.1f} s; "
        f"boot-from-volume rows {int(df['image_id'].isna().sum()):,}"
        + ("" if right else "  FAIL: not every server exactly once")
    )
    del df
    return {"seconds": seconds, "peak": peak, "frame": frame, "right": float(right), "cpu": cpu}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--servers", type=int, default=1_000_000, help="default 1,000,000")
    parser.add_argument("--rounds", type=int, default=1, help="default 1")
    parser.add_argument("--check", action="store_true", help="exit 1 when the goal is missed")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"bench_servers: fetch_servers of {args.servers:,} servers, pages of {PAGE:,}")
    built = time.perf_counter()
    with nova_child(args.servers) as (url, counts):
        print(f"  emulator child ready in {time.perf_counter() - built:.1f} s")
        child = psutil.Process(counts["pid"])
        rounds = [one_round(url, args.servers, child) for _ in range(args.rounds)]
    requests = counts.get("requests", -1)
    seconds = statistics.median(r["seconds"] for r in rounds)
    cpu = statistics.median(r["cpu"] for r in rounds)
    ratio = max(r["peak"] / r["frame"] for r in rounds)
    expected = args.servers // PAGE + 1
    print(
        f"  median {seconds:.1f} s (client CPU {cpu:.1f} s) over {len(rounds)} round(s); "
        f"requests served {requests:,} "
        f"({requests / len(rounds):,.0f} a round, {expected:,} expected)"
    )
    met = ratio <= GOAL_PEAK_VS_FRAME
    verdict = "PASS" if met else "MISS"
    print(f"  goal peak <= {GOAL_PEAK_VS_FRAME:.0f}x frame: {verdict} ({ratio:.2f}x)")
    if not all(r["right"] for r in rounds):
        return 1
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
