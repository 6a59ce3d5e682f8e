"""Keystone tokens: a real clouds.yaml, a small Keystone v3 on 127.0.0.1, the Glance emulator.

The fake Keystone issues tokens that live ``LIFETIME`` seconds and registers each one
with the emulator (same lifetime), so a run longer than a token's life only succeeds if
the token is renewed: before expiry by :meth:`KeystoneToken.token`, or after the 401.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

import imgframe
from imgframe.auth import KeystoneToken, token_source
from imgframe.errors import AuthError, ConfigError
from imgframe.testing import Faults, GlanceEmulator
from imgframe.testing.keystone import APP_SECRET, PASSWORD, FakeKeystone

pytest.importorskip("keystoneauth1")

LIFETIME = 2.0  # seconds a token lives, in Keystone's answer and in the emulator


FLEET = {"n": 240, "seed": 21}  # the module's `fleet` (tests/conftest.py)


@pytest.fixture
def emulator(servers, fleet) -> GlanceEmulator:
    # 40 ms per answer: 240 ids at concurrency 2 take ~4.8 s, over two token lifetimes.
    return servers.glance(fleet, faults=Faults(latency=0.04))


@pytest.fixture
def keystone(servers, emulator) -> FakeKeystone:
    """The emulator as RegionOne's public endpoint (registered with a ``/v2`` suffix, as
    some clouds do), plus a RegionTwo and an internal endpoint that nobody serves."""
    return servers.keystone(
        {"RegionOne": emulator},
        lifetime=LIFETIME,
        endpoint_suffix="/v2",
        extra_endpoints=[
            ("public", "RegionTwo", "http://127.0.0.1:9/region-two"),
            ("internal", "RegionOne", "http://127.0.0.1:9/internal"),
        ],
    )


@pytest.fixture
def clouds_yaml(keystone, use_clouds_yaml) -> str:
    """A real clouds.yaml in a temp dir, found through OS_CLIENT_CONFIG_FILE only."""
    pytest.importorskip("openstack.config")
    auth = {
        "auth_url": f"{keystone.url}/v3",
        "username": "alice",
        "password": PASSWORD,
        "project_name": "demo",
        "user_domain_name": "Default",
        "project_domain_name": "Default",
    }
    clouds = {
        "clouds": {
            "test": {
                "auth": auth,
                "regions": ["RegionOne", "RegionTwo"],
                "interface": "public",
            },
            "appcred": {
                "auth_type": "v3applicationcredential",
                "auth": {
                    "auth_url": f"{keystone.url}/v3",
                    "application_credential_id": "ac-1",
                    "application_credential_secret": APP_SECRET,
                },
                "region_name": "RegionOne",
            },
            "wrong": {"auth": {**auth, "password": "not-" + PASSWORD}, "region_name": "RegionOne"},
        }
    }
    return str(use_clouds_yaml(clouds))


def secrets_of(keystone: FakeKeystone) -> list[str]:
    return [PASSWORD, APP_SECRET, *keystone.issued]


def test_from_cloud_reads_clouds_yaml_and_finds_the_image_endpoint_in_the_catalog(
    clouds_yaml, keystone, emulator
) -> None:
    kt = KeystoneToken.from_cloud("test")
    assert (kt.cloud, kt.region, kt.interface) == ("test", "RegionOne", "public")
    assert keystone.issued == []  # nothing is sent before the first token is asked for
    # The catalog's ".../v2" suffix is dropped: the fetcher adds /v1 itself.
    assert asyncio.run(kt.endpoint()) == emulator.url
    assert len(keystone.issued) == 1


def test_region_and_interface_choose_the_catalog_entry(clouds_yaml) -> None:
    assert asyncio.run(KeystoneToken.from_cloud("test", region="RegionTwo").endpoint()) == (
        "http://127.0.0.1:9/region-two"
    )
    internal = KeystoneToken.from_cloud("test", interface="internal")
    assert asyncio.run(internal.endpoint()) == "http://127.0.0.1:9/internal"


def test_missing_catalog_entry_is_a_config_error(clouds_yaml) -> None:
    with pytest.raises(ConfigError, match="no admin 'image' endpoint"):
        asyncio.run(KeystoneToken.from_cloud("test", interface="admin").endpoint())


def test_an_explicit_endpoint_wins_over_the_catalog(clouds_yaml, keystone) -> None:
    kt = KeystoneToken.from_cloud("test", endpoint="http://127.0.0.1:9/mine")
    assert asyncio.run(kt.endpoint()) == "http://127.0.0.1:9/mine"
    assert keystone.issued == []


def test_token_is_cached_and_renewed_before_it_expires(clouds_yaml, keystone) -> None:
    kt = KeystoneToken.from_cloud("test")

    async def scenario() -> tuple[list[str], list[str]]:
        early = [await kt.token() for _ in range(50)]
        await asyncio.sleep(LIFETIME / 2 + 0.2)  # past the renewal point, before expiry
        late = [await kt.token() for _ in range(50)]
        return early, late

    early, late = asyncio.run(scenario())
    assert len(set(early)) == 1 and len(set(late)) == 1  # cheap: no login per call
    assert early[0] != late[0]  # renewed while the old one was still valid
    assert keystone.issued == [early[0], late[0]]


def test_refresh_after_a_401_logs_in_again_once(clouds_yaml, keystone) -> None:
    kt = KeystoneToken.from_cloud("test")

    async def scenario() -> tuple[str, list[str | None]]:
        first = await kt.token()
        # Many workers see the same 401 at once: one login, one fresh token for all.
        return first, await asyncio.gather(*(kt.refresh(first) for _ in range(8)))

    first, fresh = asyncio.run(scenario())
    assert len(set(fresh)) == 1 and fresh[0] not in (None, first)
    assert keystone.issued == [first, fresh[0]]


def test_a_run_longer_than_a_token_lifetime_reads_every_image(
    clouds_yaml, keystone, emulator, fleet, caplog
) -> None:
    caplog.set_level(logging.DEBUG)  # keystoneauth and imgframe log at debug level
    kt = KeystoneToken.from_cloud("test")
    assert token_source(kt) is kt
    endpoint = asyncio.run(kt.endpoint())
    ids = [image.id for image in fleet.images]
    df = imgframe.fetch_images(ids, endpoint=endpoint, token=kt, concurrency=2, progress=False)
    assert len(df) == len(ids)
    assert (df.http_status == 200).all(), df[df.http_status != 200][["http_status", "error"]]
    assert len(keystone.issued) >= 2  # the run outlived the first token
    for secret in secrets_of(keystone):
        assert secret not in repr(kt)
        assert secret not in caplog.text
        assert secret not in df.to_csv()


def test_application_credentials_work_too(clouds_yaml, keystone) -> None:
    kt = KeystoneToken.from_cloud("appcred")
    assert asyncio.run(kt.token()) == keystone.issued[-1]
    assert APP_SECRET not in repr(kt)


def test_a_rejected_login_is_an_auth_error_without_the_password(
    clouds_yaml, keystone, emulator, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    kt = KeystoneToken.from_cloud("wrong")
    with pytest.raises(AuthError) as info:
        asyncio.run(kt.token())
    assert "Unauthorized" in str(info.value)
    # Through the fetcher: one clear error for the run, never the password.
    with pytest.raises(AuthError) as fetched:
        imgframe.fetch_images(["x"], endpoint=emulator.url, token=kt, progress=False)
    for text in (str(info.value), str(fetched.value), repr(kt), caplog.text):
        assert "not-" + PASSWORD not in text and PASSWORD not in text


def test_an_unknown_cloud_is_a_config_error(clouds_yaml) -> None:
    with pytest.raises(ConfigError, match="cloud 'nope'"):
        KeystoneToken.from_cloud("nope")


def test_without_openstacksdk_from_cloud_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "openstack", None)
    monkeypatch.setitem(__import__("sys").modules, "openstack.config", None)
    with pytest.raises(ConfigError, match=r"pip install 'imgframe\[openstack\]'"):
        KeystoneToken.from_cloud("test")


def test_a_keystoneauth_plugin_can_be_given_directly(keystone) -> None:
    from keystoneauth1.identity import v3

    auth = v3.Password(
        auth_url=f"{keystone.url}/v3",
        username="alice",
        password=PASSWORD,
        user_domain_name="Default",
        project_name="demo",
        project_domain_name="Default",
    )
    kt = KeystoneToken(auth, region="RegionOne")
    assert asyncio.run(kt.token()) == keystone.issued[-1]
    assert PASSWORD not in repr(kt) and keystone.issued[-1] not in repr(kt)
    assert repr(kt).startswith("KeystoneToken(auth='Password', auth_url=")


def test_fetch_without_endpoint_uses_the_keystone_catalog(clouds_yaml, fleet) -> None:
    ids = [image.id for image in fleet.images][:10]
    df = imgframe.fetch_images(ids, token=KeystoneToken.from_cloud("test"), progress=False)
    assert (df.http_status == 200).all()
