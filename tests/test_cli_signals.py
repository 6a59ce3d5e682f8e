"""A real ``imgframe fetch`` process interrupted by SIGINT, SIGTERM and ``kill -9``.

The emulator runs in this process, with latency so that a run lasts several seconds,
and its request log says what the command sent and when it stopped sending.
"""

from __future__ import annotations

import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pandas.testing import assert_frame_equal

import imgframe
from imgframe.checkpoint import read_manifest
from imgframe.io import read_csv
from imgframe.testing import ADMIN_TOKEN, Faults, GlanceEmulator, make_fleet

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

N_IDS = 2000
# 4 requests in flight, 10 ms each: ~300 ids/s here, so a run takes ~7 s.
CONCURRENCY = 4
LATENCY = 0.01


FLEET = {"n": N_IDS, "seed": 17}  # the module's `fleet` (tests/conftest.py)


@pytest.fixture(scope="module")
def slow_emulator(module_servers, fleet) -> GlanceEmulator:
    return module_servers.glance(fleet, faults=Faults(latency=LATENCY))


@pytest.fixture
def ids_file(fleet, tmp_path) -> Path:
    path = tmp_path / "ids.txt"
    path.write_text("\n".join(image.id for image in fleet.images) + "\n")
    return path


def _environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OS_AUTH_TOKEN"}
    return env | {"IMGFRAME_DEBUG": "", **extra}


def _wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def _sent(emulator: GlanceEmulator) -> int:
    return len(emulator.request_log)


def _stop_latency(emulator: GlanceEmulator, process: subprocess.Popen, sent_at: float) -> float:
    """Seconds from the signal to the last request the emulator saw (sampled every 20 ms
    until the process has exited and 1.5 s have passed)."""
    last_count, last_growth = _sent(emulator), sent_at
    deadline = sent_at + 30
    while time.monotonic() < deadline:
        count = _sent(emulator)
        if count != last_count:
            last_count, last_growth = count, time.monotonic()
        if process.poll() is not None and time.monotonic() - sent_at > 1.5:
            break
        time.sleep(0.02)
    return last_growth - sent_at


@pytest.mark.parametrize(
    ("signum", "status", "token_on_command_line"),
    [(signal.SIGINT, 130, True), (signal.SIGTERM, 143, False)],
)
def test_a_signal_stops_sending_keeps_the_work_and_the_printed_command_resumes(
    fleet, slow_emulator, ids_file, tmp_path, signum, status, token_on_command_line
) -> None:
    out = tmp_path / "fleet.csv"
    args = ["fetch", "--endpoint", slow_emulator.url, "--ids-file", str(ids_file),
            "--concurrency", str(CONCURRENCY), "-o", str(out)]  # fmt: skip
    env = _environment()
    if token_on_command_line:
        args += ["--token", ADMIN_TOKEN]
    else:
        env["OS_AUTH_TOKEN"] = ADMIN_TOKEN
    slow_emulator.reset_log()
    process = subprocess.Popen(
        [sys.executable, "-m", "imgframe", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert _wait_for(lambda: _sent(slow_emulator) >= N_IDS // 2, 60), "the run never got going"
        sent_at = time.monotonic()
        process.send_signal(signum)
        stopped_after = _stop_latency(slow_emulator, process, sent_at)
        assert process.wait(timeout=30) == status
        stderr = process.stderr.read()  # type: ignore[union-attr]
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()  # type: ignore[union-attr]
    sent_first = slow_emulator.request_log
    assert stopped_after < 1.0, f"still sending {stopped_after:.2f} s after the signal"
    assert len(sent_first) < N_IDS, "the signal came after the run had finished"
    name = signal.Signals(signum).name
    assert f"imgframe: interrupted ({name}): stopped sending; nothing written to {out}" in stderr
    assert "rows kept in checkpoint" in stderr and "to resume, run" in stderr
    assert ADMIN_TOKEN not in stderr, "the token must not be printed"
    assert not out.exists()

    checkpoint = Path(f"{out}.checkpoint")
    kept = set(pq.read_table(checkpoint, columns=["id"]).column("id").to_pylist())
    assert read_manifest(checkpoint).rows == len(kept) > 0
    answered = {r.image_id for r in sent_first if r.status == 200}
    assert len(answered - kept) <= CONCURRENCY  # only answers in flight at the signal

    command = shlex.split(stderr.strip().splitlines()[-1])
    assert command[:2] == ["imgframe", "fetch"] and "--token" not in command
    slow_emulator.reset_log()
    again = subprocess.run(
        [sys.executable, "-m", "imgframe", *command[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        env=_environment(OS_AUTH_TOKEN=ADMIN_TOKEN),
    )
    assert again.returncode == 0, again.stderr
    sent_again = [r.image_id for r in slow_emulator.request_log]
    every_id = [image.id for image in fleet.images]
    assert sorted(sent_again) == sorted(set(every_id) - kept)  # each missing id once
    df = read_csv(out)
    assert df.index.tolist() == every_id and (df["http_status"] == 200).all()
    assert not checkpoint.exists(), "a complete run removes its checkpoint"
    print(f"{name}: last request {stopped_after * 1000:.0f} ms after the signal; "
          f"{len(kept):,} rows kept, {len(sent_again):,} sent by the resume")  # fmt: skip


KILLS = 3
KILL_IDS = 4000


def test_kill_9_at_random_moments_loses_and_duplicates_nothing(tmp_path) -> None:
    """Three ``kill -9`` at random moments, then the same command to the end: the table
    is the one an uninterrupted run gives (request ids aside).

    The subprocess flushes its checkpoint every 0.5 s instead of every 10 s
    (``imgframe.checkpoint.FLUSH_SECONDS``), so that each few-second run leaves several
    parts and a kill can land while one is being written."""
    fleet = make_fleet(KILL_IDS, seed=23)
    ids = [image.id for image in fleet.images] + ["no-such-image-0", "bad/id"]
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(ids) + "\n")
    out = tmp_path / "fleet.csv"
    launcher = (
        "import sys, imgframe.checkpoint as c; c.FLUSH_SECONDS = 0.5; "
        "from imgframe.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    rng = random.Random(9)
    env = _environment(OS_AUTH_TOKEN=ADMIN_TOKEN)
    with GlanceEmulator(fleet, faults=Faults(latency=0.004)) as emu:
        args = ["fetch", "--endpoint", emu.url, "--ids-file", str(ids_file), "--concurrency", "8",
                "-o", str(out)]  # fmt: skip
        command = [sys.executable, "-c", launcher, *args]
        kept_rows = [0]
        for _ in range(KILLS):
            before = _sent(emu)
            process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
            # Wait for the run to send, then kill at a random moment of the next 2.5 s.
            assert _wait_for(lambda before=before: _sent(emu) > before + 50, 60)
            time.sleep(rng.uniform(0.1, 2.5))
            process.kill()
            assert process.wait(timeout=30) == -signal.SIGKILL
            kept_rows.append(read_manifest(f"{out}.checkpoint").rows)  # readable after kill -9
        finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert finished.returncode == 0, finished.stderr
        sent = [r.image_id for r in emu.request_log]
        reference = imgframe.fetch_images(ids, endpoint=emu.url, token=ADMIN_TOKEN, progress=False)
    assert kept_rows == sorted(kept_rows) and kept_rows[-1] > 0, kept_rows
    df = read_csv(out)
    assert df.index.tolist() == ids  # none lost, none twice, input order
    expected = read_csv(imgframe.to_csv(reference, tmp_path / "reference.csv"))
    assert_frame_equal(df.drop(columns="request_id"), expected.drop(columns="request_id"))
    assert set(sent) <= set(ids) - {"bad/id"}
    assert not Path(f"{out}.checkpoint").exists()
    print(f"kill -9 x{KILLS}: rows kept after each kill {kept_rows[1:]}, "
          f"{len(sent):,} requests for {len(ids) - 1:,} sendable ids")  # fmt: skip


def test_ctrl_c_without_a_checkpoint_says_nothing_was_kept(slow_emulator, ids_file, tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "imgframe", "fetch", "--endpoint", slow_emulator.url,
         "--ids-file", str(ids_file), "--concurrency", str(CONCURRENCY), "--no-checkpoint"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_environment(OS_AUTH_TOKEN=ADMIN_TOKEN),
    )  # fmt: skip
    try:
        before = _sent(slow_emulator)
        assert _wait_for(lambda: _sent(slow_emulator) > before + 100, 60)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
        stderr = process.stderr.read()  # type: ignore[union-attr]
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()  # type: ignore[union-attr]
    assert "nothing was kept (--no-checkpoint)" in stderr and "Traceback" not in stderr


def test_sigterm_stops_a_fleet_fetch_and_the_same_command_resumes_it(tmp_path) -> None:
    pytest.importorskip("openstack.config")
    import json

    from imgframe.testing.keystone import FakeKeystone

    east, west = make_fleet(600, seed=51), make_fleet(600, seed=52)
    out = tmp_path / "fleet.parquet"
    slow = Faults(latency=LATENCY)
    with (
        GlanceEmulator(east, faults=slow) as east_glance,
        GlanceEmulator(west, faults=slow) as west_glance,
        FakeKeystone({"east": east_glance, "west": west_glance}) as keystone,
    ):
        clouds = tmp_path / "clouds.yaml"
        lab = {"auth": keystone.auth(), "regions": ["east", "west"]}
        clouds.write_text(json.dumps({"clouds": {"lab": lab}}))
        env = {k: v for k, v in _environment().items() if not k.startswith("OS_")}
        env |= {"OS_CLIENT_CONFIG_FILE": str(clouds),
                "OS_CLIENT_SECURE_FILE": str(tmp_path / "secure.yaml")}  # fmt: skip
        command = [sys.executable, "-m", "imgframe", "fetch", "--cloud", "lab", "--all", "--head",
                   "--concurrency", "2", "-o", str(out)]  # fmt: skip

        def sent() -> int:
            return _sent(east_glance) + _sent(west_glance)

        process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        try:
            assert _wait_for(lambda: sent() > 400, 60), "the run never got going"
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            last_count, last_growth = sent(), signalled
            while process.poll() is None or time.monotonic() - signalled < 1.5:
                if sent() != last_count:
                    last_count, last_growth = sent(), time.monotonic()
                if time.monotonic() - signalled > 30:
                    break
                time.sleep(0.02)
            assert process.wait(timeout=30) == 143
            stderr = process.stderr.read()  # type: ignore[union-attr]
        finally:
            if process.poll() is None:
                process.kill()
            process.stderr.close()  # type: ignore[union-attr]
        assert last_growth - signalled < 1.0
        assert "rows kept in checkpoint" in stderr and not out.exists(), stderr
        kept = read_manifest(f"{out}.checkpoint").rows
        east_glance.reset_log()
        west_glance.reset_log()
        resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
        heads = [r for g in (east_glance, west_glance) for r in g.request_log if r.method == "HEAD"]
    listed = [i.id for i in east.images if not i.deleted] + [i.id for i in west.images
                                                              if not i.deleted]  # fmt: skip
    assert len(heads) == len(listed) - kept
    df = imgframe.read_parquet(out)
    assert sorted(df["id"]) == sorted(listed) and df.index.is_unique
    assert not Path(f"{out}.checkpoint").exists()
