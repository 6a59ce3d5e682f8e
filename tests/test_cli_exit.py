"""``imgframe fetch`` exits with the status that tells what happened (``imgframe --help``).

0 complete, 2 usage (found before any request), 4 incomplete (the table is written, the
last line says why), 5 failed as a whole (nothing written). Each case runs ``main(argv)``
in this process against emulators on 127.0.0.1 and checks what the emulator was sent.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from imgframe.cli import main
from imgframe.io import read_parquet
from imgframe.testing import ADMIN_TOKEN, Faults, GlanceEmulator, make_fleet

OLD_SNAPSHOT = "id,name\r\nold,snapshot\r\n"


@dataclass
class Ran:
    status: int
    out: str
    err: str

    @property
    def last_line(self) -> str:
        return self.err.strip().splitlines()[-1]


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("OS_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def call(*args: str) -> Ran:
        capsys.readouterr()
        monkeypatch.setattr(sys, "stdin", io.StringIO(""))
        status = main(list(args))
        captured = capsys.readouterr()
        return Ran(status, captured.out, captured.err)

    return call


@pytest.fixture(scope="module")
def fleet():
    return make_fleet(1000, seed=8)


@pytest.fixture(scope="module")
def emulator(fleet) -> Iterator[GlanceEmulator]:
    with GlanceEmulator(fleet) as emu:
        yield emu


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


@pytest.mark.parametrize("tail", ["/v2", "/v2/", "/v2.0", "/v1/images", "/images"])
def test_an_endpoint_with_a_version_typo_is_refused_before_any_request(emulator, cli, tail):
    emulator.reset_log()
    ran = cli("fetch", "some-id", "--endpoint", emulator.url + tail, "--token", ADMIN_TOKEN)
    assert ran.status == 2, ran.err
    assert "base URL" in ran.err and ran.err.count("\n") == 1
    assert emulator.request_log == []


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
def lab_cloud(tmp_path, monkeypatch, region_fleets) -> Iterator[dict[str, GlanceEmulator]]:
    """A cloud ``lab`` with regions east (fine) and west (Glance v1 gone: the target fails
    as a whole), in a clouds.yaml that OS_CLIENT_CONFIG_FILE points at."""
    pytest.importorskip("openstack.config")
    from imgframe.testing.keystone import FakeKeystone

    east, west = region_fleets
    with (
        GlanceEmulator(east) as east_glance,
        GlanceEmulator(west, faults=Faults(no_v1=True)) as west_glance,
        FakeKeystone({"east": east_glance, "west": west_glance}) as keystone,
    ):
        clouds = {"clouds": {"lab": {"auth": keystone.auth(), "regions": ["east", "west"]}}}
        path = tmp_path / "clouds.yaml"
        path.write_text(json.dumps(clouds))
        for name in [n for n in __import__("os").environ if n.startswith("OS_")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(path))
        monkeypatch.setenv("OS_CLIENT_SECURE_FILE", str(tmp_path / "secure.yaml"))
        yield {"east": east_glance, "west": west_glance}


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


def test_keep_going_with_every_target_failed_is_a_failed_run(lab_cloud, cli, snapshot) -> None:
    ran = cli("fetch", "--cloud", "lab", "--region", "west", "--all", "--keep-going",
              "-o", str(snapshot))  # fmt: skip
    assert ran.status == 5, ran.err
    assert "every target failed: lab/west" in ran.last_line
    assert snapshot.read_bytes() == OLD_SNAPSHOT.encode()
