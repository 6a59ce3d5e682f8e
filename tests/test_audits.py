"""Audit rules against a seeded fleet fetched through the real emulator, and by hand."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

import imgframe
from imgframe import audits
from imgframe.errors import ConfigError, InvalidInputError
from imgframe.schema import OPTIONAL_COLUMNS, required_columns
from imgframe.testing import ADMIN_TOKEN, FLEET_NOW, Fleet, GlanceEmulator

UNKNOWN_IDS = [f"00000000-0000-4000-8000-{n:012d}" for n in range(7)]
BAD_ID = "../etc"  # never sent: its row says "invalid image id"

RULES: dict[str, Callable[[pd.DataFrame], pd.DataFrame]] = {
    "public_unprotected": imgframe.public_unprotected,
    "checksum_duplicates": imgframe.checksum_duplicates,
    "stale": lambda df: imgframe.stale(df, now=FLEET_NOW),
    "broken": lambda df: imgframe.broken(df, now=FLEET_NOW),
    "format_mismatch": imgframe.format_mismatch,
    "requirements_missing": imgframe.requirements_missing,
    "security_properties": imgframe.security_properties,
}


FLEET = {"n": 2000, "seed": 42}  # the module's `fleet` (tests/conftest.py)


@pytest.fixture(scope="module")
def fetched(fleet: Fleet, emulator: GlanceEmulator) -> pd.DataFrame:
    ids = [image.id for image in fleet.images] + UNKNOWN_IDS + [BAD_ID]
    return imgframe.fetch_images(ids, endpoint=emulator.url, token=ADMIN_TOKEN)


@pytest.fixture
def df(fetched: pd.DataFrame) -> pd.DataFrame:
    return fetched.copy(deep=True)


def failed_ids(df: pd.DataFrame) -> set[str]:
    return set(df.index[df["http_status"].ne(200).fillna(True)])


def frame(*rows: dict[str, str]) -> pd.DataFrame:
    """A typed frame from short header dicts: {"id": "a", "status": "active", ...}."""
    return imgframe.frame_from_headers(
        [{f"x-image-meta-{key}": value for key, value in row.items()} for row in rows]
    )


SHA512_OF_NOTHING = (
    "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"
    "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"
)


# --- every rule returns exactly the planted images -------------------------------------


def test_public_unprotected_returns_exactly_the_planted_images(df, fleet) -> None:
    assert set(imgframe.public_unprotected(df).index) == fleet.planted.public_unprotected


def test_v2_duplicates_keyed_by_multihash_are_exactly_the_planted_groups(fleet, emulator) -> None:
    df = imgframe.fetch_images(
        [image.id for image in fleet.images], endpoint=emulator.url, token=ADMIN_TOKEN, api="v2"
    )
    found = imgframe.checksum_duplicates(df)
    assert found["dup_key"].astype(str).str.startswith("sha512:").all()
    groups = {frozenset(g.index) for _, g in found.groupby("dup_group", observed=True)}
    assert groups == set(fleet.planted.duplicate_groups)


def test_checksum_duplicates_returns_exactly_the_planted_groups(df, fleet) -> None:
    found = imgframe.checksum_duplicates(df)
    groups = {frozenset(group.index) for _, group in found.groupby("dup_group")}
    assert groups == set(fleet.planted.duplicate_groups)


def test_stale_returns_exactly_the_planted_images(df, fleet) -> None:
    assert set(imgframe.stale(df, now=FLEET_NOW).index) == fleet.planted.stale


def test_broken_returns_exactly_the_planted_images(df, fleet) -> None:
    assert set(imgframe.broken(df, now=FLEET_NOW).index) == fleet.planted.broken


def test_format_mismatch_returns_exactly_the_planted_images(df, fleet) -> None:
    assert set(imgframe.format_mismatch(df).index) == fleet.planted.format_mismatch


def test_requirements_missing_returns_exactly_the_planted_images(df, fleet) -> None:
    assert set(imgframe.requirements_missing(df).index) == fleet.planted.requirements_missing


@pytest.mark.parametrize(
    ("check", "planted"),
    [
        ("signature", "missing_signature"),
        ("secure_boot", "missing_secure_boot"),
        ("mem_encryption", "missing_mem_encryption"),
    ],
)
def test_each_security_check_returns_exactly_the_planted_images(df, fleet, check, planted):
    found = imgframe.security_properties(df, checks=[check])
    assert set(found.index) == getattr(fleet.planted, planted)
    assert (found["missing"] == check).all()


def test_security_properties_returns_images_missing_any_check(df, fleet) -> None:
    found = imgframe.security_properties(df)
    assert set(found.index) == fleet.planted.security_properties
    unsigned = found.index.isin(list(fleet.planted.missing_signature))
    assert found["missing"][unsigned].str.contains("signature").all()


def test_audit_finds_every_planted_answer_under_its_rule(df, fleet) -> None:
    findings = imgframe.audit(df, now=FLEET_NOW)
    by_rule = {rule: set(group["image_id"]) for rule, group in findings.groupby("rule")}
    assert by_rule["public_unprotected"] == fleet.planted.public_unprotected
    assert by_rule["broken"] == fleet.planted.broken
    assert by_rule["stale"] == fleet.planted.stale
    assert by_rule["checksum_duplicates"] == set().union(*fleet.planted.duplicate_groups)


def test_owner_summary_agrees_with_the_fleet(df, fleet) -> None:
    summary = imgframe.owner_summary(df)
    duplicates = set().union(*fleet.planted.duplicate_groups)
    for owner in fleet.projects[:3]:
        images = [i for i in fleet.images if i.owner == owner]
        row = summary.loc[owner]
        assert row["images"] == len(images)
        assert row["public_images"] == sum(i.is_public for i in images)
        assert row["bytes"] == sum(i.size or 0 for i in images)
        assert row["duplicates"] == sum(i.id in duplicates for i in images)
        assert row["oldest_image"] == pd.Timestamp(min(i.created_at for i in images), tz="UTC")
    assert summary["images"].sum() == len(fleet.images)  # failed rows excluded, none lost


def test_owner_summary_has_the_documented_dtypes(df) -> None:
    summary = imgframe.owner_summary(df)
    assert summary.index.name == "owner"
    assert {c: str(t) for c, t in summary.dtypes.items()} == {
        "images": "Int64",
        "public_images": "Int64",
        "bytes": "Int64",
        "duplicates": "Int64",
        "oldest_image": "datetime64[ns, UTC]",
    }


# --- failed rows --------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
def test_failed_rows_never_appear_in_a_rule_output(df, rule) -> None:
    failed = failed_ids(df)
    assert len(failed) == len(UNKNOWN_IDS) + 1
    assert not failed & set(RULES[rule](df).index)


def test_each_failed_row_is_one_fetch_failed_finding(df) -> None:
    findings = imgframe.audit(df, now=FLEET_NOW)
    failed = findings[findings["rule"] == "fetch_failed"]
    assert sorted(failed["image_id"]) == sorted(failed_ids(df))
    assert (failed["severity"] == "medium").all()
    unknown = failed.set_index("image_id").loc[UNKNOWN_IDS[0], "detail"]
    assert "404" in unknown and "Not Found" in unknown
    assert "invalid image id" in failed.set_index("image_id").loc[BAD_ID, "detail"]


def test_fetch_failed_is_reported_whatever_rules_are_selected(df) -> None:
    findings = imgframe.audit(df, rules=["stale"], now=FLEET_NOW)
    assert set(findings["rule"]) == {"stale", "fetch_failed"}


def test_frame_without_http_status_counts_rows_with_a_status_as_read() -> None:
    df = frame({"id": "a", "status": "killed"}, {"id": "b"})
    assert imgframe.broken(df).index.tolist() == ["a"]
    failed = imgframe.audit(df).query("rule == 'fetch_failed'")
    assert failed["image_id"].tolist() == ["b"]
    assert failed["detail"].iloc[0] == "could not be read (no HTTP answer)"


# --- the findings frame -----------------------------------------------------------------


def test_findings_have_the_finding_columns_and_dtypes(df) -> None:
    findings = imgframe.audit(df, now=FLEET_NOW)
    assert findings.columns.tolist() == imgframe.FINDING_COLUMNS
    assert findings["severity"].cat.ordered
    assert list(findings["severity"].cat.categories) == list(imgframe.SEVERITIES)
    assert findings["detail"].notna().all() and (findings["detail"].str.len() > 10).all()


def test_findings_are_sorted_by_severity_then_rule_then_image_id(df) -> None:
    findings = imgframe.audit(df, now=FLEET_NOW)
    keys = list(
        zip(
            findings["severity"].cat.codes,
            findings["rule"].astype(str),
            findings["image_id"],
            strict=True,
        )
    )
    assert keys == sorted(keys)
    assert findings["severity"].iloc[0] == "high"


def test_rules_and_audit_never_mutate_their_input(df) -> None:
    before = df.copy(deep=True)
    properties = copy.deepcopy(df["properties"].tolist())
    for rule in RULES.values():
        rule(df)
    imgframe.owner_summary(df)
    imgframe.audit(df, now=FLEET_NOW)
    pd.testing.assert_frame_equal(df, before)
    assert df["properties"].tolist() == properties


# --- allow-lists --------------------------------------------------------------------------


def test_allow_by_image_id_drops_that_image_findings(df, fleet) -> None:
    image_id = next(iter(fleet.planted.public_unprotected))
    findings = imgframe.audit(df, allow=[image_id], now=FLEET_NOW)
    assert image_id not in set(findings["image_id"])
    assert len(findings) > 0


def test_allow_by_owner_drops_that_owner_findings(df, fleet) -> None:
    owner = fleet.projects[0]
    full = imgframe.audit(df, now=FLEET_NOW)
    findings = imgframe.audit(df, allow={owner}, now=FLEET_NOW)
    assert (full["owner"] == owner).any()
    assert not (findings["owner"] == owner).any()
    assert len(findings) == (full["owner"] != owner).sum()


def test_allow_callable_drops_the_findings_it_marks(df) -> None:
    findings = imgframe.audit(df, allow=lambda f: f["severity"] != "high", now=FLEET_NOW)
    assert len(findings) > 0 and (findings["severity"] == "high").all()


# --- custom rules and rule names ----------------------------------------------------------


@pytest.fixture
def unnamed_rule() -> object:
    @imgframe.register_rule("unnamed", "info", describe=lambda row: f"{row['status']} image")
    def unnamed(df: pd.DataFrame) -> pd.DataFrame:
        return df[df["name"].isna()]

    yield unnamed
    imgframe.unregister_rule("unnamed")


def test_registered_rule_appears_in_audit(df, fleet, unnamed_rule) -> None:
    findings = imgframe.audit(df, now=FLEET_NOW)
    mine = findings[findings["rule"] == "unnamed"]
    assert set(mine["image_id"]) == {i.id for i in fleet.images if i.name is None}
    assert (mine["severity"] == "info").all()
    assert mine["detail"].str.endswith(" image").all()
    assert "unnamed" in imgframe.rule_names()


def test_registered_rule_never_sees_failed_rows(df, unnamed_rule) -> None:
    findings = imgframe.audit(df, rules=["unnamed"], now=FLEET_NOW)
    mine = findings[findings["rule"] == "unnamed"]
    assert not set(mine["image_id"]) & failed_ids(df)


def test_unknown_rule_name_is_a_clear_error_listing_the_known_ones(df) -> None:
    with pytest.raises(ConfigError, match=r"unknown rules \['stael'\]; known: .*'stale'"):
        imgframe.audit(df, rules=["stael"])


def test_unknown_severity_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown severity 'critical'"):
        imgframe.register_rule("x", "critical", describe=str)


def test_a_builtin_rule_cannot_be_replaced() -> None:
    with pytest.raises(ConfigError, match="built-in"):
        imgframe.register_rule("stale", "low", describe=str)


@pytest.mark.parametrize(
    "call",
    [
        lambda df: imgframe.audit(df, rules=["nope"]),
        lambda df: imgframe.audit(df, allow=lambda findings: [True]),
        lambda df: imgframe.security_properties(df, checks=["nope"]),
        lambda df: imgframe.unregister_rule("nope"),
        lambda df: imgframe.unregister_rule("stale"),
    ],
)
def test_bad_options_are_config_errors_and_still_value_errors(call) -> None:
    df = frame({"id": "a", "status": "killed"}, {"id": "b", "status": "killed"})
    with pytest.raises(ConfigError) as caught:
        call(df)
    assert isinstance(caught.value, ValueError)  # callers' `except ValueError` keeps working


# --- a table written before the optional columns existed ---------------------------------

LATER = ["virtual_size", "error", "request_id", "visibility", "os_hash_algo", "os_hash_value",
         "tags", "deleted_at", "members"]  # fmt: skip


@pytest.mark.parametrize("writer", ["to_csv", "to_parquet"])
def test_a_table_saved_without_the_optional_columns_is_audited_not_refused(
    df, tmp_path: Path, writer
) -> None:
    assert set(LATER) == set(OPTIONAL_COLUMNS)
    path = tmp_path / f"old.{writer[3:]}"
    getattr(imgframe, writer)(df.drop(columns=LATER), path)
    old = imgframe.read(path)
    assert not set(LATER) & set(old.columns)  # the file really lacks them

    findings = imgframe.audit(old, now=FLEET_NOW)
    # Without `error` a lying 200 cannot be told from a good one: compare against the full
    # frame with its errors cleared, and without virtual_size (unknown in the old table).
    expected_frame = df.assign(error=pd.NA, virtual_size=pd.NA).astype(
        {"error": df["error"].dtype, "virtual_size": "Int64"}
    )
    expected = imgframe.audit(expected_frame, now=FLEET_NOW)
    assert len(findings) > 0
    pd.testing.assert_frame_equal(findings, expected)
    assert not set(LATER) & set(old.columns)  # audit added them to a copy only
    found = imgframe.format_mismatch(old)
    assert found["virtual_size"].isna().all() and str(found["virtual_size"].dtype) == "Int64"


def test_a_table_missing_a_column_the_rules_need_is_refused_by_name(df) -> None:
    for column in ("status", "properties", "http_status"):
        with pytest.raises(InvalidInputError, match=rf"missing columns \['{column}'\]"):
            imgframe.audit(df.drop(columns=[column]))
    assert "virtual_size" not in required_columns()


# --- checksum groups by hand --------------------------------------------------------------


def test_images_without_checksum_are_never_grouped() -> None:
    df = frame(
        {"id": "a", "status": "active", "size": "10"},
        {"id": "b", "status": "active", "size": "10"},
        {"id": "c", "status": "active", "size": "10", "checksum": "x"},
    )
    assert imgframe.checksum_duplicates(df).empty


def test_reclaimable_bytes_is_size_times_copies_beyond_the_first() -> None:
    df = frame(
        {"id": "a", "status": "active", "size": "100", "checksum": "x"},
        {"id": "b", "status": "active", "size": "7", "checksum": "y"},
        {"id": "c", "status": "active", "size": "100", "checksum": "x"},
        {"id": "d", "status": "active", "size": "7", "checksum": "y"},
        {"id": "e", "status": "active", "checksum": "x"},  # size unknown: joins x's group
    )
    found = imgframe.checksum_duplicates(df)
    assert found.index.tolist() == ["a", "c", "e", "b", "d"]
    assert found["dup_group"].tolist() == [0, 0, 0, 1, 1]
    assert found["group_size"].tolist() == [3, 3, 3, 2, 2]
    assert found["reclaimable_bytes"].tolist() == [200, 200, 200, 7, 7]
    assert {str(found[c].dtype) for c in ("dup_group", "group_size", "reclaimable_bytes")} == {
        "Int64"
    }


def test_same_checksum_with_different_sizes_is_not_one_group() -> None:
    df = frame(
        {"id": "a", "status": "active", "size": "100", "checksum": "x"},
        {"id": "b", "status": "active", "size": "200", "checksum": "x"},
    )
    assert imgframe.checksum_duplicates(df).empty


def test_deleted_images_are_not_duplicates() -> None:
    df = frame(
        {"id": "a", "status": "active", "size": "1", "checksum": "x"},
        {"id": "b", "status": "deleted", "deleted": "True", "size": "1", "checksum": "x"},
    )
    assert imgframe.checksum_duplicates(df).empty


def v2_frame(*rows: dict[str, str]) -> pd.DataFrame:
    """Like frame(), with os_hash_algo / os_hash_value given as v2 would give them."""
    v2 = {"os_hash_algo", "os_hash_value"}
    return imgframe.frame_from_headers(
        [
            {(f"x-imgframe-v2-{k}" if k in v2 else f"x-image-meta-{k}"): v for k, v in row.items()}
            for row in rows
        ]
    )


@pytest.mark.parametrize(
    "placeholder",
    sorted(audits.PLACEHOLDER_CHECKSUMS - {SHA512_OF_NOTHING}),
)
def test_placeholder_md5_checksums_are_never_duplicates(placeholder: str) -> None:
    df = frame(
        *({"id": i, "status": "active", "size": "4096", "checksum": placeholder} for i in "abc"),
        {"id": "d", "status": "active", "size": "4096", "checksum": placeholder.upper()},
    )
    assert imgframe.checksum_duplicates(df).empty


def test_the_sha512_of_nothing_is_never_a_duplicate_key() -> None:
    assert hashlib.sha512(b"").hexdigest() == SHA512_OF_NOTHING  # the constant is what it says
    assert hashlib.md5(b"").hexdigest() in audits.PLACEHOLDER_CHECKSUMS
    assert hashlib.md5(b"{}").hexdigest() in audits.PLACEHOLDER_CHECKSUMS
    df = v2_frame(
        *(
            {"id": i, "status": "active", "size": "10", "checksum": f"m{i}",
             "os_hash_algo": "sha512", "os_hash_value": SHA512_OF_NOTHING}
            for i in "ab"
        )
    )  # fmt: skip
    assert imgframe.checksum_duplicates(df).empty


def test_any_checksum_of_a_size_0_image_is_never_a_duplicate() -> None:
    df = frame(
        {"id": "a", "status": "active", "size": "0", "checksum": "x"},
        {"id": "b", "status": "active", "size": "0", "checksum": "x"},
        {"id": "c", "status": "active", "checksum": "x"},  # unknown size: nothing to join
        {"id": "d", "status": "active", "size": "5", "checksum": "y"},
        {"id": "e", "status": "active", "size": "5", "checksum": "y"},
    )
    assert imgframe.checksum_duplicates(df).index.tolist() == ["d", "e"]


def test_image_size_property_is_the_real_size() -> None:
    df = frame(
        {"id": "a", "status": "active", "size": "0", "checksum": "x",
         "property-__image_size": "4096"},
        {"id": "b", "status": "active", "size": "0", "checksum": "x",
         "property-__image_size": "4096"},
        {"id": "c", "status": "active", "size": "0", "checksum": "x",
         "property-__image_size": "8192"},
        {"id": "d", "status": "active", "size": "0", "checksum": "x",
         "property-__image_size": "lots"},  # not a number: size 0, never a duplicate
    )  # fmt: skip
    found = imgframe.checksum_duplicates(df)
    assert found.index.tolist() == ["a", "b"]
    assert found["reclaimable_bytes"].tolist() == [4096, 4096]
    assert audits.data_size(df).tolist() == [4096, 4096, 8192, 0]


def test_multihash_is_the_key_where_known() -> None:
    df = v2_frame(
        # same MD5, different SHA-512: an MD5 collision, not the same data
        {"id": "a", "status": "active", "size": "10", "checksum": "m1",
         "os_hash_algo": "sha512", "os_hash_value": "h1"},
        {"id": "b", "status": "active", "size": "10", "checksum": "m1",
         "os_hash_algo": "sha512", "os_hash_value": "h2"},
        # different MD5 fields but the same SHA-512 (hex case means nothing)
        {"id": "c", "status": "active", "size": "10", "checksum": "m3",
         "os_hash_algo": "sha512", "os_hash_value": "H3"},
        {"id": "d", "status": "active", "size": "10", "checksum": "m4",
         "os_hash_algo": "sha512", "os_hash_value": "h3"},
    )  # fmt: skip
    found = imgframe.checksum_duplicates(df)
    assert found.index.tolist() == ["c", "d"]
    assert set(found["dup_key"].astype(str)) == {"sha512:h3"}


def test_an_md5_only_row_joins_the_one_multihash_group_of_its_md5() -> None:
    df = v2_frame(
        {"id": "a", "status": "active", "size": "10", "checksum": "m1",
         "os_hash_algo": "sha512", "os_hash_value": "h1"},
        {"id": "b", "status": "active", "size": "10", "checksum": "M1"},  # a v1 answer
        # m2 has two multihashes: an MD5-only row with m2 cannot say which it is
        {"id": "c", "status": "active", "size": "10", "checksum": "m2",
         "os_hash_algo": "sha512", "os_hash_value": "h2"},
        {"id": "d", "status": "active", "size": "10", "checksum": "m2",
         "os_hash_algo": "sha512", "os_hash_value": "h22"},
        {"id": "e", "status": "active", "size": "10", "checksum": "m2"},
    )  # fmt: skip
    found = imgframe.checksum_duplicates(df)
    assert found.index.tolist() == ["a", "b"]
    assert found["dup_key"].astype(str).tolist() == ["sha512:h1", "sha512:h1"]


# --- time-based rules by hand ---------------------------------------------------------------


def test_stale_falls_back_to_created_at_when_updated_at_is_missing() -> None:
    df = frame({"id": "a", "status": "active", "created_at": "2020-01-01T00:00:00"})
    assert imgframe.stale(df, now="2026-11-01").index.tolist() == ["a"]
    assert imgframe.stale(df, older_than="3650D", now="2026-11-01").empty


def test_an_upload_younger_than_stuck_after_is_not_broken() -> None:
    df = frame({"id": "a", "status": "saving", "updated_at": "2026-10-31T20:00:00"})
    assert imgframe.broken(df, now="2026-11-01").empty
    assert imgframe.broken(df, stuck_after="1h", now="2026-11-01")["problem"].tolist() == [
        "stuck in saving"
    ]


# --- rule profiles ----------------------------------------------------------------------


def test_the_default_profile_leaves_security_properties_to_hardening(df) -> None:
    default = imgframe.audit(df, now=FLEET_NOW)
    assert "security_properties" not in set(default["rule"])
    assert set(imgframe.rule_names("default")) == set(imgframe.rule_names()) - {
        "security_properties"
    }
    hardening = imgframe.audit(df, profile="hardening", now=FLEET_NOW)
    assert set(hardening["rule"]) == {"security_properties", "fetch_failed"}
    everything = imgframe.audit(df, profile="all", now=FLEET_NOW)
    pd.testing.assert_frame_equal(
        everything.drop(columns="rule").reset_index(drop=True),
        imgframe.audit(df, rules=imgframe.rule_names(), now=FLEET_NOW)
        .drop(columns="rule")
        .reset_index(drop=True),
    )
    both = imgframe.audit(df, profile=["default", "hardening"], now=FLEET_NOW)
    assert (
        len(both)
        == len(everything)
        == len(default) + len(hardening) - (hardening["rule"] == "fetch_failed").sum()
    )
    assert any("not run security_properties" in n for n in default.attrs["notes"])


def test_profile_names_and_unknown_profiles(df) -> None:
    assert imgframe.profile_names() == ["default", "hardening", "all"]
    with pytest.raises(
        ConfigError, match=r"unknown profile 'hardned'; known: default, hardening, all"
    ):
        imgframe.audit(df, profile="hardned")
    with pytest.raises(ConfigError, match="give rules= or profile=, not both"):
        imgframe.audit(df, rules=["stale"], profile="default")


def test_a_registered_rule_is_in_default_unless_given_profiles(df) -> None:
    @imgframe.register_rule("mine_default", "info", describe=lambda row: "x")
    def mine_default(df: pd.DataFrame) -> pd.DataFrame:
        return df.head(1)

    @imgframe.register_rule("mine_later", "info", describe=lambda row: "y", profiles=["cleanup"])
    def mine_later(df: pd.DataFrame) -> pd.DataFrame:
        return df.head(1)

    @imgframe.register_rule("mine_asked", "info", describe=lambda row: "z", profiles=())
    def mine_asked(df: pd.DataFrame) -> pd.DataFrame:
        return df.head(1)

    try:
        assert imgframe.profile_names() == ["default", "cleanup", "hardening", "all"]
        ran = lambda **kw: set(imgframe.audit(df, now=FLEET_NOW, **kw)["rule"])  # noqa: E731
        assert "mine_default" in ran() and not {"mine_later", "mine_asked"} & ran()
        assert {"mine_later"} == ran(profile="cleanup") - {"fetch_failed"}
        assert {"mine_default", "mine_later", "mine_asked"} <= ran(profile="all")
        assert "mine_asked" in ran(rules=["mine_asked"])
        with pytest.raises(ConfigError, match="profile names are words"):
            imgframe.register_rule("bad", "info", describe=str, profiles=["two words"])
    finally:
        for name in ("mine_default", "mine_later", "mine_asked"):
            imgframe.unregister_rule(name)
    assert imgframe.profile_names() == ["default", "hardening", "all"]
