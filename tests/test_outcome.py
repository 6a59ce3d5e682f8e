"""A run's outcome against the emulator: lying answers are never counted as read."""

from __future__ import annotations

import imgframe
from imgframe.outcome import definitive_mask, run_outcome
from imgframe.testing import ADMIN_TOKEN, GlanceEmulator, make_fleet
from imgframe.testing.emulator import Faults


def test_an_answer_for_another_image_is_unread_and_a_fetch_failed_finding() -> None:
    fleet = make_fleet(300, seed=4)
    faults = Faults(wrong_id_rate=0.1, no_metadata_rate=0.05, seed=4)
    ids = [image.id for image in fleet.images if not image.deleted]
    liars = {i for i in ids if faults.lie(i) is not None}
    assert liars  # the seed plants some
    with GlanceEmulator(fleet, faults=faults) as emu:
        df = imgframe.fetch_images(ids, endpoint=emu.url, token=ADMIN_TOKEN, retries=1)
    outcome = run_outcome(df)
    assert not outcome.complete
    assert outcome.unread == len(liars)
    assert set(df.index[~definitive_mask(df)]) == liars
    findings = imgframe.audit(df, rules=["public_unprotected"])
    failed = findings.loc[findings["rule"] == "fetch_failed", "image_id"]
    assert set(failed) == liars


def test_invalid_ids_do_not_save_a_run_whose_token_was_rejected() -> None:
    fleet = make_fleet(50, seed=4)
    ids = [image.id for image in fleet.images] + ["../etc"]
    with GlanceEmulator(fleet) as emu:
        df = imgframe.fetch_images(ids, endpoint=emu.url, token="wrong", retries=0)
    assert (df.loc["../etc", "error"]) == "invalid image id"
    assert run_outcome(df).failed_as_a_whole


def test_a_run_of_invalid_ids_only_is_complete_not_failed() -> None:
    with GlanceEmulator(make_fleet(5, seed=4)) as emu:
        df = imgframe.fetch_images(["../etc", "a/b"], endpoint=emu.url, token=ADMIN_TOKEN)
    outcome = run_outcome(df)
    assert outcome.complete and not outcome.failed_as_a_whole
