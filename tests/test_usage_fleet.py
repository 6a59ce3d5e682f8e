"""Usage for fleets: fetch_servers / fetch_volumes over two regions of one cloud (two Glance,
two Nova/Cinder emulators behind one fake Keystone), the per-region join of image_usage,
incomplete targets, the CLI's fleet forms; duplicates' reclaimable bytes with usage; and
the block builder of the listings against a per-record reference."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import imgframe
from imgframe import audits
from imgframe.errors import ConfigError, FetchError, FleetWarning, IncompleteListingWarning
from imgframe.parse import VECTOR_PARSERS, text_array
from imgframe.schema import SERVER_FIELDS, VOLUME_FIELDS, Field, Kind
from imgframe.testing import ADMIN_TOKEN, Fleet, GlanceEmulator, make_fleet
from imgframe.testing.compute import ComputeEmulator, FakeServer, Usage, make_usage
from imgframe.testing.keystone import FakeKeystone
from imgframe.usage_frame import (
    TARGETS_ATTR,
    RecordColumns,
    _wire,
    has_duplicates,
    is_complete,
    servers_frame,
    volumes_frame,
)

REGIONS = ("east", "west")
SEEDS = {"east": 21, "west": 22}


@pytest.fixture(scope="module")
def fleets() -> dict[str, Fleet]:
    return {region: make_fleet(150, seed=SEEDS[region], duplicate_groups=6) for region in REGIONS}


@pytest.fixture(scope="module")
def crossed(usages: dict[str, Usage]) -> str:
    """An east image planted unused, which a west server names (another region's image)."""
    return sorted(usages["east"].planted.unused)[0]


@pytest.fixture(scope="module")
def usages(fleets: dict[str, Fleet]) -> dict[str, Usage]:
    found = {region: make_usage(fleets[region], seed=SEEDS[region]) for region in REGIONS}
    east_unused = sorted(found["east"].planted.unused)[0]
    template = found["west"].servers[0]
    found["west"].servers.append(
        FakeServer("crossed-server", "vm-crossed", "ACTIVE", east_unused, template.project_id,
                   template.created_at, template.updated_at)
    )  # fmt: skip
    return found


@pytest.fixture(scope="module")
def glances(module_servers: Any, fleets: dict[str, Fleet]) -> dict[str, GlanceEmulator]:
    return {region: module_servers.glance(fleets[region]) for region in REGIONS}


@pytest.fixture(scope="module")
def computes(usages: dict[str, Usage]) -> Iterator[dict[str, ComputeEmulator]]:
    started = {region: ComputeEmulator(usages[region]) for region in REGIONS}
    with started["east"], started["west"]:
        yield started


@pytest.fixture(scope="module")
def keystone(
    module_servers: Any, glances: dict[str, GlanceEmulator], computes: dict[str, ComputeEmulator]
) -> FakeKeystone:
    return module_servers.keystone(glances, compute=computes)


@pytest.fixture
def lab(keystone: FakeKeystone, use_clouds_yaml: Callable[..., Path]) -> Path:
    """clouds.yaml with cloud "lab" and no regions: every region of the catalog."""
    pytest.importorskip("openstack.config")
    return use_clouds_yaml({"clouds": {"lab": {"auth": keystone.auth()}}})


def targets(urls: dict[str, str]) -> list[imgframe.Target]:
    return [imgframe.Target("lab", r, endpoint=u, token=ADMIN_TOKEN) for r, u in urls.items()]


@pytest.fixture(scope="module")
def images(glances: dict[str, GlanceEmulator]) -> pd.DataFrame:
    return imgframe.fetch_fleet(targets({r: g.url for r, g in glances.items()}), progress=False)


@pytest.fixture(scope="module")
def listed(computes: dict[str, ComputeEmulator]) -> tuple[pd.DataFrame, pd.DataFrame]:
    servers = imgframe.fetch_servers(
        cloud=targets({r: c.compute_url for r, c in computes.items()}), page_size=40
    )
    volumes = imgframe.fetch_volumes(
        cloud=targets({r: c.volume_url for r, c in computes.items()}), page_size=15
    )
    return servers, volumes


def planted(usages: dict[str, Usage], rule: str) -> set[tuple[str, str]]:
    return {(r, i) for r in REGIONS for i in getattr(usages[r].planted, rule)}


def found(findings: pd.DataFrame, rule: str) -> set[tuple[str, str]]:
    rows = findings[findings["rule"] == rule]
    return set(zip(rows["region"].astype(str), rows["image_id"].astype(str), strict=True))


# --------------------------------------------------------------------------- listings
def test_cloud_list_lists_every_catalog_region_with_one_login(
    lab: Path, keystone: FakeKeystone, usages: dict[str, Usage]
) -> None:
    logins = len(keystone.issued)
    df = imgframe.fetch_servers(cloud=["lab"])
    assert len(keystone.issued) - logins == 1  # one login for both regions
    assert list(df.columns[:3]) == ["cloud", "region", "id"] and df.index.name == "key"
    for region in REGIONS:
        rows = df[df["region"] == region]
        assert set(rows["id"]) == {s.id for s in usages[region].servers}
    assert df.index.tolist() == [
        f"lab/{r}/{i}" for r, i in zip(df["region"], df["id"], strict=True)
    ]
    assert is_complete(df) == (True, None)
    assert sorted(df.attrs[TARGETS_ATTR]) == ["lab/east", "lab/west"]


def test_a_region_list_is_a_fleet_too(lab: Path, usages: dict[str, Usage]) -> None:
    df = imgframe.fetch_volumes(cloud="lab", region=["west"])
    assert set(df["region"]) == {"west"} and len(df) == len(usages["west"].volumes)
    assert str(df["status"].dtype) == "category" and df["project_id"].notna().all()


def test_a_name_and_a_region_stay_one_target(lab: Path, usages: dict[str, Usage]) -> None:
    df = imgframe.fetch_servers(cloud="lab", region="east")
    assert df.index.name == "id" and "cloud" not in df.columns
    assert len(df) == len(usages["east"].servers)


def test_fleet_forms_refuse_an_endpoint_or_token() -> None:
    with pytest.raises(ConfigError, match="fleet"):
        imgframe.fetch_servers("http://127.0.0.1:9", ADMIN_TOKEN, cloud=["lab"])


# --------------------------------------------------------------------------- the join
def test_planted_answers_are_found_per_region(
    images: pd.DataFrame, listed: tuple[pd.DataFrame, pd.DataFrame], usages: dict[str, Usage]
) -> None:
    findings = imgframe.audit(images, rules=["unused", "only_stopped_servers"], usage=listed)
    assert found(findings, "unused") == planted(usages, "unused")
    assert found(findings, "only_stopped_servers") == planted(usages, "only_stopped_servers")
    assert findings.attrs["notes"] == []


def test_a_server_of_another_region_does_not_use_an_image(
    images: pd.DataFrame, listed: tuple[pd.DataFrame, pd.DataFrame], crossed: str
) -> None:
    servers, volumes = listed
    assert (servers.loc["lab/west/crossed-server", "image_id"]) == crossed
    table = imgframe.image_usage(images, servers, volumes)
    assert table.loc[f"lab/east/{crossed}", "servers"] == 0
    assert f"lab/east/{crossed}" in set(imgframe.unused(images, usage=table).index)


def test_boot_from_volume_is_traced_within_its_region(
    images: pd.DataFrame, listed: tuple[pd.DataFrame, pd.DataFrame], usages: dict[str, Usage]
) -> None:
    table = imgframe.image_usage(images, *listed)
    for region in REGIONS:
        through = usages[region].planted.through_volumes
        assert through
        assert (table.loc[[f"lab/{region}/{i}" for i in through], "volumes"] > 0).all()


def test_a_mix_of_fleet_and_single_frames_is_refused(
    images: pd.DataFrame, computes: dict[str, ComputeEmulator]
) -> None:
    single = imgframe.fetch_servers(computes["east"].compute_url, ADMIN_TOKEN)
    with pytest.raises(ConfigError, match=r"images from a fleet .* but servers from one target"):
        imgframe.image_usage(images, single, None)
    with pytest.raises(ConfigError, match="fleet"):
        imgframe.audit(images, rules=["unused"], usage=(single, None))


# --------------------------------------------------------------------------- incomplete
class MemberNova(ComputeEmulator):
    """A Nova/Cinder whose Keystone tokens are a member's, not an admin's."""

    def accept_token(self, token: str, project: str | None = None) -> None:
        super().accept_token(token, self.usage.servers[0].project_id)


def test_one_incomplete_target_makes_the_usage_incomplete(
    servers: Any,
    glances: dict[str, GlanceEmulator],
    computes: dict[str, ComputeEmulator],
    usages: dict[str, Usage],
    images: pd.DataFrame,
    use_clouds_yaml: Callable[..., Path],
) -> None:
    pytest.importorskip("openstack.config")
    with MemberNova(usages["west"]) as member:
        keystone = servers.keystone(glances, compute={"east": computes["east"], "west": member})
        use_clouds_yaml({"clouds": {"lab": {"auth": keystone.auth()}}})
        with pytest.warns(IncompleteListingWarning, match="403"):
            listed = imgframe.fetch_servers(cloud=["lab"])
        volumes = imgframe.fetch_volumes(cloud=["lab"], region=["east"])
    complete, why = is_complete(listed)
    assert not complete and why is not None and why.startswith("lab/west: ")
    findings = imgframe.audit(images, rules=["unused"], usage=(listed, volumes))
    assert found(findings, "unused") == set()
    note = findings.attrs["notes"][0]
    assert "lab/west: Nova refused all_tenants" in note and "volumes: lab/west not listed" in note


def test_a_failed_target_with_errors_warn_is_kept_out_and_named(
    usages: dict[str, Usage], computes: dict[str, ComputeEmulator], images: pd.DataFrame
) -> None:
    with ComputeEmulator(usages["west"], fail_page=1) as broken:
        urls = {"east": computes["east"].compute_url, "west": broken.compute_url}
        with pytest.raises(FetchError, match=r"^lab/west: "):
            imgframe.fetch_servers(cloud=targets(urls), retries=0)
        with pytest.warns(FleetWarning, match="1 of 2 targets failed"):
            df = imgframe.fetch_servers(cloud=targets(urls), retries=0, errors="warn")
    assert set(df["region"]) == {"east"} and len(df) == len(usages["east"].servers)
    complete, why = is_complete(df)
    assert not complete and "not listed: lab/west" in (why or "")
    assert df.attrs["failed_targets"][0].startswith("lab/west: ")
    both = {region: computes[region].volume_url for region in REGIONS}
    volumes = imgframe.fetch_volumes(cloud=targets(both))
    with pytest.warns(IncompleteListingWarning, match="lab/west"):
        assert imgframe.unused(images, usage=(df, volumes)).empty


def test_an_images_region_that_was_not_listed_is_not_called_unused(
    images: pd.DataFrame, computes: dict[str, ComputeEmulator]
) -> None:
    east = targets({"east": computes["east"].compute_url})
    east_volumes = targets({"east": computes["east"].volume_url})
    usage = imgframe.image_usage(
        images, imgframe.fetch_servers(cloud=east), imgframe.fetch_volumes(cloud=east_volumes)
    )
    complete, why = is_complete(usage)
    assert not complete and why == "servers: lab/west not listed; volumes: lab/west not listed"


# --------------------------------------------------------------------------- the CLI
def test_cli_fleet_tables_audit_per_region(
    lab: Path, cli: Any, tmp_path: Path, usages: dict[str, Usage], computes: Any
) -> None:
    paths = {name: tmp_path / f"{name}.csv" for name in ("images", "servers", "volumes", "found")}
    assert cli("fetch", "--cloud", "lab", "--all", "-o", str(paths["images"])).status == 0
    for kind in ("servers", "volumes"):
        ran = cli(kind, "--cloud", "lab", "-o", str(paths[kind]))
        assert ran.status == 0, ran.err
    table = pd.read_csv(paths["servers"])
    assert list(table.columns[:4]) == ["key", "cloud", "region", "id"]
    ran = cli("audit", str(paths["images"]), "--servers", str(paths["servers"]), "--volumes",
              str(paths["volumes"]), "--rules", "unused,only_stopped_servers",
              "-o", str(paths["found"]))  # fmt: skip
    assert ran.status == 0, ran.err
    findings = pd.read_csv(paths["found"])
    assert found(findings, "unused") == planted(usages, "unused")
    assert found(findings, "only_stopped_servers") == planted(usages, "only_stopped_servers")
    single = tmp_path / "single.csv"
    assert cli("servers", "--endpoint", computes["east"].compute_url, "--token", ADMIN_TOKEN,
               "-o", str(single)).status == 0  # fmt: skip
    mixed = cli("audit", str(paths["images"]), "--servers", str(single))
    assert mixed.status == 2 and "from one target" in mixed.last_line


def test_cli_region_and_keep_going_options(lab: Path, cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "west.csv"
    ran = cli("volumes", "--cloud", "lab", "--region", "west", "-o", str(out))
    assert ran.status == 0, ran.err
    assert set(pd.read_csv(out)["region"]) == {"west"}
    assert cli("servers", "--endpoint", "http://127.0.0.1:9", "--keep-going").status == 2


# --------------------------------------------------------------------------- duplicates
def _dup_frame() -> pd.DataFrame:
    rows = [("a1", "p1", "c1"), ("a2", "p1", "c1"), ("a3", "p1", "c1"),
            ("b1", "p2", "c2"), ("b2", "p2", "c2"), ("c", "p3", "c3")]  # fmt: skip
    return imgframe.frame_from_headers([
        {"x-image-meta-id": i, "x-image-meta-status": "active", "x-image-meta-owner": owner,
         "x-image-meta-checksum": checksum, "x-image-meta-size": "100"}
        for i, owner, checksum in rows
    ])  # fmt: skip


def test_reclaimable_bytes_of_duplicates_count_unused_copies_only() -> None:
    df = _dup_frame()
    servers = servers_frame([{"id": "s1", "status": "SHUTOFF", "image": {"id": "a1"},
                              "tenant_id": "p1"}])  # fmt: skip
    usage = (servers, volumes_frame([]))
    dups = audits.checksum_duplicates(df, usage=usage)
    assert dups["unused"].tolist() == [False, True, True, True, True]
    # a: two of three unused, the used copy stays; b: both unused, one copy stays.
    assert dups["reclaimable_bytes"].tolist() == [200, 200, 200, 100, 100]
    summary = imgframe.owner_summary(df, usage=usage)
    assert summary.loc["p1", "reclaimable_bytes"] == dups.loc["a1", "reclaimable_bytes"]
    # Deleting every unused copy of b is the unused rule's figure: the group's plus one copy.
    assert summary.loc["p2", "reclaimable_bytes"] == dups.loc["b1", "reclaimable_bytes"] + 100
    assert audits.checksum_duplicates(df)["reclaimable_bytes"].tolist() == [200] * 3 + [100] * 2
    detail = imgframe.audit(df, rules=["checksum_duplicates"], usage=usage)["detail"]
    assert detail.str.contains("2 of them unused: deleting those \\(one copy kept\\)").sum() == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        incomplete = audits.checksum_duplicates(df, usage=(servers, None))
    assert incomplete["reclaimable_bytes"].isna().all() and incomplete["unused"].isna().all()
    said = imgframe.audit(df, rules=["checksum_duplicates"], usage=(servers, None))["detail"]
    assert said.str.contains("which copies are unused is not known").all()


def test_duplicates_and_owner_summary_agree_on_a_seeded_region(
    images: pd.DataFrame, listed: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    usage = imgframe.image_usage(images, *listed)
    dups = audits.checksum_duplicates(images, usage=usage)
    flagged = set(imgframe.unused(images, usage=usage).index)
    assert dups["unused"].any() and not dups["unused"].all()
    assert dups["unused"].tolist() == [k in flagged for k in dups.index]
    size = audits.data_size(dups)
    per_group = dups.assign(size=size).groupby("dup_group")
    idle = per_group["unused"].sum()
    whole = per_group["group_size"].first()
    assert (per_group["reclaimable_bytes"].nunique() == 1).all()
    expected = per_group["size"].first() * (idle - (idle == whole).astype(int))
    assert per_group["reclaimable_bytes"].first().tolist() == expected.tolist()
    # Every unused copy's bytes = what deduplicating frees + the one copy of wholly unused groups.
    total = int((per_group["reclaimable_bytes"].first() + per_group["size"].first()
                 * (idle == whole)).sum())  # fmt: skip
    assert total == int(size[dups["unused"].to_numpy(dtype=bool)].sum())
    summary = imgframe.owner_summary(images, usage=usage)
    assert int(summary["reclaimable_bytes"].sum()) >= total


# --------------------------------------------------------------------------- the builder
def _reference(records: list[Any], fields: tuple[Field, ...]) -> pd.DataFrame:
    """The frame, record by record: each value found by walking its path, then parsed."""

    def value(record: Any, source: str) -> Any:
        if "[]." in source:
            return RecordColumns(fields)._get[[f.source for f in fields].index(source)]([record])[0]
        for part in source.split("."):
            if not isinstance(record, dict):
                return None
            record = record.get(part)
        return record

    columns = {}
    for f in fields:
        raw = [_wire(value(r, f.source or f.column)) for r in records]
        raw = [None if v.__class__ is object else v for v in raw]
        typed = VECTOR_PARSERS[f.kind](text_array(raw))[0]
        columns[f.column] = (
            pd.Categorical(pd.Series(typed, dtype="string[pyarrow]")) if f.kind is Kind.CATEGORY
            else typed
        )  # fmt: skip
    index = pd.Index(columns.pop(fields[0].column), name="id")
    return pd.DataFrame(columns, index=index)


TEXT = st.sampled_from(["", "a", "ACTIVE", "SHUTOFF", "2026-01-02T03:04:05Z", "true", "12",
                        "x y", "é", "p1"])  # fmt: skip
VALUE = st.one_of(st.none(), TEXT, st.integers(-5, 5), st.booleans(),
                  st.lists(TEXT, max_size=2))  # fmt: skip
RECORD = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "id": TEXT | st.uuids().map(str), "name": VALUE, "status": VALUE,
            "image": st.one_of(st.just(""), VALUE, st.fixed_dictionaries({"id": VALUE})),
            "tenant_id": VALUE, "created": VALUE, "updated": VALUE, "bootable": VALUE,
            "size": VALUE, "os-vol-tenant-attr:tenant_id": VALUE,
            "volume_image_metadata": st.fixed_dictionaries({"image_id": VALUE}) | VALUE,
            "attachments": st.lists(st.fixed_dictionaries({"server_id": VALUE}), max_size=2),
        },
    ),
    VALUE,
)  # fmt: skip


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=st.lists(RECORD, max_size=40),
    pages=st.lists(st.integers(1, 9), min_size=1, max_size=6),
    block=st.integers(1, 12),
    volumes=st.booleans(),
)
def test_any_pages_and_blocks_give_the_reference_frame(
    records: list[Any], pages: list[int], block: int, volumes: bool
) -> None:
    fields = VOLUME_FIELDS if volumes else SERVER_FIELDS
    columns = RecordColumns(fields, block_rows=block)
    at, n = 0, 0
    while at < len(records):
        size = pages[n % len(pages)]
        columns.add(records[at : at + size])
        at, n = at + size, n + 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = columns.frame()
        expected = _reference(records, fields)
    pd.testing.assert_frame_equal(built, expected)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), st.sampled_from("abcdefg")), max_size=30), st.integers(1, 7))
def test_has_duplicates_is_exact(values: list[str | None], window: int) -> None:
    import pyarrow as pa

    chunked = pa.chunked_array([pa.array(values[:10], pa.large_string()),
                                pa.array(values[10:], pa.large_string())])  # fmt: skip
    assert has_duplicates(chunked, window=window) == (len(set(values)) != len(values))


def test_emulator_regions_serve_nova_and_cinder_in_the_catalog(tmp_path: Path) -> None:
    import subprocess
    import sys

    pytest.importorskip("openstack.config")
    clouds_yaml = tmp_path / "lab.yaml"
    process = subprocess.Popen(
        [sys.executable, "-m", "imgframe", "emulator", "--images", "40", "--regions",
         "east,west", "--clouds-yaml", str(clouds_yaml)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        lines = []
        for _ in range(10):  # bounded: the banner is five lines
            lines.append(process.stdout.readline())  # type: ignore[union-attr]
            if lines[-1].lstrip().startswith("try:") or not lines[-1]:
                break
        assert clouds_yaml.exists(), lines
        env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OS_")}
        env["OS_CLIENT_CONFIG_FILE"] = str(clouds_yaml)
        out = tmp_path / "servers.csv"
        ran = subprocess.run(
            [sys.executable, "-m", "imgframe", "servers", "--cloud", "lab", "-o", str(out)],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr
        table = pd.read_csv(out)
        expected = {
            region: len(make_usage(make_fleet(40, seed=n), seed=n).servers)
            for n, region in enumerate(("east", "west"))
        }
        assert table["region"].value_counts().to_dict() == expected
        assert "servers" in "".join(lines)
    finally:
        process.terminate()
        assert process.wait(timeout=20) == 0
        json.loads(clouds_yaml.read_text())  # the file it wrote is whole
