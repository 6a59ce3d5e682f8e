"""The preallocated frame builder gives the frame the batches would, whatever their order.

A fetch with given ids knows each row's position before its answer (one row per distinct
requested id, in input order), so :class:`~imgframe.frame.Collector` writes every batch
straight into the final columns (:class:`~imgframe.frame.FrameBuilder`). The reference is
the path it replaced: every row through one :func:`~imgframe.frame.build_frame`, in
position order. Batches arrive in any order and size, with failures, NA, unparseable
values, categories, properties (collided keys too) and rows restored from a checkpoint.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pandas.testing import assert_frame_equal

import imgframe
import imgframe.frame as frame_module
from imgframe.frame import Collector, Columns, FrameBuilder, build_frame, empty_frame
from imgframe.parse import ParseProblems, pack_headers
from imgframe.testing import ADMIN_TOKEN, GlanceEmulator, make_fleet

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)

# Few distinct values per header, so that batches share categories and miss some.
HEADER_VALUES: dict[bytes, st.SearchStrategy[str]] = {
    b"X-Image-Meta-Name": st.sampled_from(["cirros", "ubuntu", "", "niÃ±o", "镜像"]),
    b"X-Image-Meta-Status": st.sampled_from(["active", "queued", "killed", "deleted", ""]),
    b"X-Image-Meta-Disk_format": st.sampled_from(["qcow2", "raw", "iso", "None"]),
    b"X-Image-Meta-Owner": st.sampled_from(["p1", "p2", "p3"]),
    b"X-Image-Meta-Size": st.sampled_from(["0", "13167616", "-1", "None", "1.5", "9" * 19]),
    b"X-Image-Meta-Min_ram": st.sampled_from(["0", "512", "", "lots"]),
    b"X-Image-Meta-Is_public": st.sampled_from(["True", "false", "yes", "maybe", "None"]),
    b"X-Image-Meta-Deleted": st.sampled_from(["False", "True", "2"]),
    b"X-Image-Meta-Created_at": st.sampled_from(
        ["2016-05-22T06:04:20.425843", "2016-02-30T00:00:00", "1600-01-01", "", "2024-01-01Z"]
    ),
    b"X-Image-Meta-Checksum": st.sampled_from(["d41d8cd98f00b204e9800998ecf8427e", ""]),
    b"X-Image-Meta-Property-Os_distro": st.sampled_from(["cirros", "ubuntu", "Ü"]),
    b"X-Image-Meta-Property-Env": st.sampled_from(["prod", "dev"]),
    b"x-image-meta-property-env": st.sampled_from(["prod", "dev"]),  # a collision, maybe
    b"X-Openstack-Request-Id": st.sampled_from(["req-1", "req-2"]),
}


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes | None, int | None, str | None]:
    """One result: packed headers (None: no answer), its status and error."""
    kind = draw(st.sampled_from(["ok", "ok", "ok", "not found", "failed", "invalid"]))
    if kind == "failed":
        return None, None, draw(st.sampled_from(["timeout", "connection refused"]))
    if kind == "invalid":
        return None, None, "invalid image id"
    names = draw(st.lists(st.sampled_from(sorted(HEADER_VALUES)), unique=True, max_size=8))
    pairs = [(name, draw(HEADER_VALUES[name]).encode()) for name in names]
    if kind == "not found":
        return pack_headers(pairs) if pairs else None, 404, "HTTP 404 Not Found"
    return pack_headers(pairs) if pairs else b"", 200, None


@st.composite
def runs(draw: st.DrawFn) -> dict[str, Any]:
    """Rows by position, the order they complete in, the batch size, restored rows."""
    n = draw(st.integers(0, 40))
    rows = [draw(responses()) for _ in range(n)]
    completion = draw(st.permutations(range(n)))
    restored = draw(st.lists(st.sampled_from(range(n)), unique=True)) if n else []
    return {
        "ids": [f"id-{p:02d}" for p in range(n)],
        "rows": rows,
        "completion": [p for p in completion if p not in set(restored)],
        "restored": restored,
        "batch_size": draw(st.integers(1, 12)),
        "extra_stored": draw(st.integers(0, 5)),  # stored rows not asked again
        "text_block": draw(st.integers(1, 16)),  # text columns put in order in blocks
    }


def reference(ids: list[str], rows: list[Any]) -> tuple[pd.DataFrame, ParseProblems]:
    """Every row through one build_frame, in position order."""
    problems = ParseProblems()
    frame = build_frame(
        Columns.from_packed([packed for packed, _, _ in rows]),
        index=ids,
        http_status=[status for _, status, _ in rows],
        error=[error for _, _, error in rows],
        problems=problems,
    )
    return frame, problems


@contextlib.contextmanager
def text_block(rows: int) -> Iterator[None]:
    """Text columns put in order ``rows`` at a time (many blocks in a small run)."""
    saved = frame_module.TEXT_BLOCK
    frame_module.TEXT_BLOCK = rows
    try:
        yield
    finally:
        frame_module.TEXT_BLOCK = saved


def collected(run: dict[str, Any], total: int | None) -> tuple[pd.DataFrame, Collector]:
    """The run through a Collector (``total`` None: the concatenating path)."""
    ids, rows = run["ids"], run["rows"]
    collector = Collector(None, batch_size=run["batch_size"], total=total)
    restored = run["restored"]
    if restored:
        # The checkpoint's rows: the restored ones among others of another run, whose
        # categories must not leak into the frame.
        extra = [(b"X-Image-Meta-Status\x00saving\x00X-Image-Meta-Owner\x00p9", 200, None)]
        extra *= run["extra_stored"]
        stored_rows = [rows[p] for p in restored] + extra
        stored_ids = [ids[p] for p in restored] + [f"other-{i}" for i in range(len(extra))]
        stored, _ = reference(stored_ids, stored_rows)
        collector.use_stored(stored)
        collector.restore(np.arange(len(restored)), np.array(restored))
    for position in run["completion"]:
        packed, status, error = rows[position]
        collector.add_packed(position, ids[position], status, error, packed)
    with text_block(run["text_block"]):
        return collector.frame(), collector


@SETTINGS
@given(runs())
def test_the_builder_gives_the_reference_frame_in_any_batch_order(run: dict[str, Any]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a collector records problems, never warns itself
        expected, problems = reference(run["ids"], run["rows"])
        got, collector = collected(run, total=len(run["ids"]))
        chunked, old = collected(run, total=None)
    assert_frame_equal(got, expected)
    assert_frame_equal(chunked, expected)
    restored = set(run["restored"])
    fetched = [p for p in range(len(run["ids"])) if p not in restored]
    _, fetched_problems = reference(
        [run["ids"][p] for p in fetched], [run["rows"][p] for p in fetched]
    )
    # Problems are those of the fetched rows (restored ones were reported when fetched).
    assert collector.problems.counts == fetched_problems.counts == old.problems.counts
    assert collector.problems.collided == fetched_problems.collided
    if not restored:
        assert collector.problems.counts == problems.counts


@SETTINGS
@given(runs(), st.data())
def test_putting_frames_directly_equals_concatenating_them(
    run: dict[str, Any], data: st.DataObject
) -> None:
    ids, rows = run["ids"], run["rows"]
    expected, _ = reference(ids, rows)
    order = data.draw(st.permutations(range(len(ids))))
    builder = FrameBuilder(len(ids))
    start = 0
    while start < len(order):
        size = data.draw(st.integers(1, 15))
        positions = list(order[start : start + size])
        batch, _ = reference([ids[p] for p in positions], [rows[p] for p in positions])
        builder.put(batch, np.array(positions))
        start += size
    assert builder.missing == 0
    with text_block(data.draw(st.integers(1, 50))):
        assert_frame_equal(builder.frame(), expected)


def test_the_built_frame_holds_the_columns_not_copies_of_them() -> None:
    frame = imgframe.frame_from_headers(
        [{"X-Image-Meta-Id": str(i), "X-Image-Meta-Size": str(i)} for i in range(5)]
    )
    builder = FrameBuilder(5)
    values, mask = builder._columns["size"]
    builder.put(frame.iloc[::-1], np.arange(5)[::-1])
    built = builder.frame()
    assert np.shares_memory(built["size"].array._data, values)
    assert np.shares_memory(built["size"].array._mask, mask)


def test_an_empty_run_gives_the_empty_frame() -> None:
    assert_frame_equal(FrameBuilder(0).frame(), empty_frame())
    assert_frame_equal(Collector(None, batch_size=3, total=0).frame(), empty_frame())


# --------------------------------------------------------------- the positions contract
def test_every_position_is_filled_exactly_once() -> None:
    frame = imgframe.frame_from_headers([{"X-Image-Meta-Id": "a"}, {"X-Image-Meta-Id": "b"}])
    builder = FrameBuilder(3)
    builder.put(frame, np.array([2, 0]))
    with pytest.raises(ValueError, match="filled twice"):
        builder.put(frame.iloc[:1], np.array([0]))
    with pytest.raises(ValueError, match="filled twice"):
        builder.put(frame, np.array([1, 1]))
    with pytest.raises(ValueError, match="outside"):
        builder.put(frame.iloc[:1], np.array([3]))
    with pytest.raises(ValueError, match="rows for"):
        builder.put(frame, np.array([1]))
    assert builder.missing == 1
    with pytest.raises(RuntimeError, match="1 of 3 rows were never filled"):
        builder.frame()
    builder.put(frame.iloc[1:], np.array([1]))
    assert builder.frame().index.tolist() == ["b", "b", "a"]


def test_a_fetch_gives_every_requested_id_exactly_one_row_in_input_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(imgframe.api, "BATCH_SIZE", 7)  # many batches, completing out of order
    fleet = make_fleet(40, seed=3)
    known = [image.id for image in fleet.images]
    asked = [*known[::-1], " " + known[0], "no-such-image", "../etc", known[5], "", "x" * 300]
    distinct = list(dict.fromkeys(i.strip() for i in asked))
    with GlanceEmulator(fleet) as emulator:
        df = imgframe.fetch_images(
            asked, endpoint=emulator.url, token=ADMIN_TOKEN, concurrency=8, progress=False
        )
    assert df.index.tolist() == distinct
    assert df.index.is_unique
    assert df.loc[known, "http_status"].tolist() == [200] * len(known)
    assert df.loc["no-such-image", "http_status"] == 404
    assert df.loc["../etc", "error"] == "invalid image id"
    expected = {image.id: image.name for image in fleet.images}
    assert df.loc[known, "name"].tolist() == [
        pd.NA if expected[i] is None else expected[i] for i in known
    ]


def test_a_batch_with_another_timestamp_unit_is_put_as_its_instants() -> None:
    frame = imgframe.frame_from_headers(
        [
            {"X-Image-Meta-Id": "a", "X-Image-Meta-Created_at": "2016-05-22T06:04:20.425843"},
            {"X-Image-Meta-Id": "b", "X-Image-Meta-Created_at": "1999-12-31"},
        ]
    )
    micro = frame.assign(created_at=frame["created_at"].astype("datetime64[us, UTC]"))
    builder = FrameBuilder(2)
    builder.put(micro, np.array([0, 1]))
    assert_frame_equal(builder.frame(), frame)
