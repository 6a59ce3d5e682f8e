"""Servers and volumes: fetch_servers / fetch_volumes against the Nova and Cinder emulator,
image_usage, and the usage audit rules (unused, only_stopped_servers) on a seeded fleet."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import imgframe
from imgframe import audits
from imgframe.errors import FetchError, ImgframeParseWarning, IncompleteListingWarning
from imgframe.schema import SERVER_FIELDS, VOLUME_FIELDS, fields_markdown
from imgframe.testing import ADMIN_TOKEN, Fleet
from imgframe.testing.compute import ComputeEmulator, Usage, make_usage
from imgframe.usage_frame import is_complete, servers_frame, volumes_frame

FLEET = {"n": 400, "seed": 11}
MEMBER = "member-token"


@pytest.fixture(scope="module")
def usage(fleet: Fleet) -> Usage:
    return make_usage(fleet, seed=11)


@pytest.fixture(scope="module")
def member_project(usage: Usage) -> str:
    return usage.servers[0].project_id


@pytest.fixture(scope="module")
def compute(usage: Usage, member_project: str) -> Iterator[ComputeEmulator]:
    emulator = ComputeEmulator(usage, tokens={ADMIN_TOKEN: None, MEMBER: member_project})
    with emulator:
        yield emulator


@pytest.fixture(scope="module")
def images(fleet: Fleet, emulator: Any) -> pd.DataFrame:
    return imgframe.fetch_images([i.id for i in fleet.images], endpoint=emulator.url,
                                 token=ADMIN_TOKEN, progress=False)  # fmt: skip


@pytest.fixture(scope="module")
def listed(compute: ComputeEmulator) -> tuple[pd.DataFrame, pd.DataFrame]:
    servers = imgframe.fetch_servers(compute.compute_url, ADMIN_TOKEN, page_size=50)
    volumes = imgframe.fetch_volumes(compute.volume_url, ADMIN_TOKEN, page_size=20)
    return servers, volumes


# --------------------------------------------------------------------------- the parser
SCALAR = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)


def _nested(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    )


JSON = st.recursive(SCALAR, _nested, max_leaves=8)
KEYS = st.sampled_from(
    ["id", "name", "status", "image", "tenant_id", "created", "updated", "bootable", "size",
     "attachments", "volume_image_metadata", "os-vol-tenant-attr:tenant_id"]
)  # fmt: skip
RECORD = st.dictionaries(KEYS, JSON, max_size=8) | JSON


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(RECORD, max_size=6))
def test_record_parsers_never_raise_and_give_one_row_per_record(records: list[Any]) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        servers = servers_frame(records)
        volumes = volumes_frame(records)
    assert len(servers) == len(volumes) == len(records)
    assert list(servers.columns) == [f.column for f in SERVER_FIELDS[1:]]
    assert list(volumes.columns) == [f.column for f in VOLUME_FIELDS[1:]]
    assert len([w for w in caught if issubclass(w.category, ImgframeParseWarning)]) <= 2


def test_hostile_values_become_na_with_one_warning() -> None:
    records = [
        {"id": "v1", "bootable": "perhaps", "size": "12x", "attachments": "nope"},
        {"id": "v2", "bootable": "false", "size": 3, "attachments": [{"server_id": 7}]},
    ]
    with pytest.warns(ImgframeParseWarning) as caught:
        df = volumes_frame(records)
    assert len(caught) == 1
    assert "bootable" in str(caught[0].message) and "size_gb" in str(caught[0].message)
    assert df["bootable"].isna().tolist() == [True, False]
    assert df["size_gb"].tolist() == [pd.NA, 3]
    assert df["attached_servers"].isna().all()


def test_boot_from_volume_server_has_no_image_id() -> None:
    df = servers_frame([{"id": "s1", "image": ""}, {"id": "s2", "image": {"id": "i"}}])
    assert df["image_id"].isna().tolist() == [True, False]


# --------------------------------------------------------------------------- listings
def test_paging_follows_markers_to_every_server(compute: ComputeEmulator, usage: Usage) -> None:
    compute.requests.clear()
    df = imgframe.fetch_servers(compute.compute_url, ADMIN_TOKEN, page_size=40)
    assert set(df.index) == {s.id for s in usage.servers} and len(df) == len(usage.servers)
    pages = [q for path, q in compute.requests if path.endswith("/servers/detail")]
    assert len(pages) >= len(usage.servers) // 40
    assert all(q["all_tenants"] == "1" and q["limit"] == "40" for q in pages)
    markers = [q["marker"] for q in pages[1:]]
    assert len(set(markers)) == len(markers) == len(pages) - 1
    assert is_complete(df) == (True, None)


def test_server_columns_are_typed(listed: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    servers, volumes = listed
    assert str(servers["created_at"].dtype) == "datetime64[ns, UTC]"
    assert str(servers["status"].dtype) == "category"
    assert str(volumes["size_gb"].dtype) == "Int64" and str(volumes["bootable"].dtype) == "boolean"
    assert servers.index.name == volumes.index.name == "id"


def test_volume_paging_reads_every_volume(compute: ComputeEmulator, usage: Usage) -> None:
    df = imgframe.fetch_volumes(compute.volume_url, ADMIN_TOKEN, page_size=7)
    assert len(df) == len(usage.volumes) and set(df.index) == {v.id for v in usage.volumes}
    bfv = {v.id: v for v in usage.volumes if v.attached_servers}
    some = next(iter(bfv))
    assert json.loads(df.loc[some, "attached_servers"]) == list(bfv[some].attached_servers)
    assert df["project_id"].notna().all()


def test_nova_clamps_the_page_and_the_client_follows(usage: Usage) -> None:
    with ComputeEmulator(usage, max_limit=25) as nova:
        df = imgframe.fetch_servers(nova.compute_url, ADMIN_TOKEN, page_size=1000)
        pages = len(nova.requests)
    assert len(df) == len(usage.servers) and pages >= len(usage.servers) // 25


def test_emulator_refuses_an_unknown_marker(compute: ComputeEmulator) -> None:
    request = urllib.request.Request(
        compute.compute_url + "/servers/detail?all_tenants=1&marker=nope",
        headers={"X-Auth-Token": ADMIN_TOKEN},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400


def test_member_token_lists_its_project_and_says_incomplete(
    compute: ComputeEmulator, usage: Usage, member_project: str
) -> None:
    with pytest.warns(IncompleteListingWarning, match="403"):
        df = imgframe.fetch_servers(compute.compute_url, MEMBER, page_size=10)
    assert set(df.index) == {s.id for s in usage.servers if s.project_id == member_project}
    complete, why = is_complete(df)
    assert not complete and "all_tenants" in (why or "")


def test_member_volumes_lack_projects_and_are_incomplete(
    compute: ComputeEmulator, usage: Usage, member_project: str
) -> None:
    with pytest.warns(IncompleteListingWarning, match="tenant_id"):
        df = imgframe.fetch_volumes(compute.volume_url, MEMBER)
    assert set(df.index) == {v.id for v in usage.volumes if v.project_id == member_project}
    assert not is_complete(df)[0]


def test_a_failed_page_is_an_error_not_a_short_frame(usage: Usage) -> None:
    with ComputeEmulator(usage, fail_page=3) as nova, pytest.raises(FetchError, match="503"):
        imgframe.fetch_servers(nova.compute_url, ADMIN_TOKEN, page_size=10, retries=1)
    assert nova.failed == 2  # the first try and one retry, then the error


def test_a_transient_failure_is_retried(usage: Usage) -> None:
    with ComputeEmulator(usage, fail_page=2, fail_attempts=2) as nova:
        df = imgframe.fetch_volumes(nova.volume_url, ADMIN_TOKEN, page_size=10, retries=3)
    assert len(df) == len(usage.volumes) and nova.failed == 2


def test_max_rps_paces_the_pages(usage: Usage) -> None:
    with ComputeEmulator(usage) as nova:
        started = time.monotonic()
        imgframe.fetch_volumes(nova.volume_url, ADMIN_TOKEN, page_size=10, max_rps=20)
        elapsed = time.monotonic() - started
        pages = len(nova.requests)
    assert pages >= 5
    assert elapsed >= (pages - 1) / 20 * 0.9  # never faster than 20 pages a second


def test_a_rejected_token_is_an_auth_error(compute: ComputeEmulator) -> None:
    with pytest.raises(imgframe.AuthError):
        imgframe.fetch_volumes(compute.volume_url, "wrong-token")


def test_no_endpoint_and_no_catalog_is_a_config_error() -> None:
    with pytest.raises(imgframe.ConfigError, match="compute"):
        imgframe.fetch_servers(token="t")


# --------------------------------------------------------------------------- usage and rules
def _rule(findings: pd.DataFrame, name: str) -> set[str]:
    return set(findings.loc[findings["rule"] == name, "image_id"])


def test_planted_usage_answers_are_found_exactly(
    images: pd.DataFrame, listed: tuple[pd.DataFrame, pd.DataFrame], usage: Usage
) -> None:
    findings = imgframe.audit(images, rules=["unused", "only_stopped_servers"], usage=listed)
    assert usage.planted.unused and usage.planted.only_stopped_servers
    assert _rule(findings, "unused") == usage.planted.unused
    assert _rule(findings, "only_stopped_servers") == usage.planted.only_stopped_servers
    assert findings.attrs["notes"] == []


def test_boot_from_volume_use_keeps_an_image_off_unused(
    images: pd.DataFrame, listed: tuple[pd.DataFrame, pd.DataFrame], usage: Usage
) -> None:
    servers, volumes = listed
    through = usage.planted.through_volumes
    assert through
    direct = set(servers["image_id"].dropna())
    assert through.isdisjoint(direct)  # a check of servers' image alone calls them unused
    found = set(imgframe.unused(images, usage=listed).index)
    assert through.isdisjoint(found)
    table = imgframe.image_usage(images, servers, volumes).loc[sorted(through)]
    assert (table["volumes"] > 0).all()


def test_used_by_other_projects_matches_the_plant(
    images: pd.DataFrame, listed: tuple[pd.DataFrame, pd.DataFrame], usage: Usage
) -> None:
    table = imgframe.image_usage(images, *listed)
    known = images["owner"].notna()
    flagged = set(table.index[table["used_by_other_projects"].fillna(False) & known])
    assert flagged == {i for i in usage.planted.other_projects if known.get(i, False)}


def test_without_volumes_unused_flags_nothing_and_says_so(
    images: pd.DataFrame, listed: tuple[pd.DataFrame, pd.DataFrame], caplog: Any
) -> None:
    servers, _ = listed
    with caplog.at_level(logging.WARNING, logger="imgframe.audits"):
        findings = imgframe.audit(images, rules=["unused"], usage=(servers, None))
    assert _rule(findings, "unused") == set()
    assert any("flagged nothing" in note for note in findings.attrs["notes"])
    assert "flagged nothing" in caplog.text
    with pytest.warns(IncompleteListingWarning):
        assert imgframe.unused(images, usage=(servers, None)).empty


def test_refused_all_tenants_means_unused_flags_nothing(
    images: pd.DataFrame, compute: ComputeEmulator
) -> None:
    with pytest.warns(IncompleteListingWarning):
        servers = imgframe.fetch_servers(compute.compute_url, MEMBER)
    volumes = imgframe.fetch_volumes(compute.volume_url, ADMIN_TOKEN)
    findings = imgframe.audit(images, rules=["unused"], usage=(servers, volumes))
    assert _rule(findings, "unused") == set()
    assert "403" in findings.attrs["notes"][0]


def test_usage_rules_are_skipped_with_a_note_without_usage(images: pd.DataFrame) -> None:
    findings = imgframe.audit(images, rules=["unused", "only_stopped_servers", "broken"])
    assert not {"unused", "only_stopped_servers"} & set(findings["rule"])
    assert "skipped unused, only_stopped_servers" in findings.attrs["notes"][0]
    with pytest.raises(imgframe.ConfigError, match="usage"):
        imgframe.unused(images)


def test_owner_summary_gains_reclaimable_bytes(
    images: pd.DataFrame, listed: tuple[pd.DataFrame, pd.DataFrame], usage: Usage
) -> None:
    summary = imgframe.owner_summary(images, usage=listed)
    planted = images.loc[sorted(usage.planted.unused)]
    sizes = audits.data_size(planted).fillna(0)
    expected = sizes.groupby(planted["owner"].astype("string"), dropna=False).sum()
    got = summary["reclaimable_bytes"]
    assert int(got.sum()) == int(expected.sum())
    for owner, total in expected.items():
        if pd.notna(owner):
            assert int(got[owner]) == int(total)
    assert int(summary["unused"].sum()) == len(usage.planted.unused)
    incomplete = imgframe.owner_summary(images, usage=(listed[0], None))
    assert incomplete["reclaimable_bytes"].isna().all()
    assert "reclaimable_bytes" not in imgframe.owner_summary(images).columns


def test_cloud_finds_nova_and_cinder_in_the_catalog(
    servers: Any, emulator: Any, compute: ComputeEmulator, usage: Usage, use_clouds_yaml: Any
) -> None:
    keystone = servers.keystone({"RegionOne": emulator}, compute={"RegionOne": compute})
    use_clouds_yaml({"clouds": {"lab": {"auth": keystone.auth(), "region_name": "RegionOne"}}})
    found = imgframe.fetch_servers(cloud="lab")
    volumes = imgframe.fetch_volumes(cloud="lab", region="RegionOne")
    assert len(found) == len(usage.servers) and len(volumes) == len(usage.volumes)
    assert is_complete(found)[0] and is_complete(volumes)[0]


def test_readme_column_tables_are_generated_from_the_schema() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert fields_markdown(SERVER_FIELDS) in readme
    assert fields_markdown(VOLUME_FIELDS) in readme


def test_a_shelved_servers_snapshot_is_used_not_unused() -> None:
    df = imgframe.frame_from_headers([
        {"x-image-meta-id": "snap", "x-image-meta-status": "active", "x-image-meta-owner": "p1",
         "x-image-meta-property-instance_uuid": "s1", "x-image-meta-size": "9"},
        {"x-image-meta-id": "old-snap", "x-image-meta-status": "active", "x-image-meta-owner": "p1",
         "x-image-meta-property-instance_uuid": "s2", "x-image-meta-size": "9"},
    ])  # fmt: skip
    servers = servers_frame([
        {"id": "s1", "status": "SHELVED_OFFLOADED", "image": {"id": "base"}, "tenant_id": "p1"},
        {"id": "s2", "status": "ACTIVE", "image": {"id": "base"}, "tenant_id": "p1"},
    ])  # fmt: skip
    usage = imgframe.image_usage(df, servers, volumes_frame([]))
    assert usage["servers"].tolist() == [1, 0]  # a running server's old snapshot is not used
    assert set(imgframe.unused(df, usage=usage).index) == {"old-snap"}
    assert set(imgframe.only_stopped_servers(df, usage=usage).index) == {"snap"}


def test_image_usage_has_one_typed_row_per_image(
    images: pd.DataFrame, listed: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    table = imgframe.image_usage(images, *listed)
    assert table.index.equals(images.index.astype("string[pyarrow]"))
    assert [str(t) for t in table.dtypes] == ["Int64"] * 5 + ["boolean"]
    assert (table["servers"] >= table["servers_active"] + table["servers_stopped"]).all()


def test_a_server_listed_on_two_pages_is_one_row() -> None:
    # A server whose sort key changed while listing shows up on two pages: one row.
    import asyncio
    import threading

    from aiohttp import web

    def server(n: str) -> dict[str, object]:
        return {"id": n, "name": n, "status": "ACTIVE", "image": {"id": "img"}, "tenant_id": "p"}

    pages = {
        None: [server("a"), server("b")],
        "b": [server("b"), server("c")],
        "c": [],
    }

    async def detail(request: web.Request) -> web.Response:
        marker = request.query.get("marker")
        page = pages[marker]
        links = (
            [{"rel": "next", "href": f"/servers/detail?marker={page[-1]['id']}"}] if page else []
        )
        return web.json_response({"servers": page, "servers_links": links})

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_get("/servers/detail", detail)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        df = imgframe.fetch_servers(f"http://127.0.0.1:{port}", ADMIN_TOKEN, page_size=2)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.run_until_complete(runner.cleanup())
        loop.close()
    assert df.index.tolist() == ["a", "b", "c"]
