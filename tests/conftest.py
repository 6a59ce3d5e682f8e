"""Fixtures the test modules share: servers on 127.0.0.1, the seeded fleet, the CLI in-process.

The top-level ``conftest.py`` keeps the whole session out of the home folder (Jupyter,
IPython, matplotlib, the CLI's checkpoints); this one holds what tests ask for by name:

- ``servers`` / ``module_servers``: a factory that starts Glance emulators
  (``servers.glance(fleet, faults=..., api=..., tokens=..., access_keys=...)``) and fake
  Keystones (``servers.keystone({"east": emulator})``) and stops every one of them at
  teardown, waiting a bounded time for each (a server that does not stop fails the test).
- ``fleet`` / ``emulator``: the module's seeded fleet, ``make_fleet(**FLEET)`` from the
  module's ``FLEET`` dict, and one emulator serving it for the whole module. A module
  whose fleet or emulator is special declares its own fixture of that name instead.
- ``cli``: ``cli(*argv, stdin="")`` runs ``imgframe.cli.main(argv)`` in this process and
  returns its status, stdout and stderr; a run that leaves process-wide state behind
  (signal handlers, logging handlers, warning filters, environment, working directory,
  event loop policy, threads) fails the test, and the state is put back.
- ``global_state``: that check as a context manager, for other in-process runs.
- ``use_clouds_yaml``: writes a clouds.yaml that only ``OS_CLIENT_CONFIG_FILE`` points at.

A module that uses Playwright (Chromium) or a Jupyter kernel must mark its tests
``browser`` / ``notebook`` (pyproject.toml), so that ``-m "not browser and not notebook"``
is the quick loop: collection stops with a usage error otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import signal
import sys
import threading
import types
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import pytest

from imgframe.testing import Faults, Fleet, GlanceEmulator, make_fleet
from imgframe.testing.keystone import FakeKeystone

#: Seconds a server gets to start (bind its socket) or to stop (close and join its thread).
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
#: Seconds a thread started by an in-process run gets to end once the run has returned.
THREAD_END_TIMEOUT = 5.0

_SIGNALS = tuple(
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGPIPE", "SIGHUP")
    if hasattr(signal, name)
)


# --------------------------------------------------------------------------- servers
class _Server(Protocol):
    def start(self) -> Any: ...
    def stop(self) -> None: ...


def _within(call: Callable[[], object], seconds: float, what: str) -> None:
    """Run ``call`` on a helper thread and fail if it has not returned after ``seconds``."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            failure.append(exc)

    helper = threading.Thread(target=run, name=f"conftest: {what}", daemon=True)
    helper.start()
    helper.join(seconds)
    if helper.is_alive():
        raise TimeoutError(f"{what} did not finish within {seconds:.0f} s")
    if failure:
        raise failure[0]


class Servers:
    """Starts servers on 127.0.0.1 and stops every one it started (:meth:`close`)."""

    def __init__(self) -> None:
        self._started: list[tuple[str, _Server]] = []

    def glance(
        self,
        fleet: Fleet | int,
        *,
        seed: int = 0,
        faults: Faults | None = None,
        api: Literal["v1+v2", "v2"] = "v1+v2",
        **options: Any,
    ) -> GlanceEmulator:
        """A started emulator serving ``fleet`` (or ``make_fleet(fleet, seed=seed)``).

        ``api="v2"`` plays a Glance without the v1 API (``Faults.no_v1``); ``options`` go
        to :class:`GlanceEmulator` as they are (``tokens``, ``access_keys``,
        ``ssl_context``, ``api_limit_max``, ``case_insensitive_ids``).
        """
        if isinstance(fleet, int):
            fleet = make_fleet(fleet, seed=seed)
        faults = faults or Faults()
        if api == "v2":
            faults = replace(faults, no_v1=True)
        return self._start("the Glance emulator", GlanceEmulator(fleet, faults=faults, **options))

    def keystone(self, regions: Mapping[str, GlanceEmulator], **options: Any) -> FakeKeystone:
        """A started fake Keystone whose catalog names these emulators per region."""
        return self._start("the fake Keystone", FakeKeystone(regions, **options))

    def _start(self, what: str, server: Any) -> Any:
        _within(server.start, START_TIMEOUT, f"starting {what}")
        self._started.append((what, server))
        return server

    def close(self) -> None:
        """Stop every server, the last started first; raise if one did not stop in time."""
        stuck = []
        while self._started:
            what, server = self._started.pop()
            try:
                _within(server.stop, STOP_TIMEOUT, f"stopping {what}")
            except TimeoutError as exc:
                stuck.append(str(exc))
        if stuck:
            raise RuntimeError("; ".join(stuck))


@pytest.fixture
def servers() -> Iterator[Servers]:
    """Servers for one test, stopped when it ends."""
    started = Servers()
    try:
        yield started
    finally:
        started.close()


@pytest.fixture(scope="module")
def module_servers() -> Iterator[Servers]:
    """Servers shared by the tests of one module, stopped after its last test."""
    started = Servers()
    try:
        yield started
    finally:
        started.close()


@pytest.fixture(scope="module")
def fleet(request: pytest.FixtureRequest) -> Fleet:
    """The module's seeded fleet: ``make_fleet(**FLEET)`` from the module's ``FLEET`` dict."""
    spec = getattr(request.module, "FLEET", None)
    if spec is None:
        pytest.fail(f"{request.module.__name__} asks for `fleet` but sets no FLEET dict")
    return make_fleet(**spec)


@pytest.fixture(scope="module")
def emulator(module_servers: Servers, fleet: Fleet) -> GlanceEmulator:
    """One emulator serving the module's fleet, for the whole module."""
    return module_servers.glance(fleet)


# ---------------------------------------------------------------------- global state
_LoggerState = tuple[int, tuple[logging.Handler, ...], bool]  # level, handlers, propagate


def _loggers() -> dict[str, _LoggerState]:
    def state(logger: logging.Logger) -> _LoggerState:
        # A NullHandler is how a library says "not configured" when it is first imported.
        handlers = tuple(h for h in logger.handlers if not isinstance(h, logging.NullHandler))
        return logger.level, handlers, logger.propagate

    found = {"": state(logging.root)}
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger):
            found[name] = state(logger)
    return found


@dataclass
class _Snapshot:
    """What a run in this process could change for every later test, and put back."""

    signals: dict[int, Any] = field(
        default_factory=lambda: {s: signal.getsignal(s) for s in _SIGNALS}
    )
    loggers: dict[str, tuple[int, tuple[logging.Handler, ...], bool]] = field(
        default_factory=_loggers
    )
    filters: list[Any] = field(default_factory=lambda: list(warnings.filters))
    showwarning: Any = field(default_factory=lambda: warnings.showwarning)
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    cwd: str = field(default_factory=os.getcwd)
    policy: Any = field(default_factory=asyncio.get_event_loop_policy)
    streams: tuple[Any, ...] = field(default_factory=lambda: (sys.stdin, sys.stdout, sys.stderr))
    excepthook: Any = field(default_factory=lambda: sys.excepthook)
    threads: frozenset[threading.Thread] = field(
        default_factory=lambda: frozenset(threading.enumerate())
    )

    def restore(self) -> list[str]:
        """Put everything back; return what had changed (empty: nothing leaked)."""
        changed = []
        for number, handler in self.signals.items():
            if signal.getsignal(number) != handler:
                changed.append(f"the {signal.Signals(number).name} handler")
                if handler is not None:  # None: set outside Python, cannot be put back
                    signal.signal(number, handler)
        now = _loggers()
        for name, (level, handlers, propagate) in self.loggers.items():
            if now.get(name, (level, handlers, propagate)) != (level, handlers, propagate):
                changed.append(f"logger {name or 'root'!r} (level, handlers or propagate)")
                logger = logging.getLogger(name) if name else logging.root
                logger.setLevel(level)
                logger.handlers[:] = [
                    *handlers,
                    *(h for h in logger.handlers if isinstance(h, logging.NullHandler)),
                ]
                logger.propagate = propagate
        for name in now.keys() - self.loggers.keys():
            if now[name][1]:
                changed.append(f"new logger {name!r} with handlers")
                logger = logging.getLogger(name)
                logger.handlers[:] = [
                    h for h in logger.handlers if isinstance(h, logging.NullHandler)
                ]
        if warnings.filters != self.filters:
            changed.append("warnings.filters")
            warnings.filters[:] = self.filters
            warnings._filters_mutated()  # type: ignore[attr-defined]
        if warnings.showwarning is not self.showwarning:
            changed.append("warnings.showwarning")
            warnings.showwarning = self.showwarning
        if dict(os.environ) != self.environ:
            names = sorted(set(os.environ).symmetric_difference(self.environ)) or sorted(
                name for name in self.environ if os.environ.get(name) != self.environ[name]
            )
            changed.append(f"environment variables {names}")
            os.environ.clear()
            os.environ.update(self.environ)
        if os.getcwd() != self.cwd:
            changed.append(f"the working directory ({os.getcwd()})")
            os.chdir(self.cwd)
        if asyncio.get_event_loop_policy() is not self.policy:
            changed.append("the asyncio event loop policy")
            asyncio.set_event_loop_policy(self.policy)
        if (sys.stdin, sys.stdout, sys.stderr) != self.streams:
            changed.append("sys.stdin, sys.stdout or sys.stderr")
            sys.stdin, sys.stdout, sys.stderr = self.streams
        if sys.excepthook is not self.excepthook:
            changed.append("sys.excepthook")
            sys.excepthook = self.excepthook
        for thread in set(threading.enumerate()) - self.threads:
            thread.join(THREAD_END_TIMEOUT)
            if thread.is_alive():
                changed.append(f"thread {thread.name!r} still running")
        return changed


@pytest.fixture
def global_state() -> Callable[[str], contextlib.AbstractContextManager[None]]:
    """``with global_state("what ran"):`` fails the test if the block left process-wide
    state behind (after putting it back), so that in-process runs cannot leak into later
    tests the way separate processes never could."""

    @contextlib.contextmanager
    def unchanged(what: str) -> Iterator[None]:
        before = _Snapshot()
        try:
            yield
        finally:
            changed = before.restore()
        if changed:
            pytest.fail(f"{what} left process-wide state behind: {', '.join(changed)}")

    return unchanged


# ----------------------------------------------------------------------------- cli
@dataclass
class Ran:
    """What one ``imgframe`` run returned and printed."""

    status: int
    out: str
    err: str

    @property
    def last_line(self) -> str:
        return self.err.strip().splitlines()[-1]


@pytest.fixture
def cli(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    global_state: Callable[[str], contextlib.AbstractContextManager[None]],
) -> Callable[..., Ran]:
    """``cli(*argv, stdin="")`` runs ``imgframe.cli.main(argv)`` here, stdin a string.

    No ``OS_AUTH_TOKEN`` unless the test sets one, and checkpoints of runs without ``-o``
    go to a cache folder of this test.
    """
    from imgframe.cli import main

    monkeypatch.delenv("OS_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def call(*args: str, stdin: str = "") -> Ran:
        capsys.readouterr()
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        with global_state(f"imgframe {' '.join(args)}"):
            status = main(list(args))
        captured = capsys.readouterr()
        return Ran(status, captured.out, captured.err)

    return call


# ---------------------------------------------------------------------- clouds.yaml
@pytest.fixture
def use_clouds_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[Mapping[str, Any]], Path]:
    """``use_clouds_yaml({"clouds": {...}})`` writes it under tmp_path, clears every
    ``OS_*`` variable and points ``OS_CLIENT_CONFIG_FILE`` at it (and the secure file at
    one that does not exist), so no clouds.yaml of the machine is read."""

    def write(clouds: Mapping[str, Any]) -> Path:
        for name in [name for name in os.environ if name.startswith("OS_")]:
            monkeypatch.delenv(name)
        path = tmp_path / "clouds.yaml"
        path.write_text(json.dumps(clouds))  # JSON is YAML
        monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(path))
        monkeypatch.setenv("OS_CLIENT_SECURE_FILE", str(tmp_path / "secure.yaml"))
        return path

    return write


# --------------------------------------------------------------------------- markers
#: Marker -> packages whose use in a test module means the module's tests need it.
_MARKER_PACKAGES = {
    "browser": ("playwright",),
    "notebook": ("jupyter_client", "nbclient", "ipykernel"),
}


def _packages_used(module: types.ModuleType) -> set[str]:
    """Top-level packages of the modules, classes and functions a module imported."""
    used = set()
    for value in vars(module).values():
        name = value.__name__ if isinstance(value, types.ModuleType) else None
        name = name or getattr(value, "__module__", None)
        if isinstance(name, str):
            used.add(name.partition(".")[0])
    return used


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    unmarked = []
    for item in items:
        module = getattr(item, "module", None)
        if module is None:
            continue
        used = _packages_used(module)
        for marker, packages in _MARKER_PACKAGES.items():
            if used.intersection(packages) and item.get_closest_marker(marker) is None:
                unmarked.append(f"{item.nodeid} (uses {'/'.join(packages)}: mark it {marker!r})")
    if unmarked:
        raise pytest.UsageError("tests without their tier marker:\n  " + "\n  ".join(unmarked))


# --------------------------------------------------------------------------- browser
#: Debian's chromium package (.ci/run installs it); Playwright cannot download browsers here.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Debian's Chromium (``CHROMIUM``) through Playwright, for modules marked ``browser``."""
    from playwright.sync_api import sync_playwright

    # Chromium keeps crash-report settings and dconf data under the home folder: not ours.
    home = tmp_path_factory.mktemp("browser-home")
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
    }
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, env=env, timeout=30_000
        )
        try:
            yield browser
        finally:
            browser.close()
