"""Image members: which images can have them, and a members answer as the column's text.

Glance shares a non-public image with other projects by making them its *members*:
``GET {endpoint}/v1/images/{id}/members`` answers ``{"members": [{"member_id",
"can_share"}]}`` (v1, and Huawei IMS), ``GET {endpoint}/v2/images/{id}/members``
``{"members": [{"member_id", "image_id", "status", ...}], "schema": ...}`` (v2, where
only ``visibility == "shared"`` images have members: any other answers 403). The
fetcher (:class:`imgframe.fetch.HeadFetcher`) asks it after a good 200 for each image
:func:`may_have_members` names, and appends the answer, made one text by
:func:`members_text`, to the image's header pairs as the :data:`~imgframe.schema.MEMBERS_HEADER`
pseudo-header, which the ``members`` column is read from.

The text is fixed, so that equal lists are equal texts (and one category): a JSON array
sorted by ``member_id`` of ``{"member_id": str, "status": "accepted" | "pending" |
"rejected" | null, "can_share": true | false | null}``, compact, non-ASCII kept. v1
gives ``can_share`` and no status (null), v2 the status and no ``can_share`` (null).

Anything a server sends is either that text or one fixed ``error`` sentence (never an
exception, never a silently shorter list): a body that is not JSON, not an object,
without a ``members`` array, a member without a ``member_id`` string, one member listed
twice with different values, a v2 member of another image. A value imgframe cannot
read is null rather than guessed: a ``can_share`` that is not a boolean (or a boolean
spelling, as the header parser reads them), a ``status`` that is not one of the three.
Exact duplicates collapse.

Examples
--------
>>> members_text("v2", b'{"members": [{"member_id": "p2", "status": "pending"},'
...              b' {"member_id": "p1", "status": "accepted"}]}', "img")
'[{"member_id":"p1","status":"accepted","can_share":null},{"member_id":"p2","status":"pending","can_share":null}]'
>>> may_have_members("v1", [(b"X-Image-Meta-Is_public", b"False")])
True
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from imgframe.glance import loads, same_image_id
from imgframe.parse import TRUE_SPELLINGS, WHITESPACE
from imgframe.schema import MEMBERS_HEADER, V2_PREFIX

__all__ = [
    "MAX_MEMBERS_BYTES",
    "MEMBERS_NOT_READ",
    "MembersProblem",
    "may_have_members",
    "may_have_members_packed",
    "members_text",
]

#: Where the error of a members call that got no usable answer begins.
MEMBERS_NOT_READ = "members not read: "
NOT_JSON = "bad response: the members list is not valid JSON"
NOT_OBJECT = "bad response: the members list is not a JSON object"
NO_MEMBERS = "bad response: the members list has no members array"
BAD_MEMBER = "bad response: a member without a member_id string"
CONFLICTING = "bad response: a member listed twice with different values"
OTHER_IMAGE = "bad response: the members list is for another image"
#: A members answer may be this big (Glance's image_member_quota is 128 by default; a
#: v2 member is ~200 bytes): a hostile server must not make the client hold any size.
MAX_MEMBERS_BYTES = 4 * 1024 * 1024
TOO_BIG = f"bad response: the members list is over {MAX_MEMBERS_BYTES // 1024**2} MiB"
#: The member statuses of Glance v2.
STATUSES = ("accepted", "pending", "rejected")
#: The pseudo-header pair's name, as the fetcher appends it.
HEADER = MEMBERS_HEADER.encode()

_IS_PUBLIC = b"x-image-meta-is_public"
_DELETED = b"x-image-meta-deleted"
_VISIBILITY = (V2_PREFIX + "visibility").encode()
_SURROGATES = re.compile("[\ud800-\udfff]")


class MembersProblem(Exception):
    """A members answer imgframe cannot read; ``sentence`` is the row's error."""

    def __init__(self, sentence: str) -> None:
        super().__init__(sentence)
        self.sentence = sentence


def _true(value: bytes | None) -> bool:
    # The header parser's boolean grammar (imgframe.parse): only a true spelling is true.
    if value is None:
        return False
    return value.decode("latin-1").strip(WHITESPACE).lower() in TRUE_SPELLINGS


def may_have_members(api: str, pairs: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether the image of these (decoded) header pairs can have members worth asking:
    v1, ``is_public`` not true (false or unknown) and not ``deleted``; v2,
    ``visibility == "shared"`` (Glance v2 answers 403 for any other).

    Examples
    --------
    >>> may_have_members("v1", [(b"x-image-meta-is_public", b"True")])
    False
    >>> may_have_members("v1", [(b"x-image-meta-is_public", b"maybe")])  # unknown: asked
    True
    >>> may_have_members("v2", [(b"x-imgframe-v2-visibility", b"shared")])
    True
    """
    if api == "v2":
        visibility = None
        for name, value in pairs:
            if name.lower() == _VISIBILITY:
                visibility = value
        return visibility == b"shared"
    public = deleted = None
    for name, value in pairs:
        lowered = name.lower()
        if lowered == _IS_PUBLIC:
            public = value
        elif lowered == _DELETED:
            deleted = value
    return not _true(public) and not _true(deleted)


def may_have_members_packed(api: str, packed: bytes) -> bool:
    """:func:`may_have_members` of :func:`imgframe.parse.pack_headers` bytes.

    Examples
    --------
    >>> may_have_members_packed("v2", b"x-imgframe-v2-visibility\\x00shared")
    True
    """
    parts = packed.split(b"\x00")
    return may_have_members(api, zip(parts[0::2], parts[1::2], strict=False))


def _text(value: str) -> str:
    # A lone surrogate (a JSON "\ud800" escape) cannot be UTF-8: U+FFFD, as elsewhere.
    return _SURROGATES.sub("\ufffd", value) if _SURROGATES.search(value) else value


def _can_share(value: Any) -> bool | None:
    if value is True or value is False:
        return value
    if isinstance(value, str):
        token = value.strip(WHITESPACE).lower()
        if token in TRUE_SPELLINGS:
            return True
        if token in ("false", "0", "no", "off", "f", "n"):
            return False
    return None  # unknown: never read as False


def _status(value: Any) -> str | None:
    if isinstance(value, str):
        token = value.strip(WHITESPACE).lower()
        if token in STATUSES:
            return token
    return None


def members_text(api: str, body: bytes, image_id: str) -> str:
    """The ``members`` text of a members answer (``api`` ``"v1"`` or ``"v2"``) for
    ``image_id``; :class:`MembersProblem` when it cannot be read.

    Examples
    --------
    >>> members_text("v1", b'{"members": [{"member_id": "p1", "can_share": true}]}', "img")
    '[{"member_id":"p1","status":null,"can_share":true}]'
    >>> members_text("v1", b'{"members": []}', "img")
    '[]'
    >>> members_text("v2", b'[]', "img")
    Traceback (most recent call last):
    ...
    imgframe.members.MembersProblem: bad response: the members list is not a JSON object
    """
    try:
        document = loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise MembersProblem(NOT_JSON) from None
    if not isinstance(document, dict):
        raise MembersProblem(NOT_OBJECT)
    listed = document.get("members")
    if not isinstance(listed, list):
        raise MembersProblem(NO_MEMBERS)
    v2 = api == "v2"
    found: dict[str, dict[str, Any]] = {}
    for member in listed:
        if not isinstance(member, dict):
            raise MembersProblem(BAD_MEMBER)
        member_id = member.get("member_id")
        if not isinstance(member_id, str) or not member_id:
            raise MembersProblem(BAD_MEMBER)
        if v2:
            of = member.get("image_id")
            if isinstance(of, str) and not same_image_id(of, image_id):
                raise MembersProblem(OTHER_IMAGE)
        key = _text(member_id)
        entry = {
            "member_id": key,
            "status": _status(member.get("status")) if v2 else None,
            "can_share": None if v2 else _can_share(member.get("can_share")),
        }
        seen = found.setdefault(key, entry)
        if seen != entry:
            raise MembersProblem(CONFLICTING)
    ordered = [found[key] for key in sorted(found)]
    return json.dumps(ordered, separators=(",", ":"), ensure_ascii=False)
