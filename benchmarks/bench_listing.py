"""Whole-cloud fetch: rows from the listing's detail pages vs listing + one HEAD per image.

``fetch_images(ids=None)`` against the project's emulator serving ``--images`` images
(default 50,000; pages of 1,000, the emulator's ``api_limit_max``), two ways:

``detail``
    the default: every row is made from the listing's own ``/v1/images/detail`` record.
``head``
    ``verify_with_head=True``: the listing streamed into one ``HEAD /v1/images/{id}``
    per listed image, at the default concurrency (32).

Each at zero latency and with the emulator's latency fault (``--latency``, default 50 ms
per request, listing pages included), after the listing alone (``list_image_ids``) for
reference. At that latency a HEAD of every image takes
``images x latency / concurrency`` (~78 s for 50,000): with ``--head-images N`` (default
10,000) the HEAD way is measured on an N-image fleet and its time scaled linearly to
``--images`` (printed as "extrapolated"); ``--head-images 0`` measures the whole fleet.
Requests are counted from the emulator's request log; both frames are checked equal
(``request_id`` aside) where both ways ran on the same fleet.

The emulator runs in a thread of this process (as in the test suite): its JSON and
header rendering share the CPU and the GIL with the client, the same way for both.
``--server process`` runs it as ``python -m imgframe.testing.emulator`` in a process of
its own instead, as a remote server would be (requests are not counted then).
``--repeat`` runs the (cheap) detail way that many times and keeps the fastest.
Only 127.0.0.1 is contacted. Figures are printed, not asserted; the script exits 0.
Run it as ``python benchmarks/bench_listing.py`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator

import pandas as pd

import imgframe
from imgframe.testing import ADMIN_TOKEN, Faults, Fleet, GlanceEmulator, make_fleet

LIST_PATHS = ("/v1/images/detail", "/v2/images")


@contextlib.contextmanager
def emulator_process(images: int, latency: float) -> Iterator[str]:
    """``python -m imgframe.testing.emulator`` serving ``make_fleet(images, seed=1)``."""
    argv = [sys.executable, "-m", "imgframe.testing.emulator", "--images", str(images)]
    argv += ["--seed", "1", "--latency", str(latency)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            yield process.stdout.readline().strip()
        finally:
            process.terminate()
            process.wait(10)


def fetch(url: str, head: bool | None) -> pd.DataFrame:
    """The whole-cloud fetch; ``head`` None: only the listing (``list_image_ids``)."""
    if head is None:
        return pd.DataFrame(index=imgframe.list_image_ids(endpoint=url, token=ADMIN_TOKEN))
    return imgframe.fetch_images(
        endpoint=url, token=ADMIN_TOKEN, progress=False, verify_with_head=head
    )


def one_run(
    fleet: Fleet, latency: float, head: bool | None, server: str = "thread"
) -> tuple[float, int | None, int | None, pd.DataFrame]:
    """Seconds, listing requests, image requests and the frame of one whole-cloud fetch."""
    if server == "process":
        with emulator_process(len(fleet.images), latency) as url:
            started = time.perf_counter()
            df = fetch(url, head)
            return time.perf_counter() - started, None, None, df
    with GlanceEmulator(fleet, faults=Faults(latency=latency)) as emu:
        started = time.perf_counter()
        df = fetch(emu.url, head)
        seconds = time.perf_counter() - started
        log = emu.request_log
    pages = sum(1 for r in log if r.path in LIST_PATHS)
    return seconds, pages, len(log) - pages, df


def requests(pages: int | None, images: int | None) -> str:
    if pages is None:
        return "requests not counted"
    return f"{pages} listing + {images} image requests"


def same_rows(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    try:
        pd.testing.assert_frame_equal(a.drop(columns="request_id"), b.drop(columns="request_id"))
    except AssertionError:
        return False
    return True


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
    parser.add_argument("--server", choices=["thread", "process"], default="thread")
    parser.add_argument("--repeat", type=int, default=3, help="detail runs (the fastest)")
    args = parser.parse_args()
    fleet = make_fleet(args.images, seed=1)
    print(
        f"{args.images:,} images, pages of 1,000, concurrency 32 (default), "
        f"emulator in a {args.server}"
    )
    for latency in (0.0, args.latency):
        runs = [one_run(fleet, latency, None, args.server) for _ in range(args.repeat)]
        print(f"latency {latency * 1000:g} ms  listing ids alone: {min(r[0] for r in runs):.2f} s")
        runs = [one_run(fleet, latency, False, args.server) for _ in range(args.repeat)]
        detail_s, pages, images_sent, detail_df = min(runs, key=lambda run: run[0])
        print(
            f"latency {latency * 1000:g} ms  detail: {detail_s:7.2f} s  "
            f"{requests(pages, images_sent)}, {len(detail_df):,} rows"
        )
        small = latency > 0 and 0 < args.head_images < args.images
        head_fleet = make_fleet(args.head_images, seed=1) if small else fleet
        head_s, head_pages, head_sent, head_df = one_run(head_fleet, latency, True, args.server)
        scale = args.images / args.head_images if small else 1.0
        how = f"extrapolated from {args.head_images:,} images" if small else "measured"
        print(
            f"latency {latency * 1000:g} ms  head:   {head_s * scale:7.2f} s  ({how}: "
            f"{head_s:.2f} s, {requests(head_pages, head_sent)})"
        )
        equal = "" if small else f", frames equal: {same_rows(detail_df, head_df)}"
        print(f"latency {latency * 1000:g} ms  speed-up: {head_s * scale / detail_s:.1f}x{equal}")


if __name__ == "__main__":
    main()
