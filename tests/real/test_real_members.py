"""Shares seen from the member's side: pending and rejected ones belong in "every image".

The admin project shares three images with a ``members`` project; its (non-admin) user
accepts one, rejects one and leaves one pending. Glance's default v2 listing gives that
user only the accepted one; ``member_status=all`` gives all three. imgframe's listing of
every image, and the frame built from it, must hold all three, each row equal to the
image's v2 document as the member sees it.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pytest
import requests
from realcheck import assert_row_is_document, document, keystone_token, v2_listing

import imgframe

pytestmark = pytest.mark.real

MEMBER_PASSWORD = "real-member-s3cret"
EVERY = {"visibility": "all", "member_status": "all"}


@dataclass
class Member:
    project: str  # its id
    token: str  # a token of the member user, scoped to its project
    shares: dict[str, str]  # member status -> image id


@pytest.fixture(scope="module")
def member(cloud: Any, glance: Any) -> Member:
    keystone = requests.Session()
    keystone.headers["X-Auth-Token"] = glance.token
    base = cloud.keystone_url

    def created(path: str, kind: str, body: dict[str, Any]) -> str:
        answer = keystone.post(f"{base}/{path}", json={kind: body}, timeout=30)
        assert answer.status_code == 201, answer.text
        return str(answer.json()[kind]["id"])

    project = created("projects", "project", {"name": "members", "domain_id": "default"})
    user = created(
        "users",
        "user",
        {"name": "member-user", "password": MEMBER_PASSWORD, "domain_id": "default"},
    )
    roles = keystone.get(f"{base}/roles?name=member", timeout=30).json()["roles"]
    answer = keystone.put(
        f"{base}/projects/{project}/users/{user}/roles/{roles[0]['id']}", timeout=30
    )
    assert answer.status_code == 204, answer.text
    token = cloud.login("member-user", MEMBER_PASSWORD, "members")
    as_member = requests.Session()
    as_member.headers["X-Auth-Token"] = token
    shares = {}
    for status in ("pending", "rejected", "accepted"):
        image = glance.create(f"{status}\n".encode(), name=f"share-{status}", visibility="shared")
        glance.call("POST", f"/v2/images/{image}/members", 200, json={"member": project})
        if status != "pending":  # only the member itself can answer a share
            answer = as_member.put(
                f"{glance.url}/v2/images/{image}/members/{project}",
                json={"status": status},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
        shares[status] = image
    return Member(project, token, shares)


def test_shares_are_in_the_state_asked(glance: Any, member: Member) -> None:
    for status, image in member.shares.items():
        answer = requests.get(
            f"{glance.url}/v2/images/{image}/members/{member.project}",
            headers={"X-Auth-Token": member.token},
            timeout=30,
        )
        assert answer.status_code == 200 and answer.json()["status"] == status
    default = set(v2_listing(glance.url, member.token))
    assert member.shares["accepted"] in default
    assert member.shares["pending"] not in default and member.shares["rejected"] not in default
    assert set(member.shares.values()) <= set(v2_listing(glance.url, member.token, **EVERY))


def _glance_every_image(glance: Any, token: str) -> set[str]:
    """Every image Glance v2 lists for ``token``: any visibility and share status,
    hidden or not (hidden images only come when asked for)."""
    listed = set(v2_listing(glance.url, token, **EVERY))
    hidden = set(v2_listing(glance.url, token, **EVERY, os_hidden="true"))
    # member_status=all alone (Glance's own visibility default) lists nothing more.
    assert set(v2_listing(glance.url, token, member_status="all")) <= listed | hidden
    return listed | hidden


def test_member_listing_holds_pending_and_rejected_shares(glance: Any, member: Member) -> None:
    listed = imgframe.list_image_ids(endpoint=glance.url, token=member.token, api="v2", page_size=2)
    assert len(listed) == len(set(listed))
    assert set(member.shares.values()) <= set(listed)
    assert set(listed) == _glance_every_image(glance, member.token)


def test_member_frame_from_the_listing_equals_the_documents(glance: Any, member: Member) -> None:
    df = imgframe.fetch_images(endpoint=glance.url, token=member.token, api="v2", progress=False)
    assert set(member.shares.values()) <= set(df.index)
    assert set(df.index) == _glance_every_image(glance, member.token)
    for image_id in df.index:
        assert_row_is_document(df.loc[image_id], document(glance.url, member.token, image_id))
    for image in member.shares.values():  # owned by the sharing project, not the member
        assert df.loc[image, "visibility"] == "shared"
        assert df.loc[image, "owner"] != member.project


def test_member_fetch_by_id_reads_every_share(
    cloud: Any, glance: Any, member: Member, seeded: Any
) -> None:
    """Given ids (GET per id, a KeystoneToken of the member user): each share is a 200
    row equal to its document; an image of the admin's the member may not see is a 404."""
    private, missing = seeded.ids["private"], str(uuid.uuid4())
    ids = [*member.shares.values(), private, missing]
    token = keystone_token(
        cloud, username="member-user", password=MEMBER_PASSWORD, project="members"
    )
    df = imgframe.fetch_images(ids, token=token, api="v2", progress=False)
    for image in member.shares.values():
        assert_row_is_document(df.loc[image], document(glance.url, member.token, image))
    assert df.loc[private, "http_status"] == 404 and df.loc[missing, "http_status"] == 404


def _glance_members(glance_url: str, token: str, image_id: str) -> list[dict[str, Any]]:
    """Glance's own ``GET /v2/images/{id}/members``, as the members column writes it."""
    answer = requests.get(
        f"{glance_url}/v2/images/{image_id}/members", headers={"X-Auth-Token": token}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    listed = answer.json()["members"]
    return sorted(
        ({"member_id": m["member_id"], "status": m["status"], "can_share": None} for m in listed),
        key=lambda m: m["member_id"],
    )


def test_members_as_the_owner_equal_glances_own_members_list(
    glance: Any, member: Member, seeded: Any
) -> None:
    """fetch_images(api="v2", members=True) by the sharing (admin) project: each shared
    image's members column is Glance's own members list; a private image gets none."""
    private = seeded.ids["private"]
    ids = [*member.shares.values(), private]
    df = imgframe.fetch_images(
        ids, endpoint=glance.url, token=glance.token, api="v2", members=True, progress=False
    )
    assert df["error"].isna().all(), df["error"].tolist()
    for status, image in member.shares.items():
        members = json.loads(df.loc[image, "members"])
        assert members == _glance_members(glance.url, glance.token, image)
        assert members == [{"member_id": member.project, "status": status, "can_share": None}]
    assert pd.isna(df.loc[private, "members"])  # not shared: not asked (Glance: 403)
    found = imgframe.shared_outside(df, trusted=[])
    assert set(found.index) == set(member.shares.values())


def test_a_member_sees_only_its_own_membership(glance: Any, member: Member) -> None:
    df = imgframe.fetch_images(
        list(member.shares.values()), endpoint=glance.url, token=member.token, api="v2",
        members=True, progress=False,
    )  # fmt: skip
    for status, image in member.shares.items():
        assert (
            json.loads(df.loc[image, "members"])
            == _glance_members(glance.url, member.token, image)
            == [{"member_id": member.project, "status": status, "can_share": None}]
        )
