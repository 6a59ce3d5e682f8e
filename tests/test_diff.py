"""imgframe.diff: two snapshots of an emulator fleet, fetched over HTTP, changed in between.

Every expected change set is computed from the mutations the test made (and the faults it
set), never counted by hand; the property tests hold :func:`imgframe.diff` to a
row-by-row reference written in plain Python.
"""

from __future__ import annotations

import dataclasses
import json
import random
import threading
import uuid
import warnings
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import imgframe
from imgframe.audits import SIGNATURE_KEYS
from imgframe.changes import CHANGE_COLUMNS, CHANGES, change_columns
from imgframe.errors import ConfigError
from imgframe.outcome import definitive_mask
from imgframe.testing import ADMIN_TOKEN, Faults, FleetImage, GlanceEmulator, make_fleet

Change = tuple[str, str]  # (image id or fleet key, change)


def fetch(emu: GlanceEmulator, ids: list[str] | None, api: str = "v1", **options) -> pd.DataFrame:
    return imgframe.fetch_images(
        ids, endpoint=emu.url, token=ADMIN_TOKEN, api=api, progress=False, **options
    )


def change_set(changes: pd.DataFrame, key: str = "image_id") -> set[Change]:
    return set(zip(changes[key].tolist(), changes["change"].astype(str).tolist(), strict=True))


def signed(image: FleetImage) -> bool:
    return all(image.properties.get(key) for key in SIGNATURE_KEYS)


def mutate(emu: GlanceEmulator, seed: int) -> tuple[set[Change], list[str]]:
    """One of each change the emulator can make, each to an image of its own (one image
    gets two); returns the changes a diff must find and the ids added."""
    live = [image for image in emu.fleet.images if not image.deleted]
    pool = iter(random.Random(seed).sample(live, len(live)))

    def pick(wanted=lambda image: True) -> FleetImage:
        return next(image for image in pool if wanted(image))

    expected: set[Change] = set()
    steps = [
        (emu.publish, lambda i: not i.is_public, "became_public"),
        (emu.unpublish, lambda i: i.is_public, "became_private"),
        (emu.protect, lambda i: not i.protected, "protection_added"),
        (emu.unprotect, lambda i: i.protected, "protection_removed"),
        (emu.drop_signature, signed, "signature_removed"),
    ]
    for method, wanted, change in steps:
        image = pick(wanted)
        method(image.id)
        expected.add((image.id, change))
    image = pick()
    emu.change_owner(image.id, f"project-{seed}")
    expected.add((image.id, "owner_changed"))
    image = pick(lambda i: i.status == "active")
    emu.set_status(image.id, "deactivated")
    expected.add((image.id, "status_changed"))
    image = pick()
    emu.set_property(image.id, "env", "prod")
    expected.add((image.id, "properties_changed"))
    image = pick(lambda i: "os_distro" in i.properties)
    emu.set_property(image.id, "os_distro", None)
    expected.add((image.id, "properties_changed"))
    image = pick(lambda i: not i.is_public)  # two changes to one image: two rows
    emu.publish(image.id)
    emu.change_owner(image.id, "project-two-changes")
    expected |= {(image.id, "became_public"), (image.id, "owner_changed")}
    image = pick(lambda i: not i.protected)
    emu.delete(image.id)
    expected.add((image.id, "disappeared"))
    image = pick()
    emu.delete(image.id, purge=True)
    expected.add((image.id, "disappeared"))
    added = dataclasses.replace(pick(), id=str(uuid.UUID(int=random.Random(seed).getrandbits(128))))
    emu.add(added)
    expected.add((added.id, "appeared"))
    return expected, [added.id]


FLEET_SIZE = 400  # enough images of every kind mutate() picks (signed ones are ~3%)


@pytest.mark.parametrize("api", ["v1", "v2"])
@pytest.mark.parametrize("by", ["ids", "listing"])
def test_the_diff_of_two_snapshots_is_exactly_what_was_changed(servers, api, by) -> None:
    fleet = make_fleet(FLEET_SIZE, seed=41)
    emu = servers.glance(fleet)
    ids = [image.id for image in fleet.images] if by == "ids" else None
    before = fetch(emu, ids, api)
    expected, added = mutate(emu, seed=5)
    after = fetch(emu, None if ids is None else ids + added, api)

    changes = imgframe.diff(before, after)
    assert change_set(changes) == expected
    assert list(changes.columns) == CHANGE_COLUMNS
    assert changes["change"].cat.categories.tolist() == list(CHANGES)
    order = changes["change"].cat.codes.tolist()
    assert order == sorted(order)  # sorted by change, in the vocabulary's order
    assert after.img.diff(before).equals(changes)
    # What the rows say comes from the newer snapshot.
    for row in changes[changes["change"] == "owner_changed"].itertuples():
        assert row.owner == emu.fleet.by_id()[row.image_id].owner
        assert row.after == row.owner and row.detail == f"owner {row.before} -> {row.after}"


def test_updated_at_moves_forward_on_every_change_only(servers) -> None:
    fleet = make_fleet(FLEET_SIZE, seed=42)
    emu = servers.glance(fleet)
    ids = [image.id for image in fleet.images]
    before = fetch(emu, ids)
    expected, _ = mutate(emu, seed=6)
    after = fetch(emu, ids)
    changed = {image_id for image_id, _ in expected} & set(after.index[after.http_status == 200])
    moved = set(after.index[after["updated_at"] > before["updated_at"].reindex(after.index)])
    assert moved == changed
    purged = {i for i, c in expected if c == "disappeared"} - changed
    assert after.loc[list(purged), "http_status"].tolist() == [404] * len(purged)


def test_a_deleted_image_disappears_for_every_kind_of_reader(servers) -> None:
    """Admin HEAD (a deleted row), v2 (404), a listing (absent; with deleted images: a
    deleted row) and a project token (404) all make it ``disappeared``; a purged image is
    404 even to an admin."""
    fleet = make_fleet(60, seed=43, projects=1)
    project = fleet.projects[0]
    tokens = {
        ADMIN_TOKEN: imgframe.testing.Token("admin", admin=True),
        "project-token": imgframe.testing.Token(project),
    }
    emu = servers.glance(fleet, tokens=tokens)
    mine = [i for i in fleet.images if i.owner == project and not i.deleted and not i.protected]
    gone, purged = mine[0], mine[1]
    ids = [i.id for i in mine]
    readers = {
        "admin v1": lambda: fetch(emu, ids),
        "admin v2": lambda: fetch(emu, ids, "v2"),
        "listing": lambda: fetch(emu, None),
        "listing with deleted images": lambda: fetch(emu, None, include_deleted=True),
        "project": lambda: imgframe.fetch_images(
            ids, endpoint=emu.url, token="project-token", progress=False
        ),
    }
    before = {name: read() for name, read in readers.items()}
    emu.delete(gone.id)
    emu.delete(purged.id, purge=True)
    assert fetch(emu, [gone.id]).loc[gone.id, "deleted"]  # an admin still sees it
    assert readers["listing with deleted images"]().loc[gone.id, "status"] == "deleted"
    assert gone.id not in readers["listing"]().index
    for name, read in readers.items():
        changes = imgframe.diff(before[name], read())
        assert change_set(changes) == {(gone.id, "disappeared"), (purged.id, "disappeared")}, name
    inverse = imgframe.diff(readers["admin v1"](), before["admin v1"])
    assert change_set(inverse) == {(gone.id, "appeared"), (purged.id, "appeared")}


def test_protected_images_cannot_be_deleted_and_unknown_ids_are_refused(servers) -> None:
    fleet = make_fleet(40, seed=44)
    emu = servers.glance(fleet)
    protected = next(i for i in fleet.images if i.protected and not i.deleted)
    with pytest.raises(ValueError, match="protected"):
        emu.delete(protected.id)
    with pytest.raises(KeyError):
        emu.publish("no-such-image")
    with pytest.raises(ValueError, match="exists"):
        emu.add(fleet.images[0])
    with pytest.raises(ValueError, match="delete"):
        emu.set_status(fleet.images[0].id, "deleted")
    unsigned = next(i for i in fleet.images if not any(k in i.properties for k in SIGNATURE_KEYS))
    with pytest.raises(ValueError, match="img_signature"):
        emu.drop_signature(unsigned.id)
    assert fetch(emu, [protected.id]).loc[protected.id, "status"] == protected.status


def test_the_fleet_given_is_never_changed(servers) -> None:
    fleet = make_fleet(FLEET_SIZE, seed=45)
    snapshot = [dataclasses.replace(image) for image in fleet.images]
    first, second = servers.glance(fleet), servers.glance(fleet)
    ids = [image.id for image in fleet.images]
    before = fetch(second, ids)
    mutate(first, seed=7)
    assert fleet.images == snapshot and len(first.fleet) == len(fleet)
    assert imgframe.diff(before, fetch(second, ids)).empty  # the other emulator: unchanged


def test_changes_are_safe_while_the_server_answers(servers) -> None:
    """Changes made while listings run in another thread: every listing holds each listed
    image once, and the final snapshot has every change."""
    fleet = make_fleet(FLEET_SIZE, seed=46)
    emu = servers.glance(fleet, api_limit_max=25)
    before = fetch(emu, None)
    listed: list[pd.DataFrame] = []
    stop = threading.Event()

    def keep_listing() -> None:
        for _ in range(50):  # bounded; usually stopped far earlier
            listed.append(fetch(emu, None))
            if stop.is_set():
                return

    reader = threading.Thread(target=keep_listing)
    reader.start()
    rng = random.Random(8)
    live = [image for image in fleet.images if not image.deleted]
    expected: set[Change] = set()
    try:
        for image in rng.sample(live, 60):
            emu.change_owner(image.id, "project-busy")
            expected.add((image.id, "owner_changed"))
    finally:
        stop.set()
        reader.join(60)
    assert not reader.is_alive() and listed
    for frame in listed:
        assert sorted(frame.index) == sorted(before.index)
    assert change_set(imgframe.diff(before, fetch(emu, None))) == expected


# --------------------------------------------------------------------------- fleets
def test_fleet_snapshots_are_compared_by_cloud_region_and_id(servers) -> None:
    east, west = make_fleet(FLEET_SIZE, seed=47), make_fleet(FLEET_SIZE, seed=48)
    # One image served by both regions under the same id: only the east copy changes.
    shared = next(i for i in east.images if not i.deleted and not i.is_public)
    west = dataclasses.replace(west, images=[*west.images, shared])
    emulators = {"east": servers.glance(east), "west": servers.glance(west)}

    def snapshot() -> pd.DataFrame:
        targets = [
            imgframe.Target("lab", region, endpoint=emu.url, token=ADMIN_TOKEN)
            for region, emu in emulators.items()
        ]
        return imgframe.fetch_fleet(targets, progress=False)

    before = snapshot()
    expected: set[Change] = set()
    for seed, (region, emu) in enumerate(emulators.items()):
        found, _ = mutate(emu, seed=seed + 20)
        expected |= {(f"lab/{region}/{image_id}", change) for image_id, change in found}
    if (f"lab/east/{shared.id}", "became_public") not in expected:
        emulators["east"].publish(shared.id)
        expected.add((f"lab/east/{shared.id}", "became_public"))
    after = snapshot()

    changes = imgframe.diff(before, after)
    assert change_set(changes, key="key") == expected
    assert list(changes.columns) == change_columns(after)
    labels = changes[["cloud", "region", "image_id"]].astype(str).agg("/".join, axis=1)
    assert labels.tolist() == changes["key"].tolist()
    assert (f"lab/west/{shared.id}", "became_public") not in change_set(changes, key="key")
    single = fetch(emulators["east"], [shared.id])
    with pytest.raises(ConfigError, match="fleet") as raised:
        imgframe.diff(single, after)
    assert "\n" not in str(raised.value)


# --------------------------------------------------------------------------- unknown
def failing(faults: Faults, ids: list[str]) -> set[str]:
    """The ids these faults keep from being read (no retry can cure them here)."""
    return {i for i in ids if faults.transient_kind(i) or faults.is_hanging(i) or faults.lie(i)}


@pytest.mark.parametrize("broken", ["older", "newer"])
def test_rows_that_could_not_be_read_are_unknown_never_disappeared(servers, broken) -> None:
    fleet = make_fleet(FLEET_SIZE, seed=49)
    emu = servers.glance(fleet)
    faults = Faults(
        transient_rate=0.08, transient_kinds=("503", "500", "drop"), transient_attempts=10**6,
        hang_rate=0.02, hang_seconds=10.0, wrong_id_rate=0.03, seed=11,
    )  # fmt: skip
    # adaptive=False: the 503s would make the hung requests wait for each other
    options = {"retries": 0, "timeout": 2.0, "adaptive": False}
    ids = [image.id for image in fleet.images]
    if broken == "older":
        emu.faults = faults
    before = fetch(emu, ids, **options)
    emu.faults = Faults()
    expected, added = mutate(emu, seed=9)
    if broken == "newer":
        emu.faults = faults
    after = fetch(emu, ids + added, **options)

    unread = failing(faults, ids + added if broken == "newer" else ids)
    broken_frame = before if broken == "older" else after
    assert unread and set(broken_frame.index[~definitive_mask(broken_frame)]) == unread
    want = {(i, c) for i, c in expected if i not in unread} | {(i, "unknown") for i in unread}
    changes = imgframe.diff(before, after)
    assert change_set(changes) == want
    rows = changes[changes["change"] == "unknown"]
    assert rows["detail"].str.startswith(f"could not be read in the {broken} snapshot (").all()


# ----------------------------------------------------------------- round trips, v1/v2
def test_a_snapshot_read_back_from_any_format_or_api_is_no_change(servers, tmp_path) -> None:
    """Categories rebuilt by CSV/JSON, a v2 snapshot against a v1 one, a listing against
    HEADs: the same images, so no change."""
    fleet = make_fleet(FLEET_SIZE, seed=50)
    emu = servers.glance(fleet)
    ids = [image.id for image in fleet.images]
    frame = fetch(emu, ids)
    others = {
        "v2": fetch(emu, ids, "v2"),
        "listing": fetch(emu, None),
        **{
            suffix: imgframe.read(imgframe.io.write(frame.iloc[::-1], tmp_path / f"t{suffix}"))
            for suffix in (".csv", ".parquet", ".json")
        },
    }
    for name, other in others.items():
        assert imgframe.diff(frame, other).empty, name
        assert imgframe.diff(other, frame).empty, name


def test_optional_columns_a_table_lacks_are_not_changes(servers) -> None:
    fleet = make_fleet(100, seed=51)
    emu = servers.glance(fleet)
    before = fetch(emu, None, "v2")
    old_table = before.drop(columns=["virtual_size", "error", "request_id", "visibility",
                                     "os_hash_algo", "os_hash_value", "tags"])  # fmt: skip
    assert imgframe.diff(old_table, before).empty
    assert imgframe.diff(before, old_table).empty


# --------------------------------------------------------------------------- the CLI
@pytest.fixture
def two_tables(servers, tmp_path) -> tuple[Path, Path, set[Change]]:
    fleet = make_fleet(FLEET_SIZE, seed=52)
    emu = servers.glance(fleet)
    old = imgframe.io.write(fetch(emu, None), tmp_path / "old.csv")
    expected, _ = mutate(emu, seed=10)
    new = imgframe.io.write(fetch(emu, None), tmp_path / "new.parquet")
    return old, new, expected


def test_cli_diff_writes_the_changes_and_fails_on_the_named_ones(cli, two_tables, tmp_path):
    old, new, expected = two_tables
    out = tmp_path / "changes.json"
    ran = cli("diff", str(old), str(new), "-o", str(out), "--fail-on", "became_public,nope")
    assert ran.status == 2 and "nope" in ran.last_line and "properties_changed" in ran.last_line
    assert not out.exists()
    ran = cli("diff", str(old), str(new), "-o", str(out), "--fail-on", "became_public")
    assert ran.status == 3, ran.err
    records = json.loads(out.read_text())
    assert {(r["image_id"], r["change"]) for r in records} == expected
    assert ran.out.startswith(f"{len(expected)} changes: appeared 1, disappeared 2, ")
    assert ran.last_line == f"imgframe: wrote {len(expected)} changes to {out}"
    ran = cli("diff", str(old), str(new), "--fail-on", "checksum_changed,unknown")
    assert ran.status == 0, ran.err
    assert "signature properties removed" in ran.out
    assert cli("diff", str(old), str(old), "--fail-on", "appeared").out == "no changes\n"


def test_cli_diff_refuses_what_it_cannot_compare(cli, two_tables, tmp_path, servers) -> None:
    old, new, _ = two_tables
    ran = cli("diff", str(old), str(new), "-o", str(tmp_path / "changes.xlsx"))
    assert ran.status == 2 and ".csv, .parquet or .json" in ran.last_line
    emu = servers.glance(make_fleet(5, seed=53))
    fleet = imgframe.fetch_fleet(
        [imgframe.Target("lab", "east", endpoint=emu.url, token=ADMIN_TOKEN)], progress=False
    )
    fleet_table = imgframe.io.write(fleet, tmp_path / "fleet.parquet")
    ran = cli("diff", str(old), str(fleet_table))
    assert ran.status == 2 and "fleet" in ran.last_line and len(ran.err.splitlines()) == 1
    ran = cli("diff", str(old), str(tmp_path / "missing.csv"))
    assert ran.status == 2


def test_the_exit_status_help_names_diff_for_3() -> None:
    from imgframe.cli import EXIT_FINDINGS, EXIT_STATUS_HELP

    assert EXIT_FINDINGS == 3
    line = next(
        n for n, text in enumerate(EXIT_STATUS_HELP.splitlines()) if text.startswith("  3 ")
    )
    assert "imgframe diff" in " ".join(EXIT_STATUS_HELP.splitlines()[line : line + 2])


# ------------------------------------------------------------------ properties (hypothesis)
IDS = ("a", "b", "c", "d", "bad/id")
_STATES = ("read",) * 6 + ("404", "503", "lied")


@st.composite
def snapshots(draw: st.DrawFn) -> pd.DataFrame:
    """Any small frame: rows read (v1 or v2), 404, failed or lying, an invalid id; odd
    booleans, NA owners, signature properties present, empty or missing."""
    chosen = draw(st.lists(st.sampled_from(IDS), unique=True, max_size=len(IDS)))
    headers, statuses, errors = [], [], []
    for image_id in chosen:
        state = "invalid" if "/" in image_id else draw(st.sampled_from(_STATES))
        row = {"x-image-meta-id": image_id}
        if state == "read":
            values = {
                "status": st.sampled_from(["active"] * 3 + ["deactivated", "deleted", "killed"]),
                "owner": st.sampled_from(["p1", "p2", None]),
                "is_public": st.sampled_from(["True", "False", "maybe", None]),
                "protected": st.sampled_from(["True", "False", None]),
                "deleted": st.sampled_from(["False"] * 5 + ["True"]),
                "checksum": st.sampled_from(["c1", "c2", None]),
                "size": st.sampled_from(["1", "2", None]),
            }
            for name, strategy in values.items():
                value = draw(strategy)
                if value is not None:
                    row[f"x-image-meta-{name}"] = value
            if draw(st.booleans()):  # a v2 answer
                row["x-imgframe-v2-visibility"] = draw(st.sampled_from(["public", "private"]))
                row["x-imgframe-v2-os_hash_value"] = draw(st.sampled_from(["h1", "h2"]))
            keys = {"img_signature": ["s1", "s2", ""], "os": ["x", "y"], "Env": ["prod"]}
            for key, choices in keys.items():
                if draw(st.booleans()):
                    row[f"x-image-meta-property-{key}"] = draw(st.sampled_from(choices))
        headers.append(row)
        status, error = {
            "read": (200, None),
            "404": (404, "HTTP 404 Not Found"),
            "503": (503, "HTTP 503 Service Unavailable"),
            "lied": (200, "bad response: the answer is for another image"),
            "invalid": (None, "invalid image id"),
        }[state]
        statuses.append(status)
        errors.append(error)
    with warnings.catch_warnings():  # "maybe" is NA on purpose
        warnings.simplefilter("ignore", imgframe.ImgframeParseWarning)
        frame = imgframe.frame_from_headers(headers)
    frame["http_status"] = pd.array(statuses, dtype="Int64")
    frame["error"] = pd.Categorical(errors)
    return frame


def reference(before: pd.DataFrame, after: pd.DataFrame) -> set[Change]:
    """diff's change set, row by row in plain Python: what the module docstring says."""

    def state(frame: pd.DataFrame, image_id: str) -> tuple[str, dict | None]:
        if image_id not in frame.index:
            return "absent", None
        row = frame.loc[image_id].to_dict()
        error = None if pd.isna(row["error"]) else row["error"]
        if error == "invalid image id":
            return "invalid", None
        if row["http_status"] == 404:
            return "missing", None
        if row["http_status"] != 200 or error is not None:
            return "unread", None
        gone = row["deleted"] is True or row["status"] in ("deleted", "pending_delete")
        return ("missing" if gone else "live"), row

    def same(x, y) -> bool:
        return (pd.isna(x) and pd.isna(y)) if pd.isna(x) or pd.isna(y) else x == y

    found: set[Change] = set()
    for image_id in set(before.index) | set(after.index):
        (sb, old), (sa, new) = state(before, image_id), state(after, image_id)
        if "unread" in (sb, sa):
            found.add((image_id, "unknown"))
        elif sb == "live" and sa in ("absent", "missing"):
            found.add((image_id, "disappeared"))
        elif sa == "live" and sb in ("absent", "missing"):
            found.add((image_id, "appeared"))
        if not (sb == sa == "live"):
            continue
        assert old is not None and new is not None
        public = [v is True for v in (old["is_public"], new["is_public"])]
        protected = [v is True for v in (old["protected"], new["protected"])]
        both_v2 = not pd.isna(old["visibility"]) and not pd.isna(new["visibility"])
        for change, hit in (
            ("became_public", public == [False, True]),
            ("became_private", public == [True, False]),
            ("protection_removed", protected == [True, False]),
            ("protection_added", protected == [False, True]),
            ("owner_changed", not same(old["owner"], new["owner"])),
            ("status_changed", not same(old["status"], new["status"])),
            ("checksum_changed", not same(old["checksum"], new["checksum"])
             or (both_v2 and not same(old["os_hash_value"], new["os_hash_value"]))),
        ):  # fmt: skip
            if hit:
                found.add((image_id, change))
        p, q = old["properties"], new["properties"]
        if pd.isna(old["visibility"]) != pd.isna(new["visibility"]):
            p, q = ({k.lower(): v for k, v in d.items()} for d in (p, q))
        lost = {k for k in SIGNATURE_KEYS if p.get(k) and not q.get(k)}
        if lost:
            found.add((image_id, "signature_removed"))
        rest = {k for k in p.keys() | q.keys() if p.get(k, None) != q.get(k, None)} - lost
        if rest:
            found.add((image_id, "properties_changed"))
    return found


REVERSED = {
    "appeared": "disappeared",
    "disappeared": "appeared",
    "became_public": "became_private",
    "became_private": "became_public",
    "protection_removed": "protection_added",
    "protection_added": "protection_removed",
    # A removed signature is, the other way round, properties added: one bucket.
    "signature_removed": "properties",
    "properties_changed": "properties",
}


def reversible(found: set[Change]) -> set[Change]:
    return {(i, "properties" if c in ("signature_removed", "properties_changed") else c)
            for i, c in found}  # fmt: skip


HYPOTHESIS = settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@HYPOTHESIS
@given(snapshots(), snapshots())
def test_diff_matches_a_row_by_row_reference(before: pd.DataFrame, after: pd.DataFrame) -> None:
    changes = imgframe.diff(before, after)
    assert change_set(changes) == reference(before, after)
    assert not changes.duplicated(["image_id", "change"]).any()
    assert changes["detail"].notna().all()


@HYPOTHESIS
@given(snapshots())
def test_a_snapshot_against_itself_gives_only_its_unread_rows(frame: pd.DataFrame) -> None:
    unread = frame.index[
        frame.error.notna() & frame.http_status.ne(404).fillna(True)
        & frame.error.astype(str).ne("invalid image id")
    ]  # fmt: skip
    assert change_set(imgframe.diff(frame, frame)) == {(i, "unknown") for i in unread}


@HYPOTHESIS
@given(snapshots(), snapshots())
def test_diff_the_other_way_round_is_the_reverse_change_set(
    before: pd.DataFrame, after: pd.DataFrame
) -> None:
    forward = reversible(change_set(imgframe.diff(before, after)))
    backward = reversible(change_set(imgframe.diff(after, before)))
    assert {(i, REVERSED.get(c, c)) for i, c in forward} == backward


# --------------------------------------------------------------------------- details
def _one(**headers: str) -> pd.DataFrame:
    row = {"x-image-meta-id": "a", "x-image-meta-status": "active", **headers}
    frame = imgframe.frame_from_headers([row])
    frame["http_status"] = pd.array([200], dtype="Int64")
    return frame


def test_details_say_what_changed_in_one_sentence() -> None:
    many = {f"x-image-meta-property-k{n}": "v" for n in range(8)}
    old = _one(**{"x-image-meta-checksum": "c1", "x-image-meta-size": "1",
                  "x-image-meta-property-gone": "x", "x-image-meta-property-os": "x"})  # fmt: skip
    new = _one(**{"x-image-meta-checksum": "c2", "x-image-meta-size": "2",
                  "x-image-meta-property-os": "y"}, **many)  # fmt: skip
    changes = imgframe.diff(old, new).set_index("change")
    assert changes.loc["checksum_changed", "detail"] == "checksum c1 -> c2; size 1 -> 2"
    assert changes.loc["properties_changed", "detail"] == (
        "properties: added k0, k1, k2, k3, k4 and 3 more; removed gone; changed os"
    )
    assert json.loads(changes.loc["properties_changed", "before"]) == {"gone": "x", "os": "x"}


def test_categories_and_nullable_values_compare_by_value() -> None:
    old, new = _one(**{"x-image-meta-owner": "p1"}), _one(**{"x-image-meta-owner": "p1"})
    new["owner"] = (
        new["owner"].cat.add_categories(["p0", "p9"]).cat.reorder_categories(["p9", "p1", "p0"])
    )
    new["protected"] = pd.array([pd.NA], dtype="boolean")  # NA reads as unprotected
    old["protected"] = pd.array([False], dtype="boolean")
    assert imgframe.diff(old, new).empty
