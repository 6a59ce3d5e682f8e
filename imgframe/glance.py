"""What differs between the Glance APIs: one object per version.

Glance v1 (and Huawei IMS) answers ``HEAD {endpoint}/v1/images/{id}`` with the image's
metadata as ``X-Image-Meta-*`` headers; Glance v2 answers ``GET
{endpoint}/v2/images/{id}`` with a JSON document, which :func:`imgframe.parse.v2_header_pairs`
turns into the header pairs v1 would have sent (docs/ARCHITECTURE.md, "The wire"), so
one parser reads both. :data:`V1` and :data:`V2` (a :class:`GlanceApi` each) say how
to ask for one image (method, URL), how to read its answer into header pairs (or why
the answer lies: :class:`LyingAnswer`), where the listing is and how to read one of its
pages. :func:`normalize_endpoint` is the one place an endpoint is cleaned (a trailing
``/v1``, ``/v2.1`` is dropped: imgframe adds the version it uses), and
:func:`after_300` the one place where ``api="auto"`` switches from v1 to v2.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlencode, urlsplit

import orjson
from multidict import istr

from imgframe.errors import ConfigError, FetchError, NoV1ApiError
from imgframe.parse import v1_detail_packed, v2_header_pairs, v2_packed

__all__ = [
    "V1",
    "V2",
    "GlanceApi",
    "GlanceV1",
    "GlanceV2",
    "LyingAnswer",
    "Page",
    "after_300",
    "glance_api",
    "normalize_endpoint",
    "parse_page",
    "same_image_id",
]

#: Undecoded header name of the request id Glance sends with every answer.
REQUEST_ID = b"x-openstack-request-id"
# Pre-folded for multidict: a lookup per answer without lower-casing the name each time.
_META_ID = istr("X-Image-Meta-Id")

# The ``error`` sentences of answers that lie (a 200 that is not the requested image's
# metadata): fixed, never the server's text.
WRONG_ID = "bad response: the answer is for another image (X-Image-Meta-Id differs)"
CONFLICTING_IDS = "bad response: conflicting X-Image-Meta-Id headers"
NO_METADATA = "bad response: a 200 answer without image metadata"
NO_ID = "bad response: a 200 answer without X-Image-Meta-Id"
V2_WRONG_ID = "bad response: the v2 image document is for another image"
V2_NO_ID = "bad response: the v2 image document has no id"
V2_NOT_JSON = "bad response: the v2 image document is not JSON"
V2_NOT_OBJECT = "bad response: the v2 image document is not a JSON object"


def normalize_endpoint(endpoint: str) -> str:
    """The Glance endpoint without a trailing ``/`` or API version; checked for sanity.

    A last path segment ``v1``, ``v2`` or ``v1.0``, ``v2.1``... is the API version that
    users copy from a catalog or the vendor's docs: imgframe adds the one it uses, so
    ``.../v2`` must not become ``.../v2/v1/images/...`` (every answer a 404).

    Examples
    --------
    >>> normalize_endpoint("https://ims.example.com/v1/")
    'https://ims.example.com'
    >>> normalize_endpoint("https://glance.example.com:9292/image/v2.1")
    'https://glance.example.com:9292/image'
    """
    if not isinstance(endpoint, str) or not endpoint.strip():
        raise ConfigError("endpoint must be a URL such as https://glance.example.com:9292")
    endpoint = endpoint.strip().rstrip("/")
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"endpoint must be an http(s) URL with a host, got {endpoint!r}")
    if parts.query or parts.fragment:
        raise ConfigError(f"endpoint must not have a query or fragment: {endpoint!r}")
    if parts.username or parts.password:
        raise ConfigError("endpoint must not carry credentials; pass token=... instead")
    return _API_VERSION.sub("", endpoint)


_API_VERSION = re.compile(r"/v[12](?:\.[0-9]+)?$", re.IGNORECASE)


class LyingAnswer(Exception):
    """A 200 answer that is not the requested image's metadata; ``sentence`` is the row's
    error (one of the module's fixed sentences, never the server's text)."""

    def __init__(self, sentence: str) -> None:
        super().__init__(sentence)
        self.sentence = sentence


def same_image_id(answered: str, requested: str) -> bool:
    """Whether an answer's image id names the requested image.

    Equal, or equal ignoring ASCII case: a MySQL-backed Glance (case-insensitive
    collation) finds an image by its id in upper case and answers with the stored one.
    Non-ASCII letters are compared exactly.

    Examples
    --------
    >>> same_image_id("3c3d1d01-b48a-4639-8a88", "3C3D1D01-B48A-4639-8A88")
    True
    >>> same_image_id("3c3d1d01-b48a", "3c3d1d01-b48b")
    False
    """
    if answered == requested:
        return True
    fold = _ascii_fold
    return fold(answered) == fold(requested)


def _ascii_fold(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape").lower()  # bytes.lower(): ASCII only


def identity_problem(headers: Any, ids: list[str] | None, image_id: str) -> str | None:
    """Why a v1 200 answer is not this image's metadata, or None if it is (slow path)."""
    if ids is None:
        has_metadata = any(name.lower().startswith("x-image-meta-") for name in headers)
        return NO_ID if has_metadata else NO_METADATA
    if len({_ascii_fold(value) for value in ids}) > 1:
        return CONFLICTING_IDS
    return None if same_image_id(ids[0], image_id) else WRONG_ID


class GlanceApi:
    """How one Glance API asks for an image and a listing, and reads the answers.

    ``method`` and ``images_path`` make the request for one id (``reads_body``: the
    answer's body is the metadata); :meth:`decode` turns a 200 answer into v1 header
    pairs or raises :class:`LyingAnswer`; ``listing_path`` is the listing's
    collection, :meth:`pack_record` turns one listed record into the packed header
    pairs its own request would have answered.
    """

    name: ClassVar[str]
    method: ClassVar[str]
    images_path: ClassVar[str]
    reads_body: ClassVar[bool]
    listing_path: ClassVar[str]

    def __repr__(self) -> str:
        return f"Glance{self.name.upper()}()"

    def image_url(self, endpoint: str, segment: str) -> str:
        """The URL of one image (``segment``: the id, quoted as one path segment).

        Examples
        --------
        >>> V2.image_url(normalize_endpoint("https://glance.example.com/v2"), "abc")
        'https://glance.example.com/v2/images/abc'
        """
        return endpoint + self.images_path + segment

    def decode(
        self, headers: Any, raw_headers: Sequence[tuple[bytes, bytes]], body: bytes, image_id: str
    ) -> Sequence[tuple[bytes, bytes]]:
        """A 200 answer for ``image_id`` as v1 header pairs; :class:`LyingAnswer` when it
        is not that image's metadata."""
        raise NotImplementedError

    def page_path(self, params: Mapping[str, str]) -> str:
        """The path (from the endpoint) of a listing page with these query parameters.

        Examples
        --------
        >>> V1.page_path({"limit": "2"})
        '/v1/images/detail?limit=2'
        """
        return self.listing_path + "?" + urlencode(params)

    def pack_record(self, record: dict[str, Any]) -> bytes:
        """One listed image's record as the packed header pairs its request answers."""
        raise NotImplementedError

    def parse_page(
        self, endpoint: str, url: str, body: bytes, request_id: bytes | None = None
    ) -> Page:
        """One listing page's answer (see :func:`parse_page`)."""
        return parse_page(self.name, endpoint, url, body, request_id)


class GlanceV1(GlanceApi):
    """Glance v1 and Huawei IMS: ``HEAD /v1/images/{id}``, ``/v1/images/detail``."""

    name = "v1"
    method = "HEAD"
    images_path = "/v1/images/"
    reads_body = False
    listing_path = "/v1/images/detail"

    def decode(
        self, headers: Any, raw_headers: Sequence[tuple[bytes, bytes]], body: bytes, image_id: str
    ) -> Sequence[tuple[bytes, bytes]]:
        ids = headers.getall(_META_ID, None)
        if ids is None or len(ids) != 1 or ids[0] != image_id:
            problem = identity_problem(headers, ids, image_id)
            if problem is not None:
                raise LyingAnswer(problem)
        return _without_pseudo_headers(raw_headers)

    def pack_record(self, record: dict[str, Any]) -> bytes:
        return v1_detail_packed(record)


class GlanceV2(GlanceApi):
    """Glance v2: ``GET /v2/images/{id}`` (a JSON document), ``/v2/images``."""

    name = "v2"
    method = "GET"
    images_path = "/v2/images/"
    reads_body = True
    listing_path = "/v2/images"

    def decode(
        self, headers: Any, raw_headers: Sequence[tuple[bytes, bytes]], body: bytes, image_id: str
    ) -> Sequence[tuple[bytes, bytes]]:
        return _v2_headers(body, raw_headers, image_id)

    def pack_record(self, record: dict[str, Any]) -> bytes:
        return v2_packed(record)


V1 = GlanceV1()
V2 = GlanceV2()

# The names imgframe itself gives v2-only attributes and JSON property keys when it maps a
# v2 document into header pairs (parse.v2_header_pairs). A v1 server never sends them; one
# that does must not be able to set `visibility` or a case-kept property that way.
_PSEUDO_PREFIX = b"x-imgframe-"
_PSEUDO_LEN = len(_PSEUDO_PREFIX)


def _without_pseudo_headers(
    raw_headers: Sequence[tuple[bytes, bytes]],
) -> Sequence[tuple[bytes, bytes]]:
    """``raw_headers`` without any ``X-Imgframe-*`` pair a v1 server sent.

    Examples
    --------
    >>> _without_pseudo_headers([(b"X-Image-Meta-Id", b"a"), (b"X-Imgframe-V2-Tags", b"[]")])
    [(b'X-Image-Meta-Id', b'a')]
    """
    if not any(name[:_PSEUDO_LEN].lower() == _PSEUDO_PREFIX for name, _ in raw_headers):
        return raw_headers
    return [pair for pair in raw_headers if pair[0][:_PSEUDO_LEN].lower() != _PSEUDO_PREFIX]


def glance_api(api: str) -> GlanceApi:
    """The API a run starts with: ``"v2"`` is :data:`V2`, ``"v1"`` and ``"auto"`` :data:`V1`.

    Examples
    --------
    >>> glance_api("auto"), glance_api("v2")
    (GlanceV1(), GlanceV2())
    """
    if api == "v2":
        return V2
    if api in ("v1", "auto"):
        return V1
    raise ConfigError(f"api must be 'v1', 'v2' or 'auto', got {api!r}")


def after_300(api: str, endpoint: str, url: str) -> GlanceApi:
    """The API to go on with once ``/v1`` answered ``300 Multiple Choices``: :data:`V2`
    when the run may switch (``api="auto"``), else :class:`~imgframe.NoV1ApiError`.

    Glance Rocky and later have no v1 API: they answer every ``/v1`` URL with a versions
    document, before authentication.

    Examples
    --------
    >>> after_300("auto", "https://glance.example.com", "https://glance.example.com/v1/images/")
    GlanceV2()
    >>> after_300("v1", "https://glance.example.com", "https://glance.example.com/v1/images/")
    Traceback (most recent call last):
    ...
    imgframe.errors.NoV1ApiError: https://glance.example.com answered 300 Multiple Choices ...
    """
    if api == "auto":
        return V2
    raise NoV1ApiError(
        f"{endpoint} answered 300 Multiple Choices for /v1: this cloud has no Glance v1 API "
        "any more (Glance Rocky or later); try api='v2' or api='auto'",
        url=url,
        status=300,
    )


def _v2_headers(
    body: bytes, raw_headers: Sequence[tuple[bytes, bytes]], image_id: str
) -> list[tuple[bytes, bytes]]:
    """A v2 image document (JSON) as v1 header pairs, with the answer's request id.

    Raises :class:`LyingAnswer` for a document that is not an image object or is
    another image's (ids compared as :func:`same_image_id` does).
    """
    try:
        image = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise LyingAnswer(V2_NOT_JSON) from None
    if not isinstance(image, dict):
        raise LyingAnswer(V2_NOT_OBJECT)
    answered = image.get("id")
    if not isinstance(answered, str) or not answered:
        raise LyingAnswer(V2_NO_ID)
    if not same_image_id(answered, image_id):
        raise LyingAnswer(V2_WRONG_ID)
    pairs = v2_header_pairs(image)
    pairs.extend(pair for pair in raw_headers if pair[0].lower() == REQUEST_ID)
    return pairs


# --- listing pages ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Page:
    """One raw listing page as the server sent it: ids, records, the next link."""

    ids: list[str]
    next_path: str | None  # v2 only: the server's ``next`` link
    deleted: frozenset[str] = frozenset()  # v1 detail: ids whose "deleted" is true
    # The page's image records (v1 detail records or v2 documents), one per id.
    records: list[dict[str, Any]] = field(default_factory=list)
    request_id: bytes | None = None  # the page's X-Openstack-Request-Id, undecoded


def parse_page(
    api: str, endpoint: str, url: str, body: bytes, request_id: bytes | None = None
) -> Page:
    """One listing page's answer: its ids, records and next link; FetchError if it is
    not a Glance image list."""
    try:
        document: Any = loads(body)
        images = document["images"]
        ids = [image["id"] for image in images]
    except (ValueError, TypeError, KeyError):
        raise FetchError(
            f"listing {url} failed: the answer is not a Glance image list", url=url
        ) from None
    if not all(isinstance(image_id, str) and image_id for image_id in ids):
        raise FetchError(f"listing {url} failed: an image without a string id", url=url)
    # image["id"] worked for each, so each record is a dict (or a str-keyed lookalike).
    next_path = None
    if api == "v2" and ids:  # an empty page ends the listing whatever it links to
        next_path = _next_path(endpoint, url, document.get("next"))
    deleted: frozenset[str] = frozenset()
    if api == "v1":
        # Glance v1's detail sends "deleted" as a JSON boolean for every image; a
        # missing flag (a summary listing, another server) counts as not deleted.
        deleted = frozenset(
            image["id"]
            for image in images
            if isinstance(image, dict) and image.get("deleted") is True
        )
    return Page(ids, next_path, deleted, images, request_id)


def loads(body: bytes) -> Any:
    """``json.loads(body)``, read by orjson (~3x faster on a v1 detail page) wherever it
    gives the same value; ``json.loads`` reads the rest, and raises its errors.

    orjson refuses what ``json.loads`` takes beyond RFC 8259 (``NaN``, ``Infinity``,
    lone surrogates, a byte order mark, UTF-16) and out-of-range floats: those fall back.
    An integer beyond 64 bits it reads as a float without an error, so a body with 19
    digits in a row (a string's too) is left to ``json.loads``.
    tests/test_listing_pages.py checks the equality on arbitrary texts.

    Examples
    --------
    >>> loads(b'{"a": 1, "a": [NaN, 123456789012345678901]}')
    {'a': [nan, 123456789012345678901]}
    """
    if _LONG_NUMBER.search(body) is None:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    return json.loads(body)


_LONG_NUMBER = re.compile(rb"[0-9]{19}")


def _next_path(endpoint: str, url: str, link: object) -> str | None:
    if link is None:
        return None
    if not isinstance(link, str) or not link:
        raise FetchError(f"listing {url} failed: a next link that is not a URL", url=url)
    parts = urlsplit(link)
    if parts.scheme or parts.netloc:
        # The token must not travel to another origin; a same-origin absolute link is
        # taken as a path (Glance sends relative ones).
        base = urlsplit(endpoint)
        if (parts.scheme, parts.netloc) != (base.scheme, base.netloc):
            raise FetchError(
                f"listing {url} failed: the next link points to another origin", url=url
            )
        link = link[len(f"{parts.scheme}://{parts.netloc}") :]
        prefix = base.path.rstrip("/")
        if prefix and link.startswith(prefix + "/"):
            link = link[len(prefix) :]
    if not link.startswith("/v2/"):
        raise FetchError(f"listing {url} failed: unexpected next link {link!r}", url=url)
    return link
