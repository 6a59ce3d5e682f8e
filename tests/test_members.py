"""Image members (imgframe/members.py): the members column against the emulator's seeded
shares over real HTTP, which images are asked, what a member token sees, failures as row
errors, resume, the listing mode, fleets, the CLI and the sharing audit rules."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import imgframe
from imgframe import CheckpointError, fetch_fleet, fetch_images
from imgframe.members import (
    BAD_MEMBER,
    CONFLICTING,
    MEMBERS_NOT_READ,
    NO_MEMBERS,
    NOT_JSON,
    NOT_OBJECT,
    OTHER_IMAGE,
    TOO_BIG,
    MembersProblem,
    may_have_members,
    members_text,
)
from imgframe.outcome import run_outcome
from imgframe.testing import ADMIN_TOKEN, Faults, Fleet, GlanceEmulator
from imgframe.testing.emulator import MEMBER_LIES
from imgframe.testing.fleet import FleetImage, FleetMember, v2_visibility

FLEET = {"n": 400, "seed": 31}  # the module's `fleet` (tests/conftest.py)


def text(members: list[FleetMember] | tuple[FleetMember, ...], api: str) -> str:
    """The members column's text for these members, as the contract fixes it."""
    rows = [
        {
            "member_id": m.member_id,
            "status": m.status if api == "v2" else None,
            "can_share": None if api == "v2" else m.can_share,
        }
        for m in sorted(members, key=lambda m: m.member_id)
    ]
    return json.dumps(rows, separators=(",", ":"), ensure_ascii=False)


def asked(image: FleetImage, api: str) -> bool:
    """Whether imgframe asks this image's members (v1: not public, not deleted; v2: shared)."""
    if api == "v1":
        return not image.is_public and not image.deleted
    return not image.deleted and v2_visibility(image) == "shared"


def member_calls(emulator: GlanceEmulator) -> list[str]:
    """The image ids of the members requests the emulator got since its log was reset."""
    return [r.path.split("/")[3] for r in emulator.request_log if r.path.endswith("/members")]


def ids_of(fleet: Fleet) -> list[str]:
    return [image.id for image in fleet.images]


def expected_column(fleet: Fleet, api: str) -> dict[str, str | None]:
    return {
        image.id: text(image.members, api) if asked(image, api) else None
        for image in fleet.images
        if api == "v1" or not image.deleted
    }


def column(df: pd.DataFrame) -> dict[str, str | None]:
    return {k: (None if pd.isna(v) else v) for k, v in df["members"].items()}


# --- the column equals the seeded members ------------------------------------------------


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_the_members_column_equals_the_seeded_members_of_every_image(
    fleet: Fleet, emulator: GlanceEmulator, api: str
) -> None:
    emulator.reset_log()
    df = fetch_images(
        ids_of(fleet),
        endpoint=emulator.url,
        token=ADMIN_TOKEN,
        api=api,
        members=True,
        progress=False,
    )
    read = df[df["http_status"] == 200]
    assert read["error"].isna().all()
    assert column(read) == expected_column(fleet, api)
    assert str(df["members"].dtype) == "category"
    # Some images have members, some have none ([]), some cannot have them (NA).
    values = set(column(read).values())
    assert "[]" in values and None in values and len(values) > 10
    # One members request per image that can have them, none for the others.
    calls = member_calls(emulator)
    assert sorted(calls) == sorted(i.id for i in fleet.images if asked(i, api))
    public = {i.id for i in fleet.images if i.is_public}
    assert public and not public & set(calls)


def test_without_members_nothing_is_asked_and_the_column_is_na(
    fleet: Fleet, emulator: GlanceEmulator
) -> None:
    emulator.reset_log()
    df = fetch_images(ids_of(fleet)[:50], endpoint=emulator.url, token=ADMIN_TOKEN, progress=False)
    assert df["members"].isna().all() and not member_calls(emulator)


def test_v2_non_shared_images_get_no_request_and_glance_answers_403_for_them(
    fleet: Fleet, emulator: GlanceEmulator
) -> None:
    import requests

    private = next(i for i in fleet.images if v2_visibility(i) == "private" and not i.deleted)
    answer = requests.get(
        f"{emulator.url}/v2/images/{private.id}/members",
        headers={"X-Auth-Token": ADMIN_TOKEN},
        timeout=5,
    )
    assert answer.status_code == 403  # glance/api/v2/image_members.py: only shared images
    public = next(i for i in fleet.images if i.is_public and not i.deleted)
    emulator.reset_log()
    df = fetch_images(
        [private.id, public.id],
        endpoint=emulator.url,
        token=ADMIN_TOKEN,
        api="v2",
        members=True,
        progress=False,
    )
    assert df["members"].isna().all() and df["error"].isna().all() and not member_calls(emulator)


def test_a_member_token_sees_only_its_own_membership_and_the_owner_sees_all(
    fleet: Fleet, emulator: GlanceEmulator
) -> None:
    member = fleet.projects[1]
    shared = [i for i in fleet.images if any(m.member_id == member for m in i.members)]
    shared = [i for i in shared if not i.deleted and i.owner != member]
    assert len(shared) >= 3
    token = emulator.issue_token(member)
    for api in ("v1", "v2"):
        df = fetch_images(
            [i.id for i in shared],
            endpoint=emulator.url,
            token=token,
            api=api,
            members=True,
            progress=False,
        )
        own = {i.id: text([m for m in i.members if m.member_id == member], api) for i in shared}
        assert column(df) == own, api
    owner = shared[0].owner
    assert owner is not None
    df = fetch_images(
        [shared[0].id],
        endpoint=emulator.url,
        token=emulator.issue_token(owner),
        api="v2",
        members=True,
        progress=False,
    )
    assert df.loc[shared[0].id, "members"] == text(shared[0].members, "v2")
    # Every status of a membership lets the member see (and boot) the image.
    assert {m.status for i in shared for m in i.members if m.member_id == member} >= {
        "pending",
        "accepted",
    } or len(shared) < 6


# --- failures are row errors -------------------------------------------------------------


def with_members(fleet: Fleet, api: str) -> list[FleetImage]:
    return [i for i in fleet.images if asked(i, api) and i.members]


@pytest.mark.parametrize(
    ("faults", "error"),
    [
        (
            Faults(members_fail_rate=1.0),
            "HTTP 500 Internal Server Error (gave up after 2 attempts)",
        ),
        (Faults(members_fail_rate=1.0, members_fail_status=403), "HTTP 403 Forbidden"),
        (
            Faults(members_hang_rate=1.0, hang_seconds=5),
            "timed out after 0.4 s (gave up after 2 attempts)",
        ),
    ],
    ids=["500", "403", "hang"],
)
def test_a_failed_members_call_is_the_rows_error_and_keeps_its_metadata(
    servers, fleet: Fleet, faults: Faults, error: str
) -> None:
    emulator = servers.glance(fleet, faults=faults)
    images = with_members(fleet, "v1")[:6]
    df = fetch_images(
        [i.id for i in images],
        endpoint=emulator.url,
        token=ADMIN_TOKEN,
        members=True,
        retries=1,
        timeout=0.4,
        progress=False,
    )
    assert (df["error"] == MEMBERS_NOT_READ + error).all()
    assert (df["http_status"] == 200).all() and df["members"].isna().all()
    assert df["name"].tolist() == [i.name for i in images]  # the metadata is kept
    outcome = run_outcome(df)
    assert outcome.unread == len(images)  # unread: asked again on resume
    findings = imgframe.audit(df)
    assert set(findings[findings["rule"] == "fetch_failed"]["image_id"]) == set(df.index)


def test_a_transient_members_failure_is_retried(servers, fleet: Fleet) -> None:
    emulator = servers.glance(fleet, faults=Faults(members_fail_rate=1.0, members_fail_attempts=1))
    images = with_members(fleet, "v2")[:5]
    df = fetch_images(
        [i.id for i in images],
        endpoint=emulator.url,
        token=ADMIN_TOKEN,
        api="v2",
        members=True,
        progress=False,
    )
    assert df["error"].isna().all()
    assert column(df) == {i.id: text(i.members, "v2") for i in images}
    assert len(member_calls(emulator)) == 2 * len(images)


def lie_outcome(kind: str, image: FleetImage, api: str) -> tuple[str | None, str | None]:
    """(members text, error) imgframe must give for an answer spoiled the way ``kind`` says
    (imgframe/testing/emulator.py GlanceEmulator._member_lie)."""
    errors = {
        "not-json": NOT_JSON,
        "not-object": NOT_OBJECT,
        "no-members": NO_MEMBERS,
        "members-not-list": NO_MEMBERS,
        "member-not-object": BAD_MEMBER,
        "member-id-not-string": BAD_MEMBER,
        "conflicting-duplicate": CONFLICTING,
        "huge": TOO_BIG,
    }
    if kind in errors:
        return None, errors[kind]
    members = list(image.members)
    if kind == "can-share-not-bool" and api == "v1":
        rows = json.loads(text(members, api))
        return json.dumps([{**r, "can_share": None} for r in rows], separators=(",", ":")), None
    if kind == "unknown-status" and api == "v2":
        rows = json.loads(text(members, api))
        return json.dumps([{**r, "status": None} for r in rows], separators=(",", ":")), None
    if kind == "other-image":
        if api == "v2":
            return None, OTHER_IMAGE
        members.append(FleetMember("stranger", "accepted", False))  # v1 has no image_id
    return text(members, api), None


@pytest.mark.parametrize("api", ["v1", "v2"])
@pytest.mark.parametrize("kind", MEMBER_LIES)
def test_every_hostile_members_answer_is_a_fixed_error_or_a_normalised_list(
    servers, fleet: Fleet, kind: str, api: str
) -> None:
    faults = Faults(members_lie_rate=1.0, members_lies=(kind,))
    emulator = servers.glance(fleet, faults=faults)
    images = (
        with_members(fleet, api)[:3]
        + [i for i in fleet.images if asked(i, api) and not i.members][:1]
    )
    df = fetch_images(
        [i.id for i in images],
        endpoint=emulator.url,
        token=ADMIN_TOKEN,
        api=api,
        members=True,
        retries=0,
        progress=False,
    )
    for image in images:
        members, error = lie_outcome(kind, image, api)
        row = df.loc[image.id]
        assert (None if pd.isna(row["members"]) else row["members"]) == members, image.id
        assert (None if pd.isna(row["error"]) else row["error"]) == error, image.id
        assert row["http_status"] == 200 and row["name"] == image.name


# --- the parser: nothing a server sends raises ---------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
_member = st.fixed_dictionaries(
    {"member_id": st.text(max_size=6) | st.integers()},
    optional={
        "status": st.sampled_from(["accepted", "pending", "rejected", "ACCEPTED", "x"]) | _json,
        "can_share": st.booleans() | st.sampled_from(["true", "no", "maybe"]) | _json,
        "image_id": st.sampled_from(["img", "IMG", "other"]) | _json,
    },
)
_documents = (
    st.binary(max_size=64)
    | _json.map(lambda v: json.dumps(v).encode())
    | st.lists(_member, max_size=6).map(lambda m: json.dumps({"members": m}).encode())
)


def check_parsed(api: str, body: bytes) -> None:
    try:
        value = members_text(api, body, "img")
    except MembersProblem as problem:
        assert problem.sentence.startswith("bad response: ")
        return
    rows = json.loads(value)
    assert isinstance(rows, list)
    ids = [r["member_id"] for r in rows]
    assert ids == sorted(set(ids)) and all(isinstance(i, str) and i for i in ids)
    for row in rows:
        assert list(row) == ["member_id", "status", "can_share"]
        assert row["status"] in (None, "accepted", "pending", "rejected")
        assert row["can_share"] in (None, True, False)
        assert (row["status"] is None) if api == "v1" else (row["can_share"] is None)
    assert value == json.dumps(rows, separators=(",", ":"), ensure_ascii=False)
    value.encode("utf-8")  # packable


@settings(max_examples=300, deadline=None)
@given(api=st.sampled_from(["v1", "v2"]), body=_documents)
def test_the_members_parser_never_raises_anything_but_its_problem(api: str, body: bytes) -> None:
    check_parsed(api, body)


@settings(max_examples=200, deadline=None)
@given(
    api=st.sampled_from(["v1", "v2"]),
    pairs=st.lists(st.tuples(st.binary(max_size=30), st.binary(max_size=10)), max_size=6),
)
def test_which_images_may_have_members_is_decided_for_any_header_pairs(
    api: str, pairs: list[tuple[bytes, bytes]]
) -> None:
    assert may_have_members(api, pairs) in (True, False)


def test_equal_member_lists_are_equal_texts_whatever_the_order() -> None:
    first = b'{"members": [{"member_id": "b", "can_share": false}, {"member_id": "a"}]}'
    second = b'{"members": [{"member_id": "a", "can_share": null}, {"member_id": "b", "can_share": "False"}]}'  # noqa: E501
    assert members_text("v1", first, "x") == members_text("v1", second, "x")
    assert members_text("v1", b'{"members": [{"member_id": "\\ud800"}]}', "x") == (
        '[{"member_id":"\ufffd","status":null,"can_share":null}]'
    )


# --- resume, listing, fleet ----------------------------------------------------------------


def test_resume_asks_again_only_the_rows_whose_members_failed(
    servers, fleet: Fleet, tmp_path: Path
) -> None:
    emulator = servers.glance(fleet, faults=Faults(members_fail_rate=0.3, seed=5))
    ids = ids_of(fleet)[:120]
    folder = tmp_path / "ckpt"
    first = fetch_images(
        ids,
        endpoint=emulator.url,
        token=ADMIN_TOKEN,
        members=True,
        retries=0,
        checkpoint=folder,
        progress=False,
    )
    failed = set(
        first.index[first["error"].astype("string").str.startswith(MEMBERS_NOT_READ).fillna(False)]
    )
    assert failed
    emulator.faults = Faults()
    emulator.reset_log()
    again = fetch_images(
        ids,
        endpoint=emulator.url,
        token=ADMIN_TOKEN,
        members=True,
        checkpoint=folder,
        progress=False,
    )
    heads = {r.image_id for r in emulator.request_log if r.method == "HEAD"}
    assert heads == failed  # only those are asked again
    assert again["error"].isna().all()
    assert column(again) == {k: v for k, v in expected_column(fleet, "v1").items() if k in ids}
    with pytest.raises(CheckpointError, match="members"):
        fetch_images(
            ids, endpoint=emulator.url, token=ADMIN_TOKEN, checkpoint=folder, progress=False
        )


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_the_whole_cloud_listing_reads_members_too(
    fleet: Fleet, emulator: GlanceEmulator, api: str
) -> None:
    emulator.reset_log()
    df = fetch_images(
        endpoint=emulator.url, token=ADMIN_TOKEN, api=api, members=True, progress=False
    )
    assert df["error"].isna().all()
    by_id = fleet.by_id()
    assert column(df) == {
        i: text(by_id[i].members, api) if asked(by_id[i], api) else None for i in df.index
    }
    log = emulator.request_log
    one_image = [
        r
        for r in log
        if r.path.count("/") == 3
        and r.path.startswith(("/v1/images/", "/v2/images/"))
        and not r.path.endswith("/detail")
    ]
    assert not one_image  # the rows come from the listing: no HEAD, no image GET
    assert sorted(member_calls(emulator)) == sorted(i for i in df.index if asked(by_id[i], api))
    headed = fetch_images(
        endpoint=emulator.url,
        token=ADMIN_TOKEN,
        api=api,
        members=True,
        verify_with_head=True,
        progress=False,
    )
    assert column(headed) == column(df)  # listing + one request per image: the same members
    without = fetch_images(endpoint=emulator.url, token=ADMIN_TOKEN, api=api, progress=False)
    pd.testing.assert_frame_equal(
        df.drop(columns=["members", "request_id"]), without.drop(columns=["members", "request_id"])
    )


def test_a_fleet_reads_the_members_of_each_target(servers) -> None:
    east, west = imgframe.testing.make_fleet(120, seed=3), imgframe.testing.make_fleet(80, seed=4)
    e, w = servers.glance(east), servers.glance(west)
    df = fetch_fleet(
        [
            imgframe.Target("lab", "east", endpoint=e.url, token=ADMIN_TOKEN),
            imgframe.Target("lab", "west", endpoint=w.url, token=ADMIN_TOKEN),
        ],
        api="v2",
        members=True,
        progress=False,
    )
    for region, fleet in (("east", east), ("west", west)):
        part = df[df["region"] == region].set_index("id")
        assert column(part) == expected_column(fleet, "v2"), region


# --- the rules and the CLI -------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_frames(fleet: Fleet, emulator: GlanceEmulator) -> dict[str, pd.DataFrame]:
    return {
        api: fetch_images(
            ids_of(fleet),
            endpoint=emulator.url,
            token=ADMIN_TOKEN,
            api=api,
            members=True,
            progress=False,
        )
        for api in ("v1", "v2")
    }


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_the_sharing_rules_find_exactly_the_planted_images(
    fleet: Fleet, shared_frames: dict[str, pd.DataFrame], api: str
) -> None:
    df = shared_frames[api]
    planted = fleet.planted
    assert planted.shared_outside and planted.member_can_share and planted.community_visible
    assert set(imgframe.shared_outside(df, trusted=fleet.projects).index) == planted.shared_outside
    everyone = {i.id for i in fleet.images if i.members and not i.deleted}
    assert set(imgframe.shared_outside(df).index) == everyone  # no trusted: every member
    expected_sharers = planted.member_can_share if api == "v1" else set()
    assert set(imgframe.member_can_share(df).index) == expected_sharers
    community = planted.community_visible if api == "v2" else set()
    assert set(imgframe.community_visible(df).index) == community
    findings = imgframe.audit(df, trusted=fleet.projects)
    for rule, expected in (
        ("shared_outside", planted.shared_outside),
        ("member_can_share", expected_sharers),
        ("community_visible", community),
    ):
        assert set(findings[findings["rule"] == rule]["image_id"]) == expected, rule


def test_the_detail_names_the_outside_members_with_their_status(
    fleet: Fleet, shared_frames: dict[str, pd.DataFrame]
) -> None:
    found = imgframe.audit(shared_frames["v2"], rules=["shared_outside"], trusted=fleet.projects)
    found = found[found["rule"] == "shared_outside"]
    assert len(found) == len(fleet.planted.shared_outside)
    by_id = fleet.by_id()
    for image_id, detail in zip(found["image_id"], found["detail"], strict=True):
        outside = [m for m in by_id[image_id].members if m.member_id not in fleet.projects]
        first = sorted(outside, key=lambda m: m.member_id)[0]
        assert f"{first.member_id} ({first.status})" in detail
        assert f"shared with {len(outside)} project(s)" in detail
        assert ("more" in detail) == (len(outside) > 3)


def test_without_members_the_member_rules_are_skipped_with_a_note(
    fleet: Fleet, emulator: GlanceEmulator
) -> None:
    df = fetch_images(
        ids_of(fleet), endpoint=emulator.url, token=ADMIN_TOKEN, api="v2", progress=False
    )
    findings = imgframe.audit(df, trusted=fleet.projects)
    assert not findings["rule"].isin(["shared_outside", "member_can_share"]).any()
    assert any("shared_outside, member_can_share" in n for n in findings.attrs["notes"])
    # community_visible needs only visibility.
    assert set(findings[findings["rule"] == "community_visible"]["image_id"]) == (
        fleet.planted.community_visible
    )


def test_cli_fetch_members_and_audit_trusted(
    cli, fleet: Fleet, emulator: GlanceEmulator, tmp_path: Path
) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(ids_of(fleet)) + "\n")
    table = tmp_path / "fleet.parquet"
    ran = cli(
        "fetch",
        "--endpoint",
        emulator.url,
        "--token",
        ADMIN_TOKEN,
        "--ids-file",
        str(ids),
        "--members",
        "--no-progress",
        "-o",
        str(table),
    )
    assert ran.status == 0, ran.err
    df = imgframe.read(table)
    assert column(df[df["http_status"] == 200]) == expected_column(fleet, "v1")
    trusted = tmp_path / "trusted.txt"
    trusted.write_text("# our projects\n" + "\n".join(fleet.projects) + "\n")
    for value in (f"@{trusted}", ",".join(fleet.projects)):
        out = tmp_path / "findings.csv"
        ran = cli(
            "audit", str(table), "--rules", "shared_outside", "--trusted", value, "-o", str(out)
        )
        assert ran.status == 0, ran.err
        found = pd.read_csv(out)
        assert set(found[found["rule"] == "shared_outside"]["image_id"]) == (
            fleet.planted.shared_outside
        )


def test_members_is_an_option_checked_once() -> None:
    assert imgframe.FetchOptions.build(members=True).members is True
    with pytest.raises(imgframe.ConfigError, match="members must be True or False"):
        imgframe.FetchOptions(members="yes")  # type: ignore[arg-type]


def test_a_v2_member_lists_its_accepted_shares_by_default_and_every_share_with_all(
    fleet: Fleet, emulator: GlanceEmulator
) -> None:
    import requests

    def shares_of(project: str) -> dict[str, str]:
        return {
            i.id: m.status
            for i in fleet.images
            for m in i.members
            if m.member_id == project and i.owner != project and not i.deleted
        }

    member = max(fleet.projects, key=lambda p: len(set(shares_of(p).values())))
    shares = shares_of(member)
    assert {"accepted", "pending", "rejected"} <= set(shares.values())
    token = emulator.issue_token(member)

    def listed(**params: str) -> set[str]:
        found: set[str] = set()
        query: dict[str, str] = {"limit": "1000", **params}
        while True:
            page = requests.get(
                f"{emulator.url}/v2/images",
                params=query,
                headers={"X-Auth-Token": token},
                timeout=10,
            ).json()
            found |= {image["id"] for image in page["images"]}
            if "next" not in page:
                return found
            query["marker"] = page["images"][-1]["id"]

    default = listed() & set(shares)
    assert default == {i for i, status in shares.items() if status == "accepted"}
    assert listed(member_status="all") & set(shares) == set(shares)
    assert set(shares) <= set(imgframe.list_image_ids(endpoint=emulator.url, token=token, api="v2"))


def test_audit_trusted_from_a_missing_file_is_a_usage_error(cli, tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    imgframe.to_csv(imgframe.frame_from_headers([{"x-image-meta-id": "a"}]), table)
    ran = cli("audit", str(table), "--trusted", f"@{tmp_path / 'nope.txt'}")
    assert ran.status == 2 and "cannot read trusted projects" in ran.last_line
