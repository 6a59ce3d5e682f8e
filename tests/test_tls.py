"""TLS for real: the emulator serves HTTPS with a certificate from a throwaway CA (trustme).

The three ``verify`` settings a user has: the system CAs (default; the throwaway CA is not
among them, so the run must stop with one clear error), a CA bundle path, and False.
"""

from __future__ import annotations

import ssl

import pandas as pd
import pytest

import imgframe
from imgframe.errors import FetchError
from imgframe.testing import ADMIN_TOKEN, GlanceEmulator

trustme = pytest.importorskip("trustme")


FLEET = {"n": 60, "seed": 8}  # the module's `fleet` (tests/conftest.py)


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_bundle(ca, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def _server_context(ca, name: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)
    return context


@pytest.fixture(scope="module")
def https(module_servers, fleet, ca) -> GlanceEmulator:
    return module_servers.glance(fleet, ssl_context=_server_context(ca, "127.0.0.1"))


@pytest.fixture(scope="module")
def plain(emulator) -> GlanceEmulator:
    return emulator


def ids_of(fleet) -> list[str]:
    return [i.id for i in fleet.images]


def test_a_ca_bundle_verifies_and_gives_the_same_frame_as_http(fleet, https, plain, ca_bundle):
    assert https.url.startswith("https://127.0.0.1:")
    secure = imgframe.fetch_images(
        ids_of(fleet), endpoint=https.url, token=ADMIN_TOKEN, verify=ca_bundle, progress=False
    )
    clear = imgframe.fetch_images(
        ids_of(fleet), endpoint=plain.url, token=ADMIN_TOKEN, progress=False
    )
    pd.testing.assert_frame_equal(
        secure.drop(columns="request_id"), clear.drop(columns="request_id")
    )
    assert secure["http_status"].eq(200).sum() > 0


def test_an_unknown_ca_stops_the_run_with_one_clear_error(fleet, https) -> None:
    https.reset_log()
    with pytest.raises(
        FetchError, match=r"TLS certificate of https://127\.0\.0\.1:\d+ was not accepted.*verify="
    ) as info:
        imgframe.fetch_images(ids_of(fleet), endpoint=https.url, token=ADMIN_TOKEN, progress=False)
    # No request got through the failed handshakes, and the run stopped at once.
    assert len(https.request_log) == 0
    assert ADMIN_TOKEN not in str(info.value)


def test_verify_false_accepts_any_certificate(fleet, https) -> None:
    df = imgframe.fetch_images(
        ids_of(fleet)[:10], endpoint=https.url, token=ADMIN_TOKEN, verify=False, progress=False
    )
    assert df["error"].isna().sum() + df["http_status"].eq(404).sum() == 10


def test_a_certificate_for_another_name_is_refused(fleet, ca, ca_bundle) -> None:
    with (
        GlanceEmulator(fleet, ssl_context=_server_context(ca, "glance.example.com")) as emu,
        pytest.raises(FetchError, match="not accepted"),
    ):
        imgframe.fetch_images(
            ids_of(fleet)[:5], endpoint=emu.url, token=ADMIN_TOKEN, verify=ca_bundle, progress=False
        )


def test_listing_over_tls(fleet, https, ca_bundle) -> None:
    listed = imgframe.list_image_ids(endpoint=https.url, token=ADMIN_TOKEN, verify=ca_bundle)
    assert set(listed) == {i.id for i in fleet.images if not i.deleted}
    with pytest.raises(FetchError, match="not accepted"):
        imgframe.list_image_ids(endpoint=https.url, token=ADMIN_TOKEN)
    whole = imgframe.fetch_images(
        endpoint=https.url, token=ADMIN_TOKEN, verify=ca_bundle, progress=False
    )
    assert set(whole.index) == set(listed)


def test_a_missing_ca_bundle_is_a_config_error(https) -> None:
    with pytest.raises(imgframe.ConfigError, match="CA bundle"):
        imgframe.fetch_images(
            ["x"], endpoint=https.url, token=ADMIN_TOKEN, verify="/no/such/ca.pem"
        )
