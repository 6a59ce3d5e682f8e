"""Synthetic, seeded fleets of Glance v1 images with planted audit answers.

A fleet looks like a real cloud's image catalogue: a few owners holding most images,
mostly active images with some in every other status, realistic names and properties,
and the awkward cases a parser must survive (non-ASCII names, no name, names that a
spreadsheet would execute, empty property values, timestamps with and without a
fraction). The answers of every audit rule are planted and known exactly (see
:class:`PlantedAnswers`): which images are public, unprotected and active, which are
byte-identical duplicates, stale, broken, mis-formatted, missing boot requirements or
security properties. Time-based answers hold at :data:`FLEET_NOW`.

Examples
--------
>>> fleet = make_fleet(200, seed=7)
>>> len(fleet), fleet == make_fleet(200, seed=7)
(200, True)
>>> image = fleet.by_id()[fleet.images[0].id]
>>> image is fleet.images[0]
True
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
import uuid
from bisect import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import accumulate

__all__ = [
    "FLEET_NOW",
    "MEMBER_STATUSES",
    "Fleet",
    "FleetImage",
    "FleetMember",
    "PlantedAnswers",
    "make_fleet",
    "v2_visibility",
]

STATUSES = (
    "queued",
    "saving",
    "active",
    "killed",
    "deleted",
    "pending_delete",
    "deactivated",
)
CONTAINER_FORMATS = ("bare", "ovf", "ami", "aki", "ari", "ova", "docker")
DISK_FORMATS = (
    "qcow2",
    "raw",
    "vhd",
    "vhdx",
    "vmdk",
    "vdi",
    "iso",
    "ami",
    "aki",
    "ari",
    "ploop",
    "zvhd",
    "zvhd2",
)


#: A Glance v2 member's statuses (v1 has none: its members are accepted by being listed).
MEMBER_STATUSES = ("accepted", "pending", "rejected")


@dataclass(frozen=True, slots=True)
class FleetMember:
    """One project an image is shared with: Glance keeps a status (v2 shows it) and
    ``can_share`` (v1 shows it: the member may share the image on).

    Examples
    --------
    >>> FleetMember("p2", "pending", False)
    FleetMember(member_id='p2', status='pending', can_share=False)
    """

    member_id: str
    status: str = "accepted"
    can_share: bool = False


@dataclass(slots=True)
class FleetImage:
    """One image as the Glance v1 registry stores it (naive UTC timestamps).

    Examples
    --------
    >>> image = make_fleet(1, seed=1).images[0]
    >>> image.created_at.tzinfo is None and image.updated_at >= image.created_at
    True
    """

    id: str
    name: str | None
    status: str
    size: int | None
    virtual_size: int | None
    checksum: str | None
    container_format: str | None
    disk_format: str | None
    owner: str | None
    is_public: bool
    protected: bool
    deleted: bool
    min_ram: int
    min_disk: int
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    properties: dict[str, str]
    os_hidden: bool = False  # v2 only: Glance's default v2 listing leaves it out
    #: The projects it is shared with, sorted by member_id (never on public, community
    #: or deleted images); v2 shows an image with members as "shared".
    members: tuple[FleetMember, ...] = ()


def _v2_draw(image: FleetImage) -> int:
    return int.from_bytes(hashlib.sha256(f"v2:{image.id}".encode()).digest()[:8], "big")


def v2_visibility(image: FleetImage) -> str:
    """The image's Glance v2 ``visibility``: public images are "public", images with
    members "shared"; the others mostly "private", some "shared" (no member yet) or
    "community" (drawn from a hash of the id).

    Examples
    --------
    >>> fleet = make_fleet(300, seed=4)
    >>> all(v2_visibility(i) == "shared" for i in fleet.images if i.members)
    True
    >>> sorted({v2_visibility(i) for i in fleet.images})
    ['community', 'private', 'public', 'shared']
    """
    if image.is_public:
        return "public"
    if image.members:
        return "shared"
    draw = _v2_draw(image) % 10
    return "shared" if draw == 0 else "community" if draw == 1 else "private"


@dataclass(frozen=True)
class PlantedAnswers:
    """The audit answers a fleet was built to have, for tests to compare against.

    ``public_unprotected`` holds exactly the ids that are public, unprotected, active and
    not deleted. Each set in ``duplicate_groups`` shares one checksum and size; every other
    image that has a checksum has a checksum of its own. The other sets are the images each
    :mod:`imgframe.audits` rule must return, with its defaults, at :data:`FLEET_NOW`:

    * ``stale``: active images last updated more than 395 days before ``FLEET_NOW``; every
      other active image was updated within the last 335 days.
    * ``broken``: killed, deleted and pending_delete images, queued/saving images older
      than a week (uploads under way are under 12 hours old), and active images without a
      checksum (some also without a size).
    * ``format_mismatch``: images that are not deleted with an ``ami``/``aki``/``ari``
      container or disk format whose partner differs, or a ``virtual_size`` below ``size``
      (deleted images carry such mismatches too, as decoys).
    * ``requirements_missing``: active images, not kernels or ramdisks (``aki``/``ari``),
      with ``min_ram`` or ``min_disk`` 0 (other images have zeros too, as decoys).
    * ``missing_signature`` / ``missing_secure_boot`` / ``missing_mem_encryption``: active
      images without all four ``img_signature*`` properties / without
      ``os_secure_boot=required`` / without a true ``hw_mem_encryption``;
      ``security_properties`` is their union.
    * ``shared_outside``: images with a member (any status) that is not one of the
      fleet's ``projects`` (``shared_outside(df, trusted=fleet.projects)``); live images.
    * ``member_can_share``: images with a member whose ``can_share`` is true (v1 frames).
    * ``community_visible``: active images whose v2 visibility is "community" (v2 frames).

    Examples
    --------
    >>> planted = make_fleet(1000, seed=0).planted
    >>> len(planted.public_unprotected), len(planted.duplicate_groups)
    (20, 3)
    """

    public_unprotected: frozenset[str]
    duplicate_groups: tuple[frozenset[str], ...]
    stale: frozenset[str] = frozenset()
    broken: frozenset[str] = frozenset()
    format_mismatch: frozenset[str] = frozenset()
    requirements_missing: frozenset[str] = frozenset()
    missing_signature: frozenset[str] = frozenset()
    missing_secure_boot: frozenset[str] = frozenset()
    missing_mem_encryption: frozenset[str] = frozenset()
    shared_outside: frozenset[str] = frozenset()
    member_can_share: frozenset[str] = frozenset()
    community_visible: frozenset[str] = frozenset()

    @property
    def security_properties(self) -> frozenset[str]:
        """Images missing at least one of the three security properties."""
        return self.missing_signature | self.missing_secure_boot | self.missing_mem_encryption


@dataclass(eq=True)
class Fleet:
    """A synthetic image catalogue, deterministic from its seed.

    Examples
    --------
    >>> fleet = make_fleet(50, seed=3)
    >>> fleet
    Fleet(n=50, seed=3, projects=4, public_unprotected=1, duplicate_groups=0)
    >>> sum(1 for _ in fleet)
    50
    """

    images: list[FleetImage] = field(repr=False)
    seed: int
    projects: tuple[str, ...]
    planted: PlantedAnswers
    _by_id: dict[str, FleetImage] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def by_id(self) -> dict[str, FleetImage]:
        """Map image id to image (built once, then cached; do not mutate ``images`` after).

        Examples
        --------
        >>> fleet = make_fleet(5)
        >>> fleet.by_id() is fleet.by_id()
        True
        """
        if self._by_id is None:
            self._by_id = {image.id: image for image in self.images}
        return self._by_id

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[FleetImage]:
        return iter(self.images)

    def __repr__(self) -> str:
        return (
            f"Fleet(n={len(self.images)}, seed={self.seed}, projects={len(self.projects)}, "
            f"public_unprotected={len(self.planted.public_unprotected)}, "
            f"duplicate_groups={len(self.planted.duplicate_groups)})"
        )


# --- names and properties -------------------------------------------------------------
# Each family returns (name, properties) for one image. Property values are strings, as
# Glance stores them; a few are '' on purpose because real catalogues have them.

_Family = Callable[[random.Random, datetime], tuple[str | None, dict[str, str]]]

_ARCHES = ("x86_64", "x86_64", "x86_64", "aarch64")


def _linux_props(rng: random.Random, distro: str, version: str) -> dict[str, str]:
    props = {
        "os_distro": distro,
        "os_version": version,
        "architecture": _ARCHES[rng.getrandbits(2)],
        "hw_disk_bus": "virtio" if rng.random() < 0.8 else "scsi",
    }
    if props["hw_disk_bus"] == "scsi":
        props["hw_scsi_model"] = "virtio-scsi"
    if rng.random() < 0.3:
        props["description"] = "" if rng.random() < 0.5 else f"{distro} {version} cloud image"
    if rng.random() < 0.1:
        props["hw_mem_encryption"] = "True" if rng.random() < 0.5 else "False"
    return props


def _ubuntu(rng: random.Random, created: datetime) -> tuple[str | None, dict[str, str]]:
    version = ("18.04", "20.04", "22.04", "24.04")[rng.getrandbits(2)]
    return f"ubuntu-{version}-server-{created:%Y%m%d}", _linux_props(rng, "ubuntu", version)


def _centos(rng: random.Random, created: datetime) -> tuple[str | None, dict[str, str]]:
    version = ("7", "8", "9-stream")[rng.randrange(3)]
    return f"centos-{version}-x86_64-{created:%Y%m%d}", _linux_props(rng, "centos", version)


def _rhel(rng: random.Random, created: datetime) -> tuple[str | None, dict[str, str]]:
    version = ("8.6", "8.8", "9.2", "9.4")[rng.getrandbits(2)]
    return f"rhel-{version}-base", _linux_props(rng, "rhel", version)


def _debian(rng: random.Random, created: datetime) -> tuple[str | None, dict[str, str]]:
    version = ("10", "11", "12")[rng.randrange(3)]
    name = f"debian-{version}-genericcloud-amd64-{created:%Y%m%d}"
    return name, _linux_props(rng, "debian", version)


def _cirros(rng: random.Random, created: datetime) -> tuple[str | None, dict[str, str]]:
    version = ("0.4.0", "0.5.2", "0.6.2")[rng.randrange(3)]
    return f"cirros-{version}-x86_64-disk", {"os_distro": "cirros", "os_version": version}


def _windows(rng: random.Random, created: datetime) -> tuple[str | None, dict[str, str]]:
    year = ("2016", "2019", "2022")[rng.randrange(3)]
    edition = "std" if rng.random() < 0.7 else "dc"
    props = {
        "os_distro": "windows",
        "os_version": year,
        "os_type": "windows",
        "architecture": "x86_64",
        "hw_disk_bus": "scsi",
        "hw_scsi_model": "virtio-scsi",
        "os_secure_boot": ("required", "optional", "disabled")[rng.randrange(3)],
    }
    if rng.random() < 0.25:
        # Signed images carry the four img_signature* properties together.
        props["img_signature"] = f"{rng.getrandbits(256):064x}"
        props["img_signature_hash_method"] = "SHA-256"
        props["img_signature_key_type"] = "RSA-PSS"
        props["img_signature_certificate_uuid"] = str(uuid.UUID(int=rng.getrandbits(128)))
        if rng.random() < 0.1:  # a botched signing job: one of the four is missing
            del props[_SIGNATURE_KEYS[rng.getrandbits(2)]]
    return f"win{year}-{edition}-v{rng.randrange(1, 10)}", props


def _snapshot(rng: random.Random, created: datetime) -> tuple[str | None, dict[str, str]]:
    props = {
        "image_type": "snapshot",
        "instance_uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "base_image_ref": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "user_id": f"{rng.getrandbits(128):032x}",
    }
    return f"snapshot-{rng.getrandbits(24):06x}-{created:%Y%m%d%H%M}", props


def _huawei(rng: random.Random, created: datetime) -> tuple[str | None, dict[str, str]]:
    # Huawei IMS private images carry double-underscore system properties.
    version = ("CentOS 7.9 64bit", "Ubuntu 22.04 server 64bit", "EulerOS 2.5 64bit")[
        rng.randrange(3)
    ]
    props = {
        "__os_version": version,
        "__os_type": "Linux",
        "__os_bit": "64",
        "__platform": version.split()[0],
        "__imagetype": "private",
        "__isregistered": "true",
        "__support_kvm": "true",
        "__description": "",
    }
    return f"ims-{version.split()[0].lower()}-{rng.randrange(100):02d}", props


_NON_ASCII = ("niño-base", "образ-тест", "镜像-生产", "café", "größe-vm", "テスト-イメージ")
# Leading =, +, -, @ make spreadsheets evaluate a cell; exporters must defuse them.
_INJECTION = ('=HYPERLINK("http://example.invalid","x")', "+1+1", "-2+3", "@SUM(1,1)")


def _non_ascii(rng: random.Random, created: datetime) -> tuple[str | None, dict[str, str]]:
    base = _NON_ASCII[rng.randrange(len(_NON_ASCII))]
    return f"{base}-{rng.randrange(100)}", {"description": "образ для тестов"}


def _injection(rng: random.Random, created: datetime) -> tuple[str | None, dict[str, str]]:
    return _INJECTION[rng.getrandbits(2)], {}


def _unnamed(rng: random.Random, created: datetime) -> tuple[str | None, dict[str, str]]:
    return None, {}


_FAMILIES: tuple[tuple[float, _Family], ...] = (
    (0.22, _ubuntu),
    (0.10, _centos),
    (0.08, _rhel),
    (0.08, _debian),
    (0.04, _cirros),
    (0.14, _windows),
    (0.22, _snapshot),
    (0.06, _huawei),
    (0.03, _non_ascii),
    (0.01, _injection),
    (0.02, _unnamed),
)
_FAMILY_CUM = tuple(accumulate(w for w, _ in _FAMILIES))
_FAMILY_FUNCS = tuple(f for _, f in _FAMILIES)

# Status mix of a long-lived cloud: mostly active, a tail of every other state.
_STATUS_WEIGHTS = (
    ("active", 0.85),
    ("queued", 0.03),
    ("saving", 0.02),
    ("killed", 0.02),
    ("deleted", 0.04),
    ("pending_delete", 0.01),
    ("deactivated", 0.03),
)
_STATUS_CUM = tuple(accumulate(w for _, w in _STATUS_WEIGHTS))
_STATUS_NAMES = tuple(s for s, _ in _STATUS_WEIGHTS)

_DISK_WEIGHTS = (
    ("qcow2", 0.45),
    ("raw", 0.22),
    ("vhd", 0.05),
    ("vhdx", 0.03),
    ("vmdk", 0.05),
    ("vdi", 0.01),
    ("iso", 0.04),
    ("ami", 0.02),
    ("aki", 0.01),
    ("ari", 0.01),
    ("ploop", 0.01),
    ("zvhd", 0.03),
    ("zvhd2", 0.07),
)
_DISK_CUM = tuple(accumulate(w for _, w in _DISK_WEIGHTS))
_DISK_NAMES = tuple(d for d, _ in _DISK_WEIGHTS)

#: The fleet's "now": every planted time-based answer holds for an audit run at this
#: instant with the audit defaults (``stale(older_than="365D")``, ``broken(stuck_after="1D")``).
#: Tests pass it as ``now=``; no image is created or changed after it.
FLEET_NOW = datetime(2026, 11, 1)

_EPOCH = datetime(2015, 1, 1)
_LAST_CREATED = FLEET_NOW - timedelta(days=10)
_SPAN_SECONDS = int((_LAST_CREATED - _EPOCH).total_seconds())
# Planted answers keep 30 days away from the audit defaults' cut-offs, so they do not
# depend on exactly where a rule draws its line.
_STALE_WINDOW = timedelta(days=365)
_STALE_BEFORE = FLEET_NOW - _STALE_WINDOW - timedelta(days=30)  # planted stale: last change before
_FRESH_AFTER = FLEET_NOW - _STALE_WINDOW + timedelta(days=30)  # other active: last change after
_STALE_SPAN_SECONDS = int((_STALE_BEFORE - timedelta(days=3) - _EPOCH).total_seconds())
_FRESH_SPAN_SECONDS = int((FLEET_NOW - timedelta(days=1) - _FRESH_AFTER).total_seconds())
_IN_PROGRESS_SECONDS = 12 * 3600  # queued/saving images younger than this are not stuck

_STALE_RATE = 0.10  # of active images
_IN_PROGRESS_RATE = 0.3  # of queued/saving images: an upload under way, not stuck
_NO_DATA_RATE = 0.005  # of active images: registered by location, no checksum (or size)
_FORMAT_MISMATCH_RATE = 0.012  # of all images (deleted ones are decoys the rule must skip)
_REQUIREMENTS_MISSING_RATE = 0.15  # of active bootable images
_KERNEL_FORMATS = ("aki", "ari")
_AMI_FORMATS = ("ami", "aki", "ari")

_MIN_SIZE = 10 * 1024 * 1024
_LOG_SIZE_RANGE = math.log(40 * 1024**3 / _MIN_SIZE)
_MIN_RAMS = (0, 0, 0, 0, 0, 512, 1024, 2048, 4096)
_NONZERO_MIN_RAMS = (512, 1024, 2048, 4096)
_SIGNATURE_KEYS = (
    "img_signature",
    "img_signature_hash_method",
    "img_signature_key_type",
    "img_signature_certificate_uuid",
)
_TRUE_SPELLINGS = frozenset(("true", "1", "yes", "on", "t", "y"))


def _pick(cum: tuple[float, ...], rng: random.Random) -> int:
    # cum may not sum to exactly 1.0; clamp so a draw near 1 still lands on the last item.
    return min(bisect(cum, rng.random() * cum[-1]), len(cum) - 1)


def _default_projects(n: int) -> int:
    # ~10 owners per 1000 images, growing slowly (79 at a million).
    return max(1, min(n, round(10 * (n / 1000) ** 0.3)))


def _missing_security(properties: dict[str, str]) -> tuple[bool, bool, bool]:
    """(no signature, no secure boot, no memory encryption) — the audit's definitions."""
    get = properties.get
    unsigned = not (
        get("img_signature")
        and get("img_signature_hash_method")
        and get("img_signature_key_type")
        and get("img_signature_certificate_uuid")
    )
    secure_boot = get("os_secure_boot")
    mem = get("hw_mem_encryption")
    no_secure_boot = secure_boot is None or secure_boot.strip().lower() != "required"
    no_mem = mem is None or mem.strip().lower() not in _TRUE_SPELLINGS
    return unsigned, no_secure_boot, no_mem


def make_fleet(
    n: int = 1000,
    *,
    seed: int = 0,
    public_unprotected: int | None = None,
    duplicate_groups: int | None = None,
    projects: int | None = None,
    hidden: int = 0,
    shared: float = 0.1,
) -> Fleet:
    """Build ``n`` realistic images deterministically from ``seed``.

    Defaults scale with ``n``: ~2% of images are public-unprotected, ~1% sit in duplicate
    groups of 2-4 images, and there are ~10 owners per 1000 images (growing slowly).
    A public-unprotected image is never also a duplicate; the other planted answers
    (stale, broken, format mismatch, missing requirements and security properties) are
    drawn per image and may overlap each other and those two, as in a real catalogue.
    Time-based answers hold at :data:`FLEET_NOW`. ``hidden`` images that are not deleted
    get ``os_hidden`` (v2), drawn apart so that the rest of the fleet stays the same.
    A ``shared`` fraction of the live non-public images that v2 would not call
    "community" get 1-5 members (drawn apart too): other projects of the fleet and
    projects outside it, every status, some with ``can_share``.

    Examples
    --------
    >>> fleet = make_fleet(100, seed=1, public_unprotected=3, duplicate_groups=2)
    >>> len(fleet.planted.public_unprotected), len(fleet.planted.duplicate_groups)
    (3, 2)
    >>> make_fleet(100, seed=1) == make_fleet(100, seed=2)
    False
    >>> sum(image.os_hidden for image in make_fleet(100, seed=1, hidden=4).images)
    4
    >>> len(make_fleet(1000, seed=0).planted.shared_outside) > 0
    True
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    n_public = round(0.02 * n) if public_unprotected is None else public_unprotected
    n_groups = round(0.01 * n / 3) if duplicate_groups is None else duplicate_groups
    n_projects = _default_projects(n) if projects is None else projects
    if n_public < 0 or n_groups < 0 or n_projects < 1 or hidden < 0 or not 0 <= shared <= 1:
        raise ValueError("planted counts must be >= 0 and projects >= 1")
    if n_public + 2 * n_groups > n:
        raise ValueError(
            f"cannot plant {n_public} public-unprotected images and {n_groups} duplicate "
            f"groups (2+ images each) in a fleet of {n}"
        )

    rng = random.Random(seed)
    project_ids = tuple(f"{rng.getrandbits(128):032x}" for _ in range(n_projects))
    # Zipf-like ownership: the first projects own most images.
    owner_cum = tuple(accumulate(1 / (i + 1) ** 0.8 for i in range(n_projects)))

    # Planted positions are drawn up front; shrink groups if they would not fit.
    group_sizes = [rng.randint(2, 4) for _ in range(n_groups)]
    spare = n - n_public - sum(group_sizes)
    for i in range(len(group_sizes)):
        if spare >= 0:
            break
        cut = min(group_sizes[i] - 2, -spare)
        group_sizes[i] -= cut
        spare += cut
    planted_positions = rng.sample(range(n), n_public + sum(group_sizes))
    public_positions = set(planted_positions[:n_public])
    group_of: dict[int, int] = {}
    offset = n_public
    for g, group_size in enumerate(group_sizes):
        for pos in planted_positions[offset : offset + group_size]:
            group_of[pos] = g
        offset += group_size

    seen_ids: set[str] = set()
    seen_checksums: set[str] = set()
    images: list[FleetImage] = []
    stale: list[str] = []
    broken: list[str] = []
    format_mismatch: list[str] = []
    requirements_missing: list[str] = []
    missing_signature: list[str] = []
    missing_secure_boot: list[str] = []
    missing_mem_encryption: list[str] = []
    for pos in range(n):
        image_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        while image_id in seen_ids:  # astronomically rare; keeps ids unique by construction
            image_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        seen_ids.add(image_id)

        planted_public = pos in public_positions
        duplicate = pos in group_of
        status = "active" if planted_public or duplicate else _STATUS_NAMES[_pick(_STATUS_CUM, rng)]
        deleted = status in ("deleted", "pending_delete")

        # About a third of rows were written without a fraction (older DB schemas).
        fraction = timedelta(microseconds=rng.randrange(1, 1_000_000) if rng.random() < 0.7 else 0)
        in_progress = status in ("queued", "saving") and rng.random() < _IN_PROGRESS_RATE
        is_stale = status == "active" and rng.random() < _STALE_RATE
        if in_progress:  # an upload under way: started within the last 12 hours
            created = FLEET_NOW - timedelta(seconds=rng.randrange(60, _IN_PROGRESS_SECONDS))
            created -= fraction
            updated = created + timedelta(seconds=rng.randrange(0, 60))
        else:
            span = _STALE_SPAN_SECONDS if is_stale else _SPAN_SECONDS
            created = _EPOCH + timedelta(seconds=rng.randrange(span)) + fraction
            updated = created + timedelta(seconds=rng.randrange(0, 3 * 86_400))
            if status == "active" and not is_stale and updated < _FRESH_AFTER:
                # An old image whose metadata was touched within the last year.
                updated = _FRESH_AFTER + timedelta(seconds=rng.randrange(_FRESH_SPAN_SECONDS))
                updated += fraction
        name, properties = _FAMILY_FUNCS[_pick(_FAMILY_CUM, rng)](rng, created)

        disk_format = _DISK_NAMES[_pick(_DISK_CUM, rng)]
        if disk_format in _AMI_FORMATS:
            container_format = disk_format
        else:
            r = rng.random()
            container_format = (
                "bare" if r < 0.88 else "ovf" if r < 0.94 else "ova" if r < 0.97 else "docker"
            )

        size: int | None = int(_MIN_SIZE * math.exp(rng.random() * _LOG_SIZE_RANGE))
        checksum: str | None = None
        no_data = status == "active" and not duplicate and rng.random() < _NO_DATA_RATE
        if status == "queued":
            size = None
        elif no_data:
            # v1 images registered by location have no checksum, and often no size.
            size = None if rng.random() < 0.5 else size
        elif status not in ("saving", "killed"):
            checksum = f"{rng.getrandbits(128):032x}"
            while checksum in seen_checksums:
                checksum = f"{rng.getrandbits(128):032x}"
            seen_checksums.add(checksum)
        virtual_size = (
            size * rng.randint(1, 8) if size is not None and rng.random() < 0.05 else None
        )

        mismatch = rng.random() < _FORMAT_MISMATCH_RATE
        if mismatch:
            kind = rng.randrange(4)
            if kind == 3 and size is not None and not duplicate:
                # Corrupt metadata: the virtual disk reported smaller than its file.
                virtual_size = size // rng.randint(2, 4)
            elif kind == 2:
                container_format, disk_format = "ami", "qcow2"
            elif kind == 1:
                container_format, disk_format = "ari", "aki"
            else:
                container_format, disk_format = "bare", "ami"

        owner: str | None = project_ids[_pick(owner_cum, rng)] if rng.random() < 0.99 else None
        is_public = planted_public or rng.random() < 0.08
        protected = not planted_public and rng.random() < 0.15
        if is_public and not protected and status == "active" and not planted_public:
            # Only planted images may answer the public-unprotected audit.
            protected = True

        deleted_at = None
        if deleted:
            room = int((FLEET_NOW - updated).total_seconds())
            deleted_at = updated + timedelta(
                seconds=rng.randrange(60, max(61, min(room, 200 * 86_400)))
            )
            updated = deleted_at

        size_gb = -(-size // 1024**3) if size else 0
        kernel = disk_format in _KERNEL_FORMATS or container_format in _KERNEL_FORMATS
        if status == "active" and not kernel:
            # Bootable images carry requirements unless planted; the rest keep the usual mix.
            missing = rng.randrange(3) if rng.random() < _REQUIREMENTS_MISSING_RATE else None
            min_ram = 0 if missing in (0, 2) else _NONZERO_MIN_RAMS[rng.getrandbits(2)]
            min_disk = 0 if missing in (1, 2) else max(1, size_gb) + rng.choice((0, 0, 5, 10))
            if missing is not None:
                requirements_missing.append(image_id)
        else:
            min_ram = _MIN_RAMS[rng.randrange(len(_MIN_RAMS))]
            min_disk = size_gb + rng.choice((0, 0, 5, 10)) if rng.random() < 0.4 else 0

        if status == "active":
            if is_stale:
                stale.append(image_id)
            if no_data:
                broken.append(image_id)
            unsigned, no_secure_boot, no_mem = _missing_security(properties)
            if unsigned:
                missing_signature.append(image_id)
            if no_secure_boot:
                missing_secure_boot.append(image_id)
            if no_mem:
                missing_mem_encryption.append(image_id)
        elif status in ("killed", "deleted", "pending_delete") or (
            status in ("queued", "saving") and not in_progress
        ):
            broken.append(image_id)
        if mismatch and not deleted:
            format_mismatch.append(image_id)

        images.append(
            FleetImage(
                id=image_id,
                name=name,
                status=status,
                size=size,
                virtual_size=virtual_size,
                checksum=checksum,
                container_format=container_format,
                disk_format=disk_format,
                owner=owner,
                is_public=is_public,
                protected=protected,
                deleted=deleted,
                min_ram=min_ram,
                min_disk=min_disk,
                created_at=created,
                updated_at=updated,
                deleted_at=deleted_at,
                properties=properties,
            )
        )

    # Duplicates share the first member's checksum and size; their own checksums go unused.
    # (No duplicate has a planted virtual_size mismatch, so copying virtual_size is safe.)
    members: list[list[FleetImage]] = [[] for _ in group_sizes]
    for pos, g in group_of.items():
        members[g].append(images[pos])
    for group in members:
        first = group[0]
        for image in group[1:]:
            image.checksum = first.checksum
            image.size = first.size
            image.virtual_size = first.virtual_size

    planted = PlantedAnswers(
        public_unprotected=frozenset(images[pos].id for pos in public_positions),
        duplicate_groups=tuple(frozenset(image.id for image in group) for group in members),
        stale=frozenset(stale),
        broken=frozenset(broken),
        format_mismatch=frozenset(format_mismatch),
        requirements_missing=frozenset(requirements_missing),
        missing_signature=frozenset(missing_signature),
        missing_secure_boot=frozenset(missing_secure_boot),
        missing_mem_encryption=frozenset(missing_mem_encryption),
    )
    # Hidden images come from a generator of their own, after everything else is drawn:
    # asking for some leaves every other attribute of the fleet as it was.
    live = [image for image in images if not image.deleted]
    for image in random.Random(f"hidden:{seed}").sample(live, min(hidden, len(live))):
        image.os_hidden = True
    planted = _share(images, project_ids, shared, random.Random(f"members:{seed}"), planted)
    return Fleet(images=images, seed=seed, projects=project_ids, planted=planted)


def _share(
    images: list[FleetImage],
    projects: tuple[str, ...],
    rate: float,
    rng: random.Random,
    planted: PlantedAnswers,
) -> PlantedAnswers:
    """Give members to a ``rate`` of the images that may have them; the planted
    sharing answers (with the community ones, which depend on who has members)."""
    trusted = set(projects)
    outside: list[str] = []
    for _ in range(max(2, len(projects) // 2)):
        project = f"{rng.getrandbits(128):032x}"
        while project in trusted:  # astronomically rare
            project = f"{rng.getrandbits(128):032x}"
        outside.append(project)
    shared_outside: list[str] = []
    can_share: list[str] = []
    for image in images:
        if image.is_public or image.deleted or v2_visibility(image) == "community":
            continue
        if rng.random() >= rate:
            continue
        own = [p for p in projects if p != image.owner]
        chosen: dict[str, FleetMember] = {}
        for _ in range(rng.randint(1, 5)):
            pool = own if own and rng.random() < 0.6 else outside
            member_id = pool[rng.randrange(len(pool))]
            status = MEMBER_STATUSES[rng.randrange(3)]
            chosen[member_id] = FleetMember(member_id, status, rng.random() < 0.15)
        image.members = tuple(chosen[key] for key in sorted(chosen))
        if any(m.member_id not in trusted for m in image.members):
            shared_outside.append(image.id)
        if any(m.can_share for m in image.members):
            can_share.append(image.id)
    community = [
        image.id
        for image in images
        if image.status == "active" and not image.deleted and v2_visibility(image) == "community"
    ]
    return dataclasses.replace(
        planted,
        shared_outside=frozenset(shared_outside),
        member_can_share=frozenset(can_share),
        community_visible=frozenset(community),
    )
