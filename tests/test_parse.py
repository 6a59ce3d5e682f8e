"""Header parsing: every quirk of the wire (docs/ARCHITECTURE.md, "The wire"), the scalar
and vectorized paths agreeing."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime

import pandas as pd
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

import imgframe
from imgframe import ImgframeParseWarning, frame_from_headers, parse_headers
from imgframe.frame import Columns, build_frame
from imgframe.parse import ParseProblems, pack_headers, repair_text
from imgframe.schema import FIELDS, Kind, columns, dtypes

SAMPLE = {  # the vendor's sample response (shared/reference)
    "Content-Type": "text/html; charset=UTF-8",
    "Content-Length": "0",
    "X-Image-Meta-Id": "3c3d1d01-b48a-4639-8a88-08be3b9b5d78",
    "X-Image-Meta-Deleted": "False",
    "X-Image-Meta-Container_format": "bare",
    "X-Image-Meta-Checksum": "64d7c1cd2b6f60c92c14662941cb7913",
    "X-Image-Meta-Protected": "False",
    "X-Image-Meta-Min_disk": "0",
    "X-Image-Meta-Created_at": "2016-05-22T06:04:20.425843",
    "X-Image-Meta-Size": "13167616",
    "X-Image-Meta-Status": "active",
    "X-Image-Meta-Is_public": "True",
    "X-Image-Meta-Min_ram": "0",
    "X-Image-Meta-Owner": "23f4cb75768d4febb39542ef6fe169f3",
    "X-Image-Meta-Updated_at": "2016-05-22T06:04:22.719791",
    "X-Image-Meta-Disk_format": "qcow2",
    "X-Image-Meta-Name": "cirros",
    "Etag": "64d7c1cd2b6f60c92c14662941cb7913",
    "X-Openstack-Request-Id": "req-7123ca83-da23-4f4e-9ed6-accd3707d333",
    "Date": "Mon, 23 May 2016 02:29:54 GMT",
}


def with_(**values: str) -> dict[str, str]:
    headers = dict(SAMPLE)
    for column, value in values.items():
        headers[f"X-Image-Meta-{column.capitalize()}"] = value
    return headers


def one_value(column: str, raw: str) -> object:
    """Parse ``raw`` for ``column`` on both paths; they must agree; return the value."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImgframeParseWarning)
        record_value = getattr(parse_headers(with_(**{column: raw})), column)
        frame_value = frame_from_headers([with_(**{column: raw})])[column].iloc[0]
    if record_value is None:
        assert pd.isna(frame_value), (column, raw, frame_value)
    else:
        assert frame_value == record_value, (column, raw, frame_value, record_value)
    return record_value


def test_vendor_sample_parses_to_typed_record() -> None:
    rec = parse_headers(SAMPLE)
    assert rec.id == "3c3d1d01-b48a-4639-8a88-08be3b9b5d78"
    assert rec.size == 13167616 and rec.min_ram == 0 and rec.min_disk == 0
    assert rec.is_public is True and rec.protected is False and rec.deleted is False
    assert rec.created_at == datetime(2016, 5, 22, 6, 4, 20, 425843, tzinfo=UTC)
    assert rec.deleted_at is None and rec.virtual_size is None
    assert rec.request_id == "req-7123ca83-da23-4f4e-9ed6-accd3707d333"
    assert rec.properties == {}


def test_image_record_is_frozen_and_slotted() -> None:
    rec = parse_headers(SAMPLE)
    with pytest.raises(AttributeError):
        rec.size = 1  # type: ignore[misc]
    assert not hasattr(rec, "__dict__")


def test_image_record_fields_follow_the_schema() -> None:
    from dataclasses import fields

    expected = [f.column for f in FIELDS if f.column not in ("http_status", "error")]
    assert [f.name for f in fields(imgframe.ImageRecord)] == expected


def test_frame_has_contract_columns_and_dtypes() -> None:
    df = frame_from_headers([SAMPLE])
    assert list(df.columns) == columns()
    assert df.index.name == "id" and str(df.index.dtype) == "string"
    for column, dtype in dtypes().items():
        assert df[column].dtype == dtype, column
    assert df["created_at"].dtype == "datetime64[ns, UTC]"


@pytest.mark.parametrize(
    "mapping",
    [
        {k.lower(): v for k, v in SAMPLE.items()},
        {k.upper(): v for k, v in SAMPLE.items()},
        {k.swapcase(): v for k, v in SAMPLE.items()},
        CIMultiDictProxy(CIMultiDict(SAMPLE)),
    ],
    ids=["lower", "upper", "swapcase", "CIMultiDictProxy"],
)
def test_header_names_are_case_insensitive(mapping: object) -> None:
    assert parse_headers(mapping) == parse_headers(SAMPLE)  # type: ignore[arg-type]
    pd.testing.assert_frame_equal(frame_from_headers([mapping]), frame_from_headers([SAMPLE]))  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("True", True), ("true", True), ("TRUE", True), (" yes ", True), ("1", True),
        ("on", True), ("t", True), ("False", False), ("false", False), ("0", False),
        ("no", False), ("OFF", False), ("f", False), ("None", None), ("", None),
    ],
)  # fmt: skip
def test_boolean_spellings(raw: str, expected: bool | None) -> None:
    assert one_value("is_public", raw) is expected


@pytest.mark.parametrize("garbage", ["maybe", "2", "public", "Tru"])
def test_unknown_boolean_is_na_never_false(garbage: str) -> None:
    with pytest.warns(ImgframeParseWarning, match="is_public"):
        df = frame_from_headers([with_(is_public=garbage)])
    assert pd.isna(df["is_public"].iloc[0])
    assert one_value("is_public", garbage) is None


@pytest.mark.parametrize("null", ["None", "", "  ", "none", "null"])
def test_null_spellings_in_numbers_are_na_without_warning(null: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", ImgframeParseWarning)
        df = frame_from_headers([with_(size=null)])
        assert parse_headers(with_(size=null)).size is None
    assert pd.isna(df["size"].iloc[0])


@pytest.mark.parametrize("bad", ["12x", "1.5", "0x10", "9" * 19])
def test_unparseable_integer_is_na_and_warns_naming_field_and_id(bad: str) -> None:
    with pytest.warns(ImgframeParseWarning, match=r"size \(1 value; ids '3c3d1d01"):
        df = frame_from_headers([with_(size=bad)])
    assert pd.isna(df["size"].iloc[0])
    assert len(df) == 1


def test_integers_keep_full_precision() -> None:
    assert one_value("size", "9007199254740993") == 9007199254740993
    assert one_value("size", " 42 ") == 42


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2016-05-22T06:04:20.425843", datetime(2016, 5, 22, 6, 4, 20, 425843, tzinfo=UTC)),
        ("2016-05-22T06:04:20", datetime(2016, 5, 22, 6, 4, 20, tzinfo=UTC)),
        ("2016-05-22 06:04:20.5", datetime(2016, 5, 22, 6, 4, 20, 500000, tzinfo=UTC)),
        ("2016-05-22T08:04:20+02:00", datetime(2016, 5, 22, 6, 4, 20, tzinfo=UTC)),
        ("2016-05-22T06:04:20Z", datetime(2016, 5, 22, 6, 4, 20, tzinfo=UTC)),
        ("None", None),
        ("", None),
    ],
)
def test_timestamps_become_utc(raw: str, expected: datetime | None) -> None:
    assert one_value("created_at", raw) == expected


def test_timestamp_garbage_is_na_and_warns() -> None:
    with pytest.warns(ImgframeParseWarning, match="created_at"):
        assert pd.isna(frame_from_headers([with_(created_at="yesterday")])["created_at"].iloc[0])


@pytest.mark.parametrize(
    "wire",
    [
        "niño",  # raw UTF-8, decoded right by aiohttp
        "niÃ±o",  # UTF-8 decoded as Latin-1 (requests, http.client)
        "ni\udcf1o",  # Latin-1 byte surrogate-escaped by aiohttp's parser
        b"ni\xc3\xb1o",  # bytes, UTF-8
        b"ni\xf1o",  # bytes, Latin-1
    ],
    ids=["utf8", "mojibake", "surrogate", "bytes-utf8", "bytes-latin1"],
)
def test_non_ascii_name_is_repaired(wire: str | bytes) -> None:
    headers = {**SAMPLE, "X-Image-Meta-Name": wire}
    assert parse_headers(headers).name == "niño"
    assert frame_from_headers([headers])["name"].iloc[0] == "niño"


def test_non_latin_text_is_kept() -> None:
    for name in ("образ-тест", "镜像-生产", "café ☕"):
        assert one_value("name", name) == name


def test_percent_encoded_values_are_kept_literally() -> None:
    assert one_value("name", "%E9%95%9C%E5%83%8F") == "%E9%95%9C%E5%83%8F"
    assert repair_text("a%20b") == "a%20b"


def test_properties_lower_cased_with_empty_values_kept() -> None:
    headers = {
        **SAMPLE,
        "X-Image-Meta-Property-Os_Distro": "ubuntu",
        "x-image-meta-property-description": "",
        "X-IMAGE-META-PROPERTY-HW_DISK_BUS": "virtio",
        "X-Image-Meta-Property-Note": "ni\udcf1o",
    }
    expected = {"os_distro": "ubuntu", "description": "", "hw_disk_bus": "virtio", "note": "niño"}
    assert parse_headers(headers).properties == expected
    assert frame_from_headers([headers])["properties"].iloc[0] == expected


def _parse_warnings(call: object) -> tuple[object, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()  # type: ignore[operator]
    return result, [str(w.message) for w in caught if issubclass(w.category, ImgframeParseWarning)]


def test_v2_property_keys_keep_their_case_v1_listing_keys_do_not() -> None:
    from imgframe.parse import v1_detail_header_pairs, v2_header_pairs

    v2 = v2_header_pairs({"id": "a", "Env": "prod", "env": "dev", "OS_Distro": "cirros"})
    record, scalar_warnings = _parse_warnings(lambda: parse_headers(dict(v2)))
    problems = ParseProblems()
    frame = packed_frame(v2, problems=problems)
    expected = {"Env": "prod", "env": "dev", "OS_Distro": "cirros"}
    assert record.properties == expected  # type: ignore[attr-defined]
    assert frame["properties"].iloc[0] == expected
    assert scalar_warnings == [] and not problems
    # A v1 listing record reads as its HEAD answer, whose names are case-insensitive.
    v1 = v1_detail_header_pairs({"id": "b", "properties": {"Env": "prod", "env": "dev"}})
    record, scalar_warnings = _parse_warnings(lambda: parse_headers(dict(v1)))
    problems = ParseProblems()
    frame = packed_frame(v1, problems=problems)
    assert record.properties == frame["properties"].iloc[0] == {"env": "dev"}  # type: ignore
    assert len(scalar_warnings) == 1 and problems.collided == {"env": 1}
    assert "properties['env'] (1 image; ids 'b')" in scalar_warnings[0]


def test_head_property_names_differing_in_case_keep_the_last_value_and_warn() -> None:
    def head(image_id: str, *pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
        return CIMultiDictProxy(CIMultiDict([("X-Image-Meta-Id", image_id), *pairs]))

    rows = [
        head("a", ("X-Image-Meta-Property-Env", "prod"), ("x-image-meta-property-env", "dev")),
        head("b", ("X-Image-Meta-Property-Env", "x"), ("X-Image-Meta-Property-Env", "y")),
        head("c", ("X-Image-Meta-Property-Env", "same"), ("x-image-meta-property-ENV", "same")),
    ]
    frame, frame_warnings = _parse_warnings(lambda: frame_from_headers(rows))
    assert frame["properties"].tolist() == [{"env": "dev"}, {"env": "y"}, {"env": "same"}]
    assert len(frame_warnings) == 1
    assert "properties['env'] (2 images; ids 'a', 'b')" in frame_warnings[0]
    for row, expected in zip(rows, ({"env": "dev"}, {"env": "y"}), strict=False):
        record, scalar_warnings = _parse_warnings(lambda r=row: parse_headers(r))
        assert record.properties == expected  # type: ignore[attr-defined]
        assert len(scalar_warnings) == 1 and "properties['env'] (1 image; ids" in scalar_warnings[0]
    assert _parse_warnings(lambda: parse_headers(rows[2]))[1] == []  # same value: nothing lost


def test_a_collision_and_a_bad_value_are_one_warning() -> None:
    row = {**with_(size="x"), "X-Image-Meta-Property-A": "1", "x-image-meta-property-a": "2"}
    for call in (lambda: parse_headers(row), lambda: frame_from_headers([row])):
        _, messages = _parse_warnings(call)
        assert len(messages) == 1 and "size (1 value" in messages[0]
        assert "properties['a'] (1 image" in messages[0]


def test_each_row_gets_its_own_properties_dict() -> None:
    df = frame_from_headers([SAMPLE, {**SAMPLE, "X-Image-Meta-Id": "b"}])
    df["properties"].iloc[0]["x"] = "1"
    assert df["properties"].iloc[1] == {}


def test_missing_headers_become_na_not_false() -> None:
    df = frame_from_headers([{"X-Image-Meta-Id": "q", "X-Image-Meta-Status": "queued"}])
    row = df.iloc[0]
    for column in ("size", "checksum", "is_public", "protected", "created_at", "name"):
        assert pd.isna(row[column]), column


def test_one_warning_per_call_names_every_bad_field() -> None:
    rows = [with_(size="x", is_public="maybe")] + [
        {**with_(size="y"), "X-Image-Meta-Id": f"id-{i}"} for i in range(5)
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = frame_from_headers(rows)
    parse_warnings = [w for w in caught if issubclass(w.category, ImgframeParseWarning)]
    assert len(parse_warnings) == 1
    message = str(parse_warnings[0].message)
    assert "size (6 values" in message and "is_public (1 value" in message and "..." in message
    assert len(df) == 6


def test_scalar_and_vector_paths_agree_on_a_mixed_batch() -> None:
    rows = []
    spellings = ["True", "false", "YES", "0", "maybe", "", "None"]
    numbers = ["1", "None", "", "x", "  7", "-3"]
    stamps = ["2016-05-22T06:04:20.425843", "2016-05-22 06:04:20", "bad", "", "2020-01-01T00:00Z"]
    for i in range(60):
        rows.append(
            {
                "x-image-meta-id": f"img-{i}",
                "x-image-meta-is_public": spellings[i % len(spellings)],
                "x-image-meta-min_ram": numbers[i % len(numbers)],
                "x-image-meta-updated_at": stamps[i % len(stamps)],
                "x-image-meta-name": ["niÃ±o", "plain", "ni\udcf1o", "镜像"][i % 4],
                "x-image-meta-status": ["active", "queued"][i % 2],
            }
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImgframeParseWarning)
        df = frame_from_headers(rows)
        records = [parse_headers(r) for r in rows]
    for record, (_, row) in zip(records, df.iterrows(), strict=True):
        for f in FIELDS:
            if f.header is None or f.column == "id":
                continue
            value = getattr(record, f.column)
            if value is None:
                assert pd.isna(row[f.column]), (record.id, f.column)
            else:
                assert row[f.column] == value, (record.id, f.column)


def test_category_columns_are_categorical() -> None:
    df = frame_from_headers([SAMPLE])
    for f in FIELDS:
        if f.kind is Kind.CATEGORY:
            assert isinstance(df[f.column].dtype, pd.CategoricalDtype), f.column


def test_empty_input_gives_empty_typed_frame() -> None:
    df = frame_from_headers([])
    assert len(df) == 0 and list(df.columns) == columns()
    assert df["size"].dtype == "Int64"


def test_generator_input_is_accepted() -> None:
    df = frame_from_headers({**SAMPLE, "X-Image-Meta-Id": str(i)} for i in range(3))
    assert df.index.tolist() == ["0", "1", "2"]


# ------------------------------------------------- one bad answer never sinks a run
def quietly(function, *args):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImgframeParseWarning)
        return function(*args)


def packed_frame(
    *responses: list[tuple[bytes, bytes]], problems: ParseProblems | None = None
) -> pd.DataFrame:
    """The fetcher's path: packed raw header pairs -> Columns.from_packed -> build_frame."""
    packed = [pack_headers(r) if r else None for r in responses]
    return build_frame(Columns.from_packed(packed), problems=problems)


@pytest.mark.parametrize(
    "stamp", ["0001-01-01T00:00:00", "9999-12-31T23:59:59", "1677-09-21T00:12:43", "2262-04-12"]
)
def test_timestamp_outside_the_datetime64_range_is_na_and_warns(stamp: str) -> None:
    with pytest.warns(ImgframeParseWarning, match=r"deleted_at \(1 value; ids '3c3d1d01"):
        df = frame_from_headers([with_(deleted_at=stamp)])
    assert pd.isna(df["deleted_at"].iloc[0]) and df["size"].iloc[0] == 13167616
    with pytest.warns(ImgframeParseWarning, match="deleted_at"):
        assert parse_headers(with_(deleted_at=stamp)).deleted_at is None


def test_out_of_range_timestamp_in_one_answer_keeps_every_row_on_the_fetch_path() -> None:
    good = [(k.encode(), v.encode()) for k, v in SAMPLE.items()]
    bad = [*good[:-1], (b"X-Image-Meta-Deleted_at", b"0001-01-01T00:00:00")]
    problems = ParseProblems()
    df = packed_frame(*([good] * 199), bad, problems=problems)
    with pytest.warns(ImgframeParseWarning, match=r"deleted_at \(1 value; ids '3c3d1d01"):
        problems.warn()
    assert len(df) == 200 and df["deleted_at"].isna().all()
    assert (df["size"] == 13167616).all()


def test_timestamp_range_edges_are_kept() -> None:
    first, last = "1677-09-21T00:12:44", "2262-04-11T23:47:16.854775"
    assert one_value("created_at", first) == datetime(1677, 9, 21, 0, 12, 44, tzinfo=UTC)
    assert one_value("created_at", last) == datetime(2262, 4, 11, 23, 47, 16, 854775, tzinfo=UTC)


@pytest.mark.parametrize(("raw", "expected"), [("+123", 123), ("-5", -5), ("+0", 0), ("-0", 0)])
def test_signed_integers_are_read_on_both_paths(raw: str, expected: int) -> None:
    assert one_value("size", raw) == expected
    df = packed_frame([(b"X-Image-Meta-Size", raw.encode())])
    assert df["size"].iloc[0] == expected


@pytest.mark.parametrize("digits", ["١٢٣", "９", "1٢3", "²", "1_000", "++1", "+-1", "1 2", "+"])
def test_only_ascii_digits_are_digits(digits: str) -> None:
    with pytest.warns(ImgframeParseWarning, match="size"):
        frame_from_headers([with_(size=digits)])
    assert one_value("size", digits) is None


def test_integers_of_19_digits_are_na_even_with_leading_zeros() -> None:
    assert one_value("size", "9" * 18) == 10**18 - 1
    assert one_value("size", "-" + "9" * 18) == -(10**18 - 1)
    for raw in ("0" * 19, "0" * 18 + "1", "9223372036854775807", "9" * 40):
        assert one_value("size", raw) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2016-05-22", datetime(2016, 5, 22, tzinfo=UTC)),
        ("2016-05-22t06:04:20z", datetime(2016, 5, 22, 6, 4, 20, tzinfo=UTC)),
        ("2016-05-22T06:04", datetime(2016, 5, 22, 6, 4, tzinfo=UTC)),
        ("2016-05-22T06:04+01:00", datetime(2016, 5, 22, 5, 4, tzinfo=UTC)),
        ("2016-05-22T06:04:20+0530", datetime(2016, 5, 22, 0, 34, 20, tzinfo=UTC)),
        ("2016-05-22T06:04:20-03", datetime(2016, 5, 22, 9, 4, 20, tzinfo=UTC)),
        ("2016-05-22T06:04:20-00:00", datetime(2016, 5, 22, 6, 4, 20, tzinfo=UTC)),
        ("2016-05-22 06:04:20 +02:00", datetime(2016, 5, 22, 4, 4, 20, tzinfo=UTC)),
        ("2016-05-22T06:04:20 Z", datetime(2016, 5, 22, 6, 4, 20, tzinfo=UTC)),
        ("2016-05-22T06:04:20.5 Z", datetime(2016, 5, 22, 6, 4, 20, 500000, tzinfo=UTC)),
        ("2016-05-22T06:04:20.5 -05", datetime(2016, 5, 22, 11, 4, 20, 500000, tzinfo=UTC)),
        ("2016-05-22T06:04:20.25 +0530", datetime(2016, 5, 22, 0, 34, 20, 250000, tzinfo=UTC)),
        ("2016-05-22T06:04:20.125 +05:30", datetime(2016, 5, 22, 0, 34, 20, 125000, tzinfo=UTC)),
        ("2016-05-22 06:04 -01:30", datetime(2016, 5, 22, 7, 34, tzinfo=UTC)),
        ("2016-05-22T23:30:00-23:59", datetime(2016, 5, 23, 23, 29, tzinfo=UTC)),
        ("2016-05-22T06:04:20.1", datetime(2016, 5, 22, 6, 4, 20, 100000, tzinfo=UTC)),
        ("2016-05-22T06:04:20.123456789", datetime(2016, 5, 22, 6, 4, 20, 123456, tzinfo=UTC)),
        ("2016-05-22T06:04:20.9999999Z", datetime(2016, 5, 22, 6, 4, 20, 999999, tzinfo=UTC)),
        ("2016-02-29T00:00:00", datetime(2016, 2, 29, tzinfo=UTC)),
        ("2000-02-29T00:00:00", datetime(2000, 2, 29, tzinfo=UTC)),
        ("  2016-05-22T06:04:20\t", datetime(2016, 5, 22, 6, 4, 20, tzinfo=UTC)),
        ("1969-12-31T23:59:59.999999", datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
    ],
)
def test_timestamp_grammar_accepts(raw: str, expected: datetime) -> None:
    assert one_value("created_at", raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "2016-W01", "2016-W01-1", "2016-001", "20160522", "2016-05-22T0604", "2016-05-22T06",
        "2016-05-22T24:00:00", "2016-05-22T23:59:60", "2016-02-30T00:00:00",
        "2015-02-29T00:00:00", "1900-02-29T00:00:00", "2016-13-01", "2016-00-10", "2016-05-00",
        "2016-5-2T6:4:2", "2016-05-22T06:04:20.", "2016-05-22T06:04:20.1234567890",
        "2016-05-22T06:04:20,5", "2016-05-22\t06:04:20", "2016-05-22  06:04:20",
        "2016-05-22T06:04:20+24:00", "2016-05-22T06:04:20+02:60", "2016-05-22T06:04:20+02:00:30",
        "2016-05-22T06:04:20+2", "2016-05-22Z", "2016-05-22T06:04:20ZZ", "٢٠١٦-05-22T06:04:20",
        "2016-05-22T06:04:2０", "+2016-05-22", "12016-05-22", "1463897060", "yesterday",
    ],
)  # fmt: skip
def test_timestamp_grammar_refuses(raw: str) -> None:
    with pytest.warns(ImgframeParseWarning, match="created_at"):
        frame_from_headers([with_(created_at=raw)])
    assert one_value("created_at", raw) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("Y", True), ("n", False), ("ｔｒｕｅ", None), ("True\x00", None), ("\u212a", None)],
)
def test_booleans_agree_on_odd_spellings(raw: str, expected: bool | None) -> None:
    assert one_value("is_public", raw) is expected


@pytest.mark.parametrize("space", ["\xa0", "\u2003", "\x1c", "\x85"])
def test_only_ascii_whitespace_is_trimmed(space: str) -> None:
    assert one_value("size", f"{space}42") is None
    assert one_value("is_public", f"True{space}") is None
    assert one_value("created_at", f"{space}2016-05-22") is None


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Image-Meta-Name\udcff": "x"},
        {"X-Image-Meta-Name": "\ud800"},
        {"X-Image-Meta-Size": "\ud800"},
        {"X-Image-Meta-Created_at": "2016-05-22\udc80"},
        {"X-Image-Meta-Property-A\ud800": "x"},
        {"X-Image-Meta-Property-a": "\udfff\ud800"},
        {"X-Image-Meta-Id": "\ud800", "X-Image-Meta-Size": "x"},
        {b"X-Image-Meta-Name\xff": b"\xff\xfe\x00"},
        {"X-Image-Meta-Name": "ni\udcf1o\ud800"},
    ],
    ids=repr,
)
def test_lone_surrogates_never_raise_and_never_survive(headers: dict) -> None:  # type: ignore[type-arg]
    record = quietly(parse_headers, headers)
    frame = quietly(frame_from_headers, [headers])
    assert len(frame) == 1
    texts = [record.id, record.name, *record.properties, *record.properties.values()]
    texts += [frame.index[0], frame["name"].iloc[0], *frame["properties"].iloc[0].items()]
    for text in texts:
        for part in text if isinstance(text, tuple) else (text,):
            if isinstance(part, str):
                part.encode("utf-8")  # no lone surrogate left


def test_lone_surrogates_become_replacement_characters() -> None:
    headers = {"X-Image-Meta-Name": "a\ud800b", "X-Image-Meta-Property-K\udfff": "v"}
    assert one_value("name", "a\ud800b") == "a\ufffdb"
    assert parse_headers(headers).properties == {"k\ufffd": "v"}
    assert frame_from_headers([headers])["properties"].iloc[0] == {"k\ufffd": "v"}


def test_parse_warning_with_odd_ids_prints() -> None:
    import io

    headers = {"X-Image-Meta-Id": "id\ud800" + "x" * 500, "X-Image-Meta-Size": "bad"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame_from_headers([headers])
        parse_headers(headers)
    assert len(caught) == 2
    for w in caught:
        text = warnings.formatwarning(w.message, w.category, w.filename, w.lineno)
        text.encode("utf-8")
        io.TextIOWrapper(io.BytesIO(), encoding="ascii").write(text)  # any stream prints it
        assert "size (1 value; ids 'id\\ufffdxxx" in text
        assert len(str(w.message)) < 120  # a long id is shortened


def test_bytes_that_are_utf8_are_repaired_like_the_text_they_decode_to() -> None:
    double = "niÃ±o".encode()  # UTF-8 of text that was already mis-decoded once
    assert repair_text(double) == repair_text("niÃ±o") == "niño"
    invalid = b"\xff"
    df = packed_frame(
        [(b"X-Image-Meta-Name", double)],
        [(b"X-Image-Meta-Name", double), (b"X-Image-Meta-Checksum", invalid)],
    )
    assert df["name"].tolist() == ["niño", "niño"]  # same answer whatever the batch holds
    assert frame_from_headers([{"X-Image-Meta-Name": double}])["name"].iloc[0] == "niño"


def test_values_that_are_none_are_absent_headers() -> None:
    headers = {"X-Image-Meta-Size": "5", "x-image-meta-size": None, "X-Image-Meta-Property-A": None}
    record = parse_headers(headers)
    assert record.size == 5 and record.properties == {}
    df = frame_from_headers([headers])
    assert df["size"].iloc[0] == 5 and df["properties"].iloc[0] == {}


def test_an_empty_packed_blob_is_a_response_without_headers() -> None:
    df = build_frame(Columns.from_packed([b"", b"X-Image-Meta-Size\x0012", None]))
    assert df["size"].tolist() == [pd.NA, 12, pd.NA]


def test_scalar_and_vector_paths_agree_on_thousands_of_mixed_timestamps() -> None:
    import random

    rng = random.Random(9)
    forms = ["{d}", "{d}T{t}", "{d} {t}Z", "{d}T{t}.{f}", "{d}t{t}.{f}+{o}", "{d}T{t}.{f} -{o}",
             "{d}T{t}+{h}", "{d}T{t}.{f}z", "{d}T{t}-{h}{m}", "{d}T{hm}"]  # fmt: skip
    rows = []
    for i in range(3000):
        year = rng.choice([rng.randint(1, 9999), rng.randint(1670, 2270), 2016])
        values = {
            "d": f"{year:04d}-{rng.randint(1, 12):02d}-{rng.randint(1, 31):02d}",
            "t": f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}",
            "hm": f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}",
            "f": str(rng.randint(0, 10**9 - 1)).zfill(9)[: rng.randint(1, 9)],
            "o": f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}",
            "h": f"{rng.randint(0, 23):02d}",
            "m": f"{rng.randint(0, 59):02d}",
        }
        stamp = rng.choice(forms).format(**values)
        rows.append({"X-Image-Meta-Id": f"i{i}", "X-Image-Meta-Created_at": stamp})
    frame = quietly(frame_from_headers, rows)
    for row, (_, got) in zip(rows, frame["created_at"].items(), strict=True):
        expected = quietly(parse_headers, row).created_at
        assert (pd.isna(got) and expected is None) or got == expected, (row, got, expected)
    assert 0 < frame["created_at"].isna().sum() < len(rows) // 2  # some days do not exist


def v2_frame(*documents: dict) -> tuple[pd.DataFrame, ParseProblems]:  # type: ignore[type-arg]
    from imgframe.parse import v2_header_pairs

    problems = ParseProblems()
    return packed_frame(*(v2_header_pairs(d) for d in documents), problems=problems), problems


@pytest.mark.parametrize(
    "size", [True, 1.5, float("nan"), float("inf"), 10**20, -(10**30), [1], {"a": 1}, "+7"]
)
def test_v2_values_of_the_wrong_type_are_na_and_warn(size: object) -> None:
    df, problems = v2_frame({"id": "a", "size": size, "min_ram": 512})
    assert df["min_ram"].iloc[0] == 512
    if size == "+7":
        assert df["size"].iloc[0] == 7 and not problems
    else:
        assert pd.isna(df["size"].iloc[0]) and list(problems.counts) == ["size"]


def test_v2_documents_with_lone_surrogates_and_odd_values_keep_their_rows() -> None:
    import json

    document = json.loads(
        '{"id": "a\\ud800", "name": "\\udcff", "\\ud800key": "v\\udfff",'
        ' "created_at": "0001-01-01", "nested": [[{"x": NaN}], Infinity], "protected": "maybe",'
        ' "tags": ["\\ud83d"]}'
    )
    df, problems = v2_frame(document, {"id": "b"})
    assert df.index.tolist() == ["a\ufffd", "b"]
    assert df["name"].iloc[0] == "\ufffd"
    assert df["properties"].iloc[0] == {
        "\ufffdkey": "v\ufffd",
        "nested": '[[{"x": NaN}], Infinity]',
    }
    assert json.loads(df["tags"].iloc[0]) == ["\ufffd"]
    assert set(problems.counts) == {"created_at", "protected"}


def test_v2_values_that_cannot_be_rendered_are_replacement_characters() -> None:
    from imgframe.parse import v2_header_pairs

    deep: list = []  # type: ignore[type-arg]
    for _ in range(100_000):
        deep = [deep]
    pairs = dict(v2_header_pairs({"id": "a", "size": 10**5000, "deep": deep, "odd": {(1,): 2}}))
    assert pairs[b"x-image-meta-size"] == "\ufffd".encode()
    assert pairs[b"x-imgframe-property-deep"] == "\ufffd".encode()
    assert pairs[b"x-imgframe-property-odd"] == "\ufffd".encode()


def test_hostile_values_from_a_real_server_cost_only_their_own_cells() -> None:
    from imgframe import fetch_images
    from imgframe.testing import ADMIN_TOKEN, GlanceEmulator, make_fleet

    fleet = make_fleet(200, seed=5)
    odd = fleet.images[17:21]
    odd[0].deleted_at = "0001-01-01T00:00:00"  # type: ignore[assignment]
    odd[1].size = "+123"  # type: ignore[assignment]
    odd[2].min_ram = "١٢٣"  # type: ignore[assignment]
    odd[3].created_at = "2016-W01"  # type: ignore[assignment]
    ids = [image.id for image in fleet.images]
    with GlanceEmulator(fleet) as emu, pytest.warns(ImgframeParseWarning) as caught:
        df = fetch_images(ids, endpoint=emu.url, token=ADMIN_TOKEN, progress=False)
    assert len(df) == 200 and (df["http_status"] == 200).all() and df["error"].isna().all()
    assert df.loc[odd[1].id, "size"] == 123
    assert pd.isna(df.loc[odd[0].id, "deleted_at"]) and pd.isna(df.loc[odd[2].id, "min_ram"])
    assert pd.isna(df.loc[odd[3].id, "created_at"])
    message = " ".join(str(w.message) for w in caught if w.category is ImgframeParseWarning)
    for column, image in (("deleted_at", odd[0]), ("min_ram", odd[2]), ("created_at", odd[3])):
        assert f"{column} (1 value; ids '{image.id}'" in message
    assert df["created_at"].notna().sum() == 199
