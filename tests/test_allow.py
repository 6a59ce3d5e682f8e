"""Scoped allow-lists: entries for one rule and one image or owner, with a reason and an
expiry; the files they are read from (CSV, YAML, plain ids), every malformed line named."""

from __future__ import annotations

import json
import pickle
import re
import warnings
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import imgframe
from imgframe.allow import ALLOWED_COLUMNS, AllowEntry, AllowList
from imgframe.errors import AllowListWarning, ConfigError
from imgframe.testing import ADMIN_TOKEN, FLEET_NOW, Fleet, GlanceEmulator

FLEET = {"n": 600, "seed": 5}  # the module's `fleet` (tests/conftest.py)
NOW = pd.Timestamp(FLEET_NOW, tz="UTC")


@pytest.fixture(scope="module")
def fetched(fleet: Fleet, emulator: GlanceEmulator) -> pd.DataFrame:
    return imgframe.fetch_images(
        [image.id for image in fleet.images], endpoint=emulator.url, token=ADMIN_TOKEN
    )


@pytest.fixture(scope="module")
def full(fetched: pd.DataFrame) -> pd.DataFrame:
    return imgframe.audit(fetched, now=FLEET_NOW)


def pairs(findings: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(findings["rule"].astype(str), findings["image_id"].astype(str), strict=True))


def frame(*rows: dict[str, str]) -> pd.DataFrame:
    return imgframe.frame_from_headers(
        [{f"x-image-meta-{key}": value for key, value in row.items()} for row in rows]
    )


def audit_quietly(df: pd.DataFrame, **kwargs: object) -> tuple[pd.DataFrame, list[str]]:
    """audit() and the AllowListWarning messages it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        findings = imgframe.audit(df, **kwargs)  # type: ignore[arg-type]
    return findings, [str(w.message) for w in caught if issubclass(w.category, AllowListWarning)]


def allow_csv(tmp_path: Path, text: str, name: str = "allow.csv") -> AllowList:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return AllowList.read(path)


# --- what an entry covers -------------------------------------------------------------


def test_an_entry_covers_its_rule_only(fetched, full, tmp_path) -> None:
    by_image = full.groupby("image_id", observed=True)["rule"].agg(lambda r: set(r.astype(str)))
    image, rules = next((i, r) for i, r in by_image.items() if len(r) >= 2)
    rule = sorted(rules)[0]
    allow = allow_csv(tmp_path, f"rule,image_id,reason\n{rule},{image},CHG-1 accepted\n")
    findings, said = audit_quietly(fetched, allow=allow, now=FLEET_NOW)
    assert pairs(full) - pairs(findings) == {(rule, image)}
    assert {(r, i) for r, i in pairs(findings) if i == image} == {
        (r, image) for r in rules - {rule}
    }
    allowed = imgframe.allowed_findings(findings)
    assert list(allowed.columns) == list(ALLOWED_COLUMNS)
    assert allowed[["rule", "image_id", "reason", "entry"]].values.tolist() == [
        [rule, image, "CHG-1 accepted", f"{tmp_path / 'allow.csv'} line 2"]
    ]
    assert findings.attrs["counts"]["allowed"] == 1 and said == []


def test_a_star_entry_for_an_owner_covers_all_its_findings(fetched, full, fleet) -> None:
    owner = fleet.projects[1]
    allow = AllowList.from_records([{"rule": "*", "owner": owner, "reason": "lab project"}])
    findings, said = audit_quietly(fetched, allow=allow, now=FLEET_NOW)
    assert said == []
    theirs = full[full["owner"] == owner]
    assert len(theirs) > 0 and not (findings["owner"] == owner).any()
    assert len(findings) + len(theirs) == len(full)
    assert len(imgframe.allowed_findings(findings)) == len(theirs)
    assert set(imgframe.allowed_findings(findings)["reason"]) == {"lab project"}


def test_image_and_owner_together_cover_the_image_only_while_that_owner_has_it(
    fetched, full
) -> None:
    row = full[full["rule"] == "public_unprotected"].iloc[0]
    image, owner = row["image_id"], row["owner"]
    mine = AllowList.from_records(
        [{"rule": "public_unprotected", "image_id": image, "owner": owner, "reason": "ok"}]
    )
    findings, said = audit_quietly(fetched, allow=mine, now=FLEET_NOW)
    assert ("public_unprotected", image) not in pairs(findings) and said == []
    other = AllowList.from_records(
        [{"rule": "public_unprotected", "image_id": image, "owner": "someone-else", "reason": "x"}]
    )
    findings, said = audit_quietly(fetched, allow=other, now=FLEET_NOW)
    assert ("public_unprotected", image) in pairs(findings)
    assert len(said) == 1 and "record 1" in said[0] and "matched no finding" in said[0]


def test_an_entry_applies_to_the_end_of_its_expiry_day_utc_then_warns() -> None:
    df = frame({"id": "a", "status": "killed"})
    allow = AllowList.from_records(
        [{"rule": "broken", "image_id": "a", "reason": "post-mortem", "expires": "2026-11-01"}]
    )
    for now in ("2026-11-01T00:00:00", "2026-11-01T23:59:59"):
        findings, said = audit_quietly(df, allow=allow, now=now)
        assert findings.empty and said == [], now
    findings, said = audit_quietly(df, allow=allow, now="2026-11-02T00:00:00")
    assert findings["image_id"].tolist() == ["a"]
    assert len(said) == 1
    assert "record 1 (broken for image a) expired on 2026-11-01" in said[0]
    assert "allowed" in findings.attrs and imgframe.allowed_findings(findings).empty
    # a time with an offset is the same instant in UTC: 2026-11-02 01:00+02:00 is not past
    findings, said = audit_quietly(df, allow=allow, now="2026-11-02T01:00:00+02:00")
    assert findings.empty and said == []


def test_an_entry_that_matched_nothing_warns_once_naming_it(fetched, tmp_path) -> None:
    allow = allow_csv(
        tmp_path,
        "rule,image_id,owner,reason\nstale,no-such-image,,gone\n*,,no-such-owner,gone too\n",
    )
    _, said = audit_quietly(fetched, allow=allow, now=FLEET_NOW)
    assert len(said) == 2
    assert f"{tmp_path / 'allow.csv'} line 2 (stale for image no-such-image)" in said[0]
    assert "line 3 (* for owner no-such-owner)" in said[1]


def test_an_entry_whose_rule_did_not_run_is_not_judged(fetched, full) -> None:
    image = full["image_id"].iloc[0]
    allow = AllowList.from_records(
        [{"rule": "security_properties", "image_id": image, "reason": "hardening later"}]
    )
    _, said = audit_quietly(fetched, allow=allow, now=FLEET_NOW)  # default profile
    assert said == []
    _, said = audit_quietly(fetched, allow=allow, now=FLEET_NOW, profile="all")
    assert said == []  # it ran and covered the image's finding (every active image has one)


def test_an_unknown_rule_name_is_an_error_naming_the_line(fetched, tmp_path) -> None:
    allow = allow_csv(tmp_path, "rule,owner,reason\n# comment\n\nstael,p,typo\n")
    with pytest.raises(ConfigError, match=r"allow\.csv line 4: unknown rule 'stael'; known: \["):
        imgframe.audit(fetched, allow=allow)


def test_plain_ids_given_in_code_keep_their_old_meaning_and_never_warn(fetched, full) -> None:
    image = full["image_id"].iloc[0]
    owner = str(full["owner"].dropna().iloc[-1])
    findings, said = audit_quietly(fetched, allow=[image, owner, "nothing"], now=FLEET_NOW)
    expected = full[(full["image_id"] != image) & (full["owner"] != owner)]
    assert pairs(findings) == pairs(expected) and said == []
    assert set(imgframe.allowed_findings(findings)["reason"]) == {"given in code"}


def test_a_path_is_read_as_an_allow_list_file(fetched, full, tmp_path) -> None:
    image = full["image_id"].iloc[0]
    path = tmp_path / "allow.txt"
    path.write_text(f"# accepted risks\n{image}   # CHG-9, until the rebuild\n")
    findings, _ = audit_quietly(fetched, allow=path, now=FLEET_NOW)
    assert image not in set(findings["image_id"])
    assert set(imgframe.allowed_findings(findings)["reason"]) == {"CHG-9, until the rebuild"}


def test_a_function_still_drops_what_it_marks_and_the_drops_are_listed(fetched, full) -> None:
    findings = imgframe.audit(fetched, allow=lambda f: f["severity"] == "low", now=FLEET_NOW)
    assert not (findings["severity"] == "low").any()
    allowed = imgframe.allowed_findings(findings)
    assert len(allowed) == (full["severity"] == "low").sum() > 0
    assert set(allowed["reason"]) == {"allowed by the allow= function"}


def test_the_first_covering_entry_gives_the_reason_and_overlaps_are_not_unmatched() -> None:
    df = frame({"id": "a", "status": "killed", "owner": "p"})
    allow = AllowList.from_records(
        [
            {"rule": "broken", "image_id": "a", "reason": "first"},
            {"rule": "*", "owner": "p", "reason": "second"},
        ]
    )
    findings, said = audit_quietly(df, allow=allow)
    assert imgframe.allowed_findings(findings)["reason"].tolist() == ["first"] and said == []


def test_a_fleet_entry_may_name_the_bare_id_or_the_cloud_region_id_key(servers) -> None:
    shared = imgframe.testing.make_fleet(30, seed=9)
    east, west = servers.glance(shared), servers.glance(shared)
    targets = [
        imgframe.Target("east", endpoint=east.url, token=ADMIN_TOKEN),
        imgframe.Target("west", endpoint=west.url, token=ADMIN_TOKEN),
    ]
    df = imgframe.fetch_fleet(targets)
    full = imgframe.audit(df, now=FLEET_NOW)
    image = full["image_id"].iloc[0]
    rule = str(full["rule"].iloc[0])
    both = full[(full["image_id"] == image) & (full["rule"] == rule)]
    assert set(both["cloud"]) == {"east", "west"}
    by_key = AllowList.from_records([{"rule": rule, "image_id": f"west//{image}", "reason": "r"}])
    findings, _ = audit_quietly(df, allow=by_key, now=FLEET_NOW)
    left = findings[(findings["image_id"] == image) & (findings["rule"] == rule)]
    assert left["cloud"].tolist() == ["east"]
    assert imgframe.allowed_findings(findings)[["cloud", "image_id"]].values.tolist() == [
        ["west", image]
    ]
    by_id = AllowList.from_records([{"rule": rule, "image_id": image, "reason": "r"}])
    findings, _ = audit_quietly(df, allow=by_id, now=FLEET_NOW)
    assert not ((findings["image_id"] == image) & (findings["rule"] == rule)).any()


# --- the files ------------------------------------------------------------------------


def test_csv_yaml_and_records_give_the_same_entries(tmp_path) -> None:
    csv_list = allow_csv(
        tmp_path,
        "\ufeffRule;Image_ID;Owner;Reason;Expires\r\n"
        'stale;img-1;;"archive; kept";2027-01-31\r\n'
        "*;;p-lab;lab project;\r\n",
    )
    yaml_path = tmp_path / "allow.yaml"
    yaml_path.write_text(
        "# accepted risks\n"
        "- rule: stale\n  image_id: img-1\n  reason: 'archive; kept'\n  expires: 2027-01-31\n"
        "- {rule: '*', owner: p-lab, reason: lab project}\n"
    )
    yaml_list = AllowList.read(yaml_path)
    records = AllowList.from_records(
        [
            {"rule": "stale", "image_id": "img-1", "reason": "archive; kept",
             "expires": date(2027, 1, 31)},
            {"rule": "*", "owner": "p-lab", "reason": "lab project"},
        ]
    )  # fmt: skip

    def key(allow: AllowList) -> list[tuple[object, ...]]:
        return [(e.rule, e.image_id, e.owner, e.reason, e.expires) for e in allow]

    assert key(csv_list) == key(yaml_list) == key(records)
    assert [e.where for e in yaml_list] == [
        f"{yaml_path} line 2 (entry 1)",
        f"{yaml_path} line 6 (entry 2)",
    ]


def test_an_empty_file_is_an_empty_list(tmp_path) -> None:
    for name, text in (("a.csv", ""), ("a.yaml", "# nothing yet\n"), ("a.txt", "\n# x\n")):
        assert len(allow_csv(tmp_path, text, name)) == 0


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.csv", "rule,image_id,reason\nstale,img-1,\n", r"line 2: missing reason"),
        ("a.csv", "rule,image_id,reason\nstale,img-1,  \n", r"line 2: missing reason"),
        ("a.csv", "rule,image_id,owner,reason\nstale,,,why\n", r"line 2: give image_id or owner"),
        ("a.csv", "rule,image_id,reason\n,img-1,why\n", r"line 2: missing rule"),
        ("a.csv", "rule,image_id,reason,expires\n\nstale,a,why,2026-13-01\n",
         r"line 3: bad date '2026-13-01' in expires \(no such day\)"),
        ("a.csv", "rule,image_id,reason,expires\nstale,a,why,01/12/2026\n",
         r"line 2: bad date '01/12/2026' in expires \(write YYYY-MM-DD\)"),
        ("a.csv", "rule,image_id,reason,expires\nstale,a,why,20261201\n", r"line 2: bad date"),
        ("a.csv", "# mine\nrule,image,reason\n", r"line 2: unknown column 'image'"),
        ("a.csv", "rule,image_id,reason,rule\n", r"line 1: column 'rule' is given twice"),
        ("a.csv", "image_id,reason\n", r"line 1: the header has no 'rule' column"),
        ("a.csv", "rule,reason\n", r"line 1: the header needs an 'image_id' or an 'owner'"),
        ("a.csv", "img-1\nimg-2\n", r"line 1: unknown column 'img-1'"),
        ("a.csv", "rule,image_id,reason\nstale,img-1  # CHG-7,why\n",
         r"line 2: image_id 'img-1  # CHG-7' holds whitespace or '#'"),
        ("a.csv", "rule,image_id,reason\nstale,img-1#CHG-7,why\n", r"line 2: image_id"),
        ("a.csv", "rule,image_id,reason\nstale,a,why,extra\n", r"line 2: 4 fields, the header"),
        ("a.csv", 'rule,image_id,reason\nstale,a,"why\nstill open\n', r"line 2: not a CSV row"),
        ("a.txt", "img-1\nimg 2\n", r"line 2: 'img 2' is not one id"),
        ("a.yaml", "- {rule: stale, image_id: a}\n", r"line 1 \(entry 1\): missing reason"),
        ("a.yaml", "- rule: stale\n  image_id: a\n  reason: r\n- rule: '*'\n  owner: p\n"
         "  reason: r\n  expires: tomorrow\n", r"line 4 \(entry 2\): bad date 'tomorrow'"),
        ("a.yaml", "- rule: *\n  owner: p\n  reason: r\n", r"line 1: not YAML .*\(quote '\*'\)"),
        ("a.yaml", "rule: stale\n", r"line 1: an allow-list is a YAML list of entries"),
        ("a.yaml", "- stale a\n", r"line 1 \(entry 1\): an entry is a mapping"),
        ("a.yaml", "- {rule: stale, image_id: 0123, reason: r}\n",
         r"line 1 \(entry 1\): image_id must be text, got 83 \(quote it\)"),
        ("a.yaml", "- {rule: stale, owner: p, reason: r, ticket: CHG-1}\n",
         r"line 1 \(entry 1\): unknown column 'ticket'"),
        ("a.yaml", "- {rule: stale, owner: p, reason: r, expires: 2026-02-30}\n",
         r"line 1: not a readable YAML value"),
        ("a.yaml", "- {rule: stale, owner: p, reason: r, expires: 2026-02-03 10:00:00}\n",
         r"line 1 \(entry 1\): expires must be a date"),
    ],
)  # fmt: skip
def test_every_malformed_entry_is_one_line_naming_its_file_and_line(
    tmp_path, name, text, message
) -> None:
    with pytest.raises(ConfigError) as caught:
        allow_csv(tmp_path, text, name)
    said = str(caught.value)
    assert said.startswith(str(tmp_path / name) + " line ") and "\n" not in said
    assert re.search(message, said), said


def test_a_plain_list_strips_comments_explicitly_and_keeps_them_as_reasons(tmp_path) -> None:
    allow = allow_csv(tmp_path, "# header\nimg-1   # CHG-7, till May\n\n  p-lab\n", "a.txt")
    assert [(e.image_id, e.reason, e.where) for e in allow] == [
        ("img-1", "CHG-7, till May", f"{tmp_path / 'a.txt'} line 2"),
        ("p-lab", f"listed in {tmp_path / 'a.txt'}", f"{tmp_path / 'a.txt'} line 4"),
    ]
    assert all(e.covers("stale", "img-1", None) or e.covers("stale", "x", "p-lab") for e in allow)


def test_unreadable_files_are_config_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read allow-list"):
        AllowList.read(tmp_path / "missing.csv")
    (tmp_path / "latin.csv").write_bytes(b"rule,owner,reason\n*,p,caf\xe9\n")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        AllowList.read(tmp_path / "latin.csv")


def test_entries_built_in_code_are_checked_too() -> None:
    with pytest.raises(ConfigError, match="code: missing reason"):
        AllowEntry("stale", " ", image_id="a")
    with pytest.raises(ConfigError, match="give image_id or owner"):
        AllowEntry("stale", "why")
    with pytest.raises(ConfigError, match=r"record 2: unknown column 'why'"):
        AllowList.from_records([{"rule": "*", "owner": "p", "reason": "r"}, {"why": "x"}])
    with pytest.raises(ConfigError, match="allow= takes"):
        imgframe.audit(frame({"id": "a", "status": "killed"}), allow=[1, 2])


# Text that looks like the formats: their punctuation, column names, dates, comments.
_PIECES = st.sampled_from(
    ["rule", "image_id", "owner", "reason", "expires", "*", "stale", "a", "p", "2026-01-31",
     "2026-02-30", ",", ";", "\t", "\n", "\r\n", "\r", '"', "'", "#", " ", "-", ":", "- ",
     "{", "}", "[", "]", "&a", "*a", "!!int", "0123", "yes", "\ufeff", "\x00", "\x85", "é"]
)  # fmt: skip
_TEXTS = st.one_of(st.text(max_size=200), st.lists(_PIECES, max_size=40).map("".join))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_TEXTS, suffix=st.sampled_from([".csv", ".yaml", ".txt"]))
def test_any_text_is_a_valid_list_or_one_config_error_naming_a_line(text, suffix) -> None:
    source = f"allow{suffix}"
    try:
        allow = AllowList.parse(text, source, suffix)
    except ConfigError as exc:
        said = str(exc)
        assert re.match(rf"{re.escape(source)} line [0-9]+", said), said
        assert "\n" not in said
        return
    for entry in allow:
        assert entry.reason and (entry.image_id or entry.owner) and entry.rule
        assert entry.where.startswith(f"{source} line ")


def test_the_readme_example_file_is_a_valid_allow_list(tmp_path) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("```\nrule,image_id,owner,reason,expires\n", 1)[1].split("```", 1)[0]
    allow = allow_csv(tmp_path, "rule,image_id,owner,reason,expires\n" + block)
    assert [e.rule for e in allow] == ["public_unprotected", "*", "stale"]
    assert allow.entries[0].expires == date(2027, 3, 31) and allow.entries[1].owner


def test_the_report_lists_allowed_findings_with_their_reason_in_an_appendix(fetched, full) -> None:
    from imgframe.report_html import render_report

    image = full["image_id"].iloc[0]
    allow = AllowList.from_records(
        [{"rule": "*", "image_id": image, "reason": "<b>CHG-5</b>", "expires": "2099-01-01"}]
    )
    findings = imgframe.audit(fetched, allow=allow, now=FLEET_NOW)
    page = render_report(fetched, findings=findings, now=FLEET_NOW)
    appendix = page.split('<section id="allowed">', 1)[1].split("</section>", 1)[0]
    count = (full["image_id"] == image).sum()
    assert "Appendix: allowed findings" in appendix
    assert f"{count:,} finding{'s' if count != 1 else ''} matched an allow-list entry" in appendix
    assert image in appendix and "&lt;b&gt;CHG-5&lt;/b&gt;" in appendix and "2099-01-01" in appendix
    plain = render_report(fetched, findings=imgframe.audit(fetched, now=FLEET_NOW), now=FLEET_NOW)
    assert 'id="allowed"' not in plain


def test_findings_of_two_audits_concatenate_and_keep_what_was_set_aside() -> None:
    # pandas compares the attrs of the frames pd.concat joins: a DataFrame there raised.
    df = imgframe.frame_from_headers(
        [{"x-image-meta-id": i, "x-image-meta-status": "killed"} for i in ("a", "b", "c")]
    )
    allow = AllowList.from_records([{"rule": "broken", "image_id": "a", "reason": "lab"}])
    one = imgframe.audit(df, allow=allow, baseline=df.iloc[:1])
    two = imgframe.audit(df.iloc[1:], allow=allow, baseline=df)
    both = pd.concat([one, two], ignore_index=True)
    assert len(both) == len(one) + len(two)
    assert imgframe.allowed_findings(one)["image_id"].tolist() == ["a"]
    assert imgframe.resolved_findings(two)["image_id"].tolist() == ["a"]
    assert pickle.loads(pickle.dumps(one)).attrs == one.attrs
    assert json.loads(json.dumps(one.attrs)) == one.attrs
