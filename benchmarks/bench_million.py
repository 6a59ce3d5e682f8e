"""Memory of one end-to-end fetch of a million ids: does it stay flat?

docs/ARCHITECTURE.md, ``imgframe/fetch.py`` and ``imgframe/frame.py`` say that a fetch
keeps nothing per request beyond the rows it returns: the workers share one iterator (no
task or queue entry per id), each answer's headers are packed at once, and every 10,000
results become a typed batch, written straight into the final frame's preallocated
columns at the rows' positions (``frame.FrameBuilder``). This script checks that claim on
the whole call,
``imgframe.fetch_images(ids, endpoint=url, token=..., concurrency=C, progress=False)``,
for ``--ids`` N distinct UUID strings (default 1,000,000).

What is measured (RSS of this process, from ``psutil``):

``before building the ids``
    after the imports, the server start and a 12,000-HEAD warm-up fetch (more than one
    10k batch, so that lazy imports and one-time pools are not charged to the ids);
``with N ids built``
    the baseline: the ids list a user would hold anyway;
``peak during the fetch``
    the largest RSS seen by a sampler thread (every 0.25 s), and the kernel's exact
    high-water mark (``VmHWM``, reset just before the call; Linux only), which also
    catches a spike between two samples;
``after fetch_images returned``
    with the frame alive.

Derived figures: the fetch overhead at the peak, ``(peak - with ids) / N`` bytes per id,
next to the final frame's ``df.memory_usage(deep=True).sum() / len(df)`` bytes per row;
and the RSS growth between 25% and 75% of the run time, per HEAD answered in that window
(nginx's ``stub_status`` request counter; with the emulator a steady rate is assumed),
next to what the rows kept by then explain (the final frame's bytes per row). A ratio
near 1 means nothing accumulates per request beyond the results; a coarse RSS timeline
(10 points) shows the shape. Also printed: wall time, HEAD/s (the whole call, frame
included), rows, the count of each HTTP status, and whether every requested id got
exactly one row, in input order.

Goal: the peak fetch overhead is at most 2x the final frame's bytes, i.e. the fetch holds
the rows it returns, less than one transient copy of them while building the frame, and
nothing per request. The ratio printed is ``(peak - with ids) / frame bytes``
(``memory_usage(deep=True)``): 1.0 would be the frame alone. The script prints PASS or
MISS and exits 0 either way, unless ``--check`` is given, in which case a MISS exits 1. A
wrong frame (a missing or repeated id; with nginx, any answer but 200) is printed as FAIL
and always exits 1.

``--path concatenating`` measures the way the frame was built before the preallocated
columns, for a baseline: every batch kept as its own frame, all concatenated and then
reordered into input order at the end (what ``frame.Collector`` still does when the
number of rows is not known up front, a listing). Each path is best measured in its own
run (a process's allocators keep freed memory, which would blur a second peak).

The server comes from ``benchmarks/bench_fetch.py``: nginx when installed (the same
answer for every id; the frame is indexed by the *requested* id, so its rows are still N
distinct ones), else the project's emulator serving ``--images N`` with the ids of that
fleet (computed in a child process, so that building a million-image fleet does not
weigh on this one's RSS). Either is stopped when the script ends, also on error, Ctrl-C
or ``--max-seconds``. Nothing but 127.0.0.1 is contacted.

Run it as ``python benchmarks/bench_million.py`` (``--help`` for the options).
"""

from __future__ import annotations

import _thread
import argparse
import contextlib
import gc
import itertools
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pandas as pd
import psutil
import pyarrow as pa

import imgframe

sys.path.insert(0, str(Path(__file__).parent))
import bench_fetch  # a sibling script, found through the line above

GOAL_OVERHEAD_VS_FRAME = 2.0
SAMPLE_SECONDS = 0.25
TIMELINE_POINTS = 10
WARMUP_IDS = 12_000  # more than one 10k batch: its first-batch allocations too
IDS_CHILD_TIMEOUT = 600.0  # seconds for a child process to compute a fleet's ids
MiB = 1 << 20

# ---------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------


def rss() -> int:
    """This process's resident set size in bytes, after a full garbage collection."""
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def reset_high_water_mark() -> bool:
    """Reset the kernel's peak RSS of this process (Linux >= 4.0); False if not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def high_water_mark() -> int | None:
    """The kernel's peak RSS of this process since the last reset (VmHWM), in bytes."""
    with contextlib.suppress(OSError):
        match = re.search(r"^VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
        if match:
            return int(match.group(1)) * 1024
    return None


def served_requests(server: bench_fetch.Server) -> int | None:
    """Requests nginx has answered so far (its own status requests included), else None."""
    counts = server.status_counts()
    return None if counts is None else counts[2]


def nested_object_bytes(df: pd.DataFrame) -> int:
    """Bytes of the objects *inside* object cells (the ``properties`` dicts' keys and
    values), each distinct object once: ``memory_usage(deep=True)`` counts the dicts but
    not what they hold."""
    seen: set[int] = set()
    total = 0
    for column in df.select_dtypes(include="object").columns:
        for cell in df[column]:
            if isinstance(cell, dict):
                for item in (*cell.keys(), *cell.values()):
                    if id(item) not in seen:
                        seen.add(id(item))
                        total += sys.getsizeof(item)
    return total


@dataclass(frozen=True)
class Sample:
    seconds: float  # since the fetch started
    rss: int
    served: int | None  # nginx's request counter, or None


class RssSampler:
    """A daemon thread that records RSS (and nginx's request count) every 0.25 s."""

    def __init__(self, server: bench_fetch.Server) -> None:
        self.samples: list[Sample] = []
        self._server = server
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._start = 0.0

    def __enter__(self) -> RssSampler:
        self._start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def sample(self) -> None:
        try:
            served = served_requests(self._server)
        except OSError:  # a busy server missing one status request is not worth a crash
            served = None
        rss = int(self._process.memory_info().rss)
        self.samples.append(Sample(time.perf_counter() - self._start, rss, served))

    def _run(self) -> None:
        self.sample()
        while not self._stop.wait(SAMPLE_SECONDS):
            self.sample()
        self.sample()

    def nearest(self, seconds: float) -> int:
        """The index of the sample nearest to ``seconds`` after the start."""
        return min(range(len(self.samples)), key=lambda i: abs(self.samples[i].seconds - seconds))

    def answered(self, first: int, last: int) -> int | None:
        """HEADs nginx answered between two samples, its status requests taken out."""
        before, after = self.samples[first].served, self.samples[last].served
        if before is None or after is None:
            return None
        return after - before - (last - first)  # each later sample made one status request


# ---------------------------------------------------------------------------------------
# ids
# ---------------------------------------------------------------------------------------


def random_ids(n: int, seed: int) -> list[str]:
    """``n`` distinct UUID4 strings from a seeded generator (for nginx, which answers any)."""
    rng = random.Random(seed)
    ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]
    if len(set(ids)) != n:  # 122 random bits: never, but the check is cheap next to a fetch
        raise RuntimeError("duplicate random ids; try another --seed")
    return ids


def write_fleet_ids(path: Path, n: int, seed: int) -> None:
    """The ids of ``make_fleet(n, seed)``, one a line, computed in a child process."""
    code = (
        "import sys\n"
        "from imgframe.testing import make_fleet\n"
        "with open(sys.argv[1], 'w') as out:\n"
        "    out.writelines(i.id + '\\n' for i in make_fleet(int(sys.argv[2]),"
        " seed=int(sys.argv[3])).images)\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(path), str(n), str(seed)],
        stdin=subprocess.DEVNULL,
        check=True,
        timeout=IDS_CHILD_TIMEOUT,
        cwd=bench_fetch.REPO,
    )


def read_ids(path: Path, limit: int | None = None) -> list[str]:
    """Ids from a file, one a line; line by line, so no big temporary string is made."""
    with path.open() as lines:
        return [line.rstrip("\n") for line in itertools.islice(lines, limit)]


# ---------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
        epilog="Exit code 0 unless the frame is wrong, or --check is given and the goal is missed.",
    )
    parser.add_argument(
        "--ids", type=int, default=1_000_000, help="distinct ids to fetch (default: 1000000)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=32, help="requests in flight (default: 32)"
    )
    parser.add_argument(
        "--server",
        choices=("auto", "nginx", "emulator"),
        default="auto",
        help="nginx if installed (auto), or the project's emulator (default: auto)",
    )
    parser.add_argument("--seed", type=int, default=0, help="ids / fleet seed (default: 0)")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=1800.0,
        help="give up (and stop the server) if the fetch takes longer (default: 1800)",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the server to one CPU and the client to the others",
    )
    parser.add_argument(
        "--path",
        choices=("placed", "concatenating"),
        default="placed",
        help="how the frame is built: batches written into preallocated columns (placed, "
        "what fetch_images does) or the old concatenate-then-reorder (default: placed)",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when the goal is missed")
    args = parser.parse_args(argv)
    if not 1 <= args.ids <= 5_000_000:
        parser.error("--ids must be from 1 to 5000000")
    if not 1 <= args.concurrency <= 1_000:
        parser.error("--concurrency must be from 1 to 1000")
    if not 0 < args.max_seconds <= 24 * 3600:
        parser.error("--max-seconds must be from 0 to 86400")
    return args


def use_concatenating_collector() -> None:
    """Make ``fetch_images`` build its frame by concatenating batches and reordering them
    at the end (its collector told it does not know the row count)."""
    from imgframe import api
    from imgframe.frame import Collector

    if getattr(api, "Collector", None) is not Collector:
        raise SystemExit("--path concatenating: imgframe.api no longer makes the Collector")

    class Concatenating(Collector):
        def __init__(self, *args: Any, total: int | None = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)

    api.Collector = Concatenating  # type: ignore[misc]


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.path == "concatenating":
        use_concatenating_collector()
    # SIGTERM unwinds like Ctrl-C, so the finally clauses below stop the server.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)

    kind = args.server
    if kind == "auto":
        kind = "nginx" if bench_fetch.find_nginx() is not None else "emulator"
    with tempfile.TemporaryDirectory(prefix="imgframe-bench-million-") as workdir:
        ids_file = Path(workdir, "ids.txt")
        if kind == "emulator":
            print(f"computing the ids of make_fleet({args.ids}) in a child process ...", flush=True)
            write_fleet_ids(ids_file, args.ids, args.seed)
            # The emulator builds the same fleet before it announces its URL: ~35 s for a
            # million images on this project's VM, more than bench_fetch's default wait.
            bench_fetch.START_TIMEOUT = max(bench_fetch.START_TIMEOUT, 60 + args.ids / 5_000)
        server = bench_fetch.start_server(kind, args.ids, args.seed)
        try:
            server.pinning = (
                bench_fetch.pin_cpus(server) if not args.no_pin else "not pinned (--no-pin)"
            )
            return benchmark(server, ids_file, args)
        finally:
            server.stop()


def benchmark(server: bench_fetch.Server, ids_file: Path, args: argparse.Namespace) -> int:
    n = args.ids
    print(f"server:      {server.kind} at {server.url} ({server.description})")
    print(
        f"client:      Python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
        f"pandas {pd.__version__}, imgframe {imgframe.__version__}, {os.cpu_count()} CPUs, "
        f"psutil {psutil.__version__}"
    )
    print(f"CPUs:        {server.pinning}")
    print(
        f"workload:    {n:,} distinct UUID ids, one fetch_images call, concurrency "
        f"{args.concurrency}, RSS sampled every {SAMPLE_SECONDS} s, frame built "
        f"{'into preallocated columns' if args.path == 'placed' else 'by concatenating batches'}"
        f" (--path {args.path})"
    )

    # Warm-up: lazy imports, the pyarrow pool, the first session -- one-time costs.
    if server.kind == "emulator":
        warmup_ids = read_ids(ids_file, WARMUP_IDS)
    else:
        warmup_ids = random_ids(WARMUP_IDS, args.seed + 1)
    problems = bench_fetch.check_wire(server, warmup_ids[0])
    if problems:
        print("wire check:  PROBLEM: " + "; ".join(problems))
    else:
        print("wire check:  200, Content-Length: 0, keep-alive holds for 2 HEADs on 1 socket")
    imgframe.fetch_images(
        warmup_ids,
        endpoint=server.url,
        token=server.token,
        concurrency=args.concurrency,
        progress=False,
    )
    del warmup_ids

    rss_start = rss()
    ids = read_ids(ids_file) if server.kind == "emulator" else random_ids(n, args.seed)
    if len(ids) != n:
        raise RuntimeError(f"expected {n} ids, got {len(ids)}")
    rss_ids = rss()
    blocks_ids = sys.getallocatedblocks()
    print(
        f"ids:         {n:,} built, {(rss_ids - rss_start) / n:.0f} bytes/id of RSS; fetching ...",
        flush=True,
    )

    exact_peak = reset_high_water_mark()
    timed_out = threading.Event()

    def give_up() -> None:
        timed_out.set()
        _thread.interrupt_main()  # KeyboardInterrupt in the main thread: cleanup runs

    deadline = threading.Timer(args.max_seconds, give_up)
    deadline.daemon = True
    try:
        with RssSampler(server) as sampler:
            deadline.start()
            started = time.perf_counter()
            df = imgframe.fetch_images(
                ids,
                endpoint=server.url,
                token=server.token,
                concurrency=args.concurrency,
                progress=False,
            )
            seconds = time.perf_counter() - started
            deadline.cancel()
            rss_after = int(psutil.Process().memory_info().rss)
    except KeyboardInterrupt:
        if timed_out.is_set():
            raise SystemExit(f"gave up after --max-seconds {args.max_seconds:g}") from None
        raise
    finally:
        deadline.cancel()
    kernel_peak = high_water_mark() if exact_peak else None
    sampled_peak = max(sample.rss for sample in sampler.samples)
    peak = max(sampled_peak, kernel_peak or 0)

    frame_bytes = int(df.memory_usage(deep=True).sum())
    row_bytes = frame_bytes / max(len(df), 1)
    full_row_bytes = (frame_bytes + nested_object_bytes(df)) / max(len(df), 1)
    statuses = df["http_status"].value_counts(dropna=False)
    status_text = ", ".join(
        f"{'none' if pd.isna(status) else status} x {count:,}" for status, count in statuses.items()
    )

    print()
    header = f"{'RSS':<40} {'MiB':>9} {'vs ids built':>13}"
    print(header)
    print("-" * len(header))
    rows = [
        ("before building the ids", rss_start),
        (f"with {n:,} ids built", rss_ids),
        ("peak during the fetch (sampled)", sampled_peak),
        ("peak during the fetch (kernel VmHWM)", kernel_peak),
        ("after fetch_images returned", rss_after),
    ]
    for name, value in rows:
        if value is None:
            print(f"{name:<40} {'n/a':>9} {'n/a':>13}")
        else:
            print(f"{name:<40} {value / MiB:>9.1f} {(value - rss_ids) / MiB:>+13.1f}")
    print()
    print(
        f"fetch:       {n:,} HEADs in {seconds:.1f} s = {n / seconds:,.0f} HEAD/s "
        "(the whole call, frame included)"
    )
    print(
        f"frame:       {len(df):,} rows, {frame_bytes / MiB:.1f} MiB = {row_bytes:.0f} bytes/row "
        f"(memory_usage(deep=True)); {full_row_bytes:.0f} bytes/row with the contents of "
        f"the properties dicts; statuses: {status_text}"
    )

    print()
    print(f"{'t (s)':>8} {'of run':>7} {'RSS MiB':>9} {'vs ids built':>13} {'HEADs answered':>15}")
    for point in range(TIMELINE_POINTS):
        index = sampler.nearest(seconds * point / (TIMELINE_POINTS - 1))
        sample = sampler.samples[index]
        answered_by_then = sampler.answered(0, index)
        answered = "-" if answered_by_then is None else f"{answered_by_then:,}"
        print(
            f"{sample.seconds:>8.1f} {sample.seconds / seconds:>7.0%} {sample.rss / MiB:>9.1f} "
            f"{(sample.rss - rss_ids) / MiB:>+13.1f} {answered:>15}"
        )

    # The verdicts.
    print()
    failures = []
    complete = bool(df.index.is_unique and len(df) == n)
    in_order = complete and list(df.index) == ids
    failures += [] if complete and in_order else ["one row per requested id, in input order"]
    ok = int(statuses.get(200, 0))
    if server.kind == "nginx" and ok != n:
        failures.append(f"every answer 200 (nginx): {ok:,} of {n:,}")
    print(
        f"{'PASS' if complete and in_order else 'FAIL'}  one row per requested id: "
        f"index unique {df.index.is_unique}, {len(df):,} rows for {n:,} ids, "
        f"input order {in_order}"
    )
    if server.kind == "nginx":
        print(f"{'PASS' if ok == n else 'FAIL'}  every answer 200 (nginx): {ok:,} of {n:,}")

    overhead = (peak - rss_ids) / n
    ratio = (peak - rss_ids) / frame_bytes if frame_bytes else float("inf")
    print(
        f"info  fetch overhead at the peak: ({peak / MiB:.1f} - {rss_ids / MiB:.1f} MiB) / "
        f"{n:,} = {overhead:.0f} bytes/id, {ratio:.2f}x the final frame's {row_bytes:.0f} "
        f"bytes/row ({overhead / full_row_bytes:.2f}x its {full_row_bytes:.0f} with the dicts' "
        f"contents); retained after the call: {(rss_after - rss_ids) / n:.0f} bytes/id"
    )
    done = next(
        (i for i in range(len(sampler.samples)) if (sampler.answered(0, i) or 0) >= n), None
    )
    at_done = None if done is None else sampler.samples[done]
    # nginx only, and only if a sample fell between the last answer and the call's end.
    if at_done is not None and seconds - at_done.seconds >= 0.1:
        print(
            f"info  all HEADs answered by {at_done.seconds:.1f} s: RSS then "
            f"{(at_done.rss - rss_ids) / n:.0f} bytes/id over the ids; the last "
            f"{seconds - at_done.seconds:.1f} s (the frame put together) took it to "
            f"{(peak - rss_ids) / n:.0f}"
        )
    first, last = sampler.nearest(0.25 * seconds), sampler.nearest(0.75 * seconds)
    early, late = sampler.samples[first], sampler.samples[last]
    growth = late.rss - early.rss
    answered_mid = sampler.answered(first, last)
    if answered_mid is not None:
        how = "HEADs answered by nginx"
    else:
        answered_mid = round(n * (late.seconds - early.seconds) / seconds)
        how = "HEADs answered, assuming a steady rate"
    if answered_mid > 0:
        per_row = growth / answered_mid
        print(
            f"info  RSS growth from {early.seconds:.0f} s to {late.seconds:.0f} s (25%-75% of "
            f"the run): {growth / MiB:+.1f} MiB for {answered_mid:,} {how} = {per_row:.0f} "
            f"bytes/row, {per_row / row_bytes:.2f}x what the kept rows explain "
            f"({row_bytes:.0f} bytes/row), {per_row / full_row_bytes:.2f}x with the dicts' "
            f"contents ({full_row_bytes:.0f})"
        )
    met = ratio <= GOAL_OVERHEAD_VS_FRAME
    print(
        f"{'PASS' if met else 'MISS'}  peak fetch overhead <= {GOAL_OVERHEAD_VS_FRAME:g}x the "
        f"final frame's bytes: {ratio:.2f}x ({(peak - rss_ids) / MiB:.1f} MiB over the ids "
        f"for a {frame_bytes / MiB:.1f} MiB frame; --path {args.path}; "
        f"{n / seconds:,.0f} HEAD/s)"
    )
    # A leak check: drop the frame and see what stays alive (Python blocks are exact;
    # RSS also keeps memory the allocators hold for reuse, which is not a leak).
    del df
    rss_dropped = rss()
    blocks = sys.getallocatedblocks() - blocks_ids
    print(
        f"info  after dropping the frame: RSS {(rss_dropped - rss_ids) / n:+.0f} bytes/id over "
        f"the ids, live Python blocks {blocks:+,} ({blocks / n:+.2f} per id), pyarrow holds "
        f"{pa.total_allocated_bytes() / MiB:.1f} MiB"
    )
    if problems:
        print("WARNING: the wire check found problems; the figures may be meaningless")
    if failures:
        print("FAILED: " + "; ".join(failures))
        return 1
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; server stopped", file=sys.stderr)
        sys.exit(130)
