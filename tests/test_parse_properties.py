"""Property tests: whatever a server sends, both parsers give one row, typed, and agree.

Three ways in, as the fetcher and users reach the parser: header mappings (str or bytes
names and values, lone surrogates included) through :func:`parse_headers` and
:func:`frame_from_headers`; raw header pairs packed by :func:`pack_headers` through
``Columns.from_packed`` + ``build_frame`` (the fetcher's path); and Glance v2 JSON
documents through :func:`v2_header_pairs`. Every row of a batch is compared with the
scalar parse of its own mapping, so a value's result cannot depend on its neighbours.
"""

from __future__ import annotations

import re
import string
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgframe import ImgframeParseWarning, frame_from_headers, parse_headers
from imgframe.frame import Columns, build_frame
from imgframe.parse import JSON_PROPERTY_PREFIX, ParseProblems, pack_headers, v2_header_pairs
from imgframe.schema import FIELDS, HEADER_FIELDS, PROPERTY_PREFIX, Kind, dtypes

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,  # nothing written into the source tree; a failure prints its example
)


class Pairs(Mapping[Any, Any]):
    """A mapping that keeps repeated names in order, as aiohttp's CIMultiDictProxy does
    (``CIMultiDict`` itself takes str names only)."""

    def __init__(self, pairs: list[tuple[Any, Any]]) -> None:
        self.pairs = pairs

    def __getitem__(self, key: Any) -> Any:
        return next(v for k, v in reversed(self.pairs) if k == key)

    def __iter__(self) -> Iterator[Any]:
        return (k for k, _ in self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def items(self) -> Any:  # type: ignore[override]
        return list(self.pairs)

    def values(self) -> Any:  # type: ignore[override]
        return [v for _, v in self.pairs]


# ----------------------------------------------------------------------- strategies
any_text = st.text(st.characters(exclude_categories=()), max_size=30)  # surrogates too
ascii_space = st.sampled_from(["", " ", "\t", "  ", "\r\n"])
odd_space = st.sampled_from(["\xa0", "\u2003", "\x1c", "\x85", "\u3000"])
padding = st.one_of(ascii_space, ascii_space, odd_space)


def recased(text: str) -> st.SearchStrategy[str]:
    return st.sampled_from([text, text.upper(), text.lower(), text.title(), text.swapcase()])


unicode_digits = st.text(st.characters(categories=["Nd"]), min_size=1, max_size=4)
ints = st.one_of(
    st.integers(-(10**19), 10**19).map(str),
    st.integers(0, 10**6).map(lambda i: f"+{i}"),
    st.integers(0, 999).map(lambda i: f"{i:0>19}"),
    st.integers(0, 99).map(lambda i: f"{i:0>18}"),
    unicode_digits,
    st.sampled_from(["1.5", "0x10", "1_000", "1e3", "--1", "+", "-", "١٢٣", "9" * 18, "9" * 19]),
)
bools = st.one_of(
    st.sampled_from(
        ["true", "false", "1", "0", "yes", "no", "on", "off", "t", "f", "y", "n"]
    ).flatmap(recased),
    st.sampled_from(["maybe", "2", "ｔｒｕｅ", "\u212a", "True\x00", "İ"]),
)
nulls = st.sampled_from(["", "None", "none", "NULL", "null", "nUlL"])


@st.composite
def timestamps(draw: st.DrawFn) -> str:
    """Timestamps around the grammar: valid, near misses and out-of-range parts mixed."""
    year = draw(st.one_of(st.integers(1, 9999), st.integers(1676, 2263), st.just(2016)))
    month = draw(st.integers(0, 13))
    day = draw(st.integers(0, 32))
    text = f"{year:04d}-{month:02d}-{day:02d}"
    if draw(st.booleans()):
        text += draw(st.sampled_from(["T", "t", " ", "  ", "_"]))
        text += f"{draw(st.integers(0, 25)):02d}:{draw(st.integers(0, 61)):02d}"
        if draw(st.booleans()):
            text += f":{draw(st.integers(0, 61)):02d}"
            if draw(st.booleans()):
                text += draw(st.sampled_from([".", ","])) + draw(
                    st.text(string.digits, min_size=0, max_size=11)
                )
        zone = draw(
            st.one_of(
                st.sampled_from(["", "Z", "z", "ZZ", "+02:00"]),
                st.builds(
                    lambda sign, h, m, colon: f"{sign}{h:02d}{colon}{m:02d}",
                    st.sampled_from("+-"),
                    st.integers(0, 25),
                    st.integers(0, 61),
                    st.sampled_from([":", "", "::"]),
                ),
                st.builds(lambda s, h: f"{s}{h:02d}", st.sampled_from("+-"), st.integers(0, 25)),
            )
        )
        if zone and draw(st.booleans()):
            zone = draw(st.sampled_from([" ", "  ", "\t"])) + zone
        text += zone
    return text


iso_oddities = st.sampled_from(
    ["2016-W01", "2016-W01-1", "2016-001", "20160522", "2016-05-22T0604", "2016-05-22T06",
     "0001-01-01T00:00:00", "2262-04-11T23:47:16.854775807", "1677-09-21T00:12:43.145225",
     "2016-05-22T24:00:00", "2016-05-22T23:59:60", "2016-5-2T6:4:2", "٢٠١٦-05-22"]
)  # fmt: skip
kind_values = {
    Kind.INT: ints,
    Kind.BOOL: bools,
    Kind.TIMESTAMP: st.one_of(timestamps(), iso_oddities),
    Kind.TEXT: st.one_of(any_text, st.sampled_from(["niÃ±o", "ni\udcf1o", "镜像", "a\ud800"])),
    Kind.CATEGORY: st.one_of(any_text, st.sampled_from(["active", "qcow2", "bare"])),
}


def padded(values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.builds(lambda a, v, b: a + v + b, padding, values, padding) | values


def as_wire(text: str) -> st.SearchStrategy[Any]:
    """A text value as str, or as the bytes aiohttp might hand over (UTF-8, Latin-1)."""
    choices: list[Any] = [text]
    try:
        choices.append(text.encode("utf-8"))
    except UnicodeEncodeError:
        choices.append(text.encode("utf-8", "surrogateescape" if _escapes(text) else "replace"))
    if all(ord(c) < 256 for c in text):
        choices.append(text.encode("latin-1"))
    return st.sampled_from(choices)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _escapes(text: str) -> bool:
    return all(not ("\ud800" <= c <= "\udfff") or "\udc80" <= c <= "\udcff" for c in text)


garbage_value = st.one_of(any_text, st.binary(max_size=30), nulls, st.none())


@st.composite
def header_pair(draw: st.DrawFn) -> tuple[Any, Any]:
    choice = draw(st.integers(0, 9))
    if choice <= 5:  # a field's header, with a value of (mostly) its kind
        f = draw(st.sampled_from(HEADER_FIELDS))
        name = draw(recased(f.header))  # type: ignore[arg-type]
        value = draw(st.one_of(padded(kind_values[f.kind]), nulls, garbage_value))
    elif choice <= 7:  # a custom property; keys differing in case only collide in HEAD
        prefix = draw(st.one_of(recased(PROPERTY_PREFIX), st.just(JSON_PROPERTY_PREFIX)))
        name = prefix + draw(st.one_of(any_text, recased("Env")))
        value = draw(st.one_of(any_text, st.binary(max_size=20), st.none()))
    else:  # anything
        name = draw(st.one_of(any_text, st.binary(max_size=30)))
        value = draw(garbage_value)
    if isinstance(name, str) and draw(st.booleans()):
        name = draw(as_wire(name))
    if isinstance(value, str) and draw(st.booleans()):
        value = draw(as_wire(value))
    return name, value


header_pairs = st.lists(header_pair(), max_size=12)


# ----------------------------------------------------------------------- checks
def _parse_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, ImgframeParseWarning)]


def _warned_fields(messages: list[str]) -> set[str]:
    """The fields with unparseable values and the collided ``properties[key]`` named."""
    fields = {m for text in messages for m in re.findall(r"(\w+) \(\d+ values?; ids", text)}
    keys = {
        m for text in messages for m in re.findall(r"(properties\[.+?\]) \(\d+ images?; ids", text)
    }
    return fields | keys


def scalar(mapping: Mapping[Any, Any]) -> tuple[Any, set[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        record = parse_headers(mapping)
    messages = _parse_warnings(caught)
    assert len(messages) <= 1, messages
    return record, _warned_fields(messages)


def assert_typed(frame: pd.DataFrame, rows: int) -> None:
    assert len(frame) == rows
    assert frame.index.name == "id" and str(frame.index.dtype) == "string"
    assert dict(frame.dtypes) == dtypes()
    for column in frame.select_dtypes("string").columns:  # no lone surrogate left
        "".join(frame[column].dropna()).encode("utf-8")


def assert_row_is_record(frame: pd.DataFrame, position: int, record: Any) -> None:
    """Value by value: the frame's row ``position`` is the scalar parser's record."""
    row = frame.iloc[position]
    index = frame.index[position]
    assert (pd.isna(index) and record.id is None) or index == record.id, (index, record.id)
    for f in FIELDS:
        fetcher_fills = f.header is None and f.kind is not Kind.PROPERTIES
        if fetcher_fills or f.column == "id":  # the id is the index, compared above
            continue
        expected, got = getattr(record, f.column), row[f.column]
        if expected is None:
            assert pd.isna(got), (f.column, got)
        else:
            assert not isinstance(got, type(pd.NA)) and got == expected, (f.column, got, expected)
            if f.kind is Kind.TIMESTAMP:
                assert got.nanosecond == 0 and expected.utcoffset().total_seconds() == 0
    for key, value in record.properties.items():
        (key + value).encode("utf-8")


def frame_and_warned(build: Any) -> tuple[pd.DataFrame, set[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = build()
    messages = _parse_warnings(caught)
    assert len(messages) <= 1, messages  # one warning per call at most
    return frame, _warned_fields(messages)


def packed_build(responses: list[list[tuple[bytes, bytes]]]) -> pd.DataFrame:
    problems = ParseProblems()
    frame = build_frame(
        Columns.from_packed([pack_headers(r) if r else None for r in responses]),
        problems=problems,
    )
    problems.warn()
    return frame


def unpacked(pairs: list[tuple[bytes, bytes]]) -> Pairs:
    """The pairs as pack_headers keeps them (a NUL inside a field becomes U+FFFD)."""
    fffd = "\ufffd".encode()
    return Pairs([(k.replace(b"\0", fffd), v.replace(b"\0", fffd)) for k, v in pairs])


# ----------------------------------------------------------------------- properties
@SETTINGS
@given(st.lists(header_pairs, min_size=1, max_size=4), st.booleans())
def test_any_header_mappings_parse_to_one_typed_row_each_on_both_paths_alike(
    batch: list[list[tuple[Any, Any]]], as_dict: bool
) -> None:
    mappings: list[Mapping[Any, Any]] = [dict(p) if as_dict else Pairs(p) for p in batch]
    frame, frame_warned = frame_and_warned(lambda: frame_from_headers(mappings))
    assert_typed(frame, len(mappings))
    warned: set[str] = set()
    for position, mapping in enumerate(mappings):
        record, fields = scalar(mapping)
        assert_row_is_record(frame, position, record)
        warned |= fields
    assert frame_warned == warned


def _raw(part: Any) -> bytes:
    return part if isinstance(part, bytes) else str(part).encode("utf-8", "surrogatepass")


raw_pair = st.one_of(
    st.tuples(st.binary(max_size=20), st.binary(max_size=20)),
    header_pair().map(lambda pair: (_raw(pair[0]), _raw(pair[1]))),
)


@SETTINGS
@given(st.lists(st.lists(raw_pair, max_size=10), min_size=1, max_size=4))
def test_packed_answers_parse_like_their_mappings(
    responses: list[list[tuple[bytes, bytes]]],
) -> None:
    frame, frame_warned = frame_and_warned(lambda: packed_build(responses))
    assert_typed(frame, len(responses))
    warned: set[str] = set()
    for position, pairs in enumerate(responses):
        record, fields = scalar(unpacked(pairs))
        assert_row_is_record(frame, position, record)
        warned |= fields
    assert frame_warned == warned


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(10**40), 10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    any_text,
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(any_text, children, max_size=3)
    ),
    max_leaves=8,
)
v2_keys = st.sampled_from(
    [f.v2 for f in FIELDS if f.v2 is not None]
    + ["visibility", "tags", "self", "file", "schema", "locations", "os_hidden", "stores"]
)
v2_field_values = st.one_of(
    json_values, ints, timestamps(), bools, st.sampled_from(["public", "private"])
)


@SETTINGS
@given(
    st.dictionaries(
        st.one_of(v2_keys, any_text, recased("Env")),
        st.one_of(v2_field_values, json_values),
        max_size=12,
    ),
    st.integers(0, 3),
)
def test_any_v2_document_parses_like_its_header_pairs(image: dict[str, Any], more: int) -> None:
    documents = [image] + [{**image, "id": f"copy-{i}"} for i in range(more)]
    responses = [v2_header_pairs(document) for document in documents]
    frame, frame_warned = frame_and_warned(lambda: packed_build(responses))
    assert_typed(frame, len(documents))
    warned: set[str] = set()
    for position, pairs in enumerate(responses):
        record, fields = scalar(unpacked(pairs))
        assert_row_is_record(frame, position, record)
        warned |= fields
    assert frame_warned == warned
    assert not frame["deleted"].any() and frame["deleted"].notna().all()  # v2 shows no deleted
    assert frame["is_public"].iloc[0] == (image.get("visibility") == "public")
    for key in {"Env", "ENV", "env", "eNV"} & set(image):  # JSON keys keep their case
        if image[key] is not None:
            assert key in frame["properties"].iloc[0]
    if all(not _SURROGATE.search(key) for key in image):  # else two may repair alike
        assert not {k for k in frame_warned if k.startswith("properties[")}
