"""``imgframe.fetch_fleet`` against the real services: two regions of one cloud.

A second region (``RegionTwo``) is registered in Keystone's catalog for the same Glance,
its endpoint written with a ``/v2`` suffix as many clouds do, so one login serves two
targets. Each fleet row is compared with the v2 document of its image, and its
``cloud`` / ``region`` / ``id`` and ``key`` with the target it came from.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import requests
from realcheck import admin_password, assert_row_is_document, document, keystone_token, v2_listing

import imgframe

pytestmark = pytest.mark.real

REGIONS = ["RegionOne", "RegionTwo"]


@pytest.fixture(scope="module")
def region_two(cloud: Any) -> Iterator[str]:
    """``RegionTwo`` with a public image endpoint ``<glance>/v2``; removed afterwards."""
    keystone = requests.Session()
    keystone.headers["X-Auth-Token"] = cloud.admin_token()
    base = cloud.keystone_url
    answer = keystone.post(f"{base}/regions", json={"region": {"id": "RegionTwo"}}, timeout=30)
    assert answer.status_code == 201, answer.text
    services = keystone.get(f"{base}/services?type=image", timeout=30).json()["services"]
    answer = keystone.post(
        f"{base}/endpoints",
        json={
            "endpoint": {
                "service_id": services[0]["id"],
                "interface": "public",
                "region_id": "RegionTwo",
                "url": f"{cloud.glance_url}/v2",
            }
        },
        timeout=30,
    )
    assert answer.status_code == 201, answer.text
    endpoint = answer.json()["endpoint"]["id"]
    try:
        yield "RegionTwo"
    finally:
        assert keystone.delete(f"{base}/endpoints/{endpoint}", timeout=30).status_code == 204
        assert keystone.delete(f"{base}/regions/RegionTwo", timeout=30).status_code == 204


def _assert_fleet_rows(df: pd.DataFrame, glance: Any, ids_by_region: dict[str, set[str]]):
    """One row per region and image, labelled with both, equal to the image's document."""
    assert df.index.name == "key" and df.index.is_unique
    assert list(df.columns[:3]) == ["cloud", "region", "id"]
    assert (df["cloud"] == "real").all()
    got = {region: set(df.loc[df["region"] == region, "id"]) for region in df["region"].unique()}
    assert got == ids_by_region
    assert list(df.index) == [f"real/{r}/{i}" for r, i in zip(df["region"], df["id"], strict=True)]
    documents: dict[str, dict[str, Any]] = {}
    for _, row in df.iterrows():
        image_id = row["id"]
        if image_id not in documents:
            documents[image_id] = document(glance.url, glance.token, image_id)
        assert_row_is_document(row, documents[image_id])


def test_fleet_of_the_catalog_regions_with_ids(
    cloud: Any, glance: Any, seeded: Any, region_two: str
) -> None:
    """A KeystoneToken without a region: one target per catalog region, one login."""
    ids = [seeded.ids[label] for label in ("public", "shared", "community", "hidden", "unicode")]
    token = keystone_token(cloud, region=None)
    df = imgframe.fetch_fleet(
        [imgframe.Target("real", token=token)], ids=ids, api="v2", progress=False
    )
    assert token.logins == 1  # both regions on the one login
    _assert_fleet_rows(df, glance, {region: set(ids) for region in REGIONS})
    for region in REGIONS:  # each region's rows in the order of the ids asked
        assert list(df.loc[df["region"] == region, "id"]) == ids


def test_fleet_of_clouds_yaml_regions_lists_every_image(
    cloud: Any, glance: Any, seeded: Any, region_two: str, tmp_path: Path, monkeypatch: Any
) -> None:
    """A clouds.yaml cloud with two regions, no ids: each region's whole listing, every
    image Glance v2 lists for the admin with every visibility, share status, hidden flag."""
    clouds = {
        "clouds": {
            "real": {
                "auth": {
                    "auth_url": cloud.keystone_url,
                    "username": "admin",
                    "password": admin_password(),
                    "project_name": "admin",
                    "user_domain_name": "Default",
                    "project_domain_name": "Default",
                },
                "regions": REGIONS,
                "interface": "public",
            }
        }
    }
    (tmp_path / "clouds.yaml").write_text(json.dumps(clouds))  # JSON is YAML
    for name in [n for n in os.environ if n.startswith("OS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(tmp_path / "clouds.yaml"))
    monkeypatch.setenv("OS_CLIENT_SECURE_FILE", str(tmp_path / "secure.yaml"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    every = {"visibility": "all", "member_status": "all"}
    expected = set(v2_listing(glance.url, glance.token, **every))
    expected |= set(v2_listing(glance.url, glance.token, **every, os_hidden="true"))
    assert set(seeded.ids.values()) <= expected  # the hidden one too
    df = imgframe.fetch_fleet(["real"], api="v2", progress=False)
    _assert_fleet_rows(df, glance, {region: expected for region in REGIONS})
