"""List every image of a Glance v1 cloud, then fetch all their metadata into one file.

Usage::

    OS_AUTH_TOKEN=... python examples/enumerate_and_fetch.py \\
        --endpoint https://ims.example.com -o fleet.parquet [--page-size 1000] [--deleted]

    python examples/enumerate_and_fetch.py --demo -o fleet.parquet   # offline, bundled emulator

Step 1 is ``imgframe.list_image_ids``, which pages through
``GET /v1/images/detail?limit=N&marker=LAST_ID``: Glance v1 answers ``{"images": [...]}``
with no "next" link, and a server may return fewer images than asked for (it clamps
``limit`` to its ``api_limit_max``), so a short page does not mean the end: the listing
ends with the first empty page. Step 2 HEADs every listed id with
``imgframe.fetch_images`` (the listing lacks nothing the audit needs, but HEAD gives the
same typed frame as every other imgframe source). ``--deleted`` lists deleted images too
(all of them for an admin token, its own and public ones for a project token). The output
format follows the extension (.parquet, .csv, .json).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import imgframe
from imgframe.io import write


def enumerate_and_fetch(
    endpoint: str, token: str, output: Path, *, page_size: int, deleted: bool, concurrency: int
) -> None:
    """List the cloud's images, HEAD them all and write the frame to ``output``."""
    if not endpoint.startswith(("http://", "https://")):
        raise SystemExit(f"--endpoint must be an http(s) URL, got {endpoint!r}")
    ids = imgframe.list_image_ids(
        endpoint=endpoint, token=token, page_size=page_size, include_deleted=deleted
    )
    print(f"listed {len(ids):,} images")
    df = imgframe.fetch_images(ids, endpoint=endpoint, token=token, concurrency=concurrency)
    write(df, output)
    failed = int(df["error"].notna().sum())
    print(f"wrote {output}: {len(df):,} images, {failed:,} could not be read")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", help="Glance v1 / IMS URL, with or without /v1")
    parser.add_argument("-o", "--output", type=Path, default=Path("fleet.parquet"))
    parser.add_argument("--page-size", type=int, default=1000, help="images per page (1000)")
    parser.add_argument("--deleted", action="store_true", help="list deleted images too (admin)")
    parser.add_argument("--concurrency", type=int, default=32, help="HEADs in flight (32)")
    parser.add_argument(
        "--demo",
        nargs="?",
        type=int,
        const=2000,
        metavar="IMAGES",
        help="start the bundled emulator with IMAGES (2000), serving at most 300 per page",
    )
    args = parser.parse_args(argv)
    options = {
        "page_size": args.page_size,
        "deleted": args.deleted,
        "concurrency": args.concurrency,
    }
    if args.demo:
        from imgframe.testing import ADMIN_TOKEN, GlanceEmulator, make_fleet

        # api_limit_max below --page-size: every page is "short", as on many real clouds.
        with GlanceEmulator(make_fleet(args.demo, seed=5), api_limit_max=300) as emulator:
            print(f"demo: Glance v1 emulator with {args.demo:,} images at {emulator.url}")
            enumerate_and_fetch(emulator.url, ADMIN_TOKEN, args.output, **options)
        return 0
    if not args.endpoint:
        parser.error("give --endpoint (or --demo)")
    token = os.environ.get("OS_AUTH_TOKEN")
    if not token:
        parser.error("set OS_AUTH_TOKEN to a Keystone token")
    enumerate_and_fetch(args.endpoint, token, args.output, **options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
