"""Test support: a real Glance v1 emulator server and synthetic fleets.

Self-contained on purpose: it emulates the server, so it never imports the client side of
imgframe (a shared parser would hide the very bugs the emulator exists to catch).

Examples
--------
>>> from imgframe.testing import GlanceEmulator, make_fleet
>>> fleet = make_fleet(20, seed=1)
>>> with GlanceEmulator(fleet) as emu:
...     emu.url.startswith("http://127.0.0.1:")
True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from imgframe.testing.fleet import FLEET_NOW, Fleet, FleetImage, PlantedAnswers, make_fleet

if TYPE_CHECKING:
    from imgframe.testing.emulator import (
        ADMIN_TOKEN,
        AccessKey,
        Faults,
        GlanceEmulator,
        LoggedRequest,
        Token,
        render_headers,
        run_forever,
        serve,
    )

__all__ = [
    "ADMIN_TOKEN",
    "FLEET_NOW",
    "AccessKey",
    "Faults",
    "Fleet",
    "FleetImage",
    "GlanceEmulator",
    "LoggedRequest",
    "PlantedAnswers",
    "Token",
    "make_fleet",
    "render_headers",
    "run_forever",
    "serve",
]

_EMULATOR_NAMES = frozenset(__all__) - {
    "FLEET_NOW",
    "Fleet",
    "FleetImage",
    "PlantedAnswers",
    "make_fleet",
}


def __getattr__(name: str) -> Any:
    # Imported lazily so `python -m imgframe.testing.emulator` does not find the module
    # already imported by its own package (runpy warns about that double import).
    if name in _EMULATOR_NAMES:
        return getattr(importlib.import_module("imgframe.testing.emulator"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
