"""The ``imgframe`` command: ``fetch``, ``emulator`` and ``demo``.

Errors a user can fix print one line (``imgframe: error: ...``) and exit 2; nothing a
user does should end in a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

import pandas as pd

from imgframe import __version__
from imgframe.api import DEFAULT_CONCURRENCY, fetch_images
from imgframe.auth import TokenArg
from imgframe.errors import ImgframeError, ImgframeParseWarning, IncompleteListingWarning
from imgframe.fetch import RetryPolicy, Timeout
from imgframe.fleet import FleetWarning
from imgframe.io import to_csv, write

__all__ = ["main"]

DEMO_IMAGES = 10_000
DEMO_SEED = 2026


def _read_ids(stream: TextIO) -> Iterator[str]:
    # One id per line; blank lines and '#' comments are not ids.
    for line in stream:
        text = line.strip()
        if text and not text.startswith("#"):
            yield text


def _ids_from_args(args: argparse.Namespace) -> list[str] | None:
    """The ids asked for, or None with ``--all`` (list every image the cloud shows)."""
    ids = list(args.ids)
    if args.ids_file == "-":
        ids += _read_ids(sys.stdin)
    elif args.ids_file:
        try:
            with open(args.ids_file, encoding="utf-8-sig") as handle:
                ids += _read_ids(handle)
        except OSError as exc:
            raise ImgframeError(f"cannot read ids file {args.ids_file!r}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ImgframeError(f"ids file {args.ids_file!r} is not UTF-8 text") from None
    elif not ids and not args.all and not sys.stdin.isatty():
        ids += _read_ids(sys.stdin)
    if args.all:
        if ids:
            raise ImgframeError("give image ids or --all, not both")
        return None
    if not ids:
        raise ImgframeError(
            "no image ids: give them as arguments, with --ids-file, on stdin, "
            "or use --all to list every image"
        )
    return ids


def summarize(df: pd.DataFrame, seconds: float | None = None) -> str:
    """A short human summary of a fetched frame: rows, statuses, errors, speed.

    Examples
    --------
    >>> import imgframe
    >>> print(summarize(imgframe.frame_from_headers([{"X-Image-Meta-Id": "a",
    ...     "X-Image-Meta-Status": "active"}]).assign(http_status=200)))
    1 image ids: 1 fetched, 0 failed
    by status: active 1
    """
    ok = df["http_status"].eq(200).fillna(False)  # NA: never sent (invalid id), so failed
    lines = [f"{len(df):,} image ids: {int(ok.sum()):,} fetched, {int((~ok).sum()):,} failed"]
    if "cloud" in df.columns and "region" in df.columns:  # a fetch_fleet frame
        cloud, region = (df[c].astype("string").fillna("-") for c in ("cloud", "region"))
        counts = (cloud + "/" + region).value_counts(sort=False).sort_index()
        lines.append("by cloud/region: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    statuses = df.loc[ok, "status"].value_counts(dropna=False)
    if len(statuses):
        lines.append("by status: " + ", ".join(f"{k} {v:,}" for k, v in statuses.items() if v))
    if (~ok).any():
        failed = df.loc[~ok]
        errors = failed["error"].value_counts(dropna=False)
        lines.append("errors:")
        lines += [f"  {count:>7,}  {error}" for error, count in errors.items()]
    if seconds is not None and seconds > 0:
        lines.append(f"time: {seconds:.2f} s, {len(df) / seconds:,.0f} images/s")
    return "\n".join(lines)


def _fetch(args: argparse.Namespace) -> int:
    if args.cloud and args.endpoint:
        raise ImgframeError("give --endpoint (with a token) or --cloud (clouds.yaml), not both")
    if args.aksk and (args.token or args.cloud):
        raise ImgframeError("--aksk signs requests to --endpoint instead of a token or --cloud")
    if args.region and not args.cloud:
        raise ImgframeError("--region chooses regions of --cloud clouds; add --cloud NAME")
    if not args.cloud and not args.endpoint:
        raise ImgframeError("say where: --endpoint URL (token: $OS_AUTH_TOKEN) or --cloud NAME")
    ids = _ids_from_args(args)
    options = {
        "concurrency": args.concurrency,
        "timeout": Timeout(total=args.timeout),
        "retries": RetryPolicy(attempts=args.retries + 1),
        "progress": args.progress,
        "verify": args.ca_bundle or not args.insecure,
        "max_rps": args.max_rps,
        "api": args.api,
    }
    started = time.perf_counter()
    if args.cloud:
        from imgframe.fleet import fetch_fleet

        df = fetch_fleet(
            args.cloud,
            args.region or None,
            ids=ids,
            errors="warn" if args.keep_going else "raise",
            **options,  # type: ignore[arg-type]
        )
    else:
        token: TokenArg = args.token or os.environ.get("OS_AUTH_TOKEN")
        if args.aksk:
            from imgframe.auth import HuaweiAkSk

            token = HuaweiAkSk.from_env()
        df = fetch_images(ids, endpoint=args.endpoint, token=token, **options)  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    if args.output:
        path = write(df, args.output)
        print(f"wrote {len(df):,} rows to {path}", file=sys.stderr)
    else:
        to_csv(df, sys.stdout)
    print(summarize(df, seconds), file=sys.stderr)
    return 0


def _emulator(args: argparse.Namespace) -> int:
    from imgframe.testing import make_fleet, run_forever
    from imgframe.testing.emulator import ADMIN_TOKEN, Faults

    if args.regions:
        return _emulated_cloud(args)
    if args.clouds_yaml:
        raise ImgframeError("--clouds-yaml describes a cloud of --regions; add --regions A,B")
    fleet = make_fleet(args.images, seed=args.seed)

    def ready(url: str) -> None:
        print(f"Glance v1 emulator: {len(fleet):,} images at {url}", flush=True)
        print(f"  token: {ADMIN_TOKEN} (admin)   Ctrl-C stops it", flush=True)
        print(f"  try: imgframe fetch --endpoint {url} --token {ADMIN_TOKEN} <id>", flush=True)

    run_forever(fleet, port=args.port, faults=Faults(latency=args.latency), on_ready=ready)
    return 0


def _emulated_cloud(args: argparse.Namespace) -> int:
    """A cloud of several regions: one emulator per region behind one small Keystone,
    and a clouds.yaml for it, until Ctrl-C or SIGTERM."""
    import signal
    import threading

    from imgframe.testing import make_fleet
    from imgframe.testing.emulator import Faults, GlanceEmulator
    from imgframe.testing.keystone import FakeKeystone

    names = [name.strip() for name in args.regions.split(",") if name.strip()]
    if len(set(names)) != len(names):
        raise ImgframeError(f"--regions names a region twice: {args.regions!r}")
    clouds_yaml = Path(args.clouds_yaml or "clouds.yaml")
    emulators: dict[str, GlanceEmulator] = {}
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        for n, name in enumerate(names):
            fleet = make_fleet(args.images, seed=args.seed + n)
            emulators[name] = GlanceEmulator(fleet, faults=Faults(latency=args.latency)).start()
        with FakeKeystone(emulators) as keystone:
            config = {"clouds": {args.cloud_name: {"auth": keystone.auth(), "regions": names}}}
            clouds_yaml.write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
            print(f"Keystone v3 at {keystone.url}/v3 (password login, test credentials)")
            for name, emulator in emulators.items():
                print(f"  region {name}: {len(emulator.fleet):,} images at {emulator.url}")
            print(f"wrote {clouds_yaml} (cloud {args.cloud_name!r}); Ctrl-C stops it all")
            print(
                f"  try: OS_CLIENT_CONFIG_FILE={clouds_yaml} imgframe fetch "
                f"--cloud {args.cloud_name} --all -o fleet.csv",
                flush=True,
            )
            while not stop.wait(0.5):  # wakes for Ctrl-C (KeyboardInterrupt) and SIGTERM
                pass
    except KeyboardInterrupt:
        pass
    finally:
        for emulator in emulators.values():
            emulator.stop()
    return 0


def findings_table(findings: pd.DataFrame, limit: int = 20) -> str:
    """Findings as text: counts by severity and rule, then the first ``limit`` findings.

    Examples
    --------
    >>> import pandas as pd
    >>> f = pd.DataFrame({"rule": ["stale"], "severity": ["low"], "image_id": ["a"],
    ...                   "owner": ["p"], "name": ["n"], "detail": ["not updated"]})
    >>> print(findings_table(f))
    1 findings: low 1
      stale (low): 1
    <BLANKLINE>
    severity  rule   image_id  owner  name  detail
    low       stale  a         p      n     not updated
    """
    if findings.empty:
        return "no findings"
    by_severity = findings["severity"].value_counts(sort=False)
    lines = [
        f"{len(findings):,} findings: "
        + ", ".join(f"{k} {v:,}" for k, v in by_severity.items() if v)
    ]
    by_rule = findings.groupby(["rule", "severity"], observed=True).size()
    lines += [f"  {rule} ({severity}): {count:,}" for (rule, severity), count in by_rule.items()]
    where = [c for c in ("cloud", "region") if c in findings.columns]
    shown = findings.head(limit)[
        ["severity", "rule", *where, "image_id", "owner", "name", "detail"]
    ]
    lines += ["", shown.to_string(index=False, justify="left")]
    if len(findings) > limit:
        lines.append(f"... and {len(findings) - limit:,} more (use --format csv or -o FILE)")
    return "\n".join(lines)


def _write_findings(findings: pd.DataFrame, fmt: str, output: str | None) -> None:
    from imgframe.io import to_csv

    if fmt == "csv":  # spreadsheet-safe: tenant-chosen names must not run as formulas
        to_csv(findings, output if output else sys.stdout)
        return
    records = json.loads(findings.to_json(orient="records", date_format="iso"))
    text = json.dumps(records, ensure_ascii=False, indent=1) + "\n"
    if output:
        Path(output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


def _read_allow_list(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8-sig") as handle:
            return list(_read_ids(handle))
    except OSError as exc:
        raise ImgframeError(f"cannot read allow-list {path!r}: {exc.strerror}") from None


FAIL_ON = ("high", "medium", "low", "info")


def _audit(args: argparse.Namespace) -> int:
    from imgframe.audits import audit
    from imgframe.io import read, report

    df = read(args.input)
    allow = _read_allow_list(args.allow) if args.allow else None
    rules = [r.strip() for r in args.rules.split(",") if r.strip()] if args.rules else None
    try:
        findings = audit(df, rules=rules, allow=allow)
    except ValueError as exc:  # an unknown rule name: the message lists the known ones
        raise ImgframeError(str(exc)) from None
    fmt = args.format
    if fmt is None:
        suffix = Path(args.output).suffix.lower().lstrip(".") if args.output else ""
        fmt = suffix if suffix in ("csv", "json", "html") else "table"
    if fmt == "html":
        path = report(df, args.output or "report.html", findings=findings)
        print(f"wrote {path}", file=sys.stderr)
    elif fmt == "table":
        text = findings_table(findings)
        if args.output:
            Path(args.output).write_text(text + "\n", encoding="utf-8")
        else:
            print(text)
    else:
        _write_findings(findings, fmt, args.output)
    if args.fail_on:
        worst = FAIL_ON[: FAIL_ON.index(args.fail_on) + 1]
        if findings["severity"].isin(worst).any():
            return 3
    return 0


def _demo(args: argparse.Namespace) -> int:
    import random

    from imgframe.testing import make_fleet
    from imgframe.testing.emulator import ADMIN_TOKEN, Faults, GlanceEmulator

    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fleet = make_fleet(args.images, seed=DEMO_SEED)
    rng = random.Random(DEMO_SEED)
    ids = [image.id for image in fleet.images]
    # Some ids the cloud does not know, as in any real list of ids.
    unknown = [f"{rng.getrandbits(128):032x}" for _ in range(max(1, len(ids) // 50))]
    ids += unknown
    rng.shuffle(ids)
    faults = Faults(
        transient_rate=0.05, retry_after=0.05, malformed_rate=0.002, latency=0.0, seed=DEMO_SEED
    )
    print(
        f"demo: Glance v1 emulator with {len(fleet):,} images, {len(unknown):,} unknown ids, "
        "5% transient faults (429/503/500/dropped connections), 0.2% malformed headers"
    )
    with GlanceEmulator(fleet, faults=faults) as emulator:
        started = time.perf_counter()
        df = fetch_images(
            ids,
            endpoint=emulator.url,
            token=ADMIN_TOKEN,
            concurrency=args.concurrency,
            progress=args.progress,
        )
        seconds = time.perf_counter() - started
        sent = len(emulator.request_log)
    print(summarize(df, seconds))
    print(
        f"requests sent (with retries): {sent:,}, {sent / seconds:,.0f} requests/s "
        "(client and emulator share one process here; benchmarks/bench_fetch.py measures "
        "throughput properly)"
    )
    from imgframe.audits import audit
    from imgframe.io import report
    from imgframe.testing.fleet import FLEET_NOW

    # The fleet's clock, so the planted stale and stuck images are found on any day.
    now = pd.Timestamp(FLEET_NOW, tz="UTC")
    findings = audit(df, now=now)
    print()
    print(findings_table(findings, limit=10))
    print()
    images = to_csv(df, out_dir / "images.csv")
    _write_findings(findings, "csv", str(out_dir / "findings.csv"))
    html = report(df, out_dir / "report.html", findings=findings, now=now)
    print(f"wrote {images} ({len(df):,} rows), {out_dir / 'findings.csv'} ({len(findings):,} rows)")
    print(f"wrote {html} (open it in a browser)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(
        prog="imgframe",
        description="Fetch Glance v1 image metadata (HEAD /v1/images/{id}) for many images "
        "into one typed table.",
    )
    parser.add_argument("--version", action="version", version=f"imgframe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    fetch = sub.add_parser(
        "fetch",
        help="HEAD many image ids (or every image) and write a table",
        description="HEAD /v1/images/{id} for every id; one row per id, failures included.\n"
        "Where: --endpoint with a token, or --cloud names from clouds.yaml (Keystone login,\n"
        "image endpoint from the service catalog). Several clouds and regions run at once\n"
        "and the table gains cloud and region columns.",
        epilog="examples:\n"
        "  OS_AUTH_TOKEN=... imgframe fetch --endpoint https://ims.example.com "
        "--ids-file ids.txt -o fleet.parquet\n"
        "  imgframe fetch --cloud prod --cloud staging --all --api auto -o fleet.parquet\n"
        "  imgframe fetch --cloud prod --region RegionOne --region RegionTwo --all -o f.csv\n"
        "  imgframe fetch --endpoint https://ims.cn-north-4.myhuaweicloud.com --aksk --all "
        "-o f.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fetch.add_argument("ids", nargs="*", metavar="ID", help="image ids (or use --ids-file/stdin)")
    fetch.add_argument("--ids-file", metavar="FILE", help="file with one id per line ('-' = stdin)")
    fetch.add_argument(
        "--all", action="store_true", help="list every image the credentials can see, then HEAD"
    )
    where = fetch.add_argument_group("where and who")
    where.add_argument("--endpoint", help="Glance/IMS URL, with or without /v1")
    where.add_argument(
        "--token",
        help="X-Auth-Token for --endpoint (default: $OS_AUTH_TOKEN, which others cannot see in ps)",
    )
    where.add_argument(
        "--aksk",
        action="store_true",
        help="sign requests to --endpoint with a Huawei Cloud access key (AK/SK) from "
        "$HUAWEICLOUD_SDK_AK, _SK, _PROJECT_ID (+ _SECURITY_TOKEN); needs imgframe[huawei]",
    )
    where.add_argument(
        "--cloud",
        action="append",
        metavar="NAME",
        help="a clouds.yaml cloud (repeat for several); needs imgframe[openstack]",
    )
    where.add_argument(
        "--region",
        action="append",
        metavar="NAME",
        help="regions of each --cloud (repeat; default: the regions clouds.yaml lists)",
    )
    where.add_argument(
        "--keep-going",
        action="store_true",
        help="with several clouds/regions: report one that fails and keep the others",
    )
    fetch.add_argument(
        "--api",
        choices=("v1", "v2", "auto"),
        default="v1",
        help="v1: HEAD /v1/images/{id}; v2: GET /v2/images/{id}; auto: v1, then v2 if the "
        "cloud has no v1 (default v1)",
    )
    fetch.add_argument(
        "--max-rps",
        type=float,
        metavar="N",
        help="at most N requests per second per endpoint (default: no cap; 429/503 answers "
        "shrink the requests in flight anyway)",
    )
    fetch.add_argument(
        "--concurrency",
        type=int,
        metavar="N",
        default=DEFAULT_CONCURRENCY,
        help=f"requests in flight (default {DEFAULT_CONCURRENCY}; raise it for distant clouds)",
    )
    fetch.add_argument(
        "--timeout", type=float, default=30.0, metavar="SECONDS", help="seconds per request (30)"
    )
    fetch.add_argument(
        "--retries", type=int, default=3, metavar="N", help="retries of 429/5xx/timeouts (3)"
    )
    fetch.add_argument(
        "-o", "--output", help="write .csv, .parquet or .json (default: CSV on stdout)"
    )
    tls = fetch.add_mutually_exclusive_group()
    tls.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    tls.add_argument("--ca-bundle", metavar="PEM", help="verify TLS with this CA bundle")
    _progress_option(fetch)
    fetch.set_defaults(run=_fetch)

    emulator = sub.add_parser("emulator", help="serve a synthetic fleet as Glance v1 on 127.0.0.1")
    emulator.add_argument("--images", type=int, default=1000, help="fleet size (1000)")
    emulator.add_argument("--seed", type=int, default=0, help="fleet seed (0)")
    emulator.add_argument("--port", type=int, default=9292, help="port (9292; 0 = any free)")
    emulator.add_argument("--latency", type=float, default=0.0, help="seconds added per request")
    emulator.add_argument(
        "--regions",
        metavar="A,B",
        help="a cloud of these regions instead: one emulator each (free ports, fleets of "
        "--images with seeds --seed, --seed+1, ...) behind one Keystone, and a clouds.yaml",
    )
    emulator.add_argument(
        "--clouds-yaml",
        metavar="FILE",
        help="with --regions: where to write the clouds.yaml (default ./clouds.yaml)",
    )
    emulator.add_argument(
        "--cloud-name", default="lab", help="with --regions: the cloud's name (lab)"
    )
    emulator.set_defaults(run=_emulator)

    audit = sub.add_parser(
        "audit",
        help="run the audit rules on a fetched table (.csv, .parquet, .json)",
        description="Run imgframe's audit rules on a table written by 'imgframe fetch'.",
    )
    audit.add_argument("input", metavar="FILE", help="images table: .csv, .parquet or .json")
    audit.add_argument(
        "--format",
        choices=("table", "csv", "json", "html"),
        help="output format (default: from -o's extension, else a text table)",
    )
    audit.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    audit.add_argument("--rules", metavar="A,B", help="only these rules (comma-separated)")
    audit.add_argument(
        "--allow", metavar="FILE", help="accepted risks: image or owner ids, one per line"
    )
    audit.add_argument(
        "--fail-on",
        choices=FAIL_ON,
        help="exit 3 when a finding of this severity or worse exists (for CI jobs)",
    )
    audit.set_defaults(run=_audit)

    demo = sub.add_parser(
        "demo", help="emulator + fetch of a seeded fleet with faults; writes demo-output/"
    )
    demo.add_argument("--images", type=int, default=DEMO_IMAGES, help=f"fleet size ({DEMO_IMAGES})")
    demo.add_argument("--output-dir", default="demo-output", help="where to write (demo-output)")
    demo.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    _progress_option(demo)
    demo.set_defaults(run=_demo)
    return parser


def _progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: only on a terminal)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``imgframe`` command; returns the exit status.

    Examples
    --------
    >>> main(["fetch", "--endpoint", "ftp://x", "--token", "t", "some-id"])
    2
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("concurrency", "images", "retries"):
        value = getattr(args, name, None)
        if value is not None and value < (0 if name == "retries" else 1):
            parser.error(f"--{name} must be {'>= 0' if name == 'retries' else '>= 1'}")
    if getattr(args, "max_rps", None) is not None and not args.max_rps > 0:
        parser.error("--max-rps must be > 0")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ImgframeParseWarning)
            warnings.simplefilter("always", FleetWarning)
            warnings.simplefilter("always", IncompleteListingWarning)
            status = int(args.run(args))
        for warning in caught:
            print(f"imgframe: warning: {warning.message}", file=sys.stderr)
        return status
    except ImgframeError as exc:
        print(f"imgframe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imgframe: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `imgframe ... | head`: the reader has gone, which is not an error worth a line.
        # Point stdout at devnull so that Python's exit-time flush does not complain again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # what a shell reports for a process ended by SIGPIPE
    except OSError as exc:  # output file not writable, port in use...
        print(f"imgframe: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug of ours: one line for users, the traceback on request
        if os.environ.get("IMGFRAME_DEBUG"):
            raise
        print(
            f"imgframe: internal error: {type(exc).__name__}: {exc} "
            "(set IMGFRAME_DEBUG=1 for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
