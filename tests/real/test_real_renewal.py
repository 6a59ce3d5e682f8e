"""A KeystoneToken renewed before expiry during a fetch that outlives the token.

A second Keystone (same database and fernet keys as the session's, see
``RealCloud.short_lived_keystone``) issues 120 s tokens: keystoneauth counts a token with
under 120 s left as expiring, so this is the shortest life it still uses. The fetch is
paced (``max_rps``) to last ~175 s against the real Glance, which validates every token
with Keystone (``token_cache_time = -1``) and so refuses one the moment it expires.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from datetime import datetime
from typing import Any

import pytest
import requests
from realcheck import admin_password, assert_row_is_document, document, keystone_token, na

import imgframe

pytestmark = pytest.mark.real

TOKEN_LIFE = 120  # seconds: keystoneauth's MIN_TOKEN_LIFE_SECONDS, no shorter
IDS = 175  # at RATE per second: ~175 s, well past one token's life
RATE = 1.0
BOUND = 225  # seconds the fetch may take at most (it needs ~IDS / RATE)
CREATED = 100  # real images among the IDS (the seeded ones too); the rest: unknown ids


class RecordingTokens:
    """A TokenSource in front of a KeystoneToken that notes what the fetcher was given.

    It forwards every call (the fetcher sees the KeystoneToken's own answers) and keeps
    each new token with the time it was first handed out, and every ``refresh`` (what the
    fetcher calls after a 401): what the KeystoneToken did, seen from the outside.
    """

    def __init__(self, inner: imgframe.KeystoneToken) -> None:
        self.inner = inner
        self.given: list[tuple[float, str]] = []
        self.refreshes: list[str] = []

    async def token(self) -> str:
        token = await self.inner.token()
        if not self.given or self.given[-1][1] != token:
            self.given.append((time.time(), token))
        return token

    async def refresh(self, rejected: str) -> str | None:
        self.refreshes.append(rejected)
        return await self.inner.refresh(rejected)

    async def endpoint(self) -> str:
        return await self.inner.endpoint()


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


@pytest.fixture(scope="module")
def many(glance: Any, seeded: Any) -> list[str]:
    """CREATED queued images with a property each (one POST each), plus the seeded ones."""
    made = [
        glance.create(None, name=f"renewal-{n:03d}", renewal_batch=str(n))
        for n in range(CREATED - len(seeded.ids))
    ]
    return made + list(seeded.ids.values())


@pytest.mark.timeout(240, func_only=True)
def test_a_120s_token_is_renewed_during_a_175s_fetch(cloud: Any, glance: Any, many: list[str]):
    short = cloud.short_lived_keystone(TOKEN_LIFE)
    kt = keystone_token(cloud, keystone_url=short)
    probe = cloud.login("admin", admin_password(), "admin", keystone_url=short)
    status, probed = cloud.validate(probe)
    assert status == 200
    assert _seconds(probed["expires_at"]) - _seconds(probed["issued_at"]) == pytest.approx(
        TOKEN_LIFE, abs=1
    )  # the second Keystone really issues 120 s tokens, the main one validates them

    # Shuffled: real images all through the run, so some are read after each renewal.
    ids = many + [str(uuid.uuid4()) for _ in range(IDS - len(many))]
    random.Random(10).shuffle(ids)
    assert len(set(ids)) == IDS

    tokens = RecordingTokens(kt)
    fetch = imgframe.fetch_images_async(
        ids, token=tokens, api="v2", concurrency=2, max_rps=RATE, progress=False
    )
    started = time.time()
    # Bounded by the event loop itself: pytest-timeout's SIGALRM lands in a loop callback,
    # where asyncio reports it to the exception handler instead of stopping the run.
    df = asyncio.run(asyncio.wait_for(fetch, timeout=BOUND))
    finished = time.time()
    took = finished - started
    print(f"\n{IDS} ids at max_rps={RATE}: {took:.1f} s, {len(tokens.given)} tokens, "
          f"{kt.logins} logins")  # fmt: skip

    # Every row read: a 200 (compared with its document) or, for the unknown ids, a 404.
    assert list(df.index) == ids
    assert set(df["http_status"]) <= {200, 404}, df["http_status"].value_counts()
    real = [i for i in ids if df.loc[i, "http_status"] == 200]
    assert len(real) == len(many)
    assert (df.loc[[i for i in ids if i not in set(real)], "http_status"] == 404).all()
    for image_id in real:
        assert_row_is_document(df.loc[image_id], document(glance.url, glance.token, image_id))
    assert df["error"].map(na).sum() == len(many)

    # The run outlived the first token, and no request ever met a 401: the 401 path
    # (refresh) never ran, and each new token was handed out before the one it replaced
    # expired, as Keystone itself dates them.
    assert tokens.refreshes == []
    assert len(tokens.given) >= 2 and kt.logins == len(tokens.given)
    assert len({token for _, token in tokens.given}) == len(tokens.given)
    lives = []
    for _, token in tokens.given:
        status, body = validate_even_expired(cloud, token)
        assert status == 200, body
        lives.append((_seconds(body["issued_at"]), _seconds(body["expires_at"])))
        assert lives[-1][1] - lives[-1][0] == pytest.approx(TOKEN_LIFE, abs=1)
    first_expiry = lives[0][1]
    assert finished > first_expiry + 10, "the run did not outlive its first token"
    for (_, previous_expiry), (handed_out, _) in zip(lives, tokens.given[1:], strict=False):
        assert handed_out < previous_expiry, "a token was replaced only after it expired"
    # And Keystone now refuses the first one: Glance could not have taken it at the end.
    assert cloud.validate(tokens.given[0][1])[0] == 404


def validate_even_expired(cloud: Any, token: str) -> tuple[int, Any]:
    """Keystone's record of a token, expired or not (``allow_expired``, an admin call)."""
    answer = requests.get(
        f"{cloud.keystone_url}/auth/tokens?allow_expired=1",
        headers={"X-Auth-Token": cloud.admin_token(), "X-Subject-Token": token},
        timeout=30,
    )
    return answer.status_code, answer.json()["token"] if answer.ok else answer.text
