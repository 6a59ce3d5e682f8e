"""The ``real`` tier: Keystone and Glance from PyPI (pinned), on 127.0.0.1, for the session.

``make test-real`` runs it; ``make test`` never collects this folder. The services live in
their own cached virtualenv (``tools/real_openstack.py``); the first run builds it
(~60-95 s), later runs reuse it. Run by hand, pytest needs ``IMGFRAME_REAL_VENV`` (what
``python tools/real_openstack.py`` prints): the suite's root ``conftest.py`` moves
``XDG_CACHE_HOME`` to a temporary folder, where the cache would be built again. A seeded
set of images (:class:`Seeded`) is created through the v2 API once per session; tests
read it and never change it (some add images, projects or catalog entries of their own).
"""

from __future__ import annotations

import importlib.util
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

_HERE = Path(__file__).resolve().parent


def _load(name: str, path: Path) -> Any:
    """Import ``path`` as module ``name`` (the test modules then import it by name)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


real_openstack = _load("real_openstack", _HERE.parents[1] / "tools" / "real_openstack.py")
_load("realcheck", _HERE / "realcheck.py")

#: Identical bytes behind two images: a checksum duplicate.
DUPLICATE_DATA = b"imgframe real tier: the same bytes twice\n" * 64


@dataclass
class Seeded:
    """The images created through the v2 API: ``ids[label]`` and their v2 documents."""

    ids: dict[str, str] = field(default_factory=dict)
    other_project: str = ""

    def label_of(self, image_id: str) -> str:
        return next(label for label, i in self.ids.items() if i == image_id)


class Glance:
    """The v2 API of the session's Glance, as the admin of the ``admin`` project."""

    def __init__(self, cloud: Any) -> None:
        self.cloud = cloud
        self.url = cloud.glance_url
        self.token = cloud.admin_token()
        self.http = requests.Session()
        self.http.headers["X-Auth-Token"] = self.token

    def call(self, method: str, path: str, expect: int, **kwargs: Any) -> requests.Response:
        answer = self.http.request(method, self.url + path, timeout=60, **kwargs)
        assert answer.status_code == expect, (method, path, answer.status_code, answer.text)
        return answer

    def create(self, data: bytes | None = None, **document: Any) -> str:
        body = {"container_format": "bare", "disk_format": "raw", **document}
        image_id = self.call("POST", "/v2/images", 201, json=body).json()["id"]
        if data is not None:
            self.call(
                "PUT",
                f"/v2/images/{image_id}/file",
                204,
                data=data,
                headers={"Content-Type": "application/octet-stream"},
            )
        return image_id

    def document(self, image_id: str) -> dict[str, Any]:
        return self.call("GET", f"/v2/images/{image_id}", 200).json()


@pytest.fixture(scope="session")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A running Keystone + Glance pair; stopped (terminate, then kill) at session end."""
    started = time.monotonic()
    python = real_openstack.ensure_venv(log=tmp_path_factory.getbasetemp() / "real-venv.log")
    root = tmp_path_factory.mktemp("openstack")
    instance = real_openstack.RealCloud(root, python)
    try:
        instance.configure()
        instance.start()
        print(f"\nreal Keystone + Glance up in {time.monotonic() - started:.1f} s ({root})")
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="session")
def glance(cloud: Any) -> Glance:
    return Glance(cloud)


@pytest.fixture(scope="session")
def seeded(cloud: Any, glance: Glance) -> Seeded:
    """Every kind of image the v2 API makes, created once (~a few seconds)."""
    token = glance.token
    answer = requests.post(
        f"{cloud.keystone_url}/projects",
        json={"project": {"name": "other", "domain_id": "default"}},
        headers={"X-Auth-Token": token},
        timeout=30,
    )
    assert answer.status_code == 201, answer.text
    other = answer.json()["project"]["id"]
    seeded = Seeded(other_project=other)
    ids = seeded.ids
    ids["public"] = glance.create(
        DUPLICATE_DATA,
        name="public-cirros",
        visibility="public",
        min_ram=512,
        min_disk=1,
        os_distro="cirros",
        tags=["gold", "tested"],
    )
    ids["private"] = glance.create(b"private bytes\n" * 100, name="private", visibility="private")
    ids["duplicate"] = glance.create(DUPLICATE_DATA, name="copy-of-cirros", visibility="private")
    ids["shared"] = glance.create(b"shared bytes\n", name="shared", visibility="shared")
    glance.call("POST", f"/v2/images/{ids['shared']}/members", 200, json={"member": other})
    ids["community"] = glance.create(b"community\n", name="community", visibility="community")
    ids["protected"] = glance.create(b"protected\n", name="protected", protected=True)
    ids["queued"] = glance.create(None, name="queued-no-data", disk_format="qcow2")
    ids["deactivated"] = glance.create(b"soon inactive\n", name="deactivated")
    glance.call("POST", f"/v2/images/{ids['deactivated']}/actions/deactivate", 204)
    ids["unicode"] = glance.create(
        b"unicode\n", name="Ñandú 镜像 ü", note="café – 镜像", hw_qemu_guest_agent="yes"
    )
    ids["hidden"] = glance.create(b"hidden\n", name="hidden", os_hidden=True)
    # Glance checks img_signature* against the data at upload: set them afterwards.
    ids["signed"] = glance.create(b"signed\n", name="signed")
    glance.call(
        "PATCH",
        f"/v2/images/{ids['signed']}",
        200,
        json=[
            {"op": "add", "path": "/img_signature_hash_method", "value": "SHA-256"},
            {"op": "add", "path": "/img_signature_key_type", "value": "RSA-PSS"},
        ],
        headers={"Content-Type": "application/openstack-images-v2.1-json-patch"},
    )
    ids["mixed_case"] = glance.create(b"case\n", name="mixed-case", Env="prod", env="dev")
    return seeded
