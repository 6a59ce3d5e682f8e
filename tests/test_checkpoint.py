"""fetch_images(checkpoint=...): interrupted runs resume, against the emulator over real HTTP.

Every resumed frame is compared with an uninterrupted run's (``request_id`` aside: the
emulator makes a new one per answer) with dtypes and categories, and the emulator's
request log says exactly which ids a resumed run sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import aiohttp
import pandas as pd
import pyarrow.dataset as ds
import pytest

import imgframe
from imgframe import CheckpointError, CheckpointWarning, ConfigError, Target
from imgframe import checkpoint as ckpt
from imgframe.api import fetch_images_async
from imgframe.atomic import TEMP_SUFFIX
from imgframe.config import RetryPolicy
from imgframe.outcome import definitive_mask
from imgframe.testing import ADMIN_TOKEN, Faults, Fleet, GlanceEmulator, make_fleet

N_IMAGES = 3000
MISSING = [f"no-such-image-{n}" for n in range(20)]
INVALID = ["../etc/passwd", "a b", ""]


FLEET = {"n": N_IMAGES, "seed": 41}  # the module's `fleet` (tests/conftest.py)


@pytest.fixture(scope="module")
def ids(fleet: Fleet) -> list[str]:
    images = [i.id for i in fleet.images]
    # 404s and never-sent invalid ids are definitive too: they are stored and restored.
    return images[:1000] + MISSING[:10] + INVALID + images[1000:] + MISSING[10:]


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> int:
    """Parts of at most 400 rows, so that a 3,000-id run writes several."""
    monkeypatch.setattr(imgframe.api, "BATCH_SIZE", 400)
    return 400


def without_request_id(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns="request_id")


def assert_same_frame(resumed: pd.DataFrame, uninterrupted: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(
        without_request_id(resumed), without_request_id(uninterrupted), check_categorical=True
    )


def sent_ids(emu: GlanceEmulator) -> list[str]:
    return [r.image_id for r in emu.request_log if r.image_id is not None]


def open_client_sessions() -> list[aiohttp.ClientSession]:
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, aiohttp.ClientSession) and not o.closed]


async def cancel_after(requests: int, emu: GlanceEmulator, **kwargs) -> tuple[float, float]:
    """Start fetch_images_async, cancel it once the server saw ``requests`` requests;
    returns when cancel() was called and the seconds until the task was done."""
    task = asyncio.create_task(fetch_images_async(progress=False, **kwargs))
    deadline = time.monotonic() + 60
    while len(emu.request_log) < requests and not task.done():
        assert time.monotonic() < deadline, "the fetch never got that far"
        await asyncio.sleep(0.005)
    assert not task.done(), "the fetch ended before it could be interrupted"
    cancelled = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return cancelled, time.monotonic() - cancelled


def stored_ids(folder: Path) -> set[str]:
    with ckpt.Checkpoint.open(folder, ckpt.read_manifest(folder)) as store:
        return set(store.load().index)


# ----------------------------------------------------------------------------- resume
def test_a_cancelled_run_resumes_sending_only_the_missing_ids(
    fleet: Fleet, ids: list[str], tmp_path: Path, small_batches: int
) -> None:
    folder = tmp_path / "ckpt"
    concurrency = 8
    with GlanceEmulator(fleet, faults=Faults(latency=0.003)) as emu:
        common = dict(endpoint=emu.url, token=ADMIN_TOKEN, concurrency=concurrency)
        uninterrupted = imgframe.fetch_images(ids, progress=False, **common)
        emu.reset_log()
        cancelled, seconds = asyncio.run(
            cancel_after(1200, emu, ids=ids, checkpoint=folder, **common)
        )
        time.sleep(0.5)
        log = emu.request_log
        answered = {r.image_id for r in log if r.status in (200, 404)}
        assert not [r for r in log if r.t > cancelled + 0.2], "sending went on after cancel"
        before_resume = stored_ids(folder)
        emu.reset_log()
        resumed = imgframe.fetch_images(ids, progress=False, checkpoint=folder, **common)
        resent = sent_ids(emu)
    assert seconds < 2
    assert not open_client_sessions()
    stored_images = before_resume - set(INVALID)
    # Every answer the client received before the cancel is in the checkpoint; only the
    # requests in flight at the cancel (at most one per worker) were lost.
    assert stored_images <= answered and len(answered - stored_images) <= concurrency
    assert set(INVALID) <= before_resume  # never-sent rows are final too
    assert 1000 < len(stored_images) < len(ids) - 500
    assert sorted(resent) == sorted(set(ids) - before_resume - set(INVALID))
    assert_same_frame(resumed, uninterrupted)


def test_a_finished_checkpoint_answers_everything_without_a_request(
    fleet: Fleet, ids: list[str], tmp_path: Path, small_batches: int
) -> None:
    with GlanceEmulator(fleet) as emu:
        first = imgframe.fetch_images(ids, endpoint=emu.url, token=ADMIN_TOKEN, checkpoint=tmp_path)
        emu.reset_log()
        again = imgframe.fetch_images(ids, endpoint=emu.url, token=ADMIN_TOKEN, checkpoint=tmp_path)
        assert emu.request_log == []
    # Parts were written per batch, and read back with the frame's exact dtypes.
    manifest = ckpt.read_manifest(tmp_path)
    assert manifest.rows == len(ids) and manifest.parts >= len(ids) // small_batches
    pd.testing.assert_frame_equal(again, first)


def test_the_same_ids_in_another_order_resume_in_the_new_order(
    fleet: Fleet, ids: list[str], tmp_path: Path
) -> None:
    shuffled = ids[::-1]
    with GlanceEmulator(fleet) as emu:
        imgframe.fetch_images(ids, endpoint=emu.url, token=ADMIN_TOKEN, checkpoint=tmp_path)
        emu.reset_log()
        resumed = imgframe.fetch_images(
            shuffled, endpoint=emu.url, token=ADMIN_TOKEN, checkpoint=tmp_path
        )
        assert emu.request_log == []
        fresh = imgframe.fetch_images(shuffled, endpoint=emu.url, token=ADMIN_TOKEN)
    assert_same_frame(resumed, fresh)


def test_transient_failures_are_asked_again_on_resume(fleet: Fleet, tmp_path: Path) -> None:
    ids = [i.id for i in fleet.images[:600]]
    # Each transient id fails its first 2 HEADs; one retry is not enough in run one.
    faults = Faults(transient_rate=0.1, transient_attempts=2, transient_kinds=("503", "500"))
    retries = RetryPolicy(attempts=2, backoff=0.01)
    with GlanceEmulator(fleet) as clean:
        uninterrupted = imgframe.fetch_images(ids, endpoint=clean.url, token=ADMIN_TOKEN)
    with GlanceEmulator(fleet, faults=faults) as emu:
        common = dict(endpoint=emu.url, token=ADMIN_TOKEN, retries=retries, checkpoint=tmp_path)
        first = imgframe.fetch_images(ids, **common)
        failed = set(first.index[~definitive_mask(first)])
        assert failed == {i for i in ids if faults.transient_kind(i) is not None}
        assert 20 < len(failed) < 120
        emu.reset_log()
        resumed = imgframe.fetch_images(ids, **common)
        resent = sent_ids(emu)
    assert sorted(resent) == sorted(failed)  # the third attempt of each succeeds
    assert (resumed["http_status"] == 200).all()
    assert_same_frame(resumed, uninterrupted)


# ----------------------------------------------------------------------------- refused
def test_a_checkpoint_for_another_request_is_refused_with_one_line(
    fleet: Fleet, tmp_path: Path
) -> None:
    ids = [i.id for i in fleet.images[:50]]
    by_ids, listing = tmp_path / "ids", tmp_path / "all"
    with GlanceEmulator(fleet) as emu, GlanceEmulator(fleet) as other:
        imgframe.fetch_images(ids, endpoint=emu.url, token=ADMIN_TOKEN, checkpoint=by_ids)
        imgframe.fetch_images(endpoint=emu.url, token=ADMIN_TOKEN, checkpoint=listing)
        emu.reset_log()
        other.reset_log()
        cases = [
            (dict(ids=ids[:49], endpoint=emu.url), by_ids, "ids: it holds 50 ids"),
            (dict(ids=ids, endpoint=other.url), by_ids, f"endpoint {emu.url!r}"),
            (dict(ids=ids, endpoint=emu.url, api="v2"), by_ids, "api 'v1'"),
            (dict(ids=None, endpoint=emu.url), by_ids, "this call asks the listing"),
            (
                dict(ids=None, endpoint=emu.url, include_deleted=True),
                listing,
                "include_deleted=False (this call: include_deleted=True)",
            ),
        ]
        for kwargs, folder, says in cases:
            with pytest.raises(CheckpointError) as caught:
                imgframe.fetch_images(token=ADMIN_TOKEN, checkpoint=folder, **kwargs)
            message = str(caught.value)
            assert says in message, message
            assert "\n" not in message
            assert "Use another checkpoint folder, or delete this one" in message
        assert emu.request_log == [] and other.request_log == []  # refused before sending
    assert issubclass(CheckpointError, ConfigError)


def test_a_folder_that_is_not_a_checkpoint_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with GlanceEmulator(fleet) as emu, pytest.raises(CheckpointError, match="not empty"):
        imgframe.fetch_images(
            [fleet.images[0].id], endpoint=emu.url, token=ADMIN_TOKEN, checkpoint=tmp_path
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    with pytest.raises(CheckpointError, match="parent folder does not exist"):
        imgframe.fetch_images(
            ["x"], endpoint="http://127.0.0.1:9", token="t", checkpoint=tmp_path / "a/b"
        )
    with pytest.raises(CheckpointError, match="not an imgframe checkpoint"):
        ckpt.read_manifest(tmp_path)
    with pytest.raises(CheckpointError, match="not an imgframe checkpoint"):
        ckpt.remove_checkpoint(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_checkpoint_in_use_by_a_running_fetch_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    ids = [i.id for i in fleet.images[:200]]

    async def both(url: str) -> None:
        common = dict(endpoint=url, token=ADMIN_TOKEN, checkpoint=tmp_path, progress=False)
        first = asyncio.create_task(fetch_images_async(ids, concurrency=2, **common))
        await asyncio.sleep(0.2)
        with pytest.raises(CheckpointError, match="in use by another running fetch"):
            await fetch_images_async(ids, **common)
        assert len(await first) == len(ids)

    with GlanceEmulator(fleet, faults=Faults(latency=0.01)) as emu:
        asyncio.run(both(emu.url))


# ----------------------------------------------------------------------------- listing
def test_a_listing_resumes_with_the_new_listing(fleet: Fleet, tmp_path: Path) -> None:
    listed_before = [i for i in fleet.images if not i.deleted]
    gone = {i.id for i in listed_before[5:25]}
    added = make_fleet(15, seed=99).images
    changed = dataclasses.replace(fleet, images=[i for i in fleet.images if i.id not in gone])
    changed = dataclasses.replace(changed, images=[*changed.images, *added])
    with GlanceEmulator(fleet, faults=Faults(latency=0.002), api_limit_max=200) as emu:
        port = int(emu.url.rsplit(":", 1)[1])
        asyncio.run(
            cancel_after(
                1500,
                emu,
                endpoint=emu.url,
                token=ADMIN_TOKEN,
                checkpoint=tmp_path,
                verify_with_head=True,
            )
        )
    stored = stored_ids(tmp_path)
    assert 1000 < len(stored) < len(listed_before)
    # The cloud changed before the resume: 20 images gone, 15 new; same endpoint.
    with GlanceEmulator(changed, port=port, api_limit_max=200) as emu:
        resumed = imgframe.fetch_images(
            endpoint=emu.url, token=ADMIN_TOKEN, checkpoint=tmp_path, verify_with_head=True
        )
        resent = sent_ids(emu)
        emu.reset_log()
        fresh = imgframe.fetch_images(endpoint=emu.url, token=ADMIN_TOKEN)
    now_listed = {i.id for i in changed.images if not i.deleted}
    assert sorted(resent) == sorted(now_listed - stored)
    assert not gone & set(resumed.index)  # stored rows of ids no longer listed are dropped
    assert_same_frame(resumed, fresh)


def test_include_deleted_lists_deleted_images_and_is_part_of_the_checkpoint(
    fleet: Fleet, tmp_path: Path
) -> None:
    deleted = {i.id for i in fleet.images if i.deleted}
    assert deleted
    with GlanceEmulator(fleet) as emu:
        common = dict(endpoint=emu.url, token=ADMIN_TOKEN, checkpoint=tmp_path)
        df = imgframe.fetch_images(include_deleted=True, **common)
        assert deleted <= set(df.index) and df.loc[list(deleted), "deleted"].all()
        emu.reset_log()
        again = imgframe.fetch_images(include_deleted=True, **common)
    assert not [r for r in emu.request_log if r.method == "HEAD"]
    assert_same_frame(again, df)
    assert ckpt.read_manifest(tmp_path).include_deleted is True
    with pytest.raises(ConfigError, match="include_deleted must be True or False"):
        imgframe.fetch_images(endpoint="http://127.0.0.1:9", token="t", include_deleted="yes")


# ----------------------------------------------------------------------------- on disk
def test_a_part_left_under_its_temporary_name_is_ignored_and_removed(
    fleet: Fleet, ids: list[str], tmp_path: Path, small_batches: int
) -> None:
    with GlanceEmulator(fleet) as emu:
        common = dict(endpoint=emu.url, token=ADMIN_TOKEN, checkpoint=tmp_path)
        uninterrupted = imgframe.fetch_images(ids, **common)
        # A run killed between writing a part and renaming it leaves the temporary file.
        last = sorted(tmp_path.glob("part-*.parquet"))[-1]
        lost = set(pd.read_parquet(last).index)
        temporary = tmp_path / f".{last.name}.x1y2z3{TEMP_SUFFIX}"
        last.rename(temporary)
        emu.reset_log()
        resumed = imgframe.fetch_images(ids, **common)
        resent = sent_ids(emu)
    assert sorted(resent) == sorted(lost - set(INVALID))
    assert not temporary.exists()
    assert_same_frame(resumed, uninterrupted)


def test_an_unreadable_part_is_skipped_with_a_warning_and_fetched_again(
    fleet: Fleet, ids: list[str], tmp_path: Path, small_batches: int
) -> None:
    with GlanceEmulator(fleet) as emu:
        common = dict(endpoint=emu.url, token=ADMIN_TOKEN, checkpoint=tmp_path)
        uninterrupted = imgframe.fetch_images(ids, **common)
        damaged = sorted(tmp_path.glob("part-*.parquet"))[1]
        lost = set(pd.read_parquet(damaged).index)
        damaged.write_bytes(damaged.read_bytes()[:100])  # a disk or a person broke it
        emu.reset_log()
        with pytest.warns(CheckpointWarning, match="cannot be read"):
            resumed = imgframe.fetch_images(ids, **common)
        resent = sent_ids(emu)
    assert sorted(resent) == sorted(lost - set(INVALID))
    assert_same_frame(resumed, uninterrupted)


def test_rows_are_flushed_every_few_seconds_while_they_arrive(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ckpt, "FLUSH_SECONDS", 0.3)
    ids = [i.id for i in fleet.images[:150]]
    seen: list[tuple[float, int]] = []

    async def run(url: str) -> pd.DataFrame:
        task = asyncio.create_task(
            fetch_images_async(
                ids, endpoint=url, token=ADMIN_TOKEN, concurrency=2, checkpoint=tmp_path
            )
        )
        started = time.monotonic()
        while not task.done():
            await asyncio.sleep(0.1)
            seen.append((time.monotonic() - started, ckpt.read_manifest(tmp_path).rows))
        return await task

    # 150 ids, 2 at a time, 30 ms each: about 2.3 s, far below the 10,000-row batch.
    with GlanceEmulator(fleet, faults=Faults(latency=0.03)) as emu:
        df = asyncio.run(run(emu.url))
    during = [rows for t, rows in seen if t < 1.8]
    assert any(0 < rows < len(ids) for rows in during), seen
    assert ckpt.read_manifest(tmp_path).parts >= 4
    assert ckpt.read_manifest(tmp_path).rows == len(df) == len(ids)


def test_the_checkpoint_is_a_plain_parquet_dataset_with_a_manifest(
    fleet: Fleet, ids: list[str], tmp_path: Path, small_batches: int
) -> None:
    with GlanceEmulator(fleet) as emu:
        df = imgframe.fetch_images(ids, endpoint=emu.url, token=ADMIN_TOKEN, checkpoint=tmp_path)
        url = emu.url
    manifest = json.loads((tmp_path / ckpt.MANIFEST_NAME).read_text())
    assert manifest["endpoint"] == url and manifest["api"] == "v1"
    assert manifest["ids"] == ckpt.ids_digest(imgframe.normalize_ids(ids))
    assert manifest["id_count"] == len(df) and manifest["include_deleted"] is None
    assert manifest["imgframe_version"] == imgframe.__version__ and manifest["created"]
    assert ds.dataset(tmp_path, format="parquet").count_rows() == len(df)
    on_disk = pd.read_parquet(tmp_path)
    assert sorted(on_disk.index) == sorted(df.index)
    info = ckpt.read_manifest(tmp_path)
    assert f"{len(df):,} rows stored" in info.describe()
    ckpt.remove_checkpoint(tmp_path)
    assert not tmp_path.exists()


def test_remove_checkpoint_leaves_files_it_did_not_write(fleet: Fleet, tmp_path: Path) -> None:
    with GlanceEmulator(fleet) as emu:
        imgframe.fetch_images(
            [fleet.images[0].id], endpoint=emu.url, token=ADMIN_TOKEN, checkpoint=tmp_path
        )
    (tmp_path / "README").write_text("someone's note")
    ckpt.remove_checkpoint(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README"]


def test_the_progress_bar_counts_the_restored_rows(
    fleet: Fleet, ids: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with GlanceEmulator(fleet, faults=Faults(latency=0.002)) as emu:
        common = dict(endpoint=emu.url, token=ADMIN_TOKEN, checkpoint=tmp_path)
        asyncio.run(cancel_after(1000, emu, ids=ids, **common))
        restored = ckpt.read_manifest(tmp_path).rows
        capsys.readouterr()
        imgframe.fetch_images(ids, progress=True, **common)
    final = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert f"{len(ids)}/{len(ids)}" in final, final
    assert f"from checkpoint={restored:,}" in final, final
    assert f"ok={N_IMAGES:,}" in final  # 3,000, never 3e+03


# ----------------------------------------------------------------------------- fleets
def test_a_cancelled_fleet_fetch_resumes_each_target(tmp_path: Path) -> None:
    east, west = make_fleet(1200, seed=51), make_fleet(900, seed=52)
    slow = Faults(latency=0.003)
    with GlanceEmulator(east, faults=slow) as e, GlanceEmulator(west, faults=slow) as w:
        targets = [
            Target("lab", "east", endpoint=e.url, token=ADMIN_TOKEN),
            Target("lab", None, endpoint=w.url, token=ADMIN_TOKEN),
        ]
        uninterrupted = imgframe.fetch_fleet(targets, concurrency=4)

        async def cancelled() -> None:
            task = asyncio.create_task(
                imgframe.fetch_fleet_async(
                    targets, concurrency=4, checkpoint=tmp_path, verify_with_head=True
                )
            )
            deadline = time.monotonic() + 60
            while len(e.request_log) + len(w.request_log) < 800:
                assert time.monotonic() < deadline and not task.done()
                await asyncio.sleep(0.005)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        e.reset_log()
        w.reset_log()
        asyncio.run(cancelled())
        stored = {
            label: stored_ids(ckpt.target_folder(tmp_path, "lab", region))
            for label, region in (("east", "east"), ("west", None))
        }
        e.reset_log()
        w.reset_log()
        resumed = imgframe.fetch_fleet(
            targets, concurrency=4, checkpoint=tmp_path, verify_with_head=True
        )
        resent = {"east": sent_ids(e), "west": sent_ids(w)}
    assert all(stored.values())
    for label, fleet in (("east", east), ("west", west)):
        listed = {i.id for i in fleet.images if not i.deleted}
        assert sorted(resent[label]) == sorted(listed - stored[label]), label
    pd.testing.assert_frame_equal(without_request_id(resumed), without_request_id(uninterrupted))
    # One dataset: cloud and region from the folder names.
    on_disk = ds.dataset(tmp_path, format="parquet", partitioning="hive").to_table().to_pandas()
    assert len(on_disk) == len(resumed)
    assert set(on_disk["region"].dropna().astype(str)) == {"east"}
    info = ckpt.read_manifest(tmp_path)
    assert info.kind == "fleet" and info.rows == len(resumed)
    with pytest.raises(CheckpointError, match="it is a fleet checkpoint"):
        imgframe.fetch_images(endpoint="http://127.0.0.1:9", token="t", checkpoint=tmp_path)
    ckpt.remove_checkpoint(tmp_path)
    assert not tmp_path.exists()


def test_a_finished_run_leaves_no_temporary_file(
    fleet: Fleet, ids: list[str], tmp_path: Path, small_batches: int
) -> None:
    with GlanceEmulator(fleet) as emu:
        imgframe.fetch_images(ids, endpoint=emu.url, token=ADMIN_TOKEN, checkpoint=tmp_path)
    names = sorted(os.listdir(tmp_path))
    assert not [n for n in names if n.endswith(TEMP_SUFFIX)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ckpt.read_manifest(tmp_path).rows == len(ids)


# ----------------------------------------------------------------------------- processes
SCRIPT = """
import json, sys
import imgframe
import imgframe.checkpoint

args = json.loads(sys.argv[1])
imgframe.checkpoint.FLUSH_SECONDS = 0.2  # parts every 0.2 s, so any kill finds several
imgframe.api.BATCH_SIZE = 300
try:
    imgframe.fetch_images(args["ids"], endpoint=args["url"], token=args["token"],
                          checkpoint=args["folder"], concurrency=4, progress=False)
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
    sys.exit(130)
print("finished", flush=True)
"""


def start_fetch_process(ids: list[str], url: str, folder: Path) -> subprocess.Popen[str]:
    args = json.dumps({"ids": ids, "url": url, "token": ADMIN_TOKEN, "folder": str(folder)})
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )


def wait_for_parts(folder: Path, process: subprocess.Popen[str], parts: int = 2) -> None:
    deadline = time.monotonic() + 60
    while len(list(folder.glob("part-*.parquet"))) < parts:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint part appeared"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def uninterrupted(emulator: GlanceEmulator, ids: list[str]) -> pd.DataFrame:
    return imgframe.fetch_images(ids, endpoint=emulator.url, token=ADMIN_TOKEN)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_process_killed_with_sigkill_leaves_a_checkpoint_that_resumes(
    fleet: Fleet, ids: list[str], uninterrupted: pd.DataFrame, tmp_path: Path, seed: int
) -> None:
    folder = tmp_path / "ckpt"
    with GlanceEmulator(fleet, faults=Faults(latency=0.004)) as emu:
        process = start_fetch_process(ids, emu.url, folder)
        try:
            wait_for_parts(folder, process)
            time.sleep(random.Random(seed).uniform(0.0, 0.8))  # any moment, parts or not
            assert process.poll() is None, "the fetch ended before it could be killed"
            process.send_signal(signal.SIGKILL)
            process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert process.returncode == -signal.SIGKILL
        answered = {r.image_id for r in emu.request_log if r.status in (200, 404)}
        stored = stored_ids(folder)  # reads every part: none is damaged
        emu.reset_log()
        resumed = imgframe.fetch_images(ids, endpoint=emu.url, token=ADMIN_TOKEN, checkpoint=folder)
        resent = sent_ids(emu)
    assert not list(folder.glob(f"*{TEMP_SUFFIX}"))
    assert 0 < len(stored - set(INVALID)) < len(answered)
    assert stored - set(INVALID) <= answered
    # 0 lost, 0 sent twice: the resumed run asks exactly what the checkpoint lacks.
    assert len(resent) == len(set(resent))
    assert set(resent) == set(ids) - stored - set(INVALID)
    assert_same_frame(resumed, uninterrupted)


def test_ctrl_c_in_a_script_stops_the_sending_and_keeps_the_rows(
    fleet: Fleet, ids: list[str], uninterrupted: pd.DataFrame, tmp_path: Path
) -> None:
    folder = tmp_path / "ckpt"
    with GlanceEmulator(fleet, faults=Faults(latency=0.004)) as emu:
        process = start_fetch_process(ids, emu.url, folder)
        try:
            wait_for_parts(folder, process)
            interrupted = time.monotonic()
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=30)
            exited = time.monotonic() - interrupted
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        late = [r for r in emu.request_log if r.t > interrupted + 1.0]
        answered = {r.image_id for r in emu.request_log if r.status in (200, 404)}
        stored = stored_ids(folder) - set(INVALID)
        emu.reset_log()
        resumed = imgframe.fetch_images(ids, endpoint=emu.url, token=ADMIN_TOKEN, checkpoint=folder)
    assert process.returncode == 130 and out.strip() == "KeyboardInterrupt", (out, err)
    assert exited < 5  # interpreter exit included; the sending itself stops at once
    assert late == []
    # Every answer received went to the checkpoint: only the 4 in flight were lost.
    assert stored <= answered and len(answered - stored) <= 4
    assert_same_frame(resumed, uninterrupted)
