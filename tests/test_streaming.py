"""fetch_images(ids=None, verify_with_head=True): the listing streams into the HEADs,
against the real emulator (the default, rows from the listing: tests/test_listing_frame.py)."""

from __future__ import annotations

import asyncio
import gc
import time

import aiohttp
import pandas as pd
import pytest

import imgframe
from imgframe.api import LISTING_PAGES_AHEAD, fetch_images_async
from imgframe.config import RetryPolicy
from imgframe.testing import ADMIN_TOKEN, Faults, Fleet, GlanceEmulator, LoggedRequest, make_fleet

LIST_PATHS = ("/v1/images/detail", "/v2/images")
HEAD = {"verify_with_head": True}


FLEET = {"n": 253, "seed": 21}  # not a multiple of any page size used here


def listing_requests(log: list[LoggedRequest]) -> list[int]:
    """Positions in the log (completion order) of the listing requests."""
    return [n for n, r in enumerate(log) if r.path in LIST_PATHS]


def image_requests(log: list[LoggedRequest]) -> list[int]:
    return [
        n for n, r in enumerate(log) if r.image_id is not None or r.path.startswith("/v2/images/")
    ]


def open_client_sessions() -> list[aiohttp.ClientSession]:
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, aiohttp.ClientSession) and not o.closed]


def test_first_head_is_answered_before_the_last_listing_page(fleet: Fleet) -> None:
    # 20 ms per request: six listing pages take >= 120 ms one after the other, while a
    # HEAD of the first page's ids is answered ~20 ms after that page arrives.
    with GlanceEmulator(fleet, api_limit_max=50, faults=Faults(latency=0.02)) as emu:
        df = imgframe.fetch_images(endpoint=emu.url, token=ADMIN_TOKEN, **HEAD)
        log = emu.request_log
    pages, heads = listing_requests(log), image_requests(log)
    assert len(pages) == 7  # 6 pages of <= 50 ids, then the empty page that ends it
    assert heads[0] < pages[-2], "the fetch waited for the listing to end"
    assert (df["http_status"] == 200).all() and len(df) == len(heads)


@pytest.mark.parametrize("head", [True, False])
def test_streamed_frame_equals_listing_then_fetching(fleet: Fleet, head: bool) -> None:
    with GlanceEmulator(fleet, api_limit_max=20) as emu:
        streamed = imgframe.fetch_images(endpoint=emu.url, token=ADMIN_TOKEN, verify_with_head=head)
        ids = imgframe.list_image_ids(endpoint=emu.url, token=ADMIN_TOKEN)
        two_step = imgframe.fetch_images(ids, endpoint=emu.url, token=ADMIN_TOKEN)
    assert list(streamed.index) == ids  # listing order, one row per listed id
    pd.testing.assert_frame_equal(
        streamed.drop(columns="request_id"), two_step.drop(columns="request_id")
    )


@pytest.mark.parametrize("head", [True, False])
@pytest.mark.parametrize("api", ["auto", "v2"])
def test_a_cloud_without_v1_is_listed_and_fetched_with_v2(
    fleet: Fleet, api: str, head: bool
) -> None:
    with GlanceEmulator(fleet, api_limit_max=40, faults=Faults(no_v1=True)) as emu:
        df = imgframe.fetch_images(
            endpoint=emu.url, token=ADMIN_TOKEN, api=api, verify_with_head=head
        )
        log = emu.request_log
    assert set(df.index) == {i.id for i in fleet.images if not i.deleted}
    assert (df["http_status"] == 200).all()
    v1 = [r for r in log if r.path.startswith("/v1/")]
    # auto: the one 300 of the first listing page switches listing and fetch alike
    assert len(v1) == (1 if api == "auto" else 0) and all(r.status == 300 for r in v1)
    assert not any(r.method == "HEAD" for r in log)
    assert bool(image_requests(log)) is head


def test_a_listing_failing_on_page_3_raises_quickly_and_leaves_nothing_running(
    fleet: Fleet,
) -> None:
    faults = Faults(latency=0.01, list_fail_from=3, list_fail_status=500)

    async def run(url: str) -> tuple[BaseException, set[asyncio.Task], float]:
        started = time.monotonic()
        with pytest.raises(imgframe.FetchError) as caught:
            await fetch_images_async(
                endpoint=url,
                token=ADMIN_TOKEN,
                retries=RetryPolicy(attempts=2, backoff=0.01),
                progress=False,
                **HEAD,
            )
        seconds = time.monotonic() - started
        await asyncio.sleep(0.05)  # let cancelled tasks finish being cancelled
        return caught.value, asyncio.all_tasks() - {asyncio.current_task()}, seconds

    with GlanceEmulator(fleet, api_limit_max=30, faults=faults) as emu:
        error, left, seconds = asyncio.run(run(emu.url))
        heads = [r for r in emu.request_log if r.method == "HEAD"]
    assert "/v1/images/detail" in str(error) and "HTTP 500" in str(error)
    assert "gave up after 2 attempts" in str(error)
    assert error.url is not None and "/v1/images/detail" in error.url
    assert heads  # the fetch had started on pages 1 and 2
    assert seconds < 5 and not left
    assert not open_client_sessions()


def test_cancelling_the_run_stops_the_listing_too(fleet: Fleet) -> None:
    async def run(url: str) -> set[asyncio.Task]:
        task = asyncio.create_task(
            fetch_images_async(
                endpoint=url, token=ADMIN_TOKEN, concurrency=2, progress=False, **HEAD
            )
        )
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)
        return asyncio.all_tasks() - {asyncio.current_task()}

    with GlanceEmulator(fleet, api_limit_max=10, faults=Faults(latency=0.02)) as emu:
        left = asyncio.run(run(emu.url))
        time.sleep(0.2)
        pages_before = len(listing_requests(emu.request_log))
        time.sleep(0.2)
        pages_after = len(listing_requests(emu.request_log))
    assert not left and pages_before == pages_after < 27
    assert not open_client_sessions()


def test_the_listing_never_runs_more_than_a_few_pages_ahead_of_the_fetch() -> None:
    fleet = make_fleet(200, seed=4)
    page = 10
    concurrency = 2
    # Every request takes 5 ms: a listing page (10 ids) every 5 ms, while two workers need
    # 25 ms to HEAD a page. Unbounded, the listing would end with ~40 HEADs answered.
    with GlanceEmulator(fleet, api_limit_max=page, faults=Faults(latency=0.005)) as emu:
        df = imgframe.fetch_images(
            endpoint=emu.url, token=ADMIN_TOKEN, concurrency=concurrency, **HEAD
        )
        log = emu.request_log
    assert len(df) == sum(not i.deleted for i in fleet.images)
    # The ids each raw page adds to the feed (deleted ones are dropped, empty pages skipped).
    ordered = sorted(fleet.images, key=lambda i: (i.created_at, i.id), reverse=True)
    sizes = [sum(not i.deleted for i in ordered[n : n + page]) for n in range(0, 200, page)]
    heads = image_requests(log)
    for number, at in enumerate(listing_requests(log), start=1):
        answered = sum(1 for h in heads if h < at)
        # When page k is asked for, the non-empty pages before it are in the feed: at most
        # LISTING_PAGES_AHEAD queued, one being drained and one just read (page k is asked
        # for as soon as page k-1 arrives); all earlier ones were sent.
        fed = [size for size in sizes[: number - 1] if size]
        sent = sum(fed[: max(0, len(fed) - LISTING_PAGES_AHEAD - 2)])
        assert answered >= sent - concurrency, number
    assert answered < len(df)  # the listing did get ahead: the bound was what held it


@pytest.mark.parametrize("head", [True, False])
def test_the_progress_bar_total_grows_as_pages_arrive(fleet: Fleet, capsys, head: bool) -> None:
    with GlanceEmulator(fleet, api_limit_max=100) as emu:
        imgframe.fetch_images(
            endpoint=emu.url, token=ADMIN_TOKEN, progress=True, verify_with_head=head
        )
    final = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    listed = sum(not i.deleted for i in fleet.images)
    assert f"{listed}/{listed}" in final


def test_include_deleted_streams_the_listing_with_deleted_images(fleet: Fleet) -> None:
    deleted = {i.id for i in fleet.images if i.deleted}
    assert deleted
    with GlanceEmulator(fleet, api_limit_max=40) as emu:
        streamed = imgframe.fetch_images(endpoint=emu.url, token=ADMIN_TOKEN, include_deleted=True)
        listed = imgframe.list_image_ids(endpoint=emu.url, token=ADMIN_TOKEN, include_deleted=True)
        default = imgframe.fetch_images(endpoint=emu.url, token=ADMIN_TOKEN)
    assert list(streamed.index) == listed  # listing order, deleted images in their place
    assert deleted <= set(streamed.index) and not deleted & set(default.index)
    assert streamed.loc[list(deleted), "deleted"].all()
    assert len(streamed) == len(default) + len(deleted)
