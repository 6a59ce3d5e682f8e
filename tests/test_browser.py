"""The picker in a real browser: Voilà serves a notebook, headless Chromium drives it.

Debian's Chromium (``/usr/bin/chromium``; ``.ci/run`` installs it) is driven through
Playwright for Python. Everything stays on 127.0.0.1: the notebook starts the Glance
emulator, Voilà listens on loopback and the browser aborts every other request (Voilà's
page asks a CDN for fonts). Jupyter and IPython write only under a temporary directory.
Voilà starts a kernel per page load and, once the page is gone, only culling stops it:
the page's ``beforeunload`` shutdown beacon is refused by Voilà 0.5.13 ("403 '_xsrf'
argument missing from POST", voila-dashboards/voila#1458). So the server culls idle,
unconnected kernels after 10 s, the test checks that the page's kernel is gone after the
page is left, and the server is stopped at the end (SIGTERM: it shuts its kernels down;
then its process group is killed and any kernel left over is killed and reported).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd
import psutil  # a dependency of ipykernel
import pytest
from playwright.sync_api import Browser, Page, Route, expect
from playwright.sync_api import Error as PlaywrightError

import imgframe
from imgframe.testing import ADMIN_TOKEN, GlanceEmulator, make_fleet

CHROMIUM = Path("/usr/bin/chromium")
NOTEBOOK = Path(__file__).parent / "notebooks" / "picker_app.ipynb"
FLEET_SIZE, FLEET_SEED = 300, 11  # must match the notebook (checked below)
PAGE_SIZE = 50  # the picker's default page size
LOOPBACK = "127.0.0.1"

SERVER_START_TIMEOUT = 30.0  # s, until Voilà listens
SERVER_STOP_TIMEOUT = 15.0  # s, for a graceful stop (it shuts its kernels down)
PAGE_LOAD_TIMEOUT = 30_000  # ms, Voilà executes the notebook while it sends the page
WIDGET_TIMEOUT = 20_000  # ms, until the picker is rendered
UPDATE_TIMEOUT = 10_000  # ms, for the picker to react to a click
PAGE_LOAD_ATTEMPTS = 3  # Voilà sometimes stalls a page load: retry on a fresh page
KERNEL_GONE_TIMEOUT = 30.0  # s, culling: idle 10 s, checked every 2 s

# How Voilà shows a cell's exception (with show_tracebacks) or any stderr output.
NOTEBOOK_ERROR = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
COUNT = re.compile(r"([\d,]+) of ([\d,]+) images")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"{CHROMIUM} is missing (Debian's chromium package; .ci/run installs it)",
    ),
    pytest.mark.timeout(240),  # a hard bound on top of every wait's own timeout
]


# -- the Voilà server --


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _listening(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


def _kernel_processes(server: psutil.Process) -> list[psutil.Process]:
    try:
        children = server.children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    kernels = []
    for child in children:
        try:
            if "ipykernel_launcher" in " ".join(child.cmdline()):
                kernels.append(child)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return kernels


@dataclass
class VoilaServer:
    process: subprocess.Popen
    url: str
    log: Path

    def kernels(self) -> list[psutil.Process]:
        """The kernels running now (Voilà starts them in sessions of their own)."""
        return _kernel_processes(psutil.Process(self.process.pid))

    def wait_for_no_kernels(self, timeout: float) -> list[psutil.Process]:
        deadline = time.monotonic() + timeout
        while (kernels := self.kernels()) and time.monotonic() < deadline:
            time.sleep(0.25)
        return kernels

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


@pytest.fixture(scope="module")
def jupyter_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment where Jupyter and IPython write under a temporary directory only,
    with a ``python3`` kernelspec that runs this interpreter (the one with imgframe)."""
    root = tmp_path_factory.mktemp("jupyter")
    env = dict(os.environ)
    for name, sub in [
        ("JUPYTER_CONFIG_DIR", "config"),
        ("JUPYTER_DATA_DIR", "data"),
        ("JUPYTER_RUNTIME_DIR", "runtime"),
        ("IPYTHONDIR", "ipython"),
        ("MPLCONFIGDIR", "matplotlib"),
    ]:
        (root / sub).mkdir()
        env[name] = str(root / sub)
    env.pop("JUPYTER_PATH", None)
    env.pop("JUPYTER_CONFIG_PATH", None)
    env["JUPYTER_PLATFORM_DIRS"] = "1"  # no migration warnings, no guessing
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # quiets the kernel's debugger warning
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # The user data dir comes first on the kernelspec path, so this spec wins.
    spec = root / "data" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (imgframe test)",
                "language": "python",
            }
        )
    )
    return env


def _start_voila(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "voila",
        "--no-browser",
        f"--port={port}",
        f"--Voila.ip={LOOPBACK}",
        "--Voila.port_retries=0",  # listen on this port or fail, never on a neighbour
        f"--Voila.connection_dir_root={env['JUPYTER_RUNTIME_DIR']}",
        "--MappingKernelManager.cull_idle_timeout=10",
        "--MappingKernelManager.cull_interval=2",
        "--VoilaConfiguration.show_tracebacks=True",
        str(NOTEBOOK),
    ]
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            cwd=NOTEBOOK.parent,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed as a whole at the end
        )
    return process, port


def _stop_voila(server: VoilaServer) -> list[int]:
    """Stop Voilà (gracefully, then by force) and return the pids of kernels it left."""
    process = server.process
    kernels = server.kernels()
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # Voilà shuts its kernels down, then exits
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=SERVER_STOP_TIMEOUT)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # anything left in its process group
    process.wait(timeout=10)
    leaked = []
    for kernel in kernels:
        try:
            kernel.kill()
            kernel.wait(timeout=5)
            leaked.append(kernel.pid)
        except psutil.NoSuchProcess:
            pass
    return leaked


@pytest.fixture(scope="module")
def voila(
    jupyter_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VoilaServer]:
    log = tmp_path_factory.mktemp("voila") / "voila.log"
    process, port = _start_voila(jupyter_env, log)
    server = VoilaServer(process, f"http://{LOOPBACK}:{port}/", log)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while not _listening(port):
            if process.poll() is not None:
                pytest.fail(f"Voilà exited with {process.returncode}:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"Voilà did not listen within {SERVER_START_TIMEOUT} s")
            time.sleep(0.1)
        yield server
    finally:
        leaked = _stop_voila(server)
        print(f"Voilà log: {log}")
    assert not leaked, f"kernels survived the server: {leaked}\n{server.log_tail()}"


# -- the browser --


class _Outside:
    """Aborts every request that is not for 127.0.0.1, and remembers it."""

    def __init__(self) -> None:
        self.blocked: list[str] = []

    def __call__(self, route: Route) -> None:
        if urlsplit(route.request.url).hostname == LOOPBACK:
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort("blockedbyclient")


def _close(page: Page) -> None:
    """Leave the page as a user does (its websocket closes, its beacon goes), then close it.

    Closing outright, even with ``run_before_unload``, does not even send the beacon.
    """
    with contextlib.suppress(PlaywrightError):
        if not page.is_closed():
            page.goto("about:blank", timeout=5_000)
    with contextlib.suppress(PlaywrightError):
        page.context.close()


def _open_picker(browser: Browser, server: VoilaServer, outside: _Outside) -> Page:
    """Load the notebook until the picker renders, on a fresh page each attempt."""
    failures = []
    for attempt in range(1, PAGE_LOAD_ATTEMPTS + 1):
        context = browser.new_context(viewport={"width": 1600, "height": 1800})
        context.route("**/*", outside)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc, errors=errors: errors.append(str(exc)))
        picker = page.locator(".imgframe-picker")
        raised = page.locator(NOTEBOOK_ERROR, has_text=re.compile(r"Error|Exception|Traceback"))
        try:
            page.goto(server.url, wait_until="domcontentloaded", timeout=PAGE_LOAD_TIMEOUT)
            picker.or_(raised).first.wait_for(state="visible", timeout=WIDGET_TIMEOUT)
            if not picker.is_visible() and raised.count():
                # The notebook itself failed: another page load would fail the same way.
                text = "\n".join(raised.all_inner_texts())[-3000:]
                _close(page)
                pytest.fail(f"the notebook raised in Voilà:\n{text}")
            picker.wait_for(state="visible", timeout=WIDGET_TIMEOUT)
            expect(page.locator(".imgframe-count")).to_contain_text(COUNT, timeout=WIDGET_TIMEOUT)
            return page
        except PlaywrightError as exc:
            try:
                body = page.locator("body").inner_text(timeout=2_000)[-2000:]
            except PlaywrightError:
                body = "(no body)"
            failures.append(f"attempt {attempt}: {exc}\npage errors: {errors}\npage text: {body}")
            _close(page)
    pytest.fail(
        f"the picker did not render in {PAGE_LOAD_ATTEMPTS} page loads:\n"
        + "\n".join(failures)
        + f"\nVoilà log:\n{server.log_tail()}"
    )


@pytest.fixture
def page(browser: Browser, voila: VoilaServer) -> Iterator[tuple[Page, _Outside]]:
    outside = _Outside()
    page = _open_picker(browser, voila, outside)
    try:
        yield page, outside
    finally:
        _close(page)


# -- the expected numbers, from the same seeded fleet --


@pytest.fixture(scope="module")
def images() -> pd.DataFrame:
    source = NOTEBOOK.read_text()
    assert f"make_fleet({FLEET_SIZE}, seed={FLEET_SEED})" in source, (
        "the notebook and this test must build the same fleet"
    )
    fleet = make_fleet(FLEET_SIZE, seed=FLEET_SEED)
    with GlanceEmulator(fleet) as emulator:
        return imgframe.fetch_images(
            [image.id for image in fleet.images],
            endpoint=emulator.url,
            token=ADMIN_TOKEN,
            progress=False,
        )


def _count(page: Page) -> tuple[int, int]:
    text = page.locator(".imgframe-count").inner_text(timeout=UPDATE_TIMEOUT)
    match = COUNT.search(text)
    assert match, f"count label {text!r} does not say 'N of M images'"
    return int(match[1].replace(",", "")), int(match[2].replace(",", ""))


def _count_text(n: int, total: int) -> str:
    return f"{n:,} of {total:,} images"


def test_picker_filters_in_a_real_browser(
    page: tuple[Page, _Outside], images: pd.DataFrame, voila: VoilaServer, tmp_path: Path
) -> None:
    page, outside = page
    rows = page.locator(".imgframe-table tbody tr")
    total = len(images)

    assert voila.kernels(), "no kernel behind the page (is the leak check looking?)"

    # Nothing filtered yet: every image counted, one page of rows.
    shown, of = _count(page)
    assert (shown, of) == (total, total)
    expect(rows).to_have_count(min(total, PAGE_SIZE), timeout=UPDATE_TIMEOUT)

    # One owner: the biggest, so that owner alone still fills a page and public narrows it.
    owner = images["owner"].value_counts().index[0]
    by_owner = images[images["owner"] == owner]
    public = by_owner[by_owner["is_public"].eq(True).fillna(False)]
    assert len(by_owner) > PAGE_SIZE > len(public) > 0, "pick another seed for this test"

    select = page.locator(".imgframe-owner select")
    value = select.locator("option", has_text=owner).first.get_attribute("value")
    assert value is not None, f"owner {owner} is not among the picker's choices"
    select.select_option(value=value, timeout=UPDATE_TIMEOUT)
    expect(page.locator(".imgframe-count")).to_contain_text(
        _count_text(len(by_owner), total), timeout=UPDATE_TIMEOUT
    )
    expect(rows).to_have_count(PAGE_SIZE, timeout=UPDATE_TIMEOUT)

    # Public: yes.
    page.locator(".imgframe-public button", has_text=re.compile(r"^\s*yes\s*$")).click(
        timeout=UPDATE_TIMEOUT
    )
    expect(page.locator(".imgframe-count")).to_contain_text(
        _count_text(len(public), total), timeout=UPDATE_TIMEOUT
    )
    expect(rows).to_have_count(len(public), timeout=UPDATE_TIMEOUT)
    shown_ids = page.locator(".imgframe-table tbody tr th").all_inner_texts()
    assert sorted(text.strip() for text in shown_ids) == sorted(public.index)

    screenshot = tmp_path / "picker.png"
    page.screenshot(path=screenshot, full_page=True, timeout=UPDATE_TIMEOUT)
    print(f"screenshot: {screenshot}")

    print(f"blocked requests (not for {LOOPBACK}): {outside.blocked}")

    # Once the page is left its kernel goes (culled): no kernel left behind per page load.
    _close(page)
    left = voila.wait_for_no_kernels(KERNEL_GONE_TIMEOUT)
    assert not left, f"kernels still running after the page closed: {[k.pid for k in left]}"
