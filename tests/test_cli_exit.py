"""``imgframe fetch`` exits with the status that tells what happened (``imgframe --help``).

0 complete, 2 usage (found before any request), 4 incomplete (the table is written, the
last line says why), 5 failed as a whole (nothing written). Each case runs ``main(argv)``
in this process against emulators on 127.0.0.1 and checks what the emulator was sent.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest

from imgframe.checkpoint import read_manifest
from imgframe.io import read, read_parquet
from imgframe.testing import ADMIN_TOKEN, Faults, GlanceEmulator, make_fleet

OLD_SNAPSHOT = "id,name\r\nold,snapshot\r\n"


FLEET = {"n": 1000, "seed": 8}  # the module's `fleet` (tests/conftest.py)


@pytest.fixture
def snapshot(tmp_path) -> Path:
    """An existing table at -o: a run that reads nothing must leave it alone."""
    path = tmp_path / "fleet.csv"
    path.write_bytes(OLD_SNAPSHOT.encode())
    return path


def test_wrong_token_fails_as_a_whole_and_keeps_the_old_table(fleet, emulator, cli, snapshot):
    ids = [image.id for image in fleet.images]
    emulator.reset_log()
    ran = cli("fetch", *ids, "--endpoint", emulator.url, "--token", "wrong", "-o", str(snapshot))
    assert ran.status == 5, ran.err
    assert "no image could be read (1,000 of 1,000 ids)" in ran.last_line
    assert "401" in ran.last_line and f"nothing written to {snapshot}" in ran.last_line
    assert snapshot.read_bytes() == OLD_SNAPSHOT.encode()
    assert len(emulator.request_log) <= 32 + 1  # the first 401s stop the sending
    assert "Traceback" not in ran.err
    assert not Path(f"{snapshot}.checkpoint").exists()  # nothing in it to resume from


def test_closed_port_fails_as_a_whole(cli, snapshot) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ids = [f"00000000-0000-4000-8000-{n:012d}" for n in range(20)]
    ran = cli("fetch", *ids, "--endpoint", f"http://127.0.0.1:{port}", "--token", "t",
              "--retries", "0", "-o", str(snapshot))  # fmt: skip
    assert ran.status == 5, ran.err
    assert "no image could be read (20 of 20 ids)" in ran.last_line
    assert snapshot.read_bytes() == OLD_SNAPSHOT.encode()


@pytest.mark.parametrize("tail", ["/v1/images", "/images", "/v3", "/v3/"])
def test_an_endpoint_with_a_path_typo_is_refused_before_any_request(emulator, cli, tail):
    emulator.reset_log()
    ran = cli("fetch", "some-id", "--endpoint", emulator.url + tail, "--token", ADMIN_TOKEN)
    assert ran.status == 2, ran.err
    assert "base URL" in ran.err and ran.err.count("\n") == 1
    assert ("Keystone" in ran.err) == tail.startswith("/v3")
    assert emulator.request_log == []


@pytest.mark.parametrize("tail", ["/v2", "/v2/", "/v2.0"])
def test_an_endpoint_ending_with_v2_never_gives_a_run_of_404s(fleet, emulator, cli, tail):
    # imgframe either takes the version off (the endpoint is the base URL) or refuses it:
    # never /v2/v1/images/{id}, which answers 404 for every id and looks complete.
    emulator.reset_log()
    ids = [image.id for image in fleet.images[:5]]
    ran = cli("fetch", *ids, "--endpoint", emulator.url + tail, "--token", ADMIN_TOKEN)
    if ran.status == 2:
        assert "base URL" in ran.err and emulator.request_log == []
    else:
        assert ran.status == 0, ran.err
        assert (pd.read_csv(io.StringIO(ran.out))["http_status"] == 200).all()


def test_an_endpoint_ending_with_v1_is_fine(fleet, emulator, cli) -> None:
    ran = cli("fetch", fleet.images[0].id, "--endpoint", emulator.url + "/v1/", "--no-checkpoint")
    assert ran.status == 2 and "OS_AUTH_TOKEN" in ran.err  # refused for the token, not the URL


def test_ids_still_failing_after_retries_exit_4_with_the_table_written(fleet, cli, tmp_path):
    faults = Faults(transient_rate=0.1, transient_attempts=5, retry_after=0.0, seed=4,
                    transient_kinds=("503",))  # fmt: skip
    ids = [image.id for image in fleet.images[:200]]
    stuck = [i for i in ids if faults.transient_kind(i) is not None]
    assert 5 < len(stuck) < 60
    out = tmp_path / "out.parquet"
    with GlanceEmulator(fleet, faults=faults) as emu:
        ran = cli("fetch", *ids, "--endpoint", emu.url, "--token", ADMIN_TOKEN, "--retries", "1",
                  "-o", str(out), "--no-checkpoint")  # fmt: skip
    assert ran.status == 4, ran.err
    assert ran.last_line.startswith(
        f"imgframe: incomplete: {len(stuck)} of 200 ids could not be read ({len(stuck)} HTTP 503"
    ), ran.last_line
    assert f"wrote 200 rows to {out} (incomplete)" in ran.err
    df = read_parquet(out)
    assert sorted(df.index[df["http_status"] == 503]) == sorted(stuck)


def test_a_complete_run_with_404s_and_invalid_ids_exits_0(fleet, emulator, cli, tmp_path):
    ids = [image.id for image in fleet.images[:20]] + ["no-such-image", "bad/id"]
    out = tmp_path / "out.json"
    ran = cli("fetch", *ids, "--endpoint", emulator.url, "--token", ADMIN_TOKEN, "-o", str(out))
    assert ran.status == 0, ran.err
    assert len(json.loads(out.read_text())) == 22 and "incomplete" not in ran.err


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("nodir/out.parquet", "does not exist"),
        ("out.xlsx", "use a .csv, .parquet or .json"),
        ("out", "use a .csv, .parquet or .json"),
        ("afile/out.csv", "is not a folder"),
        ("adir.csv", "it is a folder"),
    ],
)
def test_output_is_checked_before_any_request(emulator, fleet, cli, tmp_path, monkeypatch,
                                              output, message):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    (tmp_path / "adir.csv").mkdir()
    emulator.reset_log()
    ran = cli("fetch", fleet.images[0].id, "--endpoint", emulator.url, "--token", ADMIN_TOKEN,
              "-o", output)  # fmt: skip
    assert ran.status == 2, ran.err
    assert message in ran.err and ran.err.count("\n") == 1, ran.err
    assert emulator.request_log == []


# -- --keep-going over a cloud of regions (clouds.yaml, FakeKeystone) --------------------


@pytest.fixture(scope="module")
def region_fleets():
    return make_fleet(40, seed=41), make_fleet(30, seed=42)


@pytest.fixture
def lab_cloud(servers, use_clouds_yaml, region_fleets) -> dict[str, GlanceEmulator]:
    """A cloud ``lab`` with regions east (fine) and west (Glance v1 gone: the target fails
    as a whole), in a clouds.yaml that OS_CLIENT_CONFIG_FILE points at."""
    pytest.importorskip("openstack.config")
    east, west = region_fleets
    regions = {"east": servers.glance(east), "west": servers.glance(west, api="v2")}
    keystone = servers.keystone(regions)
    wrong = keystone.auth() | {"password": "not-the-password"}
    use_clouds_yaml(
        {
            "clouds": {
                "lab": {"auth": keystone.auth(), "regions": ["east", "west"]},
                "lab-wrong": {"auth": wrong, "regions": ["east"]},
            }
        }
    )
    return regions


def test_keep_going_with_a_failed_target_exits_4_and_names_it(lab_cloud, region_fleets, cli,
                                                              tmp_path):  # fmt: skip
    out = tmp_path / "fleet.csv"
    ran = cli("fetch", "--cloud", "lab", "--all", "--keep-going", "-o", str(out))
    assert ran.status == 4, ran.err
    assert ran.last_line == "imgframe: incomplete: 1 target(s) failed: lab/west", ran.err
    east = {image.id for image in region_fleets[0].images if not image.deleted}
    assert set(pd.read_csv(out)["id"]) == east


def test_without_keep_going_a_failed_target_fails_the_run(lab_cloud, cli, snapshot) -> None:
    ran = cli("fetch", "--cloud", "lab", "--all", "-o", str(snapshot))
    assert ran.status == 5, ran.err
    assert "lab/west" in ran.last_line and "no Glance v1 API" in ran.last_line
    assert snapshot.read_bytes() == OLD_SNAPSHOT.encode()


def test_a_refused_keystone_login_fails_as_a_whole(lab_cloud, cli, snapshot) -> None:
    lab_cloud["east"].reset_log()
    ran = cli("fetch", "--cloud", "lab-wrong", "--all", "-o", str(snapshot))
    assert ran.status == 5, ran.err
    assert ran.last_line.startswith("imgframe: error: lab-wrong/east: ") and "Traceback" not in (
        ran.err
    )
    assert ran.err.count("\n") == 1 and "not-the-password" not in ran.err
    assert snapshot.read_bytes() == OLD_SNAPSHOT.encode()
    assert lab_cloud["east"].request_log == []


def test_keep_going_with_every_target_failed_is_a_failed_run(lab_cloud, cli, snapshot) -> None:
    ran = cli("fetch", "--cloud", "lab", "--region", "west", "--all", "--keep-going",
              "-o", str(snapshot))  # fmt: skip
    assert ran.status == 5, ran.err
    assert "every target failed: lab/west" in ran.last_line
    assert snapshot.read_bytes() == OLD_SNAPSHOT.encode()


# -- the checkpoint the CLI keeps by default ---------------------------------------------

FLAKY = Faults(transient_rate=0.1, transient_attempts=1, retry_after=0.0, seed=6,
               transient_kinds=("503",))  # fmt: skip


def _flaky_ids(fleet) -> tuple[list[str], list[str]]:
    ids = [image.id for image in fleet.images[:200]]
    return ids, [i for i in ids if FLAKY.transient_kind(i) is not None]


def test_an_incomplete_run_keeps_its_checkpoint_and_the_same_command_completes_it(
    fleet, cli, tmp_path
) -> None:
    ids, flaky = _flaky_ids(fleet)
    out = tmp_path / "out.csv"
    args = ("fetch", *ids, "--token", ADMIN_TOKEN, "--retries", "0", "-o", str(out))
    with GlanceEmulator(fleet, faults=FLAKY) as emu:
        first = cli(*args, "--endpoint", emu.url)
        assert first.status == 4, first.err
        checkpoint = tmp_path / "out.csv.checkpoint"
        assert f"{200 - len(flaky)} rows kept in checkpoint {checkpoint}" in first.err
        assert read(out).index.tolist() == ids  # the table is written anyway
        emu.reset_log()
        again = cli(*args, "--endpoint", emu.url)
        assert again.status == 0, again.err
        assert sorted(r.image_id for r in emu.request_log) == sorted(flaky)
    df = read(out)
    assert df.index.tolist() == ids and (df["http_status"] == 200).all()
    assert not checkpoint.exists()


def test_without_o_the_checkpoint_is_in_the_user_cache(fleet, cli, tmp_path) -> None:
    ids, flaky = _flaky_ids(fleet)
    cache = tmp_path / "cache" / "imgframe" / "checkpoints"
    with GlanceEmulator(fleet, faults=FLAKY) as emu:
        args = ("fetch", *ids, "--token", ADMIN_TOKEN, "--retries", "0", "--endpoint", emu.url)
        assert cli(*args).status == 4
        (kept,) = list(cache.iterdir())
        assert kept.name.isalnum() and len(kept.name) == 20
        other = cli("fetch", *ids[:10], "--token", ADMIN_TOKEN, "--endpoint", emu.url)
        assert other.status == 0  # another request: another folder, this one untouched
        assert list(cache.iterdir()) == [kept]
        emu.reset_log()
        again = cli(*args)
        assert again.status == 0, again.err
        assert sorted(r.image_id for r in emu.request_log) == sorted(flaky)
    assert pd.read_csv(io.StringIO(again.out))["id"].tolist() == ids
    assert list(cache.iterdir()) == []


def test_a_checkpoint_made_for_other_ids_is_refused_before_any_request(
    fleet, emulator, cli, tmp_path
) -> None:
    ids = [image.id for image in fleet.images[:30]]
    out = tmp_path / "out.csv"
    checkpoint = tmp_path / "out.csv.checkpoint"
    from imgframe.checkpoint import Checkpoint, Manifest

    facts = Manifest.for_fetch(endpoint=emulator.url, api="v1", ids=ids[:5])
    Checkpoint.open(checkpoint, facts).close()
    emulator.reset_log()
    ran = cli("fetch", *ids, "--endpoint", emulator.url, "--token", ADMIN_TOKEN, "-o", str(out))
    assert ran.status == 2, ran.err
    assert "made for another request" in ran.last_line and "--no-checkpoint" in ran.last_line
    assert emulator.request_log == [] and checkpoint.exists() and not out.exists()
    assert ran.err.count("\n") == 2  # the --token warning, then the one error line


def test_an_explicit_checkpoint_folder_is_used_and_removed_after_success(
    fleet, emulator, cli, tmp_path
) -> None:
    ids = [image.id for image in fleet.images[:30]]
    folder = tmp_path / "my-checkpoint"
    ran = cli("fetch", *ids, "--endpoint", emulator.url, "--token", ADMIN_TOKEN,
              "--checkpoint", str(folder), "-o", str(tmp_path / "out.csv"))  # fmt: skip
    assert ran.status == 0, ran.err
    assert not folder.exists() and not (tmp_path / "out.csv.checkpoint").exists()


def test_include_deleted_keeps_the_deleted_images_of_a_listing(fleet, emulator, cli, tmp_path):
    deleted = {image.id for image in fleet.images if image.deleted}
    assert deleted
    args = ("fetch", "--all", "--endpoint", emulator.url, "--token", ADMIN_TOKEN)
    without = set(pd.read_csv(io.StringIO(cli(*args).out))["id"])
    ran = cli(*args, "--include-deleted")
    assert ran.status == 0, ran.err
    listed = set(pd.read_csv(io.StringIO(ran.out))["id"])
    assert listed == {image.id for image in fleet.images} and not (without & deleted)
    refused = cli("fetch", "some-id", "--include-deleted", "--endpoint", emulator.url)
    assert refused.status == 2 and "--all" in refused.err


def test_a_listing_that_fails_midway_keeps_the_rows_read_and_the_rerun_resumes(cli, tmp_path):
    fleet = make_fleet(2500, seed=12)
    out = tmp_path / "all.csv"
    args = ("fetch", "--all", "--head", "--token", ADMIN_TOKEN, "--retries", "1", "-o", str(out))
    with GlanceEmulator(fleet, faults=Faults(list_fail_from=2, latency=0.002)) as emu:
        ran = cli(*args, "--endpoint", emu.url)
        assert ran.status == 5, ran.err
        assert "rows kept in checkpoint" in ran.err and "HTTP 500" in ran.last_line
        assert not out.exists()
        kept = read_manifest(f"{out}.checkpoint").rows
        assert 0 < kept <= 1000  # at most the first page
        emu.faults = Faults()
        emu.reset_log()
        again = cli(*args, "--endpoint", emu.url)
        assert again.status == 0, again.err
        heads = [r.image_id for r in emu.request_log if r.method == "HEAD"]
    listed = [image.id for image in fleet.images if not image.deleted]
    assert len(heads) == len(listed) - kept and len(set(heads)) == len(heads)
    assert set(pd.read_csv(out)["id"]) == set(listed)
