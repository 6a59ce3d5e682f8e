"""Hostile servers on 127.0.0.1: answers that lie, break HTTP, or never come.

Every test runs the real fetcher against the emulator's hostile modes (or a closed
port) over real HTTP. The rule under test: one row per id, never an exception out of
the run, and an ``error`` vocabulary small enough to group by.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections import defaultdict

import pandas as pd
import pytest

import imgframe
from imgframe import RetryPolicy, fetch_images
from imgframe.fetch import (
    BROKE_HTTP_HEADER,
    BROKE_HTTP_STATUS,
    CONFLICTING_IDS,
    HEADER_TOO_LONG,
    INTERNAL,
    NO_METADATA,
    TOO_MANY_HEADERS,
    UNREACHABLE_NOT_SENT,
    V2_NO_ID,
    V2_NOT_JSON,
    V2_NOT_OBJECT,
    V2_WRONG_ID,
    WRONG_ID,
    normalize_endpoint,
    same_image_id,
)
from imgframe.testing import ADMIN_TOKEN, Faults, GlanceEmulator, make_fleet

FAST_RETRY = RetryPolicy(attempts=4, backoff=0.01, max_backoff=0.05)
RETRY_AFTER_JUNK = ("nan", "inf", "-1", "-0.5", "soon", "1e999", "NaN", "\u0661\u0662", "")


FLEET = {"n": 300, "seed": 21}  # the module's `fleet` (tests/conftest.py)


def ids_of(fleet) -> list[str]:
    return [image.id for image in fleet.images]


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- Retry-After ------------------------------------------------------------------------


@pytest.mark.parametrize("value", RETRY_AFTER_JUNK)
def test_a_retry_after_that_is_not_finite_seconds_means_normal_backoff(fleet, value) -> None:
    faults = Faults(transient_rate=1.0, transient_kinds=("429", "503"), retry_after=value)
    sample = ids_of(fleet)[:20]
    with GlanceEmulator(fleet, faults=faults) as emu:
        started = time.perf_counter()
        df = fetch_images(sample, endpoint=emu.url, token=ADMIN_TOKEN, retries=FAST_RETRY)
        elapsed = time.perf_counter() - started
        log = emu.request_log
    assert (df["http_status"] == 200).all(), df["error"].value_counts()
    assert elapsed < 5  # normal backoff is ~0.01 s; "inf" used to wait for ever
    assert sum(entry.status in (429, 503) for entry in log) == len(sample)


def test_a_huge_retry_after_is_capped(fleet) -> None:
    faults = Faults(transient_rate=1.0, transient_kinds=("503",), retry_after="99999999999")
    retry = RetryPolicy(attempts=2, backoff=0.01, max_retry_after=0.3)
    with GlanceEmulator(fleet, faults=faults) as emu:
        started = time.perf_counter()
        df = fetch_images(ids_of(fleet)[:4], endpoint=emu.url, token=ADMIN_TOKEN, retries=retry)
        elapsed = time.perf_counter() - started
    assert (df["http_status"] == 200).all()
    assert 0.3 <= elapsed < 3


def test_the_emulator_sends_retry_after_strings_as_they_are(fleet) -> None:
    import requests

    faults = Faults(transient_rate=1.0, transient_kinds=("429",), retry_after=RETRY_AFTER_JUNK)
    with GlanceEmulator(fleet, faults=faults) as emu:
        sent = {
            requests.head(
                f"{emu.url}/v1/images/{image_id}", headers={"X-Auth-Token": ADMIN_TOKEN}
            ).headers.get("Retry-After")
            for image_id in ids_of(fleet)[:60]
        }
    # requests decodes header bytes as Latin-1; the emulator sends raw UTF-8.
    sent = {value.encode("latin-1").decode("utf-8") for value in sent}
    assert sent <= set(RETRY_AFTER_JUNK) and len(sent) >= 5


# --- answers that lie -------------------------------------------------------------------


def lying_ids(faults: Faults, ids: list[str], kind: str) -> list[str]:
    return [i for i in ids if faults.lie(i) == kind]


@pytest.mark.parametrize(
    ("rate", "kind", "error"),
    [
        ("wrong_id_rate", "wrong-id", WRONG_ID),
        ("duplicate_id_rate", "duplicate-id", CONFLICTING_IDS),
        ("no_metadata_rate", "no-metadata", NO_METADATA),
    ],
)
def test_an_answer_that_lies_is_a_200_row_with_an_error_and_no_data(
    fleet, rate, kind, error
) -> None:
    faults = Faults(**{rate: 0.3}, seed=5)
    ids = ids_of(fleet)
    liars = lying_ids(faults, ids, kind)
    assert 50 < len(liars) < 130
    with GlanceEmulator(fleet, faults=faults) as emu:
        df = fetch_images(ids, endpoint=emu.url, token=ADMIN_TOKEN, retries=FAST_RETRY)
        attempts = {i: emu.attempts(i) for i in liars}
    assert df.index.tolist() == ids
    bad = df.loc[liars]
    assert (bad["http_status"] == 200).all()  # what was received is kept
    assert (bad["error"] == error).all()
    assert bad["name"].isna().all() and bad["size"].isna().all()  # no lying data kept
    assert set(attempts.values()) == {2}  # asked again once: a cache may lie once
    good = df.drop(index=liars)
    assert good["error"].isna().all() and (good["http_status"] == 200).all()
    by_id = fleet.by_id()
    assert all(good.loc[i, "created_at"].year == by_id[i].created_at.year for i in good.index)


def test_a_body_after_a_head_answer_is_an_error_row_never_a_wrong_next_row(fleet) -> None:
    faults = Faults(head_body_rate=0.3, seed=6)
    ids = ids_of(fleet)
    liars = set(lying_ids(faults, ids, "head-body"))
    with GlanceEmulator(fleet, faults=faults) as emu:
        # Few connections, so every connection is reused right after a broken answer.
        df = fetch_images(
            ids, endpoint=emu.url, token=ADMIN_TOKEN, retries=FAST_RETRY, concurrency=2
        )
    failed = set(df.index[df["error"].notna()])
    assert failed == liars
    assert df.loc[list(liars), "error"].eq(BROKE_HTTP_STATUS).all()
    by_id = fleet.by_id()
    good = df.drop(index=list(liars))
    assert (good["http_status"] == 200).all()
    # Every good row carries its own image's data, not the answer after a broken one.
    assert all(
        good.loc[i, "created_at"] == pd.Timestamp(by_id[i].created_at, tz="UTC") for i in good.index
    )


def test_a_v2_document_for_another_image_is_an_error_row(fleet) -> None:
    faults = Faults(wrong_id_rate=0.3, seed=7)
    ids = [image.id for image in fleet.images if not image.deleted]
    liars = lying_ids(faults, ids, "wrong-id")
    with GlanceEmulator(fleet, faults=faults) as emu:
        df = fetch_images(
            ids, endpoint=emu.url + "/v2", token=ADMIN_TOKEN, api="v2", retries=FAST_RETRY
        )
    assert (df.loc[liars, "error"] == V2_WRONG_ID).all()
    assert (df.loc[liars, "http_status"] == 200).all()
    assert df.drop(index=liars)["error"].isna().all()


def test_an_id_equal_but_for_ascii_case_is_the_same_image() -> None:
    requested = "3c3d1d01-b48a-4639-8a88-08be3b9b5d78"
    assert same_image_id(requested.upper(), requested)
    assert same_image_id(requested, requested.upper())
    assert not same_image_id(requested[:-1] + "9", requested)
    assert not same_image_id("\u0130d", "id")  # only ASCII letters fold
    assert same_image_id("\u00e9t\u00e9", "\u00e9t\u00e9")


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_an_upper_case_id_answered_in_lower_case_is_a_good_row(fleet, api) -> None:
    images = [image for image in fleet.images if not image.deleted][:20]
    asked = [image.id.upper() for image in images]
    with GlanceEmulator(fleet, case_insensitive_ids=True) as emu:
        df = fetch_images(asked, endpoint=emu.url, token=ADMIN_TOKEN, api=api)
    assert df.index.tolist() == asked  # filed under the id as requested
    assert df["error"].isna().all(), df["error"].value_counts()
    assert df["name"].tolist() == [image.name for image in images]


# --- big answers ------------------------------------------------------------------------


def test_a_thousand_properties_and_a_64_kib_value_are_read(fleet) -> None:
    faults = Faults(extra_properties=1000, huge_value=64 * 1024)
    sample = ids_of(fleet)[:20]
    with GlanceEmulator(fleet, faults=faults) as emu:
        df = fetch_images(sample, endpoint=emu.url, token=ADMIN_TOKEN)
    assert df["error"].isna().all(), df["error"].value_counts()
    for image_id in sample:
        properties = df.loc[image_id, "properties"]
        assert properties["extra_0999"] == "value 999"
        assert properties["huge"] == "x" * 64 * 1024
        assert len(properties) == 1001 + len(fleet.by_id()[image_id].properties)


# --- the error vocabulary ------------------------------------------------------------


def raw_server(answers: dict[str, bytes]):
    """A bare TCP server on 127.0.0.1 answering each path's request with fixed bytes."""
    import asyncio

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while request := await reader.readuntil(b"\r\n\r\n"):
                path = request.split(b" ", 2)[1].decode()
                writer.write(answers[path.rsplit("/", 1)[1]])
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return answer


def serve_raw(answers: dict[str, bytes]):
    import asyncio
    import contextlib

    @contextlib.contextmanager
    def running():
        loop = asyncio.new_event_loop()
        server = loop.run_until_complete(asyncio.start_server(raw_server(answers), "127.0.0.1", 0))
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            server.close()
            loop.close()

    return running()


def test_each_way_of_breaking_http_has_its_own_fixed_sentence() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Image-Meta-Id: %s\r\n"
    answers = {
        "bad-status": b"HTTQ/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        "bad-header": ok % b"bad-header" + b"No colon here\r\n\r\n",
        "many-headers": ok % b"many-headers"
        + b"".join(b"X-H-%d: v\r\n" % n for n in range(3000))
        + b"\r\n",
        "long-header": ok % b"long-header" + b"X-Long: " + b"x" * 200_000 + b"\r\n\r\n",
        "fine": ok % b"fine" + b"X-Image-Meta-Name: n\r\n\r\n",
    }
    with serve_raw(answers) as url:
        df = fetch_images(list(answers), endpoint=url, token="t", retries=0, concurrency=1)
    errors = df["error"].to_dict()
    assert errors["bad-status"] == BROKE_HTTP_STATUS
    assert errors["bad-header"] == BROKE_HTTP_HEADER
    assert errors["many-headers"] == TOO_MANY_HEADERS
    assert errors["long-header"] == HEADER_TOO_LONG
    assert pd.isna(errors["fine"]) and df.loc["fine", "name"] == "n"


def test_a_v1_server_cannot_send_imgframes_own_pseudo_headers() -> None:
    # imgframe maps v2 attributes to x-imgframe-* names; a v1 answer carrying them is hostile
    answers = {
        "a": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Image-Meta-Id: a\r\n"
        b"X-Image-Meta-Is_public: False\r\nX-Imgframe-V2-Visibility: public\r\n"
        b"x-imgframe-property-Env: prod\r\nX-Image-Meta-Property-Env: dev\r\n\r\n",
    }
    with serve_raw(answers) as url:
        df = fetch_images(["a"], endpoint=url, token="t", retries=0, concurrency=1)
    assert pd.isna(df.loc["a", "error"])
    assert pd.isna(df.loc["a", "visibility"])
    assert df.loc["a", "is_public"] == False  # noqa: E712 (a nullable boolean)
    assert df.loc["a", "properties"] == {"env": "dev"}


def test_a_server_cannot_set_the_members_column_itself() -> None:
    # The members column comes only from imgframe's own members call: a v1 header with
    # its pseudo-header name is dropped, a v2 attribute "members" is a custom property.
    v1 = {
        "a": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Image-Meta-Id: a\r\n"
        b'X-Imgframe-Members: [{"member_id":"evil"}]\r\n\r\n',
    }
    with serve_raw(v1) as url:
        df = fetch_images(["a"], endpoint=url, token="t", retries=0, concurrency=1)
    assert pd.isna(df.loc["a", "error"]) and pd.isna(df.loc["a", "members"])
    body = b'{"id": "b", "visibility": "private", "members": [{"member_id": "evil"}]}'
    v2 = {
        "b": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body,
    }
    with serve_raw(v2) as url:
        df = fetch_images(["b"], endpoint=url, token="t", api="v2", retries=0, members=True)
    assert pd.isna(df.loc["b", "error"]) and pd.isna(df.loc["b", "members"])
    assert json.loads(df.loc["b", "properties"]["members"]) == [{"member_id": "evil"}]


def test_v2_documents_that_are_not_an_image_of_this_id_are_error_rows() -> None:
    def answer(body: bytes) -> bytes:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body

    answers = {
        "not-json": answer(b"<html>oops</html>"),
        "a-list": answer(b"[1, 2]"),
        "no-id": answer(b'{"name": "n"}'),
        "other": answer(b'{"id": "another", "name": "n"}'),
        "fine": answer(b'{"id": "FINE", "name": "n"}'),
    }
    with serve_raw(answers) as url:
        df = fetch_images(list(answers), endpoint=url, token="t", api="v2", retries=0)
    errors = df["error"].to_dict()
    assert errors["not-json"] == V2_NOT_JSON and errors["a-list"] == V2_NOT_OBJECT
    assert errors["no-id"] == V2_NO_ID and errors["other"] == V2_WRONG_ID
    assert pd.isna(errors["fine"]) and df.loc["fine", "name"] == "n"
    assert (df["http_status"] == 200).all()


# --- the error vocabulary, over many rows ---------------------------------------------


def test_twenty_thousand_broken_answers_make_a_handful_of_error_values(caplog) -> None:
    fleet = make_fleet(20_000, seed=8)
    ids = ids_of(fleet)
    faults = Faults(head_body_rate=0.5, no_metadata_rate=0.2, seed=8)
    caplog.set_level(logging.DEBUG, logger="imgframe.fetch")
    with GlanceEmulator(fleet, faults=faults) as emu:
        df = fetch_images(ids, endpoint=emu.url, token=ADMIN_TOKEN, retries=0)
        port = str(emu.url.rsplit(":", 1)[1])
    assert len(df) == 20_000
    assert df["error"].notna().sum() > 10_000
    assert df["error"].nunique() <= 3, df["error"].value_counts()
    assert not df["error"].dropna().str.contains(port).any()  # no URL in a row
    assert not df["error"].dropna().str.contains("ClientResponseError").any()
    details = [r.getMessage() for r in caplog.records if r.name == "imgframe.fetch"]
    assert any("/v1/images/" in m for m in details)  # the details went to the debug log
    assert not any(ADMIN_TOKEN in m for m in details)


def test_refused_connections_make_one_error_value_per_cause() -> None:
    ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(2_000)]
    df = fetch_images(ids, endpoint=f"http://127.0.0.1:{closed_port()}", token="t", retries=2)
    assert df["error"].nunique() <= 2, df["error"].value_counts()
    assert df["http_status"].isna().all()


# --- a dead endpoint --------------------------------------------------------------------


def test_a_thousand_ids_against_a_closed_port_end_in_seconds(caplog) -> None:
    ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(1_000)]
    caplog.set_level(logging.DEBUG, logger="imgframe.fetch")
    started = time.perf_counter()
    df = fetch_images(ids, endpoint=f"http://127.0.0.1:{closed_port()}", token="secret-tok")
    elapsed = time.perf_counter() - started
    assert elapsed < 5, elapsed
    assert df.index.tolist() == ids
    counts = df["error"].value_counts()
    unreachable = UNREACHABLE_NOT_SENT.format(cause="connection failed: refused")
    assert counts[unreachable] >= 990
    assert counts.sum() == 1_000
    assert not any("secret-tok" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_server_that_hangs_up_before_any_answer_is_unreachable(scheme) -> None:
    # Accepts the connection and closes it at once: a reset before any HTTP answer, or
    # (https) during the TLS handshake.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listener.settimeout(0.1)
        port = listener.getsockname()[1]
        stop = threading.Event()

        def hang_up() -> None:
            while not stop.is_set():
                try:
                    connection, _ = listener.accept()
                except TimeoutError:
                    continue
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                connection.close()  # linger 0: an RST, not a FIN

        thread = threading.Thread(target=hang_up, daemon=True)
        thread.start()
        ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(1_000)]
        try:
            started = time.perf_counter()
            df = fetch_images(ids, endpoint=f"{scheme}://127.0.0.1:{port}", token="t", verify=False)
            elapsed = time.perf_counter() - started
        finally:
            stop.set()
            thread.join(5)
    assert elapsed < 5, elapsed
    assert df["http_status"].isna().all()
    unreachable = df["error"].str.startswith("not requested: the endpoint was unreachable")
    assert unreachable.sum() >= 990, df["error"].value_counts()
    assert df["error"].nunique() <= 2


def test_an_endpoint_that_dies_mid_run_stops_the_sending_soon() -> None:
    fleet = make_fleet(3_000, seed=9)
    ids = ids_of(fleet)
    emu = GlanceEmulator(fleet, faults=Faults(latency=0.002)).start()
    try:

        def kill_after_some_answers() -> None:
            deadline = time.monotonic() + 20
            while len(emu.request_log) < 300 and time.monotonic() < deadline:
                time.sleep(0.01)
            emu.stop()

        killer = threading.Thread(target=kill_after_some_answers)
        killer.start()
        started = time.perf_counter()
        df = fetch_images(ids, endpoint=emu.url, token=ADMIN_TOKEN, concurrency=8)
        elapsed = time.perf_counter() - started
        killer.join()
    finally:
        emu.stop()
    assert df.index.tolist() == ids
    assert (df["http_status"] == 200).sum() >= 250  # answers before the stop (300 logged)
    unread = df[df["http_status"].isna()]
    assert len(unread) > 1_000  # most ids after the death were never sent
    assert unread["error"].nunique() <= 4, unread["error"].value_counts()
    assert unread["error"].str.contains("unreachable").sum() > 1_000
    assert elapsed < 15


def test_the_first_request_goes_alone_then_concurrency_opens_up(fleet) -> None:
    latency = 0.3
    with GlanceEmulator(fleet, faults=Faults(latency=latency)) as emu:
        fetch_images(ids_of(fleet)[:100], endpoint=emu.url, token=ADMIN_TOKEN, concurrency=32)
        log = emu.request_log
        most = emu.max_in_flight
    arrivals = sorted(entry.t for entry in log)
    first_answer = arrivals[0] + latency
    before = [t for t in arrivals if t < first_answer - 0.05]
    assert len(before) == 1  # a cold token is presented once, not by 32 workers at once
    assert most >= 16  # and then the run opens up to full concurrency


def test_a_hanging_first_request_does_not_serialize_the_run(fleet) -> None:
    # Every first attempt hangs: the probe waits half the timeout, then everyone sends.
    faults = Faults(hang_rate=1.0, hang_seconds=5.0, seed=5)
    sample = ids_of(fleet)[:16]
    with GlanceEmulator(fleet, faults=faults) as emu:
        started = time.perf_counter()
        df = fetch_images(
            sample, endpoint=emu.url, token=ADMIN_TOKEN, timeout=0.6, retries=FAST_RETRY
        )
        elapsed = time.perf_counter() - started
    assert (df["http_status"] == 200).all()
    assert elapsed < 0.6 * 4  # 16 serial timeouts would take 9.6 s


# --- the safety net ---------------------------------------------------------------------


def test_an_unexpected_exception_for_one_answer_is_that_ids_row(fleet, monkeypatch) -> None:
    import imgframe.glance

    real = imgframe.glance.v2_header_pairs
    poisoned = fleet.images[3].id

    def sometimes_fails(image):
        if image.get("id") == poisoned:
            raise KeyError("a parser bug")
        return real(image)

    monkeypatch.setattr(imgframe.glance, "v2_header_pairs", sometimes_fails)
    ids = [image.id for image in fleet.images[:20] if not image.deleted]
    with GlanceEmulator(fleet) as emu:
        df = fetch_images(ids, endpoint=emu.url, token=ADMIN_TOKEN, api="v2")
    assert df.loc[poisoned, "error"] == INTERNAL
    assert df.drop(index=[poisoned])["error"].isna().all()


# --- endpoints --------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["/v1", "/v2", "/v1.0", "/v2.1", "/V2/", "/v2.1/"])
def test_a_trailing_api_version_is_dropped(suffix) -> None:
    assert normalize_endpoint("https://glance.example.com:9292" + suffix) == (
        "https://glance.example.com:9292"
    )


def test_a_path_that_only_looks_like_a_version_is_kept() -> None:
    assert normalize_endpoint("https://x.example.com/v20") == "https://x.example.com/v20"
    assert normalize_endpoint("https://x.example.com/v2/image") == "https://x.example.com/v2/image"


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_an_endpoint_given_with_v2_is_not_all_404(fleet, api) -> None:
    ids = [image.id for image in fleet.images[:30] if not image.deleted]
    with GlanceEmulator(fleet) as emu:
        df = fetch_images(ids, endpoint=emu.url + "/v2", token=ADMIN_TOKEN, api=api)
    assert (df["http_status"] == 200).all()


# --- everything at once -----------------------------------------------------------------


def test_a_fetch_with_every_hostile_mode_returns_one_row_per_id_and_never_raises() -> None:
    fleet = make_fleet(2_000, seed=10)
    ids = ids_of(fleet) + [f"00000000-0000-4000-8000-{i:012d}" for i in range(50)]
    faults = Faults(
        transient_rate=0.2,
        retry_after=(*RETRY_AFTER_JUNK, 0.0, "Wed, 21 Oct 2015 07:28:00 GMT"),
        malformed_rate=0.3,
        odd_values=True,
        wrong_id_rate=0.05,
        duplicate_id_rate=0.05,
        no_metadata_rate=0.05,
        head_body_rate=0.05,
        extra_properties=200,
        huge_value=16 * 1024,
        seed=10,
    )
    with (
        GlanceEmulator(fleet, faults=faults) as emu,
        pytest.warns(imgframe.ImgframeParseWarning),
    ):
        df = fetch_images(ids, endpoint=emu.url, token=ADMIN_TOKEN, retries=FAST_RETRY)
    assert df.index.tolist() == ids
    assert df["http_status"].notna().sum() > 1_900
    assert df["error"].nunique() <= 12, df["error"].value_counts()
    per_kind = defaultdict(list)
    for image_id in ids_of(fleet):
        per_kind[faults.lie(image_id)].append(image_id)
    assert df.loc[per_kind[None], "error"].isna().all()
    assert df.loc[per_kind["wrong-id"], "error"].eq(WRONG_ID).all()
    assert isinstance(df["deleted_at"].dtype, pd.DatetimeTZDtype)
