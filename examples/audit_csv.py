"""Audit a fleet CSV written by imgframe: a findings CSV and a self-contained HTML report.

Usage::

    python examples/audit_csv.py fleet.csv -d audit-output [--now 2026-11-01] [--fail-on high]
    python examples/audit_csv.py --demo -d audit-output   # offline, bundled emulator

``fleet.csv`` is a file written by ``df.img.to_csv`` or ``imgframe fetch -o fleet.csv``;
``imgframe.read_csv`` reads it back with its exact dtypes. Writes ``findings.csv``
(spreadsheet-safe) and ``report.html`` into the output folder and prints the findings per
rule. With ``--fail-on SEVERITY`` the exit status is 3 when there is a finding of that
severity or worse (for CI jobs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

import imgframe

SEVERITIES = ("high", "medium", "low", "info")


def demo_csv(folder: Path, images: int) -> tuple[Path, pd.Timestamp]:
    """Fetch a seeded fleet from the bundled emulator into ``folder/fleet.csv``."""
    from imgframe.testing import ADMIN_TOKEN, FLEET_NOW, GlanceEmulator, make_fleet

    fleet = make_fleet(images, seed=11)
    with GlanceEmulator(fleet) as emulator:
        print(f"demo: Glance v1 emulator with {images:,} images at {emulator.url}")
        ids = [image.id for image in fleet.images]
        df = imgframe.fetch_images(ids, endpoint=emulator.url, token=ADMIN_TOKEN)
    path = df.img.to_csv(folder / "fleet.csv")
    print(f"demo: wrote {path}")
    # The fleet's clock: its stale and stuck images are planted relative to it.
    return path, pd.Timestamp(FLEET_NOW, tz="UTC")


def audit_csv(csv_path: Path, folder: Path, now: pd.Timestamp | None) -> pd.DataFrame:
    """Audit ``csv_path``; write findings.csv and report.html into ``folder``."""
    df = imgframe.read_csv(csv_path)
    findings = df.img.audit(now=now)
    findings_path = imgframe.to_csv(findings, folder / "findings.csv")
    report_path = df.img.report(folder / "report.html", findings=findings, now=now)
    counts = findings.groupby(["severity", "rule"], observed=True, sort=False).size()
    print(f"{len(df):,} images, {len(findings):,} findings")
    for (severity, rule), count in counts.items():
        print(f"  {severity:<7} {rule:<22} {count:>7,}")
    print(f"wrote {findings_path}")
    print(f"wrote {report_path}")
    return findings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="?", type=Path, help="a fleet CSV written by imgframe")
    parser.add_argument("-d", "--output-dir", type=Path, default=Path("audit-output"))
    parser.add_argument("--now", type=pd.Timestamp, help="audit as of this time (default: now)")
    parser.add_argument("--fail-on", choices=SEVERITIES, help="exit 3 on a finding this bad")
    parser.add_argument(
        "--demo",
        nargs="?",
        type=int,
        const=2000,
        metavar="IMAGES",
        help="fetch a fleet of IMAGES (2000) from the bundled emulator, then audit its CSV",
    )
    args = parser.parse_args(argv)
    if not args.demo and not args.csv:
        parser.error("give a fleet CSV (or --demo)")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    now = args.now
    if args.demo:
        csv_path, now = demo_csv(args.output_dir, args.demo)
    else:
        csv_path = args.csv
    findings = audit_csv(csv_path, args.output_dir, now)
    if args.fail_on:
        worst = SEVERITIES[: SEVERITIES.index(args.fail_on) + 1]
        if findings["severity"].isin(worst).any():
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
