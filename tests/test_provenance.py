"""Provenance: ``df.attrs["imgframe"]`` from every fetch, kept by every file, and the
audit clock it gives (imgframe/provenance.py, imgframe/io.py, imgframe/audits.py).

Every fetch is real HTTP against the emulator on 127.0.0.1 (tests/conftest.py).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import imgframe
from imgframe import provenance
from imgframe.checkpoint import read_manifest
from imgframe.testing import ADMIN_TOKEN, AccessKey, Faults, Token
from imgframe.testing.fleet import Fleet

FLEET = {"n": 60, "seed": 12}
FORMATS = (".csv", ".json", ".parquet")


def ids_of(fleet: Fleet) -> list[str]:
    return [image.id for image in fleet.images]


def stamp_now() -> pd.Timestamp:
    return pd.Timestamp.now("UTC").floor("s")


@pytest.fixture(scope="module")
def fetched(emulator, fleet) -> pd.DataFrame:
    """One run of every id plus a missing and an invalid one."""
    return imgframe.fetch_images(
        [*ids_of(fleet), "no-such-image", "../etc"],
        endpoint=emulator.url + "/v1/",
        token=ADMIN_TOKEN,
        progress=False,
    )


# ------------------------------------------------------------------------ what is kept
def test_fetch_images_records_when_and_what_was_asked(emulator, fleet) -> None:
    before = stamp_now()
    df = imgframe.fetch_images(
        [*ids_of(fleet), "no-such-image", "../etc"],
        endpoint=emulator.url + "/v1/",
        token=ADMIN_TOKEN,
        progress=False,
    )
    after = stamp_now()
    found = df.attrs[provenance.ATTR]
    assert before <= pd.Timestamp(found["fetched_at"]) <= pd.Timestamp(found["finished_at"])
    assert pd.Timestamp(found["finished_at"]) <= after
    assert found["fetched_at"].endswith("Z")
    assert found["asked"] == {
        "endpoint": emulator.url,  # normalised: no /v1
        "api": "v1",
        "api_used": "v1",
        "mode": "ids",
        "include_deleted": False,
        "verify_with_head": False,
    }
    read = int((df["http_status"].eq(200) & df["error"].isna()).sum())
    assert found["counts"] == {
        "rows": len(fleet) + 2,
        "read": read,
        "not_found": len(fleet) + 1 - read,  # the fleet's deleted images and no-such-image
        "invalid": 1,
        "unread": 0,
    }
    assert read > len(fleet) // 2
    assert found["complete"] is True
    assert found["imgframe_version"] == imgframe.__version__
    assert found["provenance_version"] == provenance.VERSION
    assert "resumed" not in found


def test_a_listing_that_switched_to_v2_says_so(servers) -> None:
    emu = servers.glance(20, seed=3, api="v2")
    df = imgframe.fetch_images(endpoint=emu.url, token=ADMIN_TOKEN, api="auto", progress=False)
    asked = df.attrs["imgframe"]["asked"]
    assert (asked["api"], asked["api_used"], asked["mode"]) == ("auto", "v2", "listing")
    assert df.attrs["imgframe"]["counts"]["rows"] == len(df) > 0


def test_an_incomplete_run_says_complete_false_and_its_resume_says_resumed(
    servers, fleet, tmp_path
) -> None:
    # Each faulty id fails its first HEAD only: without retries the first run is
    # incomplete, and the same call again (same checkpoint) completes it.
    emu = servers.glance(fleet, faults=Faults(transient_rate=0.3, transient_attempts=1, seed=4))
    options = {"endpoint": emu.url, "token": ADMIN_TOKEN, "retries": 0, "progress": False}
    folder = tmp_path / "ckpt"
    first = imgframe.fetch_images(ids_of(fleet), checkpoint=folder, **options)
    one = first.attrs["imgframe"]
    assert one["complete"] is False and one["counts"]["unread"] > 0
    stored = read_manifest(folder).rows
    second = imgframe.fetch_images(ids_of(fleet), checkpoint=folder, **options)
    two = second.attrs["imgframe"]
    assert two["complete"] is True and two["counts"]["unread"] == 0
    assert (
        two["resumed"] == {"checkpoint_rows": stored}
        and stored == len(fleet) - one["counts"]["unread"]
    )
    assert two["fetched_at"] >= one["finished_at"]


def test_a_resumed_fleet_counts_the_rows_its_checkpoints_held(servers, tmp_path) -> None:
    faulty = Faults(transient_rate=0.3, transient_attempts=1, seed=6)
    east, west = servers.glance(30, seed=1, faults=faulty), servers.glance(20, seed=2)
    targets = [
        imgframe.Target("lab", "east", endpoint=east.url, token=ADMIN_TOKEN),
        imgframe.Target("lab", "west", endpoint=west.url, token=ADMIN_TOKEN),
    ]
    ids = [i.id for i in east.fleet.images] + [i.id for i in west.fleet.images]
    options = {"ids": ids, "retries": 0, "progress": False, "checkpoint": tmp_path / "c"}
    first = imgframe.fetch_fleet(targets, **options).attrs["imgframe"]
    assert first["complete"] is False and "resumed" not in first
    second = imgframe.fetch_fleet(targets, **options).attrs["imgframe"]
    assert second["complete"] is True
    held = [t["checkpoint_rows"] for t in second["asked"]["targets"]]
    assert second["resumed"] == {"checkpoint_rows": sum(held)}
    # every target stored every definitive row of the first run
    assert sum(held) == 2 * len(ids) - first["counts"]["unread"]


def test_fleet_provenance_lists_its_targets(servers) -> None:
    east, west = servers.glance(30, seed=1), servers.glance(20, seed=2)
    targets = [
        imgframe.Target("lab", "east", endpoint=east.url, token=ADMIN_TOKEN),
        imgframe.Target("lab", "west", endpoint=west.url, token=ADMIN_TOKEN),
        imgframe.Target("lab", "down", endpoint="http://127.0.0.1:9", token=ADMIN_TOKEN),
    ]
    with pytest.warns(imgframe.FleetWarning):
        df = imgframe.fetch_fleet(targets, errors="warn", retries=0, progress=False)
    found = df.attrs["imgframe"]
    assert [(t["region"], t["failed"]) for t in found["asked"]["targets"]] == [
        ("east", False),
        ("west", False),
        ("down", True),
    ]
    by_region = df.groupby("region", observed=True).size().to_dict()
    assert [t.get("rows") for t in found["asked"]["targets"]] == [
        by_region["east"],
        by_region["west"],
        None,  # a listing that failed has no rows
    ]
    assert found["asked"]["targets"][0]["endpoint"] == east.url
    assert found["counts"]["rows"] == len(df) and found["counts"]["unread"] == 0
    assert found["complete"] is False  # a target failed, though every row is definitive
    assert found["asked"]["mode"] == "listing"


def test_pandas_operations_keep_provenance_and_concat_of_two_runs_drops_it(
    fetched, emulator, fleet
) -> None:
    found = fetched.attrs["imgframe"]
    public = fetched[fetched["is_public"].fillna(False)]
    assert public.attrs["imgframe"] == found
    assert fetched.copy().attrs["imgframe"] == found
    assert fetched.head(3).attrs["imgframe"] == found
    parts = [fetched.iloc[:10], fetched.iloc[10:]]
    assert pd.concat(parts).attrs["imgframe"] == found  # parts of one run: kept
    other = imgframe.fetch_images(ids_of(fleet)[:3], endpoint=emulator.url, token=ADMIN_TOKEN)
    assert "imgframe" not in pd.concat([fetched, other]).attrs  # two runs: no single story
    # a deep copy: changing the copy's provenance leaves the original alone
    changed = fetched.copy()
    changed.attrs["imgframe"]["asked"]["mode"] = "changed"
    assert fetched.attrs["imgframe"]["asked"]["mode"] == "ids"


# ------------------------------------------------------------------------ files
@pytest.mark.parametrize("suffix", FORMATS)
def test_every_format_round_trips_the_frame_and_its_provenance(fetched, tmp_path, suffix) -> None:
    path = imgframe.io.write(fetched, tmp_path / f"images{suffix}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = imgframe.read(path)
    pd.testing.assert_frame_equal(back, fetched, check_categorical=suffix == ".parquet")
    assert back.attrs["imgframe"] == fetched.attrs["imgframe"]
    sidecar = tmp_path / f"images{suffix}.meta.json"
    assert sidecar.exists() == (suffix != ".parquet")


def test_parquet_keeps_pandas_metadata_beside_provenance(fetched, tmp_path) -> None:
    import pyarrow.parquet as pq

    metadata = pq.read_schema(imgframe.to_parquet(fetched, tmp_path / "i.parquet")).metadata
    assert b"pandas" in metadata
    assert json.loads(metadata[b"imgframe"]) == fetched.attrs["imgframe"]


@pytest.mark.parametrize("suffix", FORMATS)
def test_a_frame_without_provenance_writes_none_and_removes_an_old_sidecar(
    fetched, tmp_path, suffix
) -> None:
    path = tmp_path / f"images{suffix}"
    imgframe.io.write(fetched, path)
    plain = fetched.copy()
    plain.attrs.clear()
    imgframe.io.write(plain, path)
    assert not (tmp_path / f"images{suffix}.meta.json").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert imgframe.read(path).attrs == {}


def test_a_sidecar_beside_another_version_of_the_file_is_not_believed(fetched, tmp_path) -> None:
    path = imgframe.to_csv(fetched, tmp_path / "images.csv")
    # the table replaced by a tool that knows nothing of the sidecar
    path.write_bytes(path.read_bytes().replace(b"\r\n", b"\n"))
    with pytest.warns(imgframe.ImgframeWarning, match="images.csv.meta.json.*another version"):
        back = imgframe.read_csv(path)
    assert back.attrs == {}


#: Provenance that validates: the hostile sidecars spoil one field of it.
GOOD = {
    "fetched_at": "2026-01-01T00:00:00Z",
    "asked": {},
    "counts": dict.fromkeys(provenance.COUNT_KEYS, 0),
    "complete": True,
    "imgframe_version": "0",
}


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    hostile=st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=12), inner, max_size=4)
            ),
            max_leaves=30,
        ).map(lambda v: json.dumps(v).encode()),
        st.builds(  # provenance-shaped, with one field spoiled
            lambda key, value: json.dumps(
                {
                    "imgframe": {**GOOD, key: value},
                    "file": {"size": 0, "sha256": "0"},
                }
            ).encode(),
            st.sampled_from(sorted(GOOD)),
            st.none() | st.integers() | st.text(max_size=30) | st.lists(st.integers()),
        ),
        st.just(b"[" * 100_000 + b"]" * 100_000),
    )
)
def test_hostile_sidecars_are_ignored_with_one_warning(tmp_path_factory, hostile: bytes) -> None:
    folder = tmp_path_factory.mktemp("hostile")
    path = imgframe.to_csv(
        imgframe.frame_from_headers([{"X-Image-Meta-Id": "a"}]), folder / "t.csv"
    )
    (folder / "t.csv.meta.json").write_bytes(hostile)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        back = imgframe.read_csv(path)
    assert back.attrs == {}
    assert len(caught) == 1 and issubclass(caught[0].category, imgframe.ImgframeWarning)
    assert "t.csv.meta.json" in str(caught[0].message)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    hostile=st.binary(max_size=200)
    | st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=20,
    ).map(lambda v: json.dumps(v).encode())
)
def test_hostile_parquet_metadata_is_ignored_with_one_warning(tmp_path_factory, hostile) -> None:
    import pyarrow.parquet as pq

    folder = tmp_path_factory.mktemp("hostile")
    table = imgframe.io.arrow_table(imgframe.frame_from_headers([{"X-Image-Meta-Id": "a"}]))
    table = table.replace_schema_metadata({**table.schema.metadata, b"imgframe": hostile})
    pq.write_table(table, folder / "t.parquet")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        back = imgframe.read_parquet(folder / "t.parquet")
    assert back.attrs == {} and back.index.tolist() == ["a"]
    assert len(caught) == 1 and "t.parquet" in str(caught[0].message)


# ------------------------------------------------------------------------ secrets
SECRET_TOKEN = "tok-N3ver-Wr1tten-8c2d"
SECRET_AK, SECRET_SK = "HPUAPROVKEY00009", "sk-Pr0v-s3cret-4e4e"


def _written(df: pd.DataFrame, folder: Path) -> list[bytes]:
    """Every byte imgframe writes for ``df``: the three formats, sidecars, a history."""
    folder.mkdir()
    for suffix in FORMATS:
        imgframe.io.write(df, folder / f"t{suffix}")
    imgframe.History(folder / "history").add(df)
    return [p.read_bytes() for p in folder.rglob("*") if p.is_file()]


def test_no_token_key_or_password_is_ever_written(
    servers, fleet, tmp_path, use_clouds_yaml
) -> None:
    pytest.importorskip("huaweicloudsdkcore")
    emu = servers.glance(
        fleet,
        tokens={SECRET_TOKEN: Token(project_id="admin", admin=True)},
        access_keys={SECRET_AK: AccessKey(SECRET_SK, "p-admin", admin=True)},
    )
    keystone = servers.keystone({"east": emu})
    use_clouds_yaml({"clouds": {"lab": {"auth": keystone.auth(), "region_name": "east"}}})
    ids = ids_of(fleet)[:10]
    runs = {
        "string": imgframe.fetch_images(ids, endpoint=emu.url, token=SECRET_TOKEN),
        "callable": imgframe.fetch_images(ids, endpoint=emu.url, token=lambda: SECRET_TOKEN),
        "aksk": imgframe.fetch_images(
            ids, endpoint=emu.url, token=imgframe.HuaweiAkSk(SECRET_AK, SECRET_SK, "p-admin")
        ),
        "cloud": imgframe.fetch_images(ids, cloud="lab", region="east"),
        "fleet": imgframe.fetch_fleet(["lab"], ids=ids),
    }
    secrets = [SECRET_TOKEN, SECRET_AK, SECRET_SK, keystone.password, *keystone.issued]
    assert len(keystone.issued) >= 2
    for name, df in runs.items():
        assert df.attrs["imgframe"]["counts"]["read"] > 0, name
        blobs = [json.dumps(df.attrs).encode(), *_written(df, tmp_path / name)]
        for secret in secrets:
            assert not any(secret.encode() in blob for blob in blobs), (name, secret)
    assert runs["cloud"].attrs["imgframe"]["asked"]["cloud"] == "lab"


def test_an_endpoint_is_reduced_to_scheme_host_port_and_path() -> None:
    assert (
        provenance.public_endpoint("https://user:pa55@ims.example.com:8443/image?token=t#f")
        == "https://ims.example.com:8443/image"
    )
    df = imgframe.frame_from_headers([])
    built = provenance.build(
        df, fetched_at="2026-01-01T00:00:00Z", asked={"endpoint": "http://u:p@h/"}
    )
    assert built["asked"]["endpoint"] == "http://h/"


# ------------------------------------------------------------------------ the audit clock
def test_a_saved_snapshot_audited_later_gives_the_findings_of_the_fetch_day(
    fetched, tmp_path, cli
) -> None:
    fetch_day = pd.Timestamp(fetched.attrs["imgframe"]["fetched_at"])
    on_the_day = imgframe.audit(fetched, now=fetch_day)
    assert not on_the_day.empty
    # A year on, the current clock flags more stale images: the clock matters here.
    year_later = fetch_day + pd.Timedelta("400D")
    assert len(imgframe.audit(fetched, now=year_later)) > len(on_the_day)
    for suffix in FORMATS:
        saved = imgframe.io.write(fetched, tmp_path / f"images{suffix}")
        back = imgframe.read(saved)
        # No now= given: the clock is the snapshot's fetched_at, whatever day it is.
        pd.testing.assert_frame_equal(imgframe.audit(back), on_the_day)
        pd.testing.assert_frame_equal(back.img.stale(), imgframe.stale(fetched, now=fetch_day))
        pd.testing.assert_frame_equal(back.img.broken(), imgframe.broken(fetched, now=fetch_day))
        # The CLI alike: the saved file's audit equals the one with --now the fetch day.
        plain = cli("audit", str(saved), "--format", "csv")
        pinned = cli(
            "audit", str(saved), "--format", "csv", "--now", fetched.attrs["imgframe"]["fetched_at"]
        )
        later = cli("audit", str(saved), "--format", "csv", "--now", str(year_later.date()))
        assert plain.status == pinned.status == later.status == 0
        assert plain.out == pinned.out != later.out
        assert len(plain.out.splitlines()) == len(on_the_day) + 1


def test_without_provenance_the_clock_is_the_current_time(fetched) -> None:
    plain = fetched.copy()
    plain.attrs.clear()
    now = pd.Timestamp.now("UTC")
    pd.testing.assert_frame_equal(imgframe.stale(plain), imgframe.stale(plain, now=now))


def test_audit_now_refuses_what_is_not_a_time(cli, fetched, tmp_path) -> None:
    saved = imgframe.to_csv(fetched, tmp_path / "i.csv")
    ran = cli("audit", str(saved), "--now", "next tuesday")
    assert ran.status == 2 and "--now 'next tuesday' is not a time" in ran.last_line
