"""Baselines: only the findings new since an older snapshot, and the resolved ones, over
two emulator fleets a week apart (one published, one fixed, one killed, one deleted, one
added, one unreadable); the ``imgframe audit`` options of allow-lists, baselines and
profiles, with their exit statuses."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import pandas as pd
import pytest

import imgframe
from imgframe.allow import AllowList
from imgframe.errors import ConfigError
from imgframe.testing import ADMIN_TOKEN, FLEET_NOW, Fleet, make_fleet

TWO_RULES = ["public_unprotected", "broken"]
UNREAD = "HTTP 503 Service Unavailable (gave up after 4 attempts)"


@dataclasses.dataclass(frozen=True)
class Week:
    """The fleet of last week and of this week, and what changed in between."""

    before: Fleet
    after: Fleet
    published: str  # private -> public and unprotected
    fixed: str  # public_unprotected -> protected
    killed: str  # active -> killed
    deleted: str  # broken, then gone
    added: str  # a new public, unprotected image
    unread: str  # public_unprotected, then not readable (503)


def _usable(image) -> bool:
    return (
        image.status == "active"
        and not image.deleted
        and image.checksum is not None
        and image.size is not None
    )


@pytest.fixture(scope="module")
def week() -> Week:
    before = make_fleet(400, seed=11)
    planted = before.planted
    public = sorted(planted.public_unprotected)
    fixed, unread = public[0], public[1]
    quiet = [i for i in before.images if _usable(i) and not i.is_public]
    published, killed = quiet[0].id, quiet[1].id
    # killed, so that a listing shows it too (a deleted image is not listed)
    deleted = next(i.id for i in before.images if i.status == "killed" and not i.deleted)
    added = str(uuid.UUID(int=4242))
    images = []
    for image in before.images:
        if image.id == deleted:
            continue
        change = {}
        if image.id == fixed:
            change = {"protected": True}
        elif image.id == published:
            change = {"is_public": True, "protected": False}
        elif image.id == killed:
            change = {"status": "killed"}
        images.append(dataclasses.replace(image, **change))
    new = dataclasses.replace(
        quiet[2], id=added, is_public=True, protected=False, name="new public image",
        checksum="0" * 32,
    )  # fmt: skip
    after = dataclasses.replace(before, images=[*images, new])
    return Week(before, after, published, fixed, killed, deleted, added, unread)


@pytest.fixture(scope="module")
def snapshots(module_servers, week) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Last week's frame and this week's (``unread`` made a 503 row, as a fetch that gave
    up would leave it)."""
    frames = []
    for fleet in (week.before, week.after):
        emulator = module_servers.glance(fleet)
        ids = [image.id for image in fleet.images]
        frames.append(imgframe.fetch_images(ids, endpoint=emulator.url, token=ADMIN_TOKEN))
    old, new = frames
    assert old["http_status"].eq(200).all() and new["http_status"].eq(200).all()
    # The fleets' planted ages are on their own clock (FLEET_NOW), not the real one: both
    # snapshots say they were fetched then, as a week's two fetches on that clock would.
    for frame in frames:
        on_fleet_clock(frame)
    new = new.copy()
    keep = [c for c in new.columns if c in ("http_status", "error", "request_id")]
    empty = new.iloc[:0].reindex([week.unread])  # every column NA in its dtype
    for column in keep:
        empty[column] = new.loc[[week.unread], column]
    new.loc[week.unread] = empty.loc[week.unread]
    new.loc[week.unread, "http_status"] = 503
    new["error"] = new["error"].cat.add_categories([UNREAD])
    new.loc[week.unread, "error"] = UNREAD
    return old, new


def on_fleet_clock(frame: pd.DataFrame) -> pd.DataFrame:
    frame.attrs["imgframe"]["fetched_at"] = FLEET_NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
    return frame


def pairs(findings: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(findings["rule"].astype(str), findings["image_id"].astype(str), strict=True))


def test_new_and_resolved_are_exactly_the_planted_changes(snapshots, week) -> None:
    old, new = snapshots
    found = imgframe.audit(new, rules=TWO_RULES, baseline=old, now=FLEET_NOW)
    assert pairs(found) == {
        ("public_unprotected", week.published),
        ("public_unprotected", week.added),
        ("broken", week.killed),
        ("fetch_failed", week.unread),
    }
    resolved = imgframe.resolved_findings(found)
    # week.unread was public_unprotected and could not be read now: unknown, not resolved
    assert pairs(resolved) == {("public_unprotected", week.fixed), ("broken", week.deleted)}
    assert list(resolved.columns) == imgframe.FINDING_COLUMNS
    counts = found.attrs["counts"]
    everything = imgframe.audit(new, rules=TWO_RULES, now=FLEET_NOW)
    assert counts == {"findings": 4, "new": 4, "unchanged": len(everything) - 4, "resolved": 2}
    assert any("4 new findings returned" in note for note in found.attrs["notes"])


def test_with_every_default_rule_new_and_resolved_are_the_set_differences(snapshots, week) -> None:
    old, new = snapshots
    before = imgframe.audit(old, now=FLEET_NOW)
    after = imgframe.audit(new, now=FLEET_NOW)
    found = imgframe.audit(new, baseline=old, now=FLEET_NOW)
    assert pairs(found) == pairs(after) - pairs(before)
    expected = {(r, i) for r, i in pairs(before) - pairs(after) if i != week.unread}
    assert pairs(imgframe.resolved_findings(found)) == expected
    assert ("broken", week.killed) in pairs(found) and expected  # the planted ones are there
    assert found.attrs["counts"]["unchanged"] == len(pairs(after) & pairs(before))


def test_a_findings_frame_a_findings_file_and_an_images_table_are_the_same_baseline(
    snapshots, tmp_path
) -> None:
    old, new = snapshots
    old_findings = imgframe.audit(old, now=FLEET_NOW)
    from_table = imgframe.audit(new, baseline=old, now=FLEET_NOW)
    from_frame = imgframe.audit(new, baseline=old_findings, now=FLEET_NOW)
    pd.testing.assert_frame_equal(from_table, from_frame, check_like=False)
    for suffix in (".csv", ".json", ".parquet"):
        path = tmp_path / f"old{suffix}"
        imgframe.io.write(old_findings, path)
        from_file = imgframe.audit(new, baseline=imgframe.read(path), now=FLEET_NOW)
        assert pairs(from_file) == pairs(from_table), suffix
        assert pairs(imgframe.resolved_findings(from_file)) == pairs(
            imgframe.resolved_findings(from_table)
        ), suffix


def test_only_the_rules_run_now_are_compared(snapshots) -> None:
    old, new = snapshots
    everything_before = imgframe.audit(old, profile="all", now=FLEET_NOW)
    found = imgframe.audit(new, rules=["broken"], baseline=everything_before, now=FLEET_NOW)
    assert set(imgframe.resolved_findings(found)["rule"]) <= {"broken", "fetch_failed"}
    assert set(found["rule"].astype(str)) <= {"broken", "fetch_failed"}


def test_an_allowed_finding_is_neither_new_nor_resolved(snapshots, week) -> None:
    old, new = snapshots
    allow = AllowList.from_records(
        [{"rule": "public_unprotected", "image_id": week.published, "reason": "CHG-3"},
         {"rule": "*", "image_id": week.fixed, "reason": "was accepted"}]
    )  # fmt: skip
    with pytest.warns(imgframe.AllowListWarning, match="record 2 .* matched no finding"):
        found = imgframe.audit(new, rules=TWO_RULES, baseline=old, allow=allow, now=FLEET_NOW)
    assert ("public_unprotected", week.published) not in pairs(found)
    assert ("public_unprotected", week.published) in pairs(imgframe.allowed_findings(found))
    # fixed: the entry covers nothing now (warned), and the old finding is resolved
    assert ("public_unprotected", week.fixed) in pairs(imgframe.resolved_findings(found))


def test_the_baseline_frame_is_audited_on_its_own_clock() -> None:
    def one(fetched_at: str | None) -> pd.DataFrame:
        df = imgframe.frame_from_headers(
            [{"x-image-meta-id": "a", "x-image-meta-status": "active",
              "x-image-meta-checksum": "c", "x-image-meta-size": "1",
              "x-image-meta-min_ram": "1", "x-image-meta-min_disk": "1",
              "x-image-meta-updated_at": "2025-10-15T00:00:00"}]
        )  # fmt: skip
        if fetched_at:
            df.attrs["imgframe"] = {"fetched_at": fetched_at}
        return df

    # A year after 2025-10-15 the image became stale: new since a fetch of 2026-10-01,
    # not new when the baseline carries no fetch time and is judged on the same clock.
    found = imgframe.audit(one(None), rules=["stale"], baseline=one("2026-10-01"), now=FLEET_NOW)
    assert pairs(found) == {("stale", "a")}
    found = imgframe.audit(one(None), rules=["stale"], baseline=one(None), now=FLEET_NOW)
    assert found.empty and found.attrs["counts"]["unchanged"] == 1


def test_fleet_findings_are_matched_by_cloud_region_and_id(servers, week, tmp_path) -> None:
    east, west_before, west_after = (
        servers.glance(week.before),
        servers.glance(week.before),
        servers.glance(week.after),
    )

    def fleet(*targets: tuple[str, object]) -> pd.DataFrame:
        return imgframe.fetch_fleet(
            [imgframe.Target(name, endpoint=emu.url, token=ADMIN_TOKEN) for name, emu in targets]
        )

    old = on_fleet_clock(fleet(("east", east), ("west", west_before)))
    new = fleet(("east", east), ("west", west_after))
    found = imgframe.audit(new, rules=TWO_RULES, baseline=old, now=FLEET_NOW)
    assert set(found["cloud"]) == {"west"}  # the same ids in the east changed nothing
    assert pairs(found) == {
        ("public_unprotected", week.published),
        ("public_unprotected", week.added),
        ("broken", week.killed),
    }
    resolved = imgframe.resolved_findings(found)
    # (week.unread answers this time: its finding is unchanged)
    assert set(zip(resolved["cloud"], resolved["image_id"], strict=True)) == {
        ("west", week.fixed), ("west", week.deleted)
    }  # fmt: skip
    # the fleet's findings written by imgframe and read back are the same baseline
    path = imgframe.to_csv(imgframe.audit(old, rules=TWO_RULES, now=FLEET_NOW), tmp_path / "f.csv")
    again = imgframe.audit(new, rules=TWO_RULES, baseline=imgframe.read(path), now=FLEET_NOW)
    assert pairs(again) == pairs(found)
    assert pairs(imgframe.resolved_findings(again)) == pairs(resolved)
    # a target with no row now (it failed, or was not asked) resolves nothing
    only_east = fleet(("east", east))
    found = imgframe.audit(only_east, rules=TWO_RULES, baseline=old, now=FLEET_NOW)
    assert found.empty and imgframe.resolved_findings(found).empty
    with pytest.raises(ConfigError, match="baseline= holds a fleet's images but the frame"):
        imgframe.audit(
            imgframe.frame_from_headers([{"x-image-meta-id": "a"}]), baseline=old, now=FLEET_NOW
        )


def test_a_baseline_that_is_neither_is_refused(snapshots) -> None:
    _, new = snapshots
    with pytest.raises(ConfigError, match="baseline is neither an images table nor findings"):
        imgframe.audit(new, baseline=pd.DataFrame({"x": [1]}))


# --- imgframe audit: --baseline, --allow, --profile -----------------------------------


@pytest.fixture
def tables(snapshots, tmp_path) -> tuple[Path, Path]:
    old, new = snapshots
    return imgframe.to_csv(old, tmp_path / "old.csv"), imgframe.to_csv(new, tmp_path / "new.csv")


def test_cli_fail_on_high_with_a_baseline_means_a_new_high_finding(
    tables, tmp_path, cli, week
) -> None:
    old, new = tables
    rules = ("--rules", ",".join(TWO_RULES))
    assert cli("audit", str(new), *rules, "--fail-on", "high").status == 3
    same = cli("audit", str(new), *rules, "--baseline", str(new), "--fail-on", "high")
    assert same.status == 0, same.err
    assert "0 new findings" in same.err and "resolved" in same.err
    ran = cli("audit", str(new), *rules, "--baseline", str(old), "--fail-on", "high",
              "-o", str(tmp_path / "new-findings.csv"))  # fmt: skip
    assert ran.status == 3, ran.err
    written = imgframe.read_csv(tmp_path / "new-findings.csv")
    assert pairs(written) == {
        ("public_unprotected", week.published), ("public_unprotected", week.added),
        ("broken", week.killed), ("fetch_failed", week.unread),
    }  # fmt: skip
    # The findings file imgframe wrote is a baseline too (told apart by its columns).
    ran = cli("audit", str(new), *rules, "--baseline", str(tmp_path / "new-findings.csv"))
    assert ran.status == 0 and "baseline" in ran.err


def test_cli_allow_list_accepting_the_new_highs_passes_ci(tables, tmp_path, cli, week) -> None:
    old, new = tables
    allow = tmp_path / "allow.yaml"
    allow.write_text(
        f"- {{rule: public_unprotected, image_id: {week.published}, reason: CHG-1}}\n"
        f"- {{rule: public_unprotected, image_id: {week.added}, reason: CHG-2,"
        " expires: 2099-12-31}\n"
    )
    ran = cli("audit", str(new), "--baseline", str(old), "--allow", str(allow),
              "--fail-on", "high", "-o", str(tmp_path / "report.html"))  # fmt: skip
    assert ran.status == 0, ran.err
    assert "2 findings allowed" in ran.err
    page = (tmp_path / "report.html").read_text()
    assert 'id="allowed"' in page and "CHG-1" in page and "2099-12-31" in page


def test_cli_allow_list_errors_and_warnings_are_one_line_each(tables, tmp_path, cli) -> None:
    new, _ = tables  # last week's table: complete, so nothing else is said
    bad = tmp_path / "allow.csv"
    bad.write_text("rule,image_id,reason\nstale,img-1  # CHG-7,why\n")
    ran = cli("audit", str(new), "--allow", str(bad))
    assert ran.status == 2 and ran.err.count("\n") == 1
    assert f"{bad} line 2: image_id 'img-1  # CHG-7'" in ran.err
    bad.write_text("rule,image_id,reason\nstael,img-1,typo\n")
    ran = cli("audit", str(new), "--allow", str(bad))
    assert ran.status == 2 and f"{bad} line 2: unknown rule 'stael'" in ran.err
    bad.write_text("rule,image_id,reason,expires\nstale,no-such-image,why,2026-01-01\n")
    ran = cli("audit", str(new), "--allow", str(bad), "-o", str(tmp_path / "f.parquet"))
    assert ran.status == 0, ran.err
    assert "warning: allow-list entry" in ran.err and "expired on 2026-01-01" in ran.err
    assert "UserWarning" not in ran.err and "attrs" not in ran.err  # nothing from pyarrow


def test_cli_profile_chooses_the_rules(tables, cli) -> None:
    _, new = tables
    ran = cli("audit", str(new), "--profile", "hardening", "--format", "csv")
    assert ran.status == 0, ran.err
    rules = set(pd.read_csv(__import__("io").StringIO(ran.out))["rule"])
    assert rules == {"security_properties", "fetch_failed"}
    default = cli("audit", str(new), "--format", "csv")
    assert "security_properties" not in default.out and "public_unprotected" in default.out
    everything = cli("audit", str(new), "--profile", "default,hardening", "--format", "csv")
    assert "security_properties" in everything.out and "public_unprotected" in everything.out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--profile", "hardned"], "unknown profile 'hardned'; known: default, hardening, all"),
        (["--profile", "all", "--rules", "stale"], "give rules= or profile=, not both"),
    ],
)
def test_cli_profile_errors_are_one_line(tables, cli, args, message) -> None:
    new, _ = tables  # last week's table: complete, so nothing else is said
    ran = cli("audit", str(new), *args)
    assert ran.status == 2 and message in ran.err and ran.err.count("\n") == 1, ran.err


def test_the_baseline_audit_logs_nothing_of_its_own(caplog) -> None:
    df = imgframe.frame_from_headers([{"x-image-meta-id": "a", "x-image-meta-status": "killed"}])
    with caplog.at_level("INFO", logger="imgframe.audits"):
        found = imgframe.audit(df, rules=["broken", "unused"], baseline=df)
    skipped = [r for r in caplog.records if "skipped unused" in r.getMessage()]
    assert len(skipped) == 1 and skipped[0].levelname == "WARNING"
    assert found.empty and found.attrs["counts"]["unchanged"] == 1


def test_an_images_baseline_is_audited_with_the_same_trusted_projects(servers) -> None:
    emulator = servers.glance(300, seed=12)
    fleet = emulator.fleet
    assert fleet.planted.shared_outside  # the rule has findings to compare
    ids = [image.id for image in fleet.images]
    df = imgframe.fetch_images(ids, endpoint=emulator.url, token=ADMIN_TOKEN, members=True)
    on_fleet_clock(df)
    trusted = list(fleet.projects)
    alone = imgframe.audit(df, trusted=trusted, now=FLEET_NOW)
    assert set(alone.loc[alone["rule"] == "shared_outside", "image_id"]) == (
        fleet.planted.shared_outside
    )
    # Audited without the trusted projects, the same table would report every member:
    # findings the newer audit does not have, wrongly "resolved".
    found = imgframe.audit(df, trusted=trusted, baseline=df, now=FLEET_NOW)
    assert found.empty and imgframe.resolved_findings(found).empty
