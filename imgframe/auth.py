"""Where the fetcher gets its ``X-Auth-Token`` from, and a fresh one after a 401.

A token source is any object with two coroutines, :meth:`TokenSource.token` and
:meth:`TokenSource.refresh`. imgframe ships a static token (``OS_AUTH_TOKEN``) and a
wrapper around any function that returns a token (e.g. one that asks Keystone).
No ``repr`` here ever shows a token.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from imgframe.errors import AuthError, ConfigError

__all__ = ["CallableToken", "StaticToken", "TokenSource", "token_source"]

TOKEN_ENV = "OS_AUTH_TOKEN"


@runtime_checkable
class TokenSource(Protocol):
    """Gives the fetcher a token, and a fresh one when the server rejects the current."""

    async def token(self) -> str:
        """The token to send now."""
        ...

    async def refresh(self, rejected: str) -> str | None:
        """A new token after ``rejected`` got a 401, or None when no new one can be had."""
        ...


class StaticToken:
    """A fixed token (what ``OS_AUTH_TOKEN`` holds); it cannot be refreshed.

    Examples
    --------
    >>> StaticToken("s3cr3t")
    StaticToken(token='***')
    """

    __slots__ = ("_token",)

    def __init__(self, token: str) -> None:
        if not isinstance(token, str) or not token.strip():
            raise ConfigError("the token must be a non-empty string")
        if any(c in token for c in "\r\n\x00"):
            raise ConfigError("the token contains a line break or NUL: not a valid header value")
        self._token = token.strip()

    async def token(self) -> str:
        return self._token

    async def refresh(self, rejected: str) -> str | None:
        return None

    def __repr__(self) -> str:
        return "StaticToken(token='***')"


class CallableToken:
    """Calls ``get_token()`` (plain or async) for the first token and after every 401.

    A blocking function (a Keystone request, say) runs in a thread so it never blocks
    the event loop.

    Examples
    --------
    >>> CallableToken(lambda: "t")
    CallableToken(<lambda>)
    """

    __slots__ = ("_get", "_last")

    def __init__(self, get_token: Callable[[], str] | Callable[[], Awaitable[str]]) -> None:
        if not callable(get_token):
            raise ConfigError("get_token must be callable")
        self._get = get_token
        self._last: str | None = None

    async def _call(self) -> str:
        if inspect.iscoroutinefunction(self._get):
            value = await self._get()
        else:
            value = await asyncio.to_thread(self._get)
            if inspect.isawaitable(value):
                value = await value
        if not isinstance(value, str) or not value:
            raise AuthError("the token function returned no token")
        self._last = value
        return value

    async def token(self) -> str:
        return self._last if self._last is not None else await self._call()

    async def refresh(self, rejected: str) -> str | None:
        fresh = await self._call()
        return None if fresh == rejected else fresh

    def __repr__(self) -> str:
        return f"CallableToken({getattr(self._get, '__qualname__', type(self._get).__name__)})"


def token_source(
    token: str | TokenSource | Callable[[], str] | Callable[[], Awaitable[str]] | None,
) -> TokenSource:
    """Turn what a user passed as ``token=`` into a :class:`TokenSource`.

    ``None`` reads ``OS_AUTH_TOKEN`` from the environment.

    Examples
    --------
    >>> token_source("abc")
    StaticToken(token='***')
    """
    if token is None:
        env = os.environ.get(TOKEN_ENV, "")
        if not env.strip():
            raise ConfigError(f"no token: pass token=... or set {TOKEN_ENV}")
        return StaticToken(env)
    if isinstance(token, str):
        return StaticToken(token)
    if isinstance(token, TokenSource):
        return token
    if callable(token):
        return CallableToken(token)
    raise ConfigError(
        f"token must be a string, a TokenSource or a function, not {type(token).__name__}"
    )
