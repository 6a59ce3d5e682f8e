"""The picker: its pure filter against a fleet fetched from the real emulator and tiny
frames, and its ipywidgets wiring driven programmatically (no browser)."""

from __future__ import annotations

import html
import re
import subprocess
import sys
from datetime import date, timedelta

import pandas as pd
import pytest

import imgframe
from imgframe.errors import ConfigError
from imgframe.testing import ADMIN_TOKEN, FLEET_NOW, Fleet, GlanceEmulator
from imgframe.widgets import (
    Picker,
    PickerFilter,
    filter_images,
    parse_size,
    picker,
    summarize_selection,
)

MISSING_ID = "00000000-0000-4000-8000-000000000001"  # the emulator answers 404


FLEET = {"n": 300, "seed": 7}  # the module's `fleet` (tests/conftest.py)


@pytest.fixture(scope="module")
def fetched(fleet: Fleet, emulator: GlanceEmulator) -> pd.DataFrame:
    ids = [image.id for image in fleet.images] + [MISSING_ID]
    return imgframe.fetch_images(ids, endpoint=emulator.url, token=ADMIN_TOKEN)


@pytest.fixture(scope="module")
def findings(fetched: pd.DataFrame) -> pd.DataFrame:
    return imgframe.audit(fetched, now=FLEET_NOW)


@pytest.fixture
def df(fetched: pd.DataFrame) -> pd.DataFrame:
    return fetched.copy(deep=True)


@pytest.fixture
def fleet_picker(df: pd.DataFrame, findings: pd.DataFrame) -> Picker:
    return picker(df, findings=findings, page_size=10)


def frame(*rows: dict[str, str]) -> pd.DataFrame:
    """A typed frame from short header dicts: {"id": "a", "status": "active", ...}."""
    return imgframe.frame_from_headers(
        [{f"x-image-meta-{key}": value for key, value in row.items()} for row in rows]
    )


def kept(df: pd.DataFrame, findings: pd.DataFrame | None = None, **criteria) -> list[str]:
    return filter_images(df, PickerFilter(**criteria), findings).index.tolist()


def ids_where(fleet: Fleet, predicate) -> list[str]:
    """The fleet's ids (in fetch order) whose FleetImage satisfies ``predicate``."""
    return [image.id for image in fleet.images if predicate(image)]


def table_ids(p: Picker) -> list[str]:
    """The image ids of the rows in the page table's <tbody>, in order."""
    body = re.search(r"<tbody>(.*)</tbody>", p.table.value, re.S)
    assert body is not None
    return [html.unescape(i) for i in re.findall(r"<tr>\s*<th>(.*?)</th>", body.group(1))]


def most_common_owner(fleet: Fleet) -> str:
    return pd.Series([i.owner for i in fleet.images]).value_counts().index[0]


# --- the pure filter, against the emulator's fleet -----------------------------------


def test_no_criteria_keeps_every_row_failed_fetches_included(df) -> None:
    assert filter_images(df).index.tolist() == df.index.tolist()
    assert filter_images(df, PickerFilter()).index.tolist() == df.index.tolist()


def test_owner_filter_keeps_exactly_the_chosen_owners_images(df, fleet) -> None:
    owners = {most_common_owner(fleet), fleet.projects[-1]}
    assert kept(df, owners=sorted(owners)) == ids_where(fleet, lambda i: i.owner in owners)


def test_status_filter_keeps_exactly_the_chosen_statuses(df, fleet) -> None:
    chosen = {"killed", "queued"}
    assert kept(df, statuses=sorted(chosen)) == ids_where(fleet, lambda i: i.status in chosen)


def test_disk_format_filter_keeps_exactly_the_chosen_formats(df, fleet) -> None:
    expected = ids_where(fleet, lambda i: i.disk_format in ("raw", "iso"))
    assert kept(df, disk_formats=["raw", "iso"]) == expected


def test_container_format_filter_keeps_exactly_the_chosen_formats(df, fleet) -> None:
    assert kept(df, container_formats="ovf") == ids_where(
        fleet, lambda i: i.container_format == "ovf"
    )


def test_public_yes_and_no_split_the_read_images(df, fleet) -> None:
    assert kept(df, is_public=True) == ids_where(fleet, lambda i: i.is_public)
    assert kept(df, is_public=False) == ids_where(fleet, lambda i: not i.is_public)


def test_protected_tri_state_matches_the_fleet(df, fleet) -> None:
    assert kept(df, protected=True) == ids_where(fleet, lambda i: i.protected)
    assert kept(df, protected=False) == ids_where(fleet, lambda i: not i.protected)


def test_deleted_tri_state_matches_the_fleet(df, fleet) -> None:
    assert kept(df, deleted=True) == ids_where(fleet, lambda i: i.deleted)
    assert kept(df, deleted=False) == ids_where(fleet, lambda i: not i.deleted)


def test_name_search_is_a_case_insensitive_substring(df, fleet) -> None:
    expected = ids_where(fleet, lambda i: i.name is not None and "ubuntu" in i.name.lower())
    assert expected
    assert kept(df, name_contains="UBUNTU") == expected


def test_size_range_matches_the_fleet(df, fleet) -> None:
    low, high = 100 * 2**20, 4 * 2**30
    expected = ids_where(fleet, lambda i: i.size is not None and low <= i.size <= high)
    assert expected
    assert kept(df, size_min=low, size_max=high) == expected


def test_created_range_matches_the_fleet(df, fleet) -> None:
    start, end = date(2020, 1, 1), date(2022, 12, 31)
    expected = ids_where(fleet, lambda i: start <= i.created_at.date() <= end)
    assert expected
    assert kept(df, created_from=start, created_to=end) == expected


def test_rules_filter_keeps_images_with_findings_of_those_rules(df, fleet, findings) -> None:
    expected = ids_where(fleet, lambda i: i.id in fleet.planted.public_unprotected)
    assert kept(df, findings, rules=["public_unprotected"]) == expected


def test_rules_filter_with_several_rules_keeps_their_union(df, fleet, findings) -> None:
    union = fleet.planted.public_unprotected | fleet.planted.broken
    expected = ids_where(fleet, lambda i: i.id in union)
    assert kept(df, findings, rules=["public_unprotected", "broken"]) == expected


def test_rules_filter_without_findings_runs_the_audit(df, fleet) -> None:
    expected = ids_where(fleet, lambda i: i.id in fleet.planted.public_unprotected)
    assert kept(df, rules="public_unprotected") == expected


def test_fetch_failed_rule_picks_exactly_the_rows_that_could_not_be_read(df, findings) -> None:
    assert kept(df, findings, rules=["fetch_failed"]) == [MISSING_ID]


def test_any_metadata_filter_drops_rows_that_could_not_be_read(df, fleet) -> None:
    everything = PickerFilter(
        size_min=0,
        created_from=date(1970, 1, 1),
        name_contains="",
    )
    assert MISSING_ID in kept(df)
    for criteria in (
        everything,
        PickerFilter(is_public=False),
        PickerFilter(protected=False),
        PickerFilter(deleted=False),
        PickerFilter(owners=list(fleet.projects)),
    ):
        assert MISSING_ID not in filter_images(df, criteria).index, criteria


def test_filters_combine_with_and(df, fleet) -> None:
    owner = most_common_owner(fleet)
    expected = ids_where(
        fleet,
        lambda i: i.owner == owner and i.status == "active" and not i.is_public and i.size,
    )
    assert expected
    got = kept(df, owners=[owner], statuses=["active"], is_public=False, size_min=1)
    assert got == expected


def test_filter_images_does_not_mutate_its_input(df, findings) -> None:
    before, findings_before = df.copy(deep=True), findings.copy(deep=True)
    filter_images(
        df,
        PickerFilter(statuses=["active"], is_public=True, name_contains="a", rules=["stale"]),
        findings,
    )
    pd.testing.assert_frame_equal(df, before)
    pd.testing.assert_frame_equal(findings, findings_before)


def test_filtered_frame_keeps_the_columns_and_dtypes(df) -> None:
    out = filter_images(df, PickerFilter(statuses=["active"]))
    assert out.dtypes.to_dict() == df.dtypes.to_dict()
    assert out.index.name == "id"


# --- the pure filter, on tiny frames -----------------------------------------------------


def test_tri_state_yes_and_no_leave_out_unknown_values() -> None:
    df = frame({"id": "t", "is_public": "True"}, {"id": "f", "is_public": "False"}, {"id": "u"})
    assert kept(df, is_public=True) == ["t"]
    assert kept(df, is_public=False) == ["f"]
    assert kept(df, is_public=None) == ["t", "f", "u"]


def test_name_search_is_not_a_regex() -> None:
    df = frame({"id": "a", "name": "centos.7"}, {"id": "b", "name": "centosX7"})
    assert kept(df, name_contains="s.7") == ["a"]


def test_name_search_ignores_surrounding_spaces_and_skips_unnamed_images() -> None:
    df = frame({"id": "a", "name": "Win2022"}, {"id": "b"})
    assert kept(df, name_contains="  win ") == ["a"]


def test_size_bounds_are_inclusive_and_unknown_sizes_are_left_out() -> None:
    df = frame({"id": "a", "size": "10"}, {"id": "b", "size": "20"}, {"id": "c"})
    assert kept(df, size_min=10, size_max=20) == ["a", "b"]
    assert kept(df, size_max=19) == ["a"]


def test_a_date_upper_bound_includes_that_whole_utc_day() -> None:
    df = frame(
        {"id": "a", "created_at": "2024-05-01T00:00:00"},
        {"id": "b", "created_at": "2024-05-01T23:59:59.999"},
        {"id": "c", "created_at": "2024-05-02T00:00:00"},
        {"id": "d"},
    )
    assert kept(df, created_from=date(2024, 5, 1), created_to=date(2024, 5, 1)) == ["a", "b"]
    assert kept(df, created_from="2024-05-02") == ["c"]


def test_a_time_bound_is_an_inclusive_instant_naive_meaning_utc() -> None:
    df = frame(
        {"id": "a", "created_at": "2024-05-01T10:00:00"},
        {"id": "b", "created_at": "2024-05-01T12:00:00"},
    )
    assert kept(df, created_to=pd.Timestamp("2024-05-01 10:00")) == ["a"]
    assert kept(df, created_to="2024-05-01T12:00:00+02:00") == ["a"]


def test_picker_filter_takes_lists_and_bare_strings_and_is_hashable() -> None:
    criteria = PickerFilter(owners=["p1", "p2"], statuses="active", rules=None)
    assert criteria.owners == ("p1", "p2")
    assert criteria.statuses == ("active",)
    assert criteria.rules == ()
    assert hash(criteria) == hash(PickerFilter(owners=("p1", "p2"), statuses=("active",)))


def test_picker_filter_repr_shows_only_what_is_set() -> None:
    assert repr(PickerFilter(deleted=False)) == "PickerFilter(deleted=False)"


def test_picker_filter_rejects_a_tri_state_that_is_not_a_boolean() -> None:
    with pytest.raises(TypeError, match="is_public must be True, False or None"):
        PickerFilter(is_public="yes")  # type: ignore[arg-type]


def test_summary_says_count_of_total_and_known_bytes() -> None:
    df = frame({"id": "a", "size": str(2**40)}, {"id": "b", "size": str(2**39)}, {"id": "c"})
    assert summarize_selection(df.iloc[:2], total=50_000) == "2 of 50,000 images, 1.5 TiB"
    assert summarize_selection(df, total=df) == "3 of 3 images, 1.5 TiB (1 without size)"
    assert summarize_selection(df.iloc[:0], total=1) == "0 of 1 image, 0 B"


def test_parse_size_reads_bytes_and_binary_units() -> None:
    assert parse_size("1024") == 1024
    assert parse_size("2 KiB") == parse_size("2k") == parse_size("2KB") == 2048
    assert parse_size("0.5G") == 2**29
    assert parse_size("") is None
    with pytest.raises(ConfigError, match="cannot read"):  # a ConfigError is a ValueError
        parse_size("-1")


# --- the widget ----------------------------------------------------------------------


def test_picker_starts_with_the_whole_fleet_counted(fleet_picker, df) -> None:
    total = int(df["size"].sum())
    assert fleet_picker.count.value == (
        f"{len(df)} of {len(df)} images, {imgframe.report_html.human_bytes(total)} "
        f"({df['size'].isna().sum()} without size)"
    )
    assert len(fleet_picker.filtered) == len(df)


def test_choosing_an_owner_updates_count_table_and_filtered(fleet_picker, fleet) -> None:
    owner = most_common_owner(fleet)
    fleet_picker.owners.value = (owner,)
    expected = ids_where(fleet, lambda i: i.owner == owner)
    assert fleet_picker.filtered.index.tolist() == expected
    assert fleet_picker.count.value.startswith(f"{len(expected)} of 301 images")
    assert set(table_ids(fleet_picker)) <= set(expected)
    assert set(fleet_picker.page_frame["owner"]) == {owner}


def test_owner_options_are_labelled_with_counts_and_valued_by_id(fleet_picker, fleet) -> None:
    owner = most_common_owner(fleet)
    label, value = fleet_picker.owners.options[0]
    assert value == owner
    assert label == f"{owner} ({sum(i.owner == owner for i in fleet.images)})"


def test_tri_state_toggles_offer_any_yes_no(fleet_picker) -> None:
    for toggle in (fleet_picker.is_public, fleet_picker.protected, fleet_picker.deleted):
        assert list(toggle.options) == ["any", "yes", "no"]
        assert toggle.value == "any"


def test_public_toggle_filters_the_picker(fleet_picker, fleet) -> None:
    fleet_picker.is_public.value = "yes"
    assert fleet_picker.filtered.index.tolist() == ids_where(fleet, lambda i: i.is_public)
    assert fleet_picker.criteria == PickerFilter(is_public=True)
    fleet_picker.is_public.value = "any"
    assert len(fleet_picker.filtered) == 301


def test_table_shows_one_page_of_rows(fleet_picker) -> None:
    assert len(table_ids(fleet_picker)) == 10
    assert fleet_picker.page_label.value == "page 1 of 31"
    assert [image_id for _, image_id in fleet_picker.rows.options] == table_ids(fleet_picker)


def test_page_is_sorted_newest_first_by_default(fleet_picker, df) -> None:
    newest = df["created_at"].sort_values(ascending=False).index[:10].tolist()
    assert table_ids(fleet_picker) == newest


def test_sort_dropdown_reorders_the_page(fleet_picker, df) -> None:
    fleet_picker.sort.value = "largest first"
    assert table_ids(fleet_picker) == df["size"].sort_values(ascending=False).index[:10].tolist()


def test_next_and_previous_buttons_turn_pages(fleet_picker, df) -> None:
    newest = df["created_at"].sort_values(ascending=False, na_position="last").index.tolist()
    assert fleet_picker.previous_page.disabled
    fleet_picker.next_page.click()
    assert table_ids(fleet_picker) == newest[10:20]
    assert fleet_picker.page_label.value == "page 2 of 31"
    fleet_picker.previous_page.click()
    assert table_ids(fleet_picker) == newest[:10]


def test_last_page_holds_the_rest_and_disables_next(fleet_picker, df) -> None:
    fleet_picker.go_to_page(99)
    assert fleet_picker.page == 30
    assert len(table_ids(fleet_picker)) == 1
    assert fleet_picker.next_page.disabled


def test_a_filter_change_goes_back_to_the_first_page(fleet_picker) -> None:
    fleet_picker.go_to_page(3)
    fleet_picker.statuses.value = ("active",)
    assert fleet_picker.page == 0


def test_table_escapes_names_chosen_by_tenants() -> None:
    df = frame({"id": "a", "name": "<script>alert(1)</script>"})
    p = picker(df)
    assert "<script>alert" not in p.table.value
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in p.table.value


def test_an_empty_selection_renders_an_empty_table(fleet_picker) -> None:
    fleet_picker.name_contains.value = "no image is called this"
    assert table_ids(fleet_picker) == []
    assert fleet_picker.count.value == "0 of 301 images, 0 B"
    assert fleet_picker.page_label.value == "page 1 of 1"


def test_selected_rows_survive_page_changes(fleet_picker) -> None:
    first = table_ids(fleet_picker)[:2]
    fleet_picker.rows.value = tuple(first)
    fleet_picker.next_page.click()
    second = table_ids(fleet_picker)[:1]
    fleet_picker.rows.value = tuple(second)
    fleet_picker.previous_page.click()
    assert fleet_picker.rows.value == tuple(first)
    assert set(fleet_picker.selected.index) == {*first, *second}
    assert fleet_picker.selection_count.value == "3 selected"


def test_selected_leaves_out_rows_hidden_by_filters_until_they_return(fleet_picker) -> None:
    page = fleet_picker.page_frame
    public = page.index[page["is_public"].fillna(False)].tolist()[:1]
    private = page.index[~page["is_public"].fillna(True)].tolist()[:1]
    fleet_picker.rows.value = tuple(public + private)
    fleet_picker.is_public.value = "no"
    assert fleet_picker.selected.index.tolist() == private
    assert fleet_picker.selection_count.value == "1 selected (1 more hidden by the filters)"
    fleet_picker.is_public.value = "any"
    assert set(fleet_picker.selected.index) == set(public + private)


def test_selected_is_a_frame_of_the_selected_images(fleet_picker, df) -> None:
    chosen = table_ids(fleet_picker)[3]
    fleet_picker.rows.value = (chosen,)
    pd.testing.assert_frame_equal(fleet_picker.selected, df.loc[[chosen]])


def test_select_page_and_clear_selection_buttons(fleet_picker) -> None:
    fleet_picker.select_page.click()
    assert fleet_picker.selected.index.tolist() != []
    assert set(fleet_picker.selected.index) == set(table_ids(fleet_picker))
    fleet_picker.clear_selection.click()
    assert fleet_picker.selected.empty
    assert fleet_picker.rows.value == ()


def test_export_writes_the_filtered_frame_readable_by_read_csv(fleet_picker, tmp_path) -> None:
    fleet_picker.statuses.value = ("active",)
    fleet_picker.export_path.value = str(tmp_path / "active.csv")
    fleet_picker.export_button.click()
    back = imgframe.read_csv(tmp_path / "active.csv")
    assert back.index.tolist() == fleet_picker.filtered.index.tolist()
    assert fleet_picker.export_result.value == (
        f"wrote {len(back)} images to {(tmp_path / 'active.csv').resolve()}"
    )


def test_export_defaults_to_a_csv_in_the_current_directory(
    fleet_picker, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert fleet_picker.export_path.value == "picker-export.csv"
    fleet_picker.export_button.click()
    assert len(imgframe.read_csv(tmp_path / "picker-export.csv")) == 301


def test_export_says_why_a_path_cannot_be_written(fleet_picker, tmp_path) -> None:
    fleet_picker.export_path.value = str(tmp_path / "no-such-dir" / "x.csv")
    fleet_picker.export_button.click()
    assert fleet_picker.export_result.value.startswith("could not write ")


def test_size_boxes_take_units_and_an_unreadable_size_is_ignored_and_said(fleet_picker) -> None:
    fleet_picker.size_min.value = "1 GiB"
    assert fleet_picker.criteria.size_min == 2**30
    assert (fleet_picker.filtered["size"] >= 2**30).all()
    fleet_picker.size_max.value = "huge"
    assert fleet_picker.criteria.size_max is None
    assert "cannot read 'huge' as a size" in fleet_picker.message.value


def test_date_pickers_bound_the_creation_date(fleet_picker, fleet) -> None:
    start = date(2024, 1, 1)
    fleet_picker.created_from.value = start
    assert fleet_picker.filtered.index.tolist() == ids_where(
        fleet, lambda i: i.created_at.date() >= start
    )


def test_rule_choices_come_from_the_findings(fleet_picker, findings) -> None:
    assert [value for _, value in fleet_picker.rules.options] == list(
        findings["rule"].cat.categories
    )
    fleet_picker.rules.value = ("checksum_duplicates",)
    dupes = set(findings.loc[findings["rule"] == "checksum_duplicates", "image_id"])
    assert set(fleet_picker.filtered.index) == dupes


def test_findings_default_to_the_audit_of_the_frame(df, fleet) -> None:
    p = picker(df, page_size=5)
    p.rules.value = ("public_unprotected",)
    assert set(p.filtered.index) == fleet.planted.public_unprotected


def test_set_filter_drives_the_widgets(fleet_picker, fleet) -> None:
    criteria = PickerFilter(
        owners=[most_common_owner(fleet)],
        statuses=["active"],
        protected=False,
        name_contains="ubuntu",
        created_to=date(2030, 1, 1),
        size_min=1,
    )
    fleet_picker.set_filter(criteria)
    assert fleet_picker.criteria == criteria
    assert fleet_picker.filtered.index.tolist() == kept(fleet_picker._df, **vars(criteria))


def test_widgets_carry_the_documented_css_classes(fleet_picker) -> None:
    p = fleet_picker
    expected = {
        p.widget: "imgframe-picker",
        p.count: "imgframe-count",
        p.owners: "imgframe-owner",
        p.is_public: "imgframe-public",
        p.protected: "imgframe-protected",
        p.deleted: "imgframe-deleted",
        p.statuses: "imgframe-status",
        p.name_contains: "imgframe-name",
        p.table: "imgframe-table",
        p.export_button: "imgframe-export",
        p.export_path: "imgframe-export-path",
    }
    for widget, css in expected.items():
        assert css in widget._dom_classes, css
        assert css in imgframe.widgets.__doc__


def test_picker_displays_as_its_root_widget(fleet_picker) -> None:
    bundle = fleet_picker._repr_mimebundle_()
    view = bundle["application/vnd.jupyter.widget-view+json"]
    assert view["model_id"] == fleet_picker.widget.model_id


def test_df_img_picker_is_the_picker_of_the_frame(df, findings) -> None:
    p = df.img.picker(findings=findings, page_size=7)
    assert isinstance(p, Picker)
    assert len(p.filtered) == len(df) and len(table_ids(p)) == 7


def test_picker_without_ipywidgets_says_which_extra_to_install(df, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'imgframe[notebook]'")):
        imgframe.picker(df)


def test_imgframe_imports_without_ipywidgets() -> None:
    code = (
        "import sys; sys.modules['ipywidgets'] = None\n"
        "import imgframe, imgframe.widgets\n"
        "print(callable(imgframe.picker))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "True"


def test_picker_rejects_a_page_size_below_one(df, findings) -> None:
    with pytest.raises(ConfigError, match="page_size must be >= 1"):
        picker(df, findings=findings, page_size=0)


def test_a_day_after_the_last_creation_keeps_everything_read(df) -> None:
    last = df["created_at"].max().date()
    out = filter_images(df, PickerFilter(created_to=last + timedelta(days=1)))
    assert len(out) == df["created_at"].notna().sum()
