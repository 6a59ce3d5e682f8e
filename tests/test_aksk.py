"""Huawei Cloud AK/SK signing: Huawei's SDK signs, the emulator verifies independently.

The signer is :class:`imgframe.HuaweiAkSk` (the signer of ``huaweicloudsdkcore``); the
verifier is :mod:`imgframe.testing.apisign`, written from Huawei's published algorithm.
Every request goes over real HTTP to the emulator on 127.0.0.1.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from urllib.parse import urlencode

import pandas as pd
import pytest
import requests

import imgframe
from imgframe.auth import RequestSigner, token_source
from imgframe.errors import AuthError, ConfigError
from imgframe.fetch import SIGNATURE_NOT_SENT, SIGNATURE_REJECTED
from imgframe.testing import ADMIN_TOKEN, AccessKey, GlanceEmulator
from imgframe.testing.fleet import Fleet

pytest.importorskip("huaweicloudsdkcore")

ADMIN_AK, ADMIN_SK, ADMIN_PROJECT = "HPUAADMINKEY0001", "sk-Adm1n-s3cret-4b2e", "p-admin"
USER_AK, USER_SK = "HPUAUSERKEY00002", "sk-Us3r-s3cret-91c0"
TEMP_AK, TEMP_SK, TEMP_TOKEN = "HPUATEMPKEY00003", "sk-T3mp-s3cret-7d1a", "sts-T0ken-s3cret-55ef"


FLEET = {"n": 120, "seed": 5}  # the module's `fleet` (tests/conftest.py)


@pytest.fixture(scope="module")
def owner(fleet: Fleet) -> str:
    """A project that owns some images of the fleet: the non-admin key's project."""
    return next(image.owner for image in fleet.images if not image.is_public)


@pytest.fixture(scope="module")
def emulator(module_servers, fleet: Fleet, owner: str) -> GlanceEmulator:
    keys = {
        ADMIN_AK: AccessKey(ADMIN_SK, ADMIN_PROJECT, admin=True),
        USER_AK: (USER_SK, owner),
        TEMP_AK: AccessKey(TEMP_SK, owner, security_token=TEMP_TOKEN),
    }
    return module_servers.glance(fleet, access_keys=keys)


@pytest.fixture()
def emu(emulator: GlanceEmulator) -> GlanceEmulator:
    emulator.reset_log()
    emulator.signature_rejections.clear()
    return emulator


def admin_key() -> imgframe.HuaweiAkSk:
    return imgframe.HuaweiAkSk(ADMIN_AK, ADMIN_SK, ADMIN_PROJECT)


def ids_of(fleet: Fleet) -> list[str]:
    return [image.id for image in fleet.images]


def send(method: str, url: str, headers: dict[str, str]) -> requests.Response:
    """One request with exactly these headers (a second, independent HTTP client)."""
    return requests.request(method, url, headers=headers, allow_redirects=False, timeout=10)


# --- the SDK's signature against the emulator's verifier --------------------------------


def test_sdk_signature_is_accepted_for_head_v1(emu, fleet) -> None:
    url = f"{emu.url}/v1/images/{fleet.images[0].id}"
    answer = send("HEAD", url, admin_key().sign("HEAD", url, {}))
    assert answer.status_code == 200, emu.signature_rejections
    assert answer.headers["X-Image-Meta-Id"] == fleet.images[0].id


def test_sdk_signature_is_accepted_for_get_v2(emu, fleet) -> None:
    url = f"{emu.url}/v2/images/{fleet.images[1].id}"
    answer = send("GET", url, admin_key().sign("GET", url, {}))
    assert answer.status_code == 200, emu.signature_rejections
    assert answer.json()["id"] == fleet.images[1].id


def test_sdk_signature_is_accepted_for_a_listing_page_with_a_query(emu, fleet) -> None:
    # Not in sorted order on purpose: the canonical query string sorts it.
    query = urlencode({"limit": "5", "is_public": "None", "marker": fleet.images[3].id})
    url = f"{emu.url}/v1/images/detail?{query}"
    answer = send("GET", url, admin_key().sign("GET", url, {}))
    assert answer.status_code == 200, emu.signature_rejections
    assert len(answer.json()["images"]) == 5


def test_a_signature_for_another_path_is_rejected(emu, fleet) -> None:
    signed_for = f"{emu.url}/v1/images/{fleet.images[0].id}"
    headers = admin_key().sign("HEAD", signed_for, {})
    answer = send("HEAD", f"{emu.url}/v1/images/{fleet.images[1].id}", headers)
    assert answer.status_code == 401
    assert emu.signature_rejections == ["the signature does not match"]


def test_a_signature_for_another_query_is_rejected(emu) -> None:
    headers = admin_key().sign("GET", f"{emu.url}/v2/images?limit=2", {})
    assert send("GET", f"{emu.url}/v2/images?limit=3", headers).status_code == 401
    assert emu.signature_rejections == ["the signature does not match"]


def test_a_date_more_than_15_minutes_off_is_rejected(emu, fleet) -> None:
    url = f"{emu.url}/v1/images/{fleet.images[0].id}"

    def signed_at(seconds_ago: float) -> dict[str, str]:
        date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() - seconds_ago))
        return admin_key().sign("HEAD", url, {"X-Sdk-Date": date})

    assert send("HEAD", url, signed_at(10 * 60)).status_code == 200
    assert send("HEAD", url, signed_at(20 * 60)).status_code == 401
    assert emu.signature_rejections == ["X-Sdk-Date is more than 15 minutes off"]


def test_an_unknown_access_key_is_rejected(emu, fleet) -> None:
    url = f"{emu.url}/v1/images/{fleet.images[0].id}"
    headers = imgframe.HuaweiAkSk("HPUANOSUCHKEY999", ADMIN_SK, ADMIN_PROJECT).sign("HEAD", url, {})
    assert send("HEAD", url, headers).status_code == 401
    assert emu.signature_rejections == ["unknown access key"]


def test_tokens_keep_working_beside_access_keys(emu, fleet) -> None:
    url = f"{emu.url}/v1/images/{fleet.images[0].id}"
    assert send("HEAD", url, {"X-Auth-Token": ADMIN_TOKEN}).status_code == 200


# --- fetching and listing with an access key --------------------------------------------


class RecordingSigner:
    """A RequestSigner of our own: the hook is generic, not Huawei's."""

    def __init__(self) -> None:
        self.signed: list[tuple[str, str]] = []

    def sign(self, method: str, url: str, headers: Mapping[str, str]) -> dict[str, str]:
        self.signed.append((method, url))
        return {**headers, "X-Auth-Token": ADMIN_TOKEN}


def test_a_signer_is_given_the_exact_url_sent_for_every_request(emu, fleet) -> None:
    signer = RecordingSigner()
    ids = [fleet.images[0].id, "img:1"]  # ":" goes on the wire as %3A
    df = imgframe.fetch_images(ids, endpoint=emu.url + "/v1/", token=signer, progress=False)
    assert df["http_status"].tolist() == [200, 404]
    assert sorted(signer.signed) == [
        ("HEAD", f"{emu.url}/v1/images/{fleet.images[0].id}"),
        ("HEAD", f"{emu.url}/v1/images/img%3A1"),
    ]
    imgframe.list_image_ids(endpoint=emu.url, token=signer, api="v2", page_size=500)
    query = "limit=500&visibility=all&member_status=all"  # the two passes of every image
    assert signer.signed[-2:] == [
        ("GET", f"{emu.url}/v2/images?{query}"),
        ("GET", f"{emu.url}/v2/images?{query}&os_hidden=true"),
    ]


def test_an_id_that_needs_percent_encoding_is_signed_as_sent(emu) -> None:
    df = imgframe.fetch_images(["img:1", "ü"], endpoint=emu.url, token=admin_key(), progress=False)
    assert df["http_status"].tolist() == [404, 404]  # verified, then not found
    assert emu.signature_rejections == []


def test_a_fleet_fetched_with_an_admin_key_equals_the_admin_token_frame(emu, fleet) -> None:
    ids = [*ids_of(fleet), "no-such-image"]
    signed = imgframe.fetch_images(ids, endpoint=emu.url, token=admin_key(), progress=False)
    tokened = imgframe.fetch_images(ids, endpoint=emu.url, token=ADMIN_TOKEN, progress=False)
    # request ids are drawn per answer: the only column that may differ
    pd.testing.assert_frame_equal(
        signed.drop(columns="request_id"), tokened.drop(columns="request_id")
    )
    assert (signed["http_status"] == 200).sum() == len(fleet.images)
    assert emu.signature_rejections == []
    assert {entry.access_key for entry in emu.request_log} == {ADMIN_AK, None}


def test_v2_fetch_and_listings_are_signed(emu, fleet) -> None:
    key = admin_key()
    ids = ids_of(fleet)[:10]
    df = imgframe.fetch_images(ids, endpoint=emu.url, token=key, api="v2", progress=False)
    assert (df["http_status"] == 200).all()
    listed_v1 = imgframe.list_image_ids(
        endpoint=emu.url, token=key, page_size=7, include_deleted=True
    )
    listed_v2 = imgframe.list_image_ids(endpoint=emu.url, token=key, api="v2", page_size=7)
    assert sorted(listed_v1) == sorted(ids_of(fleet))
    assert sorted(listed_v2) == sorted(i.id for i in fleet.images if not i.deleted)
    assert emu.signature_rejections == []
    assert all(entry.access_key == ADMIN_AK for entry in emu.request_log)


def test_a_key_acts_for_its_project_through_the_project_id_header(emu, fleet, owner) -> None:
    key = imgframe.HuaweiAkSk(USER_AK, USER_SK, owner)
    assert key.sign("HEAD", f"{emu.url}/v1/images/x", {})["X-Project-Id"] == owner
    df = imgframe.fetch_images(ids_of(fleet), endpoint=emu.url, token=key, progress=False)
    visible = {
        i.id
        for i in fleet.images
        if not i.deleted
        and (i.is_public or i.owner == owner or any(m.member_id == owner for m in i.members))
    }  # a project sees the images shared with it too
    assert set(df.index[df["http_status"] == 200]) == visible
    assert set(df.index[df["http_status"] == 404]) == set(ids_of(fleet)) - visible


def test_without_the_project_id_header_the_key_is_refused(emu, fleet, owner) -> None:
    key = imgframe.HuaweiAkSk(USER_AK, USER_SK)  # same key, no project id
    assert "X-Project-Id" not in key.sign("HEAD", f"{emu.url}/v1/images/x", {})
    df = imgframe.fetch_images(ids_of(fleet)[:3], endpoint=emu.url, token=key, progress=False)
    assert df["http_status"].iloc[0] == 401
    assert emu.signature_rejections[0].startswith("X-Project-Id is missing")


def test_temporary_credentials_send_their_security_token(emu, fleet, owner) -> None:
    ids = ids_of(fleet)[:5]
    temporary = imgframe.HuaweiAkSk(TEMP_AK, TEMP_SK, owner, security_token=TEMP_TOKEN)
    df = imgframe.fetch_images(ids, endpoint=emu.url, token=temporary, progress=False)
    assert df["http_status"].isin([200, 404]).all()
    without = imgframe.HuaweiAkSk(TEMP_AK, TEMP_SK, owner)
    df = imgframe.fetch_images(ids, endpoint=emu.url, token=without, progress=False)
    assert df["http_status"].iloc[0] == 401
    assert emu.signature_rejections[0] == "X-Security-Token does not belong to this access key"


def test_a_wrong_secret_key_gives_every_id_a_row_and_stops_sending(emu, fleet) -> None:
    wrong = imgframe.HuaweiAkSk(ADMIN_AK, "sk-Wr0ng-s3cret-0000", ADMIN_PROJECT)
    ids = ids_of(fleet)
    df = imgframe.fetch_images(ids, endpoint=emu.url, token=wrong, concurrency=4, progress=False)
    assert df.index.tolist() == ids  # nothing lost
    sent = df["http_status"].notna()
    assert (df.loc[sent, "http_status"] == 401).all()
    assert (df.loc[sent, "error"] == SIGNATURE_REJECTED).all()
    assert (df.loc[~sent, "error"] == SIGNATURE_NOT_SENT).all()
    assert "access key signature was rejected" in SIGNATURE_REJECTED
    # Only the requests already in flight at the first 401: never one more.
    assert 1 <= len(emu.request_log) <= 4
    assert sent.sum() == len(emu.request_log)


def test_a_rejected_listing_raises_auth_error_with_the_reason(emu) -> None:
    wrong = imgframe.HuaweiAkSk(ADMIN_AK, "sk-Wr0ng-s3cret-0000", ADMIN_PROJECT)
    with pytest.raises(AuthError, match="access key signature was rejected") as info:
        imgframe.list_image_ids(endpoint=emu.url, token=wrong)
    assert info.value.status == 401
    assert len(emu.request_log) == 1  # no refresh, no retry


# --- secrets ------------------------------------------------------------------------------


def test_secrets_never_appear_in_reprs_logs_errors_or_output(emu, fleet, owner, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    secrets = [TEMP_SK, TEMP_TOKEN, "sk-Wr0ng-s3cret-0000"]
    temporary = imgframe.HuaweiAkSk(TEMP_AK, TEMP_SK, owner, security_token=TEMP_TOKEN)
    wrong = imgframe.HuaweiAkSk(TEMP_AK, "sk-Wr0ng-s3cret-0000", owner, security_token=TEMP_TOKEN)
    ids = [*ids_of(fleet)[:30], "../x"]
    good = imgframe.fetch_images(ids, endpoint=emu.url, token=temporary, progress=False)
    bad = imgframe.fetch_images(ids, endpoint=emu.url, token=wrong, progress=False)
    with pytest.raises(AuthError) as listing:
        imgframe.list_image_ids(endpoint=emu.url, token=wrong)
    problems = []
    for value in ("", "a\nb", TEMP_SK + "\r\n"):  # a secret with a line break in it
        with pytest.raises(ConfigError) as info:
            imgframe.HuaweiAkSk(TEMP_AK, value, owner)
        problems.append(str(info.value))
    with pytest.raises(ConfigError) as info:
        imgframe.HuaweiAkSk(TEMP_AK, TEMP_SK, owner, security_token=TEMP_TOKEN + "\x00")
    problems.append(str(info.value))
    imgframe.to_csv(good, tmp_path / "good.csv")
    imgframe.to_csv(bad, tmp_path / "bad.csv")
    texts = [
        repr(temporary),
        str(temporary),
        repr(wrong),
        repr(token_source(temporary)),
        repr(imgframe.fetch.HeadFetcher(emu.url, temporary)),
        str(listing.value),
        *problems,
        good.to_string(),
        bad.to_string(),
        (tmp_path / "good.csv").read_text(),
        (tmp_path / "bad.csv").read_text(),
        caplog.text,
        repr(emu.request_log),
        repr(AccessKey(TEMP_SK, owner, security_token=TEMP_TOKEN)),
    ]
    leaks = [(secret, text[:80]) for text in texts for secret in secrets if secret in text]
    assert not leaks
    assert (good["http_status"] == 200).any() and (bad["http_status"] == 401).any()


# --- configuration --------------------------------------------------------------------------


def test_huawei_aksk_is_a_request_signer_that_token_source_passes_through() -> None:
    key = admin_key()
    assert isinstance(key, RequestSigner)
    assert token_source(key) is key


def test_from_env_reads_the_sdk_variables(monkeypatch) -> None:
    monkeypatch.setenv("HUAWEICLOUD_SDK_AK", TEMP_AK)
    monkeypatch.setenv("HUAWEICLOUD_SDK_SK", TEMP_SK)
    monkeypatch.setenv("HUAWEICLOUD_SDK_PROJECT_ID", "p-env")
    monkeypatch.setenv("HUAWEICLOUD_SDK_SECURITY_TOKEN", TEMP_TOKEN)
    key = imgframe.HuaweiAkSk.from_env()
    assert repr(key) == "HuaweiAkSk(ak='HPUA***', project_id='p-env', security_token='***')"
    headers = key.sign("HEAD", "https://ims.example.com/v1/images/x", {})
    assert headers["X-Project-Id"] == "p-env" and headers["X-Security-Token"] == TEMP_TOKEN
    assert f"Access={TEMP_AK}," in headers["Authorization"]


@pytest.mark.parametrize("missing", ["HUAWEICLOUD_SDK_AK", "HUAWEICLOUD_SDK_SK"])
def test_from_env_names_the_missing_variable(monkeypatch, missing) -> None:
    monkeypatch.setenv("HUAWEICLOUD_SDK_AK", TEMP_AK)
    monkeypatch.setenv("HUAWEICLOUD_SDK_SK", TEMP_SK)
    monkeypatch.delenv(missing)
    with pytest.raises(ConfigError, match=missing):
        imgframe.HuaweiAkSk.from_env()


def test_from_env_names_the_variable_with_a_bad_value(monkeypatch) -> None:
    monkeypatch.setenv("HUAWEICLOUD_SDK_AK", TEMP_AK)
    monkeypatch.setenv("HUAWEICLOUD_SDK_SK", "bad\nvalue")
    with pytest.raises(ConfigError, match="HUAWEICLOUD_SDK_SK contains a line break"):
        imgframe.HuaweiAkSk.from_env()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ak": ""}, "ak must be a non-empty string"),
        ({"ak": None}, "ak must be a non-empty string"),
        ({"sk": "x\ny"}, "sk contains a line break or NUL"),
        ({"project_id": "p\r1"}, "project_id contains a line break or NUL"),
        ({"project_id": "pé"}, "project_id must be printable ASCII"),
        ({"security_token": " "}, "security_token must be a non-empty string"),
    ],
)
def test_bad_key_parts_are_config_errors(kwargs, message) -> None:
    args = {"ak": ADMIN_AK, "sk": ADMIN_SK, "project_id": "p1", **kwargs}
    with pytest.raises(ConfigError, match=message):
        imgframe.HuaweiAkSk(**args)


def test_without_the_sdk_the_error_names_the_extra(monkeypatch) -> None:
    # Submodules already imported would still import: block them as well as the package.
    for name in [m for m in sys.modules if m.startswith("huaweicloudsdkcore")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "huaweicloudsdkcore", None)
    with pytest.raises(ConfigError, match=r"pip install 'imgframe\[huawei\]'"):
        imgframe.HuaweiAkSk(ADMIN_AK, ADMIN_SK)


def test_cli_signs_with_the_key_from_the_environment(emu, fleet) -> None:
    env = {
        **os.environ,
        "HUAWEICLOUD_SDK_AK": ADMIN_AK,
        "HUAWEICLOUD_SDK_SK": ADMIN_SK,
        "HUAWEICLOUD_SDK_PROJECT_ID": ADMIN_PROJECT,
    }
    env.pop("OS_AUTH_TOKEN", None)
    ids = ids_of(fleet)[:20]
    done = subprocess.run(
        [sys.executable, "-m", "imgframe", "fetch", "--endpoint", emu.url, "--aksk", *ids],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert ADMIN_SK not in done.stdout + done.stderr
    frame = imgframe.read_csv(io.StringIO(done.stdout))
    assert frame.index.tolist() == ids and (frame["http_status"] == 200).all()
    assert {r.access_key for r in emu.request_log} == {ADMIN_AK}


def test_a_fleet_target_can_sign_with_an_access_key(emu, fleet) -> None:
    df = imgframe.fetch_fleet(
        [
            imgframe.Target("huawei", "cn-north-4", endpoint=emu.url, token=admin_key()),
            imgframe.Target("token", endpoint=emu.url, token=ADMIN_TOKEN),
        ],
        ids=ids_of(fleet)[:10],
        progress=False,
    )
    signed = df[df["cloud"] == "huawei"].set_index("id")
    plain = df[df["cloud"] == "token"].set_index("id")
    assert (signed["http_status"] == 200).all()
    pd.testing.assert_series_equal(signed["checksum"], plain["checksum"])
