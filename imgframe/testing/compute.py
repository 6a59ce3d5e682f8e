"""Nova and Cinder on 127.0.0.1, and seeded servers and volumes that use a fleet's images.

:class:`ComputeEmulator` serves ``GET {compute}/servers/detail`` (Nova) and
``GET {volume}/volumes/detail`` (Cinder v3) over a :class:`Usage`, the way the real
services answer an auditor:

* **all_tenants.** Nova: an admin token with ``all_tenants`` sees every project's
  servers; without it, its own project's; a member token asking ``all_tenants`` gets
  ``403`` (policy ``os_compute_api:servers:detail:get_all_tenants``). Cinder: an admin
  with ``all_tenants`` sees every volume; a member's ``all_tenants`` is silently ignored
  (only its own project's volumes), and ``os-vol-tenant-attr:tenant_id`` is shown to
  admins only (policy ``volume_extension:volume_tenant_attribute``).
* **Paging.** Newest first (``created`` descending, then ``id``); ``limit`` (clamped to
  ``max_limit``), ``marker`` (an id not in the listing is ``400``), and a ``rel=next``
  link in ``servers_links`` / ``volumes_links`` when a page is full.
* **Servers booted from a volume** have ``"image": ""``; their image is the boot
  volume's ``volume_image_metadata.image_id``.

``fail_page=n`` makes the listing requests from the n-th on (counted over both services)
answer 503, the first ``fail_attempts`` of them (None: all, so the listing cannot end).
Self-contained like :mod:`imgframe.testing.emulator`: it imports nothing of the client.

Examples
--------
>>> import json, urllib.request
>>> from imgframe.testing import ADMIN_TOKEN, make_fleet
>>> usage = make_usage(make_fleet(50, seed=1), seed=1)
>>> with ComputeEmulator(usage) as nova:
...     request = urllib.request.Request(nova.compute_url + "/servers/detail?all_tenants=1",
...                                      headers={"X-Auth-Token": ADMIN_TOKEN})
...     body = json.load(urllib.request.urlopen(request))
>>> len(body["servers"]) == len(usage.servers)
True
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import orjson
from aiohttp import web

from imgframe.testing.fleet import FLEET_NOW, Fleet
from imgframe.testing.served import LocalServer

__all__ = [
    "ADMIN_PROJECT",
    "ComputeEmulator",
    "FakeServer",
    "FakeVolume",
    "Usage",
    "UsagePlanted",
    "make_usage",
]

#: The token the emulator knows as admin unless told otherwise (the Glance emulator's).
ADMIN_TOKEN = "admin-token"
#: The admin token's own project (what it sees without ``all_tenants``).
ADMIN_PROJECT = "admin-project"
RUNNING = "ACTIVE"
STOPPED = ("SHUTOFF", "SUSPENDED", "SHELVED", "SHELVED_OFFLOADED", "PAUSED", "STOPPED")
# Neither running nor stopped: an image they use is in use, but not "only stopped".
OTHER = ("ERROR", "BUILD", "REBOOT", "RESIZE", "MIGRATING")


@dataclass(slots=True)
class FakeServer:
    """One Nova server; ``image_id`` None means booted from a volume."""

    id: str
    name: str
    status: str
    image_id: str | None
    project_id: str
    created_at: datetime
    updated_at: datetime


@dataclass(slots=True)
class FakeVolume:
    """One Cinder volume; ``image_id`` is its ``volume_image_metadata`` (None: blank)."""

    id: str
    status: str
    image_id: str | None
    bootable: bool
    attached_servers: tuple[str, ...]
    project_id: str
    size_gb: int
    created_at: datetime


@dataclass(frozen=True)
class UsagePlanted:
    """The usage answers :func:`make_usage` planted, over the fleet's active, live images.

    ``unused``: no server in any state and no volume uses them. ``only_stopped_servers``:
    used by servers, every one of them stopped (some through a boot volume).
    ``through_volumes``: used only through volumes (a server booted from a volume made
    from it, or a volume alone), which a check of servers' ``image`` alone calls unused.
    ``other_projects``: used by a project other than the owner.
    """

    unused: frozenset[str]
    only_stopped_servers: frozenset[str]
    through_volumes: frozenset[str]
    other_projects: frozenset[str]


@dataclass
class Usage:
    """Servers and volumes over one fleet, with the answers they were built to have."""

    servers: list[FakeServer]
    volumes: list[FakeVolume]
    planted: UsagePlanted
    projects: tuple[str, ...] = field(default=())

    def __repr__(self) -> str:
        return f"Usage(servers={len(self.servers)}, volumes={len(self.volumes)})"


def make_usage(fleet: Fleet, *, seed: int = 0, unknown_images: int = 3) -> Usage:
    """Servers and volumes that use ``fleet``'s images, deterministically from ``seed``.

    Of the active, live images (status ``active``, not deleted) about a quarter are
    unused, a tenth used only by stopped servers, a tenth only through volumes (an
    active server booted from a volume made from the image, or a detached volume), a
    twentieth only by servers in ERROR/BUILD (decoys for ``only_stopped_servers``), the
    rest by at least one running server. Other images get servers and volumes at random
    (decoys: the rules never flag them). ``unknown_images`` servers use images that are
    not in the fleet. The answers are in :attr:`Usage.planted`.

    Examples
    --------
    >>> from imgframe.testing import make_fleet
    >>> usage = make_usage(make_fleet(200, seed=2), seed=2)
    >>> usage.planted.unused.isdisjoint(usage.planted.only_stopped_servers)
    True
    >>> make_usage(make_fleet(200, seed=2), seed=2) == usage
    True
    """
    # Not random.Random(seed): make_fleet's stream of the same seed would give the servers
    # the very ids its snapshots name in instance_uuid.
    rng = random.Random(f"make_usage:{seed}")
    projects = fleet.projects or ("p0",)
    servers: list[FakeServer] = []
    volumes: list[FakeVolume] = []
    unused: set[str] = set()
    only_stopped: set[str] = set()
    through: set[str] = set()
    others: set[str] = set()

    def new_id() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    def when() -> datetime:
        return FLEET_NOW - timedelta(seconds=rng.randrange(1, 3 * 365 * 86400))

    def project_for(owner: str | None, image_id: str) -> str:
        other = owner is None or rng.random() < 0.2
        project = rng.choice(projects) if other or owner is None else owner
        if project != owner:
            others.add(image_id)
        return project

    def server(image_id: str | None, status: str, project: str) -> FakeServer:
        created = when()
        made = FakeServer(
            new_id(), f"vm-{len(servers)}", status, image_id, project, created,
            created + timedelta(seconds=rng.randrange(0, 86400 * 30)),
        )  # fmt: skip
        servers.append(made)
        return made

    def volume(image_id: str | None, project: str, attached: tuple[str, ...]) -> None:
        status = "in-use" if attached else rng.choice(("available", "available", "error"))
        volumes.append(
            FakeVolume(new_id(), status, image_id, image_id is not None, attached, project,
                       rng.choice((10, 20, 40, 80)), when())
        )  # fmt: skip

    def boot_from_volume(image_id: str, status: str, project: str) -> None:
        made = server(None, status, project)
        volume(image_id, project, (made.id,))

    for image in fleet.images:
        owner = image.owner
        candidate = image.status == "active" and not image.deleted
        draw = rng.random()
        if not candidate:
            if draw < 0.5:  # decoys: the rules look at active, live images only
                for _ in range(rng.randint(1, 2)):
                    server(image.id, rng.choice(STOPPED), project_for(owner, image.id))
            continue
        if draw < 0.25:
            unused.add(image.id)
        elif draw < 0.35:
            only_stopped.add(image.id)
            for _ in range(rng.randint(1, 3)):
                status, project = rng.choice(STOPPED), project_for(owner, image.id)
                if rng.random() < 0.4:
                    boot_from_volume(image.id, status, project)
                else:
                    server(image.id, status, project)
        elif draw < 0.45:
            through.add(image.id)
            project = project_for(owner, image.id)
            if rng.random() < 0.6:
                boot_from_volume(image.id, RUNNING, project)
            else:
                volume(image.id, project, ())
        elif draw < 0.50:
            for _ in range(rng.randint(1, 2)):
                server(image.id, rng.choice(OTHER), project_for(owner, image.id))
        else:
            server(image.id, RUNNING, project_for(owner, image.id))
            for _ in range(rng.randint(0, 2)):
                server(image.id, rng.choice((RUNNING, *STOPPED)), project_for(owner, image.id))
    for _ in range(unknown_images):  # images long gone from the catalogue
        server(new_id(), RUNNING, rng.choice(projects))
    for _ in range(max(1, len(volumes) // 10)):  # blank volumes, from no image
        volume(None, rng.choice(projects), ())
    planted = UsagePlanted(
        frozenset(unused),
        frozenset(only_stopped),
        frozenset(through),
        frozenset(others - unused),
    )
    return Usage(servers, volumes, planted, tuple(projects))


def _stamp(value: datetime) -> str:
    # isoformat is ~5x faster than strftime and the same text for these naive UTC times.
    return value.isoformat(timespec="seconds") + "Z"


def _json(body: Any, status: int = 200) -> web.Response:
    # orjson: a page of 1,000 servers is ~0.5 MB of JSON, 15x faster than json.dumps, so
    # the emulator is not what a listing benchmark measures.
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _truthy(value: str) -> bool:
    # Nova and Cinder: all_tenants given and not a false spelling.
    return value.strip().lower() not in ("0", "false", "f", "no", "n", "off")


class ComputeEmulator(LocalServer):
    """Nova (``compute_url``) and Cinder v3 (``volume_url``) over one :class:`Usage`.

    ``tokens`` maps a token to its project; None is an admin (whose own project is
    :data:`ADMIN_PROJECT`). ``max_limit`` is the page size cap (Nova's
    ``max_limit``, Cinder's ``osapi_max_limit``). ``requests`` lists the
    ``(path, query)`` of each listing request served. Use it as a context manager, or
    :meth:`start` / :meth:`stop`.
    """

    what = "the compute emulator"
    shutdown_timeout = 0.2

    def __init__(
        self,
        usage: Usage,
        *,
        tokens: Mapping[str, str | None] | None = None,
        max_limit: int = 1000,
        fail_page: int | None = None,
        fail_attempts: int | None = None,
    ) -> None:
        super().__init__()
        self.usage = usage
        self.tokens: dict[str, str | None] = dict(tokens or {ADMIN_TOKEN: None})
        self.max_limit = max_limit
        self.fail_page = fail_page
        self.fail_attempts = fail_attempts
        self.failed = 0
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._pages = 0
        self._servers = sorted(usage.servers, key=lambda s: (s.created_at, s.id), reverse=True)
        self._volumes = sorted(usage.volumes, key=lambda v: (v.created_at, v.id), reverse=True)
        # Each view (service, project or everyone) with its id -> position, built on first
        # use: a marker found by a scan would make a listing of n items cost n^2 / page.
        self._views: dict[tuple[str, str | None], tuple[list[Any], dict[str, int]]] = {}

    @property
    def compute_url(self) -> str:
        """The ``compute`` endpoint, as a catalog gives it (``.../v2.1``)."""
        return f"{self.url}/compute/v2.1"

    @property
    def volume_url(self) -> str:
        """The ``volumev3`` endpoint, as a catalog gives it (``.../v3/{project_id}``)."""
        return f"{self.url}/volume/v3/{ADMIN_PROJECT}"

    def accept_token(self, token: str, project: str | None = None) -> None:
        """Accept ``token`` from now on: a member of ``project``, or an admin (None)."""
        self.tokens[token] = project

    # -- the services --

    def _who(self, request: web.Request) -> tuple[bool, str | None]:
        token = request.headers.get("X-Auth-Token", "")
        if token not in self.tokens:
            raise web.HTTPUnauthorized(
                text='{"error": {"code": 401, "message": "The request you have made requires '
                'authentication."}}',
                content_type="application/json",
            )
        project = self.tokens[token]
        return project is None, project if project is not None else ADMIN_PROJECT

    def _view(self, kind: str, project: str | None) -> tuple[list[Any], dict[str, int]]:
        # project None: every project's items.
        key = (kind, project)
        if key not in self._views:
            every = self._servers if kind == "servers" else self._volumes
            items = every if project is None else [i for i in every if i.project_id == project]
            self._views[key] = items, {item.id: n for n, item in enumerate(items)}
        return self._views[key]

    def _page(
        self, request: web.Request, view: tuple[list[Any], dict[str, int]], base: str, kind: str
    ) -> tuple[list[Any], list[dict[str, str]]]:
        items, positions = view
        query = dict(request.query)
        self.requests.append((request.path, query))
        self._pages += 1
        failing = self.fail_page is not None and self._pages >= self.fail_page
        if failing and (self.fail_attempts is None or self.failed < self.fail_attempts):
            self.failed += 1
            raise web.HTTPServiceUnavailable(text="{}", content_type="application/json")
        try:
            limit = min(int(query.get("limit", self.max_limit)), self.max_limit)
            if limit < 0:
                raise ValueError
        except ValueError:
            raise _bad_request("limit param must be an integer") from None
        start = 0
        marker = query.get("marker")
        if marker is not None:
            where = positions.get(marker)
            if where is None:
                raise _bad_request(f"marker [{marker}] not found")
            start = where + 1
        page = items[start : start + limit]
        links = []
        if page and len(page) == limit:
            following = {**query, "marker": page[-1].id}
            links.append({"rel": "next", "href": f"{base}/{kind}/detail?{urlencode(following)}"})
        return page, links

    async def _servers_detail(self, request: web.Request) -> web.Response:
        admin, project = self._who(request)
        everyone = _truthy(request.query.get("all_tenants", "0"))
        if "all_tenants" in request.query and everyone and not admin:
            refused = {
                "forbidden": {
                    "code": 403,
                    "message": "Policy doesn't allow os_compute_api:servers:detail:"
                    "get_all_tenants to be performed.",
                }
            }
            return _json(refused, status=403)
        view = self._view("servers", None if admin and everyone else project)
        compute = self.compute_url
        page, links = self._page(request, view, compute, "servers")
        images = f"{self.url}/compute/images/"
        body: dict[str, Any] = {"servers": [self._server(s, images, compute) for s in page]}
        if links:
            body["servers_links"] = links
        return _json(body)

    def _server(self, server: FakeServer, images: str, compute: str) -> dict[str, Any]:
        image: Any = ""
        if server.image_id is not None:
            link = images + server.image_id
            image = {"id": server.image_id, "links": [{"rel": "bookmark", "href": link}]}
        return {
            "id": server.id,
            "name": server.name,
            "status": server.status,
            "image": image,
            "flavor": {"id": "m1.small", "links": []},
            "tenant_id": server.project_id,
            "user_id": "u1",
            "created": _stamp(server.created_at),
            "updated": _stamp(server.updated_at),
            "addresses": {},
            "metadata": {},
            "links": [{"rel": "self", "href": f"{compute}/servers/{server.id}"}],
        }

    async def _volumes_detail(self, request: web.Request) -> web.Response:
        admin, project = self._who(request)
        # Cinder ignores all_tenants from a token that is not an admin.
        everyone = admin and _truthy(request.query.get("all_tenants", "0"))
        view = self._view("volumes", None if everyone else project)
        base = f"{self.url}/volume/v3/{request.match_info['project']}"
        page, links = self._page(request, view, base, "volumes")
        body: dict[str, Any] = {"volumes": [self._volume(v, admin) for v in page]}
        if links:
            body["volumes_links"] = links
        return _json(body)

    def _volume(self, volume: FakeVolume, admin: bool) -> dict[str, Any]:
        record: dict[str, Any] = {
            "id": volume.id,
            "name": None,
            "status": volume.status,
            "size": volume.size_gb,
            "bootable": "true" if volume.bootable else "false",
            "attachments": [
                {
                    "server_id": s,
                    "attachment_id": f"a-{s}",
                    "volume_id": volume.id,
                    "device": "/dev/vda",
                }
                for s in volume.attached_servers
            ],
            "created_at": volume.created_at.strftime("%Y-%m-%dT%H:%M:%S.000000"),
            "multiattach": False,
        }
        if volume.image_id is not None:
            record["volume_image_metadata"] = {"image_id": volume.image_id, "min_ram": "0"}
        if admin:
            record["os-vol-tenant-attr:tenant_id"] = volume.project_id
        return record

    # -- serving --

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/compute/v2.1/servers/detail", self._servers_detail)
        app.router.add_get("/volume/v3/{project}/volumes/detail", self._volumes_detail)


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=f'{{"badRequest": {{"code": 400, "message": "{message}"}}}}',
        content_type="application/json",
    )
