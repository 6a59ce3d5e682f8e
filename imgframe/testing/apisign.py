"""An independent verifier of Huawei Cloud AK/SK request signatures (``SDK-HMAC-SHA256``).

Written from Huawei's published "API request signing" algorithm, not from its SDK (the
emulator must not share code with the client whose signatures it checks)::

    CanonicalRequest = Method \\n CanonicalURI \\n CanonicalQueryString \\n
                       CanonicalHeaders \\n SignedHeaders \\n HexEncode(SHA256(body))
    CanonicalURI     = each path segment URI-encoded (RFC 3986), ending with "/"
    CanonicalQuery   = name=value pairs URI-encoded, sorted, joined by "&"
    CanonicalHeaders = "lowercase-name:trimmed value\\n" for each signed header, sorted
    StringToSign     = "SDK-HMAC-SHA256" \\n X-Sdk-Date \\n HexEncode(SHA256(CanonicalRequest))
    Signature        = HexEncode(HMAC-SHA256(SK, StringToSign))
    Authorization: SDK-HMAC-SHA256 Access=AK, SignedHeaders=a;b, Signature=hex

URI encoding keeps only the unreserved ``A-Z a-z 0-9 - _ . ~`` and writes every other
byte as ``%XY`` (upper-case hex). ``X-Sdk-Date`` is ``YYYYMMDDTHHMMSSZ`` (UTC) and must
be signed; a date more than 15 minutes from the server's clock is refused.

Examples
--------
>>> keys = {"AK1": AccessKey("sk-1", "p1")}
>>> headers = {"Host": "127.0.0.1:1", "X-Sdk-Date": "20240101T000000Z", "X-Project-Id": "p1"}
>>> names = ["host", "x-project-id", "x-sdk-date"]
>>> canonical = canonical_request("HEAD", "/v1/images/x", [], headers, names, b"")
>>> signed = signature("sk-1", string_to_sign("20240101T000000Z", canonical))
>>> headers["Authorization"] = authorization("AK1", names, signed)
>>> when = calendar.timegm((2024, 1, 1, 0, 5, 0))
>>> verify("HEAD", "/v1/images/x", [], headers, b"", keys, now=when)
(AccessKey(project_id='p1', admin=False), '')
>>> verify("HEAD", "/v1/images/y", [], headers, b"", keys, now=when)
(None, 'the signature does not match')
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

__all__ = [
    "ALGORITHM",
    "MAX_SKEW_SECONDS",
    "AccessKey",
    "authorization",
    "canonical_request",
    "signature",
    "string_to_sign",
    "verify",
]

ALGORITHM = "SDK-HMAC-SHA256"
DATE_FORMAT = "%Y%m%dT%H%M%SZ"
MAX_SKEW_SECONDS = 15 * 60
_EMPTY_BODY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class AccessKey:
    """What the emulator knows about an access key: its secret, project and role.

    A request signed with it acts for ``project_id`` (it must carry that id in a signed
    ``X-Project-Id`` header) and sees what a token of that project sees; ``admin`` keys
    see everything, as ``ADMIN_TOKEN`` does. Temporary keys (``security_token`` set)
    must also send that token, signed, in ``X-Security-Token``. The repr shows no secret.

    Examples
    --------
    >>> AccessKey("s3cr3t", "p1", admin=True)
    AccessKey(project_id='p1', admin=True)
    """

    secret: str = field(repr=False)
    project_id: str
    admin: bool = False
    security_token: str | None = field(default=None, repr=False)


def _encode(text: str) -> str:
    # quote() always leaves A-Z a-z 0-9 _ . - ~ alone; safe="" makes it encode "/" too.
    return quote(text, safe="")


def canonical_uri(path: str) -> str:
    """The path as signed: each segment decoded then URI-encoded, with a trailing ``/``.

    Examples
    --------
    >>> canonical_uri("/v1/images/a%20b")
    '/v1/images/a%20b/'
    """
    uri = "/".join(_encode(unquote(segment)) for segment in path.split("/"))
    return uri if uri.endswith("/") else uri + "/"


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    """Decoded ``(name, value)`` pairs, URI-encoded, sorted, joined by ``&``.

    Examples
    --------
    >>> canonical_query([("limit", "2"), ("is_public", "None"), ("a b", "")])
    'a%20b=&is_public=None&limit=2'
    """
    return "&".join(f"{_encode(k)}={_encode(v)}" for k, v in sorted(pairs))


def canonical_request(
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    signed_headers: Sequence[str],
    body: bytes,
) -> str:
    """The canonical request for a request with these parts (``headers`` looked up by
    lower-case name, as a case-insensitive mapping or a plain dict)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    lines = "".join(f"{name}:{lowered[name].strip()}\n" for name in signed_headers)
    payload = hashlib.sha256(body).hexdigest() if body else _EMPTY_BODY_SHA256
    return "\n".join(
        [
            method.upper(),
            canonical_uri(path),
            canonical_query(query),
            lines,
            ";".join(signed_headers),
            payload,
        ]
    )


def string_to_sign(date: str, canonical: str) -> str:
    """``SDK-HMAC-SHA256``, the ``X-Sdk-Date`` value and the canonical request's hash."""
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{date}\n{digest}"


def signature(secret: str, to_sign: str) -> str:
    """Hex HMAC-SHA256 of the string to sign, keyed with the secret key."""
    return hmac.new(secret.encode("utf-8"), to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def authorization(access: str, signed_headers: Sequence[str], signed: str) -> str:
    """The ``Authorization`` header value."""
    names = ";".join(signed_headers)
    return f"{ALGORITHM} Access={access}, SignedHeaders={names}, Signature={signed}"


def _parse_authorization(value: str) -> tuple[str, list[str], str] | None:
    algorithm, _, rest = value.partition(" ")
    if algorithm != ALGORITHM:
        return None
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, item = part.strip().partition("=")
        if not sep:
            return None
        fields[name] = item
    try:
        return fields["Access"], fields["SignedHeaders"].split(";"), fields["Signature"]
    except KeyError:
        return None


def access_key_of(value: str | None) -> str | None:
    """The ``Access=`` part of an ``SDK-HMAC-SHA256`` Authorization header, if any."""
    parsed = _parse_authorization(value) if value else None
    return parsed[0] if parsed else None


def verify(
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    body: bytes,
    keys: Mapping[str, AccessKey],
    *,
    now: float | None = None,
) -> tuple[AccessKey | None, str]:
    """``(key, "")`` for a request validly signed with one of ``keys``, else ``(None, why)``.

    ``path`` is the path as received (still percent-encoded), ``query`` the decoded pairs.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    parsed = _parse_authorization(lowered.get("authorization", ""))
    if parsed is None:
        return None, f"no {ALGORITHM} Authorization header"
    access, signed_headers, claimed = parsed
    key = keys.get(access)
    if key is None:
        return None, "unknown access key"
    if signed_headers != sorted(signed_headers) or any(
        name != name.lower() for name in signed_headers
    ):
        return None, "SignedHeaders must be lower-case names in sorted order"
    if "x-sdk-date" not in signed_headers:
        return None, "X-Sdk-Date is not signed"
    missing = [name for name in signed_headers if name not in lowered]
    if missing:
        return None, f"signed header {missing[0]} is not in the request"
    date = lowered["x-sdk-date"]
    try:
        when = calendar.timegm(time.strptime(date, DATE_FORMAT))
    except ValueError:
        return None, "X-Sdk-Date is not YYYYMMDDTHHMMSSZ"
    if abs((time.time() if now is None else now) - when) > MAX_SKEW_SECONDS:
        return None, "X-Sdk-Date is more than 15 minutes off"
    canonical = canonical_request(method, path, query, lowered, signed_headers, body)
    expected = signature(key.secret, string_to_sign(date, canonical))
    if not hmac.compare_digest(expected, claimed):
        return None, "the signature does not match"
    if lowered.get("x-project-id") != key.project_id or "x-project-id" not in signed_headers:
        return None, "X-Project-Id is missing, unsigned or not this key's project"
    token = lowered.get("x-security-token")
    if token is not None and "x-security-token" not in signed_headers:
        return None, "X-Security-Token is not signed"
    if token != key.security_token:
        return None, "X-Security-Token does not belong to this access key"
    return key, ""
