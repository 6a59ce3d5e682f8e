"""A real Keystone and Glance on 127.0.0.1, from pinned PyPI releases, for ``tests/real``.

``python tools/real_openstack.py`` builds (or finds) the cached virtualenv and prints its
path (``make test-real`` hands it to pytest as ``IMGFRAME_REAL_VENV``);
``tests/real/conftest.py`` imports :class:`RealCloud` to configure, start and stop the two
services. The services get their own virtualenv, never the project's: their pins
(oslo, SQLAlchemy, ...) must not decide what imgframe is tested with.

Layout of one cloud (a temporary folder): ``keystone.conf``, ``glance/glance-api.conf``,
sqlite databases, fernet and credential keys, a file store and a staging folder, and one
log file per service. Both run under waitress through :data:`SERVE`, a wrapper that clears
``sys.argv`` first: oslo.config parses it, and would choke on the server's own flags.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

KEYSTONE_VERSION = "30.0.0"
GLANCE_VERSION = "33.0.0"
WAITRESS_VERSION = "3.0.2"
PYTHON = "python3.11"
ADMIN_PASSWORD = "real-admin-s3cret"
#: The main Keystone's token life: well above the 120 s under which keystoneauth (and
#: KeystoneToken) count a token as expiring, so that no test but the renewal one renews.
TOKEN_LIFE = 3600
REGION = "RegionOne"

#: Runs a WSGI application under waitress: ``SERVE module attribute port``. An attribute
#: named ``initialize_*`` is a factory (Keystone's), any other one the application itself.
SERVE = """\
import importlib, sys
module, attribute, port = sys.argv[1:4]
sys.argv = [sys.argv[0]]  # oslo.config parses sys.argv: it must not see ours
import waitress
app = getattr(importlib.import_module(module), attribute)
if attribute.startswith("initialize"):
    app = app()
waitress.serve(app, host="127.0.0.1", port=int(port), threads=8, ident="real")
"""


def venv_path() -> Path:
    """Where the services' virtualenv lives, keyed by every pinned version.

    ``IMGFRAME_REAL_VENV`` overrides it; otherwise it is under ``$XDG_CACHE_HOME``
    (default ``~/.cache``), so a second run (and a second worktree) reuses it.
    """
    override = os.environ.get("IMGFRAME_REAL_VENV")
    if override:
        return Path(override)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = f"keystone-{KEYSTONE_VERSION}_glance-{GLANCE_VERSION}_waitress-{WAITRESS_VERSION}"
    return cache / "imgframe-real" / f"{key}_{PYTHON}"


def ensure_venv(log: Path | None = None) -> Path:
    """The virtualenv's python, building the virtualenv first if it is missing (~60-95 s).

    A virtualenv without its ``.complete`` stamp (an interrupted build) is built again.
    """
    root = venv_path()
    root.parent.mkdir(parents=True, exist_ok=True)
    # Two runs at once (two worktrees, CI and a developer) must not build over each other.
    with open(root.parent / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build(root, log)


def _build(root: Path, log: Path | None) -> Path:
    python = root / "bin" / "python"
    stamp = root / ".complete"
    if stamp.exists() and python.exists():
        return python
    shutil.rmtree(root, ignore_errors=True)
    log = log or root.parent / f"{root.name}.install.log"
    out = open(log, "ab")  # noqa: SIM115 - closed below
    try:
        base = shutil.which(PYTHON) or sys.executable
        subprocess.run([base, "-m", "venv", str(root)], check=True, stdout=out, stderr=out)
        pins = [
            f"keystone=={KEYSTONE_VERSION}",
            f"glance=={GLANCE_VERSION}",
            f"waitress=={WAITRESS_VERSION}",
        ]
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", *pins],
            check=True,
            stdout=out,
            stderr=out,
            timeout=900,
        )
    except subprocess.SubprocessError as exc:
        raise RuntimeError(f"building {root} failed ({exc}); pip's output is in {log}") from exc
    finally:
        out.close()
    stamp.write_text(" ".join(pins) + "\n")
    return python


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _json_request(
    url: str,
    *,
    method: str = "GET",
    body: Any = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """One HTTP request to 127.0.0.1 with a JSON body: (status, headers, decoded body)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("X-Auth-Token", token)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            raw = answer.read()
            status, headers = answer.status, dict(answer.headers)
    except urllib.error.HTTPError as error:
        raw = error.read()
        status, headers = error.code, dict(error.headers)
    try:
        return status, headers, json.loads(raw) if raw else None
    except ValueError:
        return status, headers, raw.decode("utf-8", "replace")


class RealCloud:
    """A configured Keystone + Glance pair in ``root``; :meth:`start` runs them, :meth:`stop`
    ends them (terminate, then kill after a timeout).
    """

    def __init__(self, root: Path, python: Path) -> None:
        self.root = root
        self.python = python
        self.keystone_port = free_port()
        self.glance_port = free_port()
        self.keystone_url = f"http://127.0.0.1:{self.keystone_port}/v3"
        self.glance_url = f"http://127.0.0.1:{self.glance_port}"
        self.processes: list[subprocess.Popen[bytes]] = []
        self._logs: list[Any] = []

    # -- configuration ----------------------------------------------------------------
    def _keystone_conf(self, name: str, expiration: int) -> str:
        """A keystone.conf on this cloud's database and keys; tokens live ``expiration`` s."""
        root = self.root
        return f"""[DEFAULT]
log_file = {root}/{name}.log
[database]
connection = sqlite:///{root}/keystone.sqlite
[token]
provider = fernet
expiration = {expiration}
[fernet_tokens]
key_repository = {root}/fernet-keys
[credential]
key_repository = {root}/credential-keys
"""

    def _manage(self, project: str, *args: str) -> None:
        """``keystone-manage`` / ``glance-manage`` through the venv's python (no shebangs:
        the virtualenv may have been moved)."""
        code = (
            f"import sys; from {project}.cmd.manage import main; "
            f"sys.argv[0] = '{project}-manage'; sys.exit(main())"
        )
        with open(self.root / f"{project}-manage.log", "ab") as log:
            subprocess.run(
                [str(self.python), "-c", code, *args],
                check=True,
                stdout=log,
                stderr=log,
                timeout=300,
            )

    def configure(self) -> None:
        """Write both services' configuration and create their databases and keys."""
        root = self.root
        for folder in ("fernet-keys", "credential-keys", "images", "staging", "glance"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        keystone_conf = root / "keystone.conf"
        keystone_conf.write_text(self._keystone_conf("keystone", TOKEN_LIFE))
        user, group = _user_and_group()
        ks = ("--config-file", str(keystone_conf))
        self._manage("keystone", *ks, "db_sync")
        self._manage(
            "keystone", *ks, "fernet_setup", "--keystone-user", user, "--keystone-group", group
        )
        self._manage(
            "keystone", *ks, "credential_setup", "--keystone-user", user, "--keystone-group", group
        )
        self._manage(
            "keystone",
            *ks,
            "bootstrap",
            "--bootstrap-password",
            ADMIN_PASSWORD,
            "--bootstrap-admin-url",
            self.keystone_url,
            "--bootstrap-public-url",
            self.keystone_url,
            "--bootstrap-internal-url",
            self.keystone_url,
            "--bootstrap-region-id",
            REGION,
        )
        paste = self.python.parent.parent / "etc" / "glance" / "glance-api-paste.ini"
        glance_conf = root / "glance" / "glance-api.conf"
        glance_conf.write_text(
            f"""[DEFAULT]
log_file = {root}/glance.log
enabled_import_methods = [glance-direct]
node_staging_uri = file://{root}/staging
worker_self_reference_url = {self.glance_url}
show_multiple_locations = false
[database]
connection = sqlite:///{root}/glance.sqlite
[glance_store]
stores = file
default_store = file
filesystem_store_datadir = {root}/images
[os_glance_staging_store]
filesystem_store_datadir = {root}/staging
[os_glance_tasks_store]
filesystem_store_datadir = {root}/tasks
[keystone_authtoken]
www_authenticate_uri = {self.keystone_url}
auth_url = {self.keystone_url}
auth_type = password
username = admin
password = {ADMIN_PASSWORD}
project_name = admin
user_domain_name = Default
project_domain_name = Default
# Validate every token with Keystone: a revoked token is refused at once (renewal tests).
token_cache_time = -1
[paste_deploy]
flavor = keystone
config_file = {paste}
"""
        )
        (root / "tasks").mkdir(exist_ok=True)
        self._manage("glance", "--config-file", str(glance_conf), "db_sync")

    # -- processes --------------------------------------------------------------------
    def _spawn(self, name: str, module: str, attribute: str, port: int, env: dict[str, str]):
        log = open(self.root / f"{name}.out", "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        process = subprocess.Popen(
            [str(self.python), "-c", SERVE, module, attribute, str(port)],
            stdout=log,
            stderr=log,
            env={**os.environ, **env},
            cwd=self.root,
        )
        self.processes.append(process)
        return process

    def _wait(self, url: str, process: subprocess.Popen[bytes], seconds: float = 120) -> None:
        """Until ``url`` answers anything below 500, bounded in time; fails with the log."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{url}: the server exited ({process.returncode})")
            try:
                status, _, _ = _json_request(url)
                if status < 500:
                    return
            except OSError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{url}: no answer within {seconds} s")

    def start(self) -> None:
        """Start Keystone, register Glance in its catalog, start Glance; wait for both."""
        keystone = self._spawn(
            "keystone",
            "keystone.server.wsgi",
            "initialize_public_application",
            self.keystone_port,
            {"OS_KEYSTONE_CONFIG_FILES": str(self.root / "keystone.conf")},
        )
        self._wait(self.keystone_url, keystone)
        token = self.admin_token()
        _, _, service = _json_request(
            f"{self.keystone_url}/services",
            method="POST",
            body={"service": {"type": "image", "name": "glance", "enabled": True}},
            token=token,
        )
        for interface in ("public", "internal", "admin"):
            status, _, body = _json_request(
                f"{self.keystone_url}/endpoints",
                method="POST",
                body={
                    "endpoint": {
                        "service_id": service["service"]["id"],
                        "interface": interface,
                        "region_id": REGION,
                        "url": self.glance_url,
                    }
                },
                token=token,
            )
            if status != 201:
                raise RuntimeError(f"creating the image endpoint: {status} {body}")
        glance = self._spawn(
            "glance",
            "glance.wsgi.api",
            "application",
            self.glance_port,
            {"OS_GLANCE_CONFIG_DIR": str(self.root / "glance")},
        )
        self._wait(f"{self.glance_url}/versions", glance)

    def admin_token(self, project: str = "admin") -> str:
        """A fresh project-scoped admin token (3600 s: keystoneauth renews under 120 s)."""
        return self.login("admin", ADMIN_PASSWORD, project)

    def login(
        self, user: str, password: str, project: str, *, keystone_url: str | None = None
    ) -> str:
        """A fresh token of ``user`` scoped to ``project`` (names in the Default domain),
        from ``keystone_url`` (default: the main Keystone)."""
        status, headers, body = _json_request(
            f"{keystone_url or self.keystone_url}/auth/tokens",
            method="POST",
            body={
                "auth": {
                    "identity": {
                        "methods": ["password"],
                        "password": {
                            "user": {
                                "name": user,
                                "domain": {"id": "default"},
                                "password": password,
                            }
                        },
                    },
                    "scope": {"project": {"name": project, "domain": {"id": "default"}}},
                }
            },
        )
        if status != 201:
            raise RuntimeError(f"Keystone login of {user!r}: {status} {body}")
        return headers["X-Subject-Token"]

    def short_lived_keystone(self, expiration: int) -> str:
        """A second Keystone on this cloud's database and fernet keys whose tokens live
        ``expiration`` s; its URL (``.../v3``). Stopped by :meth:`stop`.

        Its tokens are the same users' and projects' and carry the same catalog; the main
        Keystone (the one Glance asks) validates them too, since fernet tokens carry their
        own expiry and both share the keys. So one test can renew tokens without every
        other test's tokens being short.
        """
        name = f"keystone-{expiration}s"
        conf = self.root / f"{name}.conf"
        conf.write_text(self._keystone_conf(name, expiration))
        port = free_port()
        process = self._spawn(
            name,
            "keystone.server.wsgi",
            "initialize_public_application",
            port,
            {"OS_KEYSTONE_CONFIG_FILES": str(conf)},
        )
        url = f"http://127.0.0.1:{port}/v3"
        self._wait(url, process)
        return url

    def validate(self, token: str) -> tuple[int, Any]:
        """Keystone's own view of ``token`` (``GET /v3/auth/tokens``, as the admin):
        (status, the ``token`` document or the error body)."""
        status, _, body = _json_request(
            f"{self.keystone_url}/auth/tokens",
            token=self.admin_token(),
            headers={"X-Subject-Token": token},
        )
        return status, body["token"] if status == 200 else body

    def stop(self, seconds: float = 15) -> None:
        """Terminate every process started; kill what is still running after ``seconds``."""
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + seconds
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        for log in self._logs:
            log.close()
        self.processes.clear()


def _user_and_group() -> tuple[str, str]:
    import grp
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name


if __name__ == "__main__":
    print(ensure_venv().parent.parent)  # the virtualenv itself: what IMGFRAME_REAL_VENV names
