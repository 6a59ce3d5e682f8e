"""Benchmark: building the typed frame from 1,000,000 HEAD responses' headers.

Prints, for the same synthetic header dicts (shaped like Glance v1 answers: ~20 headers,
mixed-case names, a few custom properties, some queued images without size/checksum):

* ``frame_from_headers`` — imgframe's column-wise builder;
* baseline — what one would write first: ``parse_headers`` on each dict, then
  ``pd.DataFrame(records)`` (same parsing rules, per record);

seconds, rows/s, the ratio, and bytes per row of each frame (``memory_usage(deep=True)``
including the index, ``properties`` excluded: a dict per row costs what its content
costs). Goals (README.md, Benchmarks): >= 3x faster than the baseline and <= 250 bytes
per row.

Run: ``.venv/bin/python benchmarks/bench_parse.py [--rows N]``.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
import uuid

import pandas as pd

from imgframe import frame_from_headers, parse_headers

STATUSES = ["active"] * 17 + ["queued", "killed", "deleted"]
NAMES = ["ubuntu-22.04-server", "win2019-std", "centos-9-stream", "debian-12-genericcloud",
         "rhel-9.3-x86_64", "cirros-0.6.2", "niño-base", "镜像-生产", "образ-тест"]  # fmt: skip
DISKS = ["qcow2", "raw", "vhd", "vmdk", "iso", "zvhd2"]


def synthetic_headers(rows: int, seed: int = 0) -> list[dict[str, str]]:
    """``rows`` header dicts like a Glance v1 HEAD answer, deterministic from ``seed``."""
    rng = random.Random(seed)
    owners = [f"{rng.getrandbits(128):032x}" for _ in range(60)]
    out = []
    for i in range(rows):
        status = rng.choice(STATUSES)
        created = (
            f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T06:04:20.{i % 999999:06d}"
        )
        headers = {
            "Content-Type": "text/html; charset=UTF-8",
            "Content-Length": "0",
            "X-Image-Meta-Id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "X-Image-Meta-Deleted": "True" if status == "deleted" else "False",
            "X-Image-Meta-Container_format": "bare",
            "X-Image-Meta-Protected": rng.choice(("True", "False")),
            "X-Image-Meta-Min_disk": str(rng.choice((0, 10, 20, 40))),
            "X-Image-Meta-Created_at": created,
            "X-Image-Meta-Status": status,
            "X-Image-Meta-Is_public": rng.choice(("True", "False", "False", "False")),
            "X-Image-Meta-Min_ram": str(rng.choice((0, 512, 1024, 2048))),
            "X-Image-Meta-Owner": rng.choice(owners),
            "X-Image-Meta-Updated_at": created[:19],
            "X-Image-Meta-Disk_format": rng.choice(DISKS),
            "X-Image-Meta-Name": f"{rng.choice(NAMES)}-{20240101 + i % 365}",
            "X-Image-Meta-Property-Os_distro": "ubuntu",
            "X-Image-Meta-Property-Architecture": "x86_64",
            "X-Openstack-Request-Id": f"req-{uuid.UUID(int=rng.getrandbits(128), version=4)}",
            "Date": "Mon, 23 May 2016 02:29:54 GMT",
        }
        if status != "queued":
            checksum = f"{rng.getrandbits(128):032x}"
            headers["X-Image-Meta-Size"] = str(rng.randrange(10**7, 4 * 10**10))
            headers["X-Image-Meta-Checksum"] = checksum
            headers["Etag"] = checksum
        if status == "deleted":
            headers["X-Image-Meta-Deleted_at"] = created
        if i % 3 == 0:
            headers["X-Image-Meta-Property-Description"] = ""
        out.append(headers)
    return out


def bytes_per_row(df: pd.DataFrame) -> float:
    memory = df.drop(columns=["properties"]).memory_usage(deep=True, index=True).sum()
    return float(memory) / max(len(df), 1)


def baseline(headers: list[dict[str, str]]) -> pd.DataFrame:
    """Per record: parse each dict, then one DataFrame from the records."""
    records = [parse_headers(h) for h in headers]
    fields = records[0].__slots__ if records else ()
    return pd.DataFrame([{f: getattr(r, f) for f in fields} for r in records]).set_index("id")


def timed(function, headers):  # type: ignore[no-untyped-def]
    gc.collect()
    started = time.perf_counter()
    frame = function(headers)
    return frame, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--check", action="store_true", help="exit 1 if a goal is missed")
    args = parser.parse_args(argv)
    print(f"building {args.rows:,} synthetic header dicts ...", flush=True)
    headers = synthetic_headers(args.rows)
    frame_from_headers(headers[:1000])  # warm-up: imports, regex compilation
    ours, ours_s = timed(frame_from_headers, headers)
    base, base_s = timed(baseline, headers)
    assert len(ours) == len(base) == args.rows
    # Measured before any lookup: .loc builds the index's hash table, which memory_usage
    # would then count too (for both frames alike).
    ours_b, base_b = bytes_per_row(ours), bytes_per_row(base)
    # The two paths must agree before their speeds mean anything.
    sample = ours.index[:: max(1, args.rows // 1000)]
    for column in ("size", "is_public", "created_at", "name", "status"):
        left, right = ours.loc[sample, column], base.loc[sample, column]
        same = [
            (a == b) if not pd.isna(a) else pd.isna(b) for a, b in zip(left, right, strict=True)
        ]
        assert all(same), column
    ratio = base_s / ours_s
    print(f"{'':24}{'seconds':>9}{'rows/s':>12}{'bytes/row':>11}")
    print(f"{'frame_from_headers':24}{ours_s:9.2f}{args.rows / ours_s:12,.0f}{ours_b:11.0f}")
    print(f"{'baseline (per record)':24}{base_s:9.2f}{args.rows / base_s:12,.0f}{base_b:11.0f}")
    speed_ok, memory_ok = ratio >= 3.0, ours_b <= 250
    print(f"speed-up: {ratio:.2f}x (goal >= 3x: {'PASS' if speed_ok else 'MISS'})")
    print(f"memory: {ours_b:.0f} bytes/row (goal <= 250: {'PASS' if memory_ok else 'MISS'})")
    return 1 if args.check and not (speed_ok and memory_ok) else 0


if __name__ == "__main__":
    sys.exit(main())
