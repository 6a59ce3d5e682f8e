"""The df.img namespace: a stateless, thin layer over the plain functions."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import imgframe
from imgframe.accessor import REQUIRED_COLUMNS
from imgframe.schema import required_columns
from imgframe.testing import FLEET_NOW, make_fleet, render_headers


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    fleet = make_fleet(300, seed=8)
    frame = imgframe.frame_from_headers(dict(render_headers(i)) for i in fleet.images)
    frame["http_status"] = pd.array([200] * (len(frame) - 3) + [404] * 3, dtype="Int64")
    return frame


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [
        ("public_unprotected", {}),
        ("checksum_duplicates", {}),
        ("stale", {"older_than": "200D", "now": FLEET_NOW}),
        ("broken", {"stuck_after": "2h", "now": FLEET_NOW}),
        ("format_mismatch", {}),
        ("requirements_missing", {}),
        ("security_properties", {"checks": ["secure_boot"]}),
        ("owner_summary", {}),
        ("audit", {"rules": ["stale", "broken"], "allow": ["x"], "now": FLEET_NOW}),
    ],
)
def test_each_method_returns_what_the_plain_function_returns(df, method, kwargs) -> None:
    via_accessor = getattr(df.img, method)(**kwargs)
    pd.testing.assert_frame_equal(via_accessor, getattr(imgframe, method)(df, **kwargs))
    assert len(via_accessor) > 0


@pytest.mark.parametrize("writer", ["to_csv", "to_parquet", "to_json"])
def test_exports_write_what_the_plain_writers_write(df, tmp_path: Path, writer) -> None:
    getattr(df.img, writer)(tmp_path / "accessor.out")
    getattr(imgframe, writer)(df, tmp_path / "plain.out")
    assert (tmp_path / "accessor.out").read_bytes() == (tmp_path / "plain.out").read_bytes()


def test_a_frame_without_image_columns_has_no_img_namespace() -> None:
    plain = pd.DataFrame({"x": [1, 2]})
    assert not hasattr(plain, "img")
    with pytest.raises(AttributeError, match=r"imgframe fleet frame .* lacks the columns"):
        _ = plain.img


def test_the_accessor_needs_the_schema_required_columns_only(df) -> None:
    assert list(REQUIRED_COLUMNS) == required_columns()
    old = df.drop(columns=["virtual_size", "error", "request_id", "tags", "visibility"])
    assert len(old.img.broken(now=FLEET_NOW)) == len(imgframe.broken(old, now=FLEET_NOW)) > 0
    with pytest.raises(AttributeError, match=r"lacks the columns \['owner'\]"):
        _ = df.drop(columns=["owner"]).img


def test_the_accessor_keeps_no_state_between_uses(df) -> None:
    assert df.img is not df.img  # pandas builds a new accessor on every access
    assert list(vars(df.img)) == ["_df"]  # only the frame it was built for
    before = df.img.broken(now=FLEET_NOW)
    target = next(i for i in df.index[df["http_status"] == 200] if i not in before.index)
    changed = df.copy()
    changed["status"] = changed["status"].astype("string")
    changed.loc[target, "status"] = "killed"
    assert target in changed.img.broken(now=FLEET_NOW).index
    pd.testing.assert_frame_equal(df.img.broken(now=FLEET_NOW), before)
