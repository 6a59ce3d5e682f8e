"""python-glanceclient's own v1 client agrees with imgframe on the emulator's answers.

glanceclient was written against the real Glance v1 server; if it reads our emulator
the same way imgframe does, the emulator speaks real Glance v1 and imgframe reads it right.

One difference is expected and is the reason imgframe repairs text: glanceclient goes
through ``requests``/``http.client``, which decode header bytes as Latin-1, so a UTF-8
name like ``テスト`` reaches glanceclient as mojibake (``ã\x83\x86...``). We compare
against glanceclient's values after undoing that one decoding step.
"""

from __future__ import annotations

import warnings

import pandas as pd
import pytest

from imgframe import fetch_images
from imgframe.parse import repair_text
from imgframe.testing import ADMIN_TOKEN, GlanceEmulator, make_fleet

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # glanceclient's dependencies warn on import
    glance_v1 = pytest.importorskip("glanceclient.v1.client")

INT_FIELDS = ("size", "virtual_size", "min_ram", "min_disk")
TEXT_FIELDS = ("name", "status", "checksum", "container_format", "disk_format", "owner")
BOOL_FIELDS = ("is_public", "protected", "deleted")


def test_glanceclient_v1_reads_the_same_values_as_imgframe() -> None:
    fleet = make_fleet(300, seed=21)
    # A sample that covers queued images (no size/checksum), deleted ones, non-ASCII names.
    sample = [i.id for i in fleet.images if not (i.name or "").isascii()][:5]
    sample += [i.id for i in fleet.images if i.status in ("queued", "deleted", "killed")][:10]
    sample += [i.id for i in fleet.images if i.properties][:10]
    sample = list(dict.fromkeys(sample))
    assert len(sample) >= 15
    with GlanceEmulator(fleet) as emu:
        df = fetch_images(sample, endpoint=emu.url, token=ADMIN_TOKEN)
        glance = glance_v1.Client(emu.url, token=ADMIN_TOKEN)
        images = {image_id: glance.images.get(image_id) for image_id in sample}
    for image_id, image in images.items():
        row = df.loc[image_id]
        meta = image.to_dict()
        assert meta["id"] == image_id
        for column in TEXT_FIELDS:
            if column in meta:
                assert row[column] == repair_text(meta[column]), (image_id, column)
            else:
                assert pd.isna(row[column]), (image_id, column)
        for column in INT_FIELDS:
            if column in meta:
                assert row[column] == int(meta[column]), (image_id, column)
            else:
                assert pd.isna(row[column]), (image_id, column)
        for column in BOOL_FIELDS:
            assert row[column] == meta[column], (image_id, column)
        for column in ("created_at", "updated_at", "deleted_at"):
            if column in meta:
                assert row[column] == pd.Timestamp(meta[column], tz="UTC"), (image_id, column)
            else:
                assert pd.isna(row[column]), (image_id, column)
        properties = {k: repair_text(v) for k, v in meta["properties"].items()}
        assert row["properties"] == properties, image_id


def test_glanceclient_sees_mojibake_where_imgframe_sees_the_name() -> None:
    fleet = make_fleet(300, seed=21)
    image = next(i for i in fleet.images if i.name and not i.name.isascii())
    with GlanceEmulator(fleet) as emu:
        df = fetch_images([image.id], endpoint=emu.url, token=ADMIN_TOKEN)
        seen_by_glanceclient = glance_v1.Client(emu.url, token=ADMIN_TOKEN).images.get(image.id)
    assert df.loc[image.id, "name"] == image.name
    assert seen_by_glanceclient.name != image.name
    assert repair_text(seen_by_glanceclient.name) == image.name
