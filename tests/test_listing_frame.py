"""fetch_images(ids=None): rows made from the listing's own records, against the emulator.

Every frame is compared with the one-HEAD-per-listed-id frame (``verify_with_head=True``)
with dtypes and categories, ``request_id`` aside (the listing's rows carry their page's);
the emulator's request log says which requests each way sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import imgframe
from imgframe import ConfigError
from imgframe import checkpoint as ckpt
from imgframe.api import fetch_images_async
from imgframe.cli import main
from imgframe.outcome import INVALID_ID
from imgframe.testing import ADMIN_TOKEN, Faults, Fleet, GlanceEmulator, make_fleet

LIST_PATHS = ("/v1/images/detail", "/v2/images")


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    base = make_fleet(1203, seed=77)  # not a multiple of any page size used here
    images = list(base.images)
    # Property keys in mixed case and non-ASCII values: the detail's JSON keeps the case
    # a HEAD header name loses, and sends text as JSON, not as header bytes.
    images[3] = dataclasses.replace(
        images[3],
        name="Ubuntu 24.04 — édition «spéciale» 日本語",
        properties={"Env": "prod", "Owner_Team": "Équipe ☃", "empty": ""},
    )
    assert any(i.deleted for i in images) and any(i.status == "killed" for i in images)
    assert any(not (i.name or "").isascii() for i in images[10:])
    return dataclasses.replace(base, images=images)


def without_request_id(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns="request_id")


def assert_same_rows(from_listing: pd.DataFrame, from_heads: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(
        without_request_id(from_listing), without_request_id(from_heads), check_categorical=True
    )


def listing_requests(emu: GlanceEmulator) -> list:
    return [r for r in emu.request_log if r.path in LIST_PATHS]


def image_requests(emu: GlanceEmulator) -> list:
    return [r for r in emu.request_log if r.path not in LIST_PATHS]


@pytest.mark.parametrize(
    ("api", "include_deleted"), [("v1", False), ("v1", True), ("v2", False), ("auto", False)]
)
def test_the_frame_from_the_listing_equals_listing_then_head(
    fleet: Fleet, api: str, include_deleted: bool
) -> None:
    faults = Faults(no_v1=api == "auto")  # auto: the first v1 page's 300 switches to v2
    with GlanceEmulator(fleet, api_limit_max=100, faults=faults) as emu:
        common = dict(endpoint=emu.url, token=ADMIN_TOKEN, api=api, progress=False)
        if include_deleted:
            common["include_deleted"] = True
        from_listing = imgframe.fetch_images(**common)
        pages = listing_requests(emu)
        sent = image_requests(emu)
        emu.reset_log()
        from_heads = imgframe.fetch_images(verify_with_head=True, **common)
        heads = image_requests(emu)
    assert_same_rows(from_listing, from_heads)
    listed = {i.id for i in fleet.images if include_deleted or not i.deleted}
    if api != "v1":
        listed = {i.id for i in fleet.images if not i.deleted}
    assert set(from_listing.index) == listed and (from_listing["http_status"] == 200).all()
    assert not sent and len(heads) == len(listed)
    # 1,203 images in pages of 100, read from both ends: + the page where they meet, the
    # page after the oldest, the two asked for ahead when they met (+ v1's empty page;
    # v2: + the hidden pass; auto: + the 300).
    assert len(pages) <= len(fleet.images) // 100 + (6 if api == "v1" else 8)
    special = from_listing.loc[fleet.images[3].id]
    assert special["name"] == fleet.images[3].name
    if api == "v1":  # v1 keys are lower-cased (a HEAD header name has no case)
        assert special["properties"] == {"env": "prod", "owner_team": "Équipe ☃", "empty": ""}
    else:  # v2 keys keep their case
        assert special["properties"] == {"Env": "prod", "Owner_Team": "Équipe ☃", "empty": ""}
    # One request id per page, the one that page's answer sent.
    assert from_listing["request_id"].notna().all()
    assert from_listing["request_id"].nunique() <= len(pages)
    assert from_listing["request_id"].nunique() >= len(listed) // 100


def test_listed_ids_are_deduplicated_and_checked(fleet: Fleet) -> None:
    twice = fleet.images[7]
    bad = dataclasses.replace(fleet.images[8], id="not a safe id")
    odd = dataclasses.replace(fleet, images=[*fleet.images, twice, bad])
    with GlanceEmulator(odd, api_limit_max=50) as emu:
        common = dict(endpoint=emu.url, token=ADMIN_TOKEN, progress=False)
        from_listing = imgframe.fetch_images(**common)
        assert not image_requests(emu)
        from_heads = imgframe.fetch_images(verify_with_head=True, **common)
        listed = imgframe.list_image_ids(endpoint=emu.url, token=ADMIN_TOKEN)
    assert from_listing.index.is_unique and list(from_listing.index) == listed
    assert from_listing.loc["not a safe id", "error"] == INVALID_ID
    assert pd.isna(from_listing.loc["not a safe id", "http_status"])
    assert_same_rows(from_listing, from_heads)


def test_a_failing_listing_still_raises_with_no_rows(fleet: Fleet) -> None:
    faults = Faults(list_fail_from=3, list_fail_status=500)
    with GlanceEmulator(fleet, api_limit_max=100, faults=faults) as emu:
        with pytest.raises(imgframe.FetchError, match="/v1/images/detail") as caught:
            imgframe.fetch_images(
                endpoint=emu.url,
                token=ADMIN_TOKEN,
                retries=imgframe.RetryPolicy(attempts=1),
                progress=False,
            )
        pages = [r.status for r in listing_requests(emu)]
    assert "HTTP 500" in str(caught.value)
    assert pages == [200, 200, 500] and not image_requests(emu)


# ----------------------------------------------------------------------- checkpoint
async def cancel_after_pages(pages: int, emu: GlanceEmulator, **kwargs) -> float:
    task = asyncio.create_task(fetch_images_async(progress=False, **kwargs))
    deadline = time.monotonic() + 60
    while len(listing_requests(emu)) < pages and not task.done():
        assert time.monotonic() < deadline, "the listing never got that far"
        await asyncio.sleep(0.005)
    assert not task.done(), "the fetch ended before it could be interrupted"
    cancelled = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return time.monotonic() - cancelled


def stored_ids(folder: Path) -> list[str]:
    with ckpt.Checkpoint.open(folder, ckpt.read_manifest(folder)) as store:
        return list(store.load().index)


@pytest.mark.parametrize("resume_with_head", [False, True])
def test_a_cancelled_listing_run_flushes_its_rows_and_resumes(
    fleet: Fleet, tmp_path: Path, resume_with_head: bool
) -> None:
    folder = tmp_path / "ckpt"
    with GlanceEmulator(fleet, api_limit_max=100, faults=Faults(latency=0.03)) as emu:
        common = dict(endpoint=emu.url, token=ADMIN_TOKEN)
        # 8 requests: the walk from the other end sends some (its pages become rows only
        # when the two walks meet), the newest-first walk 4 or more.
        seconds = asyncio.run(cancel_after_pages(8, emu, checkpoint=folder, **common))
        stored = stored_ids(folder)
        emu.reset_log()
        resumed = imgframe.fetch_images(
            checkpoint=folder, verify_with_head=resume_with_head, progress=False, **common
        )
        resent = [r.image_id for r in image_requests(emu)]
        emu.reset_log()
        fresh = imgframe.fetch_images(progress=False, **common)
    assert seconds < 2
    listed = list(fresh.index)
    # The pages read before the cancel, whole: rows are made page by page, and the
    # cancel writes every row made (no FLUSH_SECONDS wait: the run lasted < 1 s).
    assert 300 <= len(stored) < len(listed) - 300
    assert sorted(stored) == sorted(listed[: len(stored)])
    assert_same_rows(resumed, fresh)
    if resume_with_head:  # only the ids without a stored row get a HEAD
        assert sorted(resent) == sorted(set(listed) - set(stored))
    else:
        assert not resent


def test_a_finished_listing_checkpoint_is_used_again(fleet: Fleet, tmp_path: Path) -> None:
    with GlanceEmulator(fleet, api_limit_max=200) as emu:
        common = dict(endpoint=emu.url, token=ADMIN_TOKEN, checkpoint=tmp_path, progress=False)
        first = imgframe.fetch_images(**common)
        assert len(stored_ids(tmp_path)) == len(first)
        again = imgframe.fetch_images(**common)
    assert_same_rows(again, first)
    # Restored rows keep the request id they were stored with.
    pd.testing.assert_series_equal(again["request_id"], first["request_id"])


def test_verify_with_head_must_be_a_bool() -> None:
    with pytest.raises(ConfigError, match="verify_with_head must be True or False"):
        imgframe.fetch_images(endpoint="http://127.0.0.1:9", token="t", verify_with_head="no")


# ----------------------------------------------------------------------- fleet and CLI
def test_fetch_fleet_passes_verify_with_head_on(fleet: Fleet) -> None:
    with GlanceEmulator(fleet, api_limit_max=300) as emu:
        lab = imgframe.Target("lab", endpoint=emu.url, token=ADMIN_TOKEN)
        from_listing = imgframe.fetch_fleet([lab], progress=False)
        assert not image_requests(emu)
        from_heads = imgframe.fetch_fleet([lab], progress=False, verify_with_head=True)
        assert len(image_requests(emu)) == len(from_heads)
    assert_same_rows(from_listing, from_heads)


def test_cli_all_uses_the_listing_and_head_asks_each_image(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("OS_AUTH_TOKEN", ADMIN_TOKEN)
    with GlanceEmulator(fleet, api_limit_max=500) as emu:
        listing_csv, head_csv = tmp_path / "listing.csv", tmp_path / "head.csv"
        assert main(["fetch", "--endpoint", emu.url, "--all", "-o", str(listing_csv)]) == 0
        assert not image_requests(emu)
        argv = ["fetch", "--endpoint", emu.url, "--all", "--head", "-o", str(head_csv)]
        assert main(argv) == 0
        heads = len(image_requests(emu))
        assert main(["fetch", "--endpoint", emu.url, "--head", "some-id"]) != 0
    assert "--head goes with --all" in capsys.readouterr().err
    from_listing, from_heads = imgframe.read(listing_csv), imgframe.read(head_csv)
    assert heads == len(from_heads) == len(from_listing)
    assert_same_rows(from_listing, from_heads)


# ----------------------------------------------------------------------- cloud=
@pytest.fixture
def cloud(fleet: Fleet, servers, use_clouds_yaml):
    other = make_fleet(40, seed=78)
    east, west = servers.glance(fleet), servers.glance(other)
    keystone = servers.keystone({"east": east, "west": west})
    use_clouds_yaml({"clouds": {"lab": {"auth": keystone.auth(), "regions": ["east", "west"]}}})
    return east, west, other


def test_cloud_is_the_clouds_yaml_shorthand(cloud, fleet: Fleet) -> None:
    east, west, other = cloud
    ids = [i.id for i in fleet.images[:30]]
    by_cloud = imgframe.fetch_images(ids, cloud="lab", progress=False)
    by_hand = imgframe.fetch_images(ids, endpoint=east.url, token=ADMIN_TOKEN, progress=False)
    assert_same_rows(by_cloud, by_hand)
    in_west = imgframe.fetch_images(cloud="lab", region="west", progress=False)
    assert set(in_west.index) == {i.id for i in other.images if not i.deleted}
    assert imgframe.list_image_ids(cloud="lab", region="west") == list(in_west.index)
    # endpoint= with cloud=: the cloud's token, that endpoint instead of the catalog's
    assert len(imgframe.list_image_ids(cloud="lab", endpoint=west.url)) == len(in_west)


def test_cloud_with_token_or_region_alone_is_a_config_error(cloud) -> None:
    with pytest.raises(ConfigError, match="give cloud= or token=, not both"):
        imgframe.fetch_images(["a"], cloud="lab", token=ADMIN_TOKEN)
    with pytest.raises(ConfigError, match="needs cloud="):
        imgframe.fetch_images(["a"], endpoint="http://127.0.0.1:9", token="t", region="east")
    with pytest.raises(ConfigError, match="give cloud= or token=, not both"):
        imgframe.list_image_ids(cloud="lab", token=ADMIN_TOKEN)
    with pytest.raises(ConfigError, match="no-such-cloud"):
        imgframe.list_image_ids(cloud="no-such-cloud")


# ----------------------------------------------------------------------- the mapping
_json_values = st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False)


_odd_values = st.sampled_from(["x\x00y", "\ud800", "Équipe ☃", 10**19, 10**5000, 1.5])


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["properties", "id", "name", "size"]) | st.text(min_size=1),
        _json_values
        | _odd_values
        | st.lists(_json_values, max_size=3)
        | st.dictionaries(
            st.text() | st.sampled_from(["Env", "os"]), _json_values | _odd_values, max_size=3
        ),
        max_size=8,
    )
)
def test_the_packed_detail_record_is_its_packed_header_pairs(record: dict) -> None:
    from imgframe.parse import pack_headers, v1_detail_header_pairs, v1_detail_packed

    assert v1_detail_packed(record) == pack_headers(v1_detail_header_pairs(record))


_v2_keys = st.sampled_from(
    ["id", "name", "size", "visibility", "tags", "os_hidden", "checksum", "self", "Env"]
) | st.text(min_size=1)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        _v2_keys,
        _json_values
        | st.sampled_from(["public", "private"])
        | _odd_values
        | st.lists(_json_values | _odd_values, max_size=3)
        | st.lists(st.sampled_from(["gold", "a b", 'q"', "é", "", "\\"]), max_size=3)
        | st.dictionaries(st.text(), _json_values, max_size=3),
        max_size=10,
    )
)
def test_the_packed_v2_document_is_its_packed_header_pairs(document: dict) -> None:
    from imgframe.parse import pack_headers, v2_header_pairs, v2_packed

    assert v2_packed(document) == pack_headers(v2_header_pairs(document))
    assert v2_packed(document) == pack_headers(v2_header_pairs(document))  # names cached


def test_a_detail_record_reads_as_its_head_answer(fleet: Fleet) -> None:
    from imgframe.frame import frame_from_headers
    from imgframe.parse import v1_detail_header_pairs
    from imgframe.testing.emulator import _detail, render_headers

    images = fleet.images[:300]
    records = json.loads(json.dumps([_detail(i) for i in images]))  # as the wire has them
    from_detail = frame_from_headers(
        [{k.decode(): v.decode() for k, v in v1_detail_header_pairs(r)} for r in records]
    )
    from_head = frame_from_headers([dict(render_headers(i)) for i in images])
    pd.testing.assert_frame_equal(
        from_detail.drop(columns="request_id"), from_head.drop(columns="request_id")
    )
