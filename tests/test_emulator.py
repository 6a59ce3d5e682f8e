"""The Glance v1 emulator behaves like a real Glance v1, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections import defaultdict

import aiohttp
import pytest
import requests

from imgframe.testing import (
    ADMIN_TOKEN,
    Faults,
    Fleet,
    FleetImage,
    GlanceEmulator,
    Token,
    make_fleet,
    render_headers,
)

ADMIN = {"X-Auth-Token": ADMIN_TOKEN}
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?$")
# Header names of the vendor's sample response (reference/glance-v1-head-image-metadata).
SAMPLE_HEADERS = {
    "Content-Type",
    "Content-Length",
    "X-Image-Meta-Id",
    "X-Image-Meta-Deleted",
    "X-Image-Meta-Container_format",
    "X-Image-Meta-Checksum",
    "X-Image-Meta-Protected",
    "X-Image-Meta-Min_disk",
    "X-Image-Meta-Created_at",
    "X-Image-Meta-Size",
    "X-Image-Meta-Status",
    "X-Image-Meta-Is_public",
    "X-Image-Meta-Min_ram",
    "X-Image-Meta-Owner",
    "X-Image-Meta-Updated_at",
    "X-Image-Meta-Disk_format",
    "X-Image-Meta-Name",
    "Etag",
    "X-Openstack-Request-Id",
}


# The module's `fleet` and `emulator` (tests/conftest.py).
FLEET = {"n": 300, "seed": 11, "public_unprotected": 6, "duplicate_groups": 3}


def first(fleet: Fleet, **match: object) -> FleetImage:
    return next(
        image
        for image in fleet.images
        if all(getattr(image, key) == value for key, value in match.items())
    )


def head(emu: GlanceEmulator, image_id: str, token: str | None = ADMIN_TOKEN) -> requests.Response:
    headers = {} if token is None else {"X-Auth-Token": token}
    return requests.head(f"{emu.url}/v1/images/{image_id}", headers=headers, timeout=5)


def raw_head(sock: socket.socket, image_id: str, token: str = ADMIN_TOKEN) -> bytes:
    """Send one HEAD on an open socket and return the raw response head (bytes)."""
    request = (
        f"HEAD /v1/images/{image_id} HTTP/1.1\r\nHost: glance\r\nX-Auth-Token: {token}\r\n\r\n"
    )
    sock.sendall(request.encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def port_of(emu: GlanceEmulator) -> int:
    return int(emu.url.rsplit(":", 1)[1])


# --- HEAD rendering ---------------------------------------------------------------------


def test_active_image_headers_have_the_vendor_sample_shape(
    emulator: GlanceEmulator, fleet: Fleet
) -> None:
    image = next(
        i
        for i in fleet.images
        if i.status == "active" and i.name and i.owner and i.virtual_size is None
    )
    response = head(emulator, image.id)
    assert response.status_code == 200
    names = set(response.headers)
    property_names = {n for n in names if n.startswith("X-Image-Meta-Property-")}
    assert names - property_names - {"Date", "Server"} == SAMPLE_HEADERS
    assert response.headers["Content-Type"] == "text/html; charset=UTF-8"
    assert response.headers["Content-Length"] == "0"
    assert response.headers["Etag"] == image.checksum == response.headers["X-Image-Meta-Checksum"]
    assert response.headers["X-Image-Meta-Size"] == str(image.size)
    assert response.headers["X-Image-Meta-Is_public"] in ("True", "False")
    assert TIMESTAMP.match(response.headers["X-Image-Meta-Created_at"])
    assert re.fullmatch(r"req-[0-9a-f-]{36}", response.headers["X-Openstack-Request-Id"])
    assert response.content == b""


def test_wire_headers_equal_render_headers_apart_from_request_id(
    emulator: GlanceEmulator, fleet: Fleet
) -> None:
    image = first(fleet, status="active")
    with socket.create_connection(("127.0.0.1", port_of(emulator))) as sock:
        lines = raw_head(sock, image.id).decode().split("\r\n")[1:]
    wire = [tuple(line.split(": ", 1)) for line in lines if line]
    expected = render_headers(image)
    strip = {"X-Openstack-Request-Id", "Date", "Server"}
    assert [h for h in wire if h[0] not in strip] == [h for h in expected if h[0] not in strip]


def test_timestamp_without_microseconds_has_no_fraction(
    emulator: GlanceEmulator, fleet: Fleet
) -> None:
    image = next(i for i in fleet.images if i.created_at.microsecond == 0 and not i.deleted)
    created = head(emulator, image.id).headers["X-Image-Meta-Created_at"]
    assert created == image.created_at.strftime("%Y-%m-%dT%H:%M:%S")


def test_queued_image_omits_size_checksum_and_etag(emulator: GlanceEmulator, fleet: Fleet) -> None:
    image = first(fleet, status="queued")
    headers = head(emulator, image.id).headers
    assert headers["X-Image-Meta-Status"] == "queued"
    for absent in ("X-Image-Meta-Size", "X-Image-Meta-Checksum", "Etag"):
        assert absent not in headers


def test_empty_property_values_are_sent(emulator: GlanceEmulator, fleet: Fleet) -> None:
    image, key = next(
        (i, k) for i in fleet.images if not i.deleted for k, v in i.properties.items() if v == ""
    )
    response = head(emulator, image.id)
    assert response.headers[f"X-Image-Meta-Property-{key}"] == ""


def test_head_has_content_length_zero_and_connection_is_reused(
    emulator: GlanceEmulator, fleet: Fleet
) -> None:
    ids = [image.id for image in fleet.images[:3]]
    with socket.create_connection(("127.0.0.1", port_of(emulator))) as sock:
        answers = [raw_head(sock, image_id) for image_id in ids]
    for answer, image_id in zip(answers, ids, strict=True):
        assert b"\r\nContent-Length: 0\r\n" in answer
        assert b"Connection: close" not in answer
        assert f"X-Image-Meta-Id: {image_id}".encode() in answer


def test_aiohttp_client_reuses_one_connection_for_many_heads(
    emulator: GlanceEmulator, fleet: Fleet
) -> None:
    created: list[object] = []

    async def on_connection_created(*args: object) -> None:
        created.append(args)

    async def run() -> list[int]:
        trace = aiohttp.TraceConfig()
        trace.on_connection_create_end.append(on_connection_created)
        statuses = []
        async with aiohttp.ClientSession(trace_configs=[trace]) as session:
            for image in fleet.images[:20]:
                url = f"{emulator.url}/v1/images/{image.id}"
                async with session.head(url, headers=ADMIN) as response:
                    statuses.append(response.status)
        return statuses

    assert len(asyncio.run(run())) == 20
    assert len(created) == 1


def test_non_ascii_name_goes_on_the_wire_as_raw_utf8(
    emulator: GlanceEmulator, fleet: Fleet
) -> None:
    image = next(i for i in fleet.images if i.name and not i.name.isascii() and not i.deleted)
    with socket.create_connection(("127.0.0.1", port_of(emulator))) as sock:
        answer = raw_head(sock, image.id)
    assert b"\r\nX-Image-Meta-Name: " + image.name.encode("utf-8") + b"\r\n" in answer


# --- auth and visibility ----------------------------------------------------------------


def test_missing_or_unknown_token_is_401_without_body(
    emulator: GlanceEmulator, fleet: Fleet
) -> None:
    image_id = fleet.images[0].id
    for token in (None, "not-a-token"):
        response = head(emulator, image_id, token)
        assert response.status_code == 401
        assert response.content == b""


def test_private_image_of_another_project_is_404_for_non_admin(
    emulator: GlanceEmulator, fleet: Fleet
) -> None:
    private = next(i for i in fleet.images if not i.is_public and not i.deleted and i.owner)
    other = next(p for p in fleet.projects if p != private.owner)
    assert head(emulator, private.id, emulator.issue_token(other)).status_code == 404
    assert head(emulator, private.id, emulator.issue_token(private.owner)).status_code == 200


def test_public_image_of_another_project_is_visible(emulator: GlanceEmulator, fleet: Fleet) -> None:
    public = next(i for i in fleet.images if i.is_public and not i.deleted)
    other = next(p for p in fleet.projects if p != public.owner)
    assert head(emulator, public.id, emulator.issue_token(other)).status_code == 200


def test_deleted_image_is_visible_to_admin_only(emulator: GlanceEmulator, fleet: Fleet) -> None:
    deleted = next(i for i in fleet.images if i.deleted and i.owner)
    admin_view = head(emulator, deleted.id)
    assert admin_view.status_code == 200
    assert admin_view.headers["X-Image-Meta-Deleted"] == "True"
    assert TIMESTAMP.match(admin_view.headers["X-Image-Meta-Deleted_at"])
    assert head(emulator, deleted.id, emulator.issue_token(deleted.owner)).status_code == 404


def test_unknown_image_id_is_404(emulator: GlanceEmulator) -> None:
    assert head(emulator, "00000000-0000-4000-8000-000000000000").status_code == 404


def test_token_expires_after_ttl_requests_and_stays_expired(
    emulator: GlanceEmulator, fleet: Fleet
) -> None:
    token = emulator.issue_token("admin", admin=True, ttl_requests=2)
    image_id = fleet.images[0].id
    statuses = [head(emulator, image_id, token).status_code for _ in range(4)]
    assert statuses == [200, 200, 401, 401]


def test_token_expires_after_ttl_seconds(emulator: GlanceEmulator, fleet: Fleet) -> None:
    token = emulator.issue_token("admin", admin=True, ttl_seconds=0.2)
    image_id = fleet.images[0].id
    assert head(emulator, image_id, token).status_code == 200
    time.sleep(0.3)
    assert head(emulator, image_id, token).status_code == 401


def test_tokens_given_at_construction_are_honoured(fleet: Fleet) -> None:
    tokens = {"t-1": Token(project_id=fleet.projects[0])}
    own = first(fleet, owner=fleet.projects[0], is_public=False, deleted=False)
    with GlanceEmulator(fleet, tokens=tokens) as emu:
        assert head(emu, own.id, "t-1").status_code == 200
        assert head(emu, own.id, ADMIN_TOKEN).status_code == 401  # replaced the default


# --- faults -----------------------------------------------------------------------------


def test_transient_faults_are_deterministic_and_clear_after_transient_attempts(
    fleet: Fleet,
) -> None:
    faults = Faults(transient_rate=0.3, transient_attempts=2, transient_kinds=("429", "503", "500"))
    ids = [image.id for image in fleet.images[:60]]
    expected = {i: faults.transient_kind(i) for i in ids}
    assert any(expected.values()) and not all(expected.values())

    seen: list[dict[str, list[int]]] = []
    for order in (ids, ids[::-1]):  # request order must not matter
        with GlanceEmulator(fleet, faults=faults) as emu, requests.Session() as session:
            statuses: dict[str, list[int]] = defaultdict(list)
            for _ in range(3):
                for image_id in order:
                    url = f"{emu.url}/v1/images/{image_id}"
                    statuses[image_id].append(session.head(url, headers=ADMIN).status_code)
            assert all(emu.attempts(i) == 3 for i in ids)
        seen.append(statuses)

    assert seen[0] == seen[1]
    for image_id, kind in expected.items():
        want = [200] * 3 if kind is None else [int(kind), int(kind), 200]
        assert seen[0][image_id] == want


def test_retry_after_is_sent_on_429_and_503_but_not_500(fleet: Fleet) -> None:
    faults = Faults(transient_rate=1.0, transient_kinds=("429", "503", "500"), retry_after=0.25)
    with GlanceEmulator(fleet, faults=faults) as emu:
        for image in fleet.images[:30]:
            response = head(emu, image.id)
            kind = faults.transient_kind(image.id)
            assert response.status_code == int(kind)
            assert response.headers.get("Retry-After") == (None if kind == "500" else "0.25")


def test_retry_after_none_sends_no_header(fleet: Fleet) -> None:
    faults = Faults(transient_rate=1.0, transient_kinds=("429",), retry_after=None)
    with GlanceEmulator(fleet, faults=faults) as emu:
        response = head(emu, fleet.images[0].id)
    assert response.status_code == 429
    assert "Retry-After" not in response.headers


async def aiohttp_head(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.head(url, headers=ADMIN) as r:
        return r.status


def test_drop_fault_closes_the_connection_without_a_response(fleet: Fleet) -> None:
    faults = Faults(transient_rate=1.0, transient_kinds=("drop",), transient_attempts=2)
    image_ids = [image.id for image in fleet.images[:3]]
    with GlanceEmulator(fleet, faults=faults) as emu:
        with socket.create_connection(("127.0.0.1", port_of(emu))) as sock:
            sock.settimeout(5)
            assert raw_head(sock, image_ids[0]) == b""
        with pytest.raises(requests.ConnectionError):
            head(emu, image_ids[1])
        url = f"{emu.url}/v1/images/{image_ids[2]}"
        with pytest.raises(aiohttp.ServerDisconnectedError):
            asyncio.run(aiohttp_head(url))
        assert emu.attempts(image_ids[2]) == 2  # aiohttp retried once by itself
        assert asyncio.run(aiohttp_head(url)) == 200
        assert [r.status for r in emu.request_log] == [0, 0, 0, 0, 200]


def test_aiohttp_silently_retries_a_single_dropped_head(fleet: Fleet) -> None:
    # aiohttp's client resends an idempotent request once after a disconnect (RFC 9112
    # 9.3.1.1), so one dropped attempt never reaches its caller.
    faults = Faults(transient_rate=1.0, transient_kinds=("drop",), transient_attempts=1)
    image_id = fleet.images[0].id
    with GlanceEmulator(fleet, faults=faults) as emu:
        assert asyncio.run(aiohttp_head(f"{emu.url}/v1/images/{image_id}")) == 200
        assert emu.attempts(image_id) == 2


def test_hanging_id_outlasts_a_client_timeout_then_answers_on_retry(fleet: Fleet) -> None:
    faults = Faults(hang_rate=1.0, hang_seconds=10.0)
    started = time.monotonic()
    with GlanceEmulator(fleet, faults=faults) as emu:
        image_id = fleet.images[0].id
        assert faults.is_hanging(image_id)
        with pytest.raises(requests.Timeout):
            requests.head(f"{emu.url}/v1/images/{image_id}", headers=ADMIN, timeout=0.3)
        assert head(emu, image_id).status_code == 200
    assert time.monotonic() - started < 5  # stopping does not wait for the hung handler


def test_malformed_ids_always_get_garbage_values(fleet: Fleet) -> None:
    faults = Faults(malformed_rate=0.5, seed=3)
    images = [i for i in fleet.images if not i.deleted][:40]
    with GlanceEmulator(fleet, faults=faults) as emu:
        for image in images:
            garbage = faults.malformed_headers(image.id)
            assert bool(garbage) == faults.is_malformed(image.id)
            for _ in range(2):  # every attempt, not just the first
                headers = head(emu, image.id).headers
                for name, value in garbage.items():
                    assert headers[name] == value
                if not garbage:
                    assert headers["X-Image-Meta-Min_ram"] == str(image.min_ram)
    assert any(faults.is_malformed(i.id) for i in images)


def test_latency_delays_answers(fleet: Fleet) -> None:
    with GlanceEmulator(fleet, faults=Faults(latency=(0.1, 0.15))) as emu:
        started = time.monotonic()
        assert head(emu, fleet.images[0].id).status_code == 200
        assert time.monotonic() - started >= 0.1


def test_no_v1_answers_300_with_a_versions_document(fleet: Fleet) -> None:
    with GlanceEmulator(fleet, faults=Faults(no_v1=True)) as emu:
        assert head(emu, fleet.images[0].id).status_code == 300
        listing = requests.get(f"{emu.url}/v1/images", headers=ADMIN, timeout=5)
        assert listing.status_code == 300
        ids = [v["id"] for v in listing.json()["versions"]]
        assert ids[0].startswith("v2.") and not any(v.startswith("v1") for v in ids)


def test_versions_document_is_served_at_the_root(emulator: GlanceEmulator) -> None:
    root = requests.get(f"{emulator.url}/", timeout=5)
    assert root.status_code == 300
    assert {"id": "v1.0", "status": "DEPRECATED"}.items() <= root.json()["versions"][-1].items()
    assert requests.get(f"{emulator.url}/versions", timeout=5).status_code == 200


# --- listing ----------------------------------------------------------------------------


def list_all(
    emu: GlanceEmulator,
    token: str,
    limit: int,
    path: str = "/v1/images",
    query: dict[str, str] | None = None,
) -> list[dict]:
    images: list[dict] = []
    params: dict[str, str | int] = {"limit": limit, **(query or {})}
    with requests.Session() as session:
        while True:
            response = session.get(
                f"{emu.url}{path}", params=params, headers={"X-Auth-Token": token}, timeout=5
            )
            assert response.status_code == 200
            page = response.json()["images"]
            assert set(response.json()) == {"images"}  # like real v1: no "next" link
            if not page:
                return images
            assert len(page) <= limit
            images.extend(page)
            params["marker"] = page[-1]["id"]


@pytest.mark.parametrize("limit", [7, 25, 1000])
def test_listing_pages_cover_every_visible_id_exactly_once(
    emulator: GlanceEmulator, fleet: Fleet, limit: int
) -> None:
    project = fleet.projects[1]
    token = emulator.issue_token(project)
    listed = [image["id"] for image in list_all(emulator, token, limit)]
    # v1 lists an image to its members too, whatever their status.
    visible = {
        i.id
        for i in fleet.images
        if not i.deleted
        and i.status != "killed"
        and (i.is_public or i.owner == project or any(m.member_id == project for m in i.members))
    }
    assert any(i.owner != project for i in fleet.images if i.id in visible and not i.is_public)
    assert len(listed) == len(set(listed))
    assert set(listed) == visible


def test_listing_is_newest_first_and_excludes_deleted_and_killed_images(
    emulator: GlanceEmulator, fleet: Fleet
) -> None:
    listed = list_all(emulator, ADMIN_TOKEN, 40, "/v1/images/detail")
    by_id = fleet.by_id()
    keys = [(by_id[image["id"]].created_at, image["id"]) for image in listed]
    assert keys == sorted(keys, reverse=True)
    assert {image["id"] for image in listed} == {
        i.id for i in fleet.images if not i.deleted and i.status != "killed"
    }
    assert any(i.status == "killed" for i in fleet.images)  # so that hiding them is tested
    assert {"properties", "is_public", "protected", "owner"} <= set(listed[0])


def test_changes_since_lists_killed_and_deleted_images_too(
    emulator: GlanceEmulator, fleet: Fleet
) -> None:
    since = {"changes-since": "1970-01-01T00:00:00"}
    listed = list_all(emulator, ADMIN_TOKEN, 70, "/v1/images/detail", since)
    assert [image["id"] for image in listed] == [
        image["id"] for image in list_all(emulator, ADMIN_TOKEN, 1000, "/v1/images/detail", since)
    ]  # deleted markers page on like the others
    assert {image["id"] for image in listed} == {i.id for i in fleet.images}
    assert any(image["deleted"] for image in listed)
    assert any(image["status"] == "killed" and not image["deleted"] for image in listed)


def test_changes_since_lists_the_images_updated_after_it(
    emulator: GlanceEmulator, fleet: Fleet
) -> None:
    cut = sorted(image.updated_at for image in fleet.images)[len(fleet.images) // 2]
    listed = list_all(
        emulator, ADMIN_TOKEN, 100, "/v1/images/detail", {"changes-since": cut.isoformat() + "Z"}
    )
    assert {image["id"] for image in listed} == {i.id for i in fleet.images if i.updated_at > cut}


def test_changes_since_shows_a_project_token_its_own_deleted_images(
    emulator: GlanceEmulator, fleet: Fleet
) -> None:
    project = fleet.projects[0]
    token = emulator.issue_token(project)
    since = {"changes-since": "1970-01-01T00:00:00"}
    listed = {image["id"] for image in list_all(emulator, token, 100, "/v1/images", since)}
    shared = {i.id for i in fleet.images if any(m.member_id == project for m in i.members)}
    assert listed == {i.id for i in fleet.images if i.is_public or i.owner == project} | shared
    assert any(i.deleted and i.owner == project for i in fleet.images if i.id in listed)


def test_the_deleted_parameter_is_ignored_as_glance_v1s_api_drops_it(
    emulator: GlanceEmulator,
) -> None:
    plain = list_all(emulator, ADMIN_TOKEN, 500)
    assert list_all(emulator, ADMIN_TOKEN, 500, query={"deleted": "true"}) == plain


def test_a_bad_changes_since_is_a_400(emulator: GlanceEmulator) -> None:
    response = requests.get(
        f"{emulator.url}/v1/images",
        params={"changes-since": "last tuesday"},
        headers=ADMIN,
        timeout=5,
    )
    assert response.status_code == 400 and b"changes-since" in response.content


def test_listing_limit_is_clamped_to_api_limit_max(fleet: Fleet) -> None:
    with GlanceEmulator(fleet, api_limit_max=50) as emu:
        response = requests.get(
            f"{emu.url}/v1/images", params={"limit": 1000}, headers=ADMIN, timeout=5
        )
    assert len(response.json()["images"]) == 50


def test_listing_defaults_to_25_images(emulator: GlanceEmulator) -> None:
    response = requests.get(f"{emulator.url}/v1/images", headers=ADMIN, timeout=5)
    assert len(response.json()["images"]) == 25


def test_listing_with_unknown_marker_is_400(emulator: GlanceEmulator) -> None:
    response = requests.get(
        f"{emulator.url}/v1/images", params={"marker": "nope"}, headers=ADMIN, timeout=5
    )
    assert response.status_code == 400


# --- the server object ------------------------------------------------------------------


def test_request_log_records_each_request(fleet: Fleet) -> None:
    with GlanceEmulator(fleet) as emu:
        image_id = fleet.images[0].id
        head(emu, image_id)
        head(emu, image_id, None)
        log = emu.request_log
        assert [(r.method, r.image_id, r.status, r.token) for r in log] == [
            ("HEAD", image_id, 200, ADMIN_TOKEN),
            ("HEAD", image_id, 401, None),
        ]
        assert log[0].t <= log[1].t and emu.attempts(image_id) == 2
        emu.reset_log()
        assert emu.request_log == [] and emu.attempts(image_id) == 2


def test_non_loopback_host_is_refused(fleet: Fleet) -> None:
    with pytest.raises(ValueError, match="loopback"):
        GlanceEmulator(fleet, host="0.0.0.0")


def test_stopped_emulator_refuses_connections(fleet: Fleet) -> None:
    emu = GlanceEmulator(fleet).start()
    port = port_of(emu)
    emu.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


# --- fleets -----------------------------------------------------------------------------


def test_same_seed_gives_the_same_fleet_and_another_seed_a_different_one() -> None:
    assert make_fleet(400, seed=5) == make_fleet(400, seed=5)
    assert make_fleet(400, seed=5).images != make_fleet(400, seed=6).images


@pytest.mark.parametrize(("n", "seed"), [(1, 0), (60, 1), (1000, 2), (5000, 3)])
def test_planted_answers_are_true_of_the_data(n: int, seed: int) -> None:
    fleet = make_fleet(n, seed=seed)
    public_unprotected = {
        i.id
        for i in fleet.images
        if i.is_public and not i.protected and i.status == "active" and not i.deleted
    }
    by_checksum: dict[str, list[FleetImage]] = defaultdict(list)
    for image in fleet.images:
        if image.checksum is not None:
            by_checksum[image.checksum].append(image)
    groups = {frozenset(i.id for i in group) for group in by_checksum.values() if len(group) > 1}

    assert public_unprotected == fleet.planted.public_unprotected
    assert groups == set(fleet.planted.duplicate_groups)
    for group in by_checksum.values():
        assert len({image.size for image in group}) == 1


def test_fleet_contains_the_awkward_cases() -> None:
    fleet = make_fleet(1000, seed=0)
    names = [image.name for image in fleet.images]
    assert {image.status for image in fleet.images} == {
        "queued",
        "saving",
        "active",
        "killed",
        "deleted",
        "pending_delete",
        "deactivated",
    }
    assert None in names
    assert any(name and not name.isascii() for name in names)
    assert any(name and name[0] in "=+-@" for name in names)
    assert any(image.created_at.microsecond == 0 for image in fleet.images)
    assert all(image.id == image.id.lower() and len(image.id) == 36 for image in fleet.images)
    assert len({image.id for image in fleet.images}) == 1000
    assert 5 <= len({image.owner for image in fleet.images}) <= 12
    for image in fleet.images:
        assert image.deleted == (image.deleted_at is not None)
        if image.status == "queued":
            assert image.size is None and image.checksum is None
        if image.status == "saving":
            assert image.checksum is None


def test_impossible_planting_is_refused() -> None:
    with pytest.raises(ValueError):
        make_fleet(3, public_unprotected=2, duplicate_groups=1)


# --- hostile modes ----------------------------------------------------------------------


def everything_sent(emu: GlanceEmulator, image_id: str) -> bytes:
    """Every byte the server sends for one HEAD on a kept-alive connection (0.3 s)."""
    port = int(emu.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(
            f"HEAD /v1/images/{image_id} HTTP/1.1\r\nHost: x\r\n"
            f"X-Auth-Token: {ADMIN_TOKEN}\r\n\r\n".encode()
        )
        sock.settimeout(0.3)
        received = b""
        with contextlib.suppress(TimeoutError):
            while chunk := sock.recv(65536):
                received += chunk
    return received


def test_each_lying_id_lies_one_way_on_every_answer(fleet: Fleet) -> None:
    faults = Faults(
        wrong_id_rate=0.2, duplicate_id_rate=0.2, no_metadata_rate=0.2, head_body_rate=0.2, seed=4
    )
    ids = [image.id for image in fleet.images]
    kinds = [faults.lie(i) for i in ids]
    assert kinds == [faults.lie(i) for i in ids]  # seeded per id, not a stream
    assert {"wrong-id", "duplicate-id", "no-metadata", "head-body", None} == set(kinds)
    with GlanceEmulator(fleet, faults=faults) as emu:
        for image_id, kind in list(zip(ids, kinds, strict=True))[:40]:
            response = head(emu, image_id)
            if kind == "head-body":
                continue  # requests cannot see a HEAD body: everything_sent below
            sent = response.raw.headers.getlist("X-Image-Meta-Id")
            assert response.status_code == 200
            if kind is None:
                assert sent == [image_id]
            elif kind == "wrong-id":
                assert len(sent) == 1 and sent[0] != image_id and sent[0] in ids
            elif kind == "duplicate-id":
                assert sent[0] == image_id and len(sent) == 2 and sent[1] != image_id
            else:
                assert not [h for h in response.headers if h.startswith("X-Image-Meta-")]


def test_head_body_mode_writes_a_body_after_the_head_answer(fleet: Fleet) -> None:
    faults = Faults(head_body_rate=1.0)
    image_id = fleet.images[0].id
    with GlanceEmulator(fleet, faults=faults) as emu:
        received = everything_sent(emu, image_id)
    head_part, _, after = received.partition(b"\r\n\r\n")
    assert head_part.startswith(b"HTTP/1.1 200")
    assert f"X-Image-Meta-Id: {image_id}".encode() in head_part
    assert after.startswith(b"<html>")  # what a HEAD answer must never carry


def test_many_properties_and_a_huge_value_are_sent(fleet: Fleet) -> None:
    faults = Faults(extra_properties=1000, huge_value=64 * 1024)
    image = fleet.images[0]
    with GlanceEmulator(fleet, faults=faults) as emu:
        received = everything_sent(emu, image.id)
    lines = received.split(b"\r\n")
    assert sum(line.startswith(b"X-Image-Meta-Property-Extra_") for line in lines) == 1000
    assert b"X-Image-Meta-Property-Huge: " + b"x" * 64 * 1024 in lines


def test_odd_values_widen_the_malformed_values() -> None:
    plain, odd = Faults(malformed_rate=1.0), Faults(malformed_rate=1.0, odd_values=True)
    ids = [f"id-{i}" for i in range(200)]
    plain_values = {v for i in ids for v in plain.malformed_headers(i).values()}
    odd_values = {v for i in ids for v in odd.malformed_headers(i).values()}
    assert "0001-01-01T00:00:00" not in plain_values
    assert {"0001-01-01T00:00:00", "+123", "9999999999999999999", "2016-W01"} <= odd_values
    assert "\u0661\u0662\u0663" in odd_values


def test_a_v2_document_for_another_image_in_wrong_id_mode(fleet: Fleet) -> None:
    faults = Faults(wrong_id_rate=1.0)
    image = next(i for i in fleet.images if not i.deleted)
    with GlanceEmulator(fleet, faults=faults) as emu:
        document = requests.get(f"{emu.url}/v2/images/{image.id}", headers=ADMIN).json()
    assert document["id"] != image.id and document["name"] == image.name


def test_max_in_flight_counts_concurrent_requests(fleet: Fleet) -> None:
    async def concurrently(url: str, ids: list[str]) -> None:
        async with aiohttp.ClientSession() as session:

            async def one(image_id: str) -> None:
                async with session.head(f"{url}/v1/images/{image_id}", headers=ADMIN):
                    pass

            await asyncio.gather(*(one(i) for i in ids))

    ids = [image.id for image in fleet.images[:6]]
    with GlanceEmulator(fleet, faults=Faults(latency=0.2)) as emu:
        assert emu.max_in_flight == 0
        asyncio.run(concurrently(emu.url, ids))
        assert emu.max_in_flight == 6
        emu.reset_log()
        for image_id in ids[:2]:
            head(emu, image_id)
        assert emu.max_in_flight == 1


def test_listing_sort_dir_and_sort_key_order_like_glance() -> None:
    fleet = make_fleet(57, seed=3)
    newest_first = [
        i.id for i in sorted(fleet.images, key=lambda i: (i.created_at, i.id), reverse=True)
    ]
    by_id = sorted(i.id for i in fleet.images)

    def walk(url: str, query: str, v2: bool = False) -> list[str]:
        listed: list[str] = []
        path: str | None = url + query
        for _ in range(100):
            assert path is not None
            body = requests.get(path, headers={"X-Auth-Token": ADMIN_TOKEN}, timeout=10).json()
            listed += [image["id"] for image in body["images"]]
            if v2:
                if "next" not in body:
                    return listed
                path = emu.url + body["next"]
            elif not body["images"]:
                return listed
            else:
                path = url + query + "&marker=" + listed[-1]
        raise AssertionError("the listing did not end")

    with GlanceEmulator(fleet) as emu:
        v1 = emu.url + "/v1/images/detail?changes-since=1970-01-01T00:00:00&limit=10"
        assert walk(v1, "") == newest_first
        assert walk(v1, "&sort_dir=asc") == newest_first[::-1]
        assert walk(v1, "&sort_key=id&sort_dir=asc") == by_id
        assert walk(v1, "&sort_key=id") == by_id[::-1]
        live = [i for i in newest_first if not fleet.by_id()[i].deleted]
        v2 = emu.url + "/v2/images?limit=10&visibility=all"
        v2_live = [i for i in live if not fleet.by_id()[i].os_hidden]
        assert walk(v2, "", v2=True) == v2_live
        assert walk(v2, "&sort_dir=asc", v2=True) == v2_live[::-1]
        statuses = [
            requests.get(v1 + query, headers={"X-Auth-Token": ADMIN_TOKEN}, timeout=10).status_code
            for query in ("&sort_dir=up", "&sort_key=owner")
        ]
    assert statuses == [400, 400]
    with GlanceEmulator(fleet, faults=Faults(ignore_sort=True)) as emu:
        v1 = emu.url + "/v1/images/detail?changes-since=1970-01-01T00:00:00&limit=10"
        assert walk(v1, "&sort_dir=asc") == newest_first
