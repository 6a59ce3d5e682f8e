"""Glance v2 fallback (docs/ARCHITECTURE.md, "The wire"): the same fleet through v1 and v2
gives the same columns; ``api="auto"`` switches a cloud without /v1 to v2; the v2-only columns."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from imgframe import ConfigError, NoV1ApiError, fetch_images
from imgframe.io import READERS, write
from imgframe.parse import v2_header_pairs
from imgframe.schema import FIELDS, V2_PREFIX, Kind, columns, dtypes
from imgframe.testing import ADMIN_TOKEN, Faults, GlanceEmulator

V2_ONLY = [f.column for f in FIELDS if f.header is not None and f.header.startswith(V2_PREFIX)]
# Columns both APIs fill from the image itself (request ids differ per request).
SHARED = [
    f.column
    for f in FIELDS
    if f.column not in V2_ONLY and f.column not in ("id", "request_id", "http_status", "error")
]


FLEET = {"n": 400, "seed": 23}  # the module's `fleet` (tests/conftest.py)


@pytest.fixture(scope="module")
def frames(fleet, emulator) -> tuple[pd.DataFrame, pd.DataFrame]:
    ids = [image.id for image in fleet.images]
    v1 = fetch_images(ids, endpoint=emulator.url, token=ADMIN_TOKEN, progress=False)
    v2 = fetch_images(ids, endpoint=emulator.url, token=ADMIN_TOKEN, progress=False, api="v2")
    return v1, v2


def test_v2_only_columns_are_in_the_schema() -> None:
    assert V2_ONLY == ["visibility", "os_hash_algo", "os_hash_value", "tags"]
    assert columns()[-5:-1] == V2_ONLY  # then members, read by a call of its own


def test_both_frames_have_the_contract_columns_and_dtypes(frames) -> None:
    for df in frames:
        assert list(df.columns) == columns()
        for column, dtype in df.dtypes.items():
            assert dtype == dtypes()[column], column


def test_same_fleet_through_v1_and_v2_gives_equal_shared_columns(fleet, frames) -> None:
    v1, v2 = frames
    assert v1.index.equals(v2.index)
    deleted = v1["deleted"].to_numpy(dtype=bool)
    assert deleted.any() and not deleted.all()  # the fleet has both kinds
    # v2 never shows deleted images, not even to an admin.
    assert (v2.loc[deleted, "http_status"] == 404).all()
    live = ~deleted
    assert (v1.loc[live, "http_status"] == 200).all()
    assert (v2.loc[live, "http_status"] == 200).all()
    a, b = v1.loc[live], v2.loc[live]
    for column in SHARED:
        left, right = a[column], b[column]
        if column == "properties":
            assert left.tolist() == right.tolist()
            assert any(left.tolist())  # the fleet has properties to compare
            continue
        if field_kind(column) is Kind.TIMESTAMP:  # v2 renders whole seconds
            left, right = left.dt.floor("s"), right.dt.floor("s")
        if field_kind(column) is Kind.CATEGORY:  # categories differ with the rows seen
            left, right = left.astype("string"), right.astype("string")
        assert_series_equal_values(left, right, column)
    assert b["request_id"].str.startswith("req-").all()


def field_kind(column: str) -> Kind:
    return next(f.kind for f in FIELDS if f.column == column)


def assert_series_equal_values(left: pd.Series, right: pd.Series, column: str) -> None:
    pd.testing.assert_series_equal(left, right, check_names=False, obj=column)


def test_is_public_is_visibility_public_and_v2_columns_are_filled(frames) -> None:
    _, v2 = frames
    live = v2[v2["http_status"] == 200]
    assert (live["is_public"] == (live["visibility"] == "public")).all()
    assert set(live["visibility"].dropna()) <= {"public", "private", "shared", "community"}
    assert {"public", "private"} <= set(live["visibility"].dropna())
    assert (live["deleted"] == False).all()  # noqa: E712 - a nullable boolean column
    hashed = live["checksum"].notna()
    assert (live.loc[hashed, "os_hash_algo"] == "sha512").all()
    assert live.loc[hashed, "os_hash_value"].str.fullmatch("[0-9a-f]{128}").all()
    assert live.loc[~hashed, "os_hash_value"].isna().all()
    tags = [json.loads(t) for t in live["tags"]]
    assert all(isinstance(t, list) for t in tags) and any(tags) and not all(tags)


def test_v2_only_columns_are_na_for_v1_rows(frames) -> None:
    v1, _ = frames
    for column in V2_ONLY:
        assert v1[column].isna().all(), column


def test_auto_switches_a_cloud_without_v1_to_v2(fleet, frames) -> None:
    ids = [image.id for image in fleet.images]
    with GlanceEmulator(fleet, faults=Faults(no_v1=True)) as emu:
        with pytest.raises(NoV1ApiError):
            fetch_images(ids[:3], endpoint=emu.url, token=ADMIN_TOKEN, progress=False)
        emu.reset_log()
        df = fetch_images(ids, endpoint=emu.url, token=ADMIN_TOKEN, progress=False, api="auto")
        log = emu.request_log
    assert df["error"].isna().sum() + (df["http_status"] == 404).sum() == len(ids)
    _, v2 = frames
    assert df["http_status"].tolist() == v2["http_status"].tolist()
    shared = [c for c in columns() if c != "request_id"]
    assert_frame_equal(df[shared].astype("object"), v2[shared].astype("object"), check_dtype=False)
    got = [r.path.rsplit("/", 1)[-1] for r in log if r.path.startswith("/v2/images/")]
    assert sorted(got) == sorted(ids)  # every id once through v2: the 300s were not retried
    v1_requests = [r for r in log if r.path.startswith("/v1/")]
    assert v1_requests and all(r.status == 300 for r in v1_requests)
    assert len(v1_requests) <= 32  # at most one per worker before the switch


def test_auto_on_a_v1_cloud_stays_v1(fleet, emulator) -> None:
    ids = [image.id for image in fleet.images[:20]]
    emulator.reset_log()
    fetch_images(ids, endpoint=emulator.url, token=ADMIN_TOKEN, progress=False, api="auto")
    assert all(r.path.startswith("/v1/images/") for r in emulator.request_log)


def test_v2_never_sends_a_v1_request_and_unknown_ids_are_404(fleet, emulator) -> None:
    unknown = [f"00000000-0000-4000-8000-{i:012d}" for i in range(5)]
    ids = [image.id for image in fleet.images[:30]] + unknown
    emulator.reset_log()
    df = fetch_images(ids, endpoint=emulator.url, token=ADMIN_TOKEN, progress=False, api="v2")
    log = emulator.request_log
    assert log and all(r.method == "GET" and r.path.startswith("/v2/images/") for r in log)
    assert (df.loc[unknown, "http_status"] == 404).all()
    assert (df.loc[unknown, "error"] == "HTTP 404 Not Found").all()
    assert df.loc[unknown, "name"].isna().all()


def test_v2_applies_v1_visibility_and_token_rules(fleet, emulator) -> None:
    ids = [image.id for image in fleet.images]
    owner = next(image.owner for image in fleet.images if not image.is_public and image.owner)
    token = emulator.issue_token(owner)
    v1 = fetch_images(ids, endpoint=emulator.url, token=token, progress=False)
    v2 = fetch_images(ids, endpoint=emulator.url, token=token, progress=False, api="v2")
    assert v1["http_status"].tolist() == v2["http_status"].tolist()
    assert (v2["http_status"] == 404).any() and (v2["http_status"] == 200).any()
    bad = fetch_images(ids[:5], endpoint=emulator.url, token="nope", progress=False, api="v2")
    assert (bad["http_status"] == 401).all()


def test_api_must_be_known() -> None:
    with pytest.raises(ConfigError, match="api must be"):
        fetch_images(["x"], endpoint="http://127.0.0.1:9", token="t", api="v3")  # type: ignore[arg-type]


def test_v2_document_maps_to_v1_header_pairs() -> None:
    pairs = dict(
        v2_header_pairs(
            {
                "id": "abc",
                "name": "niño",
                "visibility": "community",
                "size": 10,
                "protected": True,
                "checksum": None,
                "tags": ["a,b", "c"],
                "self": "/v2/images/abc",
                "locations": [],
                "os_hidden": False,
                "hw_cpu_count": 4,
                "Os_Distro": "cirros",
            }
        )
    )
    assert pairs[b"x-image-meta-name"] == "niño".encode()
    assert pairs[b"x-image-meta-is_public"] == b"False"
    assert pairs[b"x-image-meta-deleted"] == b"False"
    assert pairs[b"x-image-meta-protected"] == b"True"
    assert pairs[b"x-image-meta-size"] == b"10"
    assert b"x-image-meta-checksum" not in pairs  # null: left out, as v1 leaves it out
    assert json.loads(pairs[V2_PREFIX.encode() + b"tags"]) == ["a,b", "c"]
    props = {k: v for k, v in pairs.items() if k.startswith(b"x-imgframe-property-")}
    assert props == {
        b"x-imgframe-property-hw_cpu_count": b"4",
        b"x-imgframe-property-Os_Distro": b"cirros",
        # No column holds os_hidden: it is kept as a property rather than lost.
        b"x-imgframe-property-os_hidden": b"False",
    }


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".json"])
def test_v2_frame_round_trips(frames, suffix: str, tmp_path: Path) -> None:
    _, v2 = frames
    back = READERS[suffix](write(v2, tmp_path / f"images{suffix}"))
    assert_frame_equal(back, v2)
