"""The fetcher against the real Glance v1 emulator over HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from collections import defaultdict

import pandas as pd
import pytest
from aiohttp import web

import imgframe
from imgframe import (
    CallableToken,
    ConfigError,
    ImgframeParseWarning,
    InvalidInputError,
    NoV1ApiError,
    RetryPolicy,
    Timeout,
    fetch_images,
    fetch_images_async,
)
from imgframe.fetch import HeadFetcher
from imgframe.testing import ADMIN_TOKEN, Faults, GlanceEmulator, Token, make_fleet

FAST_RETRY = RetryPolicy(attempts=4, backoff=0.01, max_backoff=0.05)


FLEET = {"n": 600, "seed": 11}  # the module's `fleet` (tests/conftest.py)


@pytest.fixture
def emulator(servers, fleet) -> GlanceEmulator:
    """A fresh emulator per test (its request log and attempt counts start empty)."""
    return servers.glance(fleet)


def ids_of(fleet) -> list[str]:
    return [image.id for image in fleet.images]


def unknown_ids(n: int) -> list[str]:
    return [f"00000000-0000-4000-8000-{i:012d}" for i in range(n)]


def test_ten_thousand_ids_with_faults_give_one_row_each_and_lose_none() -> None:
    fleet = make_fleet(9_500, seed=5)
    known = ids_of(fleet)
    unknown = unknown_ids(500)  # 5% of the request
    requested = known + unknown
    faults = Faults(transient_rate=0.10, retry_after=0.0, seed=3)
    with GlanceEmulator(fleet, faults=faults) as emu:
        df = fetch_images(requested, endpoint=emu.url, token=ADMIN_TOKEN, retries=FAST_RETRY)
        log = emu.request_log
    assert len(df) == 10_000 and df.index.is_unique
    assert df.index.tolist() == requested
    assert (df.loc[known, "http_status"] == 200).all()
    assert (df.loc[unknown, "http_status"] == 404).all()
    assert df["http_status"].notna().all()
    assert df.loc[known, "error"].isna().all()
    faulty = [i for i in known if faults.transient_kind(i) is not None]
    assert 800 < len(faulty) < 1100  # the fault injection really happened
    per_id = defaultdict(list)
    for entry in log:
        per_id[entry.image_id].append(entry.status)
    assert all(len(per_id[i]) == 2 for i in faulty)  # failed once, retried once


def test_values_round_trip_exactly_from_fleet_to_frame(fleet, emulator) -> None:
    df = fetch_images(ids_of(fleet), endpoint=emulator.url, token=ADMIN_TOKEN)
    by_id = fleet.by_id()
    for image_id, row in df.iterrows():
        image = by_id[image_id]
        for column in ("name", "status", "size", "virtual_size", "checksum", "owner",
                       "container_format", "disk_format", "is_public", "protected",
                       "deleted", "min_ram", "min_disk"):  # fmt: skip
            expected = getattr(image, column)
            if expected is None:
                assert pd.isna(row[column]), (image_id, column)
            else:
                assert row[column] == expected, (image_id, column)
        assert row["created_at"] == pd.Timestamp(image.created_at, tz="UTC")
        assert row["properties"] == image.properties
        assert row["request_id"].startswith("req-")
    assert any(not str(name).isascii() for name in df["name"].dropna())


def test_retry_after_header_is_honoured(fleet) -> None:
    faults = Faults(transient_rate=1.0, transient_kinds=("429",), retry_after=0.4, seed=1)
    sample = ids_of(fleet)[:8]
    with GlanceEmulator(fleet, faults=faults) as emu:
        df = fetch_images(sample, endpoint=emu.url, token=ADMIN_TOKEN, retries=FAST_RETRY)
        log = emu.request_log
    assert (df["http_status"] == 200).all()
    times = defaultdict(list)
    for entry in log:
        times[entry.image_id].append((entry.t, entry.status))
    for image_id in sample:
        (t1, s1), (t2, s2) = times[image_id]
        assert (s1, s2) == (429, 200)
        assert t2 - t1 >= 0.4 - 0.01, image_id  # our backoff alone would be ~0.01 s


def test_retries_exhausted_leave_status_and_error(fleet) -> None:
    faults = Faults(transient_rate=1.0, transient_kinds=("503",), transient_attempts=10, seed=2)
    sample = ids_of(fleet)[:5]
    with GlanceEmulator(fleet, faults=faults) as emu:
        df = fetch_images(sample, endpoint=emu.url, token=ADMIN_TOKEN, retries=FAST_RETRY)
        assert all(emu.attempts(i) == 4 for i in sample)
    assert (df["http_status"] == 503).all()
    assert (
        df["error"]
        .str.contains("503 Service Unavailable (gave up after 4 attempts)", regex=False)
        .all()
    )


def test_not_found_is_not_retried(emulator) -> None:
    missing = unknown_ids(3)
    df = fetch_images(missing, endpoint=emulator.url, token=ADMIN_TOKEN)
    assert df["error"].tolist() == ["HTTP 404 Not Found"] * 3
    assert all(emulator.attempts(i) == 1 for i in missing)


def test_dropped_connections_are_retried(fleet) -> None:
    faults = Faults(transient_rate=0.5, transient_kinds=("drop",), seed=4)
    with GlanceEmulator(fleet, faults=faults) as emu:
        df = fetch_images(ids_of(fleet), endpoint=emu.url, token=ADMIN_TOKEN, retries=FAST_RETRY)
    assert (df["http_status"] == 200).all()


def test_hanging_server_times_out_then_retry_succeeds(fleet) -> None:
    faults = Faults(hang_rate=1.0, hang_seconds=5.0, seed=5)
    sample = ids_of(fleet)[:4]
    with GlanceEmulator(fleet, faults=faults) as emu:
        df = fetch_images(
            sample, endpoint=emu.url, token=ADMIN_TOKEN, timeout=0.3, retries=FAST_RETRY
        )
        no_retry = fetch_images(
            ids_of(fleet)[4:6], endpoint=emu.url, token=ADMIN_TOKEN, timeout=0.3, retries=0
        )
    assert (df["http_status"] == 200).all()
    assert no_retry["http_status"].isna().all()
    assert no_retry["error"].str.startswith("timed out").all()


def test_expired_token_is_refreshed_mid_run(fleet) -> None:
    with GlanceEmulator(fleet, tokens={}) as emu:
        issued: list[str] = []

        def new_token() -> str:
            issued.append(emu.issue_token("admin", admin=True, ttl_requests=150))
            return issued[-1]

        df = fetch_images(
            ids_of(fleet), endpoint=emu.url, token=CallableToken(new_token), concurrency=8
        )
        statuses = [entry.status for entry in emu.request_log]
    assert (df["http_status"] == 200).all() and len(df) == len(fleet)
    assert len(issued) >= 4  # 600 requests / 150 per token
    assert 401 in statuses


def test_static_token_expiry_fails_the_rest_clearly_without_flooding(fleet) -> None:
    with GlanceEmulator(fleet, tokens={"t": Token("admin", admin=True, ttl_requests=100)}) as emu:
        df = fetch_images(ids_of(fleet), endpoint=emu.url, token="t", concurrency=4)
        sent = len(emu.request_log)
    assert len(df) == len(fleet)
    assert (df["http_status"] == 200).sum() == 100
    failed = df[df["http_status"] != 200]
    assert failed["error"].str.contains("401|token was rejected").all()
    assert sent < 100 + 20  # once the token is known dead, nothing more is sent


def test_invalid_ids_get_a_row_and_never_reach_the_server(fleet, emulator) -> None:
    bad = ["a/b", "..", ".", "x..y", "a?b", "a#b", "a b", "a\tb", "nul\x00", "c" * 256,
           "back\\slash", "nbsp\u00a0x", "ls\u2028x", "nel\x85x"]  # fmt: skip
    good = ids_of(fleet)[:2]
    df = fetch_images(bad + good, endpoint=emulator.url, token=ADMIN_TOKEN)
    assert df.loc[bad, "error"].eq("invalid image id").all()
    assert df.loc[bad, "http_status"].isna().all()
    assert df.loc[good, "http_status"].eq(200).all()
    seen = {entry.image_id for entry in emulator.request_log}
    assert not seen & set(bad)
    assert all(entry.path.startswith("/v1/images/") for entry in emulator.request_log)


def test_ids_are_stripped_deduplicated_and_keep_input_order(fleet, emulator) -> None:
    a, b, c = ids_of(fleet)[:3]
    df = fetch_images([f" {c} ", a, c, b, a], endpoint=emulator.url, token=ADMIN_TOKEN)
    assert df.index.tolist() == [c, a, b]


@pytest.mark.parametrize("kind", ["series", "index", "generator", "tuple"])
def test_ids_from_any_iterable(fleet, emulator, kind: str) -> None:
    ids = ids_of(fleet)[:3]
    source = {
        "series": pd.Series(ids),
        "index": pd.Index(ids),
        "generator": (i for i in ids),
        "tuple": tuple(ids),
    }[kind]
    df = fetch_images(source, endpoint=emulator.url, token=ADMIN_TOKEN)
    assert df.index.tolist() == ids


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ("3c3d1d01-b48a", "not one string"),
        (["ok", None], r"ids\[1\] is missing"),
        (pd.Series(["ok", float("nan")]), r"ids\[1\] is missing"),
        ([1, 2], r"ids\[0\] is a int"),
        (["ok", "lone\udc80"], r"ids\[1\] is not valid Unicode"),
        (42, "iterable"),
    ],
)
def test_bad_ids_argument_raises_clear_error(emulator, ids: object, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        fetch_images(ids, endpoint=emulator.url, token=ADMIN_TOKEN)  # type: ignore[arg-type]
    assert emulator.request_log == []


@pytest.mark.parametrize("endpoint", ["ftp://127.0.0.1", "127.0.0.1:9292", "", "http://u:p@h"])
def test_bad_endpoint_raises_config_error(endpoint: str) -> None:
    with pytest.raises(ConfigError):
        fetch_images(["a"], endpoint=endpoint, token="t")


def test_missing_token_raises_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OS_AUTH_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="OS_AUTH_TOKEN"):
        fetch_images(["a"], endpoint="http://127.0.0.1:1")


def test_token_from_environment(fleet, emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OS_AUTH_TOKEN", ADMIN_TOKEN)
    df = fetch_images(ids_of(fleet)[:2], endpoint=emulator.url)
    assert (df["http_status"] == 200).all()


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
def test_endpoint_with_or_without_v1(fleet, emulator, suffix: str) -> None:
    df = fetch_images(ids_of(fleet)[:2], endpoint=emulator.url + suffix, token=ADMIN_TOKEN)
    assert (df["http_status"] == 200).all()


def test_cloud_without_v1_stops_the_run(fleet) -> None:
    with GlanceEmulator(fleet, faults=Faults(no_v1=True)) as emu:
        with pytest.raises(NoV1ApiError, match="no Glance v1 API"):
            fetch_images(ids_of(fleet)[:50], endpoint=emu.url, token=ADMIN_TOKEN)
        assert len(emu.request_log) < 50


def test_private_image_of_other_project_is_404_for_non_admin(fleet) -> None:
    owner = fleet.images[0].owner
    private_other = [i.id for i in fleet.images if i.owner != owner and not i.is_public][:3]
    own = [i.id for i in fleet.images if i.owner == owner and not i.deleted][:3]
    with GlanceEmulator(fleet, tokens={"p": Token(owner)}) as emu:
        df = fetch_images(private_other + own, endpoint=emu.url, token="p")
    assert df.loc[private_other, "http_status"].eq(404).all()
    assert df.loc[own, "http_status"].eq(200).all()


def test_malformed_values_become_na_with_one_warning(fleet) -> None:
    faults = Faults(malformed_rate=0.2, seed=9)
    with (
        GlanceEmulator(fleet, faults=faults) as emu,
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        df = fetch_images(ids_of(fleet), endpoint=emu.url, token=ADMIN_TOKEN)
    parse_warnings = [w for w in caught if issubclass(w.category, ImgframeParseWarning)]
    assert len(parse_warnings) == 1
    assert len(df) == len(fleet) and (df["http_status"] == 200).all()
    malformed = [i for i in ids_of(fleet) if faults.is_malformed(i)]
    assert 60 < len(malformed) < 180
    for image_id in malformed:
        for header in faults.malformed_headers(image_id):
            column = header.removeprefix("X-Image-Meta-").lower()
            assert pd.isna(df.loc[image_id, column]), (image_id, column)
    clean = [i for i in ids_of(fleet) if not faults.is_malformed(i)]
    assert df.loc[clean, "created_at"].notna().all()


def test_sync_fetch_works_inside_a_running_event_loop(fleet, emulator) -> None:
    async def notebook_cell() -> pd.DataFrame:
        return fetch_images(ids_of(fleet)[:5], endpoint=emulator.url, token=ADMIN_TOKEN)

    df = asyncio.run(notebook_cell())
    assert (df["http_status"] == 200).all()


def test_async_api(fleet, emulator) -> None:
    df = asyncio.run(
        fetch_images_async(ids_of(fleet)[:5], endpoint=emulator.url, token=ADMIN_TOKEN)
    )
    assert (df["http_status"] == 200).all()


def test_token_never_appears_in_reprs_errors_or_output(fleet, tmp_path) -> None:
    secret = "s3cr3t-token-value"
    with GlanceEmulator(fleet, tokens={}) as emu:
        df = fetch_images([*ids_of(fleet)[:20], "../x"], endpoint=emu.url, token=secret)
    fetcher = HeadFetcher("http://127.0.0.1:1", imgframe.StaticToken(secret))
    imgframe.to_csv(df, tmp_path / "out.csv")
    texts = [repr(fetcher), repr(imgframe.StaticToken(secret)), df.to_string(),
             (tmp_path / "out.csv").read_text()]  # fmt: skip
    assert not any(secret in text for text in texts)
    assert (df["http_status"].dropna() == 401).all()


class _Redirector:
    """A tiny real server that answers every HEAD with a redirect to another origin."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.seen_tokens: list[str | None] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.seen_tokens.append(request.headers.get("X-Auth-Token"))
        return web.Response(status=302, headers={"Location": self.target + request.path})


def _serve(app_handler, ready: threading.Event, box: dict) -> None:
    async def main() -> None:
        runner = web.ServerRunner(web.Server(app_handler))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        box["port"] = runner.addresses[0][1]
        box["stop"] = asyncio.Event()
        box["loop"] = asyncio.get_running_loop()
        ready.set()
        await box["stop"].wait()
        await runner.cleanup()

    asyncio.run(main())


def test_redirect_to_other_origin_is_not_followed_with_the_token(fleet, emulator) -> None:
    redirector = _Redirector(emulator.url)
    ready, box = threading.Event(), {}
    thread = threading.Thread(target=_serve, args=(redirector.handle, ready, box), daemon=True)
    thread.start()
    try:
        assert ready.wait(10)
        image_id = ids_of(fleet)[0]
        df = fetch_images([image_id], endpoint=f"http://127.0.0.1:{box['port']}", token="tok")
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(10)
    assert df.loc[image_id, "http_status"] == 302
    assert "redirect to another origin not followed" in df.loc[image_id, "error"]
    assert emulator.request_log == []  # the other origin never saw the token


def test_concurrency_is_validated() -> None:
    with pytest.raises(ConfigError, match="concurrency"):
        fetch_images(["a"], endpoint="http://127.0.0.1:1", token="t", concurrency=0)


def test_timeout_and_retry_value_objects_have_readable_reprs() -> None:
    assert repr(Timeout(total=5, connect=2)) == "Timeout(total=5, connect=2)"
    assert "attempts=3" in repr(RetryPolicy(attempts=3))


def test_timeout_fires_between_total_and_total_plus_a_tick(fleet) -> None:
    faults = Faults(hang_rate=1.0, hang_seconds=5.0, seed=6)
    with GlanceEmulator(fleet, faults=faults) as emu:
        started = time.perf_counter()
        df = fetch_images(
            ids_of(fleet)[:3], endpoint=emu.url, token=ADMIN_TOKEN, timeout=0.5, retries=0
        )
        elapsed = time.perf_counter() - started
    assert df["error"].eq("timed out after 0.5 s").all()
    assert 0.5 <= elapsed < 0.5 + 0.05 + 0.5  # total + one tick + slack for a busy machine


def test_requests_racing_their_deadline_all_end_as_one_row(fleet) -> None:
    # Latency straddles the timeout, so answers arrive just before, at and after deadlines.
    faults = Faults(latency=(0.05, 0.15), seed=8)
    ids = ids_of(fleet)[:200]
    retry = RetryPolicy(attempts=20, backoff=0.0, max_backoff=0.0)
    with GlanceEmulator(fleet, faults=faults) as emu:
        df = fetch_images(ids, endpoint=emu.url, token=ADMIN_TOKEN, timeout=0.1, retries=retry)
        log = emu.request_log
    assert df.index.tolist() == ids
    assert (df["http_status"] == 200).all(), df["error"].value_counts()
    assert len(log) > len(ids)  # some attempts really did time out and were retried


def test_cancelling_the_run_is_not_mistaken_for_a_timeout(fleet) -> None:
    faults = Faults(hang_rate=1.0, hang_seconds=5.0, seed=7)

    async def impatient() -> None:
        await asyncio.wait_for(
            fetch_images_async(ids_of(fleet)[:5], endpoint=emu.url, token=ADMIN_TOKEN),
            timeout=0.3,
        )

    with GlanceEmulator(fleet, faults=faults) as emu:
        started = time.perf_counter()
        with pytest.raises(TimeoutError):
            asyncio.run(impatient())
    assert time.perf_counter() - started < 3


def test_batches_concatenate_into_one_typed_frame(fleet, emulator, monkeypatch) -> None:
    import imgframe.api

    monkeypatch.setattr(imgframe.api, "BATCH_SIZE", 7)
    # Batches of only unknown ids have all-NA category columns: they must still concat.
    requested = unknown_ids(15) + ids_of(fleet)[:30] + unknown_ids(30)[15:]
    df = fetch_images(requested, endpoint=emulator.url, token=ADMIN_TOKEN, concurrency=2)
    expected = fetch_images(requested, endpoint=emulator.url, token=ADMIN_TOKEN)
    assert df.index.tolist() == requested
    for column, dtype in imgframe.dtypes().items():
        assert df[column].dtype == dtype or isinstance(df[column].dtype, pd.CategoricalDtype)
    assert isinstance(df["status"].dtype, pd.CategoricalDtype)
    pd.testing.assert_frame_equal(
        df.drop(columns=["request_id"]),
        expected.drop(columns=["request_id"]),
        check_categorical=False,
    )


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_a_404_row_keeps_the_servers_request_id(emulator, api) -> None:
    missing = "00000000-0000-4000-8000-000000000404"
    df = fetch_images([missing], endpoint=emulator.url, token=ADMIN_TOKEN, api=api)
    row = df.loc[missing]
    assert row["http_status"] == 404 and row["error"] == "HTTP 404 Not Found"
    assert str(row["request_id"]).startswith("req-")  # what a support ticket needs
    assert pd.isna(row["name"]) and row["properties"] == {}
