"""How the fetcher proves who it is: an ``X-Auth-Token``, or a signature on each request.

A token source is any object with two coroutines, :meth:`TokenSource.token` and
:meth:`TokenSource.refresh`. imgframe ships a static token (``OS_AUTH_TOKEN``), a
wrapper around any function that returns a token, and :class:`KeystoneToken`, which
logs in to Keystone through keystoneauth1 (configured by ``clouds.yaml`` with the
``openstack`` extra) and renews its token before it expires.

A request signer (:class:`RequestSigner`) is the other kind: it has no token, it signs
every request with a key it never sends. :class:`HuaweiAkSk` signs with a Huawei Cloud
access key (AK/SK, ``SDK-HMAC-SHA256``) using the signer of Huawei's own SDK (the
``huawei`` extra). A signature cannot be refreshed: a 401 means a wrong key or a clock
that is off, and retrying would not help.

No ``repr``, log line or error message here ever shows a token, a password or a secret
key.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import logging
import os
import re
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlsplit

from imgframe.errors import AuthError, ConfigError
from imgframe.glance import normalize_endpoint

if TYPE_CHECKING:
    from keystoneauth1.access import AccessInfo
    from keystoneauth1.plugin import BaseAuthPlugin
    from keystoneauth1.session import Session

__all__ = [
    "CallableToken",
    "HuaweiAkSk",
    "KeystoneToken",
    "RequestSigner",
    "StaticToken",
    "TokenArg",
    "TokenSource",
    "cloud_regions",
    "cloud_token",
    "image_endpoint",
    "service_endpoint",
    "token_source",
]

TOKEN_ENV = "OS_AUTH_TOKEN"
OPENSTACK_EXTRA = "pip install 'imgframe[openstack]'"
HUAWEI_EXTRA = "pip install 'imgframe[huawei]'"

log = logging.getLogger(__name__)


@runtime_checkable
class TokenSource(Protocol):
    """Gives the fetcher a token, and a fresh one when the server rejects the current."""

    async def token(self) -> str:
        """The token to send now."""
        ...

    async def refresh(self, rejected: str) -> str | None:
        """A new token after ``rejected`` got a 401, or None when no new one can be had."""
        ...


@runtime_checkable
class RequestSigner(Protocol):
    """Signs each request itself, for credentials that are a key rather than a token.

    :meth:`sign` is called once per request (each retry too) and is synchronous on
    purpose: signing is pure CPU (an HMAC, some microseconds) with no I/O, so it runs on
    the event loop without a thread. A server that rejects a signature (401) stops the
    run's sending, as for a token that cannot be refreshed.
    """

    def sign(self, method: str, url: str, headers: Mapping[str, str]) -> dict[str, str]:
        """All headers to send with ``method url``: ``headers`` plus the signature's.

        ``url`` is exactly what goes on the wire: scheme, host[:port], the path as
        percent-encoded, and the query string.
        """
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


# --- Keystone -----------------------------------------------------------------------------

# Attribute names in keystoneauth plugins (and clouds.yaml ``auth`` keys) that hold secrets.
_SECRET_NAME = re.compile(r"password|secret|token|passcode|totp", re.IGNORECASE)


def _secret_values(sources: Iterable[object]) -> frozenset[str]:
    """Every non-trivial string held under a secret-looking name in these objects/dicts."""
    found: set[str] = set()
    pending = list(sources)
    seen: set[int] = set()
    while pending:
        obj = pending.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        items = obj.items() if isinstance(obj, dict) else getattr(obj, "__dict__", {}).items()
        for name, value in items:
            if isinstance(value, str):
                if _SECRET_NAME.search(str(name)) and len(value) >= 4:
                    found.add(value)
            elif isinstance(value, dict):
                pending.append(value)
            elif name in ("auth_methods", "_plugin"):  # keystoneauth's nested plugins
                pending.extend(value if isinstance(value, list | tuple) else [value])
    return frozenset(found)


class _Login:
    """One Keystone login: the token, its catalog, when to renew it, and how often it was got."""

    __slots__ = ("access", "count", "lock", "renew_at", "token")

    def __init__(self) -> None:
        # A thread lock, not asyncio.Lock: the login may serve several event loops.
        self.lock = threading.RLock()
        self.token: str | None = None
        self.access: AccessInfo | None = None
        self.renew_at = 0.0  # time.time() after which token() asks keystoneauth again
        self.count = 0


class KeystoneToken:
    """A Keystone token from a keystoneauth1 plugin, renewed before expiry and after a 401.

    Build it from a keystoneauth1 auth plugin (and/or a ``keystoneauth1.session.Session``
    carrying TLS settings), or from ``clouds.yaml`` with :meth:`from_cloud`.
    :meth:`token` is cheap: it returns the cached token and asks Keystone again only
    when less than ``refresh_before`` seconds of its life are left (or half of it, for
    short-lived tokens). :meth:`refresh` (what the fetcher calls after a 401) drops the
    cached token and logs in again. :meth:`endpoint` is the ``image`` endpoint from the
    service catalog for ``region`` and ``interface``, unless ``endpoint=`` is given.
    Every keystoneauth call is blocking and runs in a thread, never on the event loop;
    the object can be shared by several runs, in several event loops. Secrets found in
    the plugin (passwords, application credential secrets, tokens), plus any given in
    ``secrets``, are masked in its repr and error messages; ``logins`` counts tokens got.

    Examples
    --------
    >>> from keystoneauth1.identity import v3
    >>> auth = v3.Password(
    ...     auth_url="https://keystone.example.com/v3", username="alice", password="s3cr3t",
    ...     user_domain_name="Default", project_name="demo", project_domain_name="Default",
    ... )
    >>> KeystoneToken(auth, region="RegionOne")
    KeystoneToken(auth='Password', auth_url='https://keystone.example.com/v3', region='RegionOne', interface='public')
    """  # noqa: E501

    def __init__(
        self,
        auth: BaseAuthPlugin | None = None,
        *,
        session: Session | None = None,
        region: str | None = None,
        interface: str = "public",
        endpoint: str | None = None,
        refresh_before: float = 120.0,
        cloud: str | None = None,
        secrets: Iterable[str] = (),
    ) -> None:
        try:
            from keystoneauth1 import session as ks_session
        except ImportError:  # pragma: no cover - depends on the installed extras
            raise ConfigError(f"KeystoneToken needs keystoneauth1: {OPENSTACK_EXTRA}") from None
        if auth is None and session is not None:
            auth = session.auth
        if auth is None:
            raise ConfigError("KeystoneToken needs a keystoneauth1 auth plugin or a session")
        if session is None:
            session = ks_session.Session(auth=auth)
        if not refresh_before >= 0:
            raise ConfigError(f"refresh_before must be >= 0 seconds, got {refresh_before!r}")
        if not isinstance(interface, str) or not interface:
            raise ConfigError("interface must be a non-empty string such as 'public'")
        self._auth = auth
        self._session = session
        self.region = region
        self.interface = interface
        self.cloud = cloud
        self.refresh_before = float(refresh_before)
        #: The image endpoint given (``endpoint=``, clouds.yaml ``image_endpoint_override``),
        #: or None when it comes from the service catalog.
        self.endpoint_override = endpoint
        self._catalog_url: str | None = None  # the catalog's answer, once asked
        self._service_urls: dict[tuple[str, ...], str] = {}  # service_endpoint's answers
        self._secrets = _secret_values([auth]) | {s for s in secrets if s and len(s) >= 4}
        # The login (token, catalog, renewal time) is its own object so that the
        # KeystoneTokens of several regions (for_region) share one login.
        self._shared = _Login()

    @classmethod
    def from_cloud(
        cls,
        cloud: str | None = None,
        *,
        region: str | None = None,
        interface: str | None = None,
        endpoint: str | None = None,
        refresh_before: float = 120.0,
    ) -> KeystoneToken:
        """Configure from ``clouds.yaml`` / ``OS_CLOUD`` / ``OS_*`` via openstacksdk's loader.

        ``cloud`` None means ``OS_CLOUD`` (or the ``OS_*`` variables alone). ``region``
        and ``interface`` default to the cloud's ``region_name`` and ``interface``
        (else ``public``); ``image_endpoint_override`` in clouds.yaml is honoured. Needs
        the ``openstack`` extra. Nothing is sent to Keystone until the first token.

        Examples
        --------
        >>> KeystoneToken.from_cloud("no-such-cloud")
        Traceback (most recent call last):
        imgframe.errors.ConfigError: cloud 'no-such-cloud': Cloud no-such-cloud was not found.
        """
        where = f"cloud {cloud!r}" if cloud else "the OS_CLOUD / OS_* configuration"
        config = _openstack_config(where)
        import openstack.exceptions

        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Support for InfluxDB")
                region_cfg = config.get_one(cloud=cloud, region_name=region)
            auth = region_cfg.get_auth()
            session = region_cfg.get_session()
            secrets = _secret_values([region_cfg.config.get("auth") or {}])
            chosen_interface = interface or region_cfg.get_interface("image") or "public"
            if isinstance(chosen_interface, list):
                chosen_interface = next((i for i in chosen_interface if i), "public")
            override = endpoint or region_cfg.get_endpoint("image")
            chosen_region = region or region_cfg.get_region_name("image") or None
            name = cloud or region_cfg.name
        except openstack.exceptions.ConfigException as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if auth is None:
            raise ConfigError(f"{where}: no auth settings (auth_type / auth)")
        return cls(
            auth,
            session=session,
            region=chosen_region,
            interface=chosen_interface,
            endpoint=override,
            refresh_before=refresh_before,
            cloud=name,
            secrets=secrets,
        )

    # -- TokenSource --

    async def token(self) -> str:
        """The current token; asks Keystone (in a thread) only when it nears expiry."""
        token = self._shared.token
        if token is not None and time.time() < self._shared.renew_at:
            return token
        return await asyncio.to_thread(self._renew, None)

    async def refresh(self, rejected: str) -> str | None:
        """Log in again after ``rejected`` got a 401; None when Keystone gives no new token."""
        try:
            fresh = await asyncio.to_thread(self._renew, rejected)
        except AuthError as exc:
            log.warning("%s", exc)
            return None
        return None if fresh == rejected else fresh

    async def endpoint(self) -> str:
        """The image service URL: ``endpoint=`` if given, else from the service catalog.

        A trailing API version (``/v2``) is removed: the fetcher adds ``/v1`` itself.
        """
        if self.endpoint_override is not None:
            return self.endpoint_override
        if self._catalog_url is None:
            self._catalog_url = await asyncio.to_thread(self._catalog_endpoint)
        return self._catalog_url

    @property
    def logins(self) -> int:
        """How many tokens were got from keystoneauth (shared by :meth:`for_region` copies)."""
        return self._shared.count

    def for_region(self, region: str | None, *, endpoint: str | None = None) -> KeystoneToken:
        """The same login (one token, one renewal) for another region's image endpoint.

        Examples
        --------
        >>> from keystoneauth1.identity import v3
        >>> kt = KeystoneToken(v3.Token(auth_url="https://keystone.example.com/v3", token="t"))
        >>> kt.for_region("RegionTwo")._shared is kt._shared
        True
        """
        twin = copy.copy(self)
        twin.region = region
        twin.endpoint_override = endpoint
        twin._catalog_url = None
        twin._service_urls = {}
        return twin

    async def catalog_regions(self) -> list[str]:
        """The regions with an ``image`` endpoint of this interface in the service catalog
        (logs in first if needed), in catalog order.

        Examples
        --------
        >>> from keystoneauth1.identity import v3
        >>> kt = KeystoneToken(v3.Token(auth_url="http://127.0.0.1:9/v3", token="t"))
        >>> asyncio.run(kt.catalog_regions())
        Traceback (most recent call last):
        imgframe.errors.AuthError: Keystone login failed: ConnectFailure: ...
        """
        return await asyncio.to_thread(self._catalog_regions)

    # -- blocking keystoneauth calls, always run in a worker thread --

    def _catalog_access(self) -> AccessInfo | None:
        """The login's AccessInfo (its service catalog), logging in first if needed; None
        for a plugin without a catalog of its own."""
        with self._shared.lock:
            if self._shared.token is None:
                self._renew(None)  # the catalog comes with the first token
            return self._shared.access

    def _catalog_error(self, exc: Exception) -> AuthError:
        return AuthError(self._scrub(f"could not read the service catalog: {_describe(exc)}"))

    def _catalog_regions(self) -> list[str]:
        access = self._catalog_access()
        if access is None:
            return []
        try:
            found = access.service_catalog.get_endpoints_data(
                service_type="image", interface=self.interface
            )
        except Exception as exc:
            raise self._catalog_error(exc) from None
        regions = [e.region_name for group in found.values() for e in group if e.region_name]
        return list(dict.fromkeys(regions))

    def _renew(self, rejected: str | None) -> str:
        with self._shared.lock:
            now = time.time()
            current = self._shared.token
            if current is not None and current != rejected and now < self._shared.renew_at:
                return current  # another caller renewed it meanwhile
            try:
                if current is not None:
                    # Near expiry or rejected: keystoneauth would reuse a token it still
                    # believes valid (it renews only within MIN_TOKEN_LIFE_SECONDS).
                    self._auth.invalidate()
                token, expires = self._login()
            except AuthError:
                raise
            except Exception as exc:  # keystoneauth / requests failures, translated once here
                raise AuthError(self._scrub(f"Keystone login failed: {_describe(exc)}")) from None
            if not token:
                raise AuthError("Keystone returned no token")
            self._shared.token = token
            self._shared.renew_at = self._next_renewal(time.time(), expires)
            self._shared.count += 1
            log.debug(
                "got a Keystone token for %r (renewal in %.0f s)", self, self._shared.renew_at - now
            )
            return token

    def _login(self) -> tuple[str | None, float | None]:
        from keystoneauth1.identity.base import BaseIdentityPlugin

        if isinstance(self._auth, BaseIdentityPlugin):
            access = self._auth.get_access(self._session)
            self._shared.access = access  # the catalog that came with this token
            expires = access.expires.timestamp() if access.expires is not None else None
            return access.auth_token, expires
        return self._session.get_token(auth=self._auth), None

    def _next_renewal(self, now: float, expires: float | None) -> float:
        if expires is None:  # a plugin that does not say: ask again every few minutes
            return now + 300.0
        remaining = expires - now
        # Renew refresh_before seconds ahead, but never sooner than half the remaining
        # life (short-lived tokens) and never more than once a second.
        return now + max(1.0, remaining - self.refresh_before, remaining / 2)

    def _catalog_endpoint(self) -> str:
        # A catalog URL may end in an API version (``.../v2``): the service root is
        # wanted, as for an endpoint given by hand (imgframe adds the version it uses).
        return normalize_endpoint(self._catalog_url_for(("image",)))

    def _catalog_url_for(self, service_types: Sequence[str]) -> str:
        """The URL of the first of ``service_types`` the catalog has for this region and
        interface, as the catalog gives it; ConfigError when it has none of them."""
        where = f"region {self.region!r}" if self.region else "any region"
        access = self._catalog_access()
        for service_type in service_types:
            try:
                if access is not None:
                    url = access.service_catalog.url_for(
                        service_type=service_type, interface=self.interface,
                        region_name=self.region,
                    )  # fmt: skip
                else:  # a plugin without a catalog of its own (e.g. a fixed endpoint)
                    url = self._session.get_endpoint(
                        auth=self._auth, service_type=service_type,
                        interface=self.interface, region_name=self.region,
                    )  # fmt: skip
            except Exception as exc:
                if type(exc).__name__ != "EndpointNotFound":
                    raise self._catalog_error(exc) from None
                url = None
            if url:
                return str(url)
        names = " or ".join(f"'{t}'" for t in service_types)
        raise ConfigError(
            f"no {self.interface} {names} endpoint in the service catalog for {where}; "
            "pass endpoint=... or choose region/interface"
        )

    async def service_endpoint(self, service_types: Sequence[str]) -> str:
        """The catalog URL of the first of ``service_types`` it has (``compute``;
        ``volumev3``, ``block-storage``), for this region and interface, as the catalog
        gives it (Nova's ends in ``/v2.1``, Cinder's in ``/v3/{project_id}``: the
        service's own root, kept). Logs in first if needed.

        Examples
        --------
        >>> from keystoneauth1.identity import v3
        >>> kt = KeystoneToken(v3.Token(auth_url="http://127.0.0.1:9/v3", token="t"))
        >>> asyncio.run(kt.service_endpoint(["compute"]))
        Traceback (most recent call last):
        imgframe.errors.AuthError: Keystone login failed: ConnectFailure: ...
        """
        key = tuple(service_types)
        found = self._service_urls.get(key)
        if found is None:
            found = await asyncio.to_thread(self._catalog_url_for, key)
            self._service_urls[key] = found
        return found

    def _scrub(self, text: str) -> str:
        for secret in self._secrets | ({self._shared.token} if self._shared.token else set()):
            text = text.replace(secret, "***")
        return text

    def __repr__(self) -> str:
        parts = [f"cloud={self.cloud!r}"] if self.cloud else []
        parts.append(f"auth={type(self._auth).__name__!r}")
        auth_url = getattr(self._auth, "auth_url", None)
        if auth_url:
            parts.append(f"auth_url={re.sub(r'//[^/@]*@', '//', str(auth_url))!r}")
        parts.append(f"region={self.region!r}")
        parts.append(f"interface={self.interface!r}")
        return self._scrub(f"KeystoneToken({', '.join(parts)})")


def cloud_regions(cloud: str) -> list[str | None]:
    """The regions ``clouds.yaml`` lists for ``cloud`` (``regions:`` or ``region_name``).

    ``[None]`` when it names none (the catalog's only region is then used). Needs the
    ``openstack`` extra; an unknown cloud is a :class:`~imgframe.ConfigError`.

    Examples
    --------
    >>> cloud_regions("no-such-cloud")
    Traceback (most recent call last):
    imgframe.errors.ConfigError: cloud 'no-such-cloud': Cloud no-such-cloud was not found.
    """
    regions = [entry.get("name") or None for entry in region_entries(cloud)]
    return list(dict.fromkeys(regions)) or [None]


def region_entries(cloud: str) -> list[dict[str, Any]]:
    """``clouds.yaml``'s region entries of ``cloud``: ``{"name": ..., "values": {...}}``
    each (``values`` are settings that differ in that region)."""
    config = _openstack_config(f"cloud {cloud!r}")
    import openstack.exceptions

    if cloud not in config.get_cloud_names():
        raise ConfigError(f"cloud {cloud!r}: Cloud {cloud} was not found.")
    try:
        # openstacksdk has no public call for one cloud's regions: get_all() would load
        # (and validate) every other cloud of the file too.
        return list(config._get_regions(cloud))
    except openstack.exceptions.ConfigException as exc:
        raise ConfigError(f"cloud {cloud!r}: {exc}") from None


def _openstack_config(where: str) -> Any:
    """openstacksdk's config loader (clouds.yaml, OS_CLOUD, OS_*), or a ConfigError."""
    try:
        import openstack.config
        import openstack.exceptions
    except ImportError:
        raise ConfigError(f"reading clouds.yaml needs openstacksdk: {OPENSTACK_EXTRA}") from None
    try:
        with warnings.catch_warnings():
            # openstacksdk 4.x warns about InfluxDB on every load, configured or not.
            warnings.filterwarnings("ignore", message="Support for InfluxDB")
            return openstack.config.OpenStackConfig()
    except openstack.exceptions.ConfigException as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _describe(exc: BaseException) -> str:
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


# --- Huawei Cloud AK/SK ------------------------------------------------------------------

# The variables Huawei's SDK reads (huaweicloudsdkcore EnvCredentialProvider).
AK_ENV = "HUAWEICLOUD_SDK_AK"
SK_ENV = "HUAWEICLOUD_SDK_SK"
PROJECT_ID_ENV = "HUAWEICLOUD_SDK_PROJECT_ID"
SECURITY_TOKEN_ENV = "HUAWEICLOUD_SDK_SECURITY_TOKEN"
SDK_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _key_part(name: str, value: object) -> str:
    """``value`` checked as one part of an access key; the message never shows the value."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name} must be a non-empty string")
    if any(c in value for c in "\r\n\x00"):
        raise ConfigError(f"{name} contains a line break or NUL: not a valid header value")
    value = value.strip()
    if not (value.isascii() and value.isprintable()):
        raise ConfigError(f"{name} must be printable ASCII")
    return value


def _host_header(scheme: str, hostname: str, port: int | None) -> str:
    """The ``Host`` header aiohttp would send for this URL (default port left out)."""
    host = f"[{hostname}]" if ":" in hostname else hostname
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    return host


class _KeyPair:
    """What the SDK's signer reads its key from (``.ak``, ``.sk``); shows no secret."""

    __slots__ = ("ak", "sk")

    def __init__(self, ak: str, sk: str) -> None:
        self.ak, self.sk = ak, sk

    def __repr__(self) -> str:
        return "_KeyPair(ak=..., sk='***')"


class HuaweiAkSk:
    """Signs every request with a Huawei Cloud access key (AK/SK, ``SDK-HMAC-SHA256``).

    For users who have access keys instead of tokens; pass it as ``token=``. The
    signature is made by the signer of Huawei's own SDK core (``huaweicloudsdkcore``,
    ``pip install 'imgframe[huawei]'``), imported when the object is made. Each request
    carries ``Host``, ``X-Sdk-Date`` (this machine's UTC clock: Huawei refuses a date more
    than 15 minutes off), ``X-Project-Id`` when ``project_id`` is given (the IMS project
    the request is for) and ``X-Security-Token`` with temporary credentials, all of them
    signed, plus the ``Authorization`` header. Signing is pure CPU (tens of
    microseconds) and runs on the event loop. A 401 cannot be cured by re-signing: the
    run stops sending and the rows say why. The secret key and the security token never
    appear in its repr, a log line or an error message.

    Examples
    --------
    >>> HuaweiAkSk("HPUAEXAMPLEKEY12", "example-secret-key", project_id="0123abcd")
    HuaweiAkSk(ak='HPUA***', project_id='0123abcd')
    >>> headers = HuaweiAkSk("HPUAEXAMPLEKEY12", "example-secret-key").sign(
    ...     "HEAD", "https://ims.example.com/v1/images/3c3d1d01", {})
    >>> sorted(headers)
    ['Authorization', 'Host', 'X-Sdk-Date']
    >>> headers["Authorization"].startswith("SDK-HMAC-SHA256 Access=HPUAEXAMPLEKEY12, ")
    True
    """

    __slots__ = ("_ak", "_request", "_secrets", "_security_token", "_signer", "project_id")

    def __init__(
        self,
        ak: str,
        sk: str,
        project_id: str | None = None,
        *,
        security_token: str | None = None,
    ) -> None:
        ak = _key_part("ak", ak)
        sk = _key_part("sk", sk)
        self.project_id = None if project_id is None else _key_part("project_id", project_id)
        self._security_token = (
            None if security_token is None else _key_part("security_token", security_token)
        )
        try:
            from huaweicloudsdkcore.sdk_request import SdkRequest
            from huaweicloudsdkcore.signer.signer import Signer
        except ImportError:
            raise ConfigError(
                f"HuaweiAkSk needs Huawei's SDK core (huaweicloudsdkcore): {HUAWEI_EXTRA}"
            ) from None
        self._ak = ak
        self._signer = Signer(_KeyPair(ak, sk))
        self._request = SdkRequest
        self._secrets = tuple(s for s in (sk, self._security_token) if s)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> HuaweiAkSk:
        """Read the key from the variables Huawei's SDK uses (``os.environ`` by default).

        ``HUAWEICLOUD_SDK_AK`` and ``HUAWEICLOUD_SDK_SK`` are required,
        ``HUAWEICLOUD_SDK_PROJECT_ID`` and ``HUAWEICLOUD_SDK_SECURITY_TOKEN`` optional.

        Examples
        --------
        >>> HuaweiAkSk.from_env({"HUAWEICLOUD_SDK_AK": "HPUAEXAMPLEKEY12"})
        Traceback (most recent call last):
        imgframe.errors.ConfigError: no Huawei Cloud access key: set HUAWEICLOUD_SDK_SK
        """
        env = os.environ if environ is None else environ
        missing = [name for name in (AK_ENV, SK_ENV) if not env.get(name, "").strip()]
        if missing:
            raise ConfigError(f"no Huawei Cloud access key: set {' and '.join(missing)}")
        project_id = env.get(PROJECT_ID_ENV, "").strip() or None
        security_token = env.get(SECURITY_TOKEN_ENV, "").strip() or None
        # Checked here under the variables' names, so a message says which one is wrong.
        return cls(
            _key_part(AK_ENV, env[AK_ENV]),
            _key_part(SK_ENV, env[SK_ENV]),
            None if project_id is None else _key_part(PROJECT_ID_ENV, project_id),
            security_token=(
                None if security_token is None else _key_part(SECURITY_TOKEN_ENV, security_token)
            ),
        )

    def sign(self, method: str, url: str, headers: Mapping[str, str]) -> dict[str, str]:
        """``headers`` plus ``Host``, ``X-Sdk-Date``, the project and token headers, and
        ``Authorization``, for ``method url`` with no body.

        An ``X-Sdk-Date`` already in ``headers`` is kept (and signed) as it is.
        """
        parts = urlsplit(url)
        params = dict(headers) if headers else {}
        params["Host"] = _host_header(parts.scheme, parts.hostname or "", parts.port)
        if not headers or not any(name.lower() == "x-sdk-date" for name in headers):
            params["X-Sdk-Date"] = time.strftime(SDK_DATE_FORMAT, time.gmtime())
        if self.project_id is not None:
            params["X-Project-Id"] = self.project_id
        if self._security_token is not None:
            params["X-Security-Token"] = self._security_token
        request = self._request(
            method=method.upper(),
            schema=parts.scheme,
            host=params["Host"],
            resource_path=parts.path or "/",
            query_params=parse_qsl(parts.query, keep_blank_values=True) if parts.query else [],
            header_params=params,
            body=None,
        )
        try:
            self._signer.sign(request)
        except Exception as exc:  # the SDK's own failures, translated once here
            raise AuthError(self._scrub(f"could not sign the request: {_describe(exc)}")) from None
        signed: dict[str, str] = request.header_params
        return signed

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def __repr__(self) -> str:
        parts = [f"ak={self._ak[:4] + '***'!r}"]
        if self.project_id is not None:
            parts.append(f"project_id={self.project_id!r}")
        if self._security_token is not None:
            parts.append("security_token='***'")
        return f"HuaweiAkSk({', '.join(parts)})"


TokenArg = (
    str | TokenSource | RequestSigner | Callable[[], str] | Callable[[], Awaitable[str]] | None
)


def token_source(token: TokenArg) -> TokenSource | RequestSigner:
    """Turn what a user passed as ``token=`` into a :class:`TokenSource` or a
    :class:`RequestSigner` (an object that has ``sign`` is taken as a signer).

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
    if isinstance(token, RequestSigner | TokenSource):
        return token
    if callable(token):
        return CallableToken(token)
    raise ConfigError(
        "token must be a string, a TokenSource, a RequestSigner (HuaweiAkSk) or a function, "
        f"not {type(token).__name__}"
    )


def cloud_token(token: TokenArg, cloud: str | None, region: str | None = None) -> TokenArg:
    """``token``, or for ``cloud`` (a ``clouds.yaml`` name) its
    :meth:`~imgframe.auth.KeystoneToken.from_cloud` token: the ``cloud=`` shorthand.

    ``cloud`` with ``token`` is refused (which one should win?); ``region`` needs
    ``cloud``. An ``endpoint=`` given with ``cloud=`` is used instead of the catalog's.

    Examples
    --------
    >>> cloud_token("t", None)
    't'
    >>> cloud_token("t", "prod")
    Traceback (most recent call last):
    ...
    imgframe.errors.ConfigError: give cloud= or token=, not both: cloud='prod' logs in ...
    """
    if cloud is None:
        if region is not None:
            raise ConfigError(
                f"region={region!r} needs cloud=: a region picks an endpoint from a "
                "clouds.yaml cloud's catalog"
            )
        return token
    if not isinstance(cloud, str) or not cloud:
        raise ConfigError(f"cloud must be a clouds.yaml cloud name, got {cloud!r}")
    if region is not None and (not isinstance(region, str) or not region):
        raise ConfigError(f"region must be a region name or None, got {region!r}")
    if token is not None:
        raise ConfigError(
            f"give cloud= or token=, not both: cloud={cloud!r} logs in with its "
            "clouds.yaml credentials"
        )
    return KeystoneToken.from_cloud(cloud, region=region)


async def image_endpoint(source: TokenSource | RequestSigner, endpoint: str | None) -> str:
    """``endpoint`` if given, else the image endpoint of ``source``'s service catalog.

    Only a :class:`KeystoneToken` (what ``cloud=`` makes) has a catalog to look in; for
    any other source a missing endpoint is a :class:`~imgframe.ConfigError`.

    Examples
    --------
    >>> asyncio.run(image_endpoint(StaticToken("t"), "https://glance.example.com"))
    'https://glance.example.com'
    >>> asyncio.run(image_endpoint(StaticToken("t"), None))
    Traceback (most recent call last):
    ...
    imgframe.errors.ConfigError: endpoint is required: the Glance/IMS URL (only a KeystoneToken...)
    """
    if endpoint is not None:
        return endpoint
    find = getattr(source, "endpoint", None)
    if not callable(find):
        raise ConfigError(
            "endpoint is required: the Glance/IMS URL (only a KeystoneToken, or cloud=, "
            "can find it in its service catalog)"
        )
    found: str = await find()
    return found


async def service_endpoint(
    source: TokenSource | RequestSigner, endpoint: str | None, service_types: Sequence[str]
) -> str:
    """``endpoint`` if given, else the URL of the first of ``service_types`` in
    ``source``'s service catalog (:meth:`KeystoneToken.service_endpoint`): what
    :func:`image_endpoint` does for the image service, for the others (``compute``,
    ``volumev3``). A trailing ``/`` is dropped; the path is kept.

    Examples
    --------
    >>> nova = "https://nova.example.com/v2.1/"
    >>> asyncio.run(service_endpoint(StaticToken("t"), nova, ["compute"]))
    'https://nova.example.com/v2.1'
    >>> asyncio.run(service_endpoint(StaticToken("t"), None, ["compute"]))
    Traceback (most recent call last):
    ...
    imgframe.errors.ConfigError: endpoint is required: the 'compute' URL (only a KeystoneToken...)
    """
    if endpoint is None:
        find = getattr(source, "service_endpoint", None)
        if not callable(find):
            names = " or ".join(f"'{t}'" for t in service_types)
            raise ConfigError(
                f"endpoint is required: the {names} URL (only a KeystoneToken, or cloud=, "
                "can find it in its service catalog)"
            )
        endpoint = await find(service_types)
    if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"endpoint must be an http(s) URL, got {endpoint!r}")
    return endpoint.rstrip("/")
