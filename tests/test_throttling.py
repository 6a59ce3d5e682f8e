"""Throttling like a good API citizen: ``max_rps`` and adaptive concurrency.

All against the real emulator on 127.0.0.1. Rates are measured from the emulator's
request log (arrival times on its side), and the bands are wide on purpose: these tests
must hold on a noisy two-core VM.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import math
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import requests

from imgframe import ConfigError, StaticToken, fetch_images
from imgframe.fetch import HeadFetcher, RetryPolicy
from imgframe.testing import ADMIN_TOKEN, Faults, GlanceEmulator, Token, make_fleet

LOGGER = "imgframe.fetch"


def _throttled_and_fine_ids(faults: Faults, throttled: int) -> tuple[list[str], Iterator[str]]:
    """``throttled`` ids whose first HEAD ``faults`` answers 429, and endless fine ids.

    Unknown ids answer 404, a fine answer as far as throttling goes.
    """
    candidates = (f"00000000-0000-4000-8000-{i:012d}" for i in range(10**9))
    hit = list(itertools.islice((i for i in candidates if faults.transient_kind(i)), throttled))
    fine = (i for i in candidates if faults.transient_kind(i) is None)
    return hit, fine


def test_rate_limited_run_loses_no_id_and_runs_near_the_limit(caplog) -> None:
    limit = 200.0
    fleet = make_fleet(1500, seed=21)
    ids = [image.id for image in fleet.images]
    # 20 ms per answer: 32 requests in flight would offer ~1600/s, eight times the limit.
    faults = Faults(rate_limit=limit, latency=0.02, retry_after=1.0)
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    with GlanceEmulator(fleet, faults=faults) as emu:
        df = fetch_images(ids, endpoint=emu.url, token=ADMIN_TOKEN, concurrency=32, progress=False)
        log = emu.request_log
    assert (df["http_status"] == 200).all() and df["error"].isna().all()

    # The achieved rate of the middle of the run: the first fifth is the warm-up (the
    # limit is found), the last tenth the tail (the last few ids waiting on Retry-After).
    ok = sorted(entry.t for entry in log if entry.status == 200)
    first, last = len(ok) // 5, len(ok) * 9 // 10
    rate = (last - first) / (ok[last] - ok[first])
    assert 0.5 * limit <= rate <= 1.3 * limit, rate

    # After the first second the limit has been found: few requests are refused.
    settled = [entry.status for entry in log if entry.t > log[0].t + 1.0]
    assert Counter(settled)[429] / len(settled) < 0.10, Counter(settled)

    shrinks = [r.getMessage() for r in caplog.records if "after HTTP 429" in r.getMessage()]
    assert shrinks and shrinks[0].endswith("concurrency 32 -> 16 after HTTP 429")


def test_max_rps_caps_the_request_rate() -> None:
    fleet = make_fleet(300, seed=22)
    ids = [image.id for image in fleet.images]
    with GlanceEmulator(fleet) as emu:
        df = fetch_images(ids, endpoint=emu.url, token=ADMIN_TOKEN, max_rps=100, progress=False)
        arrivals = sorted(entry.t for entry in emu.request_log)
    assert (df["http_status"] == 200).all()
    rate = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    assert 50 <= rate <= 110, rate
    # Not only on average: no second of the run sees more than ~110 requests.
    busiest = max(
        sum(1 for t in arrivals[i:] if t < start + 1.0) for i, start in enumerate(arrivals)
    )
    assert busiest <= 110, busiest


def test_max_rps_paces_retries_too() -> None:
    fleet = make_fleet(100, seed=23)
    ids = [image.id for image in fleet.images]
    faults = Faults(transient_rate=1.0, transient_kinds=("500",), retry_after=None, seed=3)
    fast = RetryPolicy(attempts=3, backoff=0.0)
    with GlanceEmulator(fleet, faults=faults) as emu:
        df = fetch_images(
            ids, endpoint=emu.url, token=ADMIN_TOKEN, max_rps=100, retries=fast, progress=False
        )
        arrivals = sorted(entry.t for entry in emu.request_log)
    assert (df["http_status"] == 200).all() and len(arrivals) == 200
    assert (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) <= 110


def test_concurrency_shrinks_on_429_and_grows_back_to_the_configured_limit(caplog) -> None:
    faults = Faults(transient_rate=0.5, transient_kinds=("429",), retry_after=0.0, seed=5)
    throttled, fine = _throttled_and_fine_ids(faults, 64)
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    secret = "gAAAAA-throttling-secret"

    with GlanceEmulator(
        make_fleet(1), faults=faults, tokens={secret: Token(project_id="admin", admin=True)}
    ) as emu:
        fetcher = HeadFetcher(emu.url, StaticToken(secret), concurrency=8)

        def items() -> Iterator[tuple[int, str]]:
            # The 429s first, then fine answers until the limit is back where it started.
            yield from enumerate(throttled)
            deadline = time.monotonic() + 15.0
            for position, image_id in enumerate(fine, start=len(throttled)):
                recovered = fetcher.concurrency_changes and fetcher.concurrency_limit == 8
                if recovered or time.monotonic() > deadline:
                    return
                yield position, image_id

        results = []
        asyncio.run(fetcher.run(items(), results.append))

    assert all(r.http_status in (200, 404) for r in results)  # every 429 was retried
    limits = [limit for _, limit in fetcher.concurrency_changes]
    assert limits[0] == 4 and min(limits) < 8  # halved on the first round of 429s
    assert limits[-1] == 8 == fetcher.concurrency_limit  # and grown back to the maximum
    bottom = limits.index(min(limits))
    assert limits[bottom:] == list(range(min(limits), 9))  # one at a time
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert "concurrency 8 -> 4 after HTTP 429" in messages[0]
    assert messages[-1].endswith("concurrency 7 -> 8 after fine answers")
    assert not any(secret in m for m in messages)


def test_a_round_of_429s_halves_the_limit_once_not_down_to_one() -> None:
    faults = Faults(transient_rate=0.5, transient_kinds=("429",), retry_after=0.0, seed=6)
    throttled, _ = _throttled_and_fine_ids(faults, 32)
    # 50 ms per answer: all 32 requests of the first round are in flight together.
    with GlanceEmulator(make_fleet(1), faults=dataclasses.replace(faults, latency=0.05)) as emu:
        fetcher = HeadFetcher(emu.url, StaticToken(ADMIN_TOKEN), concurrency=32)
        results = []
        asyncio.run(fetcher.run(enumerate(throttled), results.append))
    assert [r.http_status for r in results] == [404] * 32
    assert [limit for _, limit in fetcher.concurrency_changes][:1] == [16]
    assert fetcher.concurrency_limit >= 8  # 32 answers of 429, yet not collapsed to 1


def test_adaptive_off_keeps_the_configured_concurrency() -> None:
    faults = Faults(transient_rate=0.5, transient_kinds=("429",), retry_after=0.0, seed=7)
    throttled, _ = _throttled_and_fine_ids(faults, 32)
    with GlanceEmulator(make_fleet(1), faults=faults) as emu:
        fetcher = HeadFetcher(emu.url, StaticToken(ADMIN_TOKEN), concurrency=8, adaptive=False)
        asyncio.run(fetcher.run(enumerate(throttled), lambda result: None))
    assert not fetcher.concurrency_changes and fetcher.concurrency_limit == 8


@pytest.mark.parametrize("max_rps", [0, -5, math.nan, math.inf, True, "10"])
def test_max_rps_is_validated(max_rps: object) -> None:
    with pytest.raises(ConfigError, match="max_rps"):
        HeadFetcher("http://127.0.0.1:1", StaticToken("t"), max_rps=max_rps)  # type: ignore[arg-type]


def test_emulator_rate_limit_answers_429_with_retry_after_above_the_rate() -> None:
    fleet = make_fleet(1, seed=24)
    url_path = f"/v1/images/{fleet.images[0].id}"
    faults = Faults(rate_limit=20, retry_after=1.0)
    with GlanceEmulator(fleet, faults=faults) as emu, requests.Session() as session:
        started = time.monotonic()
        answers = [
            session.head(emu.url + url_path, headers={"X-Auth-Token": ADMIN_TOKEN})
            for _ in range(60)
        ]
        elapsed = time.monotonic() - started
    passed = sum(a.status_code == 200 for a in answers)
    refused = [a for a in answers if a.status_code == 429]
    assert passed + len(refused) == 60 and refused
    assert passed <= 2 + 20 * elapsed + 1  # the bucket's burst (a tenth of a second) + rate
    assert {a.headers["Retry-After"] for a in refused} == {"1"}
