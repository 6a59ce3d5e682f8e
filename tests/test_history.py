"""imgframe.History and partitioned Parquet datasets (imgframe/history.py, imgframe/io.py).

Snapshots are fetched over real HTTP from emulators on 127.0.0.1 (tests/conftest.py);
runs a second apart get their own ``fetched_at`` second.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import warnings
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import imgframe
from imgframe import provenance
from imgframe.history import History, folder_stamp
from imgframe.testing import ADMIN_TOKEN


def later_second() -> None:
    """Wait for the next wall-clock second: two runs must not share a fetched_at."""
    time.sleep(1.05 - (time.time() % 1.0))


@pytest.fixture(scope="module")
def regions(module_servers):
    return module_servers.glance(40, seed=21), module_servers.glance(25, seed=22)


def fetch_lab(regions) -> pd.DataFrame:
    east, west = regions
    return imgframe.fetch_fleet(
        [
            imgframe.Target("lab", "west", endpoint=west.url, token=ADMIN_TOKEN),
            imgframe.Target("lab", "east", endpoint=east.url, token=ADMIN_TOKEN),
        ],
        progress=False,
    )


@pytest.fixture(scope="module")
def snapshots(regions) -> list[pd.DataFrame]:
    """Two fleet runs, a second apart."""
    first = fetch_lab(regions)
    later_second()
    return [first, fetch_lab(regions)]


def with_fetched_at(df: pd.DataFrame, when: str) -> pd.DataFrame:
    out = df.copy()
    out.attrs["imgframe"]["fetched_at"] = when
    return out


# ------------------------------------------------------------------------ History
def test_snapshots_are_dated_hive_partitions_read_back_typed(snapshots, tmp_path) -> None:
    history = History(tmp_path / "h")
    for df in snapshots:
        history.add(df)
    listed = history.snapshots()
    stamps = [folder_stamp(df.attrs["imgframe"]["fetched_at"]) for df in snapshots]
    assert listed["stamp"].tolist() == [stamps[0], stamps[0], stamps[1], stamps[1]]
    assert listed["region"].tolist() == ["east", "west", "east", "west"]
    assert set(listed["cloud"]) == {"lab"} and listed["complete"].all()
    for _, row in listed.iterrows():
        assert Path(row["path"]).relative_to(history.folder).parts[:3] == (
            "cloud=lab",
            f"region={row['region']}",
            f"fetched={row['stamp']}",
        )
    rows = snapshots[0].groupby("region", observed=True).size()
    assert listed["rows"].tolist()[:2] == [rows["east"], rows["west"]]
    before, after = history.pair()
    for read, df in ((before, snapshots[0]), (after, snapshots[1])):
        pd.testing.assert_frame_equal(read, df)  # target order, dtypes, index, categories
        assert read.attrs["imgframe"] == df.attrs["imgframe"]
    pd.testing.assert_frame_equal(history.latest(), snapshots[1])


def test_get_takes_a_time_a_stamp_or_a_day(snapshots, tmp_path) -> None:
    history = History(tmp_path / "h")
    week = [with_fetched_at(snapshots[0], "2026-11-24T06:00:00Z"), snapshots[1]]
    week.append(with_fetched_at(snapshots[0], "2026-11-24T07:30:00Z"))
    for df in week:
        history.add(df)
    at = history.get("2026-11-24T06:00:00Z")
    assert at.attrs["imgframe"]["fetched_at"] == "2026-11-24T06:00:00Z"
    assert history.get(pd.Timestamp("2026-11-24 06:00")).attrs == at.attrs  # naive: UTC
    assert history.get("2026-11-24T060000Z").attrs == at.attrs
    day = history.get(dt.date(2026, 11, 24))  # the day's last
    assert day.attrs["imgframe"]["fetched_at"] == "2026-11-24T07:30:00Z"
    assert history.get("2026-11-24").attrs == day.attrs
    with pytest.raises(imgframe.ConfigError, match="no snapshot fetched at 2026-11-23"):
        history.get("2026-11-23")
    with pytest.raises(imgframe.ConfigError, match="cannot tell which snapshot"):
        history.get("last week")
    assert history.latest().attrs == snapshots[1].attrs  # by fetched_at, not by adding order


def test_the_same_second_twice_is_refused_and_the_first_kept(snapshots, tmp_path) -> None:
    history = History(tmp_path / "h")
    history.add(snapshots[0])
    before = sorted(p for p in history.folder.rglob("*") if p.is_file())
    with pytest.raises(imgframe.ConfigError, match="already has a snapshot fetched at"):
        history.add(snapshots[0])
    assert sorted(p for p in history.folder.rglob("*") if p.is_file()) == before
    assert len(history.snapshots()) == 2  # east and west of the one run


def test_a_frame_without_provenance_is_refused(snapshots, tmp_path) -> None:
    plain = snapshots[0].copy()
    plain.attrs.clear()
    with pytest.raises(imgframe.ConfigError, match="without provenance"):
        History(tmp_path / "h").add(plain)
    assert not (tmp_path / "h").exists()
    # One's own frame gets provenance made for it, and is then accepted.
    own = imgframe.frame_from_headers([{"X-Image-Meta-Id": "a"}])
    own.attrs["imgframe"] = provenance.build(
        own, fetched_at="2026-01-05T00:00:00Z", asked={"cloud": "mine"}
    )
    History(tmp_path / "h").add(own)
    assert History(tmp_path / "h").snapshots()["cloud"].tolist() == ["mine"]


def test_a_snapshot_missing_a_part_is_left_out_with_a_warning(snapshots, tmp_path) -> None:
    history = History(tmp_path / "h")
    history.add(snapshots[0])
    parts = history.add(snapshots[1])
    parts[0].unlink()  # as if the writer died between its renames
    with pytest.warns(imgframe.ImgframeWarning, match="1 of its 2 parts"):
        listed = history.snapshots()
    assert set(listed["stamp"]) == {folder_stamp(snapshots[0].attrs["imgframe"]["fetched_at"])}


def test_a_failed_write_leaves_no_part_behind(snapshots, tmp_path, monkeypatch) -> None:
    history = History(tmp_path / "h")
    history.add(snapshots[0])
    import pyarrow.parquet as pq

    real = pq.write_table
    calls = []

    def full_disk(table, where, **options):
        calls.append(where)
        if len(calls) == 2:  # the second part of the snapshot
            raise OSError(28, "No space left on device")
        return real(table, where, **options)

    monkeypatch.setattr("imgframe.history.pq.write_table", full_disk)
    with pytest.raises(OSError, match="No space left"):
        history.add(snapshots[1])
    monkeypatch.undo()
    files = [p for p in history.folder.rglob("*") if p.is_file() and p.suffix == ".parquet"]
    assert len(files) == 2  # the first snapshot's two parts; the failed one left none
    assert not [p for p in history.folder.rglob("*.imgframe-tmp")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(history.snapshots()) == 2


def test_single_endpoint_frames_are_named_by_host_and_cli_history(
    regions, tmp_path, cli, monkeypatch
) -> None:
    east, _ = regions
    monkeypatch.setenv("OS_AUTH_TOKEN", ADMIN_TOKEN)
    folder = tmp_path / "h"
    ran = cli(
        "fetch",
        "--endpoint",
        east.url,
        "--all",
        "-o",
        str(tmp_path / "a.csv"),
        "--history",
        str(folder),
    )
    assert ran.status == 0, ran.err
    assert "added snapshot" in ran.err
    listed = History(folder).snapshots()
    host = east.url.split("//", 1)[1]
    assert listed["cloud"].tolist() == [host] and listed["region"].isna().all()
    latest = History(folder).latest()
    pd.testing.assert_frame_equal(latest, imgframe.read_csv(tmp_path / "a.csv"))
    # a run that fails as a whole adds nothing
    monkeypatch.setenv("OS_AUTH_TOKEN", "wrong")
    failed = cli(
        "fetch",
        "--endpoint",
        east.url,
        "--all",
        "--history",
        str(folder),
        "--no-checkpoint",
    )
    assert failed.status == 5
    assert len(History(folder).snapshots()) == 1


def test_cli_history_adds_an_incomplete_run_as_incomplete(
    servers, tmp_path, cli, monkeypatch
) -> None:
    from imgframe.testing import Faults

    emu = servers.glance(
        30, seed=8, faults=Faults(transient_rate=0.3, transient_attempts=5, seed=2)
    )
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(i.id for i in emu.fleet.images))
    monkeypatch.setenv("OS_AUTH_TOKEN", ADMIN_TOKEN)
    folder = tmp_path / "h"
    ran = cli(
        "fetch",
        "--endpoint",
        emu.url,
        "--ids-file",
        str(ids),
        "--retries",
        "0",
        "--no-checkpoint",
        "--history",
        str(folder),
        "-o",
        str(tmp_path / "o.parquet"),
    )
    assert ran.status == 4, ran.err
    listed = History(folder).snapshots()
    assert listed["complete"].tolist() == [False]
    assert History(folder).latest().attrs["imgframe"]["counts"]["unread"] > 0


def test_cli_history_that_cannot_be_written_is_refused_before_fetching(
    regions, tmp_path, cli
) -> None:
    east, _ = regions
    east.reset_log()
    ran = cli("fetch", "--endpoint", east.url, "--all", "--history", str(tmp_path / "no" / "h"))
    assert ran.status == 2 and "does not exist" in ran.last_line
    assert east.request_log == []


# ------------------------------------------------------------------------ a plain dataset
def test_duckdb_queries_several_snapshots(snapshots, tmp_path) -> None:
    duckdb = pytest.importorskip("duckdb")
    history = History(tmp_path / "h")
    third = with_fetched_at(
        snapshots[0][snapshots[0]["is_public"].fillna(False)], "2026-11-01T00:00:00Z"
    )
    for df in (*snapshots, third):
        history.add(df)
    glob = (history.folder / "*" / "*" / "*" / "*.parquet").as_posix()
    rows = duckdb.sql(
        f"SELECT fetched, region, count(*) AS images, sum(CASE WHEN is_public THEN 1 ELSE 0 END) "
        f"AS public FROM read_parquet('{glob}', hive_partitioning = true) "
        "GROUP BY fetched, region ORDER BY fetched, region"
    ).fetchall()
    expected = []
    for df in sorted((*snapshots, third), key=lambda d: d.attrs["imgframe"]["fetched_at"]):
        stamp = folder_stamp(df.attrs["imgframe"]["fetched_at"])
        for region, part in df.groupby("region", observed=True):
            expected.append((stamp, region, len(part), int(part["is_public"].fillna(False).sum())))
    assert rows == sorted(expected)


def test_pyarrow_dataset_and_read_parquet_read_the_folder(snapshots, tmp_path) -> None:
    history = History(tmp_path / "h")
    for df in snapshots:
        history.add(df)
    table = ds.dataset(history.folder, partitioning="hive").to_table()
    assert table.num_rows == sum(len(df) for df in snapshots)
    assert set(table.column("fetched").to_pylist()) == set(history.snapshots()["stamp"])
    assert history.dataset().to_table().num_rows == table.num_rows
    every = imgframe.read_parquet(history.folder)
    assert len(every) == table.num_rows and str(every["region"].dtype) == "category"
    assert every["fetched"].nunique() == 2


def test_history_dataset_reads_a_history_whose_regions_are_all_missing(regions, tmp_path) -> None:
    east, _ = regions
    history = History(tmp_path / "h")
    history.add(imgframe.fetch_images(endpoint=east.url, token=ADMIN_TOKEN, progress=False))
    with pytest.raises(pa.ArrowInvalid):  # what pyarrow's own inference makes of it
        ds.dataset(history.folder, partitioning="hive").to_table()
    assert history.dataset().to_table().column("region").null_count > 0


# ------------------------------------------------------------------------ partitioned Parquet
def test_pandas_own_partitioned_write_cannot_be_read_back_but_imgframe_reads_it(
    snapshots, tmp_path
) -> None:
    df = snapshots[0].drop(columns=["properties"])
    df.loc[df.index[:3], "owner"] = None  # images whose owner is unknown
    df.to_parquet(tmp_path / "pandas", partition_cols=["owner"])
    with pytest.raises(pa.ArrowInvalid, match="Cannot yet unify dictionaries with nulls"):
        pd.read_parquet(tmp_path / "pandas")
    back = imgframe.read_parquet(tmp_path / "pandas")
    assert str(back["owner"].dtype) == "category" and len(back) == len(df)
    assert back["owner"].isna().sum() == df["owner"].isna().sum() > 0


@pytest.mark.parametrize("columns", [["cloud", "region"], ["owner"], ["status", "is_public"]])
def test_partitioned_to_parquet_round_trips(snapshots, tmp_path, columns) -> None:
    df = snapshots[0]
    folder = df.img.to_parquet(tmp_path / "ds", partition_cols=columns)
    back = imgframe.read_parquet(folder)
    assert back.index.is_unique and set(back.index) == set(df.index)
    pd.testing.assert_frame_equal(back.loc[df.index], df)  # dtypes, index, categories
    assert back.attrs["imgframe"] == df.attrs["imgframe"]
    # rows grouped by partition, each group in its written order
    first = back.index.get_indexer(df.index)
    for _, group in df.groupby(columns, observed=True, dropna=False):
        positions = first[df.index.get_indexer(group.index)]
        assert list(positions) == list(range(positions.min(), positions.min() + len(group)))


def test_partitioned_write_replaces_a_dataset_but_not_a_folder_of_other_files(
    snapshots, tmp_path
) -> None:
    folder = tmp_path / "ds"
    snapshots[0].img.to_parquet(folder, partition_cols=["region"])
    snapshots[1].iloc[:5].img.to_parquet(folder, partition_cols=["region"])
    assert len(imgframe.read_parquet(folder)) == 5
    other = tmp_path / "home"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(imgframe.ConfigError, match="holds other files"):
        snapshots[0].img.to_parquet(other, partition_cols=["region"])
    assert (other / "notes.txt").read_text() == "mine"
    with pytest.raises(imgframe.ConfigError, match="cannot partition by 'properties'"):
        snapshots[0].img.to_parquet(tmp_path / "x", partition_cols=["properties"])


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from([None, None, None, "active", "queued", "killed"]),
            st.sampled_from([None, None, "p1", "p/2", "p 3", "ü4"]),
            st.sampled_from([None, "true", "false"]),
        ),
        min_size=0,
        max_size=25,
    ),
    columns=st.sampled_from([["status"], ["owner"], ["owner", "status"], ["is_public", "owner"]]),
)
def test_na_heavy_categories_round_trip_through_partitions(tmp_path_factory, rows, columns) -> None:
    headers = []
    for n, (status, owner, public) in enumerate(rows):
        header = {"X-Image-Meta-Id": f"img-{n}"}
        for name, value in (("Status", status), ("Owner", owner), ("Is_public", public)):
            if value is not None:
                header[f"X-Image-Meta-{name}"] = value
        headers.append(header)
    df = imgframe.frame_from_headers(headers)
    if len(df):  # an empty Parquet column keeps no dictionary, in one file or many
        df["owner"] = df["owner"].cat.add_categories(pd.Index(["unused"], dtype="string"))
    folder = tmp_path_factory.mktemp("ds") / "ds"
    back = imgframe.read_parquet(imgframe.to_parquet(df, folder, partition_cols=columns))
    pd.testing.assert_frame_equal(back.loc[df.index] if len(df) else back, df)
    assert json.dumps(back.attrs) == "{}"


def test_diff_of_a_history_is_what_changed_between_its_last_two_runs(servers, tmp_path) -> None:
    emulator = servers.glance(30, seed=23)
    ids = [image.id for image in emulator.fleet.images]
    private = [image.id for image in emulator.fleet.images if not image.is_public]
    history = History(tmp_path / "h")
    history.add(imgframe.fetch_images(ids, endpoint=emulator.url, token=ADMIN_TOKEN))
    emulator.publish(private[0])
    emulator.change_owner(private[1], "someone-else")
    later_second()
    history.add(imgframe.fetch_images(ids, endpoint=emulator.url, token=ADMIN_TOKEN))
    changes = history.diff()
    assert set(zip(changes["image_id"], changes["change"].astype(str), strict=True)) == {
        (private[0], "became_public"),
        (private[1], "owner_changed"),
    }
    pd.testing.assert_frame_equal(changes, imgframe.diff(*history.pair()))
