"""A real Glance v1 HTTP server over a synthetic fleet, for tests, demos and benchmarks.

``HEAD /v1/images/{id}`` answers byte for byte like a Queens-era Glance v1 behind eventlet:
metadata in ``X-Image-Meta-*`` headers, header names capitalised per hyphen-separated word
(eventlet's ``capitalize_response_headers``), non-ASCII values as raw UTF-8 bytes,
``Content-Type: text/html; charset=UTF-8`` and an explicit ``Content-Length: 0``.

Request pipeline, in the order a real deployment applies it::

    rate limit (429 above Faults.rate_limit requests/s, any path)
    -> version negotiation (300 when Faults.no_v1)
    -> latency -> hang / transient fault (a load balancer or rate limiter, before auth)
    -> X-Auth-Token or AK/SK signature (401) -> visibility (404) -> 200, possibly with
       malformed values

Also served: ``GET /v1/images`` and ``GET /v1/images/detail`` (listing), ``GET /v2/images``
(Glance v2 listing with ``next`` links), ``GET /v2/images/{id}`` (the v2 image document,
also in the "v1 removed" mode ``Faults(no_v1=True)``), ``GET /`` (300) and
``GET /versions`` (200) with the versions document.

With ``access_keys=`` it also accepts Huawei Cloud AK/SK signed requests
(``SDK-HMAC-SHA256``), checked by :mod:`imgframe.testing.apisign`, an implementation of
Huawei's published algorithm that shares no code with the SDK that signs.

Examples
--------
>>> import requests
>>> from imgframe.testing import make_fleet
>>> fleet = make_fleet(10, seed=1)
>>> with GlanceEmulator(fleet) as emu:
...     r = requests.head(f"{emu.url}/v1/images/{fleet.images[0].id}",
...                       headers={"X-Auth-Token": ADMIN_TOKEN})
>>> r.status_code, r.headers["X-Image-Meta-Id"] == fleet.images[0].id
(200, True)
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import ipaddress
import json
import random
import signal
import socket
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from imgframe.testing.apisign import AccessKey, access_key_of, verify
from imgframe.testing.fleet import (
    STATUSES,
    Fleet,
    FleetImage,
    FleetMember,
    make_fleet,
    v2_visibility,
)

__all__ = [
    "ADMIN_TOKEN",
    "MEMBER_LIES",
    "AccessKey",
    "Faults",
    "GlanceEmulator",
    "LoggedRequest",
    "Token",
    "render_headers",
    "run_forever",
    "serve",
]

ADMIN_TOKEN = "admin-token"
TRANSIENT_KINDS = ("429", "503", "500", "drop")
_HTML = "text/html; charset=UTF-8"
_JSON = "application/json"
_IMAGE_PREFIX = "/v1/images/"
_V2_IMAGE_PREFIX = "/v2/images/"
_MEMBERS_SUFFIX = "/members"
# Tags a v2 image may carry (drawn per image from a hash of its id).
_V2_TAGS = ("gold", "hardened", "cis-benchmarked", "legacy", "gpu")
# Applied per id when Faults.malformed_rate picks it: values a lax parser would misread.
_GARBAGE = (
    ("X-Image-Meta-Size", "12x"),
    ("X-Image-Meta-Is_public", "maybe"),
    ("X-Image-Meta-Created_at", "yesterday"),
    ("X-Image-Meta-Min_ram", "None"),
    ("X-Image-Meta-Protected", "perhaps"),
)
# Added to the draw with Faults.odd_values: values that look valid to a regex or to
# Python but not to pandas / pyarrow (out of range, signs, too many digits, Unicode
# digits, ISO week dates).
_ODD_GARBAGE = (
    ("X-Image-Meta-Deleted_at", "0001-01-01T00:00:00"),
    ("X-Image-Meta-Size", "+123"),
    ("X-Image-Meta-Virtual_size", "9999999999999999999"),
    ("X-Image-Meta-Min_ram", "\u0661\u0662\u0663"),
    ("X-Image-Meta-Updated_at", "2016-W01"),
)
#: The ways :attr:`Faults` can make a 200 answer lie, in the order they are drawn.
LIES = ("wrong-id", "duplicate-id", "no-metadata", "head-body")
# Stands for "the change's own time" in GlanceEmulator._update (deleted_at = updated_at).
_CHANGED_AT = object()
# updated_at moves forward by at least this much per change, even on a fleet dated ahead.
_TICK = timedelta(seconds=1)
# Seconds a change waits for the serving loop to run it.
_CHANGE_TIMEOUT = 30.0
#: The ways :attr:`Faults` can make a 200 members answer hostile (one drawn per id):
#: not JSON, not an object, no ``members`` key, ``members`` not a list, a member that is
#: not an object, a ``member_id`` that is not a string, one member twice with different
#: values, every member twice alike, ``can_share`` (v1) not a boolean, ``status`` (v2)
#: not a Glance status, members of another image (v2's ``image_id``), over 4 MiB.
MEMBER_LIES = (
    "not-json",
    "not-object",
    "no-members",
    "members-not-list",
    "member-not-object",
    "member-id-not-string",
    "conflicting-duplicate",
    "exact-duplicate",
    "can-share-not-bool",
    "unknown-status",
    "other-image",
    "huge",
)
# What a server that broke HTTP sends after the headers of a HEAD answer.
_HEAD_BODY = b"<html><body><h1>Image metadata</h1></body></html>\r\n"


# --- rendering --------------------------------------------------------------------------


def _capitalize(name: str) -> str:
    # eventlet.wsgi's capitalize_response_headers: capitalise each hyphen-separated word,
    # so "x-image-meta-property-os_distro" goes out as "X-Image-Meta-Property-Os_distro".
    return "-".join(part.capitalize() for part in name.split("-"))


def _wire(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()  # no fraction when microsecond == 0, like Glance
    return str(value)  # bools become True/False, ints decimal


def _meta_headers(image: FleetImage) -> list[tuple[str, str]]:
    """Headers of a 200 HEAD answer, without the per-request X-Openstack-Request-Id."""
    headers = [("Content-Type", _HTML), ("Content-Length", "0")]
    # Field order follows the vendor's sample response.
    for field, value in (
        ("Id", image.id),
        ("Deleted", image.deleted),
        ("Container_format", image.container_format),
        ("Checksum", image.checksum),
        ("Protected", image.protected),
        ("Min_disk", image.min_disk),
        ("Created_at", image.created_at),
        ("Size", image.size),
        ("Status", image.status),
        ("Is_public", image.is_public),
        ("Min_ram", image.min_ram),
        ("Owner", image.owner),
        ("Updated_at", image.updated_at),
        ("Disk_format", image.disk_format),
        ("Name", image.name),
        ("Virtual_size", image.virtual_size),
        ("Deleted_at", image.deleted_at),
    ):
        if value is not None:
            headers.append((f"X-Image-Meta-{field}", _wire(value)))
    for key, value in image.properties.items():
        headers.append((_capitalize(f"x-image-meta-property-{key.lower()}"), value))
    if image.checksum is not None:
        headers.append(("Etag", image.checksum))
    return headers


def _request_id() -> str:
    # Not secret; random.getrandbits is several times cheaper than uuid.uuid4().
    return f"req-{uuid.UUID(int=random.getrandbits(128), version=4)}"


def render_headers(image: FleetImage) -> list[tuple[str, str]]:
    """Render the headers a real Glance v1 sends for ``HEAD /v1/images/{id}`` (status 200).

    None fields are omitted, booleans are ``True``/``False``, timestamps are ISO 8601
    without a zone, properties keep ``''`` values, ``Etag`` appears only with a checksum.

    Examples
    --------
    >>> from imgframe.testing import make_fleet
    >>> image = make_fleet(1, seed=0).images[0]
    >>> headers = dict(render_headers(image))
    >>> headers["Content-Length"], headers["X-Image-Meta-Id"] == image.id
    ('0', True)
    >>> headers["X-Openstack-Request-Id"].startswith("req-")
    True
    """
    return [*_meta_headers(image), ("X-Openstack-Request-Id", _request_id())]


# --- configuration ----------------------------------------------------------------------


@dataclass(frozen=True)
class Faults:
    """Seeded fault injection; every decision is a hash of (seed, image id), never a stream.

    Because nothing depends on request order, concurrent clients see the same faults as
    sequential ones, and tests can ask which ids are affected. A hanging id is never also
    transient. Transient faults and hangs hit the first ``transient_attempts`` HEADs of an
    id; malformed values are sent on every answer. ``retry_after`` is the ``Retry-After``
    sent with 429 and 503 answers (None: no header): a number, a string sent as it is
    (``"nan"``, ``"inf"``, ``"-1"``, an HTTP date, garbage), or a tuple of those, one
    drawn per id.

    Hostile modes (a server that lies or breaks HTTP), drawn per id, for 200 answers:
    ``wrong_id_rate`` answers with another image's ``X-Image-Meta-Id`` (v2: ``"id"``),
    ``duplicate_id_rate`` adds a second, conflicting ``X-Image-Meta-Id``,
    ``no_metadata_rate`` sends no ``X-Image-Meta-*`` header at all, ``head_body_rate``
    writes a body after a HEAD answer's headers (on a kept-alive connection). One id
    gets at most one of them (:meth:`lie`). On every 200 HEAD answer,
    ``extra_properties`` adds that many custom properties and ``huge_value`` one
    property value of that many bytes. ``odd_values`` widens the malformed values with
    out-of-range and odd ones (year 1, ``+123``, 19 digits, Unicode digits, ISO weeks).

    ``rate_limit`` is the exception to "never a stream", as in a real API gateway: a
    token bucket of ``rate_limit`` requests per second, holding a tenth of a second's
    worth (at least 1), counts every request on arrival, whatever its path; a request
    that finds it empty is answered 429 (after ``latency``) and uses no token.

    ``list_fail_from`` is the other one, for a listing that breaks midway: counting the
    listing requests (``GET /v1/images[/detail]``, ``GET /v2/images``) since the start
    or :meth:`GlanceEmulator.reset_log`, request number ``list_fail_from`` and every
    later one (retries included) are answered ``list_fail_status`` (after ``latency``).

    ``no_changes_since`` plays a v1 server that does not take ``changes-since`` in a
    listing (answers 400 to it), which imgframe cannot rule out for every IMS deployment.

    ``ignore_sort`` plays a server that takes ``sort_key`` and ``sort_dir`` but lists
    newest first whatever they say.

    Members calls (``GET /v1|v2/images/{id}/members``), drawn per id: ``members_fail_rate``
    answers ``members_fail_status`` (500) to the first ``members_fail_attempts`` calls of
    an id (None: every one), ``members_hang_rate`` sleeps ``hang_seconds`` instead, and
    ``members_lie_rate`` sends a 200 spoiled in one of the ``members_lies`` ways
    (:data:`MEMBER_LIES`, :meth:`member_lie`). ``latency`` applies to them too.

    Examples
    --------
    >>> faults = Faults(transient_rate=0.5, seed=1)
    >>> ids = [f"id-{i}" for i in range(1000)]
    >>> 400 < sum(faults.transient_kind(i) is not None for i in ids) < 600
    True
    >>> faults.transient_kind("id-1") == Faults(transient_rate=0.5, seed=1).transient_kind("id-1")
    True
    """

    latency: float | tuple[float, float] = 0.0
    transient_rate: float = 0.0
    transient_attempts: int = 1
    transient_kinds: tuple[str, ...] = TRANSIENT_KINDS
    retry_after: float | str | tuple[float | str, ...] | None = 0.0
    hang_rate: float = 0.0
    hang_seconds: float = 30.0
    malformed_rate: float = 0.0
    odd_values: bool = False
    wrong_id_rate: float = 0.0
    duplicate_id_rate: float = 0.0
    no_metadata_rate: float = 0.0
    head_body_rate: float = 0.0
    extra_properties: int = 0
    huge_value: int = 0
    no_v1: bool = False
    rate_limit: float | None = None
    list_fail_from: int | None = None
    list_fail_status: int = 500
    no_changes_since: bool = False
    ignore_sort: bool = False
    members_fail_rate: float = 0.0
    members_fail_status: int = 500
    members_fail_attempts: int | None = None
    members_hang_rate: float = 0.0
    members_lie_rate: float = 0.0
    members_lies: tuple[str, ...] = MEMBER_LIES
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "transient_rate",
            "hang_rate",
            "malformed_rate",
            "wrong_id_rate",
            "duplicate_id_rate",
            "no_metadata_rate",
            "head_body_rate",
            "members_fail_rate",
            "members_hang_rate",
            "members_lie_rate",
        ):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {rate}")
        if self.transient_attempts < 0:
            raise ValueError("transient_attempts must be >= 0")
        unknown = set(self.transient_kinds) - set(TRANSIENT_KINDS)
        if unknown or not self.transient_kinds:
            raise ValueError(f"transient_kinds must be a non-empty subset of {TRANSIENT_KINDS}")
        low, high = self.latency if isinstance(self.latency, tuple) else (self.latency,) * 2
        if not 0 <= low <= high:
            raise ValueError(f"latency must be >= 0 (and low <= high), got {self.latency}")
        if self.rate_limit is not None and not self.rate_limit > 0:
            raise ValueError(f"rate_limit must be > 0 requests/s or None, got {self.rate_limit}")
        if self.list_fail_from is not None and self.list_fail_from < 1:
            raise ValueError(f"list_fail_from must be >= 1 or None, got {self.list_fail_from}")
        if self.extra_properties < 0 or self.huge_value < 0:
            raise ValueError("extra_properties and huge_value must be >= 0")
        if isinstance(self.retry_after, tuple) and not self.retry_after:
            raise ValueError("retry_after must not be an empty tuple")
        if not self.members_lies or set(self.members_lies) - set(MEMBER_LIES):
            raise ValueError(f"members_lies must be a non-empty subset of {MEMBER_LIES}")
        if self.members_fail_attempts is not None and self.members_fail_attempts < 0:
            raise ValueError("members_fail_attempts must be >= 0 or None")

    def members_failure(self, image_id: str) -> str | None:
        """``"hang"`` or ``"fail"`` for an id whose members calls hang or fail, else None.

        Examples
        --------
        >>> faults = Faults(members_fail_rate=0.5, seed=3)
        >>> 60 < sum(faults.members_failure(f"i{n}") == "fail" for n in range(200)) < 140
        True
        """
        if self._hit("members-hang", image_id, self.members_hang_rate):
            return "hang"
        if self._hit("members-fail", image_id, self.members_fail_rate):
            return "fail"
        return None

    def member_lie(self, image_id: str) -> str | None:
        """How the 200 members answers for this id are spoiled (one of
        ``members_lies``), or None.

        Examples
        --------
        >>> Faults(members_lie_rate=1.0, members_lies=("huge",)).member_lie("x")
        'huge'
        """
        if not self._hit("members-lie", image_id, self.members_lie_rate):
            return None
        lies = self.members_lies
        return lies[self._draw("members-lie-kind", image_id) % len(lies)]

    @property
    def has_image_faults(self) -> bool:
        """True when any per-image fault is configured (the server skips work otherwise)."""
        return bool(self.transient_rate or self.hang_rate or self.malformed_rate)

    @property
    def has_lies(self) -> bool:
        """True when any hostile mode of :meth:`lie` is configured."""
        return bool(self.wrong_id_rate or self.duplicate_id_rate or self.no_metadata_rate) or bool(
            self.head_body_rate
        )

    def lie(self, image_id: str) -> str | None:
        """How the 200 answers for this id lie (one of :data:`LIES`), or None.

        Examples
        --------
        >>> faults = Faults(wrong_id_rate=0.5, head_body_rate=1.0, seed=2)
        >>> kinds = {faults.lie(f"id-{i}") for i in range(200)}
        >>> sorted(kinds)
        ['head-body', 'wrong-id']
        """
        for kind, rate in zip(
            LIES,
            (
                self.wrong_id_rate,
                self.duplicate_id_rate,
                self.no_metadata_rate,
                self.head_body_rate,
            ),
            strict=True,
        ):
            if self._hit(kind, image_id, rate):
                return kind
        return None

    def retry_after_value(self, image_id: str) -> str | None:
        """The ``Retry-After`` header value sent for this id (None: no header).

        Examples
        --------
        >>> Faults(retry_after=0.25).retry_after_value("x")
        '0.25'
        >>> Faults(retry_after="nan").retry_after_value("x")
        'nan'
        >>> Faults(retry_after=("inf", 1)).retry_after_value("x") in ("inf", "1")
        True
        """
        value = self.retry_after
        if isinstance(value, tuple):
            value = value[self._draw("retry-after", image_id) % len(value)]
        if value is None or isinstance(value, str):
            return value
        return format(value, "g")

    def _draw(self, purpose: str, image_id: str) -> int:
        digest = hashlib.blake2b(
            f"{self.seed}\x00{purpose}\x00{image_id}".encode(), digest_size=8
        ).digest()
        return int.from_bytes(digest, "big")

    def _hit(self, purpose: str, image_id: str, rate: float) -> bool:
        return rate > 0 and self._draw(purpose, image_id) < rate * 2**64

    def is_hanging(self, image_id: str) -> bool:
        """Whether the first ``transient_attempts`` HEADs of this id sleep ``hang_seconds``."""
        return self._hit("hang", image_id, self.hang_rate)

    def transient_kind(self, image_id: str) -> str | None:
        """``"429"``, ``"503"``, ``"500"`` or ``"drop"`` for a transiently failing id, else None."""
        if not self._hit("transient", image_id, self.transient_rate) or self.is_hanging(image_id):
            return None
        kinds = self.transient_kinds
        return kinds[self._draw("kind", image_id) % len(kinds)]

    def is_malformed(self, image_id: str) -> bool:
        """Whether answers for this id always carry garbage in some typed headers."""
        return self._hit("malformed", image_id, self.malformed_rate)

    def malformed_headers(self, image_id: str) -> dict[str, str]:
        """The garbage header values sent for this id (empty when it is not malformed).

        Examples
        --------
        >>> faults = Faults(malformed_rate=1.0)
        >>> garbage = faults.malformed_headers("x")
        >>> 1 <= len(garbage) <= 5 and faults.malformed_headers("x") == garbage
        True
        """
        if not self.is_malformed(image_id):
            return {}
        garbage = _GARBAGE + _ODD_GARBAGE if self.odd_values else _GARBAGE
        bits = self._draw("garbage", image_id) % (2 ** len(garbage) - 1) + 1  # never empty
        return {name: value for i, (name, value) in enumerate(garbage) if bits >> i & 1}

    def other_id(self, image_id: str, ids: list[str]) -> str:
        """Another image's id for a lying answer about ``image_id`` (drawn from ``ids``)."""
        if len(ids) > 1:
            start = self._draw("other", image_id) % len(ids)
            for offset in range(len(ids)):
                other = ids[(start + offset) % len(ids)]
                if other.lower() != image_id.lower():
                    return other
        return str(uuid.UUID(int=self._draw("other", image_id) << 64 | 1, version=4))

    def delay(self, image_id: str, attempt: int) -> float:
        """Seconds to wait before answering this attempt (fixed or uniform in a range)."""
        if not isinstance(self.latency, tuple):
            return self.latency
        low, high = self.latency
        return low + (high - low) * self._draw(f"latency{attempt}", image_id) / 2**64


@dataclass
class Token:
    """What the emulator knows about a token: its project, role and lifetime.

    ``ttl_requests`` counts authenticated requests (the next one gets 401);
    ``ttl_seconds`` counts from when the emulator learned the token. Expiry is permanent.

    Examples
    --------
    >>> Token(project_id="p1", ttl_requests=3)
    Token(project_id='p1', admin=False, ttl_requests=3, ttl_seconds=None)
    """

    project_id: str
    admin: bool = False
    ttl_requests: int | None = None
    ttl_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    """One request as the emulator saw it; ``status`` 0 means no response was sent.

    Examples
    --------
    >>> LoggedRequest(0.0, "HEAD", "/v1/images/x", "x", 200, ADMIN_TOKEN).status
    200
    """

    t: float
    method: str
    path: str
    image_id: str | None
    status: int
    token: str | None
    access_key: str | None = None  # the AK of an AK/SK signed request


class _TokenState:
    __slots__ = ("expired", "issued_at", "token", "uses")

    def __init__(self, token: Token) -> None:
        self.token = token
        self.uses = 0
        self.issued_at = time.monotonic()
        self.expired = False


class _TokenBucket:
    """``rate`` requests per second with bursts of up to ``capacity``; not thread-safe
    (only the server's event loop uses it)."""

    __slots__ = ("capacity", "rate", "tokens", "updated")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate / 10)
        self.tokens = self.capacity
        self.updated = time.monotonic()

    def take(self, now: float) -> bool:
        """Whether a request arriving at ``now`` may pass (it then uses one token)."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class _Dropped(Exception):
    """Raised inside the handler to close the connection without any response."""


def _is_signature_key(key: str) -> bool:
    return key.lower().startswith("img_signature")


def _check_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the emulator only listens on loopback addresses, not {host!r}")


def _versions_document(base_url: str, *, v1: bool) -> bytes:
    if v1:  # Queens: the last release that still served v1
        ids = [("v2.6", "CURRENT")] + [(f"v2.{i}", "SUPPORTED") for i in range(5, -1, -1)]
        ids += [("v1.1", "DEPRECATED"), ("v1.0", "DEPRECATED")]
    else:  # Rocky and later
        ids = [("v2.7", "CURRENT")] + [(f"v2.{i}", "SUPPORTED") for i in range(6, -1, -1)]
    versions = [
        {
            "id": version,
            "status": status,
            "links": [{"rel": "self", "href": f"{base_url}/{version[:2]}/"}],
        }
        for version, status in ids
    ]
    return json.dumps({"versions": versions}).encode()


def _detail(image: FleetImage) -> dict[str, Any]:
    def iso(value: datetime | None) -> str | None:
        return None if value is None else value.isoformat()

    return {
        "status": image.status,
        "name": image.name,
        "deleted": image.deleted,
        "container_format": image.container_format,
        "created_at": iso(image.created_at),
        "disk_format": image.disk_format,
        "updated_at": iso(image.updated_at),
        "id": image.id,
        "owner": image.owner,
        "min_disk": image.min_disk,
        "protected": image.protected,
        "min_ram": image.min_ram,
        "checksum": image.checksum,
        "is_public": image.is_public,
        "deleted_at": iso(image.deleted_at),
        "properties": dict(image.properties),
        "size": image.size,
        "virtual_size": image.virtual_size,
    }


def _summary(image: FleetImage) -> dict[str, Any]:
    return {
        "id": image.id,
        "name": image.name,
        "size": image.size,
        "checksum": image.checksum,
        "container_format": image.container_format,
        "disk_format": image.disk_format,
    }


def _v2_time(value: datetime | None) -> str | None:
    # Glance v2 renders timestamps in UTC with a "Z" and no fraction.
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _v2_draw(image: FleetImage) -> int:
    return int.from_bytes(hashlib.sha256(f"v2:{image.id}".encode()).digest()[:8], "big")


_V2_VISIBILITIES = ("community", "public", "private", "shared", "all")


def _v2_visibility(image: FleetImage) -> str:
    """The fleet's v2 visibility (:func:`imgframe.testing.fleet.v2_visibility`): a label
    for who may see an image: the emulator's rules are v1's for all (members included);
    only the v2 listing's default hides other projects' community images."""
    return v2_visibility(image)


def _v2_tags(image: FleetImage) -> list[str]:
    draw = _v2_draw(image) >> 8
    return [tag for bit, tag in enumerate(_V2_TAGS) if draw >> bit & 1 and draw >> 10 & 1]


def _v2_image(image: FleetImage) -> dict[str, Any]:
    """An image as Glance v2 shows it: custom properties flattened into the top level."""
    hashed = image.checksum is not None  # Glance computes all hashes once data is uploaded
    body: dict[str, Any] = {
        "id": image.id,
        "name": image.name,
        "status": image.status,
        "visibility": _v2_visibility(image),
        "protected": image.protected,
        "checksum": image.checksum,
        "os_hash_algo": "sha512" if hashed else None,
        # A hash of the data: images planted as byte-identical (same checksum and size)
        # share it, as they do on a real Glance.
        "os_hash_value": hashlib.sha512(f"{image.checksum}/{image.size}".encode()).hexdigest()
        if hashed
        else None,
        "owner": image.owner,
        "size": image.size,
        "virtual_size": image.virtual_size,
        "min_ram": image.min_ram,
        "min_disk": image.min_disk,
        "disk_format": image.disk_format,
        "container_format": image.container_format,
        "created_at": _v2_time(image.created_at),
        "updated_at": _v2_time(image.updated_at),
        "tags": _v2_tags(image),
        "self": f"/v2/images/{image.id}",
        "file": f"/v2/images/{image.id}/file",
        "schema": "/v2/schemas/image",
    }
    if image.os_hidden:  # sent only when true, so the documents of other images stay as
        body["os_hidden"] = True  # they were before the fleet knew os_hidden
    for key, value in image.properties.items():
        body.setdefault(key, value)  # a property never shadows a core attribute
    return body


def _empty(status: int, extra: list[tuple[str, str]] | None = None) -> web.Response:
    # Content-Length must be explicit: aiohttp.web omits it on HEAD otherwise, and
    # aiohttp's client then closes the connection (aiohttp issue #1769).
    headers = [
        ("Content-Type", _HTML),
        ("Content-Length", "0"),
        ("X-Openstack-Request-Id", _request_id()),
    ]
    return web.Response(status=status, headers=headers + (extra or []))


def _body(status: int, body: bytes, content_type: str) -> web.Response:
    # Pass the body for HEAD too: aiohttp then sends the GET's Content-Length (keeping the
    # connection reusable) and never writes a body for HEAD.
    headers = {"Content-Type": content_type, "X-Openstack-Request-Id": _request_id()}
    return web.Response(status=status, body=body, headers=headers)


def _error(status: int, message: str, is_head: bool) -> web.Response:
    if is_head:
        return _empty(status)
    reason = web.Response(status=status).reason
    text = f"{status} {reason}\n\n{message}\n\n   "
    return _body(status, text.encode(), _HTML)


# --- the server -------------------------------------------------------------------------


class GlanceEmulator:
    """A Glance v1 server on 127.0.0.1, run in a background thread or in the foreground.

    Visibility: an admin token sees every image, deleted ones included; any other token
    sees its project's images and public ones. Everything else is 404, exactly as an
    unknown id. ``GET /v1/images[/detail]`` lists, newest first (``created_at`` then
    ``id`` descending, Glance's default), ``limit`` (default 25, clamped to
    ``api_limit_max``) and ``marker`` (the last id of the previous page; unknown or
    invisible -> 400); ``sort_key`` (``created_at`` or ``id``) and ``sort_dir`` (``asc``
    or ``desc``) order by (sort_key, created_at, id), one direction for all, as Glance
    does (v1 and v2). Like real v1 the body is only ``{"images": [...]}`` with no
    ``next`` link: a client asks for the next page with the last id as marker until it
    gets an empty page. Like Glance v1 (Queens) the default listing hides deleted *and
    killed* images, and ``changes-since=<ISO time>`` lists the images updated after it,
    deleted and killed ones included (seen by the same visibility rules as the rest);
    a ``deleted`` parameter is ignored, as Glance's v1 API drops it. ``GET /v2/images``
    lists the same images in the same order like Glance v2: the same ``limit`` and
    ``marker`` rules, the body ``{"images", "first", "schema"}`` plus ``next`` (the
    query with the last id as ``marker``) when the page is full, so more may follow;
    deleted images are never listed in v2. Faults apply to ``HEAD /v1/images/{id}``;
    ``latency`` also to lists.

    ``access_keys`` maps Huawei access key ids (AK) to an :class:`AccessKey` (or a
    ``(secret, project_id)`` pair, a non-admin key): a request without ``X-Auth-Token``
    that is validly signed with one of them (``SDK-HMAC-SHA256``, a signed
    ``X-Project-Id`` naming the key's project, ``X-Sdk-Date`` within 15 minutes) is
    served as a token of that project would be, admin keys as ``ADMIN_TOKEN``; anything
    else is 401, and why is appended to :attr:`signature_rejections`. Tokens keep working.

    ``ssl_context`` (a server-side :class:`ssl.SSLContext` with a certificate loaded)
    serves HTTPS instead of HTTP; :attr:`url` then starts with ``https://``.

    ``case_insensitive_ids=True`` finds an image by its id in any ASCII case and answers
    with the stored id, as a Glance on MySQL (case-insensitive collation) does.

    Examples
    --------
    >>> from imgframe.testing import make_fleet
    >>> with GlanceEmulator(make_fleet(3)) as emu:
    ...     emu.url.startswith("http://127.0.0.1:")
    True
    """

    def __init__(
        self,
        fleet: Fleet,
        *,
        faults: Faults = Faults(),
        tokens: Mapping[str, Token] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        api_limit_max: int = 1000,
        access_keys: Mapping[str, AccessKey | tuple[str, str]] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        case_insensitive_ids: bool = False,
    ) -> None:
        _check_loopback(host)
        self.ssl_context = ssl_context
        self.case_insensitive_ids = case_insensitive_ids
        if api_limit_max < 1:
            raise ValueError("api_limit_max must be >= 1")
        self.fleet = fleet
        self.faults = faults
        self.host = host
        self.api_limit_max = api_limit_max
        self._port = port
        self._bound_port: int | None = None
        self._images = fleet.by_id()
        self._lock = threading.Lock()
        self._tokens: dict[str, _TokenState] = {}
        for value, token in (
            tokens or {ADMIN_TOKEN: Token(project_id="admin", admin=True)}
        ).items():
            self._tokens[value] = _TokenState(token)
        self._issued = 0
        self._access_keys = {
            ak: key if isinstance(key, AccessKey) else AccessKey(*key)
            for ak, key in (access_keys or {}).items()
        }
        # One Token per access key: what a signed request is served as.
        self._key_tokens = {
            id(key): Token(key.project_id, admin=key.admin) for key in self._access_keys.values()
        }
        #: Why each rejected AK/SK request was refused, oldest first.
        self.signature_rejections: list[str] = []
        self._bucket: _TokenBucket | None = None  # made on first use, for Faults.rate_limit
        self._list_requests = 0  # for Faults.list_fail_from
        self._log: list[tuple[float, str, str, str | None, int, str | None, str | None]] = []
        self._attempts: dict[str, int] = {}
        self._member_attempts: dict[str, int] = {}  # for Faults.members_fail_attempts
        self._members_json: dict[tuple[str, str, str | None], bytes] = {}
        # Rendered lazily: a million-image fleet starts instantly and pays per image once.
        self._rendered: dict[str, list[tuple[str, str]]] = {}
        self._listing: list[FleetImage] | None = None
        # Each image's listing JSON, encoded once per render (_detail, _summary, _v2_image):
        # a page is then one join of cached bytes, not 1,000 dicts through json.dumps,
        # so a 1,000-image page costs the server ~0.1 ms instead of ~15 ms and a listing
        # benchmark measures the client (a real Glance renders in another process).
        self._listed_json: dict[tuple[Callable[[FleetImage], dict[str, Any]], str], bytes] = {}
        self._listing_pos: dict[str, int] = {}
        # The other orders a listing may ask for ((sort_key, sort_dir) -> images, positions).
        self._orders: dict[tuple[str, str], tuple[list[FleetImage], dict[str, int]]] = {}
        self._ids: list[str] | None = None  # for Faults.other_id, made on first use
        self._folded: dict[str, FleetImage] | None = None  # for case_insensitive_ids
        self._in_flight = 0  # only the server's event loop changes it
        self._max_in_flight = 0
        # For the changes between snapshots (publish, delete, add, ...).
        self._owns_fleet = False
        self._positions: dict[str, int] = {}  # id -> index in fleet.images, made on demand
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    # -- public API --

    @property
    def url(self) -> str:
        """Base URL without ``/v1``, e.g. ``http://127.0.0.1:54321``; needs a started server."""
        if self._bound_port is None:
            raise RuntimeError("the emulator is not running; call start() first")
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "http" if self.ssl_context is None else "https"
        return f"{scheme}://{host}:{self._bound_port}"

    def start(self) -> GlanceEmulator:
        """Serve from a daemon thread; returns once the socket is bound."""
        if self._thread is not None:
            raise RuntimeError("the emulator is already running")
        ready: concurrent.futures.Future[str] = concurrent.futures.Future()

        def run() -> None:
            try:
                self.run_forever(on_ready=ready.set_result)
            except BaseException as exc:  # surface bind errors in the caller's thread
                if not ready.done():
                    ready.set_exception(exc)
                else:
                    raise

        self._thread = threading.Thread(target=run, name="glance-emulator", daemon=True)
        self._thread.start()
        try:
            ready.result()
        except BaseException:
            self._thread.join()
            self._thread = None
            raise
        return self

    def stop(self) -> None:
        """Close the server and its connections and wait for the thread to finish."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stop.set)
        thread.join()
        self._thread = None

    def __enter__(self) -> GlanceEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def run_forever(
        self,
        on_ready: Callable[[str], object] | None = None,
        *,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    ) -> None:
        """Serve in this thread until :meth:`stop`, SIGTERM or Ctrl-C; prints nothing.

        ``on_ready(url)`` is called once the socket is bound.
        """
        # Runner cancels leftover tasks and closes the loop; Ctrl-C is a normal way out.
        with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=loop_factory) as r:
            r.run(self.serve(on_ready=on_ready))

    async def serve(self, on_ready: Callable[[str], object] | None = None) -> None:
        """Serve on the running loop until :meth:`stop` is called or the task is cancelled."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        # A short shutdown timeout: hanging handlers are cancelled, not waited for.
        runner = web.ServerRunner(server, shutdown_timeout=0.2)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self._port, ssl_context=self.ssl_context)
            await site.start()
            self._bound_port = runner.addresses[0][1]
            if on_ready is not None:
                on_ready(self.url)
            await self._stop.wait()
        finally:
            await runner.cleanup()
            self._bound_port = None
            self._loop = None

    def issue_token(
        self,
        project_id: str,
        *,
        admin: bool = False,
        ttl_requests: int | None = None,
        ttl_seconds: float | None = None,
    ) -> str:
        """Register a new token and return it (derived from seed and a counter; not secret).

        Examples
        --------
        >>> from imgframe.testing import make_fleet
        >>> emu = GlanceEmulator(make_fleet(1))
        >>> emu.issue_token("p1") != emu.issue_token("p1")
        True
        """
        with self._lock:
            self._issued += 1
            raw = f"{self.fleet.seed}:{self._issued}".encode()
            value = "gAAAAA" + hashlib.blake2b(raw, digest_size=24).hexdigest()
        return self.accept_token(
            value, project_id, admin=admin, ttl_requests=ttl_requests, ttl_seconds=ttl_seconds
        )

    def accept_token(
        self,
        value: str,
        project_id: str,
        *,
        admin: bool = False,
        ttl_requests: int | None = None,
        ttl_seconds: float | None = None,
    ) -> str:
        """Accept a token issued elsewhere (one Keystone in front of several regions).

        Examples
        --------
        >>> from imgframe.testing import make_fleet
        >>> GlanceEmulator(make_fleet(1)).accept_token("tok-1", "p1")
        'tok-1'
        """
        with self._lock:
            self._tokens[value] = _TokenState(
                Token(project_id, admin=admin, ttl_requests=ttl_requests, ttl_seconds=ttl_seconds)
            )
        return value

    @property
    def request_log(self) -> list[LoggedRequest]:
        """A snapshot of every request seen since start or :meth:`reset_log`, in order."""
        with self._lock:
            rows = list(self._log)
        return [LoggedRequest(*row) for row in rows]

    @property
    def max_in_flight(self) -> int:
        """The most requests the server was handling at once since start or
        :meth:`reset_log` (a request counts from its arrival until its answer is sent)."""
        return self._max_in_flight

    def attempts(self, image_id: str) -> int:
        """How many HEAD requests this image id has received."""
        with self._lock:
            return self._attempts.get(image_id, 0)

    def warm(self) -> None:
        """Render every image once (HEAD headers, v1 and v2 listing JSON), as the first
        requests would: a benchmark then times serving, not the emulator's first renders.

        Examples
        --------
        >>> from imgframe.testing import make_fleet
        >>> GlanceEmulator(make_fleet(3)).warm()
        """
        for image in self.fleet.images:
            if image.id not in self._rendered:
                self._render(image)
            for render in (_detail, _summary, _v2_image):
                self._json_list(render, [image])

    def reset_log(self, *, attempts: bool = False) -> None:
        """Forget logged requests (and, with ``attempts=True``, the per-id attempt counts,
        which re-arms transient faults)."""
        with self._lock:
            self._log.clear()
            self._list_requests = 0
            self._max_in_flight = self._in_flight
            if attempts:
                self._attempts.clear()
                self._member_attempts.clear()

    # -- changing the catalogue between snapshots --
    # Each change runs on the server's event loop (call_soon_threadsafe) while it serves:
    # a handler then never sees half of it, and the caches it reads (rendered headers,
    # listing JSON, listing orders) are updated before the next request is handled. The
    # Fleet given to the constructor is never changed: the first change copies its list
    # of images, and a changed image is a new FleetImage (the old one may be another
    # emulator's too); :attr:`fleet` is what this emulator serves now (its ``planted``
    # answers are those of the fleet as built).

    def publish(self, image_id: str) -> FleetImage:
        """Make an image public (v1 ``is_public`` True; v2 ``visibility`` public), as
        ``glance image-update --is-public True`` does; returns the changed image.

        Examples
        --------
        >>> from imgframe.testing import make_fleet
        >>> fleet = make_fleet(3, seed=1)
        >>> emu = GlanceEmulator(fleet)
        >>> image = emu.publish(fleet.images[0].id)
        >>> image.is_public, image.updated_at > fleet.images[0].updated_at, emu.fleet is fleet
        (True, True, False)
        """
        return self._update(image_id, is_public=True)

    def unpublish(self, image_id: str) -> FleetImage:
        """Make an image private (``is_public`` False); returns the changed image."""
        return self._update(image_id, is_public=False)

    def protect(self, image_id: str) -> FleetImage:
        """Protect an image from deletion (``protected`` True); returns the changed image."""
        return self._update(image_id, protected=True)

    def unprotect(self, image_id: str) -> FleetImage:
        """Remove an image's protection (``protected`` False); returns the changed image."""
        return self._update(image_id, protected=False)

    def change_owner(self, image_id: str, owner: str | None) -> FleetImage:
        """Give an image to another project (an admin's ``owner`` update); returns it."""
        return self._update(image_id, owner=owner)

    def set_status(self, image_id: str, status: str) -> FleetImage:
        """Set an image's status (``deactivated``, ``active``, ``killed``, ...); use
        :meth:`delete` for ``deleted`` and ``pending_delete``. Returns the changed image.

        Examples
        --------
        >>> from imgframe.testing import make_fleet
        >>> emu = GlanceEmulator(make_fleet(1))
        >>> emu.set_status(emu.fleet.images[0].id, "deactivated").status
        'deactivated'
        """
        if status in ("deleted", "pending_delete"):
            raise ValueError(f"use delete() to give an image the status {status!r}")
        if status not in STATUSES:
            raise ValueError(f"unknown image status {status!r}; choose from {STATUSES}")
        return self._update(image_id, status=status)

    def set_property(self, image_id: str, key: str, value: str | None) -> FleetImage:
        """Set a custom property (``value`` None removes it; removing a property the image
        does not have is a KeyError). Returns the changed image.

        Examples
        --------
        >>> from imgframe.testing import make_fleet
        >>> emu = GlanceEmulator(make_fleet(1))
        >>> emu.set_property(emu.fleet.images[0].id, "env", "prod").properties["env"]
        'prod'
        """

        def properties(image: FleetImage) -> dict[str, str]:
            if value is None:
                if key not in image.properties:
                    raise KeyError(f"image {image.id} has no property {key!r}")
                return {k: v for k, v in image.properties.items() if k != key}
            return {**image.properties, key: value}

        return self._update(image_id, properties=properties)

    def drop_signature(self, image_id: str) -> FleetImage:
        """Remove every ``img_signature*`` property (a ValueError if it has none);
        returns the changed image."""

        def properties(image: FleetImage) -> dict[str, str]:
            kept = {k: v for k, v in image.properties.items() if not _is_signature_key(k)}
            if len(kept) == len(image.properties):
                raise ValueError(f"image {image.id} has no img_signature* property")
            return kept

        return self._update(image_id, properties=properties)

    def delete(self, image_id: str, *, purge: bool = False) -> FleetImage:
        """Delete an image as Glance does: status ``deleted``, ``deleted`` True,
        ``deleted_at`` now. Then only admin tokens see it (v1 HEAD 200 with
        ``X-Image-Meta-Deleted: True``; every other token gets 404), v2 answers 404 to
        everyone, and listings leave it out unless asked for deleted images
        (``changes-since``, what ``include_deleted`` uses). ``purge=True`` removes it
        from the catalogue altogether (``glance-manage db purge``): 404 for everyone. A
        protected image cannot be deleted (ValueError, as Glance answers 403).

        Examples
        --------
        >>> from imgframe.testing import make_fleet
        >>> emu = GlanceEmulator(make_fleet(5, seed=2))
        >>> live = next(i for i in emu.fleet.images if not i.deleted and not i.protected)
        >>> emu.delete(live.id).status, len(emu.delete(live.id, purge=True).id) > 0
        ('deleted', True)
        >>> live.id in {image.id for image in emu.fleet.images}
        False
        """
        if purge:
            return self._on_loop(lambda: self._purge(image_id))

        def unless_protected(image: FleetImage) -> bool:  # the value of `deleted`
            if image.protected:
                raise ValueError(f"image {image.id} is protected: unprotect() it first")
            return True

        return self._update(
            image_id, deleted=unless_protected, status="deleted", deleted_at=_CHANGED_AT
        )

    def add(self, image: FleetImage) -> FleetImage:
        """Add a new image (its id must be new); returns it.

        Examples
        --------
        >>> import dataclasses
        >>> from imgframe.testing import make_fleet
        >>> emu = GlanceEmulator(make_fleet(2, seed=3))
        >>> new = dataclasses.replace(emu.fleet.images[0], id="new-image")
        >>> emu.add(new) is new, len(emu.fleet)
        (True, 3)
        """

        def apply() -> FleetImage:
            self._own_fleet()
            if image.id in self._images:
                raise ValueError(f"an image {image.id} exists already")
            self.fleet.images.append(image)
            self._images[image.id] = image
            self._reorder(image.id)
            return image

        return self._on_loop(apply)

    def _update(self, image_id: str, **changes: Any) -> FleetImage:
        """Replace the image by a copy with ``changes`` (a callable is given the image
        and returns the value) and ``updated_at`` moved forward; returns the copy."""

        def apply() -> FleetImage:
            self._own_fleet()
            image = self._images.get(image_id)
            if image is None:
                raise KeyError(f"no image {image_id!r} in this emulator")
            stamp = max(datetime.now(UTC).replace(tzinfo=None), image.updated_at + _TICK)
            values: dict[str, Any] = {
                name: stamp if value is _CHANGED_AT else value(image) if callable(value) else value
                for name, value in changes.items()
            }
            new = dataclasses.replace(image, **values, updated_at=stamp)
            self.fleet.images[self._positions[image_id]] = new
            self._images[image_id] = new
            self._forget(image_id)
            # Sorting keys (created_at, id) did not change: patch the orders in place.
            for images, positions in (self._listing, self._listing_pos), *self._orders.values():
                at = positions.get(image_id)
                if images is not None and at is not None:
                    images[at] = new
            return new

        return self._on_loop(apply)

    def _purge(self, image_id: str) -> FleetImage:
        self._own_fleet()
        image = self._images.pop(image_id, None)
        if image is None:
            raise KeyError(f"no image {image_id!r} in this emulator")
        del self.fleet.images[self._positions[image_id]]
        self._reorder(image_id)
        return image

    def _own_fleet(self) -> None:
        """Before the first change: a catalogue of this emulator's own (see above)."""
        if not self._owns_fleet:
            self.fleet = dataclasses.replace(self.fleet, images=list(self.fleet.images))
            self._images = dict(self._images)
            self._owns_fleet = True
        if not self._positions:
            self._positions = {image.id: n for n, image in enumerate(self.fleet.images)}

    def _forget(self, image_id: str) -> None:
        """Drop what was rendered of this image (HEAD headers, listing JSON, members)."""
        self._rendered.pop(image_id, None)
        for render in (_detail, _summary, _v2_image):
            self._listed_json.pop((render, image_id), None)
        # Keyed by (api, image, viewer): an owner change changes who sees every member.
        for key in [key for key in self._members_json if key[1] == image_id]:
            del self._members_json[key]
        self._folded = None

    def _reorder(self, image_id: str) -> None:
        """An image came or went: the listing orders and id lists are made again."""
        self._forget(image_id)
        self._listing, self._listing_pos, self._orders = None, {}, {}
        self._ids = None
        self._positions = {}

    def _on_loop(self, change: Callable[[], FleetImage]) -> FleetImage:
        """Run ``change`` on the serving loop and wait for it (here when not serving)."""
        loop = self._loop
        if loop is None or not loop.is_running():  # not serving: nothing reads the caches
            return change()
        with contextlib.suppress(RuntimeError):  # no running loop in this thread
            if asyncio.get_running_loop() is loop:
                return change()
        done: concurrent.futures.Future[FleetImage] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(change())
            except BaseException as exc:
                done.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return done.result(timeout=_CHANGE_TIMEOUT)

    # -- request handling --

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        arrived = time.monotonic()
        path = request.path
        token = request.headers.get("X-Auth-Token")
        image_id = path[len(_IMAGE_PREFIX) :] if path.startswith(_IMAGE_PREFIX) else None
        if image_id is not None and ("/" in image_id or image_id in ("", "detail")):
            image_id = None
        status = 0
        self._in_flight += 1
        if self._in_flight > self._max_in_flight:
            self._max_in_flight = self._in_flight
        try:
            if self.faults.rate_limit is not None and not self._within_rate(arrived):
                response: web.StreamResponse = await self._too_many(path)
            elif image_id is not None:
                response = await self._image(request, image_id, token)
            else:
                response = await self._other(request, path, token)
            status = response.status
            return response
        except _Dropped:
            # Nothing has been written yet, so the client sees EOF instead of a status line
            # (aiohttp: ServerDisconnectedError). aiohttp.web then fails to write the
            # placeholder below and files it as a client disconnect, without logging.
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)
        finally:
            self._in_flight -= 1
            access = None
            if token is None and self._access_keys:
                access = access_key_of(request.headers.get("Authorization"))
            with self._lock:
                self._log.append((arrived, request.method, path, image_id, status, token, access))

    def _within_rate(self, arrived: float) -> bool:
        rate = self.faults.rate_limit
        assert rate is not None
        if self._bucket is None or self._bucket.rate != rate:  # faults may be swapped live
            self._bucket = _TokenBucket(rate)
        return self._bucket.take(arrived)

    async def _too_many(self, path: str) -> web.Response:
        faults = self.faults
        if faults.latency:  # the answer still crosses the network
            await asyncio.sleep(faults.delay(path, 0))
        extra = []
        retry_after = faults.retry_after_value(path)
        if retry_after is not None:
            extra.append(("Retry-After", retry_after))
        return _empty(429, extra)

    async def _image(
        self, request: web.BaseRequest, image_id: str, token: str | None
    ) -> web.StreamResponse:
        method = request.method
        faults = self.faults
        if faults.no_v1:
            return _body(300, _versions_document(_base(request), v1=False), _JSON)
        with self._lock:
            attempt = self._attempts.get(image_id, 0) + 1
            self._attempts[image_id] = attempt
        if faults.latency:
            await asyncio.sleep(faults.delay(image_id, attempt))
        if method != "HEAD":
            # Image data is not emulated; only metadata (HEAD) is.
            return web.Response(status=405, headers={"Allow": "HEAD"})
        if faults.has_image_faults and attempt <= faults.transient_attempts:
            if faults.is_hanging(image_id):
                await asyncio.sleep(faults.hang_seconds)
            else:
                kind = faults.transient_kind(image_id)
                if kind == "drop":
                    raise _Dropped
                if kind is not None:
                    extra = []
                    retry_after = faults.retry_after_value(image_id)
                    if kind != "500" and retry_after is not None:
                        extra.append(("Retry-After", retry_after))
                    return _empty(int(kind), extra)
        who = self._authenticate(token, request)
        if who is None:
            return _empty(401)
        image = self._find(image_id)
        if image is None or not _visible(image, who):
            return _empty(404)
        headers = self._rendered.get(image_id)
        if headers is None:
            headers = self._render(image)
        headers = [*headers, ("X-Openstack-Request-Id", _request_id())]
        lie = faults.lie(image_id) if faults.has_lies else None
        if lie is None:
            return web.Response(headers=headers)
        return await self._lie(request, image_id, headers, lie)

    async def _lie(
        self, request: web.BaseRequest, image_id: str, headers: list[tuple[str, str]], lie: str
    ) -> web.StreamResponse:
        """A 200 HEAD answer that lies about ``image_id`` in the way ``lie`` names."""
        other = self.faults.other_id(image_id, self._id_list())
        if lie == "wrong-id":
            headers = [(k, other if k == "X-Image-Meta-Id" else v) for k, v in headers]
        elif lie == "duplicate-id":
            at = next(i for i, (k, _) in enumerate(headers) if k == "X-Image-Meta-Id") + 1
            headers.insert(at, ("X-Image-Meta-Id", other))
        elif lie == "no-metadata":
            headers = [(k, v) for k, v in headers if not k.startswith("X-Image-Meta-")]
        else:  # head-body: aiohttp.web never writes a body for HEAD, so write it raw
            headers = [(k, v) for k, v in headers if k != "Content-Length"]
            headers.append(("Content-Length", str(len(_HEAD_BODY))))
            response = web.StreamResponse(headers=headers)
            # Corked, headers and body leave in one segment, so the client reads them
            # together: the same answer every run (a late body is another race).
            # A client that gave up on this connection after the last broken answer may
            # have closed it already: nothing to answer then.
            with _corked(request.transport), contextlib.suppress(ConnectionResetError):
                await response.prepare(request)  # type: ignore[arg-type]
                if request.transport is not None:
                    request.transport.write(_HEAD_BODY)
            return response
        return web.Response(headers=headers)

    def _find(self, image_id: str) -> FleetImage | None:
        image = self._images.get(image_id)
        if image is None and self.case_insensitive_ids:
            if self._folded is None:
                self._folded = {i.id.lower(): i for i in self.fleet.images if i.id.isascii()}
            image = self._folded.get(image_id.lower()) if image_id.isascii() else None
        return image

    def _id_list(self) -> list[str]:
        if self._ids is None:
            self._ids = [image.id for image in self.fleet.images]
        return self._ids

    def _render(self, image: FleetImage) -> list[tuple[str, str]]:
        faults = self.faults
        headers = _meta_headers(image)
        garbage = faults.malformed_headers(image.id)
        if garbage:
            headers = [(k, v) for k, v in headers if k not in garbage]
            headers[2:2] = garbage.items()  # right after Content-Type / Content-Length
        for number in range(faults.extra_properties):
            headers.append((f"X-Image-Meta-Property-Extra_{number:04d}", f"value {number}"))
        if faults.huge_value:
            headers.append(("X-Image-Meta-Property-Huge", "x" * faults.huge_value))
        self._rendered[image.id] = headers
        return headers

    async def _other(self, request: web.BaseRequest, path: str, token: str | None) -> web.Response:
        is_head = request.method == "HEAD"
        if path in ("", "/", "/versions"):
            # Glance answers "/" with 300 Multiple Choices and "/versions" with 200.
            status = 200 if path == "/versions" else 300
            body = _versions_document(_base(request), v1=not self.faults.no_v1)
            return _body(status, body, _JSON)
        if (
            path.endswith(_MEMBERS_SUFFIX)
            and path.count("/") == 4
            and path.startswith((_IMAGE_PREFIX, _V2_IMAGE_PREFIX))
            and len(path) > len(_IMAGE_PREFIX) + len(_MEMBERS_SUFFIX)
        ):
            api = path[1:3]
            if api == "v1" and self.faults.no_v1:
                return _body(300, _versions_document(_base(request), v1=False), _JSON)
            image_id = path[len(_IMAGE_PREFIX) : -len(_MEMBERS_SUFFIX)]
            return await self._members(request, api, image_id, token)
        if path.startswith(_V2_IMAGE_PREFIX) and path.count("/") == 3 and path[11:]:
            return await self._image_v2(request, path[len(_V2_IMAGE_PREFIX) :], token)
        if path.rstrip("/") == "/v2/images":
            if request.method not in ("GET", "HEAD"):
                return web.Response(status=405, headers={"Allow": "GET, HEAD"})
            if self.faults.latency:
                await asyncio.sleep(self.faults.delay(path, 0))
            if self._listing_fails():
                return _error(self.faults.list_fail_status, "Listing failed.", is_head)
            who = self._authenticate(token, request)
            if who is None:
                return _error(401, "This server could not verify that you are authorized.", is_head)
            return self._list_v2(request, who)
        if not path.startswith("/v1/"):
            return _error(404, "The resource could not be found.", is_head)
        if self.faults.no_v1:
            return _body(300, _versions_document(_base(request), v1=False), _JSON)
        if path.rstrip("/") not in ("/v1/images", "/v1/images/detail"):
            return _error(404, "The resource could not be found.", is_head)
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={"Allow": "GET, HEAD"})
        if self.faults.latency:
            await asyncio.sleep(self.faults.delay(path, 0))
        if self._listing_fails():
            return _error(self.faults.list_fail_status, "Listing failed.", is_head)
        who = self._authenticate(token, request)
        if who is None:
            return _error(401, "This server could not verify that you are authorized.", is_head)
        return self._list(request, who, detail=path.rstrip("/").endswith("/detail"))

    def _listing_fails(self) -> bool:
        """Count this listing request; True when Faults.list_fail_from says it fails."""
        with self._lock:
            self._list_requests += 1
            number = self._list_requests
        fail_from = self.faults.list_fail_from
        return fail_from is not None and number >= fail_from

    async def _image_v2(
        self, request: web.BaseRequest, image_id: str, token: str | None
    ) -> web.Response:
        """``GET /v2/images/{id}``: the image document, or 404 (deleted ones included, for
        admins too, as v2 does); the same token and visibility rules as v1's HEAD."""
        is_head = request.method == "HEAD"
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={"Allow": "GET, HEAD"})
        if self.faults.latency:
            await asyncio.sleep(self.faults.delay(image_id, 1))
        who = self._authenticate(token, request)
        if who is None:
            return _error(401, "This server could not verify that you are authorized.", is_head)
        image = self._find(image_id)
        if image is None or image.deleted or not _visible(image, who):
            return _error(404, f"No image found with ID {image_id}", is_head)
        document = _v2_image(image)
        if self.faults.wrong_id_rate and self.faults.lie(image_id) == "wrong-id":
            document["id"] = self.faults.other_id(image_id, self._id_list())
        return _body(200, json.dumps(document).encode(), _JSON)

    async def _members(
        self, request: web.BaseRequest, api: str, image_id: str, token: str | None
    ) -> web.Response:
        """``GET /v1|v2/images/{id}/members``, with Glance's semantics: 404 for an image
        the token may not see (v1: also a deleted one; v2: any deleted one), v2's 403
        for an image that is not "shared", and the members the token may know (an
        admin and the owner every member, a member project only its own membership:
        ``_image_member_find`` in glance/db/sqlalchemy/api.py)."""
        is_head = request.method == "HEAD"
        if request.method != "GET":
            return web.Response(status=405, headers={"Allow": "GET"})
        faults = self.faults
        with self._lock:
            attempt = self._member_attempts.get(image_id, 0) + 1
            self._member_attempts[image_id] = attempt
        if faults.latency:
            await asyncio.sleep(faults.delay(image_id, attempt))
        failing = faults.members_failure(image_id)
        if failing is not None and (
            faults.members_fail_attempts is None or attempt <= faults.members_fail_attempts
        ):
            if failing == "hang":
                await asyncio.sleep(faults.hang_seconds)
            else:
                return _error(faults.members_fail_status, "Members failed.", is_head)
        who = self._authenticate(token, request)
        if who is None:
            return _error(401, "This server could not verify that you are authorized.", is_head)
        image = self._find(image_id)
        gone = image is not None and (image.deleted if api == "v2" else image.status == "deleted")
        if image is None or gone or not _visible(image, who):
            return _error(404, f"Image with identifier {image_id} not found", is_head)
        if api == "v2" and _v2_visibility(image) != "shared":
            why = "Only shared images have members."
            return _error(403, f"Not allowed to list members for image {image.id}: {why}", is_head)
        whole = who.admin or image.owner == who.project_id
        lie = faults.member_lie(image_id) if faults.members_lie_rate else None
        key = (api, image.id, None if whole else who.project_id)
        if lie is None:
            # Encoded once per image and viewer, as HEAD headers are (_rendered): a
            # benchmark then times the client, not the emulator's json.dumps.
            cached = self._members_json.get(key)
            if cached is not None:
                return _body(200, cached, _JSON)
        members = list(image.members)
        if not whole:
            members = [m for m in members if m.member_id == who.project_id]
        # Not sorted the way imgframe sorts: the client must not depend on the order.
        members.sort(key=lambda m: hashlib.blake2b(m.member_id.encode(), digest_size=4).digest())
        if api == "v1":
            listed: list[Any] = [
                {"member_id": m.member_id, "can_share": m.can_share} for m in members
            ]
        else:
            stamp = _v2_time(image.created_at)
            listed = [
                {
                    "created_at": stamp,
                    "image_id": image.id,
                    "member_id": m.member_id,
                    "schema": "/v2/schemas/member",
                    "status": m.status,
                    "updated_at": stamp,
                }
                for m in members
            ]
        if lie is None:
            document: Any = {"members": listed}
            if api == "v2":
                document["schema"] = "/v2/schemas/members"
            body = self._members_json[key] = json.dumps(document).encode()
            return _body(200, body, _JSON)
        return _body(200, self._member_lie(api, image, listed, lie), _JSON)

    def _member_lie(
        self, api: str, image: FleetImage, listed: list[dict[str, Any]], lie: str
    ) -> bytes:
        """The body of a members answer spoiled the way ``lie`` (:data:`MEMBER_LIES`) says."""
        extra: dict[str, Any] = {
            "member_id": "stranger",
            "image_id": image.id,
            "status": "accepted",
            "can_share": False,
        }
        document: Any = {"members": listed}
        if lie == "not-json":
            return b'{"members": [{"member_id": '
        if lie == "not-object":
            document = listed
        elif lie == "no-members":
            document = {"schema": "/v2/schemas/members"}
        elif lie == "members-not-list":
            document = {"members": {"member_id": "stranger"}}
        elif lie == "member-not-object":
            document["members"] = [*listed, "stranger"]
        elif lie == "member-id-not-string":
            document["members"] = [*listed, {**extra, "member_id": 12345}]
        elif lie == "conflicting-duplicate":
            document["members"] = [
                *listed,
                extra,
                {**extra, "status": "rejected", "can_share": True},
            ]
        elif lie == "exact-duplicate":
            document["members"] = listed + listed
        elif lie == "can-share-not-bool":
            document["members"] = [{**m, "can_share": "maybe"} for m in listed]
        elif lie == "unknown-status":
            document["members"] = [{**m, "status": "approved"} for m in listed]
        elif lie == "other-image":
            other = self.faults.other_id(image.id, self._id_list())
            document["members"] = [{**m, "image_id": other} for m in [*listed, extra]]
        else:  # huge: a members list over 4 MiB
            padding = "x" * 1000
            document["members"] = [
                {**extra, "member_id": f"m{number:05d}", "padding": padding}
                for number in range(4400)
            ]
        return json.dumps(document).encode()

    def _page(
        self,
        request: web.BaseRequest,
        who: Token,
        show_deleted: bool,
        bad_marker: str,
        keep: Callable[[FleetImage], bool] | None = None,
    ) -> tuple[list[FleetImage], int] | web.Response:
        """One listing page (v1 and v2 page alike): the images and the clamped limit, or
        the 400 answer for a bad ``limit`` or ``marker``. ``keep`` filters the listed
        images further; a marker need only be visible (Glance looks it up by id)."""
        is_head = request.method == "HEAD"
        query = request.query
        try:
            limit = int(query.get("limit", "25"))
        except ValueError:
            return _error(400, "limit param must be an integer", is_head)
        if limit < 0:
            return _error(400, "limit param must be positive", is_head)
        limit = min(limit, self.api_limit_max)
        sort_key = query.get("sort_key", "created_at")
        sort_dir = query.get("sort_dir", "desc")
        if sort_dir not in ("asc", "desc"):
            return _error(400, f"Invalid sort direction: {sort_dir}", is_head)
        if sort_key not in _SORT_KEYS:
            return _error(400, f"Unsupported sort_key: {sort_key}", is_head)
        if self.faults.ignore_sort:
            sort_key, sort_dir = "created_at", "desc"
        ordered, position = self._ordered(sort_key, sort_dir)
        start = 0
        marker = query.get("marker")
        if marker is not None:
            index = position.get(marker)
            if index is None or not _listable(ordered[index], who, show_deleted):
                return _error(400, bad_marker.format(marker=marker), is_head)
            start = index + 1
        page: list[FleetImage] = []
        # Index, not a slice: slicing would copy up to a million references per page.
        for index in range(start, len(ordered) if limit else start):
            image = ordered[index]
            if _listable(image, who, show_deleted) and (keep is None or keep(image)):
                page.append(image)
                if len(page) >= limit:
                    break
        return page, limit

    def _list(self, request: web.BaseRequest, who: Token, *, detail: bool) -> web.Response:
        # Glance v1 (Queens): the API drops a ``deleted`` parameter (not one of its
        # SUPPORTED_FILTERS); the registry then filters deleted=False, which the database
        # reads as "not deleted and not killed", unless ``changes-since`` is given, which
        # lists everything updated after it, deleted and killed images included.
        keep: Callable[[FleetImage], bool]
        since_text = request.query.get("changes-since")
        if since_text is None:
            show_deleted = False

            def keep(image: FleetImage) -> bool:
                return image.status != "killed"
        else:
            if self.faults.no_changes_since:
                return _error(400, "Unsupported filter: changes-since", request.method == "HEAD")
            since = _parse_changes_since(since_text)
            if since is None:
                return _error(400, "Unrecognized changes-since value", request.method == "HEAD")
            show_deleted = True

            def keep(image: FleetImage) -> bool:
                return image.updated_at > since

        found = self._page(request, who, show_deleted, "marker not found", keep)
        if isinstance(found, web.StreamResponse):
            return found
        render = _detail if detail else _summary
        return _body(200, b'{"images": [' + self._json_list(render, found[0]) + b"]}", _JSON)

    def _list_v2(self, request: web.BaseRequest, who: Token) -> web.Response:
        # Glance v2 (glance/api/v2/images.py index, glance/db/sqlalchemy/api.py
        # _image_get_all): os_hidden is always a filter, false unless "true" is asked;
        # without a visibility, community images are listed only to their owner (an
        # admin too); "all" lists every visibility. member_status (default accepted)
        # keeps the images shared with the token's project in that membership status.
        is_head = request.method == "HEAD"
        hidden_text = request.query.get("os_hidden", "false").lower()
        if hidden_text not in ("true", "false"):
            return _error(400, f"Invalid value {hidden_text!r} for 'os_hidden' filter.", is_head)
        visibility = request.query.get("visibility")
        if visibility is not None and visibility not in _V2_VISIBILITIES:
            return _error(400, f"Invalid visibility value: {visibility}", is_head)
        member_status = request.query.get("member_status", "accepted")
        if member_status not in ("pending", "accepted", "rejected", "all"):
            return _error(400, f"Invalid status: {member_status}", is_head)
        hidden = hidden_text == "true"

        def keep(image: FleetImage) -> bool:
            if image.os_hidden != hidden:
                return False
            if not who.admin and not image.is_public and image.owner != who.project_id:
                member = _member_of(image, who)
                if member is not None and member_status not in ("all", member.status):
                    return False
            label = _v2_visibility(image)
            if visibility is None:
                return label != "community" or image.owner == who.project_id
            return visibility == "all" or label == visibility

        found = self._page(
            request, who, False, "Invalid marker. Image {marker} could not be found.", keep
        )
        if isinstance(found, web.StreamResponse):
            return found
        images, limit = found
        # Like Glance's serializer: "first" is the query without the marker; "next" is the
        # same query with the last id as marker, present only when the page is full.
        params = {key: value for key, value in request.query.items() if key != "marker"}
        rest: dict[str, Any] = {
            "first": "/v2/images" + (f"?{urlencode(params)}" if params else ""),
            "schema": "/v2/schemas/images",
        }
        if images and len(images) == limit:
            rest["next"] = "/v2/images?" + urlencode({**params, "marker": images[-1].id})
        # The bytes json.dumps({"images": [...], **rest}) would give.
        body = b'{"images": [' + self._json_list(_v2_image, images) + b"], "
        return _body(200, body + json.dumps(rest).encode()[1:], _JSON)

    def _json_list(
        self, render: Callable[[FleetImage], dict[str, Any]], images: list[FleetImage]
    ) -> bytes:
        """``images`` rendered and JSON-encoded, comma-separated as json.dumps would."""
        cache = self._listed_json
        parts = []
        for image in images:
            key = (render, image.id)
            encoded = cache.get(key)
            if encoded is None:
                encoded = cache[key] = json.dumps(render(image)).encode()
            parts.append(encoded)
        return b", ".join(parts)

    def _ordered(
        self, sort_key: str = "created_at", sort_dir: str = "desc"
    ) -> tuple[list[FleetImage], dict[str, int]]:
        if (sort_key, sort_dir) != ("created_at", "desc"):
            order = self._orders.get((sort_key, sort_dir))
            if order is None:
                # Glance sorts by (sort_key, created_at, id), one direction for all keys
                # (glance/db/sqlalchemy/api.py _paginate_query).
                images = sorted(
                    self.fleet.images,
                    key=lambda image: (getattr(image, sort_key), image.created_at, image.id),
                    reverse=sort_dir == "desc",
                )
                order = self._orders[sort_key, sort_dir] = (
                    images,
                    {image.id: i for i, image in enumerate(images)},
                )
            return order
        if self._listing is None:
            self._listing = sorted(
                self.fleet.images, key=lambda image: (image.created_at, image.id), reverse=True
            )
            self._listing_pos = {image.id: i for i, image in enumerate(self._listing)}
        return self._listing, self._listing_pos

    def _authenticate(self, token: str | None, request: web.BaseRequest) -> Token | None:
        if token is None:
            return self._verify_signature(request) if self._access_keys else None
        with self._lock:
            state = self._tokens.get(token)
            if state is None or state.expired:
                return None
            state.uses += 1
            ttl_requests, ttl_seconds = state.token.ttl_requests, state.token.ttl_seconds
            if (ttl_requests is not None and state.uses > ttl_requests) or (
                ttl_seconds is not None and time.monotonic() - state.issued_at > ttl_seconds
            ):
                state.expired = True
                return None
            return state.token

    def _verify_signature(self, request: web.BaseRequest) -> Token | None:
        if request.body_exists:  # only GET and HEAD are emulated: no body to hash
            problem, key = "a signed request with a body", None
        else:
            key, problem = verify(
                request.method,
                request.raw_path.partition("?")[0],
                request.query.items(),
                request.headers,
                b"",
                self._access_keys,
            )
        if key is None:
            with self._lock:
                self.signature_rejections.append(problem)
            return None
        return self._key_tokens[id(key)]


@contextlib.contextmanager
def _corked(transport: asyncio.BaseTransport | None) -> Iterator[None]:
    """Hold back partial segments (Linux ``TCP_CORK``) while the block writes."""
    sock = None if transport is None else transport.get_extra_info("socket")
    cork = getattr(socket, "TCP_CORK", None)
    if sock is None or cork is None:
        yield
        return
    sock.setsockopt(socket.IPPROTO_TCP, cork, 1)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, cork, 0)


def _base(request: web.BaseRequest) -> str:
    return f"http://{request.host}"


def _visible(image: FleetImage, who: Token) -> bool:
    if who.admin:
        return True
    # A member sees a shared image whatever its membership's status (Glance's
    # is_image_visible, glance/db/utils.py: the status only filters listings).
    return not image.deleted and (
        image.is_public or image.owner == who.project_id or _member_of(image, who) is not None
    )


def _member_of(image: FleetImage, who: Token) -> FleetMember | None:
    for member in image.members:
        if member.member_id == who.project_id:
            return member
    return None


# The sort keys the emulator takes (Glance takes more; imgframe asks only for these).
_SORT_KEYS = frozenset({"created_at", "id"})


def _listable(image: FleetImage, who: Token, show_deleted: bool) -> bool:
    if image.deleted and not show_deleted:
        return False
    # v1 lists an image to its members whatever their status (member_status "all" in
    # glance/registry/api/v1/images.py); v2's member_status filters further (_list_v2).
    return (
        who.admin
        or image.is_public
        or image.owner == who.project_id
        or _member_of(image, who) is not None
    )


def _parse_changes_since(text: str) -> datetime | None:
    """A ``changes-since`` value as naive UTC (how the fleet keeps time), None if bad.

    Examples
    --------
    >>> _parse_changes_since("1970-01-01T00:00:00Z")
    datetime.datetime(1970, 1, 1, 0, 0)
    >>> _parse_changes_since("yesterday") is None
    True
    """
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is not None:
        when = when.astimezone(UTC).replace(tzinfo=None)
    return when


# --- foreground helpers (CLI, benchmarks) -----------------------------------------------


async def serve(
    fleet: Fleet,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    faults: Faults = Faults(),
    tokens: Mapping[str, Token] | None = None,
    api_limit_max: int = 1000,
    on_ready: Callable[[str], object] | None = None,
) -> None:
    """Serve ``fleet`` on the running event loop until the task is cancelled."""
    emulator = GlanceEmulator(
        fleet, faults=faults, tokens=tokens, host=host, port=port, api_limit_max=api_limit_max
    )
    await emulator.serve(on_ready=on_ready)


def run_forever(
    fleet: Fleet,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    faults: Faults = Faults(),
    tokens: Mapping[str, Token] | None = None,
    api_limit_max: int = 1000,
    on_ready: Callable[[str], object] | None = None,
    use_uvloop: bool = False,
    warm: bool = False,
    on_exit: Callable[[GlanceEmulator], object] | None = None,
) -> None:
    """Serve ``fleet`` in this thread until Ctrl-C or SIGTERM, then return; prints nothing.

    ``on_ready(url)`` is called once the socket is bound, e.g. to print the URL;
    ``warm`` renders every image first (:meth:`GlanceEmulator.warm`); ``on_exit`` is
    given the emulator once serving has ended (its request log, say).
    """
    emulator = GlanceEmulator(
        fleet, faults=faults, tokens=tokens, host=host, port=port, api_limit_max=api_limit_max
    )
    if warm:
        emulator.warm()

    def ready(url: str) -> None:
        # SIGTERM (benchmarks, process managers) stops as gently as Ctrl-C does.
        loop, stop = emulator._loop, emulator._stop
        if (
            loop is not None
            and stop is not None
            and threading.current_thread() is threading.main_thread()
        ):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signal.SIGTERM, stop.set)
        if on_ready is not None:
            on_ready(url)

    loop_factory = None
    if use_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            loop_factory = uvloop.new_event_loop
    emulator.run_forever(on_ready=ready, loop_factory=loop_factory)
    if on_exit is not None:
        on_exit(emulator)


def main(argv: list[str] | None = None) -> None:
    """``python -m imgframe.testing.emulator``: print the URL on one line, then serve."""
    parser = argparse.ArgumentParser(prog="python -m imgframe.testing.emulator")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument("--warm", action="store_true", help="render every image first")
    parser.add_argument(
        "--summary",
        action="store_true",
        help='on exit, print {"listing": N, "other": M} (requests served) as one JSON line',
    )
    args = parser.parse_args(argv)

    def announce(url: str) -> None:
        print(url, flush=True)

    def summary(emulator: GlanceEmulator) -> None:
        log = emulator.request_log
        listing = sum(1 for r in log if r.path.rstrip("/") in _LIST_PATHS)
        print(json.dumps({"listing": listing, "other": len(log) - listing}), flush=True)

    run_forever(
        make_fleet(args.images, seed=args.seed),
        host=args.host,
        port=args.port,
        faults=Faults(latency=args.latency),
        on_ready=announce,
        use_uvloop=not args.no_uvloop and sys.platform != "win32",
        warm=args.warm,
        on_exit=summary if args.summary else None,
    )


_LIST_PATHS = ("/v1/images", "/v1/images/detail", "/v2/images")


if __name__ == "__main__":
    main()
