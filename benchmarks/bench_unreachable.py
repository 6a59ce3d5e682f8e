"""How fast a fetch gives up on an endpoint that cannot be reached.

Two scenarios, each timed over ``--repeat`` rounds (median and range printed):

``closed port``
    ``fetch_images`` of ``--ids`` ids (default 1,000) against ``http://127.0.0.1:PORT``
    where nothing listens (a port bound and released just before), with the default
    retry policy and concurrency. The first request goes alone; when all its attempts
    are refused, the other ids are not sent and their rows say the endpoint was
    unreachable. Goal: under 5 s for 1,000 ids (it was 34 s when each id was retried).
``dies mid-run``
    the project's emulator serves ``--ids`` x 10 ids with 2 ms latency and is stopped
    after ``--answers`` answers; the time from the stop to the end of the fetch is
    printed, with how many rows were answered, failed or never sent.

Only 127.0.0.1 is contacted. Figures are printed, not asserted; the script exits 0.
Run it as ``python benchmarks/bench_unreachable.py`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time

import imgframe
from imgframe.testing import ADMIN_TOKEN, Faults, GlanceEmulator, make_fleet


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def closed_port_round(n: int) -> tuple[float, dict[str, int]]:
    ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(n)]
    started = time.perf_counter()
    df = imgframe.fetch_images(
        ids, endpoint=f"http://127.0.0.1:{closed_port()}", token="t", progress=False
    )
    elapsed = time.perf_counter() - started
    assert len(df) == n
    return elapsed, df["error"].value_counts().to_dict()


def mid_run_round(n: int, answers: int) -> tuple[float, dict[str, int]]:
    fleet = make_fleet(n, seed=1)
    ids = [image.id for image in fleet.images]
    emu = GlanceEmulator(fleet, faults=Faults(latency=0.002)).start()
    stopped_at: list[float] = []

    def stop_after_answers() -> None:
        deadline = time.monotonic() + 60
        while len(emu.request_log) < answers and time.monotonic() < deadline:
            time.sleep(0.005)
        emu.stop()
        stopped_at.append(time.perf_counter())

    killer = threading.Thread(target=stop_after_answers)
    killer.start()
    try:
        df = imgframe.fetch_images(ids, endpoint=emu.url, token=ADMIN_TOKEN, progress=False)
        ended = time.perf_counter()
    finally:
        killer.join()
        emu.stop()
    counts = {
        "answered": int(df["http_status"].notna().sum()),
        "never sent": int(df["error"].str.startswith("not requested", na=False).sum()),
    }
    counts["failed"] = n - counts["answered"] - counts["never sent"]
    return ended - stopped_at[0], counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=1000, help="ids (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds (default: %(default)s)")
    parser.add_argument(
        "--answers", type=int, default=2000, help="answers before the stop (default: %(default)s)"
    )
    args = parser.parse_args()

    times = []
    for round_number in range(1, args.repeat + 1):
        elapsed, errors = closed_port_round(args.ids)
        times.append(elapsed)
        print(f"  closed port, round {round_number}: {elapsed:.2f} s  {errors}")
    print(
        f"closed port: {args.ids} ids in {statistics.median(times):.2f} s median "
        f"({min(times):.2f}-{max(times):.2f} s over {args.repeat} rounds); goal < 5 s: "
        + ("PASS" if statistics.median(times) < 5 else "MISS")
    )

    times = []
    for round_number in range(1, args.repeat + 1):
        elapsed, counts = mid_run_round(args.ids * 10, args.answers)
        times.append(elapsed)
        print(f"  dies mid-run, round {round_number}: {elapsed:.2f} s after the stop  {counts}")
    print(
        f"dies mid-run: {args.ids * 10} ids, stopped after {args.answers} answers: the fetch "
        f"ended {statistics.median(times):.2f} s after the stop (median; "
        f"{min(times):.2f}-{max(times):.2f} s)"
    )


if __name__ == "__main__":
    main()
