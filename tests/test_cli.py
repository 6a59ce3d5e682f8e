"""The ``imgframe`` command against the emulator over real HTTP.

Most tests call ``main(argv)`` in this process (it returns the exit status and prints
what the command prints); a real process is started only where a process is the point:
``python -m imgframe``, pipes, the long-running emulator command.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

import imgframe
import imgframe.changes
from imgframe.cli import main
from imgframe.testing import ADMIN_TOKEN, Faults, GlanceEmulator, make_fleet

FLEET = {"n": 50, "seed": 3}  # the module's `fleet` (tests/conftest.py)


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


def test_python_m_imgframe_help_lists_the_commands_and_exit_statuses() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("fetch", "emulator", "demo", "audit"):
        assert command in result.stdout
    assert "exit status:" in result.stdout
    for status in ("0 ", "1 ", "2 ", "3 ", "4 ", "5 ", "130", "143", "141"):
        assert f"\n  {status}" in result.stdout, status


def test_fetch_help_documents_exit_statuses_checkpoint_and_signals(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["fetch", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for words in ("exit status:", "--checkpoint", "--no-checkpoint", "SIGTERM", "143",
                  "resume", "--include-deleted", "incomplete"):  # fmt: skip
        assert words in text, words


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".json"])
def test_fetch_writes_the_format_its_extension_names(fleet, emulator, tmp_path, cli, suffix):
    ids = [i.id for i in fleet.images[:5]]
    out = tmp_path / f"images{suffix}"
    ran = cli("fetch", *ids, "--endpoint", emulator.url, "--token", ADMIN_TOKEN, "-o", str(out))
    assert ran.status == 0, ran.err
    assert "5 image ids: 5 fetched, 0 failed" in ran.err
    if suffix == ".csv":
        assert pd.read_csv(out)["id"].tolist() == ids
    elif suffix == ".parquet":
        assert pq.read_table(out).column("id").to_pylist() == ids
    else:
        assert [r["id"] for r in json.loads(out.read_text())] == ids
    # beside a CSV or JSON table, its provenance sidecar (imgframe/provenance.py)
    sidecar = [] if suffix == ".parquet" else [out.name + ".meta.json"]
    written = sorted(p.name for p in tmp_path.iterdir() if p.name != "cache")
    assert written == sorted([out.name, *sidecar])


def test_fetch_all_lists_the_cloud_and_fetches_every_image(fleet, emulator, tmp_path, cli):
    out = tmp_path / "cloud.csv"
    ran = cli("fetch", "--all", "--endpoint", emulator.url, "--token", ADMIN_TOKEN, "-o", str(out))
    assert ran.status == 0, ran.err
    listed = {i.id for i in fleet.images if not i.deleted}
    assert set(pd.read_csv(out)["id"]) == listed
    assert f"{len(listed)} image ids: {len(listed)} fetched" in ran.err
    both = cli("fetch", "--all", "x", "--endpoint", emulator.url, "--token", ADMIN_TOKEN)
    assert both.status == 2 and "--all" in both.err


def test_fetch_reads_ids_from_file_and_stdin(fleet, emulator, tmp_path, cli, monkeypatch):
    ids = [i.id for i in fleet.images[:4]]
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("# my images\n" + "\n".join(ids[:2]) + "\n\n")
    monkeypatch.setenv("OS_AUTH_TOKEN", ADMIN_TOKEN)
    ran = cli("fetch", "--ids-file", str(ids_file), "--endpoint", emulator.url,
              "-o", str(tmp_path / "a.csv"))  # fmt: skip
    assert ran.status == 0, ran.err
    assert pd.read_csv(tmp_path / "a.csv")["id"].tolist() == ids[:2]
    piped = cli("fetch", "--endpoint", emulator.url, "--ids-file", "-", stdin="\n".join(ids))
    assert piped.status == 0, piped.err
    assert piped.out.splitlines()[0].startswith("id,name,status")
    assert len(piped.out.splitlines()) == 5


def test_a_byte_order_mark_on_stdin_is_not_part_of_the_first_id(fleet, emulator, cli):
    ids = [i.id for i in fleet.images[:3]]
    ran = cli("fetch", "--endpoint", emulator.url, "--token", ADMIN_TOKEN, "--ids-file", "-",
              stdin="\ufeff" + "\r\n".join(ids) + "\r\n")  # fmt: skip
    assert ran.status == 0, ran.err
    assert pd.read_csv(io.StringIO(ran.out))["id"].tolist() == ids


def test_an_ids_file_that_is_a_csv_is_read_by_its_id_column(fleet, emulator, tmp_path, cli):
    ids = [i.id for i in fleet.images[:3]]
    table = tmp_path / "ids.csv"
    table.write_text("name,id,owner\n" + "".join(f'"x, {n}",{i},p\n' for n, i in enumerate(ids)))
    ran = cli("fetch", "--ids-file", str(table), "--endpoint", emulator.url, "--token",
              ADMIN_TOKEN)  # fmt: skip
    assert ran.status == 0, ran.err
    assert pd.read_csv(io.StringIO(ran.out))["id"].tolist() == ids


def test_a_table_imgframe_wrote_is_an_ids_file(fleet, emulator, tmp_path, cli):
    first = tmp_path / "first.csv"
    ids = [i.id for i in fleet.images[:4]] + ["=not-a-formula"]
    assert cli("fetch", *ids, "--endpoint", emulator.url, "--token", ADMIN_TOKEN,
               "-o", str(first)).status == 0  # fmt: skip
    again = cli("fetch", "--ids-file", str(first), "--endpoint", emulator.url, "--token",
                ADMIN_TOKEN)  # fmt: skip
    assert again.status == 0, again.err
    assert pd.read_csv(io.StringIO(again.out), keep_default_na=False)["id"].tolist() == [
        *ids[:4],
        "'=not-a-formula",  # the CSV on stdout guards it again; the id itself came back
    ]


def test_a_csv_without_an_id_column_is_refused_with_a_hint(tmp_path, cli):
    table = tmp_path / "images.csv"
    table.write_text("uuid,name\nabc,x\n")
    ran = cli("fetch", "--ids-file", str(table), "--endpoint", "http://127.0.0.1:9",
              "--token", "t")  # fmt: skip
    assert ran.status == 2
    assert "no 'id' column" in ran.err and "one image id per line" in ran.err
    assert ran.err.count("\n") == 1


def test_failed_ids_are_rows_and_a_definitive_run_exits_0(fleet, emulator, tmp_path, cli):
    out = tmp_path / "out.csv"
    ran = cli("fetch", fleet.images[0].id, "no-such-image", "../bad",
              "--endpoint", emulator.url, "--token", ADMIN_TOKEN, "-o", str(out))  # fmt: skip
    assert ran.status == 0, ran.err  # 404 and an invalid id are definitive answers
    assert "3 image ids: 1 fetched, 2 failed" in ran.err  # the unsent invalid id counts
    df = pd.read_csv(out, index_col="id")
    assert df.loc["no-such-image", "http_status"] == 404
    assert df.loc["../bad", "error"] == "invalid image id"
    assert "incomplete" not in ran.err


def test_a_token_on_the_command_line_gets_a_warning(fleet, emulator, cli, monkeypatch):
    ran = cli("fetch", fleet.images[0].id, "--endpoint", emulator.url, "--token", ADMIN_TOKEN)
    assert ran.status == 0 and "visible to every user" in ran.err and "OS_AUTH_TOKEN" in ran.err
    monkeypatch.setenv("OS_AUTH_TOKEN", ADMIN_TOKEN)
    quiet = cli("fetch", fleet.images[0].id, "--endpoint", emulator.url)
    assert quiet.status == 0 and "visible" not in quiet.err


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
        (
            ["fetch", "--endpoint", "http://127.0.0.1:9", "--token", "t", "-o", "a.csv"],
            "no image ids",
        ),
        (["fetch", "x", "--all", "--endpoint", "http://127.0.0.1:9", "--token", "t"], "not both"),
        (["fetch", "x"], "--endpoint URL"),
        (["fetch", "x", "--endpoint", "http://127.0.0.1:9", "--cloud", "c"], "not both"),
        (["fetch", "x", "--token", "t", "--cloud", "c"], "clouds.yaml"),
        (["fetch", "x", "--endpoint", "http://127.0.0.1:9", "--region", "r"], "add --cloud"),
        (["fetch", "x", "--cloud", "no-such-cloud-here"], "no-such-cloud-here"),
    ],
)
def test_user_errors_print_one_line_and_exit_2(tmp_path, cli, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(tmp_path / "none.yaml"))
    ran = cli(*args)
    assert ran.status == 2, ran.err
    assert "Traceback" not in ran.err
    assert message in ran.err
    assert ran.err.strip().count("\n") == 0, ran.err


def test_no_v1_cloud_fails_as_a_whole_in_one_line(fleet, cli, tmp_path) -> None:
    out = tmp_path / "out.csv"
    with GlanceEmulator(fleet, faults=Faults(no_v1=True)) as emu:
        ran = cli("fetch", fleet.images[0].id, "--endpoint", emu.url, "-o", str(out),
                  "--token", ADMIN_TOKEN)  # fmt: skip
    assert ran.status == 5
    assert "no Glance v1 API" in ran.err and "Traceback" not in ran.err
    assert not out.exists()


def test_demo_fetches_the_fleet_and_writes_the_csv(tmp_path, cli) -> None:
    ran = cli("demo", "--images", "400", "--output-dir", str(tmp_path / "out"))
    assert ran.status == 0, ran.err
    df = pd.read_csv(tmp_path / "out" / "images.csv")
    assert len(df) == 410  # 400 images + 2% unknown ids + 2 uploaded during the week
    assert (df["http_status"] == 200).sum() == 402  # deleted ones too: the admin sees them
    assert (df["http_status"] == 404).sum() == 8
    assert "images/s" in ran.out and "by status:" in ran.out


def test_demo_keeps_a_week_in_a_history_and_writes_what_changed(tmp_path, cli) -> None:
    out = tmp_path / "out"
    for _ in range(2):  # a second run starts a fresh history instead of colliding
        ran = cli("demo", "--images", "400", "--output-dir", str(out))
        assert ran.status == 0, ran.err
    history = imgframe.History(out / "history")
    assert len(history.snapshots()) == 2
    changes = imgframe.read_csv(out / "changes.csv")
    pairs = set(zip(changes["image_id"], changes["change"].astype(str), strict=True))
    again = history.diff()
    assert pairs == set(zip(again["image_id"], again["change"].astype(str), strict=True))
    kinds = set(changes["change"].astype(str))
    assert {"became_public", "owner_changed", "signature_removed", "disappeared"} <= kinds
    assert f"what changed: {imgframe.changes.summary(changes)}" in ran.out
    # the saved table audited later gives the demo's findings: its fetch time is in it
    findings = imgframe.read_csv(out / "findings.csv")
    audited = cli("audit", str(out / "images.csv"), "--servers", str(out / "servers.csv"),
                  "--volumes", str(out / "volumes.csv"), "--trusted",
                  f"@{out / 'trusted.txt'}", "-o", str(out / "again.csv"))  # fmt: skip
    assert audited.status == 0, audited.err
    assert len(imgframe.read_csv(out / "again.csv")) == len(findings)


def test_demo_finds_the_planted_usage_and_writes_servers_and_volumes(tmp_path, cli) -> None:
    from imgframe.cli import DEMO_SEED
    from imgframe.testing.compute import make_usage

    out = tmp_path / "out"
    ran = cli("demo", "--images", "400", "--output-dir", str(out))
    assert ran.status == 0, ran.err
    planted = make_usage(make_fleet(400, seed=DEMO_SEED), seed=DEMO_SEED).planted
    assert planted.unused and planted.only_stopped_servers
    images = pd.read_csv(out / "images.csv", dtype={"id": str}).set_index("id")
    read = set(images.index[(images["http_status"] == 200) & images["error"].isna()])
    # still active after the week's changes (some were deleted); two were uploaded
    read &= set(images.index[images["status"] == "active"])
    uploaded = set(images.index[images["name"].str.startswith("uploaded this week", na=False)])
    assert len(uploaded) == 2
    findings = pd.read_csv(out / "findings.csv", dtype={"image_id": str})
    for rule, answer in (("unused", planted.unused),
                         ("only_stopped_servers", planted.only_stopped_servers)):  # fmt: skip
        found = set(findings.loc[findings["rule"] == rule, "image_id"])
        # exactly the planted images whose rows the demo's faults left readable (and
        # the week's uploads, which nothing uses yet)
        assert found - uploaded == answer & read, rule
        assert f"{len(found):,} (planted {len(answer):,}, {len(answer - found):,} not read" in (
            ran.out
        )
    assert "owners could reclaim" in ran.out and "reclaimable" in ran.out
    servers = pd.read_csv(out / "servers.csv")
    volumes = pd.read_csv(out / "volumes.csv")
    assert len(servers) > 0 and servers["image_id"].isna().any()  # boot-from-volume ones
    assert len(volumes) > 0 and f"read {len(servers):,} servers and {len(volumes):,}" in ran.out


def test_emulator_command_serves_until_interrupted() -> None:
    import re
    import signal

    import requests

    process = subprocess.Popen(
        [sys.executable, "-m", "imgframe", "emulator", "--images", "20", "--seed", "4",
         "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
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


def test_emulator_regions_never_replaces_an_existing_clouds_yaml(tmp_path, cli) -> None:
    mine = tmp_path / "clouds.yaml"
    mine.write_text("clouds: {prod: {auth: {password: real}}}\n")
    ran = cli("emulator", "--regions", "east,west", "--clouds-yaml", str(mine))
    assert ran.status == 2 and "exists" in ran.err and "--force" in ran.err
    assert mine.read_text() == "clouds: {prod: {auth: {password: real}}}\n"
    assert cli("emulator", "--force").status == 2  # --force only means something with --regions


@pytest.fixture(scope="module")
def fetched_csv(fleet, emulator, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("audit") / "images.csv"
    ids = [i.id for i in fleet.images] + ["no-such-image"]
    assert main(["fetch", *ids, "--endpoint", emulator.url, "--token", ADMIN_TOKEN,
                 "-o", str(out), "--no-checkpoint"]) == 0  # fmt: skip
    return out


def test_audit_prints_findings_table(fetched_csv, cli) -> None:
    ran = cli("audit", str(fetched_csv))
    assert ran.status == 0, ran.err
    assert "findings:" in ran.out and "fetch_failed" in ran.out


@pytest.mark.parametrize("fmt", ["csv", "json", "html", "parquet", "txt"])
def test_audit_writes_the_format_its_extension_names(fetched_csv, tmp_path, cli, fmt) -> None:
    out = tmp_path / f"findings.{fmt}"
    ran = cli("audit", str(fetched_csv), "-o", str(out))
    assert ran.status == 0, ran.err
    if fmt == "csv":
        findings = pd.read_csv(out)
        assert list(findings.columns) == ["rule", "severity", "image_id", "owner", "name", "detail"]
        assert "no-such-image" in set(findings["image_id"])
    elif fmt == "json":
        assert {r["rule"] for r in json.loads(out.read_text())} >= {"fetch_failed"}
    elif fmt == "parquet":
        findings = pq.read_table(out).to_pandas()
        assert "no-such-image" in set(findings["image_id"]) and "rule" in findings
    elif fmt == "txt":
        assert out.read_text().startswith(ran.out or "") and "findings:" in out.read_text()
    else:
        assert out.read_text().startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == [out.name]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-o", "findings.xlsx"], ".parquet, .html or .txt"),
        (["-o", "findings.md"], ".parquet, .html or .txt"),
        (["--format", "csv", "-o", "findings.json"], "names a json file"),
        (["--format", "parquet"], "needs -o"),
        (["-o", "nodir/findings.csv"], "does not exist"),
    ],
)
def test_audit_refuses_an_output_it_would_not_honour(fetched_csv, tmp_path, cli, monkeypatch,
                                                     args, message):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    ran = cli("audit", str(fetched_csv), *args)
    assert ran.status == 2 and message in ran.err and ran.err.count("\n") == 1, ran.err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == []


def test_audit_html_without_o_goes_to_stdout(fetched_csv, tmp_path, cli, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    ran = cli("audit", str(fetched_csv), "--format", "html")
    assert ran.status == 0, ran.err
    assert ran.out.startswith("<!DOCTYPE html>") and "no-such-image" in ran.out
    assert not (tmp_path / "report.html").exists()


def test_audit_fail_on_exits_3_when_findings_are_that_bad(fetched_csv, cli) -> None:
    assert cli("audit", str(fetched_csv), "--fail-on", "medium").status == 3
    assert cli("audit", str(fetched_csv), "--rules", "stale", "--fail-on", "high").status == 0


def test_audit_allow_list_drops_accepted_images(fetched_csv, tmp_path, cli) -> None:
    allow = tmp_path / "allow.txt"
    allow.write_text("# accepted\nno-such-image\n")
    out = tmp_path / "f.csv"
    ran = cli("audit", str(fetched_csv), "--allow", str(allow), "-o", str(out))
    assert ran.status == 0, ran.err
    assert "no-such-image" not in set(pd.read_csv(out)["image_id"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["audit", "/nonexistent/images.csv"], "No such file"),
        (["audit", "images.xlsx"], ".csv"),
    ],
)
def test_audit_bad_input_is_one_line(tmp_path, cli, monkeypatch, args, message) -> None:
    monkeypatch.chdir(tmp_path)
    ran = cli(*args)
    assert ran.status == 2 and "Traceback" not in ran.err
    assert message in ran.err and ran.err.strip().count("\n") == 0


def test_audit_unknown_rule_is_one_line(fetched_csv, cli) -> None:
    ran = cli("audit", str(fetched_csv), "--rules", "no_such_rule")
    assert ran.status == 2 and "Traceback" not in ran.err
    assert "no_such_rule" in ran.err


def test_audit_of_a_csv_that_is_not_an_images_table_is_one_line(tmp_path, cli) -> None:
    bogus = tmp_path / "bogus.csv"
    bogus.write_text("a,b\n1,2\n")
    ran = cli("audit", str(bogus))
    assert ran.status == 2 and "Traceback" not in ran.err, ran.err


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".json"])
def test_audit_of_a_truncated_table_says_so_and_exits_2(fetched_csv, tmp_path, cli, suffix):
    from imgframe.io import read, write

    whole = write(read(fetched_csv), tmp_path / f"images{suffix}")
    data = whole.read_bytes()
    whole.write_bytes(data[: len(data) * 2 // 3])
    ran = cli("audit", str(whole))
    assert ran.status == 2, ran.err
    name = {".csv": "CSV", ".parquet": "Parquet", ".json": "JSON"}[suffix]
    assert f"not a readable {name} file" in ran.err and ran.err.count("\n") == 1, ran.err


def test_a_bug_is_one_line_and_the_traceback_is_there_on_request(fleet, emulator, cli,
                                                                 monkeypatch):  # fmt: skip
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("imgframe.cli.summarize", broken)
    args = ("fetch", fleet.images[0].id, "--endpoint", emulator.url, "--token", ADMIN_TOKEN)
    ran = cli(*args)
    assert ran.status == 1
    assert "internal error: RuntimeError: a bug" in ran.err and "IMGFRAME_DEBUG" in ran.err
    monkeypatch.setenv("IMGFRAME_DEBUG", "1")
    with pytest.raises(RuntimeError, match="a bug"):
        cli(*args)


def test_a_reader_that_goes_away_ends_the_command_quietly(emulator, fleet, tmp_path) -> None:
    # `imgframe fetch ... | head -1`: far more CSV than a pipe buffer holds, reader gone.
    ids = [i.id for i in fleet.images] + [f"missing-{n:05d}" for n in range(3000)]
    cache = tmp_path / "cache"
    with subprocess.Popen(
        [sys.executable, "-m", "imgframe", "fetch", "--endpoint", emulator.url, "--ids-file", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "OS_AUTH_TOKEN": ADMIN_TOKEN, "XDG_CACHE_HOME": str(cache)},
    ) as process:  # fmt: skip
        process.stdin.write("\n".join(ids).encode())
        process.stdin.close()
        assert process.stdout.readline().startswith(b"id,")
        process.stdout.close()
        process.wait(timeout=120)
        stderr = process.stderr.read().decode()
    assert process.returncode == 141, stderr
    assert "error" not in stderr and "Traceback" not in stderr, stderr
    # The fetch was complete: its checkpoint is not kept to answer a later run.
    assert list((cache / "imgframe" / "checkpoints").iterdir()) == []


def test_emulator_plays_a_cloud_of_regions_with_keystone_and_clouds_yaml(
    tmp_path, cli, monkeypatch
) -> None:
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
        for name in [name for name in os.environ if name.startswith("OS_")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds_yaml))
        # The emulator command needs its own process (it serves until a signal); the fetch
        # against it does not.
        ran = cli("fetch", "--cloud", "lab", "--all", "-o", str(out))
        assert ran.status == 0, ran.err
        frame = pd.read_csv(out)
        assert set(frame["region"]) == {"east", "west"}
        expected = sum(
            1 for seed in (0, 1) for image in make_fleet(30, seed=seed).images if not image.deleted
        )
        assert len(frame) == expected and frame["key"].is_unique
        counts = frame["region"].value_counts()
        assert f"by cloud/region: lab/east {counts['east']:,}, lab/west {counts['west']:,}" in (
            ran.err
        )
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        process.stdout.close()  # type: ignore[union-attr]
        process.stderr.close()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["fetch", "--token", "s3cr3t", "a"], "imgframe fetch a"),
        (["fetch", "--token=s3cr3t", "a"], "imgframe fetch a"),
        (["fetch", "--tok", "s3cr3t", "a"], "imgframe fetch a"),  # argparse takes abbreviations
        (
            ["fetch", "-o", "my out.csv", "--", "--token"],
            "imgframe fetch -o 'my out.csv' -- --token",
        ),
        (
            ["fetch", "--endpoint", "http://h/?a=$b", "x"],
            "imgframe fetch --endpoint 'http://h/?a=$b' x",
        ),
    ],
)
def test_the_resume_command_is_the_same_command_without_the_token(argv, expected) -> None:
    from imgframe.cli import resume_command

    assert resume_command(argv) == expected
    assert "s3cr3t" not in resume_command(argv)


def test_audit_of_an_incomplete_table_says_so(fleet, tmp_path, cli) -> None:
    faults = Faults(transient_rate=0.2, transient_attempts=9, retry_after=0.0, seed=3,
                    transient_kinds=("503",))  # fmt: skip
    ids = [image.id for image in fleet.images]
    stuck = sum(faults.transient_kind(i) is not None for i in ids)
    table = tmp_path / "incomplete.parquet"
    with GlanceEmulator(fleet, faults=faults) as emu:
        ran = cli("fetch", *ids, "--endpoint", emu.url, "--token", ADMIN_TOKEN,
                  "--retries", "0", "-o", str(table), "--no-checkpoint")  # fmt: skip
    assert ran.status == 4 and stuck > 0
    audited = cli("audit", str(table))
    assert audited.status == 0
    assert f"is incomplete: {stuck} of {len(ids)} ids could not be read" in audited.err
    assert "fetch_failed" in audited.out


# ---------------------------------------------------------------- servers, volumes, audit
def _usage_cloud() -> tuple[object, object]:
    from imgframe.testing.compute import make_usage

    images = make_fleet(150, seed=11)
    return images, make_usage(images, seed=11)


def _images_table(cli, images, path: Path) -> None:
    with GlanceEmulator(images) as glance:
        ids = [image.id for image in images.images]
        ran = cli("fetch", *ids, "--endpoint", glance.url, "-o", str(path))
    assert ran.status == 0, ran.err


@pytest.mark.parametrize("ext", ["csv", "parquet", "json"])
def test_servers_and_volumes_tables_feed_the_usage_rules_of_audit(
    tmp_path, cli, monkeypatch, ext
) -> None:
    from imgframe.testing.compute import ComputeEmulator

    monkeypatch.setenv("OS_AUTH_TOKEN", ADMIN_TOKEN)
    images, usage = _usage_cloud()
    table = tmp_path / "images.csv"
    _images_table(cli, images, table)
    servers, volumes = tmp_path / f"servers.{ext}", tmp_path / f"volumes.{ext}"
    with ComputeEmulator(usage, max_limit=40) as nova:
        listed = cli("servers", "--endpoint", nova.compute_url, "-o", str(servers))
        assert listed.status == 0, listed.err
        assert f"wrote {len(usage.servers):,} servers" in listed.err
        listed = cli("volumes", "--endpoint", nova.volume_url, "-o", str(volumes))
        assert listed.status == 0, listed.err
        pages = len(nova.requests)
    assert pages >= len(usage.servers) // 40  # paged, not one answer
    found_file = tmp_path / "findings.csv"
    ran = cli("audit", str(table), "--servers", str(servers), "--volumes", str(volumes),
              "--rules", "unused,only_stopped_servers", "-o", str(found_file))  # fmt: skip
    assert ran.status == 0, ran.err
    findings = pd.read_csv(found_file, dtype={"image_id": str})
    planted = usage.planted
    assert planted.unused and planted.only_stopped_servers and planted.through_volumes
    for rule, answer in (("unused", planted.unused),
                         ("only_stopped_servers", planted.only_stopped_servers)):  # fmt: skip
        assert set(findings.loc[findings["rule"] == rule, "image_id"]) == answer, rule


def test_audit_with_servers_only_flags_nothing_unused(tmp_path, cli, monkeypatch) -> None:
    from imgframe.testing.compute import ComputeEmulator

    monkeypatch.setenv("OS_AUTH_TOKEN", ADMIN_TOKEN)
    images, usage = _usage_cloud()
    table, servers = tmp_path / "images.csv", tmp_path / "servers.csv"
    _images_table(cli, images, table)
    with ComputeEmulator(usage) as nova:
        assert cli("servers", "--endpoint", nova.compute_url, "-o", str(servers)).status == 0
    ran = cli("audit", str(table), "--servers", str(servers), "--format", "csv",
              "--rules", "unused,only_stopped_servers")  # fmt: skip
    assert ran.status == 0, ran.err
    findings = pd.read_csv(io.StringIO(ran.out), dtype={"image_id": str})
    # images used only through volumes would look unused: without volumes none is flagged
    assert not (findings["rule"] == "unused").any()
    stopped = set(findings.loc[findings["rule"] == "only_stopped_servers", "image_id"])
    # a stopped server booted from a volume is only seen through the volume
    assert stopped and stopped <= usage.planted.only_stopped_servers


def test_a_member_listing_is_incomplete_and_not_written(tmp_path, cli, monkeypatch) -> None:
    from imgframe.testing.compute import ComputeEmulator

    _, usage = _usage_cloud()
    out = tmp_path / "servers.csv"
    monkeypatch.setenv("OS_AUTH_TOKEN", "member-token")
    with ComputeEmulator(usage) as nova:
        nova.accept_token("member-token", usage.servers[0].project_id)
        ran = cli("servers", "--endpoint", nova.compute_url, "-o", str(out))
        assert ran.status == 4, ran.err
        assert "all_tenants" in ran.err and "nothing written" in ran.err
        volumes = cli("volumes", "--endpoint", nova.volume_url, "-o", str(tmp_path / "v.csv"))
        assert volumes.status == 4, volumes.err
    assert not out.exists() and not (tmp_path / "v.csv").exists()


def test_a_listing_that_fails_exits_5_and_keeps_the_old_file(tmp_path, cli, monkeypatch) -> None:
    from imgframe.testing.compute import ComputeEmulator

    _, usage = _usage_cloud()
    out = tmp_path / "servers.csv"
    out.write_text("kept\n")
    monkeypatch.setenv("OS_AUTH_TOKEN", ADMIN_TOKEN)
    with ComputeEmulator(usage, max_limit=20, fail_page=2) as nova:
        ran = cli("servers", "--endpoint", nova.compute_url, "-o", str(out), "--retries", "0")
    assert ran.status == 5, ran.err
    assert "Traceback" not in ran.err and out.read_text() == "kept\n"
    with ComputeEmulator(usage) as nova:
        wrong = cli("servers", "--endpoint", nova.compute_url, "--token", "not-a-token")
    assert wrong.status == 5 and "401" in wrong.err and "Traceback" not in wrong.err


def test_audit_usage_files_are_checked(tmp_path, cli) -> None:
    images, _ = _usage_cloud()
    table = tmp_path / "images.csv"
    with GlanceEmulator(images) as glance:
        assert cli("fetch", images.images[0].id, "--endpoint", glance.url, "--token",
                   ADMIN_TOKEN, "-o", str(table)).status == 0  # fmt: skip
    ran = cli("audit", str(table), "--volumes", str(table))
    assert ran.status == 2 and "--volumes goes with --servers" in ran.err
    ran = cli("audit", str(table), "--servers", str(table))  # an images table
    assert ran.status == 2 and "is not a servers table" in ran.err
    ran = cli("audit", str(table), "--servers", str(tmp_path / "missing.csv"))
    assert ran.status == 2 and "no such file" in ran.err
    ran = cli("servers", "--endpoint", "http://127.0.0.1:9", "-o", str(tmp_path / "s.xlsx"))
    assert ran.status == 2
