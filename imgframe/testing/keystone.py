"""A small Keystone v3 on 127.0.0.1: version discovery and ``POST /v3/auth/tokens``.

Enough of Keystone for keystoneauth1 and openstacksdk to log in with a password or an
application credential, get a token with an expiry and a service catalog, and find the
``image`` endpoint of a region. Each token it issues is also accepted by the Glance
emulators behind it (admin, same lifetime), as one Keystone serves several regions.

Examples
--------
>>> from imgframe.testing import GlanceEmulator, make_fleet
>>> with GlanceEmulator(make_fleet(1)) as glance, FakeKeystone({"RegionOne": glance}) as ks:
...     ks.url.startswith("http://127.0.0.1:"), ks.catalog[0][1]
(True, 'RegionOne')
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from imgframe.testing.compute import ComputeEmulator
from imgframe.testing.emulator import GlanceEmulator
from imgframe.testing.served import LocalServer

__all__ = ["FakeKeystone"]

PASSWORD = "pw-Sup3r-s3cret-9f1c"
APP_SECRET = "appcred-S3cret-77aa"
_STAMP = "%Y-%m-%dT%H:%M:%S.%fZ"


class FakeKeystone(LocalServer):
    """Keystone v3 password / application-credential logins for Glance emulators.

    ``regions`` maps a region name to the emulator that plays its Glance (its public
    ``image`` endpoint); ``extra_endpoints`` adds ``(interface, region, url)`` entries
    that no emulator serves. ``compute`` maps a region to the
    :class:`~imgframe.testing.compute.ComputeEmulator` that plays its Nova (``compute``)
    and Cinder (``volumev3``); its tokens are admins there too. Tokens live ``lifetime``
    seconds. ``issued`` lists the tokens given out, ``failed_logins`` counts refused
    logins. Use it as a context manager, or :meth:`start` / :meth:`stop`.
    """

    what = "the fake Keystone"

    def __init__(
        self,
        regions: Mapping[str, GlanceEmulator],
        *,
        lifetime: float = 3600.0,
        password: str = PASSWORD,
        app_secret: str = APP_SECRET,
        endpoint_suffix: str = "",
        extra_endpoints: Sequence[tuple[str, str, str]] = (),
        compute: Mapping[str, ComputeEmulator] | None = None,
    ) -> None:
        super().__init__()
        self.regions = dict(regions)
        self.compute = dict(compute or {})
        self.lifetime = lifetime
        self.password = password
        self.app_secret = app_secret
        self.endpoint_suffix = endpoint_suffix
        self.extra_endpoints = list(extra_endpoints)
        self.issued: list[str] = []
        self.failed_logins = 0

    @property
    def catalog(self) -> list[tuple[str, str, str]]:
        """The ``image`` endpoints as ``(interface, region, url)``."""
        served = [
            ("public", region, emulator.url + self.endpoint_suffix)
            for region, emulator in self.regions.items()
        ]
        return served + self.extra_endpoints

    def _version(self) -> dict[str, Any]:
        return {
            "id": "v3.14",
            "status": "stable",
            "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": f"{self.url}/v3/"}],
            "media-types": [
                {"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}
            ],
        }

    async def _root(self, request: web.Request) -> web.Response:
        return web.json_response({"versions": {"values": [self._version()]}}, status=300)

    async def _v3(self, request: web.Request) -> web.Response:
        return web.json_response({"version": self._version()})

    async def _tokens(self, request: web.Request) -> web.Response:
        identity = (await request.json())["auth"]["identity"]
        methods = identity["methods"]
        if methods == ["password"]:
            ok = identity["password"]["user"].get("password") == self.password
        elif methods == ["application_credential"]:
            ok = identity["application_credential"].get("secret") == self.app_secret
        else:
            ok = False
        if not ok:
            self.failed_logins += 1
            body = {"error": {"code": 401, "title": "Unauthorized", "message": "bad credentials"}}
            return web.json_response(body, status=401)
        seed = f"{self.url}:{len(self.issued)}".encode()
        token = "gAAAAK" + hashlib.blake2b(seed, digest_size=24).hexdigest()
        for emulator in self.regions.values():
            emulator.accept_token(token, "admin", admin=True, ttl_seconds=self.lifetime)
        for nova in self.compute.values():
            nova.accept_token(token)
        self.issued.append(token)
        now = datetime.now(UTC)
        endpoints = [
            {"id": f"e{i}", "interface": iface, "region": region, "region_id": region, "url": url}
            for i, (iface, region, url) in enumerate(self.catalog)
        ]
        body = {
            "token": {
                "methods": methods,
                "issued_at": now.strftime(_STAMP),
                "expires_at": (now + timedelta(seconds=self.lifetime)).strftime(_STAMP),
                "user": {"id": "u1", "name": "alice", "domain": {"id": "default"}},
                "project": {"id": "p1", "name": "demo", "domain": {"id": "default"}},
                "roles": [{"id": "r1", "name": "admin"}],
                "catalog": [
                    {"type": "image", "name": "glance", "id": "s-image", "endpoints": endpoints},
                    *self._compute_services(),
                ],
            }
        }
        return web.json_response(body, status=201, headers={"X-Subject-Token": token})

    def _compute_services(self) -> list[dict[str, Any]]:
        """The ``compute`` and ``volumev3`` catalog entries of the compute emulators."""
        services = []
        for kind, name, url_of in (
            ("compute", "nova", lambda c: c.compute_url),
            ("volumev3", "cinderv3", lambda c: c.volume_url),
        ):
            endpoints = [
                {"id": f"{kind}-{region}", "interface": "public", "region": region,
                 "region_id": region, "url": url_of(emulator)}
                for region, emulator in self.compute.items()
            ]  # fmt: skip
            if endpoints:
                services.append({"type": kind, "name": name, "id": f"s-{kind}",
                                 "endpoints": endpoints})  # fmt: skip
        return services

    def auth(self) -> dict[str, str]:
        """The ``auth`` section of a clouds.yaml entry that logs in here with a password."""
        return {
            "auth_url": f"{self.url}/v3",
            "username": "alice",
            "password": self.password,
            "project_name": "demo",
            "user_domain_name": "Default",
            "project_domain_name": "Default",
        }

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/", self._root)
        app.router.add_get("/v3", self._v3)
        app.router.add_get("/v3/", self._v3)
        app.router.add_post("/v3/auth/tokens", self._tokens)
