"""What the ``real`` tests share: a row compared with its v2 document, Keystone logins.

``tests/real/conftest.py`` loads this module as ``realcheck`` (the suite imports test
modules with ``--import-mode=importlib``, so a sibling is not importable by name).
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import requests

import imgframe

# What a v2 document holds besides custom properties (imgframe/parse.py's list, written
# out again here so that the test does not take imgframe's word for it).
# os_hidden is not in it: no column holds it, so imgframe keeps it as a property.
V2_NOT_PROPERTIES = {
    "id", "name", "status", "size", "virtual_size", "checksum", "container_format",
    "disk_format", "owner", "protected", "min_ram", "min_disk", "created_at", "updated_at",
    "visibility", "tags", "os_hash_algo", "os_hash_value", "self", "file", "schema",
    "direct_url", "locations", "stores",
}  # fmt: skip


def admin_password() -> str:
    from real_openstack import ADMIN_PASSWORD

    return str(ADMIN_PASSWORD)


def keystone_token(
    cloud: Any,
    *,
    keystone_url: str | None = None,
    region: str | None = "RegionOne",
    username: str = "admin",
    password: str | None = None,
    project: str = "admin",
    **kwargs: Any,
) -> imgframe.KeystoneToken:
    """A KeystoneToken logging in with a password to ``keystone_url`` (default: the main
    Keystone), for ``region``'s image endpoint (None: any, or every one in a fleet)."""
    from keystoneauth1.identity import v3

    auth = v3.Password(
        auth_url=keystone_url or cloud.keystone_url,
        username=username,
        password=password or admin_password(),
        user_domain_name="Default",
        project_name=project,
        project_domain_name="Default",
    )
    return imgframe.KeystoneToken(auth, region=region, **kwargs)


def text(value: Any) -> str:
    """A v2 property value as imgframe keeps it: v1 header text."""
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def na(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value))


def assert_row_is_document(row: pd.Series, doc: dict[str, Any]) -> None:
    """Every field imgframe has for the image equals the v2 document's."""
    label = f"{doc['name']!r} ({doc['id']})"
    for column in (
        "name", "status", "size", "virtual_size", "checksum", "container_format",
        "disk_format", "owner", "visibility", "os_hash_algo", "os_hash_value",
    ):  # fmt: skip
        expected, got = doc.get(column), row[column]
        if expected is None:
            assert na(got), (label, column, got)
        else:
            assert not na(got) and str(got) == str(expected), (label, column, got, expected)
    for column in ("min_ram", "min_disk"):
        assert row[column] == doc[column], (label, column)
    assert bool(row["protected"]) is doc["protected"], label
    assert bool(row["is_public"]) is (doc["visibility"] == "public"), label
    assert bool(row["deleted"]) is False, label
    for column in ("created_at", "updated_at"):
        assert row[column] == pd.Timestamp(doc[column]), (label, column)
    if doc["tags"]:
        assert json.loads(row["tags"]) == doc["tags"], label
    else:
        assert na(row["tags"]) or json.loads(row["tags"]) == [], label
    expected_properties = {
        key: text(value)
        for key, value in doc.items()
        if key not in V2_NOT_PROPERTIES and value is not None
    }
    assert dict(row["properties"]) == expected_properties, label
    assert row["http_status"] == 200 and na(row["error"]), label
    assert isinstance(row["request_id"], str) and row["request_id"].startswith("req-"), label


def v2_listing(glance_url: str, token: str, **filters: str) -> list[str]:
    """The ids Glance's v2 listing gives ``token`` with ``filters``, every page followed
    (bounded: a server repeating a page fails the test instead of looping)."""
    ids: list[str] = []
    path: str | None = "/v2/images"
    params: dict[str, str] | None = {"limit": "50", **filters}
    for _ in range(1000):
        answer = requests.get(
            glance_url + path, params=params, headers={"X-Auth-Token": token}, timeout=60
        )
        assert answer.status_code == 200, (path, answer.status_code, answer.text)
        body = answer.json()
        ids.extend(image["id"] for image in body["images"])
        path, params = body.get("next"), None  # ``next`` carries the filters and marker
        if path is None:
            assert len(ids) == len(set(ids)), "Glance listed an image twice"
            return ids
    raise AssertionError(f"{glance_url}: more than 1000 listing pages")


def document(glance_url: str, token: str, image_id: str) -> dict[str, Any]:
    """``GET /v2/images/{id}`` as ``token`` sees it."""
    answer = requests.get(
        f"{glance_url}/v2/images/{image_id}", headers={"X-Auth-Token": token}, timeout=60
    )
    assert answer.status_code == 200, (image_id, answer.status_code, answer.text)
    body: dict[str, Any] = answer.json()
    return body
