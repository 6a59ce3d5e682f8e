"""The progress bar: shown when asked (or watched), silent in CI logs, with running counts."""

from __future__ import annotations

from imgframe import fetch_images
from imgframe.testing import ADMIN_TOKEN, GlanceEmulator

FLEET = {"n": 120, "seed": 13}  # the module's `fleet` (tests/conftest.py)


def test_progress_bar_shows_total_rate_and_running_counts(fleet, capsys) -> None:
    ids = [i.id for i in fleet.images] + ["missing-1", "missing-2", "bad/id"]
    with GlanceEmulator(fleet) as emu:
        fetch_images(ids, endpoint=emu.url, token=ADMIN_TOKEN, progress=True)
    err = capsys.readouterr().err
    final = err.replace("\r", "\n").strip().splitlines()[-1]
    assert "HEAD /v1/images" in final
    assert f"{len(ids)}/{len(ids)}" in final  # done/total
    assert "img/s" in final  # rate
    assert "ok=120" in final and "not found=2" in final and "errors=1" in final


def test_no_progress_bar_when_nobody_watches(fleet, capsys) -> None:
    with GlanceEmulator(fleet) as emu:
        fetch_images([fleet.images[0].id], endpoint=emu.url, token=ADMIN_TOKEN)  # progress=None
    assert capsys.readouterr().err == ""  # pytest's captured stderr is not a terminal


def test_progress_false_is_silent(fleet, capsys) -> None:
    with GlanceEmulator(fleet) as emu:
        fetch_images([fleet.images[0].id], endpoint=emu.url, token=ADMIN_TOKEN, progress=False)
    assert capsys.readouterr().err == ""
