"""fetch_fleet: two Glance emulators playing two regions of one cloud behind one Keystone.

The west region holds copies of some east images (new ids, same data: the cross-region
duplicates an auditor wants found) and two images under the *same* id as in the east
(a Glance shared by both regions), which is why the fleet frame is indexed by
``cloud/region/id`` rather than by ``id``.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
import warnings

import pandas as pd
import pytest

import imgframe
from imgframe import FleetWarning, Target, fetch_fleet
from imgframe.errors import AuthError, ConfigError
from imgframe.fleet import fleet_targets
from imgframe.testing import ADMIN_TOKEN, Faults, Fleet, GlanceEmulator, make_fleet
from imgframe.testing.keystone import FakeKeystone
from imgframe.widgets import PickerFilter, filter_images

pytest.importorskip("openstack.config")

N_COPIED = 7  # east images copied into the west under new ids
N_SHARED = 2  # east images also served by the west under the same id


def _live_active(fleet: Fleet) -> list:
    return [
        i
        for i in fleet.images
        if i.status == "active" and not i.deleted and i.checksum and i.size is not None
    ]


@pytest.fixture(scope="module")
def fleets() -> tuple[Fleet, Fleet]:
    east = make_fleet(150, seed=31)
    west = make_fleet(90, seed=32)
    # Only the planted groups of each fleet, plus the copies below, are duplicates.
    copies = [
        dataclasses.replace(image, id=str(uuid.UUID(int=7000 + n)), name=f"copy of {image.name}")
        for n, image in enumerate(_live_active(east)[:N_COPIED])
    ]
    shared = _live_active(east)[N_COPIED : N_COPIED + N_SHARED]
    west = dataclasses.replace(west, images=[*west.images, *copies, *shared])
    return east, west


@pytest.fixture(scope="module")
def regions(module_servers, fleets) -> tuple[GlanceEmulator, GlanceEmulator, FakeKeystone]:
    east, west = (module_servers.glance(fleet) for fleet in fleets)
    return east, west, module_servers.keystone({"east": east, "west": west})


@pytest.fixture
def clouds_yaml(regions, use_clouds_yaml) -> str:
    keystone = regions[2]
    clouds = {
        "clouds": {
            "lab": {"auth": keystone.auth(), "regions": ["east", "west"]},
            "lab-east": {"auth": keystone.auth(), "region_name": "east"},
            "lab-all": {"auth": keystone.auth()},  # no region: every region of the catalog
            "lab-own": {  # a region with settings of its own: its own login
                "auth": keystone.auth(),
                "regions": ["east", {"name": "west", "values": {"interface": "public"}}],
            },
        }
    }
    return str(use_clouds_yaml(clouds))


def listed(fleet: Fleet) -> set[str]:
    return {image.id for image in fleet.images if not image.deleted}


def test_one_cloud_two_regions_from_clouds_yaml(clouds_yaml, fleets, regions) -> None:
    east, west = fleets
    df = fetch_fleet(["lab"], progress=False)

    assert list(df.columns[:3]) == ["cloud", "region", "id"]
    assert df.index.name == "key" and df.index.is_unique
    assert str(df["cloud"].dtype) == "category" and str(df["region"].dtype) == "category"
    by_region = {r: set(g["id"]) for r, g in df.groupby("region", observed=True)}
    assert by_region == {"east": listed(east), "west": listed(west)}
    assert (df["http_status"] == 200).all()
    # The same id in both regions: two rows, two keys.
    shared = _live_active(east)[N_COPIED]
    rows = df[df["id"] == shared.id]
    assert sorted(rows.index) == [f"lab/east/{shared.id}", f"lab/west/{shared.id}"]
    # Rows keep region order, then listing order.
    assert df["region"].iloc[0] == "east" and df["region"].iloc[-1] == "west"


def test_checksum_duplicates_across_regions_is_one_call(clouds_yaml, fleets) -> None:
    east, west = fleets
    df = fetch_fleet(["lab"], progress=False)
    dups = imgframe.checksum_duplicates(df)

    groups = dups.groupby("dup_group")["region"].agg(lambda r: frozenset(r.astype(str)))
    cross = groups[groups == frozenset({"east", "west"})]
    # Every copied and shared image forms (or joins) a group spanning both regions.
    expected = {i.checksum for i in _live_active(east)[: N_COPIED + N_SHARED]}
    cross_checksums = set(dups[dups["dup_group"].isin(cross.index)]["checksum"])
    assert cross_checksums == expected
    # Each region alone has only its own planted groups: the copies need both regions.
    for fleet, region in ((east, "east"), (west, "west")):
        alone = imgframe.checksum_duplicates(df[df["region"] == region])
        assert set(alone["id"]) == {i for group in fleet.planted.duplicate_groups for i in group}


def test_regions_argument_picks_regions(clouds_yaml, fleets) -> None:
    east, _ = fleets
    df = fetch_fleet(["lab"], regions=["east"], progress=False)
    assert set(df["region"].astype(str)) == {"east"}
    assert set(df["id"]) == listed(east)


def test_clouds_and_targets_mix_and_explicit_ids_ask_every_target(
    clouds_yaml, fleets, regions
) -> None:
    east, _ = fleets
    _, west_glance, _ = regions
    shared = _live_active(east)[N_COPIED].id
    only_east = east.images[0].id
    ids = [shared, only_east, "no-such-image"]
    df = fetch_fleet(
        ["lab-east", Target("manual", endpoint=west_glance.url, token=ADMIN_TOKEN)],
        ids=ids,
        progress=False,
    )
    assert len(df) == 6
    status = df.set_index(["cloud", "id"])["http_status"]
    assert status[("lab-east", shared)] == 200 and status[("manual", shared)] == 200
    assert status[("manual", only_east)] == 404
    assert df["region"].isna().sum() == 3  # a Target without region
    assert df.index[df["cloud"] == "manual"].tolist()[0] == f"manual//{shared}"


def test_audit_of_a_fleet_names_cloud_and_region(clouds_yaml, fleets) -> None:
    df = fetch_fleet(["lab"], progress=False)
    findings = imgframe.audit(df, now=imgframe.testing.FLEET_NOW)
    assert list(findings.columns) == [
        "rule",
        "severity",
        "cloud",
        "region",
        "image_id",
        "owner",
        "name",
        "detail",
        "key",
    ]
    public = findings[findings["rule"] == "public_unprotected"]
    east, west = fleets
    expected = {("east", i) for i in east.planted.public_unprotected} | {
        ("west", i) for i in west.planted.public_unprotected
    }
    assert set(zip(public["region"].astype(str), public["image_id"], strict=True)) == expected
    assert (
        findings["key"] == "lab/" + findings["region"].astype(str) + "/" + findings["image_id"]
    ).all()
    # The picker's rule filter matches findings to fleet rows by key.
    picked = filter_images(df, PickerFilter(rules=["public_unprotected"]))
    assert set(picked.index) == set(public["key"])


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".json"])
def test_fleet_frame_round_trips(clouds_yaml, tmp_path, suffix) -> None:
    df = fetch_fleet(["lab"], progress=False)
    back = imgframe.read(imgframe.io.write(df, tmp_path / f"fleet{suffix}"))
    pd.testing.assert_frame_equal(back, df)


def test_raise_names_the_failing_target_and_stops_the_others() -> None:
    slow_fleet = make_fleet(400, seed=4)
    ids = [i.id for i in slow_fleet.images]
    with (
        # 400 ids at 50 ms and concurrency 2 would take 10 s if nothing stopped them.
        GlanceEmulator(slow_fleet, faults=Faults(latency=0.05)) as slow,
        GlanceEmulator(make_fleet(5, seed=3), faults=Faults(no_v1=True)) as gone,
        pytest.raises(imgframe.NoV1ApiError, match=r"^old/r9: .*no Glance v1 API"),
    ):
        try:
            fetch_fleet(
                [
                    Target("ok", endpoint=slow.url, token=ADMIN_TOKEN),
                    Target("old", "r9", endpoint=gone.url, token=ADMIN_TOKEN),
                ],
                ids=ids,
                concurrency=2,
                progress=False,
            )
        finally:
            served = len(slow.request_log)
    assert served < 100, served  # the slow target was cancelled, not waited for


def test_warn_keeps_the_others_and_a_row_per_requested_id(fleets, regions) -> None:
    east, _ = fleets
    east_glance, _, _ = regions
    ids = [i.id for i in east.images[:10]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = fetch_fleet(
            [
                Target("ok", endpoint=east_glance.url, token=ADMIN_TOKEN),
                Target("bad", endpoint=east_glance.url, token=lambda: ""),
            ],
            ids=ids,
            errors="warn",
            progress=False,
        )
    fleet_warnings = [w for w in caught if issubclass(w.category, FleetWarning)]
    assert len(fleet_warnings) == 1 and "bad: " in str(fleet_warnings[0].message)
    assert len(df) == 20
    bad = df[df["cloud"] == "bad"]
    assert bad["http_status"].isna().all()
    assert bad["error"].astype(str).str.startswith("not fetched: bad: ").all()
    assert df.attrs["failed_targets"][0].startswith("bad: ")
    assert (df.loc[df["cloud"] == "ok", "http_status"] == 200).sum() == sum(
        1 for i in east.images[:10] if not i.deleted
    )


def test_bad_fleet_arguments_are_config_errors(clouds_yaml) -> None:
    with pytest.raises(ConfigError, match="given twice"):
        fleet_targets([Target("a", endpoint="http://127.0.0.1:1")] * 2)
    with pytest.raises(ConfigError, match="no clouds"):
        fleet_targets([])
    with pytest.raises(ConfigError, match=r"clouds\.yaml names or imgframe\.Target"):
        fleet_targets([42])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="cloud 'nope'"):
        fleet_targets(["nope"])
    with pytest.raises(ConfigError, match="errors must be"):
        fetch_fleet(["lab"], errors="ignore")  # type: ignore[arg-type]
    assert [t.region for t in fleet_targets(["lab"])] == ["east", "west"]
    assert [t.region for t in fleet_targets("lab-east")] == ["east"]


def test_a_login_refused_in_one_region_is_an_auth_error_with_its_label(
    regions, tmp_path, monkeypatch
) -> None:
    keystone = regions[2]
    for name in list(__import__("os").environ):
        if name.startswith("OS_"):
            monkeypatch.delenv(name)
    auth = {**keystone.auth(), "password": "wrong-password-123"}
    path = tmp_path / "clouds.yaml"
    path.write_text(json.dumps({"clouds": {"lab": {"auth": auth, "regions": ["east"]}}}))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(path))
    with pytest.raises(AuthError, match=r"^lab/east: ") as info:
        fetch_fleet(["lab"], progress=False)
    assert "wrong-password-123" not in str(info.value)


def test_cli_fetches_clouds_and_regions_and_audits_the_file(
    clouds_yaml, fleets, tmp_path, capsys
) -> None:
    from imgframe.cli import main

    east, west = fleets
    out = tmp_path / "fleet.parquet"
    status = main(["fetch", "--cloud", "lab", "--all", "--api", "auto", "-o", str(out)])
    assert status == 0, capsys.readouterr().err
    df = imgframe.read(out)
    assert df.index.name == "key" and set(df["region"].astype(str)) == {"east", "west"}
    assert len(df) == len(listed(east)) + len(listed(west))

    capsys.readouterr()
    assert main(["audit", str(out), "--rules", "public_unprotected"]) == 0
    table = capsys.readouterr().out
    header = next(line for line in table.splitlines() if line.startswith("severity"))
    assert header.split()[:4] == ["severity", "rule", "cloud", "region"]

    status = main(["fetch", "--cloud", "lab", "--region", "west", "--all", "-o", str(out)])
    assert status == 0 and set(imgframe.read(out)["region"].astype(str)) == {"west"}


def test_each_target_has_its_own_labelled_progress_bar(regions, fleets, capsys) -> None:
    east_glance, west_glance, _ = regions
    fetch_fleet(
        [
            Target("lab", "east", endpoint=east_glance.url, token=ADMIN_TOKEN),
            Target("lab", "west", endpoint=west_glance.url, token=ADMIN_TOKEN),
        ],
        progress=True,
    )
    bars = capsys.readouterr().err
    assert "lab/east: listing" in bars and "lab/west: listing" in bars
    # The label lives in each target's task only: a plain fetch afterwards has none.
    imgframe.fetch_images(
        ids=[fleets[0].images[0].id], endpoint=east_glance.url, token=ADMIN_TOKEN, progress=True
    )
    assert "lab/" not in capsys.readouterr().err


def test_the_picker_filters_a_fleet_by_cloud_and_region(clouds_yaml, fleets) -> None:
    pytest.importorskip("ipywidgets")
    df = fetch_fleet(["lab"], progress=False)
    picker = imgframe.picker(df)
    assert sorted(value for _, value in picker.regions.options) == ["east", "west"]
    assert [value for _, value in picker.clouds.options] == ["lab"]
    picker.regions.value = ("west",)
    assert set(picker.filtered["region"].astype(str)) == {"west"}
    assert len(picker.filtered) == (df["region"] == "west").sum()
    assert "<th>region</th>" in picker.table.value
    assert picker.criteria.regions == ("west",)
    with pytest.raises(ValueError, match="fleet frame"):
        single = df.drop(columns=["cloud", "region"]).set_index("id")
        filter_images(single, PickerFilter(regions=["west"]))


def test_the_regions_of_a_cloud_share_one_keystone_login(clouds_yaml, regions, fleets) -> None:
    keystone = regions[2]
    before = len(keystone.issued)
    df = fetch_fleet(["lab"], progress=False)
    assert set(df["region"].astype(str)) == {"east", "west"}
    assert len(keystone.issued) - before == 1


def test_a_cloud_without_regions_is_every_region_of_its_catalog(clouds_yaml, regions, fleets):
    east, west = fleets
    keystone = regions[2]
    before = len(keystone.issued)
    df = fetch_fleet(["lab-all"], progress=False)
    by_region = {r: set(g["id"]) for r, g in df.groupby("region", observed=True)}
    assert by_region == {"east": listed(east), "west": listed(west)}
    assert len(keystone.issued) - before == 1


def test_a_region_with_its_own_settings_logs_in_on_its_own(clouds_yaml, regions) -> None:
    keystone = regions[2]
    before = len(keystone.issued)
    df = fetch_fleet(["lab-own"], progress=False)
    assert set(df["region"].astype(str)) == {"east", "west"}
    assert len(keystone.issued) - before == 2


def test_fleet_include_deleted_lists_each_targets_deleted_images() -> None:
    east, west = make_fleet(60, seed=71), make_fleet(40, seed=72)
    with GlanceEmulator(east) as e, GlanceEmulator(west) as w:
        targets = [
            Target("lab", "east", endpoint=e.url, token=ADMIN_TOKEN),
            Target("lab", "west", endpoint=w.url, token=ADMIN_TOKEN),
        ]
        df = fetch_fleet(targets, include_deleted=True)
    for region, fleet in (("east", east), ("west", west)):
        rows = df[df["region"] == region]
        assert set(rows["id"]) == {i.id for i in fleet.images}  # deleted ones included
        assert rows["deleted"].sum() == sum(i.deleted for i in fleet.images) > 0
