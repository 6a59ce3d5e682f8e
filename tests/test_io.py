"""Export and read-back: CSV, Parquet and JSON give back exactly the frame that was written,
and CSV never hands a spreadsheet a formula."""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

import imgframe
from imgframe import ConfigError, ImgframeParseWarning, InvalidInputError
from imgframe.frame import concat_frames
from imgframe.io import FORMULA_STARTS, read, read_csv, read_json, read_parquet, to_csv, write
from imgframe.schema import FIELDS, Kind, columns, dtypes
from imgframe.testing import ADMIN_TOKEN, Faults, GlanceEmulator, make_fleet

SUFFIXES = (".csv", ".parquet", ".json")
READERS: dict[str, Callable[[Path], pd.DataFrame]] = {
    ".csv": read_csv,
    ".parquet": read_parquet,
    ".json": read_json,
}
UNKNOWN_IDS = ["00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002"]


@pytest.fixture(scope="module")
def fetched() -> pd.DataFrame:
    """A real fetch: emulator fleet (non-ASCII and formula-like names, empty property
    values, microsecond timestamps, malformed values that become NA), unknown ids (404)
    and an invalid id, so failed rows with NA metadata and filled status/error are in it."""
    fleet = make_fleet(400, seed=21)
    ids = [image.id for image in fleet.images] + UNKNOWN_IDS + ["not/an/id"]
    with (
        GlanceEmulator(fleet, faults=Faults(malformed_rate=0.05, seed=2)) as emu,
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", ImgframeParseWarning)
        df = imgframe.fetch_images(ids, endpoint=emu.url, token=ADMIN_TOKEN, progress=False)
    assert (df.loc[UNKNOWN_IDS, "http_status"] == 404).all()
    assert df.loc["not/an/id", "error"] == "invalid image id"
    return df


def meta(image_id: str, **values: str) -> dict[str, str]:
    headers = {"X-Image-Meta-Id": image_id}
    for column, value in values.items():
        headers[f"X-Image-Meta-{column}"] = value
    return headers


# Names a tenant may choose that a CSV round-trip could break.
AWKWARD_NAMES = {
    "quote": "'quoted",
    "two-quotes": "''",
    "one-quote": "'",
    "equals": '=HYPERLINK("http://example.invalid","x")',
    "plus": "+1+1",
    "minus": "-2+3",
    "at": "@SUM(1,1)",
    "tab": "\tTab",
    "cr": "\rCR",
    "empty": "",
    "na-word": "NA",
    "null-word": "null",
    "none-word": "None",
    "nan-word": "NaN",
    "spaces": "  padded  ",
    "comma-newline": 'a,b\nc "d"',
    "non-ascii": "образ-niño-日本語",
    "html": "<script>alert(1)</script>",
}


@pytest.fixture(scope="module")
def awkward() -> pd.DataFrame:
    """Header-built rows for every case the fleet may not hold."""
    headers = [meta(f"name-{key}", Name=name) for key, name in AWKWARD_NAMES.items()]
    headers += [
        meta("no-name"),  # name NA, everything NA, properties {}
        meta(
            "=id-formula",
            Owner="=evil",
            Status="",  # category "" vs NA
            Checksum="",
            **{"Property-Empty": "", "Property-Formula": "=1", "Property-Ünï": "ç"},
        ),
        # size > 2**53: it would lose digits if any reader passed it through float64
        meta("-leading-dash-id", Min_ram="-1", Size="900719925474099317", Is_public="yes"),
        meta("'quoted-id", Created_at="2016-05-22T06:04:20.425843", Protected="False"),
        meta("no-fraction", Created_at="2016-05-22 06:04:20", Deleted_at="2020-01-01T00:00:00Z"),
    ]
    return imgframe.frame_from_headers(headers)


def round_trip(df: pd.DataFrame, suffix: str, folder: Path) -> pd.DataFrame:
    path = write(df, folder / f"images{suffix}")
    return READERS[suffix](path)


def assert_contract(df: pd.DataFrame) -> None:
    assert df.index.name == "id" and str(df.index.dtype) == "string"
    assert list(df.columns) == columns()
    expected = dtypes()
    for column, dtype in df.dtypes.items():
        assert dtype == expected[column], column  # CategoricalDtype == "category", any categories


# --- round-trips ------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_fetched_frame_round_trips_exactly(fetched, suffix: str, tmp_path: Path) -> None:
    back = round_trip(fetched, suffix, tmp_path)
    assert_contract(back)
    assert_frame_equal(back, fetched)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_awkward_values_round_trip_exactly(awkward, suffix: str, tmp_path: Path) -> None:
    back = round_trip(awkward, suffix, tmp_path)
    assert_frame_equal(back, awkward)
    assert back.loc["name-empty", "name"] == ""
    assert pd.isna(back.loc["no-name", "name"])
    assert back.loc["no-name", "properties"] == {}
    assert back.loc["=id-formula", "properties"]["empty"] == ""


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_fetched_and_header_frames_together_round_trip(
    fetched, awkward, suffix: str, tmp_path: Path
) -> None:
    both = concat_frames([fetched, awkward])
    assert_frame_equal(round_trip(both, suffix, tmp_path), both)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_nanoseconds_survive(awkward, suffix: str, tmp_path: Path) -> None:
    df = awkward.copy()
    df["updated_at"] = pd.Timestamp("2024-02-29T23:59:59.123456789Z")
    assert_frame_equal(round_trip(df, suffix, tmp_path), df)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_empty_frame_round_trips(suffix: str, tmp_path: Path) -> None:
    empty = imgframe.frame_from_headers([])
    assert_frame_equal(round_trip(empty, suffix, tmp_path), empty)


def test_timestamps_are_iso_utc_with_z_and_microseconds(fetched, tmp_path: Path) -> None:
    rows = list(csv.DictReader(to_csv(fetched, tmp_path / "i.csv").open(encoding="utf-8")))
    stamp = rows[0]["created_at"]
    assert stamp.endswith("Z") and len(stamp) == len("2016-05-22T06:04:20.425843Z")
    assert pd.Timestamp(stamp) == fetched["created_at"].iloc[0]


def test_parquet_keeps_unused_categories_of_a_filtered_frame(fetched, tmp_path: Path) -> None:
    active = fetched[fetched["status"] == "active"]
    assert_frame_equal(round_trip(active, ".parquet", tmp_path), active)


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_text_formats_keep_only_categories_in_use(fetched, suffix: str, tmp_path: Path) -> None:
    """Documented limit: CSV and JSON hold values, not a category list; categories no row
    uses (kept in memory after filtering) come back as the sorted values present."""
    active = fetched[fetched["status"] == "active"]
    category_columns = [f.column for f in FIELDS if f.kind is Kind.CATEGORY]
    expected = active.assign(
        **{c: active[c].cat.remove_unused_categories() for c in category_columns}
    )
    assert_frame_equal(round_trip(active, suffix, tmp_path), expected)


def test_unsafe_csv_cannot_tell_empty_string_from_na(awkward, tmp_path: Path) -> None:
    """Documented limit: without the ``'`` marks both are an empty cell and read as NA;
    everything else round-trips."""
    back = read_csv(to_csv(awkward, tmp_path / "raw.csv", safe=False), safe=False)
    assert pd.isna(back.loc["name-empty", "name"])
    assert back.loc["name-quote", "name"] == "'quoted"
    expected = awkward.copy()
    for column in ("name", "checksum"):
        expected[column] = expected[column].replace("", pd.NA)
    expected["status"] = expected["status"].astype("string").replace("", pd.NA).astype("category")
    assert_frame_equal(back, expected)


def test_read_by_extension_and_write_by_extension_agree(awkward, tmp_path: Path) -> None:
    for suffix in SUFFIXES:
        assert_frame_equal(read(write(awkward, tmp_path / f"x{suffix.upper()}")), awkward)


def test_unknown_extension_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\.csv, \.parquet or \.json"):
        read(tmp_path / "images.xlsx")


def test_csv_with_a_non_integer_size_is_a_clear_error() -> None:
    with pytest.raises(InvalidInputError, match="twelve"):
        read_csv(io.StringIO("id,size\na,twelve\n"))


def test_columns_imgframe_does_not_know_are_kept(awkward, tmp_path: Path) -> None:
    df = awkward.assign(note="=cmd|' /C calc'!A0")
    back = read_csv(to_csv(df, tmp_path / "n.csv"))
    assert back["note"].tolist() == df["note"].tolist()
    assert_frame_equal(back.drop(columns="note"), awkward)


# --- CSV injection ----------------------------------------------------------------------


def raw_cells(path: Path) -> dict[str, dict[str, str]]:
    """The CSV as a spreadsheet receives it: every cell's raw text, by id cell."""
    with path.open(encoding="utf-8", newline="") as stream:
        return {row["id"]: row for row in csv.DictReader(stream)}


@pytest.mark.parametrize("start", FORMULA_STARTS)
def test_dangerous_leading_character_is_neutralised_and_restored(
    start: str, tmp_path: Path
) -> None:
    name = f"{start}HYPERLINK(1)"
    df = imgframe.frame_from_headers(
        [meta("img", Name=name, Owner=f"{start}owner", Checksum=f"{start}sum")]
    )
    path = to_csv(df, tmp_path / "i.csv")
    row = raw_cells(path)["img"]
    for column, value in (("name", name), ("owner", f"{start}owner"), ("checksum", f"{start}sum")):
        assert row[column] == "'" + value  # a spreadsheet shows text, never runs a formula
        assert not row[column].startswith(FORMULA_STARTS)
    back = read_csv(path)
    assert back.loc["img", "name"] == name
    assert_frame_equal(back, df)


def test_no_text_cell_in_the_file_starts_a_formula(fetched, awkward, tmp_path: Path) -> None:
    path = to_csv(concat_frames([fetched, awkward]), tmp_path / "all.csv")
    with path.open(encoding="utf-8", newline="") as stream:
        cells = [cell for row in csv.reader(stream) for cell in row]
    text_columns = {f.column for f in FIELDS if f.kind in (Kind.TEXT, Kind.CATEGORY)}
    assert text_columns  # the check below looks at every cell, numbers included
    risky = [cell for cell in cells if cell.startswith(FORMULA_STARTS)]
    assert risky == ["-1"]  # min_ram -1 of "-leading-dash-id": a number, left readable


def test_ids_that_look_like_formulas_are_neutralised(awkward, tmp_path: Path) -> None:
    path = to_csv(awkward, tmp_path / "i.csv")
    assert "'=id-formula" in raw_cells(path)
    assert "''quoted-id" in raw_cells(path)
    assert "'-leading-dash-id" in raw_cells(path)
    assert read_csv(path).index.tolist() == awkward.index.tolist()


def test_numbers_stay_numbers_in_the_csv(awkward, tmp_path: Path) -> None:
    row = raw_cells(to_csv(awkward, tmp_path / "i.csv"))["'-leading-dash-id"]
    assert row["min_ram"] == "-1" and row["size"] == "900719925474099317"
    assert row["is_public"] == "True"


def test_empty_string_is_one_quote_and_na_is_an_empty_cell(awkward, tmp_path: Path) -> None:
    cells = raw_cells(to_csv(awkward, tmp_path / "i.csv"))
    assert cells["name-empty"]["name"] == "'"
    assert cells["no-name"]["name"] == ""


def test_properties_are_a_json_object_per_row(awkward, tmp_path: Path) -> None:
    cells = raw_cells(to_csv(awkward, tmp_path / "i.csv"))
    assert json.loads(cells["'=id-formula"]["properties"]) == {
        "empty": "",
        "formula": "=1",
        "ünï": "ç",
    }
    assert cells["no-name"]["properties"] == "{}"


def test_unknown_text_columns_are_neutralised_too(awkward, tmp_path: Path) -> None:
    """A findings table's ``detail`` may quote a tenant's name: it gets the same care."""
    df = awkward.assign(detail="=cmd|' /C calc'!A0", count=-3)
    row = raw_cells(to_csv(df, tmp_path / "d.csv"))["no-name"]
    assert row["detail"] == "'=cmd|' /C calc'!A0"
    assert row["count"] == "-3"


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_frame_without_ids_gets_no_index_column(suffix: str, tmp_path: Path) -> None:
    """A findings table (default 0, 1, 2 ... index) is written as its columns only."""
    findings = pd.DataFrame({"rule": ["stale", "broken"], "image_id": ["a", "=b"]})
    back = round_trip(findings, suffix, tmp_path)
    assert list(back.columns) == ["rule", "image_id"]
    assert back["image_id"].tolist() == ["a", "=b"]
    assert isinstance(back.index, pd.RangeIndex)


# --- files land whole or not at all -------------------------------------------------------


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_writing_over_a_file_replaces_it_and_leaves_no_temporary_file(
    fetched, suffix: str, tmp_path: Path
) -> None:
    target = tmp_path / f"images{suffix}"
    target.write_text("an older snapshot")
    write(fetched, target)
    assert_frame_equal(read(target), fetched)
    # beside a CSV or JSON table, its provenance sidecar (imgframe/provenance.py)
    sidecar = [] if suffix == ".parquet" else [target.name + ".meta.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, *sidecar])


def test_a_writer_that_fails_leaves_the_old_file_and_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "images.parquet"
    target.write_bytes(b"old")
    unwritable = pd.DataFrame({"x": [object(), 1]})  # pyarrow cannot type this column
    with pytest.raises(Exception, match="object"):
        imgframe.to_parquet(unwritable, target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_a_stream_stays_a_stream(fetched) -> None:
    buffer = io.StringIO()
    assert to_csv(fetched, buffer) is None
    assert_frame_equal(read_csv(io.StringIO(buffer.getvalue())), fetched)


def test_kill_9_while_a_big_csv_is_written_leaves_the_old_file_or_the_new_one(
    fetched, tmp_path: Path
) -> None:
    import signal
    import subprocess
    import sys
    import time

    from imgframe.atomic import TEMP_SUFFIX

    copies = 60  # ~24,000 rows: a write that takes a noticeable time (~0.3 s)
    big = concat_frames([fetched.set_axis(fetched.index + f"-{n}", axis=0) for n in range(copies)])
    source = imgframe.to_parquet(big, tmp_path / "big.parquet")
    target = tmp_path / "snapshot.csv"
    old = b"id,name\r\nold,snapshot\r\n"
    writer = (
        "import sys, imgframe; df = imgframe.read_parquet(sys.argv[1]); "
        "print('ready', flush=True); imgframe.to_csv(df, sys.argv[2])"
    )

    def temporary_files() -> list[Path]:
        return [p for p in tmp_path.iterdir() if p.name.endswith(TEMP_SUFFIX)]

    for delay in (None, 0.2):  # kill once the temporary file holds data, then later
        target.write_bytes(old)
        for stale in temporary_files():  # what an earlier kill -9 left (never read)
            stale.unlink()
        process = subprocess.Popen(
            [sys.executable, "-c", writer, str(source), str(target)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
            if delay is None:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and not any(
                    p.stat().st_size > 0 for p in temporary_files()
                ):
                    time.sleep(0.005)
            else:
                time.sleep(delay)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
        finally:
            process.stdout.close()  # type: ignore[union-attr]
        if delay is None:  # killed mid-write: the old file, the temporary one cut short
            assert target.read_bytes() == old and temporary_files()
        elif target.read_bytes() != old:  # the write had finished: the new file, whole
            assert len(read_csv(target)) == len(big)
    for stale in temporary_files():  # the second kill may have cut a slow write short too
        stale.unlink()
    done = subprocess.run([sys.executable, "-c", writer, str(source), str(target)], timeout=120)
    assert done.returncode == 0
    assert len(read_csv(target)) == len(big)
    assert not temporary_files()  # a finished write leaves no temporary file behind


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_truncated_file_is_not_a_readable_table(fetched, suffix: str, tmp_path: Path) -> None:
    path = write(fetched, tmp_path / f"images{suffix}")
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 3):
        path.write_bytes(data[:cut])
        with pytest.raises(InvalidInputError, match="not a readable"):
            read(path)


def test_a_damaged_parquet_page_is_not_a_readable_table(fetched, tmp_path: Path) -> None:
    path = write(fetched, tmp_path / "images.parquet")
    data = bytearray(path.read_bytes())
    data[8:400] = bytes(392)  # the first pages, footer intact
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidInputError, match="not a readable Parquet file"):
        read(path)


def test_json_that_is_not_a_list_of_records_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "images.json"
    path.write_text('{"id": "a"}')
    with pytest.raises(InvalidInputError, match="not an images table"):
        read(path)
