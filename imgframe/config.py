"""Configuration of a fetch or a listing: small frozen value objects, validated once.

:class:`Timeout` and :class:`RetryPolicy` are the per-request limits; :class:`FetchOptions`
holds every option a public function (:func:`imgframe.fetch_images`,
:func:`imgframe.fetch_fleet`, :func:`imgframe.list_image_ids`, their async forms) and
the ``imgframe`` command take besides the ids and the credentials. Each of them builds
one ``FetchOptions`` with :meth:`FetchOptions.build` (the loose forms users type:
``timeout=5``, ``retries=3``) and passes that one object down, so every option is
checked here, once, and a wrong one is a :class:`~imgframe.ConfigError` of one line
before anything is sent.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field
from typing import Literal

from imgframe.errors import ConfigError

__all__ = ["APIS", "FetchOptions", "RetryPolicy", "Timeout"]

#: The Glance APIs a fetch can use ("auto": v1, switching to v2 at the first 300).
APIS = ("v1", "v2", "auto")
DEFAULT_CONCURRENCY = 32
#: The connect timeout when only ``total`` is given (and ``total`` is longer).
DEFAULT_CONNECT = 10.0
#: Listing pages: the ``limit`` asked for, and how many pages a listing may take.
DEFAULT_PAGE_SIZE = 1000
DEFAULT_MAX_PAGES = 100_000
MAX_CONCURRENCY = 10_000


@dataclass(frozen=True, slots=True)
class Timeout:
    """Per-request time limits in seconds.

    ``total`` covers one attempt from asking for a connection to the end of the answer
    (enforced to within ``total / 10``, at most 1 s, by one watchdog for all workers);
    ``connect`` limits opening a new TCP (and TLS) connection.

    ``connect`` not given is ``min(total, 10)``: a connection may never take longer
    than the whole attempt, so ``Timeout(total=5)`` and ``timeout=5`` are the same.

    Examples
    --------
    >>> Timeout(total=10)
    Timeout(total=10, connect=10.0)
    >>> Timeout(total=5)
    Timeout(total=5, connect=5.0)
    """

    total: float = 30.0
    connect: float = None  # type: ignore[assignment]  # None: min(total, 10), set below

    def __post_init__(self) -> None:
        if self.connect is None and isinstance(self.total, int | float):
            object.__setattr__(self, "connect", min(float(self.total), DEFAULT_CONNECT))
        if not (
            isinstance(self.total, int | float)
            and isinstance(self.connect, int | float)
            and self.total > 0
            and self.connect > 0
        ):
            raise ConfigError(f"timeouts must be positive seconds, got {self!r}")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How transient failures (429, 5xx, timeouts, dropped connections) are retried.

    ``attempts`` counts the first try. The wait before try ``n+1`` is ``Retry-After``
    when the server sent one (capped at ``max_retry_after``), else
    ``backoff * 2**(n-1)`` capped at ``max_backoff``, times a random factor in
    [0.5, 1] so that many workers do not retry in lock-step.

    Examples
    --------
    >>> RetryPolicy(attempts=3).delay(1, retry_after=None) <= 0.2
    True
    >>> RetryPolicy().delay(2, retry_after=5.0)
    5.0
    """

    attempts: int = 4
    backoff: float = 0.2
    max_backoff: float = 20.0
    max_retry_after: float = 60.0
    statuses: frozenset[int] = field(default=frozenset({429, 500, 502, 503, 504}))

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or self.attempts < 1:
            raise ConfigError(f"attempts must be an integer >= 1, got {self.attempts!r}")
        for value in (self.backoff, self.max_backoff, self.max_retry_after):
            if not (isinstance(value, int | float) and 0 <= value < math.inf):
                raise ConfigError(f"backoff times must be finite seconds >= 0, got {value!r}")

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based).

        A ``retry_after`` that is not a finite number >= 0 is treated as absent.

        Examples
        --------
        >>> RetryPolicy(backoff=1.0).delay(1, retry_after=float("nan")) <= 1.0
        True
        """
        if retry_after is not None and 0.0 <= retry_after < math.inf:
            return min(retry_after, self.max_retry_after)
        wait = min(self.backoff * 2 ** (attempt - 1), self.max_backoff)
        return wait * random.uniform(0.5, 1.0)


#: The defaults of every public function (module-level: frozen, so shared safely).
DEFAULT_TIMEOUT = Timeout()
DEFAULT_RETRY = RetryPolicy()


def as_timeout(timeout: float | Timeout) -> Timeout:
    """``timeout`` as a :class:`Timeout`: seconds give ``Timeout(total=seconds)``.

    Examples
    --------
    >>> as_timeout(5)
    Timeout(total=5.0, connect=5.0)
    """
    if isinstance(timeout, Timeout):
        return timeout
    if isinstance(timeout, int | float) and not isinstance(timeout, bool):
        return Timeout(total=float(timeout))
    raise ConfigError(f"timeout must be seconds or a Timeout, got {timeout!r}")


def as_retry(retries: int | RetryPolicy) -> RetryPolicy:
    """``retries`` as a :class:`RetryPolicy`: a count of retries gives ``attempts=n+1``.

    Examples
    --------
    >>> as_retry(2).attempts
    3
    """
    if isinstance(retries, RetryPolicy):
        return retries
    if isinstance(retries, int) and not isinstance(retries, bool) and retries >= 0:
        return RetryPolicy(attempts=retries + 1)
    raise ConfigError(f"retries must be a count >= 0 or a RetryPolicy, got {retries!r}")


ApiName = Literal["v1", "v2", "auto"]


@dataclass(frozen=True, slots=True)
class FetchOptions:
    """Everything a fetch or a listing is told besides the ids and the credentials.

    Made once per call (by :meth:`build` from the public keyword arguments) and passed
    down whole; ``__post_init__`` is the one place these options are checked.
    ``checkpoint`` is the folder of :func:`imgframe.fetch_images` (a fleet target's
    own folder inside a fleet's); ``page_size`` and ``max_pages`` bound a listing.
    ``members`` also reads the members of each image that can have them
    (:mod:`imgframe.members`) into the ``members`` column.

    Examples
    --------
    >>> options = FetchOptions.build(timeout=5, retries=2, api="v2")
    >>> options.api, options.timeout, options.retries.attempts
    ('v2', Timeout(total=5.0, connect=5.0), 3)
    >>> FetchOptions(concurrency=0)
    Traceback (most recent call last):
    ...
    imgframe.errors.ConfigError: concurrency must be an integer from 1 to 10000, got 0
    """

    api: ApiName = "v1"
    concurrency: int = DEFAULT_CONCURRENCY
    timeout: Timeout = DEFAULT_TIMEOUT
    retries: RetryPolicy = DEFAULT_RETRY
    max_rps: float | None = None
    adaptive: bool = True
    verify: bool | str = True
    include_deleted: bool = False
    verify_with_head: bool = False
    progress: bool | None = None
    checkpoint: str | os.PathLike[str] | None = None
    page_size: int = DEFAULT_PAGE_SIZE
    max_pages: int = DEFAULT_MAX_PAGES
    members: bool = False

    def __post_init__(self) -> None:
        if self.api not in APIS:
            raise ConfigError(f"api must be 'v1', 'v2' or 'auto', got {self.api!r}")
        concurrency = self.concurrency
        if (
            not isinstance(concurrency, int)
            or isinstance(concurrency, bool)
            or not 1 <= concurrency <= MAX_CONCURRENCY
        ):
            raise ConfigError(
                f"concurrency must be an integer from 1 to {MAX_CONCURRENCY}, got {concurrency!r}"
            )
        if not isinstance(self.timeout, Timeout):
            raise ConfigError(f"timeout must be seconds or a Timeout, got {self.timeout!r}")
        if not isinstance(self.retries, RetryPolicy):
            raise ConfigError(
                f"retries must be a count >= 0 or a RetryPolicy, got {self.retries!r}"
            )
        max_rps = self.max_rps
        if max_rps is not None:
            if (
                isinstance(max_rps, bool)
                or not isinstance(max_rps, int | float)
                or not 0 < max_rps < math.inf
            ):
                raise ConfigError(f"max_rps must be a positive number or None, got {max_rps!r}")
            object.__setattr__(self, "max_rps", float(max_rps))
        object.__setattr__(self, "adaptive", bool(self.adaptive))
        if not isinstance(self.verify, bool | str):
            raise ConfigError("verify must be True, False or a CA bundle path")
        for name in ("include_deleted", "verify_with_head", "members"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.progress is not None and not isinstance(self.progress, bool):
            raise ConfigError(f"progress must be True, False or None, got {self.progress!r}")
        for name in ("page_size", "max_pages"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")

    @classmethod
    def build(
        cls,
        *,
        timeout: float | Timeout = DEFAULT_TIMEOUT,
        retries: int | RetryPolicy = DEFAULT_RETRY,
        api: ApiName = "v1",
        concurrency: int = DEFAULT_CONCURRENCY,
        max_rps: float | None = None,
        adaptive: bool = True,
        verify: bool | str = True,
        include_deleted: bool = False,
        verify_with_head: bool = False,
        progress: bool | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        max_pages: int = DEFAULT_MAX_PAGES,
        members: bool = False,
    ) -> FetchOptions:
        """The options from the public functions' keyword arguments, which take
        ``timeout`` as seconds and ``retries`` as a count too.

        Examples
        --------
        >>> FetchOptions.build(timeout=5).timeout == FetchOptions(timeout=Timeout(5)).timeout
        True
        """
        return cls(
            api=api,
            concurrency=concurrency,
            timeout=as_timeout(timeout),
            retries=as_retry(retries),
            max_rps=max_rps,
            adaptive=adaptive,
            verify=verify,
            include_deleted=include_deleted,
            verify_with_head=verify_with_head,
            progress=progress,
            checkpoint=checkpoint,
            page_size=page_size,
            max_pages=max_pages,
            members=members,
        )
