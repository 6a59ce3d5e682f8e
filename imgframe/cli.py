"""The ``imgframe`` command: ``fetch``, ``audit``, ``diff``, ``servers``, ``volumes``,
``emulator`` and ``demo``.

Errors a user can fix print one line (``imgframe: error: ...``); nothing a user does
should end in a traceback. The exit status says what happened (:data:`EXIT_STATUS_HELP`,
also in ``imgframe --help``): a cron job must be able to tell a complete run from one
that read nothing.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import re
import shlex
import shutil
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Literal, TextIO
from urllib.parse import urlsplit

import pandas as pd

from imgframe import __version__
from imgframe.api import fetch_images, fetch_with_options
from imgframe.atomic import atomic_path, check_writable
from imgframe.auth import TokenArg
from imgframe.config import DEFAULT_CONCURRENCY, FetchOptions
from imgframe.errors import (
    CheckpointError,
    ConfigError,
    FetchError,
    ImgframeError,
    ImgframeWarning,
)
from imgframe.io import FORMATS, FORMULA_STARTS, to_csv, write
from imgframe.outcome import Outcome, run_outcome
from imgframe.runner import run_sync

__all__ = ["EXIT_STATUS_HELP", "main"]

DEMO_IMAGES = 10_000
DEMO_SEED = 2026

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_FINDINGS = 3
EXIT_INCOMPLETE = 4
EXIT_FAILED = 5
EXIT_SIGINT = 128 + signal.SIGINT  # what a shell reports for a process ended by the signal
EXIT_SIGTERM = 128 + signal.SIGTERM
EXIT_PIPE = 128 + 13  # SIGPIPE; signal.SIGPIPE does not exist on Windows

#: The exit statuses, as ``imgframe --help`` and ``imgframe fetch --help`` print them.
EXIT_STATUS_HELP = """\
exit status:
  0    complete: every requested id got a definitive answer (200, 404, or an invalid
       id that was never sent)
  1    internal error, a bug (IMGFRAME_DEBUG=1 shows the traceback; please report it)
  2    usage or configuration error: a bad option, an unreadable ids file, an -o that
       is not writable or not .csv/.parquet/.json, a checkpoint made for another run,
       a --history folder that cannot take the run (one of the same second exists)
  3    imgframe audit --fail-on: a finding that severe exists (with --baseline: a
       new one); imgframe diff --fail-on: one of those changes exists
  4    incomplete: the table is written but some ids could not be read; the last line
       says how many and why (with --keep-going: which targets failed). Run the same
       command again to ask only those ids (the checkpoint keeps the others); with
       --history the run is added, its provenance saying complete=false
  5    the run failed as a whole (no Glance v1 API, TLS not verified, endpoint
       unreachable, token rejected before any row was read): one line says why and
       nothing is written to -o nor added to --history, so an older table is kept
  130  interrupted (SIGINT, Ctrl-C)
  143  terminated (SIGTERM: cron, timeout, systemd). On both, sending stops at once,
       the rows fetched so far stay in the checkpoint and the command that resumes
       the run is printed
  141  stdout was closed by its reader (imgframe fetch ... | head)
"""

# Where and what an ids file may be: one id per line, or a CSV with an ``id`` column.
_ID_COLUMN = "id"
# An endpoint path that still names an API version or the images collection: imgframe
# adds /v1/images/{id} itself, so ".../v2" would ask /v2/v1/images/{id} (404 for every id,
# a run that looks complete).
_VERSIONED_PATH = re.compile(r"/(v\d+(?:\.\d+)?(?:/images)?|images)$", re.IGNORECASE)


FETCH_RUN_HELP = """\
long runs and resuming:
  Finished rows go to a checkpoint folder as they arrive (at least every 10,000 rows
  or 10 s): OUT.checkpoint next to -o OUT, or --checkpoint DIR; without -o, a folder
  under ${XDG_CACHE_HOME:-~/.cache}/imgframe/checkpoints named by a digest of the
  request. Running the same command again resumes: only the ids without a definitive
  answer are sent. The checkpoint is removed once a run is complete (exit 0), kept
  when it is not (4, 130, 143): until then its rows answer their ids in every run of
  the same command (delete the folder to ask afresh). --no-checkpoint keeps none.
  Ctrl-C (SIGINT) or SIGTERM stops sending at once, keeps what was fetched, prints the
  command that resumes and exits 130 / 143; kill -9 loses at most the last 10 s.
"""


def _read_ids(stream: TextIO, source: str) -> list[str]:
    """The ids in ``stream``: one per line (blank lines and ``#`` comments skipped), or,
    when the first line has commas (semicolons, tabs) or is ``id``, the ``id`` column of
    a CSV (such as a table ``imgframe fetch`` wrote). A byte order mark is dropped.

    Examples
    --------
    >>> _read_ids(io.StringIO("\\ufeffa\\n# comment\\n\\n b \\n"), "stdin")
    ['a', 'b']
    >>> _read_ids(io.StringIO("Name;ID\\nx;a\\ny;b\\n"), "stdin")
    ['a', 'b']
    """
    lines = list(stream)
    if lines:
        lines[0] = lines[0].removeprefix("\ufeff")  # Windows editors, PowerShell pipes
    first = next(
        (n for n, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")),
        None,
    )
    if first is None:
        return []
    header = lines[first].strip()
    # Commas, or the semicolons and tabs of spreadsheets set to a European locale.
    delimiter = max(_DELIMITERS, key=header.count)
    if delimiter in header or header.strip('"').lower() == _ID_COLUMN:
        return _ids_from_csv("".join(lines[first:]), source, delimiter)
    return [text for line in lines if (text := line.strip()) and not text.startswith("#")]


_DELIMITERS = (",", ";", "\t")


def _ids_from_csv(text: str, source: str, delimiter: str = ",") -> list[str]:
    rows = csv.reader(io.StringIO(text), delimiter=delimiter)
    names = [name.strip().lower() for name in next(rows)]
    if _ID_COLUMN not in names:
        shown = ",".join(names[:6]) + (",..." if len(names) > 6 else "")
        raise ImgframeError(
            f"{source} looks like a CSV file (its first line is {shown!r}) but has no "
            f"'{_ID_COLUMN}' column: give one image id per line, or a CSV with an "
            f"'{_ID_COLUMN}' column"
        )
    column = names.index(_ID_COLUMN)
    ids = []
    for row in rows:
        if len(row) > column and (cell := row[column].strip()):
            # imgframe's own CSV guards cells against spreadsheets with one leading "'"
            # (imgframe.io.neutralise_formulas): undo it, as read_csv does.
            guarded = cell == "'" or cell[1:].startswith((*FORMULA_STARTS, "'"))
            if cell.startswith("'") and guarded:
                cell = cell[1:]
            ids.append(cell)
    return ids


def _ids_from_args(args: argparse.Namespace) -> list[str] | None:
    """The ids asked for, or None with ``--all`` (list every image the cloud shows)."""
    ids = list(args.ids)
    if args.ids_file == "-" or (not args.ids_file and not ids and not args.all and _piped()):
        args.ids_from_stdin = True
        try:
            ids += _read_ids(sys.stdin, "stdin")
        except UnicodeDecodeError:
            raise ImgframeError("the ids on stdin are not UTF-8 text") from None
    elif args.ids_file:
        try:
            with open(args.ids_file, encoding="utf-8-sig") as handle:
                ids += _read_ids(handle, f"ids file {args.ids_file!r}")
        except OSError as exc:
            raise ImgframeError(f"cannot read ids file {args.ids_file!r}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ImgframeError(f"ids file {args.ids_file!r} is not UTF-8 text") from None
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


def _piped() -> bool:
    """stdin is a pipe or a file (not a terminal a user would have to type ids into)."""
    try:
        return not sys.stdin.isatty()
    except (AttributeError, ValueError):  # closed or replaced stdin
        return False


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
    # NA: never sent (invalid id), so failed; a 200 with an error lied, so failed too.
    ok = (df["http_status"].eq(200) & df["error"].isna()).fillna(False)
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


def _check_output(path: str) -> Path:
    """``-o`` checked before anything is sent: a known extension, a writable folder."""
    if Path(path).suffix.lower() not in FORMATS:
        raise ConfigError(f"cannot write {path!r}: use a .csv, .parquet or .json file name")
    return check_writable(path)


def _check_endpoint(endpoint: str) -> None:
    """Refuse an endpoint that still names an API version or the images collection once
    imgframe has normalized it: every id would be asked at a path that does not exist
    and answer 404, a run that looks complete."""
    from imgframe.glance import normalize_endpoint  # its one-line refusals come first

    path = urlsplit(normalize_endpoint(endpoint)).path.rstrip("/")
    found = _VERSIONED_PATH.search(path)
    if found is None:
        return
    tail = found.group(1)
    hint = " (a Keystone URL? use --cloud with a clouds.yaml)" if tail.lower() == "v3" else ""
    raise ConfigError(
        f"--endpoint {endpoint!r} ends with /{tail}{hint}: give the image service's base "
        "URL (e.g. https://glance.example.com:9292); imgframe adds /v1/images/{id} itself "
        "(--api v2 for Glance v2)"
    )


def _token_flag(arg: str) -> bool:
    """``arg`` is ``--token`` or an abbreviation argparse accepts (``--tok``)."""
    name = arg.split("=", 1)[0]
    return len(name) > len("--t") and "--token".startswith(name)


def resume_command(argv: Sequence[str]) -> str:
    """The command line that runs ``imgframe argv`` again, shell-quoted, without the
    value of ``--token`` (the token is read from ``$OS_AUTH_TOKEN`` instead).

    Examples
    --------
    >>> resume_command(["fetch", "--endpoint", "https://g.example", "--token", "s3cr3t",
    ...                 "-o", "my images.csv"])
    "imgframe fetch --endpoint https://g.example -o 'my images.csv'"
    >>> resume_command(["fetch", "--token=s3cr3t", "a"])
    'imgframe fetch a'
    """
    kept: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--":
            kept += [arg, *args]
            break
        if _token_flag(arg):
            if "=" not in arg:
                next(args, None)  # the value
            continue
        kept.append(arg)
    return shlex.join(["imgframe", *kept])


class _Interrupts:
    """SIGTERM takes the path of SIGINT, remembering which one came.

    ``asyncio.Runner`` (which :func:`imgframe.runner.run_sync` uses) replaces Python's
    default SIGINT handler while a fetch runs: the first SIGINT cancels the fetch's main
    task (its workers stop sending, a checkpoint is flushed) and ``run`` then raises
    KeyboardInterrupt. SIGTERM (cron, ``timeout``, systemd) would otherwise kill the
    process on the spot; calling whatever SIGINT handler is in effect gives it the same
    orderly stop, inside a fetch and outside it (Python's default handler raises
    KeyboardInterrupt).
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._installed = False
        self._previous: Any = signal.SIG_DFL

    def __enter__(self) -> _Interrupts:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        except ValueError:  # not the main thread (main() called from a thread): no handler
            return self
        self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            # None: the handler was not set from Python; the default is what it was then.
            previous = signal.SIG_DFL if self._previous is None else self._previous
            signal.signal(signal.SIGTERM, previous)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is None:
            self.signal = signal.SIGTERM
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:  # SIG_IGN or SIG_DFL set by someone else: stop anyway
            raise KeyboardInterrupt

    @property
    def status(self) -> int:
        return EXIT_SIGTERM if self.signal == signal.SIGTERM else EXIT_SIGINT


def _check_where(args: argparse.Namespace) -> None:
    """The one-line errors of a command's --endpoint/--token/--cloud/--region choice
    (fetch, servers, volumes)."""
    if args.cloud and args.endpoint:
        raise ImgframeError("give --endpoint (with a token) or --cloud (clouds.yaml), not both")
    if getattr(args, "aksk", False) and (args.token or args.cloud):
        raise ImgframeError("--aksk signs requests to --endpoint instead of a token or --cloud")
    if args.token and args.cloud:
        raise ImgframeError("--token goes with --endpoint; --cloud logs in with clouds.yaml")
    if args.region and not args.cloud:
        raise ImgframeError("--region chooses regions of --cloud clouds; add --cloud NAME")
    if not args.cloud and not args.endpoint:
        raise ImgframeError("say where: --endpoint URL (token: $OS_AUTH_TOKEN) or --cloud NAME")


def _fetch(args: argparse.Namespace) -> int:
    _check_where(args)
    if args.endpoint:
        _check_endpoint(args.endpoint)
    if args.output:
        _check_output(args.output)
    if args.history:
        from imgframe.history import History

        History(args.history).check_writable()
    ids = _ids_from_args(args)
    if args.include_deleted and ids is not None:
        raise ImgframeError(
            "--include-deleted goes with --all (named ids are asked, deleted or not)"
        )
    if args.head and ids is not None:
        raise ImgframeError("--head goes with --all (named ids are always asked one by one)")
    if args.token:
        _say(
            "warning: a token given with --token is visible to every user of this machine "
            "(ps, /proc) and stays in your shell history; put it in OS_AUTH_TOKEN instead"
        )
    options = fetch_options(args)
    run = _Run(args, checkpoint_folder(args, ids))
    with _Interrupts() as interrupts:
        try:
            status = _fetch_and_write(run, ids, options)
        except KeyboardInterrupt:
            _interrupted(run, interrupts)
            return interrupts.status
        except CheckpointError as exc:
            if run.checkpoint is not None and run.default_checkpoint:
                raise CheckpointError(
                    f"{exc} (imgframe keeps this checkpoint by default: --checkpoint DIR "
                    "picks another folder, --no-checkpoint keeps none)"
                ) from None
            raise
        except ImgframeError:  # main() prints it as the last line
            rows = run.tidy()
            if rows:
                _say(f"{rows:,} rows kept in checkpoint {run.checkpoint}: {_AGAIN}")
            raise
    if status == EXIT_OK:
        run.remove()
    return status


_AGAIN = "the same command again asks only the ids not read"


class _Run:
    """One ``imgframe fetch``: its arguments and its checkpoint folder (or None)."""

    def __init__(self, args: argparse.Namespace, checkpoint: Path | None) -> None:
        self.args = args
        self.checkpoint = checkpoint
        self.default_checkpoint = checkpoint is not None and not args.checkpoint
        if checkpoint is not None and self.default_checkpoint:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)  # the user cache folder

    def kept_rows(self) -> int | None:
        """Rows stored in the checkpoint; None without a checkpoint (or a readable one)."""
        from imgframe.checkpoint import read_manifest

        if self.checkpoint is None or not self.checkpoint.exists():
            return None
        try:
            return read_manifest(self.checkpoint).rows
        except CheckpointError:
            return None

    def remove(self) -> None:
        from imgframe.checkpoint import remove_checkpoint

        if self.checkpoint is not None:
            remove_checkpoint(self.checkpoint)

    def tidy(self) -> int | None:
        """After a run that did not complete: a checkpoint with no rows holds nothing to
        resume from and is removed; one with rows is kept. Returns the rows kept."""
        rows = self.kept_rows()
        if rows == 0:
            self.remove()
            return None
        return rows


def checkpoint_folder(args: argparse.Namespace, ids: list[str] | None) -> Path | None:
    """Where ``imgframe fetch`` keeps its checkpoint: ``--checkpoint DIR``; else next to
    ``-o`` (``OUT.checkpoint``); else in the user cache, in a folder named by a digest
    of the request (so the same command finds it again); None with ``--no-checkpoint``.

    Examples
    --------
    >>> args = build_parser().parse_args(["fetch", "--endpoint", "http://h", "-o", "f.csv", "x"])
    >>> checkpoint_folder(args, ["x"])
    PosixPath('f.csv.checkpoint')
    """
    if args.no_checkpoint:
        return None
    if args.checkpoint:
        return Path(args.checkpoint)
    if args.output:
        output = Path(args.output)
        return output.with_name(output.name + CHECKPOINT_SUFFIX)
    return _cache_folder() / "checkpoints" / _request_digest(args, ids)


#: The default checkpoint of ``-o OUT`` is the folder ``OUT`` + this, next to it.
CHECKPOINT_SUFFIX = ".checkpoint"


def _cache_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "imgframe"


def _request_digest(args: argparse.Namespace, ids: list[str] | None) -> str:
    """A name for what was asked (where, which api, which ids), not how (concurrency...)."""
    import hashlib

    from imgframe.api import normalize_ids
    from imgframe.checkpoint import ids_digest
    from imgframe.glance import normalize_endpoint

    request = {
        "endpoint": normalize_endpoint(args.endpoint) if args.endpoint else None,
        "cloud": args.cloud,
        "region": args.region,
        "api": args.api,
        "ids": "listing" if ids is None else ids_digest(normalize_ids(ids)),
        "include_deleted": args.include_deleted,
    }
    if args.members:  # only when asked: older default checkpoints keep their names
        request["members"] = True
    text = json.dumps(request, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def fetch_options(args: argparse.Namespace) -> FetchOptions:
    """The options of ``imgframe fetch``, as ``fetch_images`` makes them from the same
    values (``--timeout 5`` is ``timeout=5``, ``--retries 3`` is ``retries=3``).

    Examples
    --------
    >>> args = build_parser().parse_args(["fetch", "--endpoint", "http://h", "--timeout", "5"])
    >>> fetch_options(args).timeout
    Timeout(total=5.0, connect=5.0)
    """
    return FetchOptions.build(
        concurrency=args.concurrency,
        timeout=args.timeout,
        retries=args.retries,
        progress=args.progress,
        verify=args.ca_bundle or not args.insecure,
        max_rps=args.max_rps,
        api=args.api,
        include_deleted=args.include_deleted,
        verify_with_head=args.head,
        members=args.members,
    )


def _fetch_and_write(run: _Run, ids: list[str] | None, options: FetchOptions) -> int:
    args = run.args
    started = time.perf_counter()
    options = dataclasses.replace(options, checkpoint=run.checkpoint)
    if args.cloud:
        from imgframe.fleet import fleet_with_options

        errors: Literal["raise", "warn"] = "warn" if args.keep_going else "raise"
        df = run_sync(
            fleet_with_options(args.cloud, args.region or None, options, ids=ids, errors=errors)
        )
    else:
        token: TokenArg = args.token or os.environ.get("OS_AUTH_TOKEN")
        if args.aksk:
            from imgframe.auth import HuaweiAkSk

            token = HuaweiAkSk.from_env()
        df = run_sync(fetch_with_options(ids, options, endpoint=args.endpoint, token=token))
    seconds = time.perf_counter() - started
    outcome = run_outcome(df)
    failed_targets = [str(t) for t in df.attrs.get("failed_targets", ())]
    if outcome.failed_as_a_whole or (failed_targets and df.empty):
        run.tidy()
        _say(f"error: {_failure_line(outcome, failed_targets)}; {_nothing_written(args)}")
        return EXIT_FAILED
    if args.output:
        path = write(df, args.output)
        _say(f"wrote {len(df):,} rows to {path}" + ("" if outcome.complete else " (incomplete)"))
    else:
        try:
            to_csv(df, sys.stdout)
            sys.stdout.flush()  # a closed pipe shows here, not at exit
        except BrokenPipeError:  # `| head`: main() ends quietly with 141
            if outcome.complete and not failed_targets:
                run.remove()  # nothing to resume: a later run must ask the cloud again
            raise
    if args.history:
        _add_to_history(df, args.history)
    print(summarize(df, seconds), file=sys.stderr)
    if outcome.complete and not failed_targets:
        return EXIT_OK
    rows = run.tidy()
    if rows:
        _say(f"{rows:,} rows kept in checkpoint {run.checkpoint}: {_AGAIN}")
    if failed_targets:
        names = ", ".join(t.split(": ", 1)[0] for t in failed_targets)
        _say(f"incomplete: {len(failed_targets)} target(s) failed: {names}")
    if not outcome.complete:
        _say(outcome.summary())
    return EXIT_INCOMPLETE


def _add_to_history(df: pd.DataFrame, folder: str) -> None:
    """``--history DIR``: the run becomes one snapshot of DIR, after the table is
    written (a run that failed as a whole never gets here; an incomplete one is added
    with complete=false). A snapshot that cannot be added is an error (exit 2)."""
    from imgframe.history import History

    parts = History(folder).add(df)
    stamp = parts[0].parent.name.partition("=")[2]
    _say(f"added snapshot {stamp} ({len(df):,} rows, {len(parts)} part(s)) to history {folder}")


def _failure_line(outcome: Outcome, failed_targets: list[str]) -> str:
    """Why a run read nothing: its most telling reason (a rejected token, a refused
    connection) rather than the rows that follow from it ("not requested: ...")."""
    if failed_targets and not outcome.reasons:
        return "every target failed: " + "; ".join(failed_targets)
    reasons = list(outcome.reasons)
    cause = next((r for r in reasons if not r.startswith(("not requested", "not fetched"))), None)
    cause = cause or reasons[0]
    return f"no image could be read ({outcome.unread:,} of {outcome.rows:,} ids): {cause}"


def _nothing_written(args: argparse.Namespace) -> str:
    if args.output:
        return f"nothing written to {args.output}"
    return "no table written"


def _interrupted(run: _Run, interrupts: _Interrupts) -> None:
    name = "SIGTERM" if interrupts.signal == signal.SIGTERM else "SIGINT"
    _say(f"interrupted ({name}): stopped sending; {_nothing_written(run.args)}")
    if run.checkpoint is None:
        _say("nothing was kept (--no-checkpoint): the same command starts over")
        return
    rows = run.tidy()
    kept = f"{rows:,} rows kept in checkpoint {run.checkpoint}" if rows else "no rows kept yet"
    notes = []
    if any(_token_flag(arg) for arg in run.args.argv):
        notes.append("with the token in $OS_AUTH_TOKEN (--token is not repeated here)")
    if run.args.ids_from_stdin:
        notes.append("with the same ids on stdin")
    how = f" ({'; '.join(notes)})" if notes else ""
    _say(f"{kept}; to resume, run{how}:")
    print(f"  {resume_command(run.args.argv)}", file=sys.stderr, flush=True)


def _say(line: str) -> None:
    print(f"imgframe: {line}", file=sys.stderr, flush=True)


def _emulator(args: argparse.Namespace) -> int:
    from imgframe.testing import make_fleet, run_forever
    from imgframe.testing.emulator import ADMIN_TOKEN, Faults

    if args.regions:
        return _emulated_cloud(args)
    if args.clouds_yaml or args.force:
        raise ImgframeError(
            "--clouds-yaml and --force are for a cloud of --regions; add --regions A,B"
        )
    fleet = make_fleet(args.images, seed=args.seed)

    def ready(url: str) -> None:
        print(f"Glance v1 emulator: {len(fleet):,} images at {url}", flush=True)
        print(f"  token: {ADMIN_TOKEN} (admin)   Ctrl-C stops it", flush=True)
        try_it = f"OS_AUTH_TOKEN={ADMIN_TOKEN} imgframe fetch --endpoint {url} <id>"
        print(f"  try: {try_it}", flush=True)

    run_forever(fleet, port=args.port, faults=Faults(latency=args.latency), on_ready=ready)
    return 0


def _emulated_cloud(args: argparse.Namespace) -> int:
    """A cloud of several regions: one emulator per region behind one small Keystone,
    and a clouds.yaml for it, until Ctrl-C or SIGTERM."""
    import signal
    import threading

    from imgframe.testing import make_fleet
    from imgframe.testing.compute import ComputeEmulator, make_usage
    from imgframe.testing.emulator import Faults, GlanceEmulator
    from imgframe.testing.keystone import FakeKeystone

    names = [name.strip() for name in args.regions.split(",") if name.strip()]
    if len(set(names)) != len(names):
        raise ImgframeError(f"--regions names a region twice: {args.regions!r}")
    clouds_yaml = Path(args.clouds_yaml or "clouds.yaml")
    if clouds_yaml.exists() and not args.force:
        # It may well be the user's real clouds.yaml, with real passwords in it.
        raise ConfigError(
            f"{clouds_yaml} exists: not replacing it (--clouds-yaml FILE writes elsewhere, "
            "--force replaces it)"
        )
    check_writable(clouds_yaml)
    emulators: dict[str, GlanceEmulator] = {}
    computes: dict[str, ComputeEmulator] = {}
    stop = threading.Event()
    previous_sigterm = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        for n, name in enumerate(names):
            fleet = make_fleet(args.images, seed=args.seed + n)
            emulators[name] = GlanceEmulator(fleet, faults=Faults(latency=args.latency)).start()
            # Each region's Nova and Cinder, over its own images: the catalog's compute and
            # volumev3 endpoints, for 'imgframe servers/volumes --cloud'.
            computes[name] = ComputeEmulator(make_usage(fleet, seed=args.seed + n)).start()
        with FakeKeystone(emulators, compute=computes) as keystone:
            config = {"clouds": {args.cloud_name: {"auth": keystone.auth(), "regions": names}}}
            with atomic_path(clouds_yaml) as tmp:
                tmp.write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
            print(f"Keystone v3 at {keystone.url}/v3 (password login, test credentials)")
            for name, emulator in emulators.items():
                usage = computes[name].usage
                print(
                    f"  region {name}: {len(emulator.fleet):,} images at {emulator.url}; "
                    f"{len(usage.servers):,} servers, {len(usage.volumes):,} volumes at "
                    f"{computes[name].url}"
                )
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
        for compute in computes.values():
            compute.stop()
        # None: the old handler was not set from Python; the default is what it was then.
        signal.signal(
            signal.SIGTERM, signal.SIG_DFL if previous_sigterm is None else previous_sigterm
        )
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


#: ``imgframe audit -o`` extensions and the format each one means.
AUDIT_FORMATS = {
    ".txt": "table",
    ".csv": "csv",
    ".json": "json",
    ".parquet": "parquet",
    ".html": "html",
}


def _write_findings(findings: pd.DataFrame, fmt: str, output: str | None) -> None:
    """Findings as CSV, JSON or Parquet, to ``output`` (written whole or not at all) or
    stdout."""
    from imgframe.io import to_csv, to_parquet

    if fmt == "csv":  # spreadsheet-safe: tenant-chosen names must not run as formulas
        to_csv(findings, output if output else sys.stdout)
        return
    if fmt == "parquet":
        if not output:  # _audit_format refuses this; binary never goes to a terminal
            raise ConfigError("--format parquet needs -o FILE.parquet")
        to_parquet(findings, output)
        return
    records = json.loads(findings.to_json(orient="records", date_format="iso"))
    _write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", output)


def _write_text(text: str, output: str | None) -> None:
    if output:
        with atomic_path(output) as tmp:
            tmp.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


def _read_trusted(value: str) -> list[str]:
    """``--trusted``: ``@FILE`` (project ids one per line, as an ids file) or a comma list.

    Examples
    --------
    >>> _read_trusted("p1, p2,,")
    ['p1', 'p2']
    """
    if not value.startswith("@"):
        return [item.strip() for item in value.split(",") if item.strip()]
    path = value[1:]
    try:
        with open(path, encoding="utf-8-sig") as handle:
            return _read_ids(handle, f"trusted projects {path!r}")
    except OSError as exc:
        raise ImgframeError(f"cannot read trusted projects {path!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ImgframeError(f"trusted projects {path!r} is not UTF-8 text") from None


FAIL_ON = ("high", "medium", "low", "info")


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` without its attrs (a shallow copy)."""
    out = frame.copy(deep=False)
    out.attrs = {}
    return out


def _audit_format(fmt: str | None, output: str | None) -> str:
    """The findings format: ``--format``, else ``-o``'s extension, else a text table.
    An ``-o`` whose extension is not a findings format, or that contradicts ``--format``,
    is refused: a file never holds another format than its name says."""
    if output is None:
        if fmt == "parquet":
            raise ConfigError("--format parquet needs -o FILE.parquet (Parquet is not text)")
        return fmt or "table"
    suffix = Path(output).suffix.lower()
    named = AUDIT_FORMATS.get(suffix)
    if named is None:
        raise ConfigError(
            f"cannot write {output!r}: use a .csv, .json, .parquet, .html or .txt (text "
            "table) file name"
        )
    if fmt is not None and fmt != named:
        raise ConfigError(f"--format {fmt} but -o {output!r} names a {named} file")
    check_writable(output)
    return named


def _audit(args: argparse.Namespace) -> int:
    from imgframe.allow import AllowList
    from imgframe.audits import audit
    from imgframe.io import read, report

    fmt = _audit_format(args.format, args.output)
    df = read(args.input)
    if "http_status" in df.columns and "error" in df.columns:
        outcome = run_outcome(df)
        if not outcome.complete:  # e.g. a table written by a fetch that exited 4
            _say(f"warning: {args.input} is {outcome.summary()}; those ids are fetch_failed")
    allow = AllowList.read(args.allow) if args.allow else None
    trusted = _read_trusted(args.trusted) if args.trusted is not None else None
    rules = [r.strip() for r in args.rules.split(",") if r.strip()] if args.rules else None
    profile = [p.strip() for p in args.profile.split(",") if p.strip()] if args.profile else None
    # An images table is audited as of its own fetch; a findings file is taken as it is
    # (audit tells them apart by their columns).
    baseline = read(args.baseline) if args.baseline else None
    usage = None
    if args.volumes and not args.servers:
        raise ImgframeError("--volumes goes with --servers (the servers are what uses images)")
    if args.servers:
        servers = read_usage_table(args.servers, "servers")
        volumes = read_usage_table(args.volumes, "volumes") if args.volumes else None
        usage = (servers, volumes)
    now = _audit_clock(args.now) if args.now else None
    try:
        findings = audit(
            df,
            rules=rules,
            allow=allow,
            usage=usage,
            now=now,
            profile=profile,
            baseline=baseline,
            trusted=trusted,
        )
    except ValueError as exc:  # an unknown rule name: the message lists the known ones
        raise ImgframeError(str(exc)) from None
    counts = findings.attrs.get("counts", {})
    if allow is not None:
        _say(f"allow-list {args.allow}: {counts.get('allowed', 0):,} findings allowed")
    if baseline is not None:
        _say(
            f"baseline {args.baseline}: {counts.get('new', 0):,} new findings, "
            f"{counts.get('unchanged', 0):,} unchanged, {counts.get('resolved', 0):,} resolved"
        )
    if fmt == "html":
        # This command writes only the page: say where the rows past the first 50 are.
        rest = f"the full findings (imgframe audit {args.input} -o findings.csv)"
        path = report(df, args.output or sys.stdout, findings=findings, findings_file=rest)
        if path is not None:
            _say(f"wrote {path}")
    elif fmt == "table":
        _write_text(findings_table(findings) + "\n", args.output)
    else:
        # The attrs (allowed and resolved findings are frames) have no place in the file
        # and pyarrow would warn that it cannot keep them.
        _write_findings(_plain(findings), fmt, args.output)
    if args.fail_on:
        worst = FAIL_ON[: FAIL_ON.index(args.fail_on) + 1]
        if findings["severity"].isin(worst).any():
            return EXIT_FINDINGS
    return EXIT_OK


def _audit_clock(text: str) -> pd.Timestamp:
    """``--now WHEN`` as a UTC time (naive means UTC); a one-line error otherwise.

    Examples
    --------
    >>> _audit_clock("2026-12-01")
    Timestamp('2026-12-01 00:00:00+0000', tz='UTC')
    """
    try:
        stamp = pd.Timestamp(text.strip())
    except (ValueError, TypeError, OverflowError):
        stamp = pd.NaT
    if pd.isna(stamp):
        raise ConfigError(
            f"--now {text!r} is not a time: use e.g. 2026-12-01 or 2026-12-01T08:00:00Z"
        )
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def changes_table(changes: pd.DataFrame, limit: int = 20) -> str:
    """Changes as text: the counts per change, then the first ``limit`` changes.

    Examples
    --------
    >>> import pandas as pd
    >>> from imgframe.changes import CHANGE_DTYPE
    >>> c = pd.DataFrame({"image_id": ["a"], "change": pd.Categorical(["owner_changed"],
    ...                   dtype=CHANGE_DTYPE), "name": ["n"], "owner": ["p2"],
    ...                   "detail": ["owner p1 -> p2"]})
    >>> print(changes_table(c))
    1 changes: owner_changed 1
    <BLANKLINE>
    change         image_id  owner  name  detail
    owner_changed  a         p2     n     owner p1 -> p2
    """
    from imgframe.changes import summary

    if changes.empty:
        return "no changes"
    where = [c for c in ("cloud", "region") if c in changes.columns]
    shown = changes.head(limit)[["change", *where, "image_id", "owner", "name", "detail"]]
    lines = [summary(changes), "", shown.to_string(index=False, justify="left")]
    if len(changes) > limit:
        lines.append(f"... and {len(changes) - limit:,} more (use -o FILE)")
    return "\n".join(lines)


def _changes_named(text: str) -> list[str]:
    """``--fail-on`` A,B: names of :data:`imgframe.changes.CHANGES`, checked."""
    from imgframe.changes import CHANGES

    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in CHANGES]
    if unknown or not names:
        raise ConfigError(
            f"--fail-on: unknown change {', '.join(unknown) or repr(text)}; "
            f"choose from {', '.join(CHANGES)}"
        )
    return names


def _diff(args: argparse.Namespace) -> int:
    from imgframe.changes import diff, summary
    from imgframe.io import read

    fail_on = _changes_named(args.fail_on) if args.fail_on is not None else []
    if args.output:
        _check_output(args.output)
    old, new = read(args.old), read(args.new)
    for path, df in ((args.old, old), (args.new, new)):
        if "http_status" in df.columns and "error" in df.columns:
            outcome = run_outcome(df)
            if not outcome.complete:  # a table written by a fetch that exited 4
                _say(f"warning: {path} is {outcome.summary()}; those images are 'unknown'")
    changes = diff(old, new)
    if args.output:
        path = write(changes, args.output)
        _write_text(summary(changes) + "\n", None)
        _say(f"wrote {len(changes):,} changes to {path}")
    else:
        _write_text(changes_table(changes) + "\n", None)
    if fail_on and changes["change"].isin(fail_on).any():
        return EXIT_FINDINGS
    return EXIT_OK


#: What ``--servers`` / ``--volumes`` files must hold for image_usage (``id`` included).
USAGE_TABLE_COLUMNS = {
    "servers": ("id", "status", "image_id", "project_id"),
    "volumes": ("id", "image_id", "project_id", "attached_servers"),
}

#: Exit statuses of ``imgframe servers`` and ``imgframe volumes``.
USAGE_EXIT_HELP = """\
exit status:
  0    complete: every server (volume) of every project was listed and written
  1    internal error, a bug (IMGFRAME_DEBUG=1 shows the traceback; please report it)
  2    usage or configuration error (a bad option, an -o that is not writable or not
       .csv/.parquet/.json)
  4    incomplete: the listing saw only the token's own project (Nova refused
       all_tenants, or Cinder did not show the volumes' projects); nothing is written,
       since 'imgframe audit --servers/--volumes' would take the file as complete and
       call images unused that other projects use
  5    the listing failed (endpoint unreachable, token rejected, a page that could not
       be read after the retries): one line says why and nothing is written to -o
"""


def _usage_listing(args: argparse.Namespace) -> int:
    """``imgframe servers`` / ``imgframe volumes``: one listing, written whole or not at all."""
    from imgframe.usage import fetch_servers, fetch_volumes
    from imgframe.usage_frame import is_complete

    kind = args.kind
    _check_where(args)
    if args.keep_going and not args.cloud:
        raise ImgframeError("--keep-going is for several clouds/regions (--cloud)")
    if args.output:
        _check_output(args.output)
    if args.token:
        _say(
            "warning: a token given with --token is visible to every user of this machine "
            "(ps, /proc) and stays in your shell history; put it in OS_AUTH_TOKEN instead"
        )
    token: TokenArg = None if args.cloud else args.token or os.environ.get("OS_AUTH_TOKEN")
    listing = fetch_servers if kind == "servers" else fetch_volumes
    started = time.perf_counter()
    with warnings.catch_warnings():
        # The incompleteness is said once below, as the run's last line.
        warnings.simplefilter("ignore", ImgframeWarning)
        # --cloud is a fleet, as for 'imgframe fetch': the table has cloud, region and key,
        # like the images table of 'imgframe fetch --cloud', so audit joins them per region.
        df = listing(
            args.endpoint, token, cloud=args.cloud, region=args.region or None,
            timeout=args.timeout, retries=args.retries, max_rps=args.max_rps,
            verify=args.ca_bundle or not args.insecure,
            errors="warn" if args.keep_going else "raise",
        )  # fmt: skip
    seconds = time.perf_counter() - started
    complete, why = is_complete(df)
    if not complete:
        _say(
            f"incomplete: {len(df):,} {kind} listed, but {why}; {_nothing_written(args)} "
            "(an audit would take the file as every project's and flag used images unused)"
        )
        return EXIT_INCOMPLETE
    if args.output:
        path = write(df, args.output)
        _say(f"wrote {len(df):,} {kind} to {path}")
    else:
        to_csv(df, sys.stdout)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
    _say(f"{len(df):,} {kind} in {seconds:.2f} s")
    return EXIT_OK


def read_usage_table(path: str, kind: str) -> pd.DataFrame:
    """A table ``imgframe servers`` or ``imgframe volumes`` wrote (.csv, .parquet, .json),
    indexed by ``id``, with the columns :func:`imgframe.image_usage` reads as text.

    Examples
    --------
    >>> read_usage_table("servers.xlsx", "servers")
    Traceback (most recent call last):
    ...
    imgframe.errors.ConfigError: cannot read servers 'servers.xlsx': use .csv, .parquet or .json
    """
    suffix = Path(path).suffix.lower()
    if suffix not in (".csv", ".parquet", ".json"):
        raise ConfigError(f"cannot read {kind} {path!r}: use .csv, .parquet or .json")
    try:
        if suffix == ".csv":
            df = pd.read_csv(path, dtype="string", keep_default_na=False, na_values=[""])
        elif suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.read_json(path, orient="records", dtype=False)
    except FileNotFoundError:
        raise ConfigError(f"cannot read {kind} {path!r}: no such file") from None
    except (OSError, ValueError) as exc:  # pandas' parse errors are ValueErrors
        raise ConfigError(f"cannot read {kind} {path!r}: {_first_line(exc)}") from None
    if df.index.name in ("id", "key") and df.index.name not in df.columns:
        df = df.reset_index()
    missing = [c for c in USAGE_TABLE_COLUMNS[kind] if c not in df.columns]
    if missing:
        raise ConfigError(
            f"{path!r} is not a {kind} table (no {', '.join(missing)} column): write one with "
            f"'imgframe {kind} -o FILE'"
        )
    # A fleet table ('imgframe servers --cloud ...'): indexed by key, cloud and region kept.
    fleet = all(c in df.columns for c in ("key", "cloud", "region"))
    columns = (*USAGE_TABLE_COLUMNS[kind], *(("key", "cloud", "region") if fleet else ()))
    df = df.astype({c: "string" for c in columns}).set_index("key" if fleet else "id")
    return df


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@dataclasses.dataclass(frozen=True)
class _DemoWeek:
    """What the demo changed between the two snapshots (image ids per change)."""

    published: list[str]
    unprotected: list[str]
    given_away: list[str]
    unsigned: list[str]
    deleted: list[str]
    added: list[str]

    def sentence(self) -> str:
        return (
            f"{len(self.published)} published, {len(self.unprotected)} unprotected, "
            f"{len(self.given_away)} given to another project, {len(self.unsigned)} lost "
            f"their signature, {len(self.deleted)} deleted, {len(self.added)} uploaded"
        )


def _demo(args: argparse.Namespace) -> int:
    """``imgframe demo`` (``make demo``): a week of a seeded cloud, fetched, compared and
    audited, all on 127.0.0.1. "Last week's" snapshot is fetched with image members, the
    emulator changes the cloud as a week does (images published, unprotected, given away,
    their signature dropped, deleted, uploaded), "this week's" is fetched; both go into a
    History folder, and the changes, the findings (new ones since last week counted), the
    usage tables and one HTML report are written. The snapshots are stamped on the fleet's
    own clock (FLEET_NOW and a week before), so the planted stale and stuck images are
    found whatever day it runs, and ``imgframe audit OUT/images.csv`` (the provenance
    sidecar carries the fetch time) gives the demo's findings."""
    images, output_dir = args.images, args.output_dir
    concurrency, progress = args.concurrency, args.progress
    import random

    from imgframe.audits import audit
    from imgframe.changes import diff
    from imgframe.history import History
    from imgframe.io import report
    from imgframe.provenance import ATTR
    from imgframe.testing import make_fleet
    from imgframe.testing.emulator import ADMIN_TOKEN, Faults, GlanceEmulator
    from imgframe.testing.fleet import FLEET_NOW

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    fleet = make_fleet(images, seed=DEMO_SEED)
    rng = random.Random(DEMO_SEED)
    ids = [image.id for image in fleet.images]
    # Some ids the cloud does not know, as in any real list of ids.
    unknown = [f"{rng.getrandbits(128):032x}" for _ in range(max(1, len(ids) // 50))]
    ids += unknown
    rng.shuffle(ids)
    faults = Faults(
        transient_rate=0.05,
        retry_after=0.05,
        malformed_rate=0.002,
        odd_values=True,  # out-of-range dates, signs, 19-digit and Unicode-digit numbers
        wrong_id_rate=0.001,  # answers that lie: another image's id
        no_metadata_rate=0.001,  # a 200 without image metadata
        latency=0.0,
        seed=DEMO_SEED,
    )
    print(
        f"demo: Glance v1 emulator with {len(fleet):,} images, {len(unknown):,} unknown ids, "
        "5% transient faults (429/503/500/dropped connections), 0.2% malformed headers, "
        "0.2% answers that lie (another image's id, no metadata)"
    )
    now = pd.Timestamp(FLEET_NOW, tz="UTC")
    # A fresh history each run: the demo's two snapshots are stamped on the fleet's
    # clock, so a second run's would collide with the first's.
    shutil.rmtree(out / "history", ignore_errors=True)
    history = History(out / "history")
    with GlanceEmulator(fleet, faults=faults) as emulator:

        def snapshot(when: pd.Timestamp, label: str, asked: list[str]) -> pd.DataFrame:
            started = time.perf_counter()
            df = fetch_images(
                asked,
                endpoint=emulator.url,
                token=ADMIN_TOKEN,
                concurrency=concurrency,
                progress=progress,
                members=True,
            )
            seconds = time.perf_counter() - started
            # Stamped on the fleet's clock (see the module docstring).
            stamped = df.attrs[ATTR]
            stamped["fetched_at"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
            done = when + pd.Timedelta(seconds=round(seconds))
            stamped["finished_at"] = done.strftime("%Y-%m-%dT%H:%M:%SZ")
            history.add(df)
            print(f"{label}: {summarize(df, seconds)}")
            return df

        sent = len(emulator.request_log)
        before = snapshot(now - pd.Timedelta(days=7), "last week", ids)
        week = _change_the_cloud(emulator, fleet, rng, now)
        print(f"during the week: {week.sentence()}")
        after = snapshot(now, "this week", [*ids, *week.added])
        sent = len(emulator.request_log) - sent
    print(
        f"requests sent for both snapshots (HEAD and members, with retries): {sent:,} "
        "(client and emulator share one process: benchmarks/ measure throughput)"
    )

    changes = diff(before, after)
    from imgframe.changes import summary

    print(f"what changed: {summary(changes)}")
    servers, volumes, used, planted = _demo_usage(fleet, after)
    trusted = list(fleet.projects)
    findings = audit(after, usage=used, trusted=trusted)
    new = audit(after, usage=used, trusted=trusted, baseline=before)
    counts = new.attrs["counts"]
    print()
    print(findings_table(findings, limit=10))
    print(
        f"since last week: {counts['new']:,} new findings, {counts['resolved']:,} resolved, "
        f"{counts['unchanged']:,} unchanged (imgframe audit NEW --baseline OLD)"
    )
    print()
    _print_usage_findings(after, findings, used, planted, set(week.added))
    shared = findings[findings["rule"] == "shared_outside"]
    print(
        f"sharing: {len(shared):,} images shared with projects outside the cloud's own "
        f"{len(trusted)} (planted {len(fleet.planted.shared_outside):,}; any member status "
        "counts: a rejected member can still boot the image)"
    )
    print()
    images_csv = to_csv(after, out / "images.csv")
    to_csv(findings.assign(), out / "findings.csv")
    to_csv(changes, out / "changes.csv")
    to_csv(servers, out / "servers.csv")
    to_csv(volumes, out / "volumes.csv")
    (out / "trusted.txt").write_text("".join(f"{p}\n" for p in trusted), encoding="utf-8")
    html = report(after, out / "report.html", findings=findings, diff=changes)
    print(f"wrote {images_csv} ({len(after):,} rows), findings.csv ({len(findings):,} rows),")
    print(
        f"  changes.csv ({len(changes):,} rows), servers.csv ({len(servers):,} rows), "
        f"volumes.csv ({len(volumes):,} rows), trusted.txt, and {out / 'history'} "
        f"({len(history.snapshots())} snapshots)"
    )
    print(f"wrote {html} (open it in a browser)")
    print(
        f"again from the files: imgframe audit {images_csv} --servers {out / 'servers.csv'} "
        f"--volumes {out / 'volumes.csv'} --trusted @{out / 'trusted.txt'}"
    )
    return 0


def _change_the_cloud(emulator: Any, fleet: Any, rng: Any, now: pd.Timestamp) -> _DemoWeek:
    """A week of changes on the running emulator, drawn from the seeded fleet."""
    from imgframe.audits import SIGNATURE_KEYS

    live = [i for i in fleet.images if i.status == "active" and not i.deleted]
    private = [i.id for i in live if not i.is_public]
    exposed = [i.id for i in live if i.is_public and i.protected]
    signed = [i.id for i in live if all(i.properties.get(k) for k in SIGNATURE_KEYS)]
    loose = [i.id for i in live if not i.protected]
    picked: set[str] = set()

    def take(pool: list[str], n: int) -> list[str]:
        free = [i for i in pool if i not in picked]
        chosen = rng.sample(free, min(n, len(free)))
        picked.update(chosen)
        return chosen

    week = _DemoWeek(
        published=take(private, 4),
        unprotected=take(exposed, 3),
        given_away=take(private, 3),
        unsigned=take(signed, 3),
        deleted=take(loose, 3),
        added=[],
    )
    for image_id in week.published:
        emulator.publish(image_id)
    for image_id in week.unprotected:
        emulator.unprotect(image_id)
    outsider = "9f0c4a7e5d1b4e0f8a3c2b6d7e8f9a01"  # a project this cloud does not have
    for image_id in week.given_away:
        emulator.change_owner(image_id, outsider)
    for image_id in week.unsigned:
        emulator.drop_signature(image_id)
    for image_id in week.deleted:
        emulator.delete(image_id)
    template = rng.choice(live)
    added = []
    for n in range(2):
        image_id = f"{rng.getrandbits(128):032x}"
        stamp = (now - pd.Timedelta(days=1 + n)).tz_convert(None).to_pydatetime()
        emulator.add(
            dataclasses.replace(
                template,
                id=image_id,
                name=f"uploaded this week {n + 1}",
                is_public=True,
                protected=False,
                created_at=stamp,
                updated_at=stamp,
                properties=dict(template.properties),
                members=(),
            )
        )
        added.append(image_id)
    return dataclasses.replace(week, added=added)


def _demo_usage(
    fleet: Any, df: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, Any]:
    """Servers and volumes from a Nova and Cinder emulator over ``fleet``, their
    ``image_usage`` of ``df`` and the planted answers; prints what was read."""
    from imgframe.testing.compute import ComputeEmulator, make_usage
    from imgframe.testing.emulator import ADMIN_TOKEN
    from imgframe.usage import fetch_servers, fetch_volumes
    from imgframe.usage_frame import image_usage

    usage = make_usage(fleet, seed=DEMO_SEED)
    planted = usage.planted
    print()
    print(
        f"demo: Nova and Cinder emulator with {len(usage.servers):,} servers and "
        f"{len(usage.volumes):,} volumes; planted {len(planted.unused):,} unused images, "
        f"{len(planted.only_stopped_servers):,} used only by stopped servers, "
        f"{len(planted.through_volumes):,} used only through volumes (boot-from-volume "
        "servers, whose image is empty in Nova)"
    )
    with ComputeEmulator(usage) as nova:
        started = time.perf_counter()
        servers = fetch_servers(nova.compute_url, ADMIN_TOKEN)
        volumes = fetch_volumes(nova.volume_url, ADMIN_TOKEN)
        seconds = time.perf_counter() - started
        pages = len(nova.requests)
    print(
        f"read {len(servers):,} servers and {len(volumes):,} volumes in {seconds:.1f} s "
        f"({pages:,} listing requests, all_tenants=1)"
    )
    return servers, volumes, image_usage(df, servers, volumes), planted


def _print_usage_findings(
    df: pd.DataFrame, findings: pd.DataFrame, used: pd.DataFrame, planted: Any, added: set[str]
) -> None:
    """What the usage rules found against what was planted, and the owners with the
    most bytes to reclaim."""
    from imgframe.audits import checksum_duplicates, owner_summary
    from imgframe.report_html import human_bytes

    def found(rule: str, answer: frozenset[str]) -> str:
        ids = set(findings.loc[findings["rule"] == rule, "image_id"].astype(str))
        # A planted image whose row the faults made unreadable is not a candidate; an
        # image uploaded this week is used by nothing yet.
        extra = ids - answer - added
        return (
            f"{len(ids):,} (planted {len(answer):,}, {len(answer - ids):,} not read or "
            f"changed this week, {len(ids & added):,} uploaded this week, "
            f"{len(extra):,} not planted)"
        )

    owners = owner_summary(df, usage=used)
    total = int(owners["reclaimable_bytes"].fillna(0).sum())
    stopped = found("only_stopped_servers", planted.only_stopped_servers)
    print(
        f"usage: unused images (no server in any state, no volume) "
        f"{found('unused', planted.unused)}: {human_bytes(total)} owners could reclaim; "
        f"used only by stopped servers {stopped} (retire with their servers, not delete)"
    )
    dups = checksum_duplicates(df, usage=used)
    groups = dups.drop_duplicates("dup_group")
    idle = int(dups["unused"].sum())
    print(
        f"duplicates: {len(groups):,} groups of {len(dups):,} images, {idle:,} "
        f"copies unused: deleting those (one copy of each group kept) would reclaim "
        f"{human_bytes(int(groups['reclaimable_bytes'].fillna(0).sum()))}"
    )
    top = owners[owners["reclaimable_bytes"].fillna(0) > 0]
    top = top.sort_values("reclaimable_bytes", ascending=False, kind="stable").head(5)
    for owner, row in top.iterrows():
        print(
            f"  {owner}: {int(row['unused']):,} unused of {int(row['images']):,} images, "
            f"{human_bytes(row['reclaimable_bytes'])} reclaimable"
        )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(
        prog="imgframe",
        description="Fetch Glance v1 image metadata (HEAD /v1/images/{id}) for many images "
        "into one typed table.",
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        "-o f.csv\n\n" + FETCH_RUN_HELP + "\n" + EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fetch.add_argument("ids", nargs="*", metavar="ID", help="image ids (or use --ids-file/stdin)")
    fetch.add_argument(
        "--ids-file",
        metavar="FILE",
        help="one id per line, or a CSV with an 'id' column (such as a table this command "
        "wrote); '-' = stdin",
    )
    fetch.add_argument(
        "--all",
        action="store_true",
        help="every image the credentials can see, each row from the listing's own record "
        "(about one request per 1,000 images)",
    )
    fetch.add_argument(
        "--head",
        action="store_true",
        help="with --all: send one HEAD (v2: GET) per listed image instead of using the "
        "listing's records (its answers, not the listing's)",
    )
    fetch.add_argument(
        "--members",
        action="store_true",
        help="also read the members (projects it is shared with) of each image that can "
        "have them (v1: not public; v2: shared) into the members column: one more request "
        "per such image",
    )
    where = fetch.add_argument_group("where and who")
    where.add_argument(
        "--endpoint", help="Glance/IMS base URL, with or without /v1 (for v2: --api v2)"
    )
    where.add_argument(
        "--token",
        help="X-Auth-Token for --endpoint (default: $OS_AUTH_TOKEN; prefer it: a token on the "
        "command line is visible to every user in ps)",
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
        "-o",
        "--output",
        help="write .csv, .parquet or .json, checked before anything is sent (default: CSV on "
        "stdout); written whole or not at all, never when the run failed as a whole",
    )
    fetch.add_argument(
        "--include-deleted",
        action="store_true",
        help="with --all: keep deleted images the listing shows (admins only; by default "
        "they are left out)",
    )
    fetch.add_argument(
        "--history",
        metavar="DIR",
        help="also add the run to this history folder (imgframe.History: one dated Parquet "
        "partition per run, cloud=/region=/fetched=); a run that failed as a whole (5) adds "
        "nothing, an incomplete one (4) is added with complete=false",
    )
    kept = fetch.add_mutually_exclusive_group()
    kept.add_argument(
        "--checkpoint",
        metavar="DIR",
        help="keep finished rows in this folder as they arrive, so that running the same "
        "command again resumes (default: OUTPUT.checkpoint next to -o, else a folder in "
        "the user cache; removed after a complete run)",
    )
    kept.add_argument(
        "--no-checkpoint",
        action="store_true",
        help="keep no checkpoint: an interrupted run starts again from scratch",
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
    emulator.add_argument(
        "--force",
        action="store_true",
        help="with --regions: replace an existing clouds.yaml (by default it is never touched)",
    )
    emulator.set_defaults(run=_emulator)

    audit = sub.add_parser(
        "audit",
        help="run the audit rules on a fetched table (.csv, .parquet, .json)",
        description="Run imgframe's audit rules on a table written by 'imgframe fetch'.",
        epilog="exit status: 0 done (no finding as severe as --fail-on); 1 internal error; "
        "2 usage error, or a table that cannot be read (missing, cut short, not a table); "
        "3 a finding as severe as --fail-on or worse (with --baseline: a new one)",
    )
    audit.add_argument("input", metavar="FILE", help="images table: .csv, .parquet or .json")
    audit.add_argument(
        "--format",
        choices=("table", "csv", "json", "parquet", "html"),
        help="output format (default: from -o's extension, else a text table on stdout)",
    )
    audit.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write here instead of stdout: .txt (the text table), .csv, .json, .parquet or "
        ".html; any other extension is refused",
    )
    audit.add_argument("--rules", metavar="A,B", help="only these rules (comma-separated)")
    audit.add_argument(
        "--profile",
        metavar="NAME",
        help="the rules of these profiles (comma-separated): default (what an operator acts "
        "on; the default), hardening (security_properties), all (every rule)",
    )
    audit.add_argument(
        "--allow",
        metavar="FILE",
        help="accepted risks: a .csv (rule,image_id,owner,reason,expires) or .yaml "
        "allow-list, or image or owner ids one per line (any other extension)",
    )
    audit.add_argument(
        "--baseline",
        metavar="OLD",
        help="an older images table or findings file: report only the findings new since "
        "then (with --fail-on: fail on a new finding only)",
    )
    audit.add_argument(
        "--now",
        metavar="WHEN",
        help="the audit clock for stale and stuck images, e.g. 2026-12-01 or "
        "2026-12-01T08:00:00Z (default: when the table was fetched, from its provenance; "
        "the current time for a table without one)",
    )
    audit.add_argument(
        "--fail-on",
        choices=FAIL_ON,
        help="exit 3 when a finding of this severity or worse exists (with --baseline: a "
        "new one) (for CI jobs)",
    )
    audit.add_argument(
        "--servers",
        metavar="FILE",
        help="servers table of the same cloud and region ('imgframe servers -o FILE'): runs "
        "the usage rules unused and only_stopped_servers (skipped without it)",
    )
    audit.add_argument(
        "--volumes",
        metavar="FILE",
        help="volumes table ('imgframe volumes -o FILE'); without it unused flags nothing "
        "(an image may be used only through a volume)",
    )
    audit.add_argument(
        "--trusted",
        metavar="IDS",
        help="project ids shared_outside accepts as members: a comma-separated list, or "
        "@FILE for a file of them (one per line, # comments); without it every member of "
        "an image is reported (the table needs 'imgframe fetch --members')",
    )
    audit.set_defaults(run=_audit)

    changes = sub.add_parser(
        "diff",
        help="what changed between two fetched tables (images that appeared, became "
        "public, lost protection or their signature, changed owner, ...)",
        description="Compare two tables written by 'imgframe fetch' (any of .csv, .parquet, "
        ".json): one row per image and change; images that could not be read in either "
        "table are 'unknown', never 'disappeared'.",
        epilog="exit status: 0 done (no change named by --fail-on); 1 internal error; "
        "2 usage error, or a table that cannot be read (missing, cut short, not a table, "
        "a fleet table against a single-endpoint one); 3 a change named by --fail-on exists",
    )
    changes.add_argument("old", metavar="OLD", help="the older images table")
    changes.add_argument("new", metavar="NEW", help="the newer images table")
    changes.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write every change here: .csv, .parquet or .json (written whole or not at "
        "all); without it the first 20 are printed",
    )
    changes.add_argument(
        "--fail-on",
        metavar="CHANGE,...",
        help="exit 3 when one of these changes exists, e.g. became_public,protection_removed,"
        "signature_removed (for CI jobs)",
    )
    changes.set_defaults(run=_diff)

    for kind, service, path in (
        ("servers", "Nova", "{compute}/servers/detail"),
        ("volumes", "Cinder", "{volumev3}/volumes/detail"),
    ):
        listing = sub.add_parser(
            kind,
            help=f"list every {service} {kind[:-1]} of every project into a table (for "
            f"'imgframe audit --{kind}')",
            description=f"List every {service} {kind[:-1]} the credentials can see (GET "
            f"{path}?all_tenants=1, paged) into one table.",
            epilog=USAGE_EXIT_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        where = listing.add_argument_group("where and who")
        catalog = "compute" if kind == "servers" else "volumev3"
        where.add_argument(
            "--endpoint",
            help=f"the {service} URL as the catalog's {catalog} entry gives it (e.g. "
            + (
                "https://nova:8774/v2.1)"
                if kind == "servers"
                else "https://cinder:8776/v3/PROJECT)"
            ),
        )
        where.add_argument(
            "--token",
            help="X-Auth-Token for --endpoint (default: $OS_AUTH_TOKEN; prefer it: a token on "
            "the command line is visible to every user in ps)",
        )
        where.add_argument(
            "--cloud",
            action="append",
            metavar="NAME",
            help="a clouds.yaml cloud (repeat for several; the table gains cloud, region and "
            "key, as 'imgframe fetch --cloud' tables do); needs imgframe[openstack]",
        )
        where.add_argument(
            "--region",
            action="append",
            metavar="NAME",
            help="regions of each --cloud (repeat; default: the regions clouds.yaml lists, "
            "else every region of the catalog)",
        )
        where.add_argument(
            "--keep-going",
            action="store_true",
            help="with several clouds/regions: list the others when one fails (the table is "
            "then incomplete and not written: exit 4 names the failed ones)",
        )
        listing.add_argument(
            "--max-rps", type=float, metavar="N", help="at most N requests per second"
        )
        listing.add_argument(
            "--timeout",
            type=float,
            default=30.0,
            metavar="SECONDS",
            help="seconds per request (30)",
        )
        listing.add_argument(
            "--retries", type=int, default=3, metavar="N", help="retries of 429/5xx/timeouts (3)"
        )
        listing.add_argument(
            "-o",
            "--output",
            help="write .csv, .parquet or .json (default: CSV on stdout); written whole or not "
            "at all",
        )
        tls = listing.add_mutually_exclusive_group()
        tls.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
        tls.add_argument("--ca-bundle", metavar="PEM", help="verify TLS with this CA bundle")
        listing.set_defaults(run=_usage_listing, kind=kind)

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
    """Run the ``imgframe`` command; returns the exit status (:data:`EXIT_STATUS_HELP`).

    Examples
    --------
    >>> main(["fetch", "--endpoint", "ftp://x", "--token", "t", "some-id"])
    2
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    args.ids_from_stdin = False
    for name in ("concurrency", "images", "retries"):
        value = getattr(args, name, None)
        if value is not None and value < (0 if name == "retries" else 1):
            parser.error(f"--{name} must be {'>= 0' if name == 'retries' else '>= 1'}")
    if getattr(args, "max_rps", None) is not None and not args.max_rps > 0:
        parser.error("--max-rps must be > 0")
    try:
        with warnings.catch_warnings():
            # Shown as they come, one line each, so that the last line of a run is its
            # outcome, not a warning about one header.
            warnings.showwarning = _show_warning
            warnings.simplefilter("always", ImgframeWarning)  # every imgframe warning
            return int(args.run(args))
    except FetchError as exc:  # the run as a whole: no v1, TLS, login refused...
        _say(f"error: {exc}")
        return EXIT_FAILED
    except ImgframeError as exc:
        _say(f"error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:  # outside a fetch (a fetch says more, see _fetch)
        _say("interrupted")
        return EXIT_SIGINT
    except BrokenPipeError:
        # `imgframe ... | head`: the reader has gone, which is not an error worth a line.
        # Point stdout at devnull so that Python's exit-time flush does not complain again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PIPE
    except OSError as exc:  # output file not writable, port in use...
        _say(f"error: {exc}")
        return EXIT_USAGE
    except Exception as exc:  # a bug of ours: one line for users, the traceback on request
        if os.environ.get("IMGFRAME_DEBUG"):
            raise
        _say(
            f"internal error: {type(exc).__name__}: {exc} "
            "(set IMGFRAME_DEBUG=1 for the traceback, and please report it)"
        )
        return EXIT_INTERNAL


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    _say(f"warning: {message}")


if __name__ == "__main__":
    sys.exit(main())
