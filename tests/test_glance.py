"""One object per Glance API (imgframe.glance): the request, the endpoint, the switch."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from imgframe import (
    ConfigError,
    FetchError,
    NoV1ApiError,
    RetryPolicy,
    fetch_images,
    list_image_ids,
)
from imgframe.glance import V1, V2, after_300, glance_api, normalize_endpoint
from imgframe.testing import ADMIN_TOKEN, Faults, GlanceEmulator, make_fleet


@pytest.fixture(scope="module")
def fleet():
    return make_fleet(12, seed=41)


@pytest.fixture(scope="module")
def emulator(fleet) -> Iterator[GlanceEmulator]:
    with GlanceEmulator(fleet) as emu:
        yield emu


def _live(fleet) -> list[str]:
    return [image.id for image in fleet.images if not image.deleted]


@pytest.mark.parametrize("suffix", ["/v2", "/v2/", "/V2.1", ""])
def test_a_v2_endpoint_with_its_version_asks_v2_images_once(fleet, emulator, suffix) -> None:
    ids = _live(fleet)[:5]
    emulator.reset_log()
    df = fetch_images(ids, endpoint=emulator.url + suffix, token=ADMIN_TOKEN, api="v2")
    paths = [request.path for request in emulator.request_log]
    assert sorted(paths) == sorted(f"/v2/images/{image_id}" for image_id in ids)
    assert (df["http_status"] == 200).all() and df["error"].isna().all()


def test_a_v1_endpoint_with_its_version_heads_v1_images(fleet, emulator) -> None:
    ids = _live(fleet)[:3]
    emulator.reset_log()
    fetch_images(ids, endpoint=emulator.url + "/v1/", token=ADMIN_TOKEN)
    log = emulator.request_log
    assert sorted(r.path for r in log) == sorted(f"/v1/images/{i}" for i in ids)
    assert {r.method for r in log} == {"HEAD"}


def test_the_listing_and_the_fetch_normalize_the_endpoint_alike(fleet, emulator) -> None:
    emulator.reset_log()
    listed = list_image_ids(endpoint=emulator.url + "/v2", token=ADMIN_TOKEN, api="v2")
    assert sorted(listed) == sorted(_live(fleet))
    log = emulator.request_log
    assert log and {r.path for r in log} == {"/v2/images"}


def test_auto_switches_once_at_the_first_300_and_never_asks_v1_again(fleet) -> None:
    ids = _live(fleet)
    with GlanceEmulator(fleet, faults=Faults(no_v1=True)) as emu:
        df = fetch_images(ids, endpoint=emu.url, token=ADMIN_TOKEN, api="auto", concurrency=4)
        log = emu.request_log
    assert (df["http_status"] == 200).all()
    v1 = [r for r in log if r.path.startswith("/v1/")]
    assert len(v1) == 1  # the lone probe: the switch happens before the others are sent
    assert sorted(r.path for r in log if r.path.startswith("/v2/")) == sorted(
        f"/v2/images/{i}" for i in ids
    )


def test_after_300_is_the_one_switch() -> None:
    assert after_300("auto", "https://g", "https://g/v1/images/x") is V2
    for api in ("v1", "v2"):
        with pytest.raises(NoV1ApiError, match="no Glance v1 API") as caught:
            after_300(api, "https://g", "https://g/v1/images/x")
        assert caught.value.status == 300 and caught.value.url == "https://g/v1/images/x"


def test_each_api_names_its_request_and_listing() -> None:
    assert (V1.method, V1.image_url("https://g", "a")) == ("HEAD", "https://g/v1/images/a")
    assert (V2.method, V2.image_url("https://g", "a")) == ("GET", "https://g/v2/images/a")
    assert V1.page_path({"limit": "5"}) == "/v1/images/detail?limit=5"
    assert V2.page_path({"limit": "5"}) == "/v2/images?limit=5"
    assert glance_api("auto") is V1 and glance_api("v2") is V2
    with pytest.raises(ConfigError, match="api must be"):
        glance_api("v3")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://ims.example.com/v1/", "https://ims.example.com"),
        ("https://glance.example.com:9292/image/v2.1", "https://glance.example.com:9292/image"),
        (" https://glance.example.com/V2 ", "https://glance.example.com"),
        ("https://glance.example.com/v2images", "https://glance.example.com/v2images"),
    ],
)
def test_normalize_endpoint_drops_only_a_trailing_api_version(given, expected) -> None:
    assert normalize_endpoint(given) == expected


@pytest.mark.parametrize(
    "bad", ["", "glance.example.com", "https://u:p@glance.example.com", "https://g/?x=1"]
)
def test_normalize_endpoint_refuses_what_is_not_an_image_endpoint(bad) -> None:
    with pytest.raises(ConfigError):
        normalize_endpoint(bad)


def test_list_image_ids_with_auto_lists_v2_when_v1_is_gone(fleet) -> None:
    with GlanceEmulator(fleet, faults=Faults(no_v1=True)) as emu:
        listed = list_image_ids(endpoint=emu.url, token=ADMIN_TOKEN, api="auto")
        paths = [r.path for r in emu.request_log]
    assert sorted(listed) == sorted(_live(fleet))
    assert paths[0] == "/v1/images/detail" and set(paths[1:]) == {"/v2/images"}
    with (
        GlanceEmulator(fleet, faults=Faults(no_v1=True)) as emu,
        pytest.raises(NoV1ApiError, match="api='v2'"),
    ):
        list_image_ids(endpoint=emu.url, token=ADMIN_TOKEN, api="v1")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_fetcher_and_the_lister_name_a_failure_alike() -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    fast = RetryPolicy(attempts=2, backoff=0.01, max_backoff=0.02)
    df = fetch_images(["a"], endpoint=endpoint, token="t", retries=fast)
    with pytest.raises(FetchError) as caught:
        list_image_ids(endpoint=endpoint, token="t", retries=fast)
    assert df["error"].tolist() == ["connection failed: refused (gave up after 2 attempts)"]
    assert str(caught.value).endswith(
        "failed: connection failed: refused (gave up after 2 attempts)"
    )
