"""The ``imgframe`` command, run as a user would: a real process, real HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from imgframe.testing import ADMIN_TOKEN, GlanceEmulator, make_fleet


def run(*args: str, stdin: str | None = None, env: dict[str, str] | None = None, cwd=None):
    environment = {**os.environ, **(env or {})}
    environment.pop("OS_AUTH_TOKEN", None) if env is None else None
    return subprocess.run(
        [sys.executable, "-m", "imgframe", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def fleet():
    return make_fleet(50, seed=3)


@pytest.fixture(scope="module")
def emulator(fleet) -> Iterator[GlanceEmulator]:
    with GlanceEmulator(fleet) as emu:
        yield emu


def test_help_lists_the_commands() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("fetch", "emulator", "demo"):
        assert command in result.stdout
    assert "--endpoint" in run("fetch", "--help").stdout


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".json"])
def test_fetch_writes_the_format_its_extension_names(fleet, emulator, tmp_path, suffix) -> None:
    ids = [i.id for i in fleet.images[:5]]
    out = tmp_path / f"images{suffix}"
    result = run("fetch", *ids, "--endpoint", emulator.url, "--token", ADMIN_TOKEN, "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "5 image ids: 5 fetched, 0 failed" in result.stderr
    if suffix == ".csv":
        assert pd.read_csv(out)["id"].tolist() == ids
    elif suffix == ".parquet":
        assert pq.read_table(out).column("id").to_pylist() == ids
    else:
        assert [r["id"] for r in json.loads(out.read_text())] == ids


def test_fetch_all_lists_the_cloud_and_fetches_every_image(fleet, emulator, tmp_path) -> None:
    out = tmp_path / "cloud.csv"
    result = run(
        "fetch", "--all", "--endpoint", emulator.url, "--token", ADMIN_TOKEN, "-o", str(out)
    )
    assert result.returncode == 0, result.stderr
    listed = {i.id for i in fleet.images if not i.deleted}
    assert set(pd.read_csv(out)["id"]) == listed
    assert f"{len(listed)} image ids: {len(listed)} fetched" in result.stderr
    both = run("fetch", "--all", "x", "--endpoint", emulator.url, "--token", ADMIN_TOKEN)
    assert both.returncode != 0 and "--all" in both.stderr


def test_fetch_reads_ids_from_file_and_stdin(fleet, emulator, tmp_path) -> None:
    ids = [i.id for i in fleet.images[:4]]
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("# my images\n" + "\n".join(ids[:2]) + "\n\n")
    result = run(
        "fetch", "--ids-file", str(ids_file), "--endpoint", emulator.url, "-o",
        str(tmp_path / "a.csv"), env={"OS_AUTH_TOKEN": ADMIN_TOKEN},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert pd.read_csv(tmp_path / "a.csv")["id"].tolist() == ids[:2]
    piped = run(
        "fetch", "--endpoint", emulator.url, "--token", ADMIN_TOKEN, stdin="\n".join(ids) + "\n"
    )
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.splitlines()[0].startswith("id,name,status")
    assert len(piped.stdout.splitlines()) == 5


def test_failed_ids_are_rows_in_the_output(fleet, emulator, tmp_path) -> None:
    out = tmp_path / "out.csv"
    result = run(
        "fetch", fleet.images[0].id, "no-such-image", "../bad",
        "--endpoint", emulator.url, "--token", ADMIN_TOKEN, "-o", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "3 image ids: 1 fetched, 2 failed" in result.stderr  # the unsent invalid id counts
    df = pd.read_csv(out, index_col="id")
    assert df.loc["no-such-image", "http_status"] == 404
    assert df.loc["../bad", "error"] == "invalid image id"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fetch", "x", "--endpoint", "ftp://nowhere", "--token", "t"], "http(s) URL"),
        (
            ["fetch", "x", "--endpoint", "http://127.0.0.1:9", "--token", "t", "-o", "a.xlsx"],
            ".csv",
        ),
        (
            ["fetch", "--ids-file", "/nonexistent/ids", "--endpoint", "http://127.0.0.1:9"],
            "ids file",
        ),
        (["fetch", "x", "--endpoint", "http://127.0.0.1:9"], "OS_AUTH_TOKEN"),
        (["fetch", "--endpoint", "http://127.0.0.1:9", "--token", "t"], "no image ids"),
        (["fetch", "x", "--all", "--endpoint", "http://127.0.0.1:9", "--token", "t"], "not both"),
        (["fetch", "x"], "--endpoint URL"),
        (["fetch", "x", "--endpoint", "http://127.0.0.1:9", "--cloud", "c"], "not both"),
        (["fetch", "x", "--endpoint", "http://127.0.0.1:9", "--region", "r"], "add --cloud"),
        (["fetch", "x", "--cloud", "no-such-cloud-here"], "no-such-cloud-here"),
    ],
)
def test_user_errors_print_one_line_without_traceback(tmp_path, args, message) -> None:
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert message in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr


def test_no_v1_cloud_is_one_clear_line(fleet) -> None:
    from imgframe.testing import Faults

    with GlanceEmulator(fleet, faults=Faults(no_v1=True)) as emu:
        result = run("fetch", fleet.images[0].id, "--endpoint", emu.url, "--token", ADMIN_TOKEN)
    assert result.returncode == 2
    assert "no Glance v1 API" in result.stderr and "Traceback" not in result.stderr


def test_demo_fetches_the_fleet_and_writes_the_csv(tmp_path) -> None:
    result = run("demo", "--images", "400", "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    df = pd.read_csv(tmp_path / "out" / "images.csv")
    assert len(df) == 408  # 400 images + 2% unknown ids
    assert (df["http_status"] == 200).sum() == 400
    assert (df["http_status"] == 404).sum() == 8
    assert "images/s" in result.stdout and "by status:" in result.stdout


def test_emulator_command_serves_until_interrupted() -> None:
    import re
    import signal

    import requests

    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "imgframe",
            "emulator",
            "--images",
            "20",
            "--seed",
            "4",
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first_line = process.stdout.readline()  # type: ignore[union-attr]
        url = re.search(r"http://127\.0\.0\.1:\d+", first_line).group(0)  # type: ignore[union-attr]
        image_id = make_fleet(20, seed=4).images[0].id
        answer = requests.head(
            f"{url}/v1/images/{image_id}", headers={"X-Auth-Token": ADMIN_TOKEN}, timeout=10
        )
        assert answer.status_code == 200
        assert answer.headers["X-Image-Meta-Id"] == image_id
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
        process.stdout.close()  # type: ignore[union-attr]
        process.stderr.close()  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def fetched_csv(fleet, emulator, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("audit") / "images.csv"
    ids = [i.id for i in fleet.images] + ["no-such-image"]
    result = run("fetch", "--endpoint", emulator.url, "--token", ADMIN_TOKEN, "-o", str(out),
                 stdin="\n".join(ids))  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


def test_audit_prints_findings_table(fetched_csv) -> None:
    result = run("audit", str(fetched_csv))
    assert result.returncode == 0, result.stderr
    assert "findings:" in result.stdout and "fetch_failed" in result.stdout


@pytest.mark.parametrize("fmt", ["csv", "json", "html"])
def test_audit_writes_the_requested_format(fetched_csv, tmp_path, fmt) -> None:
    out = tmp_path / f"findings.{fmt}"
    result = run("audit", str(fetched_csv), "-o", str(out))
    assert result.returncode == 0, result.stderr
    text = out.read_text(encoding="utf-8")
    if fmt == "csv":
        findings = pd.read_csv(out)
        assert list(findings.columns) == ["rule", "severity", "image_id", "owner", "name", "detail"]
        assert "no-such-image" in set(findings["image_id"])
    elif fmt == "json":
        assert {r["rule"] for r in json.loads(text)} >= {"fetch_failed"}
    else:
        assert text.startswith("<!DOCTYPE html>") or "<html" in text[:200]


def test_audit_fail_on_exits_3_when_findings_are_that_bad(fetched_csv) -> None:
    assert run("audit", str(fetched_csv), "--fail-on", "medium").returncode == 3
    only_stale = run(
        "audit", str(fetched_csv), "--rules", "public_unprotected", "--fail-on", "high"
    )
    assert only_stale.returncode in (0, 3)


def test_audit_allow_list_drops_accepted_images(fetched_csv, tmp_path) -> None:
    allow = tmp_path / "allow.txt"
    allow.write_text("# accepted\nno-such-image\n")
    out = tmp_path / "f.csv"
    result = run("audit", str(fetched_csv), "--allow", str(allow), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "no-such-image" not in set(pd.read_csv(out)["image_id"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["audit", "/nonexistent/images.csv"], "No such file"),
        (["audit", "images.xlsx"], ".csv"),
    ],
)
def test_audit_bad_input_is_one_line(tmp_path, args, message) -> None:
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr and result.stderr.strip().count("\n") == 0


def test_audit_unknown_rule_is_one_line(fetched_csv) -> None:
    result = run("audit", str(fetched_csv), "--rules", "no_such_rule")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "no_such_rule" in result.stderr


def test_audit_of_a_csv_that_is_not_an_images_table_is_one_line(tmp_path) -> None:
    bogus = tmp_path / "bogus.csv"
    bogus.write_text("a,b\n1,2\n")
    result = run("audit", str(bogus))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr


def test_a_reader_that_goes_away_ends_the_command_quietly(emulator, fleet) -> None:
    # `imgframe fetch ... | head -1`: far more CSV than a pipe buffer holds, reader gone.
    ids = [i.id for i in fleet.images] + [f"missing-{n:05d}" for n in range(3000)]
    with subprocess.Popen(
        [sys.executable, "-m", "imgframe", "fetch", "--endpoint", emulator.url, "--ids-file", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "OS_AUTH_TOKEN": ADMIN_TOKEN},
    ) as process:
        process.stdin.write("\n".join(ids).encode())
        process.stdin.close()
        assert process.stdout.readline().startswith(b"id,")
        process.stdout.close()
        process.wait(timeout=120)
        stderr = process.stderr.read().decode()
    assert process.returncode == 141, stderr
    assert "error" not in stderr and "Traceback" not in stderr, stderr


def test_emulator_plays_a_cloud_of_regions_with_keystone_and_clouds_yaml(tmp_path) -> None:
    import signal

    pytest.importorskip("openstack.config")
    clouds_yaml = tmp_path / "lab.yaml"
    process = subprocess.Popen(
        [sys.executable, "-m", "imgframe", "emulator", "--images", "30", "--regions",
         "east,west", "--clouds-yaml", str(clouds_yaml)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        lines = []
        for _ in range(10):  # bounded: the banner is five lines
            lines.append(process.stdout.readline())  # type: ignore[union-attr]
            if lines[-1].lstrip().startswith("try:") or not lines[-1]:
                break
        assert "region east" in "".join(lines) and clouds_yaml.exists(), lines
        out = tmp_path / "fleet.csv"
        env = {name: value for name, value in os.environ.items() if not name.startswith("OS_")} | {
            "OS_CLIENT_CONFIG_FILE": str(clouds_yaml)
        }
        result = run("fetch", "--cloud", "lab", "--all", "-o", str(out), env=env)
        assert result.returncode == 0, result.stderr
        frame = pd.read_csv(out)
        assert set(frame["region"]) == {"east", "west"}
        expected = sum(
            1 for seed in (0, 1) for image in make_fleet(30, seed=seed).images if not image.deleted
        )
        assert len(frame) == expected and frame["key"].is_unique
        counts = frame["region"].value_counts()
        assert f"by cloud/region: lab/east {counts['east']:,}, lab/west {counts['west']:,}" in (
            result.stderr
        )
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        process.stdout.close()  # type: ignore[union-attr]
        process.stderr.close()  # type: ignore[union-attr]
