"""list_image_ids: paging Glance v1 and v2 listings against the real emulator over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from aiohttp import web

from imgframe.config import RetryPolicy
from imgframe.errors import (
    AuthError,
    ConfigError,
    FetchError,
    IncompleteListingWarning,
    NoV1ApiError,
)
from imgframe.listing import V2_PASSES, list_image_ids, list_image_ids_async
from imgframe.testing import ADMIN_TOKEN, Faults, Fleet, GlanceEmulator, make_fleet

APIS = ["v1", "v2"]


FLEET = {"n": 1003, "seed": 5}  # the module's `fleet` (tests/conftest.py)


def live_ids(fleet: Fleet) -> set[str]:
    return {image.id for image in fleet.images if not image.deleted}


def visible_to(fleet: Fleet, project: str) -> set[str]:
    # Shared images too, whatever the membership's status (v1 lists them all; imgframe's
    # v2 listing asks member_status=all).
    return {
        image.id
        for image in fleet.images
        if not image.deleted
        and (
            image.is_public
            or image.owner == project
            or any(m.member_id == project for m in image.members)
        )
    }


# --- complete listings ------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
def test_page_size_that_does_not_divide_the_fleet_lists_every_id_once(
    emulator: GlanceEmulator, fleet: Fleet, api: str
) -> None:
    ids = list_image_ids(endpoint=emulator.url, token=ADMIN_TOKEN, api=api, page_size=100)
    assert len(ids) == len(set(ids))
    assert set(ids) == live_ids(fleet)
    assert len(fleet.images) % 100 != 0


@pytest.mark.parametrize("api", APIS)
def test_pages_clamped_by_the_server_do_not_end_the_listing(fleet: Fleet, api: str) -> None:
    with GlanceEmulator(fleet, api_limit_max=37) as emu:
        ids = list_image_ids(endpoint=emu.url, token=ADMIN_TOKEN, api=api, page_size=1000)
        pages = [r for r in emu.request_log if r.method == "GET"]
    assert len(ids) == len(set(ids))
    assert set(ids) == live_ids(fleet)
    # every page was short of the 1000 asked for, and the listing still went on to the end
    assert len(pages) >= len(live_ids(fleet)) // 37


@pytest.mark.parametrize("api", APIS)
def test_ids_come_newest_first_like_the_server_lists_them(
    emulator: GlanceEmulator, fleet: Fleet, api: str
) -> None:
    ids = list_image_ids(endpoint=emulator.url, token=ADMIN_TOKEN, api=api, page_size=250)
    by_id = fleet.by_id()
    keys = [(by_id[i].created_at, i) for i in ids]
    assert keys == sorted(keys, reverse=True)


@pytest.mark.parametrize("api", APIS)
def test_project_token_sees_its_own_and_public_images_only(
    emulator: GlanceEmulator, fleet: Fleet, api: str
) -> None:
    project = fleet.projects[0]
    token = emulator.issue_token(project)
    ids = list_image_ids(endpoint=emulator.url, token=token, api=api, page_size=64)
    assert set(ids) == visible_to(fleet, project)
    assert len(ids) == len(set(ids))
    assert set(ids) != live_ids(fleet)  # the test means something: some are hidden


def test_include_deleted_lists_soft_deleted_images_for_an_admin(
    emulator: GlanceEmulator, fleet: Fleet
) -> None:
    ids = list_image_ids(
        endpoint=emulator.url, token=ADMIN_TOKEN, page_size=300, include_deleted=True
    )
    assert any(image.deleted for image in fleet.images)
    assert len(ids) == len(set(ids))
    assert set(ids) == {image.id for image in fleet.images}


def test_include_deleted_shows_a_project_token_the_deleted_images_it_can_see(
    emulator: GlanceEmulator, fleet: Fleet
) -> None:
    # Glance v1's changes-since listing applies visibility, not the deleted flag.
    project = fleet.projects[1]
    token = emulator.issue_token(project)
    ids = list_image_ids(endpoint=emulator.url, token=token, page_size=300, include_deleted=True)
    shared = {i.id for i in fleet.images if any(m.member_id == project for m in i.members)}
    assert set(ids) == {i.id for i in fleet.images if i.is_public or i.owner == project} | shared
    assert set(ids) > visible_to(fleet, project)


# --- killed images (hidden by a default Glance v1 listing) ------------------------------


def killed_ids(fleet: Fleet) -> set[str]:
    return {image.id for image in fleet.images if image.status == "killed"}


def test_v1_listing_includes_killed_images_and_excludes_deleted_ones(
    emulator: GlanceEmulator, fleet: Fleet
) -> None:
    ids = list_image_ids(endpoint=emulator.url, token=ADMIN_TOKEN, page_size=90)
    assert killed_ids(fleet) and killed_ids(fleet) <= set(ids)
    assert not any(image.deleted for image in fleet.images if image.id in set(ids))
    assert set(ids) == live_ids(fleet) and len(ids) == len(set(ids))


def test_v1_listing_with_include_deleted_has_killed_and_deleted_images(
    emulator: GlanceEmulator, fleet: Fleet
) -> None:
    ids = set(
        list_image_ids(endpoint=emulator.url, token=ADMIN_TOKEN, page_size=90, include_deleted=True)
    )
    assert killed_ids(fleet) <= ids
    assert {image.id for image in fleet.images if image.deleted} <= ids


def test_a_page_of_deleted_images_only_does_not_end_the_v1_listing() -> None:
    pages = {
        None: [{"id": "a", "deleted": False}, {"id": "b", "deleted": True}],
        "b": [{"id": "c", "deleted": True}],
        "c": [{"id": "d", "deleted": False, "status": "killed"}],
        "d": [],
    }

    async def listing(request: web.Request) -> web.Response:
        assert request.query["changes-since"] == "1970-01-01T00:00:00"
        return web.json_response({"images": pages[request.query.get("marker")]})

    result, seen = run_against(listing, api="v1")
    # 4 pages; this server ignores sort_dir, so the walk from the other end (1 page, and
    # its next asked for ahead) disagrees where it meets this one and is dropped.
    assert result == ["a", "d"] and len(in_order(seen)) == 4 and len(seen) <= 6
    result, _ = run_against(listing, api="v1", include_deleted=True)
    assert result == ["a", "b", "c", "d"]


def test_broken_audit_finds_killed_images_of_a_listed_cloud(fleet: Fleet) -> None:
    import imgframe
    from imgframe.audits import broken

    with GlanceEmulator(fleet) as emu:
        df = imgframe.fetch_images(endpoint=emu.url, token=ADMIN_TOKEN)
    problems = broken(df)
    assert set(problems.index[problems["problem"] == "killed"]) == killed_ids(fleet)


def test_a_server_refusing_changes_since_is_listed_without_it_and_says_so(fleet: Fleet) -> None:
    import imgframe
    from imgframe.errors import IncompleteListingWarning

    with (
        GlanceEmulator(fleet, faults=Faults(no_changes_since=True)) as emu,
        pytest.warns(IncompleteListingWarning, match="killed"),
    ):
        ids = list_image_ids(endpoint=emu.url, token=ADMIN_TOKEN, page_size=90)
    # What such a server shows: live images, without the killed ones it hides.
    assert set(ids) == live_ids(fleet) - killed_ids(fleet)
    with (
        GlanceEmulator(fleet, faults=Faults(no_changes_since=True)) as emu,
        pytest.warns(IncompleteListingWarning),
    ):
        df = imgframe.fetch_images(endpoint=emu.url, token=ADMIN_TOKEN, progress=False)
    assert set(df.index) == set(ids)


def test_include_deleted_with_v2_is_refused(emulator: GlanceEmulator) -> None:
    with pytest.raises(ConfigError, match="v2 never lists deleted"):
        list_image_ids(endpoint=emulator.url, token=ADMIN_TOKEN, api="v2", include_deleted=True)


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/", "/v2", "/v2.1", "/v1.0/"])
def test_endpoint_with_or_without_a_version_suffix(
    emulator: GlanceEmulator, fleet: Fleet, suffix: str
) -> None:
    ids = list_image_ids(endpoint=emulator.url + suffix, token=ADMIN_TOKEN, page_size=500)
    assert set(ids) == live_ids(fleet)


def test_v1_asks_for_the_detail_listing_with_is_public_none(emulator: GlanceEmulator) -> None:
    emulator.reset_log()
    list_image_ids(endpoint=emulator.url, token=ADMIN_TOKEN, page_size=600)
    gets = [r.path for r in emulator.request_log if r.method == "GET"]
    assert gets and all(path == "/v1/images/detail" for path in gets)


# --- streaming --------------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
def test_first_id_arrives_before_the_last_page_is_requested(
    emulator: GlanceEmulator, fleet: Fleet, api: str
) -> None:
    async def run() -> tuple[int, int]:
        emulator.reset_log()
        requests_at_first_id = -1
        count = 0
        listing = list_image_ids_async(
            endpoint=emulator.url, token=ADMIN_TOKEN, api=api, page_size=200
        )
        async for _ in listing:
            if count == 0:
                requests_at_first_id = len(emulator.request_log)
            count += 1
        return requests_at_first_id, count

    requests_at_first_id, count = asyncio.run(run())
    # Page 1, and page 2 asked for as soon as it arrived (v2: per pass, both at once).
    assert requests_at_first_id <= (2 if api == "v1" else 4)
    assert count == len(live_ids(fleet))
    assert len(emulator.request_log) >= 5  # the other pages came later, one by one


def test_stopping_early_requests_no_more_pages(emulator: GlanceEmulator) -> None:
    async def run() -> list[str]:
        emulator.reset_log()
        listing = list_image_ids_async(endpoint=emulator.url, token=ADMIN_TOKEN, page_size=10)
        async with contextlib.aclosing(listing):
            return [image_id async for image_id in _take(listing, 15)]

    assert len(asyncio.run(run())) == 15
    # Pages 1 and 2, and page 3 if its request, sent as soon as page 2 arrived, reached
    # the server before the listing was closed (which cancels it); from the other end
    # its first page, the one asked for ahead and the page after its first id; nothing
    # after that.
    assert 2 <= len(emulator.request_log) <= 6


async def _take(source: AsyncIterator[str], n: int) -> AsyncIterator[str]:
    async for item in source:
        yield item
        n -= 1
        if n == 0:
            return


# --- misbehaving servers ----------------------------------------------------------------


def run_against(
    handler: Callable[[web.Request], Any], **kwargs: Any
) -> tuple[list[str] | BaseException, list[str]]:
    """List ids from a tiny aiohttp app; returns (ids or the exception, paths requested)."""
    seen: list[str] = []

    async def logged(request: web.Request) -> web.StreamResponse:
        seen.append(request.path_qs)
        return await handler(request)

    async def run() -> list[str] | BaseException:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", logged)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            return [
                i
                async for i in list_image_ids_async(
                    endpoint=f"http://127.0.0.1:{port}", token="s3cr3t-token", **kwargs
                )
            ]
        except BaseException as exc:  # handed back for the test to judge
            return exc
        finally:
            await runner.cleanup()

    return asyncio.run(run()), seen


def in_order(seen: list[str]) -> list[str]:
    """The requests of ``seen`` of the listing's own walk (newest first) and first pass."""
    return [path for path in seen if "sort_dir" not in path and "os_hidden" not in path]


def image_list(*ids: str, next_link: str | None = None) -> web.Response:
    body: dict[str, Any] = {"images": [{"id": i} for i in ids]}
    if next_link is not None:
        body["next"] = next_link
    return web.json_response(body)


def test_a_next_page_asked_for_on_a_wrong_guess_is_dropped_not_listed() -> None:
    # The next page is asked for before the body is decoded, with the body's last "id" as
    # marker: here that is a property of the last image, so the guess is wrong.
    pages = {
        None: [{"id": "a"}, {"id": "b", "properties": {"id": "zzz"}}],
        "b": [{"id": "c", "name": 'say "id": "q"'}],  # an escaped quote is no guess at all
        "c": [],
        "zzz": [{"id": "wrong"}],
    }

    async def listing(request: web.Request) -> web.Response:
        return web.json_response({"images": pages[request.query.get("marker")]})

    result, seen = run_against(listing, api="v1")
    assert result == ["a", "b", "c"]
    markers = [parse_qs(urlsplit(path).query).get("marker", [None])[0] for path in in_order(seen)]
    assert [m for m in markers if m != "zzz"] == [None, "b", "c"] and len(in_order(seen)) <= 4
    assert len(seen) <= 7  # and the other end's walk, dropped: this server ignores sort_dir


def test_v2_next_pages_asked_for_ahead_are_the_links_the_pages_give() -> None:
    async def paged(request: web.Request) -> web.Response:
        if "os_hidden" in request.query:
            return image_list()
        marker = request.query.get("marker")
        if marker is None:
            return image_list("a", next_link="/v2/images?visibility=all&marker=a")
        if marker == "a":
            return image_list("b", next_link="/v2/images?visibility=all&marker=b")
        return image_list("c")

    result, seen = run_against(paged, api="v2")
    assert result == ["a", "b", "c"]
    given = {"/v2/images?visibility=all&marker=a", "/v2/images?visibility=all&marker=b"}
    assert given <= set(seen)
    assert all(path in given or path.startswith("/v2/images?limit=1000&") for path in seen)
    assert len(seen) <= 8  # and the hidden pass, the other end's walk (it ignores sort_dir)


def test_v1_server_that_repeats_its_page_raises_quickly() -> None:
    async def same_page(request: web.Request) -> web.Response:
        return image_list("a", "b", "c")

    started = time.monotonic()
    result, seen = run_against(same_page, api="v1")
    assert isinstance(result, FetchError)
    assert "marker 'c'" in str(result) and "s3cr3t" not in str(result)
    assert len(seen) == 2 and time.monotonic() - started < 5


def test_v2_server_that_repeats_its_next_link_raises_quickly() -> None:
    async def same_page(request: web.Request) -> web.Response:
        return image_list("a", "b", next_link="/v2/images?limit=2&marker=b")

    result, seen = run_against(same_page, api="v2")
    assert isinstance(result, FetchError)
    assert "same next link" in str(result) and "s3cr3t" not in str(result)
    assert len(seen) <= 4  # two pages of each pass (they run side by side)


def test_ids_repeated_across_pages_are_yielded_once() -> None:
    pages = {None: ["a", "b", "c"], "c": ["c", "d"], "d": []}  # the fleet shifted

    async def shifting(request: web.Request) -> web.Response:
        return image_list(*pages[request.query.get("marker")])

    result, _ = run_against(shifting, api="v1")
    assert result == ["a", "b", "c", "d"]


def test_an_empty_v2_page_ends_the_listing_even_with_a_next_link() -> None:
    async def empty(request: web.Request) -> web.Response:
        return image_list(next_link="/v2/images?marker=x")

    result, seen = run_against(empty, api="v2")
    assert result == [] and len(seen) == len(V2_PASSES)  # one empty page per pass


def test_total_pages_are_bounded(emulator: GlanceEmulator) -> None:
    with pytest.raises(FetchError, match="max_pages=3"):
        list_image_ids(endpoint=emulator.url, token=ADMIN_TOKEN, page_size=10, max_pages=3)


def test_next_link_to_another_origin_is_not_followed() -> None:
    async def elsewhere(request: web.Request) -> web.Response:
        return image_list("a", next_link="http://attacker.example/v2/images?marker=a")

    result, seen = run_against(elsewhere, api="v2")
    assert isinstance(result, FetchError) and "another origin" in str(result)
    assert len(in_order(seen)) == 1 and len(seen) <= 2  # the hidden pass ran alongside


def test_transient_errors_are_retried() -> None:
    answers = iter([503, 200, 200])

    async def flaky(request: web.Request) -> web.Response:
        status = next(answers)
        if status != 200:
            return web.Response(status=status, headers={"Retry-After": "0"})
        return image_list() if "marker" in request.query else image_list("a")

    result, seen = run_against(flaky, api="v1")
    assert result == ["a"] and len(seen) == 3


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "soon", "1e999"])
def test_a_retry_after_that_is_not_finite_seconds_means_normal_backoff(value: str) -> None:
    answers = iter([429, 503, 200, 200])

    async def junk_retry_after(request: web.Request) -> web.Response:
        status = next(answers)
        if status != 200:
            return web.Response(status=status, headers={"Retry-After": value})
        return image_list() if "marker" in request.query else image_list("a")

    started = time.perf_counter()
    result, seen = run_against(junk_retry_after, api="v1", retries=RetryPolicy(backoff=0.01))
    assert result == ["a"] and len(seen) == 4
    assert time.perf_counter() - started < 5


def test_a_listing_page_with_many_and_huge_headers_is_read() -> None:
    async def big_headers(request: web.Request) -> web.Response:
        page = image_list() if "marker" in request.query else image_list("a")
        for number in range(1000):
            page.headers[f"X-Extra-{number}"] = "v"
        page.headers["X-Huge"] = "x" * 64 * 1024
        return page

    result, _ = run_against(big_headers, api="v1")
    assert result == ["a"]


def test_a_client_error_status_stops_with_the_url_and_status() -> None:
    async def bad(request: web.Request) -> web.Response:
        return web.Response(status=400, text="marker not found")

    result, _ = run_against(bad, api="v1")
    assert isinstance(result, FetchError) and result.status == 400
    assert result.url is not None and "/v1/images/detail" in result.url
    assert "s3cr3t" not in str(result) and "s3cr3t" not in result.url


def test_an_answer_that_is_not_an_image_list_is_a_fetch_error() -> None:
    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html>login</html>", content_type="text/html")

    result, _ = run_against(html, api="v1")
    assert isinstance(result, FetchError) and "not a Glance image list" in str(result)


def test_an_unreachable_endpoint_is_one_fetch_error_without_the_token() -> None:
    with pytest.raises(FetchError) as caught:
        list_image_ids(endpoint="http://127.0.0.1:9", token="s3cr3t-token", retries=0, timeout=2)
    assert "127.0.0.1:9" in str(caught.value) and "s3cr3t" not in str(caught.value)


# --- tokens and API versions ------------------------------------------------------------


def test_rejected_static_token_is_an_auth_error_without_the_token(
    emulator: GlanceEmulator,
) -> None:
    with pytest.raises(AuthError) as caught:
        list_image_ids(endpoint=emulator.url, token="s3cr3t-token")
    assert caught.value.status == 401 and "s3cr3t" not in str(caught.value)
    assert "s3cr3t" not in repr(caught.value)


def test_expired_token_is_refreshed_and_the_listing_completes(
    emulator: GlanceEmulator, fleet: Fleet
) -> None:
    issued: list[str] = []

    def fresh_token() -> str:  # each token expires after 3 pages
        issued.append(emulator.issue_token("admin", admin=True, ttl_requests=3))
        return issued[-1]

    ids = list_image_ids(endpoint=emulator.url, token=fresh_token, page_size=100)
    assert set(ids) == live_ids(fleet)
    assert len(issued) >= 3


def test_no_v1_api_raises_no_v1_api_error_and_v2_still_lists(fleet: Fleet) -> None:
    with GlanceEmulator(fleet, faults=Faults(no_v1=True)) as emu:
        with pytest.raises(NoV1ApiError, match="api='v2'"):
            list_image_ids(endpoint=emu.url, token=ADMIN_TOKEN)
        assert set(list_image_ids(endpoint=emu.url, token=ADMIN_TOKEN, api="v2")) == live_ids(fleet)


@pytest.mark.parametrize(
    "kwargs",
    [{"api": "v3"}, {"page_size": 0}, {"page_size": True}, {"max_pages": 0}],
)
def test_bad_arguments_are_config_errors(emulator: GlanceEmulator, kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        list_image_ids(endpoint=emulator.url, token=ADMIN_TOKEN, **kwargs)


# --- the emulator's v2 listing ----------------------------------------------------------


def test_emulator_v2_page_has_next_only_when_full(emulator: GlanceEmulator) -> None:
    headers = {"X-Auth-Token": ADMIN_TOKEN}
    first = requests.get(
        f"{emulator.url}/v2/images", params={"limit": 5}, headers=headers, timeout=5
    ).json()
    assert len(first["images"]) == 5
    assert first["next"] == f"/v2/images?limit=5&marker={first['images'][-1]['id']}"
    assert first["first"] == "/v2/images?limit=5" and first["schema"] == "/v2/schemas/images"
    image = first["images"][0]
    assert image["visibility"] in ("public", "private") and image["self"].endswith(image["id"])
    assert image["created_at"].endswith("Z")
    everything = requests.get(
        f"{emulator.url}/v2/images", params={"limit": 5000}, headers=headers, timeout=5
    ).json()
    assert len(everything["images"]) < 1000  # clamped to 1000, and the fleet ends first
    assert "next" not in everything


def test_emulator_v2_defaults_to_25_and_rejects_unknown_markers(
    emulator: GlanceEmulator,
) -> None:
    headers = {"X-Auth-Token": ADMIN_TOKEN}
    page = requests.get(f"{emulator.url}/v2/images", headers=headers, timeout=5).json()
    assert len(page["images"]) == 25 and "next" in page
    bad = requests.get(
        f"{emulator.url}/v2/images", params={"marker": "nope"}, headers=headers, timeout=5
    )
    assert bad.status_code == 400
    assert requests.get(f"{emulator.url}/v2/images", timeout=5).status_code == 401


def test_fetch_images_without_ids_reads_every_listable_image() -> None:
    import imgframe
    from imgframe.testing import ADMIN_TOKEN, GlanceEmulator, make_fleet

    fleet = make_fleet(250, seed=3)
    listable = {i.id for i in fleet.images if not i.deleted}
    with GlanceEmulator(fleet, api_limit_max=37) as emu:  # every page clamped short
        df = imgframe.fetch_images(endpoint=emu.url, token=ADMIN_TOKEN)
    assert set(df.index) == listable and len(df) == len(listable)
    assert (df["http_status"] == 200).all()


def test_fetch_images_needs_an_endpoint_unless_the_token_knows_it() -> None:
    import pytest

    import imgframe

    with pytest.raises(imgframe.ConfigError, match="endpoint is required"):
        imgframe.fetch_images(["a"], token="t")


# --- v2: hidden images, community images, shares ------------------------------------------


def test_v2_lists_hidden_and_other_projects_community_images() -> None:
    fleet = make_fleet(120, seed=7, hidden=9)
    hidden = {image.id for image in fleet.images if image.os_hidden}
    assert len(hidden) == 9
    with GlanceEmulator(fleet, api_limit_max=10) as emu:
        ids = list_image_ids(endpoint=emu.url, token=ADMIN_TOKEN, api="v2", page_size=7)
        default = requests.get(
            emu.url + "/v2/images?limit=1000", headers={"X-Auth-Token": ADMIN_TOKEN}, timeout=10
        ).json()["images"]
    assert len(ids) == len(set(ids)) and set(ids) == live_ids(fleet)
    # Glance's default, which the emulator models, really leaves both kinds out.
    default_ids = {image["id"] for image in default}
    assert not default_ids & hidden
    assert any(image.get("visibility") == "community" for image in default) is False
    assert len(default_ids) < len(live_ids(fleet) - hidden)
    # Documented order: the hidden pass comes last.
    assert set(ids[-len(hidden) :]) == hidden


def test_v2_passes_dedupe_across_passes_and_keep_the_first() -> None:
    async def passes(request: web.Request) -> web.Response:
        assert request.query["visibility"] == "all" and request.query["member_status"] == "all"
        if request.query.get("os_hidden") == "true":
            return image_list("b", "c")  # b was hidden between the two passes
        return image_list("a", "b")

    result, seen = run_against(passes, api="v2")
    assert result == ["a", "b", "c"]
    assert [("os_hidden=true" in path) for path in seen] == [False, True]


def test_v2_each_pass_follows_its_own_next_links() -> None:
    async def paged(request: web.Request) -> web.Response:
        tag = "h" if request.query.get("os_hidden") == "true" else "v"
        if request.query.get("marker") is None:
            query = "&".join(f"{k}={v}" for k, v in request.query.items())
            return image_list(f"{tag}1", next_link=f"/v2/images?{query}&marker={tag}1")
        return image_list(f"{tag}2")

    result, seen = run_against(paged, api="v2", page_size=1)
    assert result == ["v1", "v2", "h1", "h2"]
    # Two pages each; this server ignores sort_dir, so each pass's walk from the other
    # end (its first page, and the page after its first id) is dropped.
    assert len([path for path in seen if "sort_dir" not in path]) == 4 and len(seen) <= 10


def test_v2_server_refusing_the_filters_is_listed_by_default_with_a_warning() -> None:
    async def old_server(request: web.Request) -> web.Response:
        if "visibility" in request.query or "os_hidden" in request.query:
            return web.Response(status=400, text="Invalid visibility value: all")
        return image_list("a", "b")

    with pytest.warns(IncompleteListingWarning) as caught:
        result, seen = run_against(old_server, api="v2")
    assert result == ["a", "b"]
    assert len(caught) == 2 and "hidden images may be missing" in str(caught[-1].message)
    assert len(seen) == 3


def test_a_400_on_a_later_v2_page_is_an_error_not_a_fallback() -> None:
    async def broken(request: web.Request) -> web.Response:
        if request.query.get("marker"):
            return web.Response(status=400, text="Invalid marker")
        return image_list("a", next_link="/v2/images?visibility=all&marker=a")

    result, seen = run_against(broken, api="v2")
    assert isinstance(result, FetchError) and result.status == 400
    assert len(seen) <= 4  # two pages of each pass (they run side by side)


def test_emulator_v2_listing_filters_like_glance() -> None:
    fleet = make_fleet(40, seed=2, hidden=4)
    hidden = {image.id for image in fleet.images if image.os_hidden}
    with GlanceEmulator(fleet) as emu:

        def get(query: str) -> requests.Response:
            return requests.get(
                emu.url + "/v2/images?limit=100&" + query,
                headers={"X-Auth-Token": ADMIN_TOKEN},
                timeout=10,
            )

        only_hidden = get("os_hidden=true&visibility=all").json()["images"]
        community = get("visibility=community").json()["images"]
        statuses = [
            get(q).status_code for q in ("os_hidden=maybe", "visibility=x", "member_status=x")
        ]
    assert {image["id"] for image in only_hidden} == hidden
    assert all(image["os_hidden"] is True for image in only_hidden)
    assert community and all(image["visibility"] == "community" for image in community)
    assert statuses == [400, 400, 400]


def test_hidden_images_leave_the_rest_of_the_fleet_unchanged() -> None:
    plain, with_hidden = make_fleet(200, seed=4), make_fleet(200, seed=4, hidden=6)
    for a, b in zip(plain.images, with_hidden.images, strict=True):
        b_copy = dataclasses.replace(b, os_hidden=False)
        assert a == b_copy
    assert plain.planted == with_hidden.planted
    assert make_fleet(200, seed=4, hidden=6) == with_hidden


# --- from both ends ---------------------------------------------------------------------


def newest_first(fleet: Fleet, api: str, include_deleted: bool = False) -> list[str]:
    """The ids one newest-first walk lists (v2: the pass of the hidden ones after)."""
    ordered = sorted(fleet.images, key=lambda i: (i.created_at, i.id), reverse=True)
    if api == "v1":
        return [i.id for i in ordered if include_deleted or not i.deleted]
    live = [i for i in ordered if not i.deleted]
    return [i.id for i in live if not i.os_hidden] + [i.id for i in live if i.os_hidden]


@pytest.mark.parametrize(
    ("api", "page_size", "clamp"),
    [
        ("v1", 1, 1000),
        ("v1", 7, 1000),
        ("v1", 100, 1000),
        ("v1", 1000, 30),
        ("v1", 5000, 1000),
        ("v2", 9, 1000),
        ("v2", 1000, 40),
    ],
)
def test_a_listing_read_from_both_ends_is_the_newest_first_listing(
    api: str, page_size: int, clamp: int
) -> None:
    fleet = make_fleet(203, seed=9, hidden=7)
    with GlanceEmulator(fleet, api_limit_max=clamp) as emu:
        ids = list_image_ids(endpoint=emu.url, token=ADMIN_TOKEN, api=api, page_size=page_size)
        gets = [r for r in emu.request_log if r.method == "GET"]
        deleted = list_image_ids(
            endpoint=emu.url, token=ADMIN_TOKEN, page_size=page_size, include_deleted=True
        )
    assert ids == newest_first(fleet, api)
    assert deleted == newest_first(fleet, "v1", include_deleted=True)
    # Pages of min(page_size, clamp) ids (v1: + the empty page; v2: + the hidden pass),
    # + where the walks meet, the page after the oldest, the two asked for ahead.
    per_page = min(page_size, clamp)
    listed = len(fleet.images) if api == "v1" else len(ids)
    assert len(gets) <= -(-listed // per_page) + (6 if api == "v1" else 9)


@pytest.mark.parametrize("page_size", [1, 2, 10])
@pytest.mark.parametrize("api", APIS)
def test_a_server_that_ignores_sort_dir_is_listed_from_one_end(api: str, page_size: int) -> None:
    fleet = make_fleet(23, seed=2, hidden=2)
    with GlanceEmulator(fleet, faults=Faults(ignore_sort=True)) as emu:
        ids = list_image_ids(endpoint=emu.url, token=ADMIN_TOKEN, api=api, page_size=page_size)
    assert ids == newest_first(fleet, api)


def test_walks_from_both_ends_overlap_in_time() -> None:
    from imgframe.auth import token_source
    from imgframe.config import FetchOptions
    from imgframe.listing import Lister

    fleet = make_fleet(1003, seed=5)
    options = FetchOptions.build(api="v1", page_size=100)

    async def timed(concurrent: bool) -> tuple[float, list[str]]:
        lister = Lister(emu.url, token_source(ADMIN_TOKEN), options, concurrent=concurrent)
        started = time.monotonic()
        ids = [i async for i in lister.ids()]
        return time.monotonic() - started, ids

    with GlanceEmulator(fleet, faults=Faults(latency=0.04)) as emu:
        one_end, sequential = asyncio.run(timed(False))
        both_ends, concurrent = asyncio.run(timed(True))
    assert concurrent == sequential == newest_first(fleet, "v1")
    # 12 pages one after the other (>= 0.48 s) against ~7 at a time from each end.
    assert one_end >= 0.48 and both_ends < 0.8 * one_end


def test_the_walk_from_the_end_holds_a_bounded_number_of_pages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import imgframe.listing

    monkeypatch.setattr(imgframe.listing, "_FROM_THE_END", 2)
    fleet = make_fleet(203, seed=9)
    with GlanceEmulator(fleet) as emu:
        ids = list_image_ids(endpoint=emu.url, token=ADMIN_TOKEN, page_size=10)
        gets = [r for r in emu.request_log if r.method == "GET"]
    assert ids == newest_first(fleet, "v1")
    # 21 pages of 10: 2 from the end, the rest newest first until it meets them; + the
    # page where they meet, the asc page asked for ahead before it paused, + 2 spare.
    assert len(gets) <= 21 + 4
