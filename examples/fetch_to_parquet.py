"""Fetch the metadata of every image id in a file into one Parquet file.

Usage::

    OS_AUTH_TOKEN=... python examples/fetch_to_parquet.py ids.txt \\
        --endpoint https://ims.example.com -o fleet.parquet [--concurrency 64]

    python examples/fetch_to_parquet.py --demo -o fleet.parquet   # offline, bundled emulator

``ids.txt`` holds one image id per line (blank lines and ``#`` comments are skipped;
``-`` reads stdin). The token comes from ``OS_AUTH_TOKEN``. Every id gets a row, the
ones that could not be read included (``http_status`` and ``error`` say why), and
``imgframe.read_parquet`` gives back exactly the same typed frame.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import imgframe


def read_ids(path: str) -> list[str]:
    """Image ids from a file (or stdin for ``-``): one per line, ``#`` starts a comment."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8-sig")
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


@contextlib.contextmanager
def demo_cloud(images: int) -> Iterator[tuple[str, str, str]]:
    """Start the bundled Glance v1 emulator; yield (endpoint, token, ids file)."""
    from imgframe.testing import ADMIN_TOKEN, GlanceEmulator, make_fleet

    fleet = make_fleet(images, seed=7)
    with tempfile.TemporaryDirectory() as folder, GlanceEmulator(fleet) as emulator:
        ids_file = Path(folder, "ids.txt")
        ids = [image.id for image in fleet.images] + ["00000000-0000-4000-8000-000000000000"]
        ids_file.write_text("# demo ids, one unknown to the cloud\n" + "\n".join(ids) + "\n")
        print(f"demo: Glance v1 emulator with {images:,} images at {emulator.url}")
        yield emulator.url, ADMIN_TOKEN, str(ids_file)


def fetch_to_parquet(
    ids_file: str, endpoint: str, token: str, output: Path, concurrency: int
) -> None:
    """Fetch every id of ``ids_file`` and write the frame to ``output``."""
    ids = read_ids(ids_file)
    df = imgframe.fetch_images(ids, endpoint=endpoint, token=token, concurrency=concurrency)
    path = df.img.to_parquet(output)
    failed = int(df["error"].notna().sum())
    print(f"wrote {path}: {len(df):,} images, {failed:,} could not be read")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ids_file", nargs="?", help="file with one image id per line ('-' = stdin)")
    parser.add_argument("--endpoint", help="Glance v1 / IMS URL, with or without /v1")
    parser.add_argument("-o", "--output", default="fleet.parquet", help="Parquet file to write")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (32)")
    parser.add_argument(
        "--demo",
        nargs="?",
        type=int,
        const=2000,
        metavar="IMAGES",
        help="start the bundled emulator with a fleet of IMAGES (2000) and fetch it",
    )
    args = parser.parse_args(argv)
    output = Path(args.output)
    if args.demo:
        with demo_cloud(args.demo) as (endpoint, token, ids_file):
            fetch_to_parquet(ids_file, endpoint, token, output, args.concurrency)
        return 0
    if not args.ids_file or not args.endpoint:
        parser.error("give an ids file and --endpoint (or --demo)")
    token = os.environ.get("OS_AUTH_TOKEN")
    if not token:
        parser.error("set OS_AUTH_TOKEN to a Keystone token")
    fetch_to_parquet(args.ids_file, args.endpoint, token, output, args.concurrency)
    return 0


if __name__ == "__main__":
    sys.exit(main())
