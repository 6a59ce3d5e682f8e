"""glance.loads: orjson where it gives json.loads' value, json.loads everywhere else."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from imgframe.glance import loads

# Every JSON value, with what json.loads takes beyond RFC 8259: NaN, infinities, big
# integers, any code point (lone surrogates as escapes or raw), empty and odd keys.
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


def outcome(body: bytes | str) -> tuple[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:
        return "error", type(exc)
    return "value", value


def same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down (1 is not 1.0), NaN equal to NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def check(body: bytes) -> None:
    kind, expected = outcome(body)
    if kind == "error":
        try:
            loads(body)
        except (ValueError, RecursionError) as exc:
            assert type(exc) is expected
        else:
            raise AssertionError(f"{body!r}: loads read what json.loads refuses")
    else:
        assert same(loads(body), expected), body


@settings(max_examples=400, deadline=None)
@given(_values, st.booleans(), st.sampled_from([None, 2]))
def test_loads_equals_json_loads_on_json_texts(value: Any, ascii_only: bool, indent: Any) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only, indent=indent)
    check(text.encode("utf-8", "surrogatepass"))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "é", ""]), _scalars), max_size=6))
def test_duplicate_keys_keep_json_loads_choice(pairs: list[tuple[str, Any]]) -> None:
    body = "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs) + "}"
    check(body.encode("utf-8", "surrogatepass"))


@settings(max_examples=400, deadline=None)
@given(
    st.binary(max_size=60) | st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass"))
)
def test_loads_equals_json_loads_on_any_bytes(body: bytes) -> None:
    check(body)


def test_the_cases_orjson_reads_otherwise_fall_back() -> None:
    for body in (
        b"[1e400]",
        b"[NaN, -Infinity]",
        b'["\\ud800"]',
        b"[123456789012345678901234567890]",
        b"[-9999999999999999999]",
        b"\xef\xbb\xbf[1]",
        '[1, "é"]'.encode("utf-16"),
        b'{"a": 1, "a": 2}',
        b"[" * 2000 + b"]" * 2000,
    ):
        check(body)
